"""Read the gates: `lstmkit.trace(lstm, x)` returns i, f, g, o, c, h for every step, layer and direction.

The trace comes from the same computation as the forward pass (not a re-implementation), so its last
layer's h *is* the output and its c at each sequence's last step *is* c_n. The tensors stay in the
autograd graph: a loss built from them backpropagates, in train or eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from lstmkit.nn import LSTM


class GateTrace(NamedTuple):
    """One layer, one direction. Each field is [T, B, H] (h is [T, B, P] with a projection), time-major
    whatever batch_first says, batch in the caller's order, zeros at padded steps. For the reverse
    direction, index t still means input position t (not processing order)."""

    i: Tensor  # input gate (6.51)
    f: Tensor  # forget gate (6.52)
    g: Tensor  # candidate cell c~ (6.54)
    o: Tensor  # output gate (6.53)
    c: Tensor  # memory cell (6.55)
    h: Tensor  # hidden state / layer output (6.56)


@dataclass
class LSTMTrace:
    output: Tensor | PackedSequence  # exactly what lstm(x, hx) returns
    h_n: Tensor
    c_n: Tensor
    layers: list[list[GateTrace]]  # [layer][direction]
    lengths: Tensor  # [B] number of valid steps of each sequence

    def __getitem__(self, key: int | tuple[int, int]) -> GateTrace:
        """trace[layer] (forward direction) or trace[layer, direction]."""
        layer, direction = key if isinstance(key, tuple) else (key, 0)
        return self.layers[layer][direction]


def trace(lstm: LSTM, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None) -> LSTMTrace:
    """Run `lstm` on `input` (anything its forward takes) and keep every gate of every step."""
    if not isinstance(lstm, LSTM):
        raise TypeError(
            f"trace needs an lstmkit.LSTM, got {type(lstm).__name__}; for a torch.nn.LSTM use "
            "lstmkit.LSTM.from_torch(module)"
        )
    record: list[list[dict[str, Tensor]]] = []
    output, (h_n, c_n) = lstm.run(input, hx, record=record)

    if isinstance(input, PackedSequence):
        def to_padded(packed_rows: Tensor) -> Tensor:
            rows = PackedSequence(packed_rows, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            return pad_packed_sequence(rows)[0]

        lengths = pad_packed_sequence(output)[1]
    else:
        time_major = input if input.dim() == 2 or not lstm.batch_first else input.transpose(0, 1)
        T = time_major.shape[0]
        B = time_major.shape[1] if input.dim() == 3 else 1

        def to_padded(packed_rows: Tensor) -> Tensor:
            return packed_rows.view(T, B, packed_rows.shape[1])

        lengths = torch.full((B,), T, dtype=torch.int64)

    layers = [
        [GateTrace(**{name: to_padded(rows) for name, rows in direction.items()}) for direction in per_layer]
        for per_layer in record
    ]
    return LSTMTrace(output=output, h_n=h_n, c_n=c_n, layers=layers, lengths=lengths)
