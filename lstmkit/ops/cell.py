"""The description of one layer-direction's LSTM cell: its weights and which variant features are on.

Every layer function of `lstmkit.ops` takes one `Cell` (in place of positional W, U, b, R tuples), so a variant
travels from `lstmkit.LSTM` to every backend as data, and `lstmkit.ops.dispatch` reads `features` to decide
which paths can run it. The equations themselves live once per backend: `lstmkit.reference.lstm_numpy` (the
oracle), `lstm_torch.cell_forward` / `cell_backward` (the torch backend, which the op and `LSTMStream` reuse),
and the row functions of `csrc/lstm_cpu.c` (`forward_row_variant`, `backward_row_variant`; the standard cell keeps
its own, leaner pair).

Adding a variant touches: a field here (and its name in `features`), the reference's forward and BPTT, the torch
backend's `cell_forward` and `cell_backward`, and `lstmkit.nn.LSTM` (its argument, its parameters if it has any,
and `cell()` filling the field), and `lstm_config.LSTMConfig` (its key in task configurations). Nothing else:
dispatch sends a cell whose features the C kernel does not list in `lstm_cpu.SUPPORTS` to the torch backend (the
op then runs its torch loops), until the C rows compute it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

FEATURES = ("peephole", "coupled_gates", "cell_clip", "layer_norm", "recurrent_dropout", "zoneout")
# Features of a call that lstmkit.LSTM applies between layers itself (input_dropout of the layers above the first),
# so every layer-by-layer path runs them whatever its cell features; only torch's whole-stack kernel cannot.
STACK_FEATURES = frozenset({"input_dropout"})
LAYER_NORM_EPS = 1e-5  # the epsilon of every layer normalisation (torch's LayerNorm default)


def features_of(peephole: bool, coupled_gates: bool, cell_clip: float | None, layer_norm: bool = False,
                recurrent_dropout: bool = False, zoneout: bool = False) -> tuple[str, ...]:
    """The names of the features that are on, in FEATURES' order; () for the standard (textbook) cell."""
    on = {"peephole": peephole, "coupled_gates": coupled_gates, "cell_clip": bool(cell_clip and cell_clip > 0),
          "layer_norm": layer_norm, "recurrent_dropout": recurrent_dropout, "zoneout": zoneout}
    return tuple(name for name in FEATURES if on[name])


@dataclass(frozen=True, eq=False)
class Cell:
    """One layer and direction. G = 4 gate blocks in torch's order i, f, g, o, or 3 (i, g, o) with coupled gates.

    W: [GH, I] input weights; U: [GH, P] recurrent; b: [GH] (b_ih + b_hh) or None; R: [P, H] projection or None;
    peephole: [3, H] diagonal weights (p_i, p_f, p_o) or None; coupled_gates: f = 1 - i (CIFG);
    cell_clip: > 0 clips c_t to [-cell_clip, cell_clip], 0 is off; layer_norm: (ln_x [2, GH], ln_h [2, GH],
    ln_c [2, H]), the gains (row 0) and biases (row 1) of the normalisations of W x_t, U h_{t-1} and c_t, or None;
    h_mask: [B, P] variational dropout of h_{t-1} (Gal & Ghahramani 2016), one row per sequence for every step,
    scaled by 1/(1-p): U (h_{t-1} * h_mask), or None; zoneout_h, zoneout_c: zoneout of h and c (Krueger et al.
    2016), each a mask of the layer's rows ([N, P] / [N, H], 1 = keep the previous value; training) or the rate p as
    a number (evaluation: the expectation), or None. See `lstmkit.nn.LSTM` for the equations."""

    W: Tensor
    U: Tensor
    b: Tensor | None
    R: Tensor | None = None
    peephole: Tensor | None = None
    coupled_gates: bool = False
    cell_clip: float = 0.0
    layer_norm: tuple[Tensor, Tensor, Tensor] | None = None
    h_mask: Tensor | None = None
    zoneout_h: Tensor | float | None = None
    zoneout_c: Tensor | float | None = None

    @property
    def gates(self) -> int:
        return 3 if self.coupled_gates else 4

    @property
    def hidden_size(self) -> int:
        return self.W.shape[0] // self.gates

    @property
    def features(self) -> tuple[str, ...]:
        """The variant features that are on (`features_of`)."""
        return features_of(self.peephole is not None, self.coupled_gates, self.cell_clip, self.layer_norm is not None,
                           self.h_mask is not None, self.zoneout_h is not None or self.zoneout_c is not None)

    @property
    def standard(self) -> bool:
        return not self.features

    def tensors(self) -> tuple[Tensor | None, ...]:
        """Every tensor of the cell (absent ones None), e.g. for a backend's dtype and device check."""
        return (self.W, self.U, self.b, self.R, self.peephole, *(self.layer_norm or ()), self.h_mask,
                *(z for z in (self.zoneout_h, self.zoneout_c) if isinstance(z, Tensor)))
