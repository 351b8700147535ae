"""The torch backend against the NumPy oracle, float64: outputs, final states and every gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close

from lstmkit import ops
from lstmkit.ops import (
    BACKENDS,
    CallKind,
    candidates,
    check_backend,
    dispatch,
    layer_function,
    lstm_cpu,
    lstm_torch,
    rule,
)
from lstmkit.ops.cell import Cell
from lstmkit.reference import lstm_backward, lstm_forward, random_lstm_problem

SHAPES = [(1, 1, 1, 1, None), (1, 2, 3, 4, None), (63, 1, 2, 3, None), (6, 3, 4, 5, 2), (5, 4, 3, 7, None)]
_rng = np.random.default_rng(7)
for _ in range(5):
    _T, _B, _I, _H = (int(v) for v in _rng.integers(1, 10, size=4))
    SHAPES.append((_T, _B, _I, _H, None if _rng.random() < 0.5 or _H == 1 else int(_rng.integers(1, _H))))

GRAD_NAMES = {"x": "dx", "W": "dW", "U": "dU", "b": "db", "h0": "dh0", "c0": "dc0", "R": "dR"}


def torch_layer(inputs, upstream, reverse=False):
    """Run lstm_torch.lstm_layer on the oracle's inputs; return outputs and gradients as float64 tensors."""
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    T, B, I = inputs["x"].shape
    y, hT, cT = lstm_torch.lstm_layer(
        leaves["x"].reshape(T * B, I), [B] * T, leaves["h0"], leaves["c0"],
        Cell(leaves["W"], leaves["U"], leaves["b"], leaves.get("R")), reverse=reverse,
    )
    y = y.view(T, B, -1)
    dy, dhT, dcT = (torch.tensor(upstream[k]) for k in ("dy", "dhT", "dcT"))
    ((y * dy).sum() + (hT * dhT).sum() + (cT * dcT).sum()).backward()
    return y, hT, cT, {GRAD_NAMES[k]: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
def test_torch_backend_matches_reference(shape):
    T, B, I, H, P = shape
    inputs, upstream = random_lstm_problem(np.random.default_rng(sum(shape[:4])), T, B, I, H, P)
    y_ref, hT_ref, cT_ref, cache = lstm_forward(**inputs)
    grads_ref = lstm_backward(upstream["dy"], upstream["dhT"], upstream["dcT"], cache)
    y, hT, cT, grads = torch_layer(inputs, upstream)
    assert_close(y, y_ref, "y")
    assert_close(hT, hT_ref, "h_T")
    assert_close(cT, cT_ref, "c_T")
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert_close(g, grads_ref[name], name)


@pytest.mark.parametrize("shape", SHAPES[:6], ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
def test_reverse_direction_is_the_reference_on_flipped_time(shape):
    T, B, I, H, P = shape
    inputs, upstream = random_lstm_problem(np.random.default_rng(3), T, B, I, H, P)
    flipped = dict(inputs, x=inputs["x"][::-1].copy())
    y_ref, hT_ref, cT_ref, cache = lstm_forward(**flipped)
    grads_ref = lstm_backward(upstream["dy"][::-1].copy(), upstream["dhT"], upstream["dcT"], cache)
    y, hT, cT, grads = torch_layer(inputs, upstream, reverse=True)
    assert_close(y, y_ref[::-1].copy(), "y (reverse)")
    assert_close(hT, hT_ref, "h_T (reverse)")
    assert_close(cT, cT_ref, "c_T (reverse)")
    assert_close(grads["dx"], grads_ref["dx"][::-1].copy(), "dx (reverse)")
    for name in grads_ref.keys() - {"dx"}:
        assert_close(grads[name], grads_ref[name], f"{name} (reverse)")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_packed_rows_equal_each_sequence_alone(reverse):
    """Variable lengths in packed-row layout: every sequence matches the oracle run on it alone."""
    rng = np.random.default_rng(11)
    lengths, I, H, P = [6, 4, 4, 1], 3, 5, 2
    T, B = lengths[0], len(lengths)
    inputs, _ = random_lstm_problem(rng, T, B, I, H, P)
    batch_sizes = [sum(n > t for n in lengths) for t in range(T)]
    rows = np.concatenate([inputs["x"][t, : batch_sizes[t]] for t in range(T)])
    params = {k: torch.tensor(inputs[k]) for k in ("W", "U", "b", "R")}
    y, hT, cT = lstm_torch.lstm_layer(
        torch.tensor(rows), batch_sizes, torch.tensor(inputs["h0"]), torch.tensor(inputs["c0"]),
        Cell(params["W"], params["U"], params["b"], params["R"]), reverse=reverse,
    )
    offsets = np.cumsum([0, *batch_sizes])
    for k, n in enumerate(lengths):
        x_alone = inputs["x"][:n, k : k + 1]
        if reverse:
            x_alone = x_alone[::-1].copy()
        alone = dict(inputs, x=x_alone, h0=inputs["h0"][k : k + 1], c0=inputs["c0"][k : k + 1])
        y_ref, hT_ref, cT_ref, _ = lstm_forward(**alone)
        if reverse:
            y_ref = y_ref[::-1]
        y_k = torch.stack([y[offsets[t] + k] for t in range(n)])
        assert_close(y_k, y_ref[:, 0].copy(), f"y of sequence {k}")
        assert_close(hT[k], hT_ref[0], f"h_T of sequence {k}")
        assert_close(cT[k], cT_ref[0], f"c_T of sequence {k}")


def test_record_holds_the_gates_of_the_forward():
    inputs, _ = random_lstm_problem(np.random.default_rng(5), 4, 2, 3, 5)
    _, _, _, cache = lstm_forward(**inputs)
    record: dict[str, torch.Tensor] = {}
    t = {k: torch.tensor(v) for k, v in inputs.items()}
    y, _, _ = lstm_torch.lstm_layer(
        t["x"].reshape(8, 3), [2] * 4, t["h0"], t["c0"], Cell(t["W"], t["U"], t["b"]), record=record
    )
    for name in ("i", "f", "g", "o", "c"):
        assert_close(record[name].view(4, 2, 5), getattr(cache, name), f"recorded {name}")
    assert torch.equal(record["h"], y)


def _call(**changes) -> CallKind:
    """A standard CPU call (B=32, T=100, 128 -> 64, one layer, float32, a train step) with some fields changed."""
    fields = dict(device="cpu", dtype="float32", autocast="", train=True, batch=32, steps=100, input_size=128,
                  hidden_size=64, proj_size=0, layers=1, bidirectional=False, packed=False, dropout=False, threads=2)
    return CallKind(**(fields | changes))


def test_dispatch_of_named_backends_and_what_only_one_path_can_run():
    assert layer_function("cpu") is lstm_cpu.lstm_layer  # which hands what it cannot run to lstm_torch
    assert layer_function("torch") is lstm_torch.lstm_layer
    with pytest.raises(ValueError, match="backend must be one of"):
        check_backend("cuda-magic")
    never = lambda path: pytest.fail("no rehearsal expected")  # noqa: E731
    for backend in BACKENDS:  # gates are recorded by lstmkit's own portable code only
        assert dispatch(backend, _call, packed=False, training=True, recording=True, rehearse=never) == "torch"
    assert dispatch("torch", _call, packed=False, training=True, rehearse=never) == "torch"
    assert dispatch("op", _call, packed=False, training=True, rehearse=never) == "op"
    # the op takes full batches only
    assert dispatch("op", lambda: _call(packed=True), packed=True, training=True, rehearse=never) == "torch"
    kernel = "cpu" if lstm_cpu.available() else "torch"
    assert dispatch("cpu", _call, packed=False, training=True, rehearse=never) == kernel
    assert dispatch("cpu", lambda: _call(dtype="float64"), packed=False, training=True, rehearse=never) == "torch"
    assert dispatch("cpu", lambda: _call(device="cuda"), packed=False, training=True, rehearse=never) == "torch"


def test_auto_candidates_are_the_paths_that_compute_the_call_exactly():
    own = ["cpu"] if lstm_cpu.available() else ["torch"]  # the kernel where it runs, else the portable path
    assert candidates(_call(), training=True) == ["vendor", *own]
    assert candidates(_call(dtype="float64"), training=True) == ["vendor", "torch"]  # the kernel is float32
    assert candidates(_call(device="cuda"), training=True) == ["vendor", "torch"]  # cuDNN packs natively
    assert candidates(_call(device="cuda"), training=False) == ["torch"]  # cuDNN's backward refuses eval mode
    assert candidates(_call(device="cuda", train=False), training=False) == ["vendor", "torch"]  # no backward
    assert candidates(_call(device="cuda", dropout=True), training=True) == ["torch"]  # cuDNN's own dropout state
    assert candidates(_call(dropout=True), training=True) == ["vendor", *own]  # oneDNN draws from torch's RNG
    # Where one path alone fits, "auto" takes it without rehearsing.
    never = lambda path: pytest.fail("no rehearsal expected")  # noqa: E731
    only_torch = lambda: _call(device="cuda", dropout=True)  # noqa: E731
    assert dispatch("auto", only_torch, packed=False, training=True, rehearse=never) == "torch"


def test_rule_without_measurement():
    kernel = lstm_cpu.available()
    assert rule(_call(), training=True) == ("cpu" if kernel else "vendor")  # train steps of 8 or more
    assert rule(_call(batch=4), training=True) == "vendor"
    assert rule(_call(train=False), training=False) == "vendor"  # fp32 inference of a plain batch
    assert rule(_call(proj_size=16), training=True) == ("cpu" if kernel else "torch")  # oneDNN: no projections
    assert rule(_call(packed=True), training=True) == ("cpu" if kernel else "torch")  # nor packed input
    assert rule(_call(device="cuda", packed=True), training=True) == "vendor"
    assert rule(_call(device="cuda"), training=False) == "torch"


@pytest.mark.parametrize("bf16_hardware", [False, True])
def test_rule_under_bf16_autocast_follows_the_hardware(monkeypatch, bf16_hardware):
    """Under bf16 autocast the rule sends calls to oneDNN's bf16 LSTM where the CPU has BF16 or AMX instructions,
    except the train steps of small layers (H <= 64), which the kernel won on every CPU measured; without them, to
    the kernel (oneDNN's bf16 is slower than fp32 there)."""
    if not lstm_cpu.available():
        pytest.skip("the C kernel is not available here: the rule never names it")
    monkeypatch.setattr(ops, "_has_bf16_hardware", lambda: bf16_hardware)
    wide = dict(autocast="bfloat16", hidden_size=256, input_size=256)
    assert rule(_call(**wide), training=True) == ("vendor" if bf16_hardware else "cpu")
    assert rule(_call(**wide, train=False), training=False) == ("vendor" if bf16_hardware else "cpu")
    assert rule(_call(autocast="bfloat16"), training=True) == "cpu"  # H=64, a train step of 32 sequences
    assert rule(_call(autocast="bfloat16", train=False), training=False) == ("vendor" if bf16_hardware else "cpu")
    assert rule(_call(autocast="bfloat16", batch=4), training=True) == ("vendor" if bf16_hardware else "cpu")
