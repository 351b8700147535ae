"""Portable LSTM backend: torch ops and autograd, any device, any floating dtype.

One layer, one direction, over *packed rows*: the rows of step t are
x[offset_t : offset_t + batch_sizes[t]], sequences sorted longest first (torch's PackedSequence layout).
A padded batch is the special case batch_sizes = [B] * T. Working on packed rows means finished
sequences drop out of the recurrent GEMM: padding costs no compute and cannot leak into the state.

Equations as in `lstmkit.reference.lstm_numpy` (Qiu eq. 6.51-6.56), gate order i, f, g, o:
    a_t = W x_t + U h_{t-1} + b;  i, f, o = sigma(a_i, a_f, a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;    h_t = o * tanh(c_t)   (then h_t = R h_t with a projection)
"""

from __future__ import annotations

import torch
from torch import Tensor


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on this device type, or None when autocast is off: what an LSTM's outputs
    are under autocast (as torch.nn.LSTM's), whichever path computed them."""
    if not torch.is_autocast_enabled(device_type):
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def lstm_step(
    xw_t: Tensor, h: Tensor, c: Tensor, U: Tensor, R: Tensor | None
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """One time step. xw_t = W x_t + b, precomputed: [n, 4H]; h: [n, P]; c: [n, H].

    Returns (h_t, c_t, (i, f, g, o)).
    """
    a = torch.addmm(xw_t, h, U.t())  # [n, 4H], the four gates in one recurrent GEMM
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c = f * c + i * g  # 6.55
    h = o * torch.tanh(c)  # 6.56
    if R is not None:
        h = h @ R.t()
    return h, c, (i, f, g, o)


def lstm_layer(
    x: Tensor,
    batch_sizes: list[int],
    h0: Tensor,
    c0: Tensor,
    W: Tensor,
    U: Tensor,
    b: Tensor | None,
    R: Tensor | None = None,
    reverse: bool = False,
    record: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM layer in one direction over packed rows.

    x: [N, I] packed rows; batch_sizes: T non-increasing ints summing to N; h0: [B, P]; c0: [B, H]
    with B = batch_sizes[0]; W: [4H, I]; U: [4H, P]; b: [4H] (b_ih + b_hh) or None; R: [P, H] or None.
    Returns y: [N, P] packed like x, h_T: [B, P], c_T: [B, H] (the state after each sequence's own
    last step; for reverse=True, after step 0).
    If `record` is a dict, it receives i, f, g, o, c (each [N, H]) and h ([N, P]) packed like x.
    """
    T = len(batch_sizes)
    # Input projection of every step in one GEMM (Appleyard et al. 2016): [N, 4H].
    xw = torch.addmm(b, x, W.t()) if b is not None else x @ W.t()
    # One split, not T slices: the backward of a slice allocates a zero tensor the size of all of xw,
    # per step (measured: 10x slower training at T=100, B=64, H=64 on 2 cores).
    xw_steps = xw.split(batch_sizes)

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
            h, c, gates = lstm_step(xw_steps[t], h, c, U, R)
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
            h, c, gates = lstm_step(xw_steps[t], h, c, U, R)
            ys[t] = h
            if record is not None:
                steps[t] = (*gates, c, h)
        hT, cT = h, c
    if record is not None:
        for k, name in enumerate(("i", "f", "g", "o", "c", "h")):
            record[name] = torch.cat([step[k] for step in steps])
    return torch.cat(ys), hT, cT
