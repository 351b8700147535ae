"""backend="cpu": the C kernel (lstmkit/ops/csrc/lstm_cpu.c) against the NumPy oracle, the torch backend and
torch.nn.LSTM, on outputs, states and every gradient; packed lengths, reverse, projections; its pointwise
maths; NaN; determinism; threads; autocast; and a machine where it cannot be built."""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (
    assert_close,
    float32_tolerance,
    kernel_threads,
    needs_two_threads,
    paths_pinned,
    random_lstm_configs,
)
from test_ops import GRAD_NAMES, SHAPES
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit
from lstmkit.ops import lstm_cpu, lstm_torch
from lstmkit.ops.cell import Cell
from lstmkit.reference import lstm_backward, lstm_forward, random_lstm_problem

needs_kernel = pytest.mark.skipif(not lstm_cpu.available(), reason=f"C kernel not built here: "
                                  f"{lstm_cpu.unavailable_reason()} (everything runs on the torch backend)")


def packed_layer(layer_fn, x, batch_sizes, h0, c0, W, U, b, R, reverse, upstream):
    """Run one layer on float32 copies; return y, h_T, c_T and the gradients under the given upstream ones."""
    leaves = {k: torch.as_tensor(v, dtype=torch.float32).clone().requires_grad_(True)
              for k, v in dict(x=x, h0=h0, c0=c0, W=W, U=U, b=b, R=R).items() if v is not None}
    y, hT, cT = layer_fn(leaves["x"], batch_sizes, leaves["h0"], leaves["c0"],
                         Cell(leaves["W"], leaves["U"], leaves.get("b"), leaves.get("R")), reverse=reverse)
    dy, dhT, dcT = (torch.as_tensor(u, dtype=torch.float32) for u in upstream)
    ((y * dy).sum() + (hT * dhT).sum() + (cT * dcT).sum()).backward()
    return y, hT, cT, {GRAD_NAMES[k]: v.grad for k, v in leaves.items()}


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_kernel_matches_the_oracle(shape, reverse):
    T, B, I, H, P = shape
    inputs, upstream = random_lstm_problem(np.random.default_rng(sum(shape[:4]) + 2 * reverse), T, B, I, H, P)
    flip = (lambda a: a[::-1].copy()) if reverse else (lambda a: a)
    y_ref, hT_ref, cT_ref, cache = lstm_forward(**dict(inputs, x=flip(inputs["x"])))
    grads_ref = lstm_backward(flip(upstream["dy"]), upstream["dhT"], upstream["dcT"], cache)
    y, hT, cT, grads = packed_layer(
        lstm_cpu.lstm_layer, inputs["x"].reshape(T * B, I), [B] * T, inputs["h0"], inputs["c0"], inputs["W"],
        inputs["U"], inputs["b"], inputs.get("R"), reverse,
        (upstream["dy"].reshape(T * B, -1), upstream["dhT"], upstream["dcT"]))
    f32 = torch.float32
    assert_close(y.view(T, B, -1), flip(y_ref), "y", f32)
    assert_close(hT, hT_ref, "h_T", f32)
    assert_close(cT, cT_ref, "c_T", f32)
    for name, g in grads.items():
        expected = grads_ref[name]
        if name == "dx":
            g, expected = g.view(T, B, I), flip(expected)
        assert_close(g, expected, name, f32)


