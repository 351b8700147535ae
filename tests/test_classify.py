"""Sentiment and sequence classification: the model, batching, metrics, and the commands end to end."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_close
from torch import nn

from lstmkit import config as cfg
from lstmkit.cli import main
from lstmkit.data.sequences import load_digits_sequences
from lstmkit.metrics import classification_metrics
from lstmkit.models import SequenceClassifier, pool
from lstmkit.tasks import default_config
from lstmkit.tasks.classify import collate
from lstmkit.tasks.sentiment import SentimentTask
from lstmkit.tasks.sequences import split_indices

REAL_IMDB = Path(__file__).resolve().parents[2] / "shared/data/imdb/imdb_train.jsonl.gz"
POSITIVE = ["great", "wonderful", "moving", "brilliant", "superb", "loved"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "waste", "hated"]
FILLER = ["the", "film", "plot", "actor", "scene", "story", "was", "and", "a", "it", "of", "music"]


def write_reviews(path: Path, n: int = 240, seed: int = 0) -> Path:
    """Labelled texts whose label is carried by a few sentiment words among filler, of varied length."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 30))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        lines.append(json.dumps({"text": " ".join(words).capitalize() + ".", "label": label}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SMALL = ["--set", "data.valid_size=60", "--set", "model.embedding_dim=16", "--set", "model.hidden_size=16",
         "--set", "train.batch_size=16", "--set", "train.lr=0.01", "--epochs", "4", "--quiet"]


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sentiment")
    data = write_reviews(root / "reviews.jsonl")
    run = root / "run"
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(run), *SMALL])
    assert result.exit_code == 0, result.output
    return run


# --- the model --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "max_mean"])
def test_each_text_scores_the_same_alone_and_in_a_padded_batch(bidirectional, pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(num_classes=2, hidden_size=8, vocab_size=50, embedding_dim=6, num_layers=2,
                               bidirectional=bidirectional, pooling=pooling).eval()
    examples = [torch.randint(2, 50, (n,)) for n in (7, 1, 12, 4)]
    inputs, lengths = collate(examples)
    assert inputs.shape == (4, 12) and lengths.tolist() == [7, 1, 12, 4]
    assert (inputs[1, 1:] == 0).all()  # post-padding with the pad id
    batched = model(inputs, lengths)
    for k, example in enumerate(examples):
        alone = model(example[None], torch.tensor([len(example)]))
        assert_close(batched[k], alone[0], f"logit of example {k} ({pooling}, bidirectional={bidirectional})")


def test_feature_inputs_and_multiclass_logits():
    model = SequenceClassifier(num_classes=10, hidden_size=8, input_size=5, pooling="mean").eval()
    x, lengths = torch.randn(3, 6, 5), torch.tensor([6, 2, 4])
    logits = model(x, lengths)
    assert logits.shape == (3, 10)
    # Each row: the LSTM on its own valid steps, their mean, then the head (a logit per class, no padding read).
    for k, n in enumerate(lengths.tolist()):
        output, _ = model.lstm(x[k:k + 1, :n])
        assert_close(logits[k], model.head(output.mean(dim=1))[0], f"logits of row {k}")
    with pytest.raises(ValueError, match="pooling must be"):
        SequenceClassifier(num_classes=2, hidden_size=4, input_size=3, pooling="median")
    with pytest.raises(ValueError, match="not both"):
        SequenceClassifier(num_classes=2, hidden_size=4, input_size=3, vocab_size=10)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_a_projected_lstm_classifier_equals_the_same_weights_in_nn_lstm(bidirectional, num_layers):
    """model.proj_size: the classifier reads h of proj_size units, and its LSTM is nn.LSTM's LSTMP. In training
    mode with a batch of 12, where a one-layer classifier without projection takes the fused Embedding path."""
    torch.manual_seed(1)
    model = SequenceClassifier(num_classes=3, hidden_size=8, proj_size=3, vocab_size=40, embedding_dim=5,
                               bidirectional=bidirectional, pooling="max_mean", num_layers=num_layers).train()
    assert model.head.in_features == 3 * (2 if bidirectional else 1) * 2
    reference = nn.LSTM(5, 8, num_layers, batch_first=True, bidirectional=bidirectional, proj_size=3)
    reference.load_state_dict(model.lstm.state_dict())
    inputs, lengths = collate([torch.randint(2, 40, (n,)) for n in (6, 2, 9, 4, 7, 3, 8, 5, 1, 9, 2, 6)])
    logits = model(inputs, lengths)
    x = model.embedding(inputs)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    output = nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True)[0]
    expected = model.head(model.dropout(pool(output, lengths, "max_mean", model.lstm.num_directions)))
    assert_close(logits, expected, f"logits, bidirectional={bidirectional}")
    logits.sum().backward()
    assert model.lstm.weight_hr_l0.grad is not None and model.lstm.weight_hr_l0.grad.abs().sum() > 0


