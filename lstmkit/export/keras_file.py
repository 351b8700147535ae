"""Reading a Keras 3 file of the seeds' shape into plain arrays: no Keras, no deserialised Keras objects.

A `.keras` file is a zip of config.json (the architecture, JSON) and model.weights.h5 (HDF5, read with h5py); the
weights of layer n of the model sit in the group `layers/<class in snake case>[_k]`, k counting earlier layers of
that class (Keras' saving_lib names them so, not by layer name). A `.weights.h5` file holds those groups alone; the
layers are then chained by their widths and the seeds' shape assumed (see keras_io).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.errors import ConfigError, DataError
from lstmkit.export import require

_SUPPORTED = "Embedding -> LSTM or Bidirectional(LSTM) layers -> Dense models"
_IGNORED = {"InputLayer", "Dropout", "SpatialDropout1D"}  # nothing at inference
_POOLING = {"GlobalMaxPooling1D": "max", "GlobalAveragePooling1D": "mean"}


# --- reading a Keras file ---------------------------------------------------------------------------------------

@dataclass
class KerasLSTM:
    units: int
    bidirectional: bool
    return_sequences: bool
    weights: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]  # per direction: kernel, recurrent, bias


@dataclass
class KerasModel:
    embedding: np.ndarray | None = None  # [V, E]
    input_size: int | None = None  # features per step, for a model without an Embedding
    maxlen: int | None = None
    lstms: list[KerasLSTM] = field(default_factory=list)
    pooling: str = "last"
    dense: tuple[np.ndarray, np.ndarray] | None = None  # kernel [F, C], bias [C]
    activation: str = ""


def _snake(name: str) -> str:
    """keras.src.utils.naming.to_snake_case, as the weight file's group names use it."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _vars(group, source: str, where: str) -> list[np.ndarray]:
    try:
        variables = group["vars"]
        return [np.asarray(variables[str(i)], dtype=np.float32) for i in range(len(variables))]
    except (KeyError, TypeError, ValueError, OSError):
        raise DataError(f"{source}: the weights of {where} are missing or damaged; save the model again") from None


def _open_h5(h5py, path_or_file, source: str):
    try:
        return h5py.File(path_or_file, "r")
    except (OSError, ValueError) as error:
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise DataError(f"{source} is damaged or not a Keras weights file ({detail})") from None


def _lstm_weights(cell_vars: list[np.ndarray], source: str, where: str) -> tuple[np.ndarray, np.ndarray, Any]:
    if len(cell_vars) not in (2, 3) or cell_vars[0].ndim != 2 or cell_vars[1].ndim != 2:
        raise DataError(f"{source}: {where} does not hold an LSTM cell's weights (kernel, recurrent kernel, bias)")
    kernel, recurrent = cell_vars[0], cell_vars[1]
    H = recurrent.shape[0]
    if kernel.shape[1] != 4 * H or recurrent.shape[1] != 4 * H:
        raise DataError(f"{source}: {where} has gates of width {kernel.shape[1]} for {H} units, not an LSTM's 4 x "
                        f"{H} (a GRU has 3); lstmkit imports {_SUPPORTED}")
    return kernel, recurrent, cell_vars[2] if len(cell_vars) == 3 else None


def _check_lstm_config(config: dict, source: str, name: str) -> None:
    problems = []
    for key, bad in (("stateful", True), ("unroll", True), ("go_backwards", True), ("return_state", True)):
        if config.get(key) == bad:
            problems.append(f"{key}=True")
    if config.get("activation", "tanh") != "tanh" or config.get("recurrent_activation", "sigmoid") != "sigmoid":
        problems.append("activations other than tanh and sigmoid")
    if problems:
        raise ConfigError(f"{source}: LSTM {name!r} has {', '.join(problems)}, which lstmkit's LSTM does not have; "
                          "save it without them")


