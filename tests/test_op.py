"""backend="op": the torch.library custom op and its hand-written BPTT, against the NumPy oracle, the torch
backend and torch.nn.LSTM; opcheck; torch.compile(fullgraph=True) and torch.export with a dynamic T."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close, kernel_threads, needs_two_threads, random_lstm_configs
from test_ops import GRAD_NAMES, SHAPES

import lstmkit
from lstmkit.ops import lstm_cpu
from lstmkit.ops.lstm_op import lstm_layer
from lstmkit.reference import lstm_backward, lstm_forward, random_lstm_problem


def op_layer(inputs, upstream, reverse=False, device="cpu"):
    """The op on the oracle's problem, its tensors on `device`: y, h_T, c_T and every gradient, back on the CPU."""
    leaves = {k: torch.tensor(v, device=device, requires_grad=True) for k, v in inputs.items()}
    y, hT, cT, *_ = lstm_layer(leaves["x"], leaves["h0"], leaves["c0"], leaves["W"], leaves["U"], leaves["b"],
                               leaves.get("R"), reverse)
    dy, dhT, dcT = (torch.tensor(upstream[k], device=device) for k in ("dy", "dhT", "dcT"))
    ((y * dy).sum() + (hT * dhT).sum() + (cT * dcT).sum()).backward()
    return y.cpu(), hT.cpu(), cT.cpu(), {GRAD_NAMES[k]: v.grad.cpu() for k, v in leaves.items()}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_op_matches_the_oracle(shape, reverse):
    assert_the_op_matches_the_oracle(shape, reverse)


def assert_the_op_matches_the_oracle(shape, reverse, device="cpu"):
    """The op's outputs and every gradient against the NumPy oracle (float64), its tensors on `device`."""
    T, B, I, H, P = shape
    inputs, upstream = random_lstm_problem(np.random.default_rng(sum(shape[:4]) + reverse), T, B, I, H, P)
    flip = (lambda a: a[::-1].copy()) if reverse else (lambda a: a)
    y_ref, hT_ref, cT_ref, cache = lstm_forward(**dict(inputs, x=flip(inputs["x"])))
    grads_ref = lstm_backward(flip(upstream["dy"]), upstream["dhT"], upstream["dcT"], cache)
    y, hT, cT, grads = op_layer(inputs, upstream, reverse, device)
    assert_close(y, flip(y_ref), "y")
    assert_close(hT, hT_ref, "h_T")
    assert_close(cT, cT_ref, "c_T")
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert_close(g, flip(grads_ref[name]) if name == "dx" else grads_ref[name], name)


@pytest.mark.parametrize("config", random_lstm_configs(10, seed=5), ids=lambda c: "-".join(map(str, c.values())))
def test_op_backend_equals_torch_backend_and_nn_lstm(config):
    config = dict(config)
    T, B, with_hx = config.pop("T"), config.pop("B"), config.pop("hx")
    reference = torch.nn.LSTM(**config)
    L, D = config["num_layers"], 2 if config["bidirectional"] else 1
    x = torch.randn((B, T, config["input_size"]) if config["batch_first"] else (T, B, config["input_size"]))
    hx = (torch.randn(L * D, B, config["proj_size"] or config["hidden_size"]),
          torch.randn(L * D, B, config["hidden_size"])) if with_hx else None
    results = {}
    for name, module in (("nn.LSTM", reference), ("torch", lstmkit.LSTM.from_torch(reference, backend="torch")),
                         ("op", lstmkit.LSTM.from_torch(reference, backend="op"))):
        leaves = [x.clone().requires_grad_(True)] + ([t.clone().requires_grad_(True) for t in hx] if hx else [])
        y, (h_n, c_n) = module(leaves[0], tuple(leaves[1:]) if hx else None)
        weights = torch.linspace(-1, 1, y.numel()).view_as(y)
        loss = (y * weights).sum() + (h_n ** 2).sum() + (0.5 * c_n).sum()
        grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
        results[name] = (y, h_n, c_n, *grads)
    for other in ("torch", "nn.LSTM"):
        for k, (a, b) in enumerate(zip(results["op"], results[other], strict=True)):
            assert_close(a, b, f"op vs {other}, output {k}")


