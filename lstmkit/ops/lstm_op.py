"""One LSTM layer as a `torch.library` custom op, with a hand-written BPTT backward: `backend="op"`.

Why an op: `torch.compile` and `torch.export` trace Python. Traced, lstmkit's portable layer unrolls into
~35 nodes per time step (712 for T = 20, two layers), fixes T into the graph and takes inductor 49 s to
compile at T = 20; `torch.nn.LSTM` refuses to be traced at all ("Attempted to wrap RNN, GRU, or LSTM").
As an op, a layer is one opaque node whatever T is: `torch.compile(model, fullgraph=True)` and
`torch.export` see `lstmkit::lstm_layer` and its fake (shape-only) implementation, and autograd calls
`lstmkit::lstm_layer_backward`.

The computation is the textbook's (eq. 6.51-6.56, gate order i, f, g, o), in the layout of the known fast
recipes (Appleyard et al. 2016): the input projection of every step in one GEMM before the time loop; the
four gates in one recurrent GEMM per step; the backward keeps the activated gates and cells of the forward
and does the weight-gradient GEMMs (dW, dU, dR) and the input gradient once, after its time loop.

Sequences are full length ([T, B, I], time-major); `lstmkit.LSTM` sends packed input to the portable backend.
On the CPU in float32 both time loops are the C kernel's (`lstm_cpu`); elsewhere they are torch ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.ops import lstm_cpu


def _flip(t: Tensor, reverse: bool) -> Tensor:
    return t.flip(0) if reverse else t


@torch.library.custom_op("lstmkit::lstm_layer", mutates_args=())
def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, W: Tensor, U: Tensor, b: Tensor | None, R: Tensor | None,
               reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x [T, B, I], h0 [B, P], c0 [B, H], W [4H, I], U [4H, P], b [4H] (b_ih + b_hh) or None, R [P, H] or None.

    Returns y [T, B, P], h_T [B, P], c_T [B, H], and what the backward needs: the activated gates [T, B, 4H]
    and the cells [T, B, H], both in processing order (reversed in time when `reverse`)."""
    with torch.autocast(x.device.type, enabled=False):  # autocast reaches in here; `out=` GEMMs cannot mix dtypes
        return _forward(x, h0, c0, W, U, b, R, reverse)