@needs_kernel
@pytest.mark.parametrize("seed", range(4))
def test_packed_rows_are_the_oracle_per_sequence(seed):
    """Each sequence of a packed batch is the oracle on its own first L steps (either direction)."""
    rng = np.random.default_rng(100 + seed)
    B, T, I, H = int(rng.integers(2, 9)), int(rng.integers(1, 12)), int(rng.integers(1, 6)), int(rng.integers(1, 9))
    P = int(rng.integers(1, H)) if H > 1 and seed % 2 else None
    reverse = bool(seed // 2)
    lengths = sorted(rng.integers(1, T + 1, size=B).tolist(), reverse=True)
    lengths[0] = T
    batch_sizes = [sum(1 for n in lengths if n > t) for t in range(T)]
    inputs, upstream = random_lstm_problem(rng, T, B, I, H, P)
    rows = [(t, k) for t in range(T) for k in range(batch_sizes[t])]  # packed row order
    x_rows = np.stack([inputs["x"][t, k] for t, k in rows])
    dy_rows = np.stack([upstream["dy"][t, k] for t, k in rows])
    y, hT, cT, grads = packed_layer(lstm_cpu.lstm_layer, x_rows, batch_sizes, inputs["h0"], inputs["c0"],
                                    inputs["W"], inputs["U"], inputs["b"], inputs.get("R"), reverse,
                                    (dy_rows, upstream["dhT"], upstream["dcT"]))
    summed = {name: 0.0 for name in ("dW", "dU", "db", "dR") if name in grads}
    f32 = torch.float32
    for k, n in enumerate(lengths):
        order = slice(None, None, -1) if reverse else slice(None)
        one = dict(inputs, x=inputs["x"][:n, k:k + 1][order].copy(), h0=inputs["h0"][k:k + 1],
                   c0=inputs["c0"][k:k + 1])
        y_ref, hT_ref, cT_ref, cache = lstm_forward(**one)
        g = lstm_backward(upstream["dy"][:n, k:k + 1][order].copy(), upstream["dhT"][k:k + 1],
                          upstream["dcT"][k:k + 1], cache)
        mine = [rows.index((t, k)) for t in range(n)]
        assert_close(y[mine], y_ref[order][:, 0].copy(), f"y of sequence {k}", f32)
        assert_close(hT[k], hT_ref[0], f"h_T of sequence {k}", f32)
        assert_close(cT[k], cT_ref[0], f"c_T of sequence {k}", f32)
        assert_close(grads["dx"][mine], g["dx"][order][:, 0].copy(), f"dx of sequence {k}", f32)
        assert_close(grads["dh0"][k], g["dh0"][0], f"dh0 of sequence {k}", f32)
        assert_close(grads["dc0"][k], g["dc0"][0], f"dc0 of sequence {k}", f32)
        for name in summed:
            summed[name] = summed[name] + g[name]
    for name, total in summed.items():
        assert_close(grads[name], total, f"{name} summed over sequences", f32)


@needs_kernel
@pytest.mark.parametrize("trial", range(12))
def test_kernel_equals_the_torch_backend_on_random_packed_problems(trial):
    rng = random.Random(trial)
    B, T, I, H = rng.randint(1, 40), rng.randint(1, 30), rng.randint(1, 20), rng.randint(1, 40)
    P = rng.choice([None, rng.randint(1, H - 1)]) if H > 1 else None
    lengths = [T] * B if rng.random() < 0.4 else sorted([T] + [rng.randint(1, T) for _ in range(B - 1)],
                                                        reverse=True)
    batch_sizes = [sum(1 for n in lengths if n > t) for t in range(T)]
    N, Pout = sum(batch_sizes), P or H
    g = torch.Generator().manual_seed(trial)
    args = dict(x=torch.randn(N, I, generator=g), h0=torch.randn(B, Pout, generator=g),
                c0=torch.randn(B, H, generator=g), W=torch.randn(4 * H, I, generator=g) * 0.4,
                U=torch.randn(4 * H, Pout, generator=g) * 0.4,
                b=torch.randn(4 * H, generator=g) if rng.random() < 0.8 else None,
                R=torch.randn(Pout, H, generator=g) * 0.4 if P else None)
    upstream = (torch.randn(N, Pout, generator=g), torch.randn(B, Pout, generator=g), torch.randn(B, H, generator=g))
    reverse = rng.random() < 0.5
    ours = packed_layer(lstm_cpu.lstm_layer, batch_sizes=batch_sizes, reverse=reverse, upstream=upstream, **args)
    portable = packed_layer(lstm_torch.lstm_layer, batch_sizes=batch_sizes, reverse=reverse, upstream=upstream,
                            **args)
    # Weight gradients sum over all N rows; BPTT chains T steps of 4H-long sums: the bound follows the problem.
    tolerance = float32_tolerance(max(N, T * 4 * H))
    for name, a, b in zip(("y", "h_T", "c_T"), ours[:3], portable[:3], strict=True):
        assert_close(a, b, name, tolerance=tolerance)
    assert ours[3].keys() == portable[3].keys()
    for name in ours[3]:
        assert_close(ours[3][name], portable[3][name], f"{name} (N={N}, T={T}, H={H})", tolerance=tolerance)


@needs_kernel
@pytest.mark.parametrize("config", random_lstm_configs(12, seed=11), ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_cpu_backend_equals_nn_lstm(config, packed):
    config = dict(config)
    T, B, with_hx = config.pop("T"), config.pop("B"), config.pop("hx")
    reference = torch.nn.LSTM(**config)
    ours = lstmkit.LSTM.from_torch(reference, backend="cpu")
    L, D = config["num_layers"], 2 if config["bidirectional"] else 1
    shape = (B, T, config["input_size"]) if config["batch_first"] else (T, B, config["input_size"])
    x = torch.randn(shape)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    hx = (torch.randn(L * D, B, config["proj_size"] or config["hidden_size"]),
          torch.randn(L * D, B, config["hidden_size"])) if with_hx else None
    results = {}
    for name, module in (("nn.LSTM", reference), ("cpu", ours)):
        leaves = [x.clone().requires_grad_(True)] + ([t.clone().requires_grad_(True) for t in hx] if hx else [])
        data = (pack_padded_sequence(leaves[0], lengths, batch_first=config["batch_first"], enforce_sorted=False)
                if packed else leaves[0])
        y, (h_n, c_n) = module(data, tuple(leaves[1:]) if hx else None)
        y = y.data if packed else y
        weights = torch.linspace(-1, 1, y.numel()).view_as(y)
        loss = (y * weights).sum() + (h_n ** 2).sum() + (0.5 * c_n).sum()
        grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
        results[name] = (y, h_n, c_n, *grads)
    for k, (a, b) in enumerate(zip(results["cpu"], results["nn.LSTM"], strict=True)):
        assert_close(a, b, f"cpu vs nn.LSTM, output {k}")


@needs_kernel
def test_auto_runs_the_kernel_where_it_is_chosen_and_matches_torch():
    torch.manual_seed(3)
    model = lstmkit.LSTM(6, 10, num_layers=2, proj_size=4, batch_first=True)
    portable = lstmkit.LSTM(6, 10, num_layers=2, proj_size=4, batch_first=True, backend="torch")
    portable.load_state_dict(model.state_dict())
    x = torch.randn(5, 9, 6)
    calls = []
    original = lstm_cpu.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    lstm_cpu.forward = counting
    try:
        with paths_pinned("cpu"):  # where the measurement chose the kernel
            y, _ = model(x)
    finally:
        lstm_cpu.forward = original
    assert len(calls) == 2, "auto should have run the C kernel on both layers"
    y_portable, _ = portable(x)
    assert_close(y, y_portable, "auto vs torch")
    y.sum().backward()
    y_portable.sum().backward()
    for (name, p), q in zip(model.named_parameters(), portable.parameters(), strict=True):
        assert_close(p.grad, q.grad, name)


def pointwise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lib = lstm_cpu._load()
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs = [np.empty_like(x) for _ in range(3)]
    lib.lk_pointwise(ctypes.c_int(x.size), *(o.ctypes.data_as(ctypes.c_void_p) for o in (x, *outs)))
    return tuple(outs)


@needs_kernel
def test_pointwise_exp_sigmoid_tanh_are_accurate_to_float32():
    x = np.concatenate([np.linspace(-100, 100, 200_001), np.linspace(-0.1, 0.1, 20_001), [0.0, -0.0, 1e-30, -1e-30]])
    exp, sig, tanh = pointwise(x)
    x32 = x.astype(np.float32).astype(np.float64)
    clamped = np.clip(x32, -87, 87)
    assert np.max(np.abs(exp / np.exp(clamped) - 1)) < 4e-7  # float32 rounding is 6e-8 per step
    assert np.max(np.abs(sig - 1 / (1 + np.exp(-x32)))) < 2e-7
    inside = x32 > -87  # below, the clamp gives sigmoid ~1.6e-38 for values under 1e-38: absolute error only
    true_sig = 1 / (1 + np.exp(-x32[inside]))
    assert np.max(np.abs(sig[inside] - true_sig) / true_sig) < 5e-7
    assert np.max(np.abs(tanh - np.tanh(x32))) < 2e-7
    small = np.abs(x32) < 1
    assert np.max(np.abs(tanh[small] - np.tanh(x32[small])) / np.maximum(np.abs(np.tanh(x32[small])), 1e-30)) < 1e-6
    assert sig.min() >= 0 and sig.max() <= 1 and tanh.min() >= -1 and tanh.max() <= 1


@needs_kernel
def test_nan_in_the_input_gives_nan_like_nn_lstm():
    reference = torch.nn.LSTM(3, 5, batch_first=True)
    x = torch.randn(2, 4, 3)
    x[1, 2, 0] = float("nan")
    y_ref, _ = reference(x)
    y, _ = lstmkit.LSTM.from_torch(reference, backend="cpu")(x)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref)) and torch.isnan(y).any()
    assert_close(y[0], y_ref[0], "the sequence without NaN")


