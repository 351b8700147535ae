"""The oracle's own check: hand-written BPTT against central finite differences, float64."""

from __future__ import annotations

import numpy as np
import pytest

from lstmkit.reference import check_bptt, lstm_backward, lstm_forward, random_lstm_problem, sigmoid

# (T, B, I, H, P): edge sizes first (T=1, B=1, H=1, odd H, projections), then random ones.
SHAPES = [(1, 1, 1, 1, None), (1, 3, 2, 5, None), (7, 1, 3, 5, None), (4, 2, 3, 6, 3), (3, 2, 1, 7, 1)]
_rng = np.random.default_rng(1234)
for _ in range(6):
    _T, _B, _I, _H = (int(v) for v in _rng.integers(1, 8, size=4))
    SHAPES.append((_T, _B, _I, _H, None if _rng.random() < 0.5 or _H == 1 else int(_rng.integers(1, _H))))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
def test_bptt_matches_finite_differences(shape):
    T, B, I, H, P = shape
    # Seeded from the integers (hash() of a tuple holding None changes between processes): the same problem every run.
    inputs, upstream = random_lstm_problem(np.random.default_rng([T, B, I, H, P or 0]), T, B, I, H, P)
    errors = check_bptt(inputs, upstream)
    expected_keys = {"dx", "dW", "dU", "db", "dh0", "dc0"} | ({"dR"} if P is not None else set())
    assert set(errors) == expected_keys
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, f"{worst}: relative error {errors[worst]:.2e} against finite differences"


def test_forward_by_hand_one_unit():
    # H = 1, I = 1, one step, every gate a different value, so a swap of any two gates (or of W and U) shows.
    # Pre-activations a = W x + U h0 + b, with b chosen so that each gate is a known number:
    # i = sigma(ln 1/3) = 0.25, f = sigma(ln 3) = 0.75, g = tanh(0.5), o = sigma(ln 4) = 0.8.
    x, h0, c0 = np.full((1, 1, 1), 2.0), np.array([[0.3]]), np.array([[2.0]])
    W, U = np.array([[0.5], [-0.25], [1.0], [0.2]]), np.array([[1.0], [2.0], [-1.0], [0.5]])
    a = np.array([np.log(1 / 3), np.log(3.0), 0.5, np.log(4.0)])
    b = a - W[:, 0] * 2.0 - U[:, 0] * 0.3
    y, hT, cT, cache = lstm_forward(x, W, U, b, h0, c0)
    gates = {name: getattr(cache, name)[0, 0, 0] for name in "ifgo"}
    expected = {"i": 0.25, "f": 0.75, "g": np.tanh(0.5), "o": 0.8}
    for name, value in expected.items():
        assert np.isclose(gates[name], value, rtol=1e-12), f"gate {name}: {gates[name]} != {value} (all: {gates})"
    c_expected = 0.75 * 2.0 + 0.25 * np.tanh(0.5)  # 6.55
    assert np.isclose(cT[0, 0], c_expected, rtol=1e-12), f"c_T {cT[0, 0]} != {c_expected}"
    assert np.isclose(hT[0, 0], 0.8 * np.tanh(c_expected), rtol=1e-12), f"h_T {hT[0, 0]}"  # 6.56
    assert np.array_equal(y[0], hT)


def test_sigmoid_is_stable_and_exact():
    a = np.array([-1000.0, -20.0, 0.0, 20.0, 1000.0])
    expected = np.array([0.0, 1 / (1 + np.exp(20.0)), 0.5, 1 / (1 + np.exp(-20.0)), 1.0])
    assert np.allclose(sigmoid(a), expected, rtol=1e-12, atol=1e-300)


def test_backward_does_not_modify_its_inputs():
    inputs, upstream = random_lstm_problem(np.random.default_rng(0), 3, 2, 2, 3)
    copies = {k: v.copy() for k, v in {**inputs, **upstream}.items()}
    _, _, _, cache = lstm_forward(**inputs)
    lstm_backward(upstream["dy"], upstream["dhT"], upstream["dcT"], cache)
    for k, v in {**inputs, **upstream}.items():
        assert np.array_equal(v, copies[k]), f"{k} was modified"
