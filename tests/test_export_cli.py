"""`lstmkit export` / `evaluate FILE.onnx` end to end: int8's accuracy cost, pt2, and every bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_close
from export_runs import invoke, make_run, one_line_error, write_reviews, write_text
from test_classify import write_reviews as write_labelled_reviews

from lstmkit import runs
from lstmkit.tasks import open_run
from lstmkit.tasks.classify import collate

HAS_ONNX = all(__import__("importlib").util.find_spec(name) for name in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the export extra is not installed: pip install 'lstmkit[export]'")




@pytest.fixture(scope="module")
def trained_sentiment(tmp_path_factory) -> Path:
    """A small sentiment run trained for real (the int8 cost is measured on a model that learned something)."""
    root = tmp_path_factory.mktemp("trained")
    data = write_labelled_reviews(root / "reviews.jsonl", n=300)
    run = root / "run"
    result = invoke("train", "sentiment", "--data", data, "--out", run, "--set", "data.valid_size=100",
                    "--set", "model.embedding_dim=16", "--set", "model.hidden_size=16", "--set", "train.lr=0.01",
                    "--set", "model.bidirectional=true", "--set", "model.num_layers=2", "--epochs", "6", "--quiet")
    assert result.exit_code == 0, result.output
    return run


@needs_onnx
def test_int8_costs_at_most_one_validation_example_and_evaluate_scores_both_files(trained_sentiment, tmp_path):
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    assert invoke("export", trained_sentiment, "--format", "onnx", "--out", fp32).exit_code == 0
    result = invoke("export", trained_sentiment, "--format", "onnx", "--out", int8, "--int8")
    assert result.exit_code == 0, result.output
    import onnx

    quantized = onnx.load(str(int8))
    assert "DynamicQuantizeLSTM" in {node.op_type for node in quantized.graph.node}
    assert "LSTM" not in {node.op_type for node in quantized.graph.node}
    onnx.checker.check_model(quantized)
    scores = {}
    for name, target in (("run", trained_sentiment), ("fp32", fp32), ("int8", int8)):
        result = invoke("evaluate", target, "--json")
        assert result.exit_code == 0, result.output
        scores[name] = json.loads(result.output)
    assert scores["run"]["accuracy"] >= 0.9, "the model must have learned the task for its int8 cost to mean much"
    assert scores["fp32"]["accuracy"] == scores["run"]["accuracy"]
    assert abs(scores["fp32"]["loss"] - scores["run"]["loss"]) <= 1e-5 * scores["run"]["loss"]
    # The bound on IMDB is 0.5 points of 5,000 reviews; here one of 100 validation reviews is 1 point,
    # so the bound is one review's label changed by int8, and the loss within 5% (8-bit steps of 1/255 of each
    # weight row's and each activation's range, through 2 layers of gates).
    assert abs(scores["int8"]["accuracy"] - scores["fp32"]["accuracy"]) <= 1 / 100 + 1e-9, scores
    assert abs(scores["int8"]["loss"] - scores["fp32"]["loss"]) <= 0.05 * scores["fp32"]["loss"], scores
    assert fp32.stat().st_size > 2.5 * int8.stat().st_size, "int8 weights take a quarter of fp32's"


@needs_onnx
def test_int8_language_model_perplexity_within_two_percent(tmp_path):
    text = write_text(tmp_path / "text.txt")
    run = tmp_path / "lm"
    result = invoke("train", "lm", "--data", text, "--out", run, "--set", "model.embedding_dim=16", "--set",
                    "model.hidden_size=32", "--set", "data.bptt=16", "--set", "train.batch_size=4", "--set",
                    "train.lr=0.01", "--epochs", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert invoke("export", run, "--format", "onnx", "--out", tmp_path / "lm.onnx", "--int8").exit_code == 0
    assert invoke("export", run, "--format", "onnx", "--out", tmp_path / "lm32.onnx").exit_code == 0
    scores = {}
    for name, target in (("run", run), ("fp32", tmp_path / "lm32.onnx"), ("int8", tmp_path / "lm.onnx")):
        result = invoke("evaluate", target, "--data", text, "--json")
        assert result.exit_code == 0, result.output
        scores[name] = json.loads(result.output)
    assert abs(scores["fp32"]["loss"] - scores["run"]["loss"]) <= 1e-5 * scores["run"]["loss"]
    # the target: at most 2% of perplexity lost
    assert scores["int8"]["bpc"] <= scores["fp32"]["bpc"] + __import__("math").log2(1.02), scores


# The variants pt2 takes (those the op computes; zoneout as its expectation, in eval), and the standard cell.
PT2_VARIANTS = [[], ["model.lstm.peephole=true", "model.lstm.cell_clip=0.7"],
                ["model.lstm.coupled_gates=true", "model.lstm.zoneout_h=0.2", "model.lstm.zoneout_c=0.4"],
                ["model.lstm.layer_norm=true", "model.lstm.peephole=true"]]
PT2_IDS = ["standard", "peephole+clip", "cifg+zoneout", "layer_norm+peephole"]


@pytest.mark.parametrize("variant", PT2_VARIANTS, ids=PT2_IDS)
def test_pt2_reloads_and_matches_at_every_length_and_batch(tmp_path, variant):
    data = write_reviews(tmp_path / "reviews.jsonl")
    for bidirectional in ("false", "true"):
        run, task, model = make_run(tmp_path, "sentiment", [
            "model.embedding_dim=6", "model.hidden_size=8", "model.num_layers=2", "model.proj_size=5",
            f"model.bidirectional={bidirectional}", "model.pooling=last", *variant], data, name=f"run-{bidirectional}",
            scale=2)
        assert bool(model.lstm.variant_features) == bool(variant), "the run must hold the variant"
        out = tmp_path / f"model-{bidirectional}.pt2"
        result = invoke("export", run, "--format", "pt2", "--out", out)
        assert result.exit_code == 0, result.output
        program = torch.export.load(str(out)).module()
        for rows in ([1], [5, 1, 9, 3], [7] * 3, [2, 2]):
            inputs, lengths = collate([torch.randint(2, len(task.vocab), (n,)) for n in rows])
            with torch.no_grad():
                expected = model(inputs, lengths)
            assert_close(program(inputs, lengths), expected,
                         f"pt2 logits of {variant}, bidirectional={bidirectional}, {rows}")


@pytest.mark.parametrize("variant", PT2_VARIANTS, ids=PT2_IDS)
def test_pt2_language_model_with_its_state(tmp_path, variant):
    text = write_text(tmp_path / "text.txt")
    run, task, model = make_run(tmp_path, "lm", ["model.embedding_dim=8", "model.hidden_size=10",
                                                 "model.num_layers=2", *variant], text, scale=2)
    assert bool(model.lstm.variant_features) == bool(variant), "the run must hold the variant"
    assert invoke("export", run, "--format", "pt2", "--out", tmp_path / "lm.pt2").exit_code == 0
    program = torch.export.load(str(tmp_path / "lm.pt2")).module()
    for T, B in ((1, 1), (13, 3)):
        ids = torch.randint(0, len(task.vocab), (T, B))
        h0, c0 = torch.randn(2, B, 10), torch.randn(2, B, 10)
        with torch.no_grad():
            logits, (h_n, c_n) = model(ids, (h0, c0))
        got, got_h, got_c = program(ids, h0, c0)
        assert_close(got, logits, f"pt2 LM logits of {variant}, T={T} B={B}")
        assert_close(got_h, h_n, f"pt2 LM h_n of {variant}, T={T} B={B}")
        assert_close(got_c, c_n, f"pt2 LM c_n of {variant}, T={T} B={B}")


# --- bad input ----------------------------------------------------------------------------------------------

@pytest.fixture
def small_run(tmp_path) -> Path:
    return make_run(tmp_path, "sentiment", ["model.embedding_dim=4", "model.hidden_size=5"],
                    write_reviews(tmp_path / "reviews.jsonl"))[0]


def test_export_of_a_missing_or_half_written_run_is_one_line(small_run, tmp_path):
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    one_line_error(invoke("export", tmp_path / "nope", "--format", "onnx", "--out", out), "does not exist")
    half = tmp_path / "half"
    half.mkdir()
    (half / runs.CONFIG_FILE).write_text((small_run / runs.CONFIG_FILE).read_text())
    one_line_error(invoke("export", half, "--format", "pt2", "--out", out), "no model.safetensors", "--resume")
    (half / runs.CONFIG_FILE).write_text('{"format": "lstmkit.run", "task": ')  # cut off mid-write
    one_line_error(invoke("export", half, "--format", "onnx", "--out", out), "damaged")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in small_run.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / runs.MODEL_FILE).write_bytes((small_run / runs.MODEL_FILE).read_bytes()[:100])
    one_line_error(invoke("export", damaged, "--format", "onnx", "--out", out), "damaged")
    assert not list(out.parent.iterdir()), "nothing may be left behind"


@pytest.mark.parametrize(("variant", "feature"), [("model.lstm.coupled_gates=true", "coupled_gates"),
                                                  ("model.lstm.cell_clip=0.5", "cell_clip"),
                                                  ("model.lstm.zoneout_c=0.2", "zoneout"),
                                                  ("model.lstm.peephole=true", "peephole"),
                                                  ("model.lstm.layer_norm=true", "layer_norm")])
def test_a_variant_keras_cannot_express_is_refused_in_one_line(tmp_path, variant, feature):
    """Coupled gates, the cell clip and zoneout bring no parameters of their own: a name check alone would write a
    standard LSTM (or fail deep inside on 3 gate blocks) for a model that computes something else. The error names
    the formats that take the feature: pt2 every variant (the op computes them all), ONNX every one of
    `export.ONNX_FEATURES` (tests/test_export_onnx.py)."""
    from lstmkit.export import ONNX_FEATURES

    run = make_run(tmp_path, "sentiment", ["model.embedding_dim=4", "model.hidden_size=5", variant],
                   write_reviews(tmp_path / "reviews.jsonl"))[0]
    hints = ["--format pt2", *(["--format onnx"] if feature in ONNX_FEATURES else [])]
    one_line_error(invoke("export", run, "--format", "keras", "--out", tmp_path / "m.keras"), feature,
                   "standard LSTM", *hints)
    assert not (tmp_path / "m.keras").exists()


def test_unknown_format_missing_folder_and_int8_without_onnx(small_run, tmp_path):
    one_line_error(invoke("export", small_run, "--format", "tflite", "--out", tmp_path / "m"), "tflite",
                   "onnx, keras, pt2")
    one_line_error(invoke("export", small_run, "--format", "onnx", "--out", tmp_path / "no" / "such" / "m.onnx"),
                   "does not exist", "mkdir")
    one_line_error(invoke("export", small_run, "--format", "pt2", "--int8", "--out", tmp_path / "m.pt2"), "--int8")
    assert not list(tmp_path.glob("m*"))


def test_a_missing_package_is_named_in_one_line(small_run, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_onnx(name, *args):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_onnx)
    one_line_error(invoke("export", small_run, "--format", "onnx", "--out", tmp_path / "m.onnx"),
                   "pip install onnx", "lstmkit[export]")
    assert not list(tmp_path.glob("*.onnx*"))


def test_an_ensemble_and_an_adding_run_are_refused(small_run, tmp_path):
    config = json.loads((small_run / runs.CONFIG_FILE).read_text())
    config["train"]["members"] = 3
    (small_run / runs.CONFIG_FILE).write_text(json.dumps(config))
    one_line_error(invoke("export", small_run, "--format", "onnx", "--out", tmp_path / "m.onnx"), "member-1")
    config["task"], config["train"]["members"] = "adding", 1
    (small_run / runs.CONFIG_FILE).write_text(json.dumps(config))
    result = invoke("export", small_run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.exit_code != 0 and "Traceback" not in result.output


@needs_onnx
def test_evaluate_of_a_damaged_or_foreign_onnx_file_is_one_line(small_run, tmp_path):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage" * 10)
    one_line_error(invoke("evaluate", damaged), "export it again")
    one_line_error(invoke("evaluate", tmp_path / "missing.onnx"), "does not exist")
    import onnx

    good = tmp_path / "good.onnx"
    assert invoke("export", small_run, "--format", "onnx", "--out", good).exit_code == 0
    foreign = onnx.load(str(good))
    del foreign.metadata_props[:]
    onnx.save_model(foreign, str(tmp_path / "foreign.onnx"))
    one_line_error(invoke("evaluate", tmp_path / "foreign.onnx"), "not written by lstmkit export")


def test_an_exported_run_is_still_opened_by_lstmkit(small_run, tmp_path):
    """Export reads the run; it never writes into it."""
    before = {p.name: p.read_bytes() for p in small_run.iterdir()}
    invoke("export", small_run, "--format", "pt2", "--out", tmp_path / "m.pt2")
    assert {p.name: p.read_bytes() for p in small_run.iterdir()} == before
    open_run(small_run)


@needs_onnx
def test_a_write_that_fails_half_way_leaves_neither_the_file_nor_a_temporary(small_run, tmp_path, monkeypatch):
    import onnx

    def half_then_full(proto, path, *args, **kwargs):
        Path(path).write_bytes(proto.SerializeToString()[:50])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", half_then_full)
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(invoke("export", small_run, "--format", "onnx", "--out", out / "m.onnx"), "No space left",
                   "nothing was written")
    assert not list(out.iterdir())


def test_an_exported_file_has_the_mode_open_would_give(small_run, tmp_path):
    import os

    out = tmp_path / "m.pt2"
    assert invoke("export", small_run, "--format", "pt2", "--out", out).exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