@needs_kernel
@needs_two_threads
def test_repeated_calls_are_bit_identical_and_threads_agree():
    torch.manual_seed(4)
    model = lstmkit.LSTM(7, 19, num_layers=2, bidirectional=True, backend="cpu")
    x = torch.randn(11, 37, 7, requires_grad=True)  # [T, B, I]: 37 rows, split between every thread torch has
    assert kernel_threads(37) == min(torch.get_num_threads(), 37 // lstm_cpu.MIN_ROWS_PER_THREAD) > 1
    first = model(x)[0]
    (grad,) = torch.autograd.grad(first.square().sum(), x)
    for call in range(3):
        again = model(x)[0]
        again_grad = torch.autograd.grad(again.square().sum(), x)[0]
        for name, a, b in (("output", again, first), ("input gradient", again_grad, grad)):
            assert torch.equal(a, b), f"{name} of repeated call {call + 1} differs: max diff {(a - b).abs().max():.3e}"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = model(x)[0]
        (single_grad,) = torch.autograd.grad(single.square().sum(), x)
    finally:
        torch.set_num_threads(threads)
    assert_close(single, first, f"output, one thread vs {threads}")
    assert_close(single_grad, grad, f"input gradient, one thread vs {threads}")


@needs_kernel
def test_under_autocast_the_kernel_takes_bf16_input_and_computes_in_float32():
    torch.manual_seed(5)
    model = lstmkit.LSTM(8, 16, batch_first=True, backend="cpu")
    x = torch.randn(4, 10, 8)
    expected, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = model(x.bfloat16())
        y.float().sum().backward()
    assert_close(y.float(), expected, "bf16 input under autocast", torch.bfloat16)
    assert model.weight_ih_l0.grad is not None and model.weight_ih_l0.grad.dtype == torch.float32


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("LSTMKIT_NO_C_KERNEL", "CC", "LSTMKIT_CACHE")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**base, **env})


