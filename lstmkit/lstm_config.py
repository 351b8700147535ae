"""`LSTMConfig`: the configuration of one `lstmkit.LSTM`, owned here beside `nn.py` and nested in every task's model
configuration as its `lstm` field (keys `model.lstm.hidden_size`, `[model.lstm]` in a preset).

One place for the LSTM's options, so a new variant is usable from every task by adding its field here. Flat keys
(`model.hidden_size`), which run directories saved before the nesting hold in config.json, still load: `config.py`
reads a key a section lacks from its nested `lstm` section (see `config.resolve`).

A task uses it in two places: a field `lstm: LSTMConfig = field(default_factory=...)` in its model dataclass (its own
defaults as the factory's arguments), and `config.model.lstm.build(input_size, ...)` where it makes its LSTM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lstmkit.nn import LSTM

Backend = Literal["auto", "torch", "op", "cpu"]  # lstmkit.ops.BACKENDS; a test holds them equal


@dataclass
class LSTMConfig:
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0  # > 0: a projection of h (LSTMP, as nn.LSTM's proj_size); 0: none
    backend: Backend = "auto"
    forget_bias: float | list[float] = 1.0  # one number, or one per layer
    # Variants (see lstmkit.nn.LSTM's docstring for their equations); off by default.
    peephole: bool = False
    coupled_gates: bool = False
    cell_clip: float | None = None  # > 0: clip c_t to [-cell_clip, cell_clip]; none: no clip
    layer_norm: bool = False
    recurrent_dropout: float = 0.0  # variational dropout of h_{t-1}, one mask per sequence (training only)
    input_dropout: float | list[float] = 0.0  # variational dropout of each layer's input, one mask per sequence; one
    # rate, or one per layer (training only)
    weight_drop: float = 0.0  # DropConnect on U, one mask per batch (training only)
    zoneout_h: float = 0.0  # zoneout of h: keep h_{t-1} with this probability (its expectation at evaluation)
    zoneout_c: float = 0.0  # zoneout of c, likewise

    def build(self, input_size: int, *, dropout: float = 0.0, batch_first: bool = False) -> LSTM:
        """The LSTM this configuration describes, reading `input_size` features; `dropout` between its layers
        (the task's own dropout, which it applies elsewhere too)."""
        return LSTM(input_size, self.hidden_size, self.num_layers, batch_first=batch_first,
                    dropout=dropout if self.num_layers > 1 else 0.0, bidirectional=self.bidirectional,
                    proj_size=self.proj_size, backend=self.backend, forget_bias=self.forget_bias,
                    peephole=self.peephole, coupled_gates=self.coupled_gates, cell_clip=self.cell_clip,
                    layer_norm=self.layer_norm, recurrent_dropout=self.recurrent_dropout,
                    input_dropout=self.input_dropout,
                    weight_drop=self.weight_drop, zoneout_h=self.zoneout_h, zoneout_c=self.zoneout_c)