def test_opcheck_with_and_without_projection_and_bias():
    torch.manual_seed(1)
    T, B, I, H = 4, 3, 5, 6
    for P, bias, reverse in ((H, True, False), (2, True, True), (H, False, True)):
        args = (torch.randn(T, B, I, requires_grad=True), torch.randn(B, P, requires_grad=True),
                torch.randn(B, H, requires_grad=True), torch.randn(4 * H, I, requires_grad=True),
                torch.randn(4 * H, P, requires_grad=True), torch.randn(4 * H, requires_grad=True) if bias else None,
                torch.randn(P, H, requires_grad=True) if P != H else None, reverse)
        torch.library.opcheck(lstm_layer, args)


@pytest.mark.parametrize("backend", ["op", "auto"])  # "auto" (the default) runs as the op when traced
def test_compile_fullgraph_and_export_with_a_dynamic_length(backend):
    torch.manual_seed(2)
    model = lstmkit.LSTM(8, 16, 2, batch_first=True, bidirectional=True, backend=backend)
    x, longer = torch.randn(3, 20, 8), torch.randn(3, 37, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # traces autograd and the fake kernels
    y = compiled(x)[0]
    y.sum().backward()
    assert_close(y, model(x)[0], "compiled output")
    dynamic = ({1: torch.export.Dim("T", min=2, max=4096)},)
    exported = torch.export.export(model.eval(), (x,), dynamic_shapes=dynamic)
    ops_seen = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert ops_seen.count(torch.ops.lstmkit.lstm_layer.default) == 4  # one node per layer and direction
    short = torch.export.export(model, (torch.randn(3, 3, 8),), dynamic_shapes=dynamic)
    assert len(exported.graph.nodes) == len(short.graph.nodes), "the graph should not grow with T"
    assert_close(exported.module()(longer)[0], model(longer)[0], "exported, another T")


@needs_two_threads
def test_repeated_calls_are_bit_identical():
    model = lstmkit.LSTM(5, 9, 2, proj_size=4, backend="op")
    B = 17  # rows the C loops split between threads (at 2 rows they run on one)
    if not lstm_cpu.available():
        pytest.skip(f"the op's time loops are the C kernel's, not built here ({lstm_cpu.unavailable_reason()})")
    assert kernel_threads(B) > 1, f"B={B} runs on one thread of the C kernel: the test would not test threads"
    x = torch.randn(7, B, 5, requires_grad=True)
    first = model(x)[0]
    (first_grad,) = torch.autograd.grad(first.sum(), x)
    second = model(x)[0]
    (second_grad,) = torch.autograd.grad(second.sum(), x)
    for name, a, b in (("output", first, second), ("input gradient", first_grad, second_grad)):
        assert torch.equal(a, b), f"{name} of a repeated call differs (B={B}): max diff {(a - b).abs().max():.3e}"


def test_packed_input_and_traces_take_the_portable_path():
    model = lstmkit.LSTM(3, 4, backend="op")
    portable = lstmkit.LSTM(3, 4, backend="torch")
    portable.load_state_dict(model.state_dict())
    packed = lstmkit.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    assert_close(model(packed)[0].data, portable(packed)[0].data, "packed")
    x = torch.randn(4, 1, 3)
    assert_close(lstmkit.trace(model, x)[0].h, model(x)[0], "trace h is the op's output")


def test_under_autocast_the_op_takes_bf16_input_like_the_torch_backend():
    model = lstmkit.LSTM(8, 16, 2, backend="op")
    portable = lstmkit.LSTM.from_torch(model.to_torch(), backend="torch")
    x = torch.randn(5, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_op, y_torch = model(x.bfloat16())[0], portable(x.bfloat16())[0]
    assert_close(y_op.float(), y_torch.float(), "bf16 input under autocast", dtype=torch.bfloat16)


def test_under_autocast_the_op_takes_fp32_input_with_bf16_states():
    model = lstmkit.LSTM(4, 6, backend="op")
    portable = lstmkit.LSTM.from_torch(model.to_torch(), backend="torch")
    x, hx = torch.randn(3, 2, 4), (torch.randn(1, 2, 6).bfloat16(), torch.randn(1, 2, 6).bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_op, y_torch = model(x, hx)[0], portable(x, hx)[0]
    assert_close(y_op.float(), y_torch.float(), "fp32 input, bf16 states", dtype=torch.bfloat16)