def test_without_a_compiler_everything_runs_on_the_torch_backend(tmp_path):
    code = (
        "import torch, lstmkit\n"
        "from lstmkit.ops import lstm_cpu\n"
        "assert not lstm_cpu.available()\n"
        "print(lstm_cpu.unavailable_reason())\n"
        "torch.manual_seed(0)\n"
        "m = lstmkit.LSTM(3, 4, proj_size=2, backend='cpu'); x = torch.randn(5, 2, 3)\n"
        "t = lstmkit.LSTM(3, 4, proj_size=2, backend='torch'); t.load_state_dict(m.state_dict())\n"
        "assert torch.equal(m(x)[0], t(x)[0])\n"
    )
    missing = run_python(code, CC=str(tmp_path / "no-such-cc"), LSTMKIT_CACHE=str(tmp_path / "cache"))
    assert missing.returncode == 0, missing.stderr
    assert "no-such-cc" in missing.stdout or "compiler" in missing.stdout
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'broken compiler' >&2\nexit 1\n")
    broken.chmod(0o755)
    failing = run_python(code, CC=str(broken), LSTMKIT_CACHE=str(tmp_path / "cache"))
    assert failing.returncode == 0, failing.stderr
    assert "failed" in failing.stdout
    disabled = run_python(code, LSTMKIT_NO_C_KERNEL="1")
    assert disabled.returncode == 0 and "LSTMKIT_NO_C_KERNEL" in disabled.stdout, disabled.stderr


