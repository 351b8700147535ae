"""Keras 3 models in and out: the seeds' shape, Embedding -> LSTM (one or more, Bidirectional) -> Dense.

In (`keras_file.py`): a `.keras` file is a zip of config.json (the architecture, plain JSON) and model.weights.h5;
both are read directly (json and h5py), with no Keras and no deserialisation of Keras objects. A `.weights.h5`
file holds the weights alone: the layers are then found by their groups' names (Keras names them by class, in
model order: lstm, lstm_1, ...) and chained by their widths, and the seeds' shape is assumed: every LSTM but the
last returns sequences, the last its final state, and a Dense of one unit is a sigmoid, of more a softmax.

Keras stores an LSTM as kernel [I, 4H], recurrent_kernel [H, 4H] and one bias [4H], gate columns i, f, c, o: the
same order as torch's i, f, g, o, transposed. lstmkit has two biases (torch's); an import puts Keras' bias in
bias_ih and zeros in bias_hh, an export writes their sum. So Keras -> lstmkit -> Keras is bit-identical, and
lstmkit -> Keras -> lstmkit is bit-identical in every weight and in b_ih + b_hh.

Padding: lstmkit reads each sequence at its own length. Keras does so for post-padded batches only with a mask
(`Embedding(mask_zero=True)`, which an export writes); a Keras model without one reads padding as input.

Out: Keras builds and saves the model (`--format keras`, a .keras or .weights.h5 file), on its torch backend,
chosen in this module only (see `keras_module`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lstmkit.errors import ConfigError, DataError
from lstmkit.export import lstm_spec, open_for_export, require, written_atomically
from lstmkit.export.keras_file import KerasModel, read_keras_file


def keras_module():
    """keras, on its torch backend. KERAS_BACKEND is read once, when keras is first imported: it is set for that
    import only and put back after, so nothing else in the process (or its children) sees it."""
    import sys

    if "keras" not in sys.modules:
        previous = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "torch"
        try:
            keras = require("keras")
        finally:
            if previous is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = previous
    else:
        keras = sys.modules["keras"]
    if keras.backend.backend() != "torch":
        raise ConfigError(f"keras was imported with its {keras.backend.backend()!r} backend before lstmkit; lstmkit "
                          "needs the torch backend: set KERAS_BACKEND=torch")
    return keras


# --- the run directory ------------------------------------------------------------------------------------------

def read_vocab(path: Path, size: int):
    """A vocabulary for an imported Embedding of `size` rows: one token a line (line n is id n), a JSON list, or an
    lstmkit vocab.json. Ids 0 and 1 are padding and unknown, as in Keras' TextVectorization ("", "[UNK]")."""
    from lstmkit.data.vocab import PAD, UNK, Vocab

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"vocabulary file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read vocabulary {path}: {error}") from None
    document = None
    if Path(path).suffix == ".json":  # a JSON list of tokens, or an lstmkit vocab.json; other files: one a line
        try:
            document = json.loads(text)
        except ValueError:
            raise DataError(f"{path} is not valid JSON; give a JSON list of tokens or a file of one token a line"
                            ) from None
    if isinstance(document, dict):
        vocab = Vocab.from_dict(document, str(path))
    else:
        tokens = document if document is not None else text.split("\n")
        if document is None and tokens and tokens[-1] == "":
            tokens = tokens[:-1]  # the final newline
        if not isinstance(tokens, list) or len(tokens) < 3 or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{path}: a vocabulary lists the padding, the unknown token and at least one word")
        if tokens[0] not in ("", PAD) or tokens[1] not in ("[UNK]", UNK):
            raise DataError(f"{path}: ids 0 and 1 must be padding and unknown ('' and '[UNK]' as Keras' "
                            f"TextVectorization writes them, or {PAD} and {UNK}); found {tokens[0]!r}, {tokens[1]!r}")
        try:
            vocab = Vocab([PAD, UNK, *tokens[2:]])
        except ValueError as error:
            raise DataError(f"{path}: {error}") from None
    if len(vocab) != size:
        raise DataError(f"{path} has {len(vocab)} tokens but the model's Embedding has {size} rows; give the "
                        "vocabulary the model was trained with")
    return vocab


def _state_dict(model: KerasModel) -> dict[str, torch.Tensor]:
    """The lstmkit SequenceClassifier's weights (torch.nn.LSTM's names) from the Keras arrays."""
    state = {}
    if model.embedding is not None:
        state["embedding.weight"] = torch.from_numpy(model.embedding.copy())
    for k, lstm in enumerate(model.lstms):
        for d, (kernel, recurrent, bias) in enumerate(lstm.weights):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            H = lstm.units
            bias = bias if bias is not None else np.zeros(4 * H, np.float32)
            state |= {f"lstm.weight_ih{suffix}": torch.from_numpy(kernel.T.copy()),
                      f"lstm.weight_hh{suffix}": torch.from_numpy(recurrent.T.copy()),
                      f"lstm.bias_ih{suffix}": torch.from_numpy(bias.copy()),
                      f"lstm.bias_hh{suffix}": torch.zeros(4 * H)}
    state["head.weight"] = torch.from_numpy(model.dense[0].T.copy())
    state["head.bias"] = torch.from_numpy(model.dense[1].copy())
    return state