def test_proj_size_must_be_below_hidden_size(tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl", n=40)
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(tmp_path / "run"),
                                       "--set", "model.hidden_size=8", "--set", "model.proj_size=8",
                                       "--set", "data.valid_size=10"])
    assert result.exit_code != 0 and "model.proj_size (8) must be below model.hidden_size (8)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "config.json").exists()
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(tmp_path / "run2"),
                                       "--set", "model.proj_size=-1"])
    assert result.exit_code != 0 and "proj_size" in result.output and "Traceback" not in result.output


def test_a_projected_sentiment_run_trains_predicts_and_traces(tmp_path):
    from fastapi.testclient import TestClient

    from lstmkit.web.app import create_app

    data = write_reviews(tmp_path / "reviews.jsonl")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(run), *SMALL,
                                       "--set", "model.proj_size=4", "--set", "model.bidirectional=true",
                                       "--set", "model.init=keras"])
    assert result.exit_code == 0, result.output
    text = "A wonderful, moving and brilliant film."
    result = CliRunner().invoke(main, ["predict", str(run), text, "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["label"] == "1", result.output
    probability = json.loads(result.output)["probability"]
    result = CliRunner().invoke(main, ["inspect", str(run), text, "--out", str(tmp_path / "plots"), "--json"])
    assert result.exit_code == 0, result.output
    traced = json.loads((tmp_path / "plots" / "trace.json").read_text())
    assert traced["prediction"]["probability"] == pytest.approx(probability, abs=1e-6)
    layer = traced["layers"][0]
    assert len(layer["cell"][0]) == 16 and len(layer["hidden"][0]) == 4  # c has H units, h has proj_size
    with TestClient(create_app([run])) as client:
        response = client.post("/api/trace", json={"text": text})
        assert response.status_code == 200, response.text
        served = response.json()
    # The page's trace is the same model's: the CLI's prediction and label.
    assert served["prediction"]["probability"] == pytest.approx(probability, abs=1e-6)
    assert served["prediction"]["label"] == "1"


def test_max_mean_pooling_is_each_rows_max_and_mean_side_by_side():
    output, lengths = torch.randn(2, 5, 4), torch.tensor([5, 3])
    pooled = pool(output, lengths, "max_mean", num_directions=1)
    for row, n in enumerate(lengths.tolist()):
        expected = torch.cat([output[row, :n].max(dim=0).values, output[row, :n].mean(dim=0)])
        assert_close(pooled[row], expected, f"row {row}")
    model = SequenceClassifier(num_classes=3, hidden_size=4, input_size=2, bidirectional=True, pooling="max_mean")
    assert model.head.in_features == 16  # 2 directions x 4 units x (max, mean)


def test_word_dropout_drops_whole_words_in_training_only():
    torch.manual_seed(0)
    model = SequenceClassifier(num_classes=2, hidden_size=4, vocab_size=30, embedding_dim=5, word_dropout=0.5)
    seen = []
    model.lstm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    inputs, lengths = torch.randint(2, 30, (8, 20)), torch.full((8,), 20)
    model.train()(inputs, lengths)
    embedded = model.embedding(inputs).detach()
    dropped = (seen[0] == 0).all(dim=2)
    assert 0.3 < dropped.float().mean() < 0.7  # about half the words, each one with all its features
    torch.testing.assert_close(seen[0][~dropped], 2 * embedded[~dropped])  # the kept ones scaled by 1 / (1 - p)
    model.eval()(inputs, lengths)
    torch.testing.assert_close(seen[1], embedded)
    with pytest.raises(ValueError, match="word_dropout must be in"):
        SequenceClassifier(num_classes=2, hidden_size=4, vocab_size=30, word_dropout=1.0)


def test_keras_initialization():
    model = SequenceClassifier(num_classes=2, hidden_size=6, vocab_size=30, embedding_dim=4, init="keras")
    assert model.embedding.weight.abs().max() <= 0.05
    U = model.lstm.weight_hh_l0
    for gate in range(4):
        block = U[gate * 6:(gate + 1) * 6]
        assert_close(block @ block.T, torch.eye(6), f"U block {gate} is orthogonal")
    assert torch.equal(model.lstm.bias_ih_l0[6:12], torch.ones(6))
    assert torch.equal(model.lstm.bias_hh_l0, torch.zeros(24)) and torch.equal(model.head.bias, torch.zeros(1))


# --- batching and metrics ---------------------------------------------------------------------------------

def test_length_buckets_cover_every_example_once_and_are_seeded(tmp_path):
    config = cfg.apply_overrides(default_config("sentiment"), [
        f"data.path={write_reviews(tmp_path / 'r.jsonl', n=400)}", "data.valid_size=40", "train.batch_size=8"])
    task = SentimentTask(config)
    plan = task.train_plan(0)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(360))
    assert plan == task.train_plan(0) and plan != task.train_plan(1)
    def mean_length_spread(batches):
        return np.mean([np.ptp([len(task.train_examples[i]) for i in batch]) for batch in batches])

    shuffled = np.random.default_rng(0).permutation(360).tolist()
    unbucketed = [shuffled[k:k + 8] for k in range(0, 360, 8)]
    assert mean_length_spread(plan) < mean_length_spread(unbucketed) / 3, "batches should hold similar lengths"
    assert all(max(task.train_examples[i].max() for i in b) < len(task.vocab) for b in plan)


def test_vocabulary_ids_never_pass_the_embedding(tmp_path):
    config = cfg.apply_overrides(default_config("sentiment"), [
        f"data.path={write_reviews(tmp_path / 'r.jsonl')}", "data.valid_size=40", "data.num_words=8",
        "data.maxlen=5"])
    task = SentimentTask(config)
    assert len(task.vocab) == 8
    assert all(e.max() < 8 and 1 <= len(e) <= 5 for e in task.train_examples + task.valid_examples)
    ids = task.encode(["zebra quokka " * 50])[0]
    assert ids.tolist() == [1] * 5  # unknown words, truncated to maxlen


def test_two_processes_match_one_on_uneven_batches_with_the_commands_data(tmp_path):
    """--nproc 2 on a classifier whose every batch splits unevenly: 21 training reviews in batches of 5 give shares
    of 3 and 2, and a last batch of 1 that leaves one process without an example. DDP's plain average of the two
    processes' mean losses weighs the examples unequally (and the repeated example twice); SGD shows it. The data
    comes from --data alone, so workers that did not receive it could not reproduce the single process."""
    from test_train import cli

    data = write_reviews(tmp_path / "reviews.jsonl", n=41, seed=2)
    common = ["train", "sentiment", "--data", str(data), "--quiet", "--epochs", "2",
              "--set", "data.valid_size=20", "--set", "model.embedding_dim=8", "--set", "model.hidden_size=8",
              "--set", "train.batch_size=5", "--set", "train.optimizer=sgd", "--set", "train.lr=1.0",
              "--set", "train.eval_every=2"]
    curves = {}
    for name, extra in [("one", []), ("two", ["--nproc", "2"])]:
        done = cli(*common, "--out", str(tmp_path / name), *extra)
        assert done.returncode == 0, done.stderr
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert {m["processes"] for m in metrics} == {len(extra) and 2 or 1}
        curves[name] = [m["loss"] for m in metrics]
    one, two = curves["one"], curves["two"]
    assert len(one) == len(two) == 2 * 3  # 5 steps an epoch: evaluations at steps 2, 4 and the epoch's end
    worst = max(abs(a - b) / abs(a) for a, b in zip(one, two, strict=True))
    assert worst < 1e-4, f"validation loss curves differ by up to {worst:.2e} relative: {one} vs {two}"
    # The weights moved far more than the tolerance, so the curves are not equal for want of movement.
    assert (max(one) - min(one)) / one[0] > 1e-2, one


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    m = classification_metrics(labels, probs, ["neg", "pos"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["roc_auc"] == pytest.approx(5 / 6)  # (pos, neg) pairs ranked right: all but (0.2, 0.6)
    expected_loss = -np.mean(np.log([0.9, 0.4, 0.7, 0.2, 0.9]))
    assert m["loss"] == pytest.approx(expected_loss)


# --- sentiment end to end ---------------------------------------------------------------------------------

def test_sentiment_trains_evaluates_and_predicts(sentiment_run):
    metrics = [json.loads(line) for line in (sentiment_run / "metrics.jsonl").read_text().splitlines()]
    assert max(m["accuracy"] for m in metrics) >= 0.9, metrics
    files = {p.name for p in sentiment_run.iterdir()}
    assert {"vocab.json", "labels.json", "model.safetensors", "config.json"} <= files
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(sentiment_run), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix"} <= scores.keys()
    assert scores["accuracy"] == pytest.approx(max(m["accuracy"] for m in metrics))
    assert sum(map(sum, scores["confusion_matrix"])) == 60
    result = runner.invoke(main, ["predict", str(sentiment_run), "A wonderful, moving and brilliant film.",
                                  "Boring, dull and a terrible waste.", "--json"])
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in result.output.splitlines()]
    assert [p["label"] for p in predictions] == ["1", "0"]
    assert all(0.5 <= p["probability"] <= 1 for p in predictions)


def test_predict_from_a_file_and_evaluate_another_file(sentiment_run, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("superb and loved it\n\nawful, hated it\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["predict", str(sentiment_run), "--file", str(texts)])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.output.splitlines()] == ["1", "0"]
    other = write_reviews(tmp_path / "other.csv.jsonl", n=40, seed=5)
    result = CliRunner().invoke(main, ["evaluate", str(sentiment_run), "--data", str(other), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["examples"] == 40


def _bad_input_cases(tmp_path: Path) -> list[tuple[str, list[str], str]]:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    columns = tmp_path / "columns.csv"
    columns.write_text("review,sentiment\ngood,1\nbad,0\n")
    single = tmp_path / "single.jsonl"
    single.write_text("\n".join(json.dumps({"text": f"text {i}", "label": 1}) for i in range(5)))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 good,1\nbad,0\n".encode("latin-1"))
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": "good", "label": 1}) + "\n" + json.dumps({"text": "  ", "label": 0}))
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"text": "word " * 220_000, "label": 1}) + "\n" + json.dumps({"text": "x", "label": 0}))
    return [
        ("missing", ["--data", str(tmp_path / "nope.jsonl")], "not found"),
        ("empty", ["--data", str(empty)], "is empty"),
        ("columns", ["--data", str(columns)], "no column 'text' (columns present: 'review', 'sentiment')"),
        ("single class", ["--data", str(single)], "a classifier needs at least two classes"),
        ("not utf-8", ["--data", str(latin)], "is not UTF-8"),
        ("empty review", ["--data", str(blank)], "line 2: empty text"),
        ("1 MB review", ["--data", str(huge)], "over the limit of 200,000"),
        ("no data", [], "no training data: pass --data PATH"),
    ]


def test_bad_training_input_is_one_line_each(tmp_path):
    runner = CliRunner()
    for name, args, message in _bad_input_cases(tmp_path):
        result = runner.invoke(main, ["train", "sentiment", "--out", str(tmp_path / f"run-{name}"), *args])
        assert result.exit_code != 0, name
        assert message in result.output, f"{name}: {result.output}"
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, name


def test_labels_outside_the_trained_set_and_runs_of_another_task(sentiment_run, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps({"text": "good film", "label": v}) for v in (0, 1, 2)))
    result = CliRunner().invoke(main, ["evaluate", str(sentiment_run), "--data", str(labels)])
    assert result.exit_code == 1 and "label '2' is not one of the labels ['0', '1']" in result.output
    result = CliRunner().invoke(main, ["predict", str(sentiment_run), "x" * 250_000])
    assert result.exit_code == 1 and "over the limit" in result.output
    digits_run = tmp_path / "digits"
    result = CliRunner().invoke(main, ["train", "sequences", "--out", str(digits_run), "--epochs", "1", "--quiet",
                                       "--set", "model.hidden_size=8"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["predict", str(digits_run), "some text"])
    assert result.exit_code == 2 and "is a 'sequences' run; predict works on text classifiers" in result.output


def test_a_damaged_or_missing_run_artifact_is_one_line(sentiment_run, tmp_path):
    import shutil

    for name, content, message in [("labels.json", "{broken", "labels.json is damaged"),
                                   ("labels.json", '{"format": "lstmkit.labels", "labels": ["only"]}',
                                    "must be a list of at least two names"),
                                   ("labels.json", None, "labels.json is missing"),
                                   ("vocab.json", '{"format": "other"}', "not an lstmkit vocabulary")]:
        run = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(sentiment_run, run)
        if content is None:
            (run / name).unlink()
        else:
            (run / name).write_text(content)
        result = CliRunner().invoke(main, ["predict", str(run), "good film"])
        assert result.exit_code == 1 and message in result.output, (name, content, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_gzipped_csv_with_other_field_names(tmp_path):
    path = tmp_path / "reviews.csv.gz"
    rows = [json.loads(line) for line in write_reviews(tmp_path / "r.jsonl").read_text().splitlines()]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("body,stars\n" + "".join(f"\"{r['text']}\",{r['label']}\n" for r in rows))
    config = cfg.apply_overrides(default_config("sentiment"), [
        f"data.path={path}", "data.text_field=body", "data.label_field=stars", "data.valid_size=0.25"])
    task = SentimentTask(config)
    assert len(task.train_examples) == 180 and len(task.valid_examples) == 60


def test_a_hundred_reviews_train_with_the_default_settings(tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl", n=100)
    result = CliRunner().invoke(main, ["train", "sentiment", "--data", str(data), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "data: 100 examples, 20 held out for validation (data.valid_size=0.2" in result.output
    assert "done: 5 epochs" in result.output


def test_label_names_reach_predict_and_evaluate_and_the_data_may_use_either_spelling(tmp_path):
    data = write_reviews(tmp_path / "reviews.jsonl")
    run = tmp_path / "named"
    args = ["train", "sentiment", "--data", str(data), "--out", str(run), *SMALL]
    result = CliRunner().invoke(main, [*args, "--set", "data.label_names=negative,positive"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["predict", str(run), "a wonderful moving film", "dull and boring, I hated it"])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.output.splitlines()] == ["positive", "negative"]
    result = CliRunner().invoke(main, ["predict", str(run), "a superb film", "--json"])
    assert set(json.loads(result.output)["probabilities"]) == {"negative", "positive"}
    named = tmp_path / "named.jsonl"  # the same reviews, their labels written as the names
    named.write_text("".join(json.dumps(r | {"label": ["negative", "positive"][r["label"]]}) + "\n"
                             for r in map(json.loads, data.read_text().splitlines())))
    scores = []
    for path in (data, named):
        result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(path), "--json"])
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.output))
    assert scores[0] == scores[1] and scores[0]["labels"] == ["negative", "positive"]
    assert json.loads((run / "labels.json").read_text())["data_labels"] == ["0", "1"]
    result = CliRunner().invoke(main, [*args[:4], "--out", str(tmp_path / "bad"), "--set", "data.label_names=yes"])
    assert result.exit_code == 2 and "data.label_names must be 2 distinct names, one per label of the data (0, 1, " \
                                      "in that order)" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_run_saved_before_label_names_loads_with_the_datas_labels(sentiment_run):
    from lstmkit.tasks import open_run

    assert json.loads((sentiment_run / "labels.json").read_text()) == {"format": "lstmkit.labels", "labels": ["0", "1"]}
    task, model = open_run(sentiment_run)  # the labels.json of every run saved before names existed
    assert task.label_names == task.data_labels == ["0", "1"]
    assert task.predict_texts(model, ["a superb film"])[0]["label"] in ("0", "1")


def test_a_run_saved_before_valid_max_keeps_its_uncapped_split(sentiment_run, tmp_path):
    from lstmkit.tasks import load_run_config

    saved = json.loads((sentiment_run / "config.json").read_text())
    assert load_run_config(sentiment_run).data.valid_max == 5000
    del saved["data"]["valid_max"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    assert load_run_config(tmp_path / "old").data.valid_max == 0  # a fraction held out all of its share then


@pytest.mark.skipif(not REAL_IMDB.exists(), reason="../shared/data/imdb is not present beside the project")
def test_real_imdb_split_and_vocabulary():
    config = cfg.apply_overrides(default_config("sentiment"), [f"data.path={REAL_IMDB}"])
    task = SentimentTask(config)
    assert len(task.train_examples) == 20_000 and len(task.valid_examples) == 5_000
    assert len(task.vocab) == 10_000 and task.label_names == ["0", "1"]
    assert sum(task.valid_labels) == 2_500  # stratified
    assert max(len(e) for e in task.train_examples) == 500


# --- digits -----------------------------------------------------------------------------------------------

def test_a_sequences_run_directory_is_self_contained(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 5, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    data = tmp_path / "train.npz"
    np.savez(data, x=x, y=y)
    np.savez(tmp_path / "other.npz", x=x[:40], y=y[:40])
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "sequences", "--data", str(data), "--out", str(run), "--epochs", "2",
                                       "--quiet", "--set", "model.hidden_size=8"])
    assert result.exit_code == 0, result.output
    data.unlink()  # the training file is gone: scoring another file needs only the run directory
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(tmp_path / "other.npz"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["examples"] == 40
    result = CliRunner().invoke(main, ["evaluate", str(run), "--split", "test"])
    assert result.exit_code == 1 and "train.npz" in result.output and "Traceback" not in result.output


def test_digits_train_and_held_out_test(tmp_path):
    run = tmp_path / "digits"
    args = ["train", "sequences", "--out", str(run), "--epochs", "3", "--quiet", "--set", "model.hidden_size=32",
            "--set", "train.lr=0.01"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["evaluate", str(run), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    digits = load_digits_sequences()
    expected = len(split_indices(digits.labels, 0.15, 0.15, seed=0)["test"])
    assert scores["examples"] == expected and 250 < expected < 290 and len(scores["confusion_matrix"]) == 10
    assert scores["accuracy"] > 0.5, scores  # 3 short epochs; chance is 0.1