@needs_kernel
def test_the_library_is_built_once_into_the_cache(tmp_path):
    code = "from lstmkit.ops import lstm_cpu; assert lstm_cpu.available(), lstm_cpu.unavailable_reason()"
    for _ in range(2):
        result = run_python(code, LSTMKIT_CACHE=str(tmp_path))
        assert result.returncode == 0, result.stderr
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", built


@needs_kernel
def test_fading_gradients_are_flushed_not_denormal_and_the_callers_float_mode_is_kept():
    """A loss on the last state of a long sequence whose forget gates are small: the gradient fades below
    float32's normal range within ~30 steps. The kernel keeps no denormals (they made IMDB's backward 20x
    slower) and still equals the torch backend; the caller's thread still computes denormals afterwards."""
    torch.manual_seed(6)
    T, B, I, H = 120, 4, 3, 8
    W, U = torch.randn(4 * H, I) * 0.1, torch.randn(4 * H, H) * 0.1
    b = torch.zeros(4 * H)
    b[H:2 * H] = -3.0  # forget gate ~0.05: dc shrinks ~20x per step
    x = torch.randn(T * B, I)
    h0, c0 = torch.zeros(B, H), torch.zeros(B, H)
    results = {}
    for name, fn in (("cpu", lstm_cpu.lstm_layer), ("torch", lstm_torch.lstm_layer)):
        leaves = [t.clone().requires_grad_(True) for t in (x, W, U, b)]
        _, hT, _ = fn(leaves[0], [B] * T, h0, c0, Cell(leaves[1], leaves[2], leaves[3]))
        hT.sum().backward()
        results[name] = [t.grad for t in leaves]
    for k, (a, e) in enumerate(zip(results["cpu"], results["torch"], strict=True)):
        assert_close(a, e, f"gradient {k}")
    dx = results["cpu"][0]
    assert (dx[: B * 60] == 0).all(), "gradients 60 steps back are below 1e-30 and flushed"
    assert not ((dx != 0) & (dx.abs() < torch.finfo(torch.float32).tiny)).any(), "no denormals"
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0, "the calling thread's denormal mode was changed"


@needs_kernel
@pytest.mark.parametrize("variant", [{}, {"layer_norm": True, "peephole": True}], ids=["standard", "layer_norm"])
def test_double_backward_and_torch_func_match_the_torch_backend(variant):
    """create_graph=True (a gradient penalty) re-runs the layer on the portable path; torch.func transforms take
    that path outright. Both must give the torch backend's numbers."""
    from torch.func import functional_call, grad

    torch.manual_seed(7)
    ours = lstmkit.LSTM(3, 5, num_layers=2, batch_first=True, backend="cpu", **variant)
    portable = lstmkit.LSTM(3, 5, num_layers=2, batch_first=True, backend="torch", **variant)
    portable.load_state_dict(ours.state_dict())
    x = torch.randn(8, 6, 3)
    penalties = []
    for module in (ours, portable):
        xi = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(module(xi)[0].square().sum(), xi, create_graph=True)
        penalty = gx.square().sum()
        penalties.append((penalty, torch.autograd.grad(penalty, list(module.parameters()))))
    assert_close(penalties[0][0], penalties[1][0], "gradient penalty")
    for a, b in zip(penalties[0][1], penalties[1][1], strict=True):
        assert_close(a, b, "second-order gradient")
    per_module = [grad(lambda p, m=m: functional_call(m, p, (x,))[0].sum())(dict(m.named_parameters()))
                  for m in (ours, portable)]
    for name in per_module[0]:
        assert_close(per_module[0][name], per_module[1][name], f"torch.func.grad {name}")


