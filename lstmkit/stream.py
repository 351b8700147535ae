"""Streaming: advance a batch of LSTM states one token at a time, as generation and online use need.

Calling `torch.nn.LSTM` once per token pays its whole set-up every time (argument checks, weight
preparation, a oneDNN primitive for T=1, fresh output tensors): at batch 1 that set-up, not the arithmetic,
is the cost. `LSTMStream` pays it once. When made, it concatenates each layer's weights into one matrix
[W | U]^T (eq. 6.51-6.54 as one GEMM of [x_t, h_{t-1}]) and the two biases into one, and allocates every
buffer a step writes. A step is then, per layer: copy x_t in, one `addmm` into the gate buffer, the
sigmoids and the tanh in place, c_t = f ⊙ c_{t-1} + i ⊙ c~ (6.55) in place, h_t = o ⊙ tanh(c_t) (6.56)
written straight into the slot where the next step's GEMM reads h_{t-1}. No allocation, no autograd.

A variant cell (peepholes, coupled gates, cell clip, layer normalisation) streams too, by the torch backend's own
step (`lstm_torch.input_projection`, `lstm_step`), which allocates its small results. The allocation-free
pass above is the standard cell's specialisation (test_stream holds both to `lstmkit.LSTM`'s output).

The weights are copied when the stream is made (and by `refresh()`): train, then stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.nn import LSTM
from lstmkit.ops import lstm_torch
from lstmkit.ops.cell import Cell


class LSTMStream:
    """The state of `batch_size` sequences read by `lstm`, advanced by `step(x)`; see the module docstring.

    >>> stream = LSTMStream(lstm, batch_size=1)
    >>> h = stream.step(x_t)          # [B, input_size] -> [B, hidden_size (or proj_size)] of the last layer
    >>> out = stream.steps(x)         # [T, B, input_size] -> [T, B, ...]: several tokens, one call
    >>> h_n, c_n = stream.state       # [num_layers, B, ...], what lstm(x, hx) would return as (h_n, c_n)
    """

    def __init__(self, lstm: LSTM, batch_size: int = 1, hx: tuple[Tensor, Tensor] | None = None) -> None:
        if not isinstance(lstm, LSTM):
            raise TypeError(f"LSTMStream needs an lstmkit.LSTM, got {type(lstm).__name__}; for a torch.nn.LSTM use "
                            "lstmkit.LSTM.from_torch(module)")
        if lstm.bidirectional:
            raise ValueError("a bidirectional LSTM cannot stream: its reverse direction reads the sequence from the "
                             "end, which has not arrived yet")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.lstm = lstm
        self.batch_size = batch_size
        weight = lstm.weight_ih_l0
        self.dtype, self.device = weight.dtype, weight.device
        H, P = lstm.hidden_size, lstm.output_state_size
        B = batch_size

        def empty(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=self.dtype, device=self.device)

        # xh[k] = [x_t | h_{t-1}] of layer k: the step writes h_t into its right part, so the next step's GEMM
        # finds h_{t-1} there without a copy.
        self._widths = [lstm.input_size] + [P] * (lstm.num_layers - 1)  # each layer's input width
        self._xh = [empty(B, width + P) for width in self._widths]
        self._c = [empty(B, H) for _ in range(lstm.num_layers)]
        self._tanh_c = empty(B, H)
        self._unprojected = empty(B, H) if lstm.proj_size else None
        # Every view a step touches, made once: slicing costs as much as a small op at batch 1. The gate rows
        # are stored in the order (i, f, o, c~), so the three sigmoids are one call and the tanh another.
        self._layers = []
        for width, xh, c in zip(self._widths, self._xh, self._c, strict=True):
            gates = empty(B, lstm.gates * H)
            self._layers.append((xh, xh[:, :width], xh[:, width:], c, gates, gates[:, : 3 * H], gates[:, 3 * H:],
                                 gates[:, :H], gates[:, H: 2 * H], gates[:, 2 * H: 3 * H]))
        self.refresh()
        self.reset(hx)

    @property
    def input_buffer(self) -> Tensor:
        """The [B, input_size] slot the first layer reads x_t from: write into it (e.g. `torch.index_select(...,
        out=stream.input_buffer)`) and call `step()` with no argument to save a copy."""
        return self._layers[0][1]

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the LSTM's current weights (call after changing them)."""
        self._weights: list[tuple[Tensor, Tensor | None, Tensor | None]] = []
        self._variants: list[Cell | None] = []  # per layer: the cell's description when it is not the standard one
        H = self.lstm.hidden_size
        G = self.lstm.gates
        # torch's gate rows are (i, f, c~, o); ours (i, f, o, c~): (destination rows, source rows) per block.
        # A variant cell keeps torch's order, which `lstm_torch.cell_forward` reads.
        blocks = ((slice(0, 2 * H), slice(0, 2 * H)), (slice(2 * H, 3 * H), slice(3 * H, 4 * H)),
                  (slice(3 * H, 4 * H), slice(2 * H, 3 * H)))
        for layer in range(self.lstm.num_layers):
            W, U, b_ih, b_hh, R = self.lstm.layer_weights(layer)
            cell = self.lstm.cell(layer)
            # A variant: a copy of its cell (weights detached, as the stream's own copy of a standard one).
            variant = None if cell.standard else Cell(*(
                tuple(t.detach().clone() for t in value) if isinstance(value, tuple)
                else value.detach().clone() if isinstance(value, torch.Tensor) else value
                for value in (cell.W, cell.U, cell.b, cell.R, cell.peephole, cell.coupled_gates, cell.cell_clip,
                              cell.layer_norm, None, cell.zoneout_h, cell.zoneout_c)))
            width = W.shape[1]
            # [W | U] kept [4H, I + P] row-major and used transposed: the layout MKL's GEMV reads fastest here
            # (measured 5-10% faster than a [I + P, 4H] copy at batch 1). Filled block by block, one pass.
            stacked = torch.empty(G * H, width + U.shape[1], dtype=self.dtype, device=self.device)
            bias = torch.empty(self.batch_size, G * H, dtype=self.dtype, device=self.device) if b_ih is not None \
                else None
            for to, source in blocks if variant is None else ((slice(0, G * H), slice(0, G * H)),):
                stacked[to, :width] = W[source]
                stacked[to, width:] = U[source]
                if bias is not None:
                    bias[:, to] = b_ih[source] + b_hh[source]
            self._weights.append((stacked.t(), bias, R.t().contiguous() if R is not None else None))
            self._variants.append(variant)

    @torch.no_grad()
    def reset(self, hx: tuple[Tensor, Tensor] | None = None) -> None:
        """Start again from zeros, or from hx = (h_0 [L, B, P], c_0 [L, B, H]) (e.g. the state after a prompt)."""
        L, B, H, P = self.lstm.num_layers, self.batch_size, self.lstm.hidden_size, self.lstm.output_state_size
        if hx is None:
            for xh, c in zip(self._xh, self._c, strict=True):
                xh.zero_()
                c.zero_()
            return
        h0, c0 = hx
        for name, t, shape in (("h_0", h0, (L, B, P)), ("c_0", c0, (L, B, H))):
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape {shape} (num_layers, batch_size, size), got {got}")
        for k in range(L):
            self._xh[k][:, -P:].copy_(h0[k])
            self._c[k].copy_(c0[k])

    @property
    def state(self) -> tuple[Tensor, Tensor]:
        """(h [L, B, P], c [L, B, H]): copies, safe to keep."""
        P = self.lstm.output_state_size
        return torch.stack([xh[:, -P:] for xh in self._xh]), torch.stack(self._c)

    @torch.no_grad()
    def step(self, x: Tensor | None = None) -> Tensor:
        """x_t [B, input_size] -> h_t [B, P] of the last layer (x=None: x_t is already in `input_buffer`).
        The result is a view of the stream's own buffer, overwritten by the next step: copy it to keep it."""
        if x is not None:
            if x.shape != (self.batch_size, self._widths[0]):
                raise ValueError(f"step needs x of shape [{self.batch_size}, {self._widths[0]}] (batch_size, "
                                 f"input_size), got {list(x.shape)}")
            self._layers[0][1].copy_(x)
        tanh_c, unprojected = self._tanh_c, self._unprojected
        h = None
        for (xh, x_slot, h_slot, c, gates, sigmoids, candidate, i, f, o), (stacked, bias, R), variant in zip(
                self._layers, self._weights, self._variants, strict=True):
            if h is not None:
                x_slot.copy_(h)  # the layer below's h_t is this layer's x_t
            if variant is not None:  # the torch backend's own step: input projection, recurrence, equations
                h_t, c_t, _ = lstm_torch.lstm_step(lstm_torch.input_projection(x_slot, variant), h_slot, c, variant,
                                                   (variant.zoneout_h, variant.zoneout_c))  # zoneout: its expectation
                c.copy_(c_t)
                h_slot.copy_(h_t)
                h = h_slot
                continue
            if bias is None:
                torch.mm(xh, stacked, out=gates)
            else:
                torch.addmm(bias, xh, stacked, out=gates)  # the four gates' pre-activations, one GEMM
            sigmoids.sigmoid_()  # i (6.51), f (6.52), o (6.53)
            candidate.tanh_()  # c~ (6.54)
            c.mul_(f).addcmul_(i, candidate)  # (6.55)
            torch.tanh(c, out=tanh_c)
            if R is None:
                torch.mul(o, tanh_c, out=h_slot)  # (6.56), straight into the next step's h_{t-1} slot
            else:
                torch.mul(o, tanh_c, out=unprojected)
                torch.mm(unprojected, R, out=h_slot)  # the projection r_t = W_hr h_t
            h = h_slot
        return h

    def steps(self, x: Tensor) -> Tensor:
        """Several tokens: x [T, B, input_size] -> [T, B, P] (a new tensor)."""
        if x.dim() != 3 or x.shape[1] != self.batch_size:
            raise ValueError(f"steps needs x of shape [T, {self.batch_size}, input_size], got {tuple(x.shape)}")
        out = torch.empty(x.shape[0], self.batch_size, self.lstm.output_state_size, dtype=self.dtype,
                          device=self.device)
        for t in range(x.shape[0]):
            out[t] = self.step(x[t])
        return out
