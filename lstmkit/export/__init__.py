"""Take a run elsewhere: ONNX (the standard LSTM operator, optionally int8), Keras 3 files, `torch.export` programs.

    export_run(RUN, "onnx" | "keras" | "pt2", OUT, int8=False)   one file, written to a temporary name and renamed
    import_keras(MODEL.keras | MODEL.weights.h5, RUN, vocab=...) a run directory that every command takes

The weights are read through torch.nn.LSTM's parameter names (`weight_ih_l{k}[_reverse]`, `weight_hh_...`,
`bias_ih_...`, `bias_hh_...`, `weight_hr_...`) and its attributes (`num_layers`, `bidirectional`, `hidden_size`,
`proj_size`), never through lstmkit's internals, so any module that keeps torch's interface exports the same way;
lstmkit.LSTM's variants add their public parameters (`weight_peephole_...`, `layer_norm_{ih,hh,c}_...`) and
attributes (`variant_features`, `coupled_gates`, `cell_clip`, `zoneout_h`, `zoneout_c`). A format takes the
variant features it lists (`lstm_spec(lstm, expressible)`); any other, and any parameter outside those names, is
refused by name rather than silently dropped. Training-only features (weight_drop, recurrent_dropout, input_dropout,
the dropout between layers, and a language model's locked and embedding dropout) are the identity at evaluation
and export as the LSTM without them; forget_bias is only the initial value of a bias, exported as the bias it
became.

The optional libraries (the `export` extra: onnx, onnxruntime, keras, h5py) are imported only here, when used.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from lstmkit.errors import ConfigError, LstmkitError, RunDirError
from lstmkit.nn import TRACEABLE_FEATURES
from lstmkit.runs import _FILE_MODE

FORMATS = ("onnx", "keras", "pt2")
EXPORTABLE_TASKS = ("sentiment", "sequences", "lm")
# The variant features ONNX export takes (onnx_graph). layer_norm's Scan computes in float64 (onnx_scan.scan_dtype):
# in float32, LN's division by each row's spread put lstmkit's own float32 over the parity test's 1e-5 bound from
# float64 on 11 of 480 random LN models (benchmarks/onnx_ln_accuracy.py; BENCHMARKS.md, "Take it elsewhere").
ONNX_FEATURES = ("peephole", "coupled_gates", "cell_clip", "layer_norm", "zoneout")
_KNOWN = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr|weight_peephole|layer_norm_ih|layer_norm_hh|"
                    r"layer_norm_c)_l(\d+)(_reverse)?")


class MissingPackage(LstmkitError):
    """An optional library of the `export` extra is not installed."""


def require(module: str, package: str | None = None):
    """Import an optional module, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module
        raise MissingPackage(f"this needs the Python package {name!r}: pip install {name} (or pip install "
                             f"'lstmkit[export]' for every export format)") from None


@dataclass
class LayerWeights:
    """One layer and direction, in torch.nn.LSTM's layout: W [GH, I], U [GH, P], b_ih, b_hh [GH] (or None), R [P, H]
    (proj_size only, else None); gate blocks i, f, g, o (G = 4), or i, g, o (G = 3) with coupled gates. Variants:
    peephole [3, H] = (p_i, p_f, p_o) or None; layer_norm (ln_ih [2, GH], ln_hh [2, GH], ln_c [2, H]), each row 0
    the gains and row 1 the biases, or None."""

    W: Tensor
    U: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    R: Tensor | None
    peephole: Tensor | None = None
    layer_norm: tuple[Tensor, Tensor, Tensor] | None = None


@dataclass
class LSTMSpec:
    """What an exporter needs of an LSTM module: its shape, each layer's weights ([layer][direction]) and the
    variant features on (names as lstmkit.ops.cell.FEATURES) with their settings at evaluation."""

    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    proj_size: int
    layers: list[list[LayerWeights]]
    features: tuple[str, ...] = ()
    coupled_gates: bool = False
    cell_clip: float = 0.0  # > 0: c_t clipped to [-cell_clip, cell_clip]
    zoneout_h: float = 0.0  # at evaluation h_t = z h_{t-1} + (1 - z) h~_t with z this rate; likewise c
    zoneout_c: float = 0.0

    @property
    def gates(self) -> int:
        return 3 if self.coupled_gates else 4


