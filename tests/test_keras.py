"""Keras 3 in and out: models of the seeds' shape built in Keras (torch backend), saved, imported and compared."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close
from export_runs import invoke, make_run, one_line_error, write_reviews

# find_spec, not importorskip: importing keras here would choose its default backend (TensorFlow) for the process
if not all(importlib.util.find_spec(name) for name in ("keras", "h5py")):
    pytest.skip("the export extra is not installed: pip install 'lstmkit[export]'", allow_module_level=True)

from lstmkit import runs  # noqa: E402
from lstmkit.export.keras_io import keras_module  # noqa: E402
from lstmkit.tasks import open_run  # noqa: E402
from lstmkit.tasks.classify import class_probabilities, collate  # noqa: E402

# Keras' own variables under numpy 2 say so on every get_weights; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
ORIGINAL_BACKEND = __import__("os").environ.get("KERAS_BACKEND")
keras = keras_module()
L = keras.layers
V = 40
WORDS = [f"w{i}" for i in range(V - 2)]




def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["", "[UNK]", *WORDS]) + "\n", encoding="utf-8")  # TextVectorization's layout
    return path


def randomised(model, seed: int = 0):
    """Every weight N(0, 0.5²): biases of every gate nonzero, so a gate out of place changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def token_batch(seed: int = 1):
    """Post-padded ids [B, T] (0 = padding) and lengths, lengths 1 and T included."""
    rng = np.random.default_rng(seed)
    lengths = np.array([9, 1, 4, 9, 6])
    ids = np.zeros((len(lengths), 9), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(2, V, n)
    return ids, lengths


def lstmkit_probabilities(run: Path, inputs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    _, model = open_run(run)
    with torch.no_grad():
        return class_probabilities(model(torch.from_numpy(inputs), torch.from_numpy(lengths))).numpy()


def keras_probabilities(model, inputs) -> np.ndarray:
    p = np.asarray(model.predict(inputs, verbose=0))
    return np.concatenate([1 - p, p], axis=1) if p.shape[1] == 1 else p


SEED_SHAPES = {
    "the IMDB seed: Embedding -> LSTM -> Dense(1, sigmoid)": lambda: [
        L.Embedding(V, 8, mask_zero=True), L.LSTM(6), L.Dense(1, activation="sigmoid")],
    "two Bidirectional LSTMs -> Dense(3, softmax)": lambda: [
        L.Embedding(V, 8, mask_zero=True), L.Bidirectional(L.LSTM(5, return_sequences=True)),
        L.Dropout(0.3), L.Bidirectional(L.LSTM(5)), L.Dense(3, activation="softmax")],
    "return_sequences -> GlobalAveragePooling1D": lambda: [
        L.Embedding(V, 8, mask_zero=True), L.LSTM(7, return_sequences=True), L.LSTM(7, return_sequences=True),
        L.GlobalAveragePooling1D(), L.Dense(1, activation="sigmoid")],
}


@pytest.mark.parametrize("shape", list(SEED_SHAPES))
def test_a_keras_model_imports_and_predicts_the_same(tmp_path, shape):
    net = randomised(keras.Sequential([keras.Input((None,), dtype="int32"), *SEED_SHAPES[shape]()]))
    net.save(tmp_path / "model.keras")
    ids, lengths = token_batch()
    expected = keras_probabilities(net, ids)
    vocab = vocab_file(tmp_path)
    result = invoke("import-keras", tmp_path / "model.keras", "--out", tmp_path / "run", "--vocab", vocab)
    assert result.exit_code == 0, result.output
    assert_close(lstmkit_probabilities(tmp_path / "run", ids, lengths), expected, f"probabilities, {shape}")
    if "Average" not in shape:  # weights alone: the seeds' shape is assumed (the last LSTM returns its last state)
        net.save_weights(tmp_path / "model.weights.h5")
        result = invoke("import-keras", tmp_path / "model.weights.h5", "--out", tmp_path / "run2", "--vocab",
                        vocab_file(tmp_path))
        assert result.exit_code == 0, result.output
        assert_close(lstmkit_probabilities(tmp_path / "run2", ids, lengths), expected, f"from .weights.h5, {shape}")


def test_a_keras_model_of_feature_sequences_imports_as_a_sequences_run(tmp_path):
    net = randomised(keras.Sequential([keras.Input((None, 3)), L.LSTM(6, return_sequences=True), L.LSTM(6),
                                       L.Dense(4, activation="softmax")]))
    net.save(tmp_path / "model.keras")
    x = np.random.default_rng(0).normal(size=(5, 8, 3)).astype(np.float32)  # equal lengths: Keras has no mask here
    result = invoke("import-keras", tmp_path / "model.keras", "--out", tmp_path / "run", "--labels", "a,b,c,d")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / runs.CONFIG_FILE).read_text())["task"] == "sequences"
    got = lstmkit_probabilities(tmp_path / "run", x, np.full(5, 8))
    assert_close(got, keras_probabilities(net, x), "probabilities of features")


