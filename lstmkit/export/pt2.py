"""A run's model as a `torch.export` program with a dynamic sequence length (and batch), saved by torch.export.save.

Each LSTM layer runs on lstmkit's custom op (`backend="op"`: one `lstmkit::lstm_layer` node per layer and
direction, its time loop inside, so T stays symbolic), with the variants the op computes (`EXPRESSIBLE`:
peepholes, coupled gates, the cell clip, layer normalisation, zoneout's expectation at evaluation). lstmkit's
classifier packs a bidirectional batch, and packing makes T a Python loop over batch sizes; the exported classifier
instead runs the reverse direction over each row's own steps reversed in place (a gather by index; padding stays
where it is), which gives the same values at every valid step. Padding after a sequence never reaches its valid
steps forward, so pooling reads the same.

    classifier: (inputs [B, T] int64 or [B, T, F] float32, lengths [B] int64) -> logits [B, 1 or C]
    language model: (tokens [T, B] int64, h0 [L, B, H], c0 [L, B, H]) -> (logits [T, B, V], h_n, c_n)

Reload with `torch.export.load(FILE).module()`. torch.export's file format is torch's own (torch.export.save);
load only files you trust, as with any program.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lstmkit.errors import ConfigError
from lstmkit.export import LSTMSpec, lstm_spec, open_for_export, written_atomically
from lstmkit.models import pool
from lstmkit.nn import LSTM, TRACEABLE_FEATURES

# What the exported program computes: the op's features (recurrent dropout, a training feature, is never among a
# module's variant_features).
EXPRESSIBLE = TRACEABLE_FEATURES


def _op_lstm(spec: LSTMSpec, input_size: int, num_layers: int, **layout) -> LSTM:
    """An LSTM on the op backend with spec's shape and variant features (weights still to be loaded), in eval mode."""
    return LSTM(input_size, spec.hidden_size, num_layers, proj_size=spec.proj_size, backend="op",
                peephole="peephole" in spec.features, coupled_gates=spec.coupled_gates,
                cell_clip=spec.cell_clip or None, layer_norm="layer_norm" in spec.features, zoneout_h=spec.zoneout_h,
                zoneout_c=spec.zoneout_c, **layout).eval()


def _layer(spec: LSTMSpec, k: int, d: int, input_size: int) -> LSTM:
    """One layer and direction as a one-layer forward LSTM on the op backend, weights copied by name."""
    w = spec.layers[k][d]
    lstm = _op_lstm(spec, input_size, 1, bias=w.b_ih is not None, batch_first=True)
    state = {"weight_ih_l0": w.W, "weight_hh_l0": w.U}
    if w.b_ih is not None:
        state |= {"bias_ih_l0": w.b_ih, "bias_hh_l0": w.b_hh}
    if w.R is not None:
        state["weight_hr_l0"] = w.R
    if w.peephole is not None:
        state["weight_peephole_l0"] = w.peephole
    if w.layer_norm is not None:
        state |= {f"layer_norm_{part}_l0": t for part, t in zip(("ih", "hh", "c"), w.layer_norm, strict=True)}
    lstm.load_state_dict({name: t.detach().clone() for name, t in state.items()})
    return lstm.eval()


def reverse_rows(x: Tensor, lengths: Tensor) -> Tensor:
    """x [B, T, ...]: each row's first lengths[b] steps in reverse order, the steps after them where they were."""
    T = x.shape[1]
    steps = torch.arange(T, device=x.device)[None, :]  # [1, T]
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # [B, T]
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class ExportableClassifier(nn.Module):
    """A SequenceClassifier's computation with no packing: the same weights, the same values at valid steps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        spec = lstm_spec(model.lstm, EXPRESSIBLE)
        self.embedding = model.embedding
        self.pooling, self.num_directions = model.pooling, spec.num_directions
        width = (spec.proj_size or spec.hidden_size) * spec.num_directions
        self.layers = nn.ModuleList(
            nn.ModuleList(_layer(spec, k, d, spec.input_size if k == 0 else width) for d in range(spec.num_directions))
            for k in range(spec.num_layers))
        self.head = model.head

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        x = self.embedding(inputs) if self.embedding is not None else inputs  # [B, T, E]
        for directions in self.layers:
            outputs = [directions[0](x)[0]]
            if len(directions) == 2:
                outputs.append(reverse_rows(directions[1](reverse_rows(x, lengths))[0], lengths))
            x = torch.cat(outputs, dim=2) if len(outputs) == 2 else outputs[0]
        return self.head(pool(x, lengths, self.pooling, self.num_directions))


class ExportableLanguageModel(nn.Module):
    """The LanguageModel with the state as two tensors (torch.export takes tensors) and its LSTM on the op path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        spec = lstm_spec(model.lstm, EXPRESSIBLE)
        self.embedding, self.head = model.embedding, model.head
        self.lstm = _op_lstm(spec, spec.input_size, spec.num_layers, bias=model.lstm.bias)
        self.lstm.load_state_dict(model.lstm.state_dict())

    def forward(self, tokens: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        output, (h_n, c_n) = self.lstm(self.embedding(tokens), (h0, c0))
        return self.head(output), h_n, c_n


def exported_program(task, model) -> torch.export.ExportedProgram:
    """torch.export of the run's model, with the batch and sequence axes dynamic."""
    # Dim.DYNAMIC rather than named Dims: the op's fake kernel yields guards such as B * min(8, 8B) == 8B, true for
    # every B >= 1 but beyond what the solver proves; DYNAMIC keeps such axes dynamic instead of refusing them
    batch = time = torch.export.Dim.DYNAMIC
    if task.name == "lm":
        wrapper = ExportableLanguageModel(model).eval()
        L, H = model.lstm.num_layers, model.lstm.hidden_size
        P = model.lstm.proj_size or H
        example = (torch.zeros(3, 2, dtype=torch.long), torch.zeros(L, 2, P), torch.zeros(L, 2, H))
        shapes = ({0: time, 1: batch}, {1: batch}, {1: batch})
    else:
        wrapper = ExportableClassifier(model).eval()
        tokens = model.embedding is not None
        inputs = torch.ones(2, 3, dtype=torch.long) if tokens else torch.zeros(2, 3, model.lstm.input_size)
        example = (inputs, torch.tensor([3, 2]))
        shapes = ({0: batch, 1: time}, {0: batch})
    try:
        with torch.no_grad():
            return torch.export.export(wrapper, example, dynamic_shapes=shapes)
    except Exception as error:  # torch.export's errors are long; the first line names the problem
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"torch.export could not trace this model ({first[:200]})") from error


def export_pt2(run: Path, out: Path) -> Path:
    task, model = open_for_export(run)
    program = exported_program(task, model)
    with written_atomically(out) as tmp:
        torch.export.save(program, str(tmp))
    return Path(out)