def read_keras_file(path: Path) -> KerasModel:
    h5py = require("h5py")
    source = str(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.name.endswith(".weights.h5"):
        with _open_h5(h5py, path, source) as weights:
            return _from_weights_only(weights, source)
    if path.suffix != ".keras":
        raise ConfigError(f"{path}: give a Keras 3 .keras file or a .weights.h5 file")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            weights_bytes = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise DataError(f"{path} is damaged or not a Keras 3 .keras file ({type(error).__name__}: "
                        f"{str(error)[:120]}); save the model again") from None
    with _open_h5(h5py, io.BytesIO(weights_bytes), source) as weights:
        return _from_config(config, weights, source)


def _from_config(config: dict, weights, source: str) -> KerasModel:
    if not isinstance(config, dict) or config.get("class_name") not in ("Sequential", "Functional"):
        raise ConfigError(f"{source}: a {config.get('class_name') if isinstance(config, dict) else '?'} model; "
                          f"lstmkit imports Sequential or Functional {_SUPPORTED}")
    layers = config.get("config", {}).get("layers", [])
    model, used = KerasModel(), {}
    for layer in layers:
        kind, layer_config = layer.get("class_name"), layer.get("config", {})
        name = layer_config.get("name", kind)
        stem = _snake(kind)
        group_name = stem if stem not in used else f"{stem}_{used[stem]}"
        used[stem] = used.get(stem, 0) + 1
        group = weights.get(f"layers/{group_name}")
        where = f"layer {name!r}"
        if kind == "InputLayer":
            shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape") or []
            if len(shape) == 3 and shape[2]:
                model.input_size = int(shape[2])
            if len(shape) >= 2 and shape[1]:
                model.maxlen = int(shape[1])
        elif kind in _IGNORED:
            continue
        elif model.dense is not None:
            raise ConfigError(f"{source}: {where} ({kind}) comes after the Dense layer; lstmkit imports {_SUPPORTED}")
        elif kind == "Embedding":
            if model.embedding is not None or model.lstms:
                raise ConfigError(f"{source}: {where}: an Embedding must come first, once")
            model.embedding = _vars(group, source, where)[0]
        elif kind in ("LSTM", "Bidirectional"):
            if model.pooling != "last":
                raise ConfigError(f"{source}: {where} comes after a pooling layer; lstmkit imports {_SUPPORTED}")
            if kind == "LSTM":
                _check_lstm_config(layer_config, source, name)
                cells = [_lstm_weights(_vars(group["cell"], source, where), source, where)]
                inner = layer_config
            else:
                inner = layer_config.get("layer", {})
                if inner.get("class_name") != "LSTM":
                    raise ConfigError(f"{source}: {where} wraps a {inner.get('class_name')}, not an LSTM; lstmkit "
                                      f"imports {_SUPPORTED}")
                if layer_config.get("merge_mode", "concat") != "concat":
                    raise ConfigError(f"{source}: {where} merges its directions by {layer_config.get('merge_mode')!r}"
                                      "; lstmkit concatenates them (merge_mode='concat')")
                inner = inner.get("config", {})
                _check_lstm_config(inner, source, name)
                cells = [_lstm_weights(_vars(group[f"{side}_layer/cell"], source, where), source, where)
                         for side in ("forward", "backward")]
            model.lstms.append(KerasLSTM(int(inner.get("units", cells[0][1].shape[0])), kind == "Bidirectional",
                                         bool(inner.get("return_sequences", False)), cells))
        elif kind in _POOLING:
            if not model.lstms:
                raise ConfigError(f"{source} has no LSTM layer before its {kind}; lstmkit imports {_SUPPORTED}")
            if not model.lstms[-1].return_sequences:
                raise ConfigError(f"{source}: {where} ({kind}) must follow an LSTM with return_sequences=True")
            model.pooling = _POOLING[kind]
        elif kind == "Dense":
            variables = _vars(group, source, where)
            if len(variables) != 2:
                raise ConfigError(f"{source}: {where} has no bias; lstmkit's output layer has one")
            model.dense = (variables[0], variables[1])
            model.activation = layer_config.get("activation", "linear")
        else:
            raise ConfigError(f"{source}: {where} is a {kind}; lstmkit imports {_SUPPORTED}")
    return _checked(model, source)


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("_")
    return (stem, int(number)) if number.isdigit() else (name, 0)


def _from_weights_only(weights, source: str) -> KerasModel:
    """The seeds' shape read from the groups of a .weights.h5 file."""
    if "layers" not in weights:
        raise DataError(f"{source} holds no Keras layers; is it a Keras 3 .weights.h5 file?")
    model = KerasModel()
    lstms: list[tuple[tuple[str, int], KerasLSTM]] = []
    for name in weights["layers"]:
        group, where = weights[f"layers/{name}"], f"layer group {name!r}"
        if "forward_layer" in group:
            cells = [_lstm_weights(_vars(group[f"{side}_layer/cell"], source, where), source, where)
                     for side in ("forward", "backward")]
            lstms.append((_natural(name), KerasLSTM(cells[0][1].shape[0], True, True, cells)))
        elif "cell" in group:
            cell = _lstm_weights(_vars(group["cell"], source, where), source, where)
            lstms.append((_natural(name), KerasLSTM(cell[1].shape[0], False, True, [cell])))
        elif _natural(name)[0] == "embedding":
            model.embedding = _vars(group, source, where)[0]
        elif _natural(name)[0] == "dense":
            if model.dense is not None:
                raise ConfigError(f"{source}: more than one Dense layer; lstmkit imports {_SUPPORTED}")
            variables = _vars(group, source, where)
            if len(variables) != 2:
                raise ConfigError(f"{source}: {where} has no bias; lstmkit's output layer has one")
            model.dense = (variables[0], variables[1])
        elif len(group.get("vars", {})):
            raise ConfigError(f"{source}: {where} holds weights of a layer lstmkit does not import ({_SUPPORTED})")
    # Keras numbers the groups of one class in model order; LSTM and Bidirectional groups are put in order by
    # chaining their widths from the embedding's
    width = model.embedding.shape[1] if model.embedding is not None else None
    remaining = sorted(lstms, key=lambda item: item[0])
    while remaining:
        fits = [item for item in remaining if width is None or item[1].weights[0][0].shape[0] == width]
        if not fits:
            raise ConfigError(f"{source}: the LSTM layers' widths do not chain from the embedding's; give the .keras "
                              "file, which records the layer order")
        _, lstm = fits[0]
        remaining.remove(fits[0])
        model.lstms.append(lstm)
        width = lstm.units * (2 if lstm.bidirectional else 1)
    if model.lstms:
        model.lstms[-1].return_sequences = False
        model.input_size = model.lstms[0].weights[0][0].shape[0] if model.embedding is None else None
    if model.dense is not None:
        model.activation = "sigmoid" if model.dense[0].shape[1] == 1 else "softmax"
    return _checked(model, source)


def _checked(model: KerasModel, source: str) -> KerasModel:
    if not model.lstms:
        raise ConfigError(f"{source} has no LSTM layer; lstmkit imports {_SUPPORTED}")
    if model.dense is None:
        raise ConfigError(f"{source} has no Dense output layer; lstmkit imports {_SUPPORTED}")
    first = model.lstms[0]
    for lstm in model.lstms:
        if (lstm.units, lstm.bidirectional) != (first.units, first.bidirectional):
            raise ConfigError(f"{source}: LSTM layers of different sizes or directions ({first.units} and "
                              f"{lstm.units} units); lstmkit's LSTM stacks layers of one size and direction")
    for lstm in model.lstms[:-1]:
        if not lstm.return_sequences:
            raise ConfigError(f"{source}: an LSTM before the last has return_sequences=False; the next one would "
                              "read a single vector")
    if model.lstms[-1].return_sequences and model.pooling == "last":
        raise ConfigError(f"{source}: the last LSTM returns sequences with no pooling layer after it; lstmkit's "
                          "classifier reads one vector per sequence (its last state, or GlobalMax/AveragePooling1D)")
    classes = model.dense[0].shape[1]
    if not ((classes == 1 and model.activation == "sigmoid") or (classes >= 2 and model.activation == "softmax")):
        raise ConfigError(f"{source}: the Dense output has {classes} unit(s) with activation {model.activation!r}; "
                          "lstmkit's classifier is Dense(1, 'sigmoid') or Dense(C, 'softmax')")
    return model