def test_an_imported_run_works_with_predict_inspect_serve_and_export(tmp_path):
    net = randomised(keras.Sequential([keras.Input((None,), dtype="int32"), *SEED_SHAPES[
        "the IMDB seed: Embedding -> LSTM -> Dense(1, sigmoid)"]()]))
    net.save(tmp_path / "model.keras")
    run = tmp_path / "run"
    assert invoke("import-keras", tmp_path / "model.keras", "--out", run, "--vocab", vocab_file(tmp_path),
                  "--labels", "negative,positive").exit_code == 0
    result = invoke("predict", run, "w3 w5 w7 w1", "--json")
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.output)
    expected = keras_probabilities(net, np.array([[5, 7, 9, 3]]))[0]  # ids of w3 w5 w7 w1
    assert predicted["probabilities"]["positive"] == pytest.approx(float(expected[1]), abs=1e-5)
    assert invoke("inspect", run, "w3 w5 w7", "--out", tmp_path / "gates").exit_code == 0
    assert (tmp_path / "gates" / "gates_layer0.png").is_file()
    data = tmp_path / "labelled.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"w{i} w{i + 1}", "label": ["negative", "positive"][i % 2]})
                              for i in range(10)) + "\n")
    result = invoke("evaluate", run, "--data", data, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["examples"] == 10, result.output
    from fastapi.testclient import TestClient

    from lstmkit.web.app import create_app

    with TestClient(create_app([run])) as client:
        response = client.post("/api/predict", json={"text": "w3 w5 w7 w1"})
        assert response.status_code == 200
        assert response.json()["results"][0]["probabilities"]["positive"] == pytest.approx(float(expected[1]), abs=1e-5)


@pytest.mark.parametrize("bidirectional,pooling", [(False, "last"), (True, "last"), (True, "mean")])
def test_round_trips_lstmkit_keras_lstmkit_and_keras_lstmkit_keras(tmp_path, bidirectional, pooling):
    data = write_reviews(tmp_path / "reviews.jsonl")
    run, task, model = make_run(tmp_path, "sentiment", [
        "model.embedding_dim=6", "model.hidden_size=5", "model.num_layers=2",
        f"model.bidirectional={str(bidirectional).lower()}", f"model.pooling={pooling}"], data, scale=2)
    result = invoke("export", run, "--format", "keras", "--out", tmp_path / "model.keras")
    assert result.exit_code == 0, result.output
    net = keras.saving.load_model(tmp_path / "model.keras")
    # The Keras model computes what the run computes, on a post-padded batch of varied lengths
    inputs, lengths = collate([torch.randint(2, len(task.vocab), (n,)) for n in (7, 1, 3, 7, 5)])
    with torch.no_grad():
        expected = class_probabilities(model(inputs, lengths)).numpy()
    assert_close(keras_probabilities(net, inputs.numpy()), expected, "Keras export's probabilities")
    # ... and comes back bit for bit: every weight, and the two biases as their sum (Keras has one)
    (run / "vocab.json").rename(tmp_path / "vocab.json")
    result = invoke("import-keras", tmp_path / "model.keras", "--out", tmp_path / "back", "--vocab",
                    tmp_path / "vocab.json")
    assert result.exit_code == 0, result.output
    original, _ = runs.load_tensors(run / runs.MODEL_FILE)
    back, _ = runs.load_tensors(tmp_path / "back" / runs.MODEL_FILE)
    assert original.keys() == back.keys()
    for name, tensor in original.items():
        if ".bias_" in name:
            pair = name.replace("bias_hh", "bias_ih") if "bias_hh" in name else name
            summed = original[pair] + original[pair.replace("bias_ih", "bias_hh")]
            assert torch.equal(back[pair] + back[pair.replace("bias_ih", "bias_hh")], summed), name
        else:
            assert torch.equal(back[name], tensor), f"{name} changed in the round trip"
    # Keras -> lstmkit -> Keras: every array bit for bit
    invoke("export", tmp_path / "back", "--format", "keras", "--out", tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras")
    for first, second in zip(net.layers, again.layers, strict=True):
        for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
            assert np.array_equal(a, b), first.name


def test_export_to_weights_h5_and_what_keras_cannot_hold(tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl")
    run, _, _ = make_run(tmp_path, "sentiment", ["model.embedding_dim=4", "model.hidden_size=5"], data)
    assert invoke("export", run, "--format", "keras", "--out", tmp_path / "m.weights.h5").exit_code == 0
    assert (tmp_path / "m.weights.h5").stat().st_size > 0
    one_line_error(invoke("export", run, "--format", "keras", "--out", tmp_path / "m.h5"), ".keras", ".weights.h5")
    projected, _, _ = make_run(tmp_path, "sentiment", ["model.embedding_dim=4", "model.hidden_size=5",
                                                       "model.proj_size=2"], data, name="projected")
    one_line_error(invoke("export", projected, "--format", "keras", "--out", tmp_path / "p.keras"), "proj_size")
    assert not list(tmp_path.glob("p.keras*")) and not list(tmp_path.glob(".m.h5*"))


# --- bad input ----------------------------------------------------------------------------------------------

def saved(tmp_path: Path, name: str, layers, inputs=None) -> Path:
    path = tmp_path / f"{name}.keras"
    keras.Sequential([inputs if inputs is not None else keras.Input((None,), dtype="int32"), *layers]).save(path)
    return path


def test_keras_files_lstmkit_cannot_import_are_one_line_each(tmp_path):
    vocab = vocab_file(tmp_path)
    cases = {
        "no LSTM": (saved(tmp_path, "pooled", [L.Embedding(V, 4), L.GlobalAveragePooling1D(), L.Dense(1, "sigmoid")]),
                    "no LSTM"),
        "a GRU": (saved(tmp_path, "gru", [L.Embedding(V, 4), L.GRU(3), L.Dense(1, "sigmoid")]), "GRU"),
        "stateful": (saved(tmp_path, "stateful", [L.Embedding(V, 4), L.LSTM(3, stateful=True), L.Dense(1, "sigmoid")],
                           keras.Input(batch_shape=(2, 5), dtype="int32")), "stateful=True"),
        "unroll": (saved(tmp_path, "unroll", [L.Embedding(V, 4), L.LSTM(3, unroll=True), L.Dense(1, "sigmoid")],
                         keras.Input((5,), dtype="int32")), "unroll=True"),
        "layers of two sizes": (saved(tmp_path, "sizes", [L.Embedding(V, 4), L.LSTM(3, return_sequences=True),
                                                          L.LSTM(5), L.Dense(1, "sigmoid")]), "different sizes"),
    }
    for name, (path, words) in cases.items():
        out = tmp_path / f"run-{name}"
        result = invoke("import-keras", path, "--out", out, "--vocab", vocab)
        one_line_error(result, words)
        assert not out.exists(), f"{name}: a run directory was left behind"
    gru = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(V, 4), L.GRU(3), L.Dense(1, "sigmoid")])
    gru.save_weights(tmp_path / "gru.weights.h5")
    result = invoke("import-keras", tmp_path / "gru.weights.h5", "--out", tmp_path / "g", "--vocab", vocab)
    one_line_error(result, "GRU")
    assert not any(p.name.startswith(".run") or p.name.startswith(".g") for p in tmp_path.iterdir())


def test_damaged_files_and_a_missing_or_wrong_vocabulary_are_one_line(tmp_path):
    good = saved(tmp_path, "good", [L.Embedding(V, 4), L.LSTM(3), L.Dense(1, "sigmoid")])
    vocab = vocab_file(tmp_path)
    (tmp_path / "random.keras").write_bytes(b"not a zip at all" * 20)
    (tmp_path / "cut.keras").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "cut.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    with zipfile.ZipFile(good) as archive, zipfile.ZipFile(tmp_path / "noweights.keras", "w") as copy:
        copy.writestr("config.json", archive.read("config.json"))
    for name in ("random.keras", "cut.keras", "cut.weights.h5", "noweights.keras"):
        one_line_error(invoke("import-keras", tmp_path / name, "--out", tmp_path / f"run-{name}", "--vocab", vocab),
                       "damaged")
    one_line_error(invoke("import-keras", good, "--out", tmp_path / "r1"), "--vocab FILE")
    short = tmp_path / "short.txt"
    short.write_text("\n".join(["", "[UNK]", "a", "b"]) + "\n")
    one_line_error(invoke("import-keras", good, "--out", tmp_path / "r2", "--vocab", short), "4 tokens", f"{V} rows")
    one_line_error(invoke("import-keras", tmp_path / "missing.keras", "--out", tmp_path / "r3"), "does not exist")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    one_line_error(invoke("import-keras", good, "--out", tmp_path / "taken", "--vocab", vocab), "not empty")
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary directory was left behind"


def test_importing_keras_leaves_keras_backend_unset_for_the_rest_of_the_process():
    import os

    assert keras.backend.backend() == "torch"
    assert "KERAS_BACKEND" not in os.environ or os.environ["KERAS_BACKEND"] == ORIGINAL_BACKEND
