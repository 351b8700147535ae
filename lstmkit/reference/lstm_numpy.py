"""The LSTM of the textbook in NumPy float64: forward with a per-step cache, and BPTT written by hand.

This file is the oracle of lstmkit. Every other implementation (the torch backend, fused kernels,
variants) is checked against it, and it is itself checked against central finite differences
(`lstmkit.reference.gradcheck`). It favours being obviously right over being fast.

Equations (Qiu Xipeng, *Neural Networks and Deep Learning*, eq. 6.51-6.56), one layer, one direction,
gate order i, f, g, o as in torch.nn.LSTM (g is the candidate cell c~ of the textbook):

    a_t = W x_t + U h_{t-1} + b                  pre-activations of all four gates, [B, 4H]
    i_t = sigma(a_i)                             input gate         (6.51)
    f_t = sigma(a_f)                             forget gate        (6.52)
    o_t = sigma(a_o)                             output gate        (6.53)
    g_t = tanh(a_g)                              candidate cell c~  (6.54)
    c_t = f_t * c_{t-1} + i_t * g_t              memory cell        (6.55)
    m_t = o_t * tanh(c_t)                        hidden state       (6.56)
    h_t = R m_t  if a projection R is given, else m_t   (LSTMP, Sak et al. 2014; torch's proj_size)

Shapes: x: [T, B, I], W: [4H, I], U: [4H, P] (P = H without projection), b: [4H], R: [P, H],
h0: [B, P], c0: [B, H]. Products are written row-major: a_t = x_t @ W.T + h_{t-1} @ U.T + b.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sigmoid(a: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow, and full relative precision for very negative a
    # (the tanh form 0.5 * (1 + tanh(a/2)) loses it to cancellation: 3e-8 relative error at a = -20).
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass
class LSTMCache:
    """What the backward pass needs from the forward pass, one entry per step (index t)."""

    x: np.ndarray  # [T, B, I]
    W: np.ndarray  # [4H, I]
    U: np.ndarray  # [4H, P]
    R: np.ndarray | None  # [P, H] or None
    h_prev: np.ndarray  # [T, B, P]  h_{t-1} for each step
    c_prev: np.ndarray  # [T, B, H]  c_{t-1} for each step
    i: np.ndarray  # [T, B, H]
    f: np.ndarray  # [T, B, H]
    g: np.ndarray  # [T, B, H]
    o: np.ndarray  # [T, B, H]
    c: np.ndarray  # [T, B, H]
    m: np.ndarray  # [T, B, H]  o * tanh(c), before the projection


def lstm_forward(
    x: np.ndarray,
    W: np.ndarray,
    U: np.ndarray,
    b: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    R: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, LSTMCache]:
    """Run one LSTM layer over x. Returns (y [T, B, P], h_T [B, P], c_T [B, H], cache)."""
    T, B, _ = x.shape
    H = W.shape[0] // 4
    P = H if R is None else R.shape[0]
    cache = LSTMCache(
        x=x, W=W, U=U, R=R,
        h_prev=np.empty((T, B, P)), c_prev=np.empty((T, B, H)),
        i=np.empty((T, B, H)), f=np.empty((T, B, H)), g=np.empty((T, B, H)),
        o=np.empty((T, B, H)), c=np.empty((T, B, H)), m=np.empty((T, B, H)),
    )
    y = np.empty((T, B, P))
    h, c = h0, c0
    for t in range(T):
        cache.h_prev[t], cache.c_prev[t] = h, c
        a = x[t] @ W.T + h @ U.T + b  # [B, 4H]
        i = sigmoid(a[:, 0 * H:1 * H])  # 6.51
        f = sigmoid(a[:, 1 * H:2 * H])  # 6.52
        g = np.tanh(a[:, 2 * H:3 * H])  # 6.54
        o = sigmoid(a[:, 3 * H:4 * H])  # 6.53
        c = f * c + i * g  # 6.55
        m = o * np.tanh(c)  # 6.56
        h = m if R is None else m @ R.T
        cache.i[t], cache.f[t], cache.g[t], cache.o[t], cache.c[t], cache.m[t] = i, f, g, o, c, m
        y[t] = h
    return y, h, c, cache


def lstm_backward(
    dy: np.ndarray, dhT: np.ndarray, dcT: np.ndarray, cache: LSTMCache
) -> dict[str, np.ndarray]:
    """Backpropagation through time for `lstm_forward`.

    dy: [T, B, P] gradient of the loss w.r.t. every output, dhT: [B, P] and dcT: [B, H] w.r.t. the
    final state. Returns dx, dW, dU, db, dh0, dc0 (and dR when a projection was used).

    Derivation, per step from t = T-1 down to 0, with dh and dc the total gradients reaching h_t, c_t:
        dm   = dh @ R                (or dh without projection);   dR += dh.T @ m_t
        do   = dm * tanh(c_t)
        dc  += dm * o_t * (1 - tanh(c_t)^2)
        di   = dc * g_t,  df = dc * c_{t-1},  dg = dc * i_t,  dc_{t-1} = dc * f_t
        da   = [di * i(1-i), df * f(1-f), dg * (1-g^2), do * o(1-o)]
        dx_t = da @ W,  dh_{t-1} = da @ U + dy_{t-1},  dW += da.T @ x_t,  dU += da.T @ h_{t-1},  db += sum(da)
    """
    x, W, U, R = cache.x, cache.W, cache.U, cache.R
    T = x.shape[0]
    dx = np.zeros_like(x)
    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros(W.shape[0])
    dR = None if R is None else np.zeros_like(R)
    dh = dhT + dy[T - 1]
    dc = dcT.copy()
    for t in range(T - 1, -1, -1):
        i, f, g, o, c = cache.i[t], cache.f[t], cache.g[t], cache.o[t], cache.c[t]
        if R is None:
            dm = dh
        else:
            dR += dh.T @ cache.m[t]
            dm = dh @ R
        tanh_c = np.tanh(c)
        do = dm * tanh_c
        dc = dc + dm * o * (1.0 - tanh_c**2)
        di = dc * g
        df = dc * cache.c_prev[t]
        dg = dc * i
        da = np.concatenate(
            [di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g**2), do * o * (1.0 - o)], axis=1
        )
        dx[t] = da @ W
        dW += da.T @ x[t]
        dU += da.T @ cache.h_prev[t]
        db += da.sum(axis=0)
        dc = dc * f
        dh = da @ U
        if t > 0:
            dh = dh + dy[t - 1]
    grads = {"dx": dx, "dW": dW, "dU": dU, "db": db, "dh0": dh, "dc0": dc}
    if dR is not None:
        grads["dR"] = dR
    return grads
