"""Portable LSTM backend: torch ops and autograd, any device, any floating dtype.

One layer, one direction, over *packed rows*: the rows of step t are
x[offset_t : offset_t + batch_sizes[t]], sequences sorted longest first (torch's PackedSequence layout).
A padded batch is the special case batch_sizes = [B] * T. Working on packed rows means finished
sequences drop out of the recurrent GEMM: padding costs no compute and cannot leak into the state.

Equations as in `lstmkit.reference.lstm_numpy` (Qiu eq. 6.51-6.56), gate order i, f, g, o:
    a_t = W x_t + U h_{t-1} + b;  i, f, o = sigma(a_i, a_f, a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;    h_t = o * tanh(c_t)   (then h_t = R h_t with a projection)
with the variants of `lstmkit.ops.cell.Cell` (peepholes, coupled gates, cell clip, layer normalisation). They live
in `input_projection` and `preactivation` (W x_t and U h_{t-1}, normalised with layer_norm), `cell_forward` (one
step's pointwise part) and `cell_backward` (its hand-written BPTT, for the op's torch loop, with
`layer_norm_statistics` and `layer_norm_backward` for the normalisations); every loop of this backend, the op and
the stream call them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from lstmkit.ops.cell import LAYER_NORM_EPS, Cell


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on this device type, or None when autocast is off: what an LSTM's outputs
    are under autocast (as torch.nn.LSTM's), whichever path computed them."""
    if not torch.is_autocast_enabled(device_type):
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def layer_norm(z: Tensor, gain_bias: Tensor) -> Tensor:
    """LN(z; g, beta) over the last axis (the reference's `layer_norm`); gain_bias: [2, width]."""
    return F.layer_norm(z, (z.shape[-1],), gain_bias[0], gain_bias[1], LAYER_NORM_EPS)