def lstm_spec(lstm: nn.Module, expressible: tuple[str, ...] = ()) -> LSTMSpec:
    """The weights of a torch.nn.LSTM-like module, read by parameter name; a variant feature outside `expressible`
    (the format's), or a parameter of no known name, is refused in one line."""
    params = dict(lstm.named_parameters())
    unknown = [name for name in params if not _KNOWN.fullmatch(name)]
    if unknown:
        raise ConfigError(f"the LSTM holds parameters this exporter does not know ({', '.join(unknown[:3])}): a "
                          "variant the export formats cannot express yet; export a standard LSTM")
    # Features without parameters of their own (coupled gates: 3 gate blocks; the cell clip and zoneout, which act
    # at evaluation too) pass the name check, and a standard LSTM of the same weights would compute something else.
    features = tuple(getattr(lstm, "variant_features", ()))
    refused = [name for name in features if name not in expressible]
    if refused:
        takes = f" (it takes {', '.join(expressible)})" if expressible else ""
        hint = ""
        for form, features_taken in (("onnx", ONNX_FEATURES), ("pt2", TRACEABLE_FEATURES)):
            taken = [name for name in refused if name in features_taken and expressible != features_taken]
            hint += f", or use --format {form}, which takes {', '.join(taken)}" if taken else ""
        raise ConfigError(f"the LSTM uses {', '.join(refused)}, which this export format cannot express yet{takes}; "
                          f"export a run of a standard LSTM{hint}")
    L, D = int(lstm.num_layers), 2 if lstm.bidirectional else 1
    layers = []
    for k in range(L):
        per_direction = []
        for d in range(D):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_peephole")
            weights = [params.get(f"{kind}{suffix}") for kind in kinds]
            norms = tuple(params.get(f"layer_norm_{part}{suffix}") for part in ("ih", "hh", "c"))
            per_direction.append(LayerWeights(*weights, layer_norm=norms if norms[0] is not None else None))
        layers.append(per_direction)
    return LSTMSpec(int(lstm.input_size), int(lstm.hidden_size), L, D, int(getattr(lstm, "proj_size", 0) or 0), layers,
                    features, bool(getattr(lstm, "coupled_gates", False)), float(getattr(lstm, "cell_clip", 0) or 0),
                    float(getattr(lstm, "zoneout_h", 0) or 0), float(getattr(lstm, "zoneout_c", 0) or 0))


def open_for_export(run: Path):
    """(task, model) of a run directory that can be exported, or a one-line error saying why not."""
    from lstmkit import runs
    from lstmkit.tasks import get_task, load_run_config

    run = Path(run)
    config = load_run_config(run)  # no directory, no config.json, a damaged one: a RunDirError that says so
    if config.task not in EXPORTABLE_TASKS:
        raise ConfigError(f"{run} is a {config.task!r} run; export takes {', '.join(EXPORTABLE_TASKS)} runs")
    if config.train.members > 1:
        raise ConfigError(f"{run} is an ensemble of {config.train.members} models; export one member, e.g. "
                          f"lstmkit export {run / 'member-1'} ...")
    if not (run / runs.MODEL_FILE).is_file():
        raise RunDirError(f"{run} has no {runs.MODEL_FILE} yet (a run cut short before its first evaluation); "
                          f"train it further (lstmkit train ... --out {run} --resume) before exporting")
    task, model = get_task(config.task).from_run(run, config)
    return task, model.eval()


def check_output_path(out: Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name, e.g. {out / 'model'}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it (mkdir -p {out.parent}) "
                          "or choose another path")
    return out


@contextlib.contextmanager
def written_atomically(out: Path) -> Iterator[Path]:
    """A temporary path beside `out` for a writer that takes a file name; renamed over `out` when the block ends
    without an error, removed otherwise, so `out` is never half-written."""
    out = check_output_path(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{''.join(out.suffixes[-2:])}", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # what open() would give, not mkstemp's 0600
        os.replace(tmp, out)
    except OSError as error:
        raise RunDirError(f"could not write {out}: {error.strerror or error}; nothing was written there") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def export_run(run: Path, fmt: str, out: Path, int8: bool = False, log: Callable[[str], None] = print) -> Path:
    """Write the best model of RUN as `fmt` to `out`; returns `out`."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ConfigError("--int8 is onnxruntime's dynamic quantisation: it goes with --format onnx only")
    check_output_path(out)
    if fmt == "onnx":
        from lstmkit.export import onnx_graph

        return onnx_graph.export_onnx(run, out, int8=int8)
    if fmt == "keras":
        from lstmkit.export import keras_io

        return keras_io.export_keras(run, out)
    from lstmkit.export import pt2

    return pt2.export_pt2(run, out)
