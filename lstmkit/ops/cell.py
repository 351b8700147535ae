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

FEATURES = ("peephole", "coupled_gates", "cell_clip")


def features_of(peephole: bool, coupled_gates: bool, cell_clip: float | None) -> tuple[str, ...]:
    """The names of the features that are on, in FEATURES' order; () for the standard (textbook) cell."""
    on = {"peephole": peephole, "coupled_gates": coupled_gates, "cell_clip": bool(cell_clip and cell_clip > 0)}
    return tuple(name for name in FEATURES if on[name])


@dataclass(frozen=True, eq=False)
class Cell:
    """One layer and direction. G = 4 gate blocks in torch's order i, f, g, o, or 3 (i, g, o) with coupled gates.

    W: [GH, I] input weights; U: [GH, P] recurrent; b: [GH] (b_ih + b_hh) or None; R: [P, H] projection or None;
    peephole: [3, H] diagonal weights (p_i, p_f, p_o) or None; coupled_gates: f = 1 - i (CIFG);
    cell_clip: > 0 clips c_t to [-cell_clip, cell_clip], 0 is off. See `lstmkit.nn.LSTM` for the equations."""

    W: Tensor
    U: Tensor
    b: Tensor | None
    R: Tensor | None = None
    peephole: Tensor | None = None
    coupled_gates: bool = False
    cell_clip: float = 0.0

    @property
    def gates(self) -> int:
        return 3 if self.coupled_gates else 4

    @property
    def hidden_size(self) -> int:
        return self.W.shape[0] // self.gates

    @property
    def features(self) -> tuple[str, ...]:
        """The variant features that are on (`features_of`)."""
        return features_of(self.peephole is not None, self.coupled_gates, self.cell_clip)

    @property
    def standard(self) -> bool:
        return self.peephole is None and not self.coupled_gates and not self.cell_clip

    def tensors(self) -> tuple[Tensor | None, ...]:
        """Every tensor of the cell (absent ones None), e.g. for a backend's dtype and device check."""
        return self.W, self.U, self.b, self.R, self.peephole
