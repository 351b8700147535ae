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
On the CPU in float32 both time loops are the C kernel's (`lstm_cpu`, for the features it lists in `SUPPORTS`:
today all of the op's); on CUDA, for the standard cell and with triton installed, they are Triton kernels
(`lstm_triton`); elsewhere they are torch ops calling the torch backend's one copy of the equations
(`lstm_torch.cell_forward`, `cell_backward`, `layer_norm_backward`).

Layer normalisation (Ba et al. 2016: LN of W x_t, of U h_{t-1} and of c_t; `Cell.layer_norm`) adds what its
backward needs to the forward's outputs, with one meaning on every path: the normalised rows of W x_t and their
1/sigma, the normalised rows of U h_{t-1}, and per row (1/sigma of U h_{t-1}, mean and 1/sigma of c_t). The C
kernel's loop keeps them as it goes; the torch loops use `lstm_torch.preactivation` unchanged and compute them
after the loop from y and the cells (two more GEMMs, on the devices without the C kernel only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.ops import lstm_cpu, lstm_torch
from lstmkit.ops.cell import Cell

# The variant features the op computes (`Cell.features`): all of them.
SUPPORTS = frozenset({"peephole", "coupled_gates", "cell_clip", "layer_norm", "recurrent_dropout", "zoneout"})


def _flip(t: Tensor, reverse: bool) -> Tensor:
    return t.flip(0) if reverse else t


def _zoneout(mask: Tensor | None, rate: float) -> Tensor | float | None:
    """A `Cell`'s zoneout from the op's two arguments: the mask if given, else the rate (0: none)."""
    return mask if mask is not None else (rate or None)


def _cell(W: Tensor, U: Tensor, b: Tensor | None, R: Tensor | None, peephole: Tensor | None, coupled_gates: bool,
          cell_clip: float, h_mask: Tensor | None = None, zoneout_h: Tensor | float | None = None,
          zoneout_c: Tensor | float | None = None, ln_x: Tensor | None = None, ln_h: Tensor | None = None,
          ln_c: Tensor | None = None) -> Cell:
    return Cell(W, U, b, R, peephole, coupled_gates, cell_clip, layer_norm=(ln_x, ln_h, ln_c) if ln_x is not None
                else None, h_mask=h_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c)


def _steps(z: Tensor | float | None, T: int, B: int, reverse: bool) -> Tensor | float | None:
    """A zoneout mask of the layer's rows [T*B, *] as [T, B, *] in processing order (a rate as it is)."""
    return _flip(z.view(T, B, -1), reverse) if isinstance(z, Tensor) else z


@torch.library.custom_op("lstmkit::lstm_layer", mutates_args=())
def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, W: Tensor, U: Tensor, b: Tensor | None, R: Tensor | None,
               reverse: bool, peephole: Tensor | None = None, coupled_gates: bool = False, cell_clip: float = 0.0,
               h_mask: Tensor | None = None, zoneout_h: Tensor | None = None, zoneout_h_rate: float = 0.0,
               zoneout_c: Tensor | None = None, zoneout_c_rate: float = 0.0, ln_x: Tensor | None = None,
               ln_h: Tensor | None = None, ln_c: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x [T, B, I], h0 [B, P], c0 [B, H], then the `Cell`'s fields: W [GH, I], U [GH, P], b [GH] (b_ih + b_hh)
    or None, R [P, H] or None, peephole [3, H] or None, coupled_gates, cell_clip, h_mask [B, P] or None, each
    zoneout as a mask of the layer's rows [T*B, *] (time-major, training) or a rate (evaluation; 0: none), and
    layer normalisation's gains and biases ln_x [2, GH], ln_h [2, GH], ln_c [2, H] (all three or none).

    Returns y [T, B, P], h_T [B, P], c_T [B, H], and what the backward needs: the activated gates [T, B, GH],
    the cells c~_t [T, B, H] and with zoneout of c the states c_t [T, B, H] after it (else an empty tensor), all in
    processing order (reversed in time when `reverse`); then with layer normalisation (else four empty tensors)
    the normalised rows of W x_t [T*B, GH], their 1/sigma [T*B], the normalised rows of U h_{t-1} [T*B, GH] and
    per row (1/sigma of U h_{t-1}, mean and 1/sigma of c_t) [T*B, 3], rows in processing order."""
    with torch.autocast(x.device.type, enabled=False):  # autocast reaches in here; `out=` GEMMs cannot mix dtypes
        cell = _cell(W, U, b, R, peephole, coupled_gates, cell_clip, h_mask, _zoneout(zoneout_h, zoneout_h_rate),
                     _zoneout(zoneout_c, zoneout_c_rate), ln_x, ln_h, ln_c)
        return _forward(x, h0, c0, cell, reverse)


def _forward(x: Tensor, h0: Tensor, c0: Tensor, cell: Cell, reverse: bool
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, _ = x.shape
    H, G = c0.shape[1], cell.W.shape[0]
    W, U, b, R = cell.W, cell.U, cell.b, cell.R
    x = _flip(x, reverse)
    z_h, z_c = _steps(cell.zoneout_h, T, B, reverse), _steps(cell.zoneout_c, T, B, reverse)
    if lstm_cpu.supports(x, cell):  # float32 on the CPU (autocast is off in here): the C kernel's loop
        xw = x.reshape(T * B, -1) @ W.t()
        gates, norms = xw, _no_norms(xw)
        if cell.layer_norm is not None:  # LN(W x_t) of every row at once; xw becomes its normalised rows
            gates, x_inv_sigma = lstm_cpu.layer_norm_rows(xw, cell.layer_norm[0])
        out = lstm_cpu.forward(gates, [B] * T, h0, c0, U, R, reverse=False, keep_for_backward=True, keep_inputs=False,
                               bias=b, peephole=cell.peephole, coupled_gates=cell.coupled_gates,
                               cell_clip=cell.cell_clip, h_mask=cell.h_mask, zoneout_h=_rows(z_h), zoneout_c=_rows(z_c),
                               layer_norm=cell.layer_norm[1:] if cell.layer_norm is not None else None)
        if cell.layer_norm is not None:
            norms = (xw, x_inv_sigma, out["v_hat"], out["ln_stats"])
        states = out["states"].view(T, B, H) if out["states"] is not None else xw.new_empty(0)
        return (_flip(out["y"].view(T, B, -1), reverse), out["h"], out["c"], gates.view(T, B, G),
                out["cells"].view(T, B, H), states, *norms)
    xw = lstm_torch.input_projection(x.reshape(T * B, -1), cell).view(T, B, G)  # of every step, one GEMM
    if _triton_runs(x, cell):  # CUDA: each step one Triton kernel, the gates the recurrent GEMM's epilogue
        from lstmkit.ops import lstm_triton

        y, h_T, c_T, gates, cells = lstm_triton.forward_loop(xw, h0, c0, U, R)
        # the standard cell: no zoneout (no separate states), no normalisation
        return _flip(y, reverse), h_T, c_T, gates, cells, cells.new_empty(0), *_no_norms(cells)
    gates = torch.empty_like(xw)
    cells = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    states = torch.empty_like(cells) if z_c is not None else cells.new_empty(0)
    y = torch.empty(T, B, h0.shape[1], dtype=x.dtype, device=x.device)
    h, c = h0, c0
    for t in range(T):
        a = lstm_torch.preactivation(xw[t], h, cell)  # the gates' pre-activations, one GEMM (U (h * m))
        i, f, g, o, c_new, m = lstm_torch.cell_forward(a, c, cell)
        lstm_torch.activated_gates(i, f, g, o, cell, out=gates[t])
        cells[t] = c_new
        h_new = m if R is None else torch.mm(m, R.t())  # then the projection, if any
        h, c = lstm_torch.zone_out(h_new, h, _at(z_h, t)), lstm_torch.zone_out(c_new, c, _at(z_c, t))
        if z_c is not None:
            states[t] = c
        y[t] = h
    norms = _norms_after_the_loop(x, h0, y, cells, cell) if cell.layer_norm is not None else _no_norms(cells)
    return _flip(y, reverse), h.clone(), c.clone(), gates, cells, states, *norms


def _recurrent_inputs(h0: Tensor, y: Tensor, cell: Cell) -> Tensor:
    """What U multiplied at every step, [T, B, P] in processing order: h_{t-1} (h0, then y shifted by one step),
    times the recurrent dropout mask if any (the same m at every step)."""
    h_prev = torch.cat([h0[None], y[:-1]])
    return h_prev * cell.h_mask if cell.h_mask is not None else h_prev


def _no_norms(like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four normalisation outputs of a cell without layer normalisation: empty tensors."""
    return tuple(like.new_empty(0) for _ in range(4))


def _norms_after_the_loop(x: Tensor, h0: Tensor, y: Tensor, cells: Tensor, cell: Cell
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The torch loops' normalisation outputs (see the module's docstring), from what they computed: x and y
    [T, B, *] and the cells in processing order. W x_t and U h_{t-1} of every step are GEMMs once more (what
    `lstm_torch.input_projection` and `preactivation` normalised), their statistics `layer_norm_statistics`'."""
    T, B, H = cells.shape
    h_prev = _recurrent_inputs(h0, y, cell)
    x_hat, _, x_inv_sigma = lstm_torch.layer_norm_statistics(x.reshape(T * B, -1) @ cell.W.t())
    v_hat, _, v_inv_sigma = lstm_torch.layer_norm_statistics(h_prev.reshape(T * B, -1) @ cell.U.t())
    _, c_mean, c_inv_sigma = lstm_torch.layer_norm_statistics(cells.reshape(T * B, H))
    return x_hat, x_inv_sigma.view(-1), v_hat, torch.cat([v_inv_sigma, c_mean, c_inv_sigma], dim=1)


def _at(z: Tensor | float | None, t: int) -> Tensor | float | None:
    return z[t] if isinstance(z, Tensor) else z


def _rows(z: Tensor | float | None) -> Tensor | float | None:
    """[T, B, *] steps as the C kernel's rows [T*B, *] (a rate as it is)."""
    return z.reshape(-1, z.shape[-1]) if isinstance(z, Tensor) else z


@lstm_layer.register_fake
def _(x, h0, c0, W, U, b, R, reverse, peephole=None, coupled_gates=False, cell_clip=0.0, h_mask=None,
      zoneout_h=None, zoneout_h_rate=0.0, zoneout_c=None, zoneout_c_rate=0.0, ln_x=None, ln_h=None, ln_c=None):
    T, B, _ = x.shape
    H, G = c0.shape[1], W.shape[0]
    states = x.new_empty(T, B, H) if zoneout_c is not None or zoneout_c_rate else x.new_empty(0)
    norms = ((x.new_empty(T * B, G), x.new_empty(T * B), x.new_empty(T * B, G), x.new_empty(T * B, 3))
             if ln_x is not None else _no_norms(x))
    return (x.new_empty(T, B, h0.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            x.new_empty(T, B, G), x.new_empty(T, B, H), states, *norms)


@torch.library.custom_op("lstmkit::lstm_layer_backward", mutates_args=())
def lstm_layer_backward(dy: Tensor, dh_T: Tensor, dc_T: Tensor, x: Tensor, h0: Tensor, c0: Tensor, W: Tensor,
                        U: Tensor, R: Tensor | None, y: Tensor, gates: Tensor, cells: Tensor, reverse: bool,
                        has_bias: bool, peephole: Tensor | None = None, coupled_gates: bool = False,
                        cell_clip: float = 0.0, h_mask: Tensor | None = None, zoneout_h: Tensor | None = None,
                        zoneout_h_rate: float = 0.0, zoneout_c: Tensor | None = None, zoneout_c_rate: float = 0.0,
                        states: Tensor | None = None, ln_x: Tensor | None = None, ln_h: Tensor | None = None,
                        ln_c: Tensor | None = None, x_hat: Tensor | None = None, x_inv_sigma: Tensor | None = None,
                        v_hat: Tensor | None = None, ln_stats: Tensor | None = None, input_grad: bool = True
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                   Tensor]:
    """BPTT of `lstm_layer`: (dx, dh0, dc0, dW, dU, db, dR, dpeephole, dln_x, dln_h, dln_c); db is empty without a
    bias, dR without R, dpeephole without peepholes, the dln without layer normalisation. states: the forward's
    (with zoneout of c); x_hat, x_inv_sigma, v_hat, ln_stats: its four normalisation outputs (with layer
    normalisation); input_grad: False when x needs no gradient (dx is then empty, and its GEMM not run)."""
    with torch.autocast(x.device.type, enabled=False):
        cell = _cell(W, U, None, R, peephole, coupled_gates, cell_clip, h_mask, _zoneout(zoneout_h, zoneout_h_rate),
                     _zoneout(zoneout_c, zoneout_c_rate), ln_x, ln_h, ln_c)
        return _backward_impl(dy, dh_T, dc_T, x, h0, c0, cell, y, gates, cells, states, reverse, has_bias,
                              (x_hat, x_inv_sigma, v_hat, ln_stats) if cell.layer_norm is not None else None,
                              input_grad)


def _backward_impl(dy: Tensor, dh_T: Tensor, dc_T: Tensor, x: Tensor, h0: Tensor, c0: Tensor, cell: Cell, y: Tensor,
                   gates: Tensor, cells: Tensor, states: Tensor | None, reverse: bool, has_bias: bool,
                   norms: tuple[Tensor, Tensor, Tensor, Tensor] | None, input_grad: bool = True) -> tuple[Tensor, ...]:
    T, B, _ = x.shape
    H, G, R = c0.shape[1], cell.W.shape[0], cell.R
    x, y, dy = _flip(x, reverse), _flip(y, reverse), _flip(dy, reverse)
    z_h, z_c = _steps(cell.zoneout_h, T, B, reverse), _steps(cell.zoneout_c, T, B, reverse)
    states = states if z_c is not None else None
    dp = dv = dln_h = dln_c = dxw = dln_x = None
    if lstm_cpu.supports(x, cell):  # float32 on the CPU, as in the forward: the C kernel's loop
        x_hat, x_inv_sigma, v_hat, ln_stats = norms if norms is not None else (None,) * 4
        out = lstm_cpu.backward(dy.reshape(T * B, -1), dh_T, dc_T, [B] * T, c0, cell.U, R, gates.view(T * B, G),
                                cells.view(T * B, H), reverse=False, peephole=cell.peephole,
                                coupled_gates=cell.coupled_gates, cell_clip=cell.cell_clip, h_mask=cell.h_mask,
                                zoneout_h=_rows(z_h), zoneout_c=_rows(z_c),
                                states=states.view(T * B, H) if states is not None else None,
                                layer_norm=cell.layer_norm[1:] if norms is not None else None, v_hat=v_hat,
                                ln_stats=ln_stats)
        dz, dh_next, dc_next, dp = out["dz"].view(T, B, G), out["dh0"], out["dc0"], out.get("dpeephole")
        dh_total = out["dh"].view(T, B, -1) if R is not None else None
        if norms is not None:  # dz is the gradient of LN(W x_t): back through it (and U h_{t-1}'s is dv)
            # (the kernel's dln_h and dln_c are views of one buffer: an op's outputs may not alias)
            dv, dln_h, dln_c = out["dv"].view(T, B, G), out["dln_h"].clone(), out["dln_c"].clone()
            dxw, dln_x = lstm_cpu.layer_norm_rows_backward(out["dz"], x_hat, x_inv_sigma, cell.layer_norm[0])
    elif _triton_runs(x, cell):
        from lstmkit.ops import lstm_triton

        dz, dh_total, dh_next, dc_next = lstm_triton.backward_loop(dy, dh_T, dc_T, c0, cell.U, R, gates, cells)
    else:
        dz, dh_total, dh_next, dc_next, dp, dv, dln_h, dln_c = _bptt_loop(dy, dh_T, dc_T, c0, cell, gates, cells,
                                                                          states, (z_h, z_c), norms)
        if norms is not None:
            dxw, dln_x = lstm_torch.layer_norm_backward(dz.view(T * B, G), norms[0], norms[1][:, None],
                                                        cell.layer_norm[0])
    grads = _weight_gradients(dz, dh_total, dh_next, dc_next, dp, x, h0, cell, y, gates, cells, reverse, has_bias,
                              dxw, dv, input_grad)
    return (*grads, *(d if d is not None else dz.new_empty(0) for d in (dln_x, dln_h, dln_c)))


def _triton_runs(x: Tensor, cell: Cell) -> bool:
    """Whether the Triton loops (`lstm_triton`) run this layer: the standard cell on CUDA. Imported only for CUDA
    tensors (triton is optional and slow to import)."""
    if x.device.type != "cuda":
        return False
    from lstmkit.ops import lstm_triton

    return lstm_triton.runs(x, cell)


def _bptt_loop(dy: Tensor, dh_T: Tensor, dc_T: Tensor, c0: Tensor, cell: Cell, gates: Tensor, cells: Tensor,
               states: Tensor | None, zoneout: tuple, norms: tuple[Tensor, Tensor, Tensor, Tensor] | None
               ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None,
                          Tensor | None]:
    """BPTT's time loop in torch ops (any device and dtype): dz, dL/dh~_t with a projection, dh0, dc0, dpeephole,
    and with layer normalisation dv (the gradient of U h_{t-1}), dln_h, dln_c. states: c_t after zoneout of c (else
    None: cells); zoneout: (z^h, z^c) [T, B, *] in processing order, rates or None; norms: the forward's
    normalisation outputs, or None."""
    T, B, H = cells.shape
    U, R = cell.U, cell.R
    z_h, z_c = zoneout
    c_states = states if states is not None else cells
    dz = torch.empty_like(gates)  # gradients of the pre-activations, per step
    dh_total = torch.empty_like(dy) if R is not None else None  # dL/dh~_t (projected), for dR after the loop
    dp = torch.zeros_like(cell.peephole) if cell.peephole is not None else None
    dv = dln_h = dln_c = None
    if norms is not None:  # the normalised rows of U h_{t-1} and c_t, per step
        v_hat, stats = norms[2].view(T, B, -1), norms[3].view(T, B, 3)
        c_hat = (cells - stats[:, :, 1:2]) * stats[:, :, 2:3]
        dv = torch.empty_like(gates)
        dln_h, dln_c = torch.zeros_like(cell.layer_norm[1]), torch.zeros_like(cell.layer_norm[2])
    dh_next, dc_next = dh_T, dc_T
    for t in range(T - 1, -1, -1):
        dh = dy[t] + dh_next
        zh, zc = _at(z_h, t), _at(z_c, t)
        # zoneout: z dh, z dc reach h_{t-1}, c_{t-1} directly; (1 - z) of each reaches h~_t, c~_t
        dh_kept, dh = (dh * zh, dh * (1 - zh)) if zh is not None else (None, dh)
        dc_kept, dc_next = (dc_next * zc, dc_next * (1 - zc)) if zc is not None else (None, dc_next)
        if R is not None:
            dh_total[t] = dh
            dh = dh @ R  # back through the projection: [B, H]
        c_prev = c_states[t - 1] if t > 0 else c0
        c_norm = (c_hat[t], stats[t, :, 2:3]) if norms is not None else None
        dz[t], dc_next, dp_t, dln_c_t = lstm_torch.cell_backward(dh, dc_next, gates[t], cells[t], c_prev, cell,
                                                                 c_norm)
        if dp is not None:
            dp += dp_t
        d_recurrent = dz[t]  # the gradient of U h_{t-1}, or of LN(U h_{t-1})
        if norms is not None:
            dln_c += dln_c_t
            dv[t], dln_h_t = lstm_torch.layer_norm_backward(dz[t], v_hat[t], stats[t, :, 0:1], cell.layer_norm[1])
            dln_h += dln_h_t
            d_recurrent = dv[t]
        dh_next = d_recurrent @ U  # [B, P]
        if cell.h_mask is not None:  # recurrent dropout: U saw h_{t-1} * m
            dh_next = dh_next * cell.h_mask
        if dc_kept is not None:
            dc_next = dc_next + dc_kept
        if dh_kept is not None:
            dh_next = dh_next + dh_kept
    return dz, dh_total, dh_next, dc_next, dp, dv, dln_h, dln_c


def _weight_gradients(dz: Tensor, dh_total: Tensor | None, dh0: Tensor, dc0: Tensor, dp: Tensor | None, x: Tensor,
                      h0: Tensor, cell: Cell, y: Tensor, gates: Tensor, cells: Tensor, reverse: bool, has_bias: bool,
                      dxw: Tensor | None = None, dv: Tensor | None = None, input_grad: bool = True
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The GEMMs that need no step order, once over all steps. dxw, dv: with layer normalisation, the gradients
    of W x_t and of U h_{t-1} (without it both are dz); input_grad: whether to compute dx (else it is empty)."""
    T, B, H = cells.shape
    G = gates.shape[2]
    dz_rows = dz.view(T * B, G)
    dxw = dxw if dxw is not None else dz_rows
    dx = _flip((dxw @ cell.W).view(T, B, -1), reverse) if input_grad else x.new_empty(0)
    dW = dxw.t() @ x.reshape(T * B, -1)
    h_prev = _recurrent_inputs(h0, y, cell).view(T * B, -1)
    dU = (dv.view(T * B, G) if dv is not None else dz_rows).t() @ h_prev
    db = dz_rows.sum(0) if has_bias else dz_rows.new_empty(0)
    if cell.R is not None:
        shown = cells if cell.layer_norm is None else lstm_torch.layer_norm(cells, cell.layer_norm[2])  # what tanh read
        o_tanh_c = gates[:, :, G - H:] * torch.tanh(shown)  # h_t before the projection (o is the last block)
        dR = dh_total.view(T * B, -1).t() @ o_tanh_c.view(T * B, H)
    else:
        dR = dz_rows.new_empty(0)
    dp = dp if dp is not None else dz_rows.new_empty(0)
    return dx, dh0.clone(), dc0.clone(), dW, dU, db, dR, dp


@lstm_layer_backward.register_fake
def _(dy, dh_T, dc_T, x, h0, c0, W, U, R, y, gates, cells, reverse, has_bias, peephole=None, coupled_gates=False,
      cell_clip=0.0, h_mask=None, zoneout_h=None, zoneout_h_rate=0.0, zoneout_c=None, zoneout_c_rate=0.0,
      states=None, ln_x=None, ln_h=None, ln_c=None, x_hat=None, x_inv_sigma=None, v_hat=None, ln_stats=None,
      input_grad=True):
    db = W.new_empty(W.shape[0]) if has_bias else W.new_empty(0)
    dR = R.new_empty(R.shape) if R is not None else W.new_empty(0)
    dp = peephole.new_empty(peephole.shape) if peephole is not None else W.new_empty(0)
    dln = tuple(ln.new_empty(ln.shape) if ln is not None else W.new_empty(0) for ln in (ln_x, ln_h, ln_c))
    dx = x.new_empty(x.shape) if input_grad else x.new_empty(0)
    return (dx, h0.new_empty(h0.shape), c0.new_empty(c0.shape), W.new_empty(W.shape), U.new_empty(U.shape), db, dR,
            dp, *dln)


def _setup_context(ctx, inputs, output):
    (x, h0, c0, W, U, b, R, reverse, peephole, coupled_gates, cell_clip, h_mask, zoneout_h, zoneout_h_rate,
     zoneout_c, zoneout_c_rate, ln_x, ln_h, ln_c) = inputs
    y, _, _, gates, cells, states, *norms = output
    ctx.save_for_backward(x, h0, c0, W, U, R, y, gates, cells, peephole, h_mask, zoneout_h, zoneout_c, states, ln_x,
                          ln_h, ln_c, *norms)
    ctx.reverse, ctx.has_bias, ctx.coupled_gates, ctx.cell_clip = reverse, b is not None, coupled_gates, cell_clip
    ctx.rates = (zoneout_h_rate, zoneout_c_rate)


def _backward(ctx, dy, dh_T, dc_T, *_saved_outputs):
    (x, h0, c0, W, U, R, y, gates, cells, peephole, h_mask, zoneout_h, zoneout_c, states, ln_x, ln_h, ln_c,
     *norms) = ctx.saved_tensors
    zeros = torch.zeros_like
    dy = dy if dy is not None else zeros(y)
    dh_T = dh_T if dh_T is not None else zeros(h0)
    dc_T = dc_T if dc_T is not None else zeros(c0)
    normalised = ln_x is not None
    (dx, dh0, dc0, dW, dU, db, dR, dp, dln_x, dln_h,
     dln_c) = lstm_layer_backward(dy, dh_T, dc_T, x, h0, c0, W, U, R, y, gates, cells, ctx.reverse, ctx.has_bias,
                                  peephole, ctx.coupled_gates, ctx.cell_clip, h_mask, zoneout_h, ctx.rates[0],
                                  zoneout_c, ctx.rates[1], states, ln_x, ln_h, ln_c, *norms,
                                  input_grad=ctx.needs_input_grad[0])
    return (dx if ctx.needs_input_grad[0] else None, dh0, dc0, dW, dU, db if ctx.has_bias else None,
            dR if R is not None else None, None, dp if peephole is not None else None, *[None] * 7,
            *((dln_x, dln_h, dln_c) if normalised else (None, None, None)))


torch.library.register_autograd("lstmkit::lstm_layer", _backward, setup_context=_setup_context)


def layer(x: Tensor, steps: tuple[int, int], h0: Tensor, c0: Tensor, cell: Cell, reverse: bool = False,
          record: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """`lstm_torch.lstm_layer`'s signature over the op, for full-length batches: x [T*B, I] rows and
    steps = (T, B) in place of batch_sizes (a list of T ints would fix T under torch.export)."""
    T, B = steps
    if not SUPPORTS.issuperset(cell.features):
        raise ValueError(f"the op computes {', '.join(sorted(SUPPORTS))}, not {', '.join(cell.features)}; "
                         "run this cell on backend='torch'")
    # bf16 input or states under autocast: the op computes in the weights' dtype (as "torch" does).
    x, h0, c0 = (t if t.dtype == cell.W.dtype else t.to(cell.W.dtype) for t in (x, h0, c0))
    zoneout = [(z, 0.0) if isinstance(z, Tensor) else (None, float(z or 0.0)) for z in (cell.zoneout_h, cell.zoneout_c)]
    y, h_T, c_T, *_ = lstm_layer(x.reshape(T, B, -1), h0, c0, cell.W, cell.U, cell.b, cell.R, reverse, cell.peephole,
                                 cell.coupled_gates, float(cell.cell_clip), cell.h_mask, *zoneout[0], *zoneout[1],
                                 *(cell.layer_norm or (None,) * 3))
    return y.view(T * B, -1), h_T, c_T
