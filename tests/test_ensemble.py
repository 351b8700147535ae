"""Ensembles of classifiers (train.members > 1): the averaging, the run directory, resume, and what refuses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_close, batches_drawn
from fastapi.testclient import TestClient
from test_classify import SMALL, write_reviews

from lstmkit import config as cfg
from lstmkit.cli import main
from lstmkit.ensemble import EnsembleClassifier, open_run, train_and_evaluate
from lstmkit.errors import ConfigError, RunDirError
from lstmkit.metrics import classification_metrics
from lstmkit.models import SequenceClassifier
from lstmkit.tasks import default_config
from lstmkit.tasks.classify import class_probabilities
from lstmkit.tasks.sentiment import SentimentTask
from lstmkit.web.app import create_app


@pytest.mark.parametrize("num_classes", [2, 3])
def test_the_ensembles_probabilities_are_the_mean_of_its_members(num_classes):
    members = [SequenceClassifier(num_classes=num_classes, hidden_size=8, vocab_size=30, embedding_dim=6,
                                  pooling=pooling).eval() for pooling in ("last", "max", "mean")]
    ensemble = EnsembleClassifier(members).eval()
    inputs = torch.randint(2, 30, (5, 7))
    lengths = torch.tensor([7, 3, 1, 5, 7])
    with torch.no_grad():
        expected = torch.stack([class_probabilities(m(inputs, lengths)) for m in members]).mean(0)
        logits = ensemble(inputs, lengths)
        got = class_probabilities(logits)
    assert logits.shape == (5, 1 if num_classes == 2 else 3)
    assert_close(got, expected, "ensemble probabilities")
    # Not the trivial answer: the members disagree, so the mean differs from each member's probabilities.
    assert all((class_probabilities(m(inputs, lengths)) - got).abs().max() > 1e-3 for m in members)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ensemble")
    data = write_reviews(root / "reviews.jsonl")
    run = root / "run"
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(run), *SMALL,
                                       "--set", "train.members=2", "--seed", "7"])
    assert result.exit_code == 0, result.output
    return run


def test_members_train_with_their_own_seeds_on_one_validation_split(ensemble_run):
    record = json.loads((ensemble_run / "ensemble.json").read_text())
    assert [(m["name"], m["seed"]) for m in record["members"]] == [("member-1", 7), ("member-2", 8)]
    configs = [json.loads((ensemble_run / f"member-{k}" / "config.json").read_text()) for k in (1, 2)]
    assert [c["train"]["seed"] for c in configs] == [7, 8]
    assert [c["data"]["split_seed"] for c in configs] == [7, 7]
    assert all(c["train"]["members"] == 1 for c in configs)
    tasks = [open_run(ensemble_run / f"member-{k}")[0] for k in (1, 2)]
    held_out = [task.held_out("valid") for task in tasks]
    assert held_out[0][1] == held_out[1][1]
    assert all(torch.equal(a, b) for a, b in zip(held_out[0][0], held_out[1][0], strict=True))
    # The members differ: different weights from different seeds.
    weights = [open_run(ensemble_run / f"member-{k}")[1].head.weight for k in (1, 2)]
    assert not torch.equal(*weights)


def test_evaluate_and_predict_an_ensemble_run(ensemble_run):
    task, model = open_run(ensemble_run)
    assert isinstance(model, EnsembleClassifier) and len(model.members) == 2
    examples, labels = task.held_out("valid")
    member_probs = [open_run(ensemble_run / f"member-{k}")[0].predict_proba(open_run(ensemble_run / f"member-{k}")[1],
                                                                             examples) for k in (1, 2)]
    mean = np.mean(member_probs, axis=0)
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(ensemble_run), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["accuracy"] == pytest.approx(float((mean.argmax(1) == np.asarray(labels)).mean()))
    # Accuracy alone cannot tell the mean from one member on easy examples: the loss and ROC-AUC of the mean can.
    expected = classification_metrics(np.asarray(labels), mean, task.label_names)
    alone = [classification_metrics(np.asarray(labels), p, task.label_names) for p in member_probs]
    for key in ("loss", "roc_auc"):
        assert scores[key] == pytest.approx(expected[key], rel=1e-6), (key, scores[key], expected[key])
    assert all(scores["loss"] != pytest.approx(m["loss"], rel=1e-6) for m in alone), "a member's own loss"
    record = json.loads((ensemble_run / "ensemble.json").read_text())
    assert record["valid"]["accuracy"] == pytest.approx(scores["accuracy"])
    result = runner.invoke(main, ["predict", str(ensemble_run), "A wonderful, moving and brilliant film.",
                                  "Boring, dull and a terrible waste.", "--json"])
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in result.output.splitlines()]
    assert [p["label"] for p in predictions] == ["1", "0"]
    texts = ["A wonderful, moving and brilliant film.", "Boring, dull and a terrible waste."]
    each = [open_run(ensemble_run / f"member-{k}") for k in (1, 2)]
    expected = np.mean([[r["probabilities"]["1"] for r in t.predict_texts(m, texts)] for t, m in each], axis=0)
    assert [p["probabilities"]["1"] for p in predictions] == pytest.approx(expected.tolist(), abs=1e-6)


def test_an_unfinished_ensemble_says_so_and_resume_trains_only_the_missing_member(ensemble_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ensemble_run, run)
    record = json.loads((run / "ensemble.json").read_text())
    record["members"] = record["members"][:1]
    (run / "ensemble.json").write_text(json.dumps(record))
    shutil.rmtree(run / "member-2")
    first = (run / "member-1" / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match=r"1 trained \(not member-2\); finish it: lstmkit train sentiment .*--resume"):
        open_run(run)
    result = CliRunner().invoke(main, ["train", "sentiment", "--out", str(run), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (run / "member-1" / "model.safetensors").read_bytes() == first  # not trained again
    assert [m["name"] for m in json.loads((run / "ensemble.json").read_text())["members"]] == ["member-1",
                                                                                                  "member-2"]
    # Member 2 is the same model as before: the same seed and data give the same weights.
    again = open_run(run / "member-2")[1].state_dict()
    before = open_run(ensemble_run / "member-2")[1].state_dict()
    assert all(torch.equal(again[k], before[k]) for k in before)
    result = CliRunner().invoke(main, ["train", "sentiment", "--out", str(run), "--quiet"])
    assert result.exit_code != 0 and "already holds a run" in result.output


def test_members_that_read_inputs_differently_are_refused(ensemble_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ensemble_run, run)
    vocab_path = run / "member-2" / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    tokens = vocab["tokens"]
    tokens[-1], tokens[-2] = tokens[-2], tokens[-1]
    vocab_path.write_text(json.dumps(vocab))
    with pytest.raises(RunDirError, match="must share them"):
        open_run(run)


def test_inspect_and_the_web_page_show_the_first_members_gates_and_the_ensembles_prediction(ensemble_run, tmp_path):
    text = "A wonderful, moving and brilliant film."
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(ensemble_run), text, "--out", str(tmp_path / "plots"), "--json"])
    assert result.exit_code == 0, result.output
    assert "gates of member 1 of the ensemble's 2; the prediction is the ensemble's" in result.output
    traced = json.loads((tmp_path / "plots" / "trace.json").read_text())
    alone = runner.invoke(main, ["inspect", str(ensemble_run / "member-1"), text, "--out", str(tmp_path / "one"),
                                 "--json"])
    assert alone.exit_code == 0, alone.output
    member = json.loads((tmp_path / "one" / "trace.json").read_text())
    assert traced["layers"] == member["layers"]  # the first member's gates
    task, model = open_run(ensemble_run)
    expected = task.predict_texts(model, [text])[0]["probabilities"]["1"]
    assert traced["prediction"]["probabilities"]["1"] == pytest.approx(expected, abs=1e-6)
    assert member["prediction"]["probabilities"]["1"] != pytest.approx(expected, abs=1e-6)
    with TestClient(create_app([ensemble_run])) as client:
        info = client.get("/api/runs").json()[0]
        assert info["members"] == 2 and info["num_layers"] == 1 and info["hidden_size"] == 16
        response = client.post("/api/trace", json={"text": text})
        assert response.status_code == 200, response.text
        assert response.json()["prediction"]["probabilities"]["1"] == pytest.approx(expected, abs=1e-4)
        response = client.post("/api/predict", json={"texts": [text]})
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["probabilities"]["1"] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(AttributeError, match="no single 'lstm'; take one member's"):
        _ = model.lstm


def test_what_does_not_take_an_ensemble_says_so_in_one_line(ensemble_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["plot", str(ensemble_run)])
    assert result.exit_code != 0 and "plot one of them" in result.output
    config = default_config("lm")
    cfg.set_value(config, "train.members", 2)
    with pytest.raises(ConfigError, match="ensemble of classifiers"):
        train_and_evaluate(config, tmp_path / "lm")
    result = runner.invoke(main, ["train", "sentiment", "--out", str(tmp_path / "x"), "--set", "train.members=0"])
    assert result.exit_code != 0 and "members" in result.output
    result = runner.invoke(main, ["train", "sentiment", "--out", str(tmp_path / "y"), "--data", "nowhere.jsonl",
                                  "--set", "train.members=2", "--nproc", "2"])
    assert result.exit_code != 0 and "drop --nproc" in result.output


def test_a_damaged_ensemble_record_or_leftover_members_are_one_line_errors(ensemble_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ensemble_run, run)
    record = json.loads((run / "ensemble.json").read_text())
    for members in (record["members"] * 2, [{**record["members"][0], "name": "member-9"}],
                    [{**record["members"][0], "best": "high"}], "member-1"):
        (run / "ensemble.json").write_text(json.dumps({**record, "members": members}))
        result = CliRunner().invoke(main, ["evaluate", str(run)])
        assert result.exit_code != 0 and "is damaged" in result.output and "Traceback" not in result.output
    # Records out of order are fine: they are the same members.
    (run / "ensemble.json").write_text(json.dumps({**record, "members": record["members"][::-1]}))
    assert CliRunner().invoke(main, ["evaluate", str(run)]).exit_code == 0
    # A new run is not started over an old ensemble's members, even with only member-2 left of it.
    (run / "config.json").unlink()
    data = write_reviews(tmp_path / "reviews.jsonl")
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(run), *SMALL])
    assert result.exit_code != 0 and "already holds a run" in result.output
    (run / "ensemble.json").unlink()
    shutil.rmtree(run / "member-1")
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(run), *SMALL])
    assert result.exit_code != 0 and "already holds a run" in result.output


def test_an_interrupted_ensemble_resumes_to_the_same_members_and_more_epochs_train_them_on(ensemble_run, tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl")  # the fixture's data: same seed, same texts
    run = tmp_path / "run"
    args = ["train", "sentiment", "--data", str(data), "--out", str(run), *SMALL, "--set", "train.members=2",
            "--seed", "7", "--set", "train.checkpoint_every=1"]
    result = CliRunner().invoke(main, [*args, "--minutes", "0.0001"])  # stops inside member 1
    assert result.exit_code == 0 and "time budget spent" in result.output, result.output
    assert (run / "member-1" / "checkpoint.safetensors").is_file() and not (run / "member-2").exists()
    stopped_at = checkpoint_position(run / "member-1")["step"]
    with batches_drawn(SentimentTask) as drawn:
        result = CliRunner().invoke(main, ["train", "sentiment", "--out", str(run), "--resume", "--minutes", "100"])
    assert result.exit_code == 0, result.output
    # Member 1 goes on from its checkpoint, member 2 trains whole; a member started over would draw more batches.
    steps = [checkpoint_position(ensemble_run / f"member-{k}")["step"] for k in (1, 2)]
    expected = steps[0] - stopped_at + steps[1]
    assert len(drawn) == expected, (f"the resume drew {len(drawn)} batches; {expected} remain (member 1 stopped at "
                                    f"step {stopped_at} of {steps[0]}, member 2 has {steps[1]})")
    for k in (1, 2):
        resumed = open_run(run / f"member-{k}")[1].state_dict()
        straight = open_run(ensemble_run / f"member-{k}")[1].state_dict()
        assert all(torch.equal(resumed[key], straight[key]) for key in straight), k
    result = CliRunner().invoke(main, ["train", "sentiment", "--out", str(run), "--resume", "--epochs", "5",
                                       "--minutes", "100"])  # the saved budget would apply again
    assert result.exit_code == 0, result.output
    for k in (1, 2):
        epochs = [m["epoch"] for m in runs_metrics(run / f"member-{k}")]
        assert max(epochs) == 5, epochs
    assert [m["epochs"] for m in json.loads((run / "ensemble.json").read_text())["members"]] == [5, 5]
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 5  # what a plain --resume keeps


def checkpoint_position(run: Path) -> dict:
    from lstmkit import runs

    return runs.load_tensors(run / runs.CHECKPOINT_FILE)[1]["position"]


def runs_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_sequences_ensemble_holds_out_one_test_part(tmp_path):
    run = tmp_path / "digits"
    result = CliRunner().invoke(main, ["train", "sequences", "--out", str(run), "--epochs", "1", "--quiet",
                                       "--set", "model.hidden_size=16", "--set", "train.members=2"])
    assert result.exit_code == 0, result.output
    tasks_and_models = [open_run(run / f"member-{k}") for k in (1, 2)]
    parts = [task.held_out("test") for task, _ in tasks_and_models]
    assert parts[0][1] == parts[1][1] and all(torch.equal(a, b) for a, b in zip(parts[0][0], parts[1][0],
                                                                                 strict=True))
    mean = np.mean([task.predict_proba(model, parts[0][0]) for task, model in tasks_and_models], axis=0)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["examples"] == len(parts[0][1])
    assert scores["accuracy"] == pytest.approx(float((mean.argmax(1) == np.asarray(parts[0][1])).mean()))


def test_split_seed_pins_the_validation_part_whatever_the_training_seed(tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl", n=100)
    valid = []
    for seed in (0, 1):
        config = default_config("sentiment")
        cfg.apply_overrides(config, [f"data.path={data}", "data.valid_size=20", f"train.seed={seed}",
                                     "data.split_seed=3"])
        valid.append([t.tolist() for t in SentimentTask(config).valid_examples])
    assert valid[0] == valid[1]
    config = default_config("sentiment")
    cfg.apply_overrides(config, [f"data.path={data}", "data.valid_size=20", "train.seed=1"])
    assert [t.tolist() for t in SentimentTask(config).valid_examples] != valid[0]  # None: train.seed's split


def test_bad_data_leaves_the_ensembles_directory_free_for_the_corrected_command(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("", encoding="utf-8")
    run = tmp_path / "run"
    args = ["train", "sentiment", "--out", str(run), *SMALL, "--set", "train.members=2"]
    result = CliRunner().invoke(main, [*args, "--data", str(bad)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not (run / "config.json").exists()
    good = write_reviews(tmp_path / "reviews.jsonl", n=80)
    result = CliRunner().invoke(main, [*args, "--data", str(good), "--set", "data.valid_size=20", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert (run / "ensemble.json").is_file()
