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

Variants (keyword arguments; each off by default, any combination allowed):

  peephole [3, H] = (p_i, p_f, p_o), diagonal peephole weights (Gers & Schmidhuber 2000):
      i_t = sigma(a_i + p_i * c_{t-1}),  f_t = sigma(a_f + p_f * c_{t-1}),  o_t = sigma(a_o + p_o * c_t)
  coupled_gates (CIFG, Greff et al. 2017): W, U, b hold three blocks (i, g, o), and f_t = 1 - i_t
      (p_f is then unused and gets no gradient)
  cell_clip > 0: c_t = clip(f_t * c_{t-1} + i_t * g_t, -cell_clip, cell_clip), before tanh and o's peephole
      (TensorFlow's LSTMCell cell_clip); the gradient is zero where the clip is active (|s_t| >= cell_clip)
  ln_x, ln_h [2, GH], ln_c [2, H]: layer normalisation (Ba et al. 2016, eq. 20-22), each row (gain; bias):
      a_t = LN(W x_t; ln_x) + LN(U h_{t-1}; ln_h) + b,   m_t = o_t * tanh(LN(c_t; ln_c))
      LN(z; g, beta) = g * (z - mean(z)) / sqrt(var(z) + eps) + beta over the whole row (all gates together);
      c_t itself (and o's peephole) stays unnormalised
  h_mask [B, P]: variational recurrent dropout (Gal & Ghahramani 2016), one mask per sequence for all steps,
      already scaled by 1/(1-p):  a_t = W x_t + U (h_{t-1} * h_mask) + b
  zoneout_h [T, B, P], zoneout_c [T, B, H]: zoneout (Krueger et al. 2016), z = 1 where a unit keeps its previous
      value (Bernoulli(p) in training; the constant p at evaluation, the expectation): with c~_t and h~_t the cell
      and output of the equations above (o and tanh read c~_t),
      c_t = z^c_t * c_{t-1} + (1 - z^c_t) * c~_t,   h_t = z^h_t * h_{t-1} + (1 - z^h_t) * h~_t
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYER_NORM_EPS = 1e-5  # as lstmkit.ops.cell.LAYER_NORM_EPS


def sigmoid(a: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow, and full relative precision for very negative a
    # (the tanh form 0.5 * (1 + tanh(a/2)) loses it to cancellation: 3e-8 relative error at a = -20).
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass
class LSTMCache:
    """What the backward pass needs from the forward pass, one entry per step (index t)."""

    x: np.ndarray  # [T, B, I]
    W: np.ndarray  # [GH, I], G = 4 (3 with coupled gates)
    U: np.ndarray  # [GH, P]
    R: np.ndarray | None  # [P, H] or None
    h_prev: np.ndarray  # [T, B, P]  h_{t-1} for each step
    c_prev: np.ndarray  # [T, B, H]  c_{t-1} for each step
    i: np.ndarray  # [T, B, H]
    f: np.ndarray  # [T, B, H]
    g: np.ndarray  # [T, B, H]
    o: np.ndarray  # [T, B, H]
    c: np.ndarray  # [T, B, H]
    m: np.ndarray  # [T, B, H]  o * tanh(c), before the projection
    s: np.ndarray  # [T, B, H]  f * c_{t-1} + i * g, before the cell clip
    peephole: np.ndarray | None = None  # [3, H]
    coupled_gates: bool = False
    cell_clip: float = 0.0
    ln: tuple | None = None  # (ln_x, ln_h, ln_c)
    h_mask: np.ndarray | None = None  # [B, P]
    zoneout_h: np.ndarray | None = None  # [T, B, P]
    zoneout_c: np.ndarray | None = None  # [T, B, H]
    norms: dict | None = None  # per step t: the normalised rows and 1/sigma of W x, U h and c


def layer_norm(z: np.ndarray, g: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LN over the last axis: (g * z_hat + beta, z_hat, 1/sigma)."""
    mu = z.mean(axis=-1, keepdims=True)
    inv_sigma = 1.0 / np.sqrt(((z - mu) ** 2).mean(axis=-1, keepdims=True) + LAYER_NORM_EPS)
    z_hat = (z - mu) * inv_sigma
    return g * z_hat + beta, z_hat, inv_sigma


def layer_norm_backward(dy: np.ndarray, g: np.ndarray, z_hat: np.ndarray, inv_sigma: np.ndarray) -> np.ndarray:
    """dL/dz of y = LN(z; g, beta) from dL/dy: (d - mean(d) - z_hat * mean(d * z_hat)) / sigma, d = g * dy."""
    d = g * dy
    return (d - d.mean(axis=-1, keepdims=True) - z_hat * (d * z_hat).mean(axis=-1, keepdims=True)) * inv_sigma


def gate_blocks(a: np.ndarray, H: int, coupled_gates: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                                       np.ndarray]:
    """Pre-activations [.., GH] -> (a_i, a_f or None, a_g, a_o): the row blocks i, f, g, o (i, g, o when coupled)."""
    if coupled_gates:
        return a[..., :H], None, a[..., H:2 * H], a[..., 2 * H:3 * H]
    return a[..., :H], a[..., H:2 * H], a[..., 2 * H:3 * H], a[..., 3 * H:4 * H]


def lstm_forward(
    x: np.ndarray,
    W: np.ndarray,
    U: np.ndarray,
    b: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    R: np.ndarray | None = None,
    peephole: np.ndarray | None = None,
    coupled_gates: bool = False,
    cell_clip: float = 0.0,
    ln_x: np.ndarray | None = None,
    ln_h: np.ndarray | None = None,
    ln_c: np.ndarray | None = None,
    h_mask: np.ndarray | None = None,
    zoneout_h: np.ndarray | None = None,
    zoneout_c: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, LSTMCache]:
    """Run one LSTM layer over x. Returns (y [T, B, P], h_T [B, P], c_T [B, H], cache)."""
    T, B, _ = x.shape
    H = W.shape[0] // (3 if coupled_gates else 4)
    P = H if R is None else R.shape[0]
    cache = LSTMCache(
        x=x, W=W, U=U, R=R,
        h_prev=np.empty((T, B, P)), c_prev=np.empty((T, B, H)),
        i=np.empty((T, B, H)), f=np.empty((T, B, H)), g=np.empty((T, B, H)),
        o=np.empty((T, B, H)), c=np.empty((T, B, H)), m=np.empty((T, B, H)), s=np.empty((T, B, H)),
        peephole=peephole, coupled_gates=coupled_gates, cell_clip=cell_clip,
    )
    cache.h_mask, cache.zoneout_h, cache.zoneout_c = h_mask, zoneout_h, zoneout_c
    normalised = ln_x is not None
    if normalised:
        cache.ln, cache.norms = (ln_x, ln_h, ln_c), {"x": [], "h": [], "c": []}
    p_i, p_f, p_o = peephole if peephole is not None else (0.0, 0.0, 0.0)
    y = np.empty((T, B, P))
    h, c = h0, c0
    for t in range(T):
        cache.h_prev[t], cache.c_prev[t] = h, c
        h_in = h if h_mask is None else h * h_mask  # what U sees
        if normalised:
            u, u_hat, u_inv = layer_norm(x[t] @ W.T, *ln_x)
            v, v_hat, v_inv = layer_norm(h_in @ U.T, *ln_h)
            a = u + v + b  # [B, GH]
            cache.norms["x"].append((u_hat, u_inv))
            cache.norms["h"].append((v_hat, v_inv))
        else:
            a = x[t] @ W.T + h_in @ U.T + b  # [B, GH]
        a_i, a_f, a_g, a_o = gate_blocks(a, H, coupled_gates)
        i = sigmoid(a_i + p_i * c)  # 6.51 (+ peephole)
        f = 1.0 - i if coupled_gates else sigmoid(a_f + p_f * c)  # 6.52 (+ peephole; CIFG: 1 - i)
        g = np.tanh(a_g)  # 6.54
        s = f * c + i * g  # 6.55
        c = np.clip(s, -cell_clip, cell_clip) if cell_clip else s
        o = sigmoid(a_o + p_o * c)  # 6.53 (+ peephole, on c_t)
        if normalised:
            n, n_hat, n_inv = layer_norm(c, *ln_c)
            cache.norms["c"].append((n, n_hat, n_inv))
            m = o * np.tanh(n)  # 6.56 on LN(c_t)
        else:
            m = o * np.tanh(c)  # 6.56
        h_new = m if R is None else m @ R.T
        cache.i[t], cache.f[t], cache.g[t], cache.o[t], cache.c[t], cache.m[t] = i, f, g, o, c, m  # c: c~_t
        h = h_new if zoneout_h is None else zoneout_h[t] * cache.h_prev[t] + (1.0 - zoneout_h[t]) * h_new
        if zoneout_c is not None:
            c = zoneout_c[t] * cache.c_prev[t] + (1.0 - zoneout_c[t]) * c
        cache.s[t] = s
        y[t] = h
    return y, h, c, cache


def lstm_backward(
    dy: np.ndarray, dhT: np.ndarray, dcT: np.ndarray, cache: LSTMCache
) -> dict[str, np.ndarray]:
    """Backpropagation through time for `lstm_forward`.

    dy: [T, B, P] gradient of the loss w.r.t. every output, dhT: [B, P] and dcT: [B, H] w.r.t. the
    final state. Returns dx, dW, dU, db, dh0, dc0 (and dR with a projection, dpeephole with peepholes, dln_x,
    dln_h, dln_c with layer normalisation: through LN's backward, `layer_norm_backward`, at each LN).

    Derivation, per step from t = T-1 down to 0, with dh and dc the total gradients reaching h_t, c_t
    (dc from step t+1 only; p terms are zero without peepholes, the clip mask is 1 without a clip):
        dm   = dh @ R                (or dh without projection);   dR += dh.T @ m_t
        do   = dm * tanh(c_t);        dz_o = do * o(1-o);   dp_o += sum(dz_o * c_t)
        dc  += dm * o_t * (1 - tanh(c_t)^2) + dz_o * p_o
        ds   = dc * [|s_t| < cell_clip]
        di   = ds * g_t,  df = ds * c_{t-1},  dg = ds * i_t,  dc_{t-1} = ds * f_t
        CIFG: di -= df (f = 1 - i), no f block;  else dz_f = df * f(1-f), dc_{t-1} += dz_f * p_f
        dz_i = di * i(1-i),  dz_g = dg * (1-g^2),  dc_{t-1} += dz_i * p_i
        da   = [dz_i, dz_f, dz_g, dz_o]  (CIFG: [dz_i, dz_g, dz_o])
        dx_t = da @ W,  dh_{t-1} = da @ U + dy_{t-1},  dW += da.T @ x_t,  dU += da.T @ h_{t-1},  db += sum(da)
    """
    x, W, U, R = cache.x, cache.W, cache.U, cache.R
    coupled, clip, peephole = cache.coupled_gates, cache.cell_clip, cache.peephole
    p_i, p_f, p_o = peephole if peephole is not None else (0.0, 0.0, 0.0)
    T = x.shape[0]
    dx = np.zeros_like(x)
    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros(W.shape[0])
    dR = None if R is None else np.zeros_like(R)
    dp = None if peephole is None else np.zeros_like(peephole)
    ln = cache.ln
    dln = None if ln is None else [np.zeros_like(p) for p in ln]
    dh = dhT + dy[T - 1]
    dc = dcT.copy()
    zh, zc = cache.zoneout_h, cache.zoneout_c
    for t in range(T - 1, -1, -1):
        i, f, g, o, c, c_prev = cache.i[t], cache.f[t], cache.g[t], cache.o[t], cache.c[t], cache.c_prev[t]
        # zoneout: the part of dh, dc that reaches h_{t-1}, c_{t-1} directly; the rest reaches h~_t, c~_t
        dh_kept = 0.0 if zh is None else dh * zh[t]
        dc_kept = 0.0 if zc is None else dc * zc[t]
        dh = dh if zh is None else dh * (1.0 - zh[t])
        dc = dc if zc is None else dc * (1.0 - zc[t])
        if R is None:
            dm = dh
        else:
            dR += dh.T @ cache.m[t]
            dm = dh @ R
        if ln is None:
            tanh_c = np.tanh(c)
            dz_o = dm * tanh_c * o * (1.0 - o)
            dc = dc + dm * o * (1.0 - tanh_c**2) + dz_o * p_o
        else:  # m = o tanh(n), n = LN(c)
            n, n_hat, n_inv = cache.norms["c"][t]
            tanh_n = np.tanh(n)
            dz_o = dm * tanh_n * o * (1.0 - o)
            dn = dm * o * (1.0 - tanh_n**2)
            dln[2][0] += (dn * n_hat).sum(axis=0)
            dln[2][1] += dn.sum(axis=0)
            dc = dc + layer_norm_backward(dn, ln[2][0], n_hat, n_inv) + dz_o * p_o
        ds = dc * (np.abs(cache.s[t]) < clip) if clip else dc
        di, df, dg = ds * g, ds * c_prev, ds * i
        dc = ds * f + dc_kept
        if coupled:
            di = di - df
        else:
            dz_f = df * f * (1.0 - f)
            dc = dc + dz_f * p_f
        dz_i = di * i * (1.0 - i)
        dc = dc + dz_i * p_i
        if dp is not None:
            dp[0] += (dz_i * c_prev).sum(axis=0)
            dp[2] += (dz_o * c).sum(axis=0)
            if not coupled:
                dp[1] += (dz_f * c_prev).sum(axis=0)
        blocks = [dz_i, dg * (1.0 - g**2), dz_o] if coupled else [dz_i, dz_f, dg * (1.0 - g**2), dz_o]
        da = np.concatenate(blocks, axis=1)
        db += da.sum(axis=0)
        du = dv = da  # the gradients reaching W x_t and U h_{t-1}
        if ln is not None:
            (u_hat, u_inv), (v_hat, v_inv) = cache.norms["x"][t], cache.norms["h"][t]
            for k, z_hat in ((0, u_hat), (1, v_hat)):
                dln[k][0] += (da * z_hat).sum(axis=0)
                dln[k][1] += da.sum(axis=0)
            du = layer_norm_backward(da, ln[0][0], u_hat, u_inv)
            dv = layer_norm_backward(da, ln[1][0], v_hat, v_inv)
        dx[t] = du @ W
        dW += du.T @ x[t]
        mask = 1.0 if cache.h_mask is None else cache.h_mask
        dU += dv.T @ (cache.h_prev[t] * mask)
        dh = (dv @ U) * mask + dh_kept
        if t > 0:
            dh = dh + dy[t - 1]
    grads = {"dx": dx, "dW": dW, "dU": dU, "db": db, "dh0": dh, "dc0": dc}
    if dR is not None:
        grads["dR"] = dR
    if dp is not None:
        grads["dpeephole"] = dp
    if dln is not None:
        grads["dln_x"], grads["dln_h"], grads["dln_c"] = dln
    return grads