@needs_kernel
def test_under_autocast_outputs_have_the_autocast_dtype_whatever_the_path():
    model = lstmkit.LSTM(3, 5, batch_first=True)
    for batch in (1, 8, 32):  # oneDNN below 8 sequences, the kernel from 8
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, (h, c) = model(torch.randn(batch, 6, 3))
        assert y.dtype == h.dtype == c.dtype == torch.bfloat16, batch


@needs_kernel
def test_mismatched_shapes_raise_before_reaching_c():
    args = (torch.randn(3, 16, 4), torch.randn(2, 8), torch.randn(2, 8), torch.randn(32, 4), torch.randn(32, 8),
            None, None, False)
    with pytest.raises(ValueError, match="h0 is"):
        torch.ops.lstmkit.lstm_layer(*args)
    gates = torch.randn(12, 16)
    with pytest.raises(ValueError, match="batch_sizes sum to"):
        lstm_cpu.forward(gates, [3, 3], torch.zeros(3, 4), torch.zeros(3, 4), torch.randn(16, 4), None, False, False)
    with pytest.raises(ValueError, match="R is"):
        lstm_cpu.forward(gates, [3] * 4, torch.zeros(3, 2), torch.zeros(3, 4), torch.randn(16, 2),
                         torch.randn(4, 2), False, False)
    with pytest.raises(ValueError, match="bias is"):
        lstm_cpu.forward(gates, [3] * 4, torch.zeros(3, 4), torch.zeros(3, 4), torch.randn(16, 4), None, False, False,
                         bias=torch.randn(4))
    for name, wrong in (("h_mask", torch.ones(2, 4)), ("zoneout_h", torch.ones(12, 3)),
                        ("zoneout_c", torch.ones(12, 4, dtype=torch.float64))):
        with pytest.raises(ValueError, match=f"{name} is a"):
            lstm_cpu.forward(gates, [3] * 4, torch.zeros(3, 4), torch.zeros(3, 4), torch.randn(16, 4), None, False,
                             False, **{name: wrong})



