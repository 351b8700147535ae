"""Long-range BPTT terms on every path, isolated so the tolerance can see them.

Elsewhere every step carries a random upstream gradient, and errors are measured against the largest value of a
tensor, so the terms that reach more than ~30 steps back are below the tolerance: a BPTT that cut them would
pass. Here the loss is on the last step only and the forget gates sit near 1 (bias +5: sigma(5) = 0.993, so ~half
of the cell's gradient survives 100 steps). The gradient of the first input and of the initial state is then made
of long-range terms alone, and each is compared on its own scale with the float64 oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close, float32_tolerance, paths_pinned

import lstmkit
from lstmkit.ops import lstm_cpu
from lstmkit.reference import lstm_backward, lstm_forward

T, B, I, H = 100, 3, 4, 8
PATHS = ["torch", "op", "cpu", "auto:vendor", "auto:cpu"]


def long_range_problem() -> dict[str, np.ndarray]:
    """float32-representable float64 arrays, so the float32 paths and the oracle start from the same numbers."""
    rng = np.random.default_rng(2024)
    W, U = rng.standard_normal((4 * H, I)) * 0.3, rng.standard_normal((4 * H, H)) * 0.3
    b = rng.standard_normal(4 * H) * 0.1
    b[H:2 * H] += 5.0  # forget gates near 1: the cell carries its gradient back over the whole sequence
    problem = {"x": rng.standard_normal((T, B, I)), "W": W, "U": U, "b": b, "h0": rng.standard_normal((B, H)),
               "c0": rng.standard_normal((B, H)), "dy_last": rng.standard_normal((B, H))}
    return {k: v.astype(np.float32).astype(np.float64) for k, v in problem.items()}


def oracle_gradients(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    _, _, _, cache = lstm_forward(p["x"], p["W"], p["U"], p["b"], p["h0"], p["c0"])
    dy = np.zeros((T, B, H))
    dy[-1] = p["dy_last"]  # the loss reads the last step only
    grads = lstm_backward(dy, np.zeros((B, H)), np.zeros((B, H)), cache)
    return {"dx[0]": grads["dx"][0], "dx[T/2]": grads["dx"][T // 2], "dh0": grads["dh0"], "dc0": grads["dc0"]}


@pytest.mark.parametrize("path", PATHS)
def test_gradients_from_100_steps_back_match_the_oracle(path):
    if "cpu" in path and not lstm_cpu.available():
        pytest.skip(f"the C kernel is not built here ({lstm_cpu.unavailable_reason()})")
    p = long_range_problem()
    expected = oracle_gradients(p)
    model = lstmkit.LSTM(I, H, backend=path.split(":")[0])
    with torch.no_grad():
        model.weight_ih_l0.copy_(torch.tensor(p["W"]))
        model.weight_hh_l0.copy_(torch.tensor(p["U"]))
        model.bias_ih_l0.copy_(torch.tensor(p["b"]))
        model.bias_hh_l0.zero_()
    x, h0, c0 = (torch.tensor(p[k], dtype=torch.float32, requires_grad=True) for k in ("x", "h0", "c0"))
    pinned = paths_pinned(path.split(":")[1]) if path.startswith("auto:") else None
    if pinned is not None:
        with pinned as tuner:
            y, _ = model(x, (h0[None], c0[None]))
        ran = {v for k, v in tuner.decisions().items() if not k.startswith("gemm|")}
        assert ran == {path.split(":")[1]}, f"{path} pinned, but auto ran {ran}"
    else:
        y, _ = model(x, (h0[None], c0[None]))
    (y[-1] * torch.tensor(p["dy_last"], dtype=torch.float32)).sum().backward()
    got = {"dx[0]": x.grad[0], "dx[T/2]": x.grad[T // 2], "dh0": h0.grad, "dc0": c0.grad}
    # Each gradient chains T steps of 4H-long sums in float32; the oracle is float64 (one side rounds).
    tolerance = float32_tolerance(T * 4 * H, computations=1)
    for name, value in expected.items():
        assert np.abs(value).max() > 1e-3, f"{name} is too small to tell a cut BPTT apart: the test is void"
        assert_close(got[name], value, f"{path}: {name} (loss on step {T} only)", tolerance=tolerance)
