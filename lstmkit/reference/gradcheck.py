"""Central finite differences: the check on the hand-written BPTT of `lstm_numpy`.

The scalar checked is a random projection of every output, L = sum(y*dy) + sum(h_T*dh_T) + sum(c_T*dc_T),
so that the gradient of each output and each final state is exercised, not only their sum.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lstmkit.reference.lstm_numpy import lstm_backward, lstm_forward

CONSTANTS = ("h_mask", "zoneout_h", "zoneout_c")  # inputs that are no parameters (masks): nothing to differentiate


def numerical_gradient(loss: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d loss / d array by central differences, perturbing `array` in place one element at a time."""
    grad = np.zeros_like(array)
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + eps
        up = loss()
        flat[k] = saved - eps
        down = loss()
        flat[k] = saved
        flat_grad[k] = (up - down) / (2.0 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(max |a|, max |n|): 0 when equal, scale-free, defined for all-zero pairs."""
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0))
    if scale == 0.0:
        return 0.0
    return float(np.abs(analytic - numeric).max() / scale)


def random_lstm_problem(
    rng: np.random.Generator, T: int, B: int, I: int, H: int, P: int | None = None, *, peephole: bool = False,
    coupled_gates: bool = False, layer_norm: bool = False, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random float64 inputs and parameters, and random upstream gradients, for one LSTM layer (with
    `peephole`, inputs["peephole"] [3, H]; with `coupled_gates`, three gate blocks; with `layer_norm`, gains near
    1 and biases near 0 in ln_x, ln_h [2, GH] and ln_c [2, H]; with recurrent_dropout p, a mask h_mask [B, P] of
    0 and 1/(1-p))."""
    P_out = H if P is None else P
    G = 3 if coupled_gates else 4
    inputs = {
        "x": rng.standard_normal((T, B, I)),
        "W": rng.standard_normal((G * H, I)) * 0.5,
        "U": rng.standard_normal((G * H, P_out)) * 0.5,
        "b": rng.standard_normal(G * H) * 0.5,
        "h0": rng.standard_normal((B, P_out)),
        "c0": rng.standard_normal((B, H)),
    }
    if P is not None:
        inputs["R"] = rng.standard_normal((P, H)) * 0.5
    if peephole:
        inputs["peephole"] = rng.standard_normal((3, H)) * 0.5
    if zoneout:  # Bernoulli(p) masks on h and on c, every step
        inputs["zoneout_h"] = (rng.random((T, B, P_out)) < zoneout).astype(float)
        inputs["zoneout_c"] = (rng.random((T, B, H)) < zoneout).astype(float)
    if recurrent_dropout:
        inputs["h_mask"] = (rng.random((B, P_out)) >= recurrent_dropout) / (1.0 - recurrent_dropout)
    if layer_norm:
        for name, width in (("ln_x", G * H), ("ln_h", G * H), ("ln_c", H)):
            inputs[name] = np.stack([1.0 + 0.3 * rng.standard_normal(width), 0.3 * rng.standard_normal(width)])
    upstream = {
        "dy": rng.standard_normal((T, B, P_out)),
        "dhT": rng.standard_normal((B, P_out)),
        "dcT": rng.standard_normal((B, H)),
    }
    return inputs, upstream


def check_bptt(inputs: dict[str, np.ndarray], upstream: dict[str, np.ndarray], eps: float = 1e-6,
               **options: object) -> dict[str, float]:
    """Relative error of every BPTT gradient against finite differences, keyed by gradient name.
    options: the variant's switches of `lstm_forward` (coupled_gates=, cell_clip=)."""

    def loss() -> float:
        y, hT, cT, _ = lstm_forward(**inputs, **options)
        return float((y * upstream["dy"]).sum() + (hT * upstream["dhT"]).sum() + (cT * upstream["dcT"]).sum())

    _, _, _, cache = lstm_forward(**inputs, **options)
    analytic = lstm_backward(upstream["dy"], upstream["dhT"], upstream["dcT"], cache)
    return {
        "d" + name: relative_error(analytic["d" + name], numerical_gradient(loss, inputs[name], eps))
        for name in inputs if name not in CONSTANTS
    }