def _forward(x: Tensor, h0: Tensor, c0: Tensor, W: Tensor, U: Tensor, b: Tensor | None, R: Tensor | None,
             reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, _ = x.shape
    H = c0.shape[1]
    x = _flip(x, reverse)
    if lstm_cpu.supports(x, W, U, b, R):  # float32 on the CPU (autocast is off in here): the C kernel's loop
        xw = x.reshape(T * B, -1) @ W.t()
        out = lstm_cpu.forward(xw, [B] * T, h0, c0, U, R, reverse=False, keep_for_backward=True, keep_inputs=False,
                               bias=b)
        return (_flip(out["y"].view(T, B, -1), reverse), out["h"], out["c"], xw.view(T, B, 4 * H),
                out["cells"].view(T, B, H))
    xw = (torch.addmm(b, x.reshape(T * B, -1), W.t()) if b is not None else x.reshape(T * B, -1) @ W.t())
    xw = xw.view(T, B, 4 * H)  # input projection of every step, one GEMM
    gates = torch.empty_like(xw)
    cells = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    y = torch.empty(T, B, h0.shape[1], dtype=x.dtype, device=x.device)
    h, c = h0, c0
    for t in range(T):
        a = torch.addmm(xw[t], h, U.t(), out=gates[t])  # the four gates' pre-activations, one GEMM
        a[:, : 2 * H].sigmoid_()  # i (6.51), f (6.52)
        a[:, 2 * H: 3 * H].tanh_()  # c~ (6.54)
        a[:, 3 * H:].sigmoid_()  # o (6.53)
        i, f, g, o = a.chunk(4, dim=1)
        c = torch.addcmul(f * c, i, g, out=cells[t])  # 6.55
        h_t = torch.mul(o, torch.tanh(c), out=y[t] if R is None else None)  # 6.56
        h = h_t if R is None else torch.mm(h_t, R.t(), out=y[t])  # then the projection, if any
    return _flip(y, reverse), h.clone(), c.clone(), gates, cells


@lstm_layer.register_fake
def _(x, h0, c0, W, U, b, R, reverse):
    T, B, _ = x.shape
    H = c0.shape[1]
    return (x.new_empty(T, B, h0.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            x.new_empty(T, B, 4 * H), x.new_empty(T, B, H))


@torch.library.custom_op("lstmkit::lstm_layer_backward", mutates_args=())
def lstm_layer_backward(dy: Tensor, dh_T: Tensor, dc_T: Tensor, x: Tensor, h0: Tensor, c0: Tensor, W: Tensor,
                        U: Tensor, R: Tensor | None, y: Tensor, gates: Tensor, cells: Tensor, reverse: bool,
                        has_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """BPTT of `lstm_layer`: (dx, dh0, dc0, dW, dU, db, dR); db is empty without a bias, dR without R."""
    with torch.autocast(x.device.type, enabled=False):
        return _backward_impl(dy, dh_T, dc_T, x, h0, c0, W, U, R, y, gates, cells, reverse, has_bias)


def _backward_impl(dy: Tensor, dh_T: Tensor, dc_T: Tensor, x: Tensor, h0: Tensor, c0: Tensor, W: Tensor,
                   U: Tensor, R: Tensor | None, y: Tensor, gates: Tensor, cells: Tensor, reverse: bool,
                   has_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, _ = x.shape
    H = c0.shape[1]
    x, y, dy = _flip(x, reverse), _flip(y, reverse), _flip(dy, reverse)
    if lstm_cpu.supports(x, W, U, R):  # float32 on the CPU, as in the forward: the C kernel's time loop
        out = lstm_cpu.backward(dy.reshape(T * B, -1), dh_T, dc_T, [B] * T, c0, U, R, gates.view(T * B, 4 * H),
                                cells.view(T * B, H), reverse=False)
        dz, dh_next, dc_next = out["dz"].view(T, B, 4 * H), out["dh0"], out["dc0"]
        dh_total = out["dh"].view(T, B, -1) if R is not None else None
    else:
        dz, dh_total, dh_next, dc_next = _bptt_loop(dy, dh_T, dc_T, c0, U, R, gates, cells)
    return _weight_gradients(dz, dh_total, dh_next, dc_next, x, h0, W, R, y, gates, cells, reverse, has_bias)


def _bptt_loop(dy: Tensor, dh_T: Tensor, dc_T: Tensor, c0: Tensor, U: Tensor, R: Tensor | None, gates: Tensor,
               cells: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """BPTT's time loop in torch ops (any device and dtype): dz, dL/dh_t with a projection, dh0, dc0."""
    T = gates.shape[0]
    dz = torch.empty_like(gates)  # gradients of the pre-activations, per step
    dh_total = torch.empty_like(dy) if R is not None else None  # dL/dh_t (projected), for dR after the loop
    dh_next, dc_next = dh_T, dc_T
    for t in range(T - 1, -1, -1):
        i, f, g, o = gates[t].chunk(4, dim=1)
        c = cells[t]
        c_prev = cells[t - 1] if t > 0 else c0
        dh = dy[t] + dh_next
        if R is not None:
            dh_total[t] = dh
            dh = dh @ R  # back through the projection: [B, H]
        tanh_c = torch.tanh(c)
        dc = torch.addcmul(dc_next, dh * o, 1 - tanh_c * tanh_c)  # from h_t = o tanh(c_t), plus the carried dc
        di, df, dg, do = dz[t].chunk(4, dim=1)
        torch.mul(dc * g, i * (1 - i), out=di)
        torch.mul(dc * c_prev, f * (1 - f), out=df)
        torch.mul(dc * i, 1 - g * g, out=dg)
        torch.mul(dh * tanh_c, o * (1 - o), out=do)
        dc_next = dc * f
        dh_next = dz[t] @ U  # [B, P]
    return dz, dh_total, dh_next, dc_next


def _weight_gradients(dz: Tensor, dh_total: Tensor | None, dh0: Tensor, dc0: Tensor, x: Tensor, h0: Tensor,
                      W: Tensor, R: Tensor | None, y: Tensor, gates: Tensor, cells: Tensor, reverse: bool,
                      has_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, H = cells.shape
    dz_rows = dz.view(T * B, 4 * H)
    # The GEMMs that need no step order, once over all steps.
    dx = (dz_rows @ W).view(T, B, -1)
    dW = dz_rows.t() @ x.reshape(T * B, -1)
    h_prev = torch.cat([h0[None], y[:-1]]).view(T * B, -1)  # h_{t-1} of every step
    dU = dz_rows.t() @ h_prev
    db = dz_rows.sum(0) if has_bias else dz_rows.new_empty(0)
    if R is not None:
        o_tanh_c = gates[:, :, 3 * H:] * torch.tanh(cells)  # h_t before the projection
        dR = dh_total.view(T * B, -1).t() @ o_tanh_c.view(T * B, H)
    else:
        dR = dz_rows.new_empty(0)
    return _flip(dx, reverse), dh0.clone(), dc0.clone(), dW, dU, db, dR


@lstm_layer_backward.register_fake
def _(dy, dh_T, dc_T, x, h0, c0, W, U, R, y, gates, cells, reverse, has_bias):
    db = W.new_empty(W.shape[0]) if has_bias else W.new_empty(0)
    dR = R.new_empty(R.shape) if R is not None else W.new_empty(0)
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape), W.new_empty(W.shape),
            U.new_empty(U.shape), db, dR)


def _setup_context(ctx, inputs, output):
    x, h0, c0, W, U, b, R, reverse = inputs
    y, _, _, gates, cells = output
    ctx.save_for_backward(x, h0, c0, W, U, R, y, gates, cells)
    ctx.reverse, ctx.has_bias = reverse, b is not None


def _backward(ctx, dy, dh_T, dc_T, _dgates, _dcells):
    x, h0, c0, W, U, R, y, gates, cells = ctx.saved_tensors
    zeros = torch.zeros_like
    dy = dy if dy is not None else zeros(y)
    dh_T = dh_T if dh_T is not None else zeros(h0)
    dc_T = dc_T if dc_T is not None else zeros(c0)
    dx, dh0, dc0, dW, dU, db, dR = lstm_layer_backward(dy, dh_T, dc_T, x, h0, c0, W, U, R, y, gates, cells,
                                                       ctx.reverse, ctx.has_bias)
    return dx, dh0, dc0, dW, dU, db if ctx.has_bias else None, dR if R is not None else None, None


torch.library.register_autograd("lstmkit::lstm_layer", _backward, setup_context=_setup_context)


def layer(x: Tensor, steps: tuple[int, int], h0: Tensor, c0: Tensor, W: Tensor, U: Tensor, b: Tensor | None,
          R: Tensor | None = None, reverse: bool = False, record: dict[str, Tensor] | None = None
          ) -> tuple[Tensor, Tensor, Tensor]:
    """`lstm_torch.lstm_layer`'s signature over the op, for full-length batches: x [T*B, I] rows and
    steps = (T, B) in place of batch_sizes (a list of T ints would fix T under torch.export)."""
    T, B = steps
    # bf16 input or states under autocast: the op computes in the weights' dtype (as "torch" does).
    x, h0, c0 = (t if t.dtype == W.dtype else t.to(W.dtype) for t in (x, h0, c0))
    y, h_T, c_T, _, _ = lstm_layer(x.reshape(T, B, -1), h0, c0, W, U, b, R, reverse)
    return y.view(T * B, -1), h_T, c_T
