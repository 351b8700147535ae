"""Read the gates: `lstmkit.trace(lstm, x)` returns i, f, g, o, c, h for every step, layer and direction.

The trace comes from the same computation as the forward pass (not a re-implementation), so its last
layer's h *is* the output and its c at each sequence's last step *is* c_n. The tensors stay in the
autograd graph: a loss built from them backpropagates, in train or eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from lstmkit.errors import ConfigError, DataError
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


# --- a run's model on a user's text: what `lstmkit inspect`, the plots and the web page show ---------------

# The names users read, in the textbook's order (6.51-6.56), for the fields of GateTrace.
GATE_NAMES = {"i": "input", "f": "forget", "o": "output", "g": "candidate", "c": "cell", "h": "hidden"}


@dataclass
class TextTrace:
    """The gates and memory cell of a run's LSTM on one text, as plain numbers.

    `layers[k]` is one layer and direction: {"layer", "direction", and for each of GATE_NAMES' values a
    [T, H] float32 array}. `unknown[t]` says token t is outside the vocabulary (the model read `<unk>`)."""

    task: str
    level: str  # "word" or "char"
    tokens: list[str]
    unknown: list[bool]
    layers: list[dict[str, Any]]
    prediction: dict[str, Any] | None
    shown_member: str | None = None  # an ensemble's run: whose gates these are (the prediction is the ensemble's)

    @property
    def hidden_size(self) -> int:
        return int(self.layers[0]["cell"].shape[1])

    @property
    def num_layers(self) -> int:
        return 1 + max(entry["layer"] for entry in self.layers)

    @property
    def num_directions(self) -> int:
        return len(self.layers) // self.num_layers

    def to_json(self, decimals: int = 4, layers: Sequence[int] | None = None,
                gates: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready: arrays become nested lists rounded to `decimals` (the page needs no more). `layers` and
        `gates` keep only those (the description of the model stays whole)."""
        names = [name for name in GATE_NAMES.values() if gates is None or name in gates]
        kept = [entry for entry in self.layers if layers is None or entry["layer"] in layers]
        return {
            "task": self.task, "level": self.level, "tokens": self.tokens, "unknown": self.unknown,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "directions": ["forward", "reverse"][: self.num_directions],
            "layers": [{"layer": entry["layer"], "direction": entry["direction"],
                        **{name: np.round(entry[name].astype(np.float64), decimals).tolist() for name in names}}
                       for entry in kept],
            "prediction": self.prediction,
        }


@torch.no_grad()
def trace_text(task: Any, model: torch.nn.Module, text: str, max_tokens: int | None = None) -> TextTrace:
    """Run a sentiment or language-model run's model on `text` and keep every gate of every token.

    The tokens are exactly what the model reads (a sentiment run's tokenizer and truncation, a language
    model's characters or words). Raises ConfigError for runs that do not read text."""
    encode = getattr(task, "encode_text", None)
    if encode is None:
        raise ConfigError(f"this is a {task.name!r} run, which does not read text; inspect works on sentiment and "
                          "language-model runs")
    members = getattr(model, "members", None)
    if not hasattr(model, "lstm") and members is not None and hasattr(task, "labelled"):
        # An ensemble: the gates of its first member, the prediction of all of them.
        result = trace_text(task, members[0], text, max_tokens)
        _, ids = encode(text)
        probabilities = task.predict_proba(model, [torch.tensor(ids, dtype=torch.long)])[0]
        result.prediction = task.labelled(probabilities)
        result.shown_member = f"member 1 of the ensemble's {len(members)}"
        return result
    if not hasattr(model, "lstm"):
        raise ConfigError(f"a {type(model).__name__} has no LSTM to trace")
    tokens, ids = encode(text)
    if max_tokens is not None and len(ids) > max_tokens:
        raise DataError(f"the text has {len(ids):,} tokens, over the limit of {max_tokens:,}; shorten it")
    model.eval()
    lstm = model.lstm
    device = next(model.parameters()).device
    id_tensor = torch.tensor(ids, dtype=torch.long, device=device)
    id_tensor = id_tensor[None, :] if lstm.batch_first else id_tensor[:, None]
    gate_trace = trace(lstm, model.embedding(id_tensor))
    layers = []
    for layer, per_direction in enumerate(gate_trace.layers):
        for direction, gates in enumerate(per_direction):
            entry: dict[str, Any] = {"layer": layer, "direction": "forward" if direction == 0 else "reverse"}
            for field, name in GATE_NAMES.items():
                entry[name] = getattr(gates, field)[:, 0].float().cpu().numpy()  # [T, H] of the one sequence
            layers.append(entry)
    prediction = task.predict_trace(model, gate_trace) if hasattr(task, "predict_trace") else None
    return TextTrace(task=task.name, level=task.vocab.level, tokens=tokens,
                     unknown=[i == task.vocab.unk_id for i in ids], layers=layers, prediction=prediction)
