"""Seeing inside a trained run: gate traces of a text, gate heatmaps, training curves, and their commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_classify import SMALL, write_reviews
from test_lm import small, write_text

from lstmkit.cli import main
from lstmkit.data.vocab import tokenize_words
from lstmkit.introspect import GATE_NAMES, trace_text
from lstmkit.tasks import open_run
from lstmkit.train import train_and_evaluate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bilstm_run(tmp_path_factory) -> Path:
    """Two layers, both directions, mean pooling: every axis a trace has."""
    root = tmp_path_factory.mktemp("inspect_sentiment")
    run = root / "run"
    args = ["train", "sentiment", "--data", str(write_reviews(root / "reviews.jsonl")), "--out", str(run), *SMALL,
            "--set", "model.bidirectional=true", "--set", "model.num_layers=2", "--set", "model.pooling=mean",
            "--set", "data.maxlen=12", "--epochs", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def word_lm_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect_lm")
    config = small(write_text(root / "verse.txt"), "data.level=word", "model.num_layers=2", "train.epochs=15")
    assert train_and_evaluate(config, root / "run", quiet=True).status == "completed"
    return root / "run"


def check_textbook_identities(entry: dict, name: str) -> None:
    """c_t = f_t c_{t-1} + i_t c~_t (6.55) and h_t = o_t tanh(c_t) (6.56) from the traced arrays alone: this
    fails if a gate is mislabelled (say input and forget swapped), not just if values are off."""
    i, f, g, o, c, h = (torch.from_numpy(entry[key]).double() for key in
                        ("input", "forget", "candidate", "output", "cell", "hidden"))
    previous = torch.cat([torch.zeros_like(c[:1]), c[:-1]]) if entry["direction"] == "forward" else \
        torch.cat([c[1:], torch.zeros_like(c[:1])])  # the reverse direction reads the text from its end
    assert (c - (f * previous + i * g)).abs().max() < 1e-5, f"{name}: c_t != f c_(t-1) + i c~"
    assert (h - o * torch.tanh(c)).abs().max() < 1e-5, f"{name}: h_t != o tanh(c_t)"
    for gate in ("input", "forget", "output"):
        assert entry[gate].min() >= 0 and entry[gate].max() <= 1, f"{name}: {gate} gate outside [0, 1]"


def test_a_sentiment_trace_is_what_the_model_reads_and_predicts(bilstm_run):
    task, model = open_run(bilstm_run)
    text = "The film was GREAT and the music superb, but the plot was dull and boring and too long."
    result = trace_text(task, model, text)
    assert result.tokens == tokenize_words(text)[-12:]  # data.maxlen=12; "pre" keeps the end, as Keras does
    assert len(result.layers) == 4 and [(e["layer"], e["direction"]) for e in result.layers] == [
        (0, "forward"), (0, "reverse"), (1, "forward"), (1, "reverse")]
    for entry in result.layers:
        assert all(entry[name].shape == (12, 16) for name in GATE_NAMES.values())
        check_textbook_identities(entry, f"layer {entry['layer']} {entry['direction']}")
    expected = task.predict_texts(model, [text])[0]
    assert result.prediction["label"] == expected["label"]
    for label, p in expected["probabilities"].items():
        assert abs(result.prediction["probabilities"][label] - p) < 1e-5
    as_json = json.loads(json.dumps(result.to_json()))
    assert as_json["directions"] == ["forward", "reverse"] and as_json["num_layers"] == 2
    assert np.allclose(as_json["layers"][3]["cell"], result.layers[3]["cell"], atol=1e-4)


def test_truncation_follows_the_run(bilstm_run):
    task, model = open_run(bilstm_run)
    words = [f"w{k}" for k in range(30)]
    task.config.data.truncating = "pre"
    assert trace_text(task, model, " ".join(words)).tokens == words[-12:]
    task.config.data.truncating = "post"
    assert trace_text(task, model, " ".join(words)).tokens == words[:12]
    assert all(trace_text(task, model, " ".join(words)).unknown)  # none of them is in the vocabulary


def test_a_language_model_trace_gives_the_next_tokens(word_lm_run):
    task, model = open_run(word_lm_run)
    result = trace_text(task, model, "the cat sat on the")
    assert result.tokens == ["the", "cat", "sat", "on", "the"] and not any(result.unknown)
    for entry in result.layers:
        check_textbook_identities(entry, f"layer {entry['layer']}")
    ids = torch.tensor(task.vocab.encode(result.tokens))[:, None]
    logits = model(ids)[0][-1, 0]
    logits[[task.vocab.pad_id, task.vocab.unk_id]] = float("-inf")
    probs = torch.softmax(logits, 0)
    top = result.prediction["next"]
    assert [task.vocab.token_to_id(p["token"]) for p in top] == probs.topk(5).indices.tolist()
    assert top[0]["token"] == "mat."  # the verse says "the cat sat on the mat." (words keep their punctuation)
    assert trace_text(task, model, "the zebra").unknown == [False, True]


def test_inspect_command_writes_heatmaps_and_raw_values(bilstm_run, tmp_path):
    out = tmp_path / "views"
    result = CliRunner().invoke(main, ["inspect", str(bilstm_run), "a great film , superb", "--out", str(out),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert "prediction:" in result.output and "2 layers × 2 directions of 16 units" in result.output
    names = sorted(path.name for path in out.iterdir())
    assert names == ["gates_layer0.png", "gates_layer0_reverse.png", "gates_layer1.png", "gates_layer1_reverse.png",
                     "trace.json"]
    assert (out / "gates_layer1.png").read_bytes()[:8] == PNG_SIGNATURE
    saved = json.loads((out / "trace.json").read_text())
    task, model = open_run(bilstm_run)
    expected = trace_text(task, model, "a great film , superb")
    assert saved["tokens"] == expected.tokens
    assert np.allclose(saved["layers"][2]["forget"], expected.layers[2]["forget"], atol=1e-4)


def test_inspect_and_plot_refuse_bad_input_in_one_line(bilstm_run, tmp_path):
    sequences_run = tmp_path / "digits"
    runner = CliRunner()
    trained = runner.invoke(main, ["train", "sequences", "--out", str(sequences_run), "--epochs", "1", "--quiet",
                                   "--set", "model.hidden_size=8", "--set", "train.batch_size=256"])
    assert trained.exit_code == 0, trained.output
    cases = [
        (["inspect", str(sequences_run), "text", "--out", str(tmp_path / "o")], "does not read text"),
        (["inspect", str(bilstm_run), "  ", "--out", str(tmp_path / "o")], "no words"),
        (["inspect", str(tmp_path / "missing"), "text", "--out", str(tmp_path / "o")], "missing"),
        (["plot"], "give a run directory"),
        (["plot", str(bilstm_run), "--gradient-flow"], "give no RUN"),
        (["plot", str(tmp_path / "missing")], "missing"),
    ]
    for args, expected in cases:
        result = runner.invoke(main, args)
        assert result.exit_code != 0, args
        assert expected in result.output, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_plot_draws_the_training_curves(bilstm_run, tmp_path):
    result = CliRunner().invoke(main, ["plot", str(bilstm_run), "--out", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_plot_gradient_flow_from_the_command_line(tmp_path):
    out = tmp_path / "flow.png"
    result = CliRunner().invoke(main, ["plot", "--gradient-flow", "--seconds", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "||dL/dh||" in result.output and out.read_bytes()[:8] == PNG_SIGNATURE


def test_a_constant_learning_rate_is_drawn_on_an_axis_from_zero():
    from lstmkit.plots import curves_figure

    records = [{"step": step, "loss": 0.5, "train_loss": 0.6, "accuracy": 0.8, "lr": 1e-3, "best": step == 10}
               for step in (5, 10, 15)]
    figure = curves_figure(records)
    rate = figure.axes[-1]
    assert rate.get_ylim() == pytest.approx((0.0, 1.1e-3)) and rate.get_ylabel() == "learning rate"
    assert figure.axes[1].get_ylabel() == "accuracy"