def layer_norm_statistics(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What LN's backward needs of rows z [..., width]: (z_hat = (z - mean) / sigma, mean [..., 1], 1/sigma [..., 1]),
    sigma = sqrt(var + eps) with the biased variance, as `layer_norm` (torch's layer_norm) computes it."""
    mean = z.mean(-1, keepdim=True)
    centred = z - mean
    inv_sigma = torch.rsqrt(centred.square().mean(-1, keepdim=True) + LAYER_NORM_EPS)
    return centred * inv_sigma, mean, inv_sigma


def layer_norm_backward(dout: Tensor, z_hat: Tensor, inv_sigma: Tensor, gain_bias: Tensor
                        ) -> tuple[Tensor, Tensor]:
    """BPTT of out = z_hat * gain + bias over the last axis (`layer_norm`): (dz [..., width], d gain_bias
    [2, width] summed over the rows). dz = (d z_hat - mean(d z_hat) - z_hat mean(d z_hat z_hat)) / sigma."""
    dz_hat = dout * gain_bias[0]
    dz = inv_sigma * (dz_hat - dz_hat.mean(-1, keepdim=True) - z_hat * (dz_hat * z_hat).mean(-1, keepdim=True))
    rows = dout.reshape(-1, dout.shape[-1])
    return dz, torch.stack([(rows * z_hat.reshape(rows.shape)).sum(0), rows.sum(0)])


def input_projection(x: Tensor, cell: Cell) -> Tensor:
    """W x_t + b of every row x [N, I] at once: [N, GH] (LN(W x_t) + b with layer normalisation)."""
    W, b = cell.W, cell.b
    if cell.layer_norm is not None:
        u = layer_norm(x @ W.t(), cell.layer_norm[0])
        return u + b if b is not None else u
    return torch.addmm(b, x, W.t()) if b is not None else x @ W.t()


def preactivation(xw_t: Tensor, h: Tensor, cell: Cell) -> Tensor:
    """a_t = (W x_t + b) + U h_{t-1} [n, GH], the gates in one recurrent GEMM (LN(U h_{t-1}) when normalised;
    U (h_{t-1} * mask) under recurrent dropout: the step's n rows are the batch's first n sequences)."""
    if cell.h_mask is not None:
        h = h * cell.h_mask[: h.shape[0]]
    if cell.layer_norm is not None:
        return xw_t + layer_norm(h @ cell.U.t(), cell.layer_norm[1])
    return torch.addmm(xw_t, h, cell.U.t())


def cell_forward(a: Tensor, c_prev: Tensor, cell: Cell) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One step's pointwise part. a: [n, GH] pre-activations W x_t + U h_{t-1} + b; c_prev: [n, H].

    Returns (i, f, g, o, c_t, m_t), each [n, H]; m_t = o tanh(c_t) is h_t before any projection."""
    H = c_prev.shape[1]
    if cell.coupled_gates:
        a_i, a_g, a_o = a.split(H, dim=1)
    else:
        a_i, a_f, a_g, a_o = a.split(H, dim=1)
    p = cell.peephole  # [3, H]: p_i, p_f, p_o
    i = torch.sigmoid(a_i if p is None else torch.addcmul(a_i, p[0], c_prev))  # 6.51
    # 6.52 (+ peephole); CIFG: f = 1 - i
    f = 1.0 - i if cell.coupled_gates else torch.sigmoid(a_f if p is None else torch.addcmul(a_f, p[1], c_prev))
    g = torch.tanh(a_g)  # 6.54
    c = torch.addcmul(f * c_prev, i, g)  # 6.55
    if cell.cell_clip:
        c = c.clamp(-cell.cell_clip, cell.cell_clip)
    o = torch.sigmoid(a_o if p is None else torch.addcmul(a_o, p[2], c))  # 6.53
    m = o * torch.tanh(c if cell.layer_norm is None else layer_norm(c, cell.layer_norm[2]))  # 6.56
    return i, f, g, o, c, m


def activated_gates(i: Tensor, f: Tensor, g: Tensor, o: Tensor, cell: Cell, out: Tensor | None = None) -> Tensor:
    """The activated gates in the weights' row order [n, GH] (i, g, o with coupled gates: f = 1 - i is implied),
    written into `out` when given (the op's per-step buffer: no copy of a fresh tensor)."""
    return torch.cat([i, g, o] if cell.coupled_gates else [i, f, g, o], dim=1, out=out)


def cell_backward(dm: Tensor, dc: Tensor, gates: Tensor, c: Tensor, c_prev: Tensor, cell: Cell,
                  c_norm: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """BPTT of `cell_forward` (the derivation is `lstm_numpy.lstm_backward`'s). dm: dL/dm_t [n, H]; dc: dL/dc_t
    from step t+1; gates: activated [n, GH] (`activated_gates`); c, c_prev: c_t and c_{t-1}; c_norm: with layer
    normalisation, c_t's (z_hat, 1/sigma) of `layer_norm_statistics`.

    Returns (dz [n, GH] pre-activation gradients, dL/dc_{t-1}, dpeephole [3, H] of this step or None, d ln_c
    [2, H] of this step or None)."""
    H = c.shape[1]
    if cell.coupled_gates:
        i, g, o = gates.split(H, dim=1)
        f = 1.0 - i
    else:
        i, f, g, o = gates.split(H, dim=1)
    p = cell.peephole
    ln_c = cell.layer_norm[2] if cell.layer_norm is not None else None
    shown = c if ln_c is None else torch.addcmul(ln_c[1], c_norm[0], ln_c[0])  # what tanh reads: c_t or LN(c_t)
    tanh_c = torch.tanh(shown)
    dz_o = dm * tanh_c * o * (1 - o)
    d_shown = dm * o * (1 - tanh_c * tanh_c)  # from m_t = o tanh(.)
    dln_c = None
    if ln_c is not None:
        d_shown, dln_c = layer_norm_backward(d_shown, c_norm[0], c_norm[1], ln_c)
    dc = dc + d_shown  # plus the carried dc
    if p is not None:
        dc = torch.addcmul(dc, dz_o, p[2])
    if cell.cell_clip:
        dc = dc * (c.abs() < cell.cell_clip)  # |c_t| < clip exactly where the clip was not active
    di, df = dc * g, dc * c_prev
    dz_g = dc * i * (1 - g * g)
    dc_prev = dc * f
    if cell.coupled_gates:
        dz_i = (di - df) * i * (1 - i)
        dz = torch.cat([dz_i, dz_g, dz_o], dim=1)
    else:
        dz_i, dz_f = di * i * (1 - i), df * f * (1 - f)
        dz = torch.cat([dz_i, dz_f, dz_g, dz_o], dim=1)
    dp = None
    if p is not None:
        dc_prev = torch.addcmul(dc_prev, dz_i, p[0])
        dp_f = torch.zeros_like(p[1]) if cell.coupled_gates else (dz_f * c_prev).sum(0)
        if not cell.coupled_gates:
            dc_prev = torch.addcmul(dc_prev, dz_f, p[1])
        dp = torch.stack([(dz_i * c_prev).sum(0), dp_f, (dz_o * c).sum(0)])
    return dz, dc_prev, dp, dln_c


def lstm_step(xw_t: Tensor, h: Tensor, c: Tensor, cell: Cell, zoneout: tuple = (None, None)
              ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """One time step. xw_t = W x_t + b, precomputed: [n, GH]; h: [n, P]; c: [n, H]; zoneout: this step's (z^h, z^c),
    each [n, *] rows, a number (the rate, at evaluation) or None.

    Returns (h_t, c_t, (i, f, g, o)).
    """
    a = preactivation(xw_t, h, cell)  # [n, GH]
    i, f, g, o, c_new, h_new = cell_forward(a, c, cell)
    if cell.R is not None:
        h_new = h_new @ cell.R.t()
    z_h, z_c = zoneout
    return zone_out(h_new, h, z_h), zone_out(c_new, c, z_c), (i, f, g, o)


def zone_out(new: Tensor, prev: Tensor, z: Tensor | float | None) -> Tensor:
    """Zoneout (Krueger et al. 2016) of one step: z * prev + (1 - z) * new; z = 1 keeps the previous value, a mask
    in training or the rate (its expectation) in evaluation; None: new."""
    return new if z is None else torch.lerp(new, prev, z)


def _zoneout_steps(z: Tensor | float | None, batch_sizes: list[int]) -> list:
    """A zoneout mask of the layer's rows split per step (or the same number, or None, for every step)."""
    return list(z.split(batch_sizes)) if isinstance(z, Tensor) else [z] * len(batch_sizes)


def lstm_layer(
    x: Tensor,
    batch_sizes: list[int],
    h0: Tensor,
    c0: Tensor,
    cell: Cell,
    reverse: bool = False,
    record: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM layer in one direction over packed rows.

    x: [N, I] packed rows; batch_sizes: T non-increasing ints summing to N; h0: [B, P]; c0: [B, H]
    with B = batch_sizes[0]; cell: the weights (W [GH, I], U [GH, P], b [GH] or None, R [P, H] or None) and
    variant features. Returns y: [N, P] packed like x, h_T: [B, P], c_T: [B, H] (the state after each
    sequence's own last step; for reverse=True, after step 0).
    If `record` is a dict, it receives i, f, g, o, c (each [N, H]) and h ([N, P]) packed like x.
    """
    T = len(batch_sizes)
    # Input projection of every step in one GEMM (Appleyard et al. 2016): [N, GH].
    xw = input_projection(x, cell)
    # One split, not T slices: the backward of a slice allocates a zero tensor the size of all of xw,
    # per step (measured: 10x slower training at T=100, B=64, H=64 on 2 cores).
    xw_steps = xw.split(batch_sizes)
    z_h, z_c = _zoneout_steps(cell.zoneout_h, batch_sizes), _zoneout_steps(cell.zoneout_c, batch_sizes)

    ys: list[Tensor] = [x] * T  # placeholders, every slot is written below
    steps: list[tuple[Tensor, ...]] = [()] * T
    if not reverse:
        h, c = h0, c0
        finished_h: list[Tensor] = []  # states of sequences that ended, the shortest (last rows) first
        finished_c: list[Tensor] = []
        for t in range(T):
            n = batch_sizes[t]
            if n < h.shape[0]:
                finished_h.append(h[n:])
                finished_c.append(c[n:])
                h, c = h[:n], c[:n]
            h, c, gates = lstm_step(xw_steps[t], h, c, cell, (z_h[t], z_c[t]))
            ys[t] = h
            if record is not None:
                steps[t] = (*gates, c, h)
        hT = torch.cat([h, *reversed(finished_h)]) if finished_h else h
        cT = torch.cat([c, *reversed(finished_c)]) if finished_c else c
    else:
        # Backwards in time: a sequence starts at its own last step, from its initial state.
        n0 = batch_sizes[T - 1]
        h, c = h0[:n0], c0[:n0]
        for t in range(T - 1, -1, -1):
            n, active = batch_sizes[t], h.shape[0]
            if n > active:
                h = torch.cat([h, h0[active:n]])
                c = torch.cat([c, c0[active:n]])
            h, c, gates = lstm_step(xw_steps[t], h, c, cell, (z_h[t], z_c[t]))
            ys[t] = h
            if record is not None:
                steps[t] = (*gates, c, h)
        hT, cT = h, c
    if record is not None:
        for k, name in enumerate(("i", "f", "g", "o", "c", "h")):
            record[name] = torch.cat([step[k] for step in steps])
    return torch.cat(ys), hT, cT
