"""The vendor's fused LSTM (oneDNN on CPU, cuDNN on GPU) run with lstmkit's own parameters.

This is what `torch.nn.LSTM` itself calls (`torch.lstm`, the same op). It fits only the standard
stack: no gate recording, no variants. `lstmkit.ops.dispatch` decides when it runs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lstm_stack(
    x: Tensor,
    batch_sizes: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    flat_weights: list[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """All layers and directions at once. x: [T, B, I] time-major, or packed rows [N, I] with batch_sizes.

    flat_weights: per layer, per direction, W, U, (b_ih, b_hh), (R) — torch.nn.LSTM's order.
    Returns (output, h_n, c_n) in the same layout as x.
    """
    if batch_sizes is None:
        return torch.lstm(x, (h0, c0), flat_weights, has_biases, num_layers, dropout, training, bidirectional, False)
    return torch.lstm(x, batch_sizes, (h0, c0), flat_weights, has_biases, num_layers, dropout, training, bidirectional)