@needs_kernel
@pytest.mark.parametrize("peephole", [False, True])
def test_a_zoneout_rate_of_zero_is_no_zoneout(peephole):
    """zoneout_c=0.0 (a rate, not None) once made the forward allocate states that no row wrote, and BPTT read them
    as c_{t-1}: the kernel now takes a zero rate as no zoneout, forward and backward alike."""
    torch.manual_seed(2)
    N, B, H = 12, 3, 4
    sizes = [B] * (N // B)
    U, h0, c0 = torch.randn(4 * H, H), torch.randn(B, H), torch.randn(B, H)
    gates = torch.randn(N, 4 * H)
    p = torch.randn(3, H) if peephole else None
    runs = []
    for rate in (None, 0.0):
        activated = gates.clone()  # the forward writes the activated gates over its input projection
        out = lstm_cpu.forward(activated, sizes, h0, c0, U, None, False, True, peephole=p, zoneout_h=rate,
                               zoneout_c=rate)
        assert out.get("states") is None, "no zoneout: no states"
        grads = lstm_cpu.backward(torch.ones(N, H), torch.zeros(B, H), torch.zeros(B, H), sizes, c0, U, None,
                                  activated, out["cells"], False, peephole=p, zoneout_h=rate, zoneout_c=rate,
                                  states=out.get("states"))
        runs.append((out["y"], grads["dz"], grads["dc0"]))
    for name, a, b in zip(("y", "dz", "dc0"), *runs, strict=True):
        assert torch.equal(a, b), f"{name}: a zoneout rate of 0 differs from none"


# --- the Embedding and a one-layer LSTM fused on the kernel (W x once per distinct word) --------------------

@needs_kernel
@pytest.mark.parametrize("seed", range(6))
def test_a_classifier_train_step_with_the_embedding_fused_equals_the_portable_one(seed):
    import copy

    from lstmkit.models import SequenceClassifier

    rng = random.Random(seed)
    bidirectional, pooling = rng.random() < 0.5, rng.choice(["last", "mean", "max", "max_mean"])
    B, T, V, H = rng.randint(8, 20), rng.randint(1, 30), rng.randint(5, 60), rng.randint(1, 24)
    torch.manual_seed(seed)
    model = SequenceClassifier(num_classes=2, hidden_size=H, vocab_size=V, embedding_dim=rng.randint(1, 16),
                               bidirectional=bidirectional, pooling=pooling).train()
    portable = copy.deepcopy(model)
    portable.lstm.backend = "torch"  # the reference: lstmkit's portable path, no C kernel on that side
    lengths = torch.randint(1, T + 1, (B,))
    ids = torch.randint(1, V, (B, T)) * (torch.arange(T)[None, :] < lengths[:, None])  # 0 pads past each length
    fused_calls = []
    original = lstm_cpu.embedded_lstm_layer

    def counting(*args, **kwargs):
        fused_calls.append(1)
        return original(*args, **kwargs)

    grads = []
    for module in (model, portable):
        module.zero_grad()
        with paths_pinned("cpu"):  # where "auto" measured the kernel fastest for this LSTM's call
            lstm_cpu.embedded_lstm_layer = counting
            try:
                logits = module(ids, lengths)
            finally:
                lstm_cpu.embedded_lstm_layer = original
        logits.square().sum().backward()
        grads.append((logits.detach(), {name: p.grad.clone() for name, p in module.named_parameters()}))
        assert len(fused_calls) == 1, f"the fused layer ran {len(fused_calls)} times (once: the model, not the oracle)"
    # Weight gradients sum over all B*T rows; BPTT chains T steps of 4H-long sums: the bound follows the problem.
    tolerance = float32_tolerance(max(B * T, T * 4 * H))
    assert_close(grads[0][0], grads[1][0], f"logits, seed {seed}", tolerance=tolerance)
    for name, grad in grads[0][1].items():
        assert_close(grad, grads[1][1][name], f"{name}.grad, seed {seed}", tolerance=tolerance)
    assert not grads[0][1]["embedding.weight"][0].any()  # the padding id's row learns nothing, as nn.Embedding


@needs_kernel
def test_the_fused_embedding_layer_double_backward_and_where_it_is_not_used():
    from lstmkit.models import SequenceClassifier

    torch.manual_seed(0)
    model = SequenceClassifier(num_classes=2, hidden_size=5, vocab_size=20, embedding_dim=4).train()
    ids, lengths = torch.randint(1, 20, (8, 6)), torch.full((8,), 6)
    # A gradient penalty differentiates the gradient: the fused layer re-runs on the portable path for it.
    penalties = []
    for fused in (True, False):
        if not fused:
            model.lstm._fuses_embedding = lambda *args: False
        grad = torch.autograd.grad(model(ids, lengths).sum(), model.lstm.weight_hh_l0, create_graph=True)[0]
        penalties.append(torch.autograd.grad(grad.square().sum(), model.embedding.weight)[0])
    assert_close(penalties[0], penalties[1], "embedding gradient of a gradient penalty")
    del model.lstm._fuses_embedding
    ids8 = ids[:8]

    def fuses(model):  # what LSTM.embedded decides for the classifier's padded [B, T] ids
        return model.lstm._fuses_embedding(model.embedding, False, ids8, (ids8.shape[1], ids8.shape[0]), None)

    with paths_pinned("vendor"):  # "auto" measured oneDNN faster for this call: the LSTM's own choice
        assert not fuses(model)
    with paths_pinned("cpu"):
        assert fuses(model)
        assert not fuses(model.eval())  # inference: the LSTM's own choice
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fuses(model.train())
        two_layers = SequenceClassifier(num_classes=2, hidden_size=5, vocab_size=20, num_layers=2).train()
        peephole = SequenceClassifier(num_classes=2, hidden_size=5, vocab_size=20, peephole=True).train()
        assert not fuses(two_layers)
        assert not fuses(peephole)  # a variant cell: the C kernel does not compute it