def import_keras(path: Path, out: Path, vocab: Path | None = None, labels: str | None = None) -> Path:
    """A run directory at `out` holding the Keras model at `path`, written whole or not at all."""
    from lstmkit import config as cfg
    from lstmkit import runs
    from lstmkit.tasks import default_config, get_task

    path, out = Path(path), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; give a new directory")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    model = read_keras_file(path)
    task_name = "sentiment" if model.embedding is not None else "sequences"
    if task_name == "sentiment" and vocab is None:
        raise ConfigError(f"{path} is a text model (it starts with an Embedding of {model.embedding.shape[0]} rows): "
                          "give its vocabulary with --vocab FILE (one token a line, line n is id n, ids 0 and 1 "
                          "padding and unknown)")
    classes = max(2, model.dense[0].shape[1])
    names = [n.strip() for n in labels.split(",")] if labels else [str(i) for i in range(classes)]
    if len(names) != classes or len(set(names)) != classes or not all(names):
        raise ConfigError(f"--labels must give {classes} distinct names, comma-separated; got {labels!r}")
    config = default_config(task_name)
    first = model.lstms[0]
    m = config.model
    m.lstm.hidden_size, m.lstm.num_layers, m.lstm.bidirectional = first.units, len(model.lstms), first.bidirectional
    m.pooling = model.pooling
    m.dropout = 0.0
    if task_name == "sentiment":
        m.embedding_dim = int(model.embedding.shape[1])
        config.data.num_words = int(model.embedding.shape[0])
        if model.maxlen:
            config.data.maxlen = model.maxlen
        config.data.label_names = ",".join(names)
    config.data.path = ""
    config.presets = f"import-keras {path.name}"
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        runs.write_config(scratch, cfg.to_dict(config))
        runs.write_json(scratch / "labels.json", {"format": "lstmkit.labels", "labels": names})
        if task_name == "sentiment":
            read_vocab(vocab, int(model.embedding.shape[0])).save(scratch / "vocab.json")
        else:
            runs.write_json(scratch / "inputs.json", {"format": "lstmkit.sequence_inputs",
                                                      "features": int(first.weights[0][0].shape[0])})
        task = get_task(task_name)(config, run_dir=scratch)
        built = task.build_model()
        state = _state_dict(model)
        runs.check_state_dict(built, state, str(path))
        runs.save_tensors(scratch / runs.MODEL_FILE, state, {"imported_from": path.name})
        if out.exists():
            out.rmdir()
        os.replace(scratch, out)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return out


# --- export -----------------------------------------------------------------------------------------------------

def keras_model(task, model):
    """A Keras model computing what the lstmkit classifier computes (probabilities: sigmoid or softmax)."""
    keras = keras_module()
    spec = lstm_spec(model.lstm)
    if task.name == "lm":
        raise ConfigError("--format keras takes classifier runs (sentiment, sequences); export a language model "
                          "with --format onnx or pt2")
    if spec.proj_size:
        raise ConfigError(f"the LSTM has proj_size={spec.proj_size}; Keras' LSTM has no projection. Use --format onnx "
                          "or pt2")
    if model.pooling not in ("last", "mean"):
        raise ConfigError(f"pooling {model.pooling!r} has no exact Keras layer (GlobalMaxPooling1D reads masked "
                          "padding); export it with --format onnx or pt2")
    layers = keras.layers
    if model.embedding is not None:
        V, E = model.embedding.weight.shape
        stack = [keras.Input((None,), dtype="int32"), layers.Embedding(V, E, mask_zero=True)]
    else:
        stack = [keras.Input((None, spec.input_size))]
    for k in range(spec.num_layers):
        sequences = k < spec.num_layers - 1 or model.pooling != "last"
        lstm = layers.LSTM(spec.hidden_size, return_sequences=sequences)
        stack.append(layers.Bidirectional(lstm) if spec.num_directions == 2 else lstm)
    if model.pooling == "mean":
        stack.append(layers.GlobalAveragePooling1D())
    classes = model.head.out_features
    stack.append(layers.Dense(classes, activation="sigmoid" if classes == 1 else "softmax"))
    keras_net = keras.Sequential(stack)
    built = [layer for layer in keras_net.layers]
    position = 0
    if model.embedding is not None:
        built[0].set_weights([model.embedding.weight.detach().float().numpy()])
        position = 1
    for k in range(spec.num_layers):
        arrays = []
        for direction in spec.layers[k]:
            bias = (direction.b_ih + direction.b_hh).detach().float().numpy() if direction.b_ih is not None else \
                np.zeros(4 * spec.hidden_size, np.float32)
            arrays += [direction.W.detach().float().numpy().T, direction.U.detach().float().numpy().T, bias]
        built[position + k].set_weights(arrays)
    built[-1].set_weights([model.head.weight.detach().float().numpy().T, model.head.bias.detach().float().numpy()])
    return keras_net


def export_keras(run: Path, out: Path) -> Path:
    out = Path(out)
    if not (out.name.endswith(".keras") or out.name.endswith(".weights.h5")):
        raise ConfigError(f"--out {out}: a Keras file ends in .keras (model and weights) or .weights.h5 (weights)")
    task, model = open_for_export(run)
    net = keras_model(task, model)
    with written_atomically(out) as tmp:
        if out.name.endswith(".keras"):
            net.save(str(tmp))
        else:
            net.save_weights(str(tmp))
    return out
