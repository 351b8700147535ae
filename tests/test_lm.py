"""Language modelling: truncated BPTT with carried state, exact resume, generation, evaluation, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import batches_drawn

from lstmkit import config as cfg
from lstmkit import runs
from lstmkit.cli import main
from lstmkit.errors import ConfigError
from lstmkit.sample import generate
from lstmkit.tasks import default_config
from lstmkit.tasks.lm import LMTask
from lstmkit.train import config_for_resume, train_and_evaluate

VERSE = "the cat sat on the mat.\nthe dog ran to the log.\na bird sang in the tree.\n"


def write_text(path: Path, repeats: int = 60) -> Path:
    path.write_text(VERSE * repeats, encoding="utf-8")
    return path


def small(path: Path, *extra: str) -> cfg.RunConfig:
    return cfg.apply_overrides(default_config("lm"), [
        f"data.path={path}", "data.bptt=16", "model.embedding_dim=16", "model.hidden_size=32", "model.num_layers=1",
        "model.dropout=0", "train.batch_size=8", "train.lr=0.01", "train.clip_norm=1", "train.epochs=6",
        "train.checkpoint_every=5", *extra])


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    run = root / "run"
    result = train_and_evaluate(small(write_text(root / "verse.txt")), run, quiet=True)
    assert result.status == "completed"
    return run


def test_a_char_model_learns_a_repeated_text(char_run):
    metrics = runs.read_metrics(char_run)
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"], [m["loss"] for m in metrics]
    assert metrics[-1]["bpc"] == pytest.approx(metrics[-1]["loss"] / 0.6931471805599453)
    task, model = LMTask.from_run(char_run)
    text = "".join(generate(model, task.vocab, "the dog ", 12, greedy=True))
    assert text == "ran to the l"  # the only continuation in the training text


def test_generation_is_seeded_and_checked(char_run):
    task, model = LMTask.from_run(char_run)
    one = "".join(generate(model, task.vocab, "the ", 60, temperature=1.5, seed=3))
    assert one == "".join(generate(model, task.vocab, "the ", 60, temperature=1.5, seed=3))
    assert one != "".join(generate(model, task.vocab, "the ", 60, temperature=1.5, seed=4))
    greedy = "".join(generate(model, task.vocab, "a bird ", 20, greedy=True))
    assert "".join(generate(model, task.vocab, "a bird ", 20, top_k=1, seed=9)) == greedy
    assert len("".join(generate(model, task.vocab, "a", 25, top_p=0.9))) == 25
    for kwargs, message in [({"length": 0}, "--length must be at least 1"),
                            ({"length": 5, "temperature": 0}, "--temperature must be above 0"),
                            ({"length": 5, "top_p": 1.5}, r"--top-p must be in \(0, 1\]")]:
        with pytest.raises(Exception, match=message):
            generate(model, task.vocab, "the", **kwargs)
    with pytest.raises(Exception, match="characters this model never saw in training: 'Z', 'é'"):
        generate(model, task.vocab, "Zé the", 5)


def test_top_k_and_top_p_keep_exactly_the_tokens_they_name():
    from lstmkit.sample import pick_next

    # Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 over ids 3, 0, 4, 1, 2 (logits are their logs).
    probs = torch.tensor([0.25, 0.0625, 0.0625, 0.5, 0.125])
    logits = probs.log()

    def drawn(**kwargs) -> set[int]:
        generator = torch.Generator().manual_seed(0)
        return {pick_next(logits, 1.0, generator=generator, greedy=False, **{"top_k": None, "top_p": None,
                                                                             **kwargs}) for _ in range(400)}

    assert drawn(top_k=1) == {3} and drawn(top_k=2) == {3, 0} and drawn(top_k=3) == {3, 0, 4}
    assert drawn(top_p=0.5) == {3}  # 0.5 alone reaches 0.5
    assert drawn(top_p=0.6) == {3, 0}  # 0.5 falls short of 0.6; with 0.25 it reaches it
    assert drawn(top_p=0.8) == {3, 0, 4}
    assert drawn(top_k=2, top_p=0.9) == {3, 0}  # top-k first, then the nucleus of what is left
    assert drawn() == {0, 1, 2, 3, 4}
    assert pick_next(logits, 1.0, None, None, True, torch.Generator()) == 3  # greedy


def test_generate_and_evaluate_commands(char_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", str(char_run), "--prompt", "the cat ", "--length", "10", "--greedy"])
    assert result.exit_code == 0 and result.output == "the cat sat on the\n", result.output
    result = runner.invoke(main, ["generate", str(char_run), "--prompt", "Q", "--length", "5"])
    assert result.exit_code == 1 and result.output.startswith("Error: the prompt has characters")
    other = tmp_path / "other.txt"
    other.write_text(VERSE * 3, encoding="utf-8")
    result = runner.invoke(main, ["evaluate", str(char_run), "--data", str(other), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert {"loss", "bpc"} <= scores.keys() and scores["tokens"] == len(VERSE * 3) and scores["unknown_tokens"] == 0


def test_word_level_reports_perplexity_and_refuses_unknown_words(tmp_path):
    run = tmp_path / "words"
    train_and_evaluate(small(write_text(tmp_path / "v.txt"), "data.level=word", "data.bptt=6", "train.epochs=3"),
                       run, quiet=True)
    metrics = runs.read_metrics(run)
    assert metrics[-1]["perplexity"] == pytest.approx(2.718281828 ** metrics[-1]["loss"])
    task, model = LMTask.from_run(run)
    assert "<eos>" in task.vocab and task.vocab.level == "word"
    words = "".join(generate(model, task.vocab, "the cat", 4, greedy=True))
    assert words.startswith(" ") and len(words.split()) == 4
    with pytest.raises(Exception, match="words this model never saw in training: 'zebra'"):
        generate(model, task.vocab, "the zebra", 3)


def test_resume_mid_epoch_carries_the_state_exactly(tmp_path, monkeypatch):
    text = write_text(tmp_path / "verse.txt")
    train_and_evaluate(small(text, "model.num_layers=2", "model.dropout=0.2"), tmp_path / "full", quiet=True)
    real = LMTask.make_batch
    calls = {"n": 0}

    def interrupt_at_step_13(self, item, rank, world):
        calls["n"] += 1
        if calls["n"] == 13:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled between steps
        return real(self, item, rank, world)

    monkeypatch.setattr(LMTask, "make_batch", interrupt_at_step_13)
    result = train_and_evaluate(small(text, "model.num_layers=2", "model.dropout=0.2"), tmp_path / "cut", quiet=True)
    assert result.status == "interrupted" and result.step == 13
    tensors, header = runs.load_tensors(tmp_path / "cut" / runs.CHECKPOINT_FILE)
    assert header["position"]["batch"] > 0 and "task.h" in tensors  # mid-epoch, with the carried state
    monkeypatch.setattr(LMTask, "make_batch", real)
    with batches_drawn(LMTask) as drawn:
        train_and_evaluate(config_for_resume(tmp_path / "cut"), tmp_path / "cut", resume=True, quiet=True)
    full, full_header = runs.load_tensors(tmp_path / "full" / runs.CHECKPOINT_FILE)
    total = full_header["position"]["step"]
    # A run that started over from step 0 would end with the same weights, drawing every batch again.
    assert len(drawn) == total - 13, f"the resumed run drew {len(drawn)} batches; {total - 13} remain after step 13"
    cut, _ = runs.load_tensors(tmp_path / "cut" / runs.CHECKPOINT_FILE)
    differing = [k for k in full if k.startswith("model.") and not torch.equal(full[k], cut[k])]
    assert not differing, differing


def test_two_processes_carry_their_columns_state_through_a_resume(tmp_path):
    """--nproc 2: each process carries the hidden state of its own columns from window to window. Two processes
    match one; a run stopped mid-epoch by its time budget saves the state of every column (not process 0's alone,
    which the other process would then resume from), and its resume ends bit-identical to an uninterrupted run."""
    from test_train import cli

    text = write_text(tmp_path / "verse.txt", repeats=200)
    common = ["train", "lm", "--data", str(text), "--quiet", "--epochs", "1", "--set", "data.bptt=16",
              "--set", "model.embedding_dim=16", "--set", "model.hidden_size=32", "--set", "model.num_layers=1",
              "--set", "model.dropout=0", "--set", "train.batch_size=8", "--set", "train.lr=0.01",
              "--set", "train.eval_every=25"]

    def train(name: str, *extra: str) -> Path:
        done = cli(*common, "--out", str(tmp_path / name), *extra)
        assert done.returncode == 0, done.stderr
        return tmp_path / name

    one, two = train("one"), train("two", "--nproc", "2")
    losses = {run: [m["loss"] for m in runs.read_metrics(run)] for run in (one, two)}
    assert len(losses[one]) == len(losses[two]) >= 4
    worst = max(abs(a - b) / a for a, b in zip(losses[one], losses[two], strict=True))
    assert worst < 1e-4, f"validation losses differ by up to {worst:.2e} relative: {losses[one]} vs {losses[two]}"
    assert losses[one][-1] < 0.5 * losses[one][0]

    cut = train("cut", "--nproc", "2", "--minutes", "0.002")  # 0.12 s of training: stops after a few steps
    tensors, header = runs.load_tensors(cut / runs.CHECKPOINT_FILE)
    full, full_header = runs.load_tensors(two / runs.CHECKPOINT_FILE)
    steps = full_header["position"]["step"]
    assert 0 < header["position"]["batch"] < steps, header["position"]  # mid-epoch
    assert tensors["task.h"].shape == (1, 8, 32)  # every column of the global batch of 8
    train("cut", "--nproc", "2", "--minutes", "60", "--resume")
    resumed, resumed_header = runs.load_tensors(cut / runs.CHECKPOINT_FILE)
    assert resumed_header["position"]["step"] == steps
    differing = [k for k in full if k.startswith("model.") and not torch.equal(full[k], resumed[k])]
    assert not differing, f"resumed at step {header['position']['step']}; differing: {differing}"


def test_tied_weights_save_resume_and_stay_tied(tmp_path):
    run = tmp_path / "tied"
    config = small(write_text(tmp_path / "v.txt"), "data.level=word", "data.bptt=6", "train.epochs=1",
                   "model.embedding_dim=32", "model.tie_weights=true")
    train_and_evaluate(config, run, quiet=True)
    train_and_evaluate(config_for_resume(run, epochs=2), run, resume=True, quiet=True)
    task, model = LMTask.from_run(run)
    assert model.head.weight is model.embedding.weight  # still one parameter after loading
    tensors, _ = runs.load_tensors(run / runs.MODEL_FILE)
    assert torch.equal(tensors["head.weight"], tensors["embedding.weight"])


def test_bad_input_is_one_line_each(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"abc\x00\x01\x02" * 10)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello")
    cases = [
        (["--data", str(empty)], "is empty"),
        (["--data", str(binary)], "is not a text file: NUL byte at byte offset 3"),
        (["--data", str(tiny), "--set", "train.batch_size=32"], "too few for 32 columns"),
        (["--data", str(tmp_path / "missing.txt")], "file not found"),
        (["--set", "data.level=words"], "data.level must be one of 'char', 'word'"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["train", "lm", "--out", str(tmp_path / "r"), "--quiet", *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, args


def test_the_built_in_corpus_needs_no_data(tmp_path):
    config = cfg.apply_overrides(default_config("lm"), ["model.hidden_size=8", "model.embedding_dim=8",
                                                       "model.num_layers=1", "data.bptt=32", "train.batch_size=64"])
    task = LMTask(config)
    assert len(task.vocab) > 80 and task.train_data.shape[1] == 64  # Python's own documentation text
    assert task.vocab.level == "char"


def test_init_range_sets_the_embedding_and_output_layer():
    from lstmkit.lstm_config import LSTMConfig
    from lstmkit.tasks.lm import LanguageModel, LMModelConfig

    model = LanguageModel(50, LMModelConfig(embedding_dim=16, lstm=LSTMConfig(hidden_size=16), tie_weights=True,
                                               init_range=0.1))
    assert model.embedding.weight.abs().max() <= 0.1 and model.embedding.weight.abs().max() > 0.05
    assert model.head.weight is model.embedding.weight and torch.equal(model.head.bias, torch.zeros(50))
    with pytest.raises(ConfigError, match="model.init_range must be >= 0"):
        LanguageModel(50, LMModelConfig(init_range=-1.0))


def test_locked_and_embedding_dropout_drop_the_same_units_for_a_whole_window():
    """model.locked_dropout: one mask per column for every step (the LSTM's inputs through its input_dropout, its
    output here); model.embedding_dropout: whole words, so a dropped word is zero wherever it occurs; both off in
    eval, and a bad rate or a doubled input dropout is one line."""
    from lstmkit.lstm_config import LSTMConfig
    from lstmkit.tasks.lm import LanguageModel, LMModelConfig

    torch.manual_seed(0)
    config = LMModelConfig(embedding_dim=12, lstm=LSTMConfig(hidden_size=12, num_layers=2), dropout=0.5,
                           locked_dropout=True, embedding_dropout=0.5)
    model = LanguageModel(30, config).train()
    assert model.lstm.input_dropouts == (0.5, 0.5) and model.lstm.dropout == 0.0
    seen = {}
    model.lstm.register_forward_hook(lambda module, args, out: seen.update(input=args[0], output=out[0]))
    head_inputs = []
    model.head.register_forward_hook(lambda module, args, out: head_inputs.append(args[0]))
    ids = torch.tensor([[3, 3, 3, 3], [5, 5, 5, 5], [3, 7, 7, 7]])  # [L=3, B=4]: word 3 in columns 0-3 and 0
    model(ids)
    words = seen["input"]
    dropped = (words == 0).all(dim=2)  # [L, B]: a whole embedding zeroed
    scale = 1.0 / (1.0 - 0.5)
    for word in (3, 5, 7):  # a word is dropped everywhere or nowhere, and kept ones are scaled
        at = ids == word
        assert dropped[at].all() or not dropped[at].any(), word
        if not dropped[at].any():
            assert torch.allclose(words[at], model.embedding.weight[word] * scale)
    zero_units = head_inputs[0] == 0  # [L, B, H]: the output's mask, the same at every step of a column
    assert zero_units.any() and (zero_units == zero_units[:1]).all()
    model.eval()
    head_inputs.clear()
    model(ids)
    assert torch.equal(seen["input"], model.embedding(ids)) and torch.equal(head_inputs[0], seen["output"])
    with pytest.raises(ConfigError, match="model.embedding_dropout must be a probability"):
        LanguageModel(30, LMModelConfig(embedding_dropout=1.0))
    with pytest.raises(ConfigError, match="leave model.lstm.input_dropout at 0"):
        LanguageModel(30, LMModelConfig(locked_dropout=True, lstm=LSTMConfig(input_dropout=0.2)))


def test_the_ptb_awd_preset_trains_a_few_steps(tmp_path):
    """A seconds-long smoke run of --preset ptb_awd (shrunk by --set; not its 76-minute training): its nested
    [model.lstm] keys reach the LSTM, weight drop and locked dropout included, and a train step and an evaluation
    run."""
    from lstmkit.tasks import requested_config

    config = requested_config("lm", ["ptb_awd"], [
        f"data.path={write_text(tmp_path / 'text.txt', repeats=8)}", "data.level=char", "data.bptt=8",
        "model.embedding_dim=8", "model.lstm.hidden_size=16", "model.lstm.proj_size=8", "train.batch_size=4",
        "train.epochs=1", "train.lr=1.0"]).config
    assert (config.model.lstm.num_layers, config.model.lstm.weight_drop, config.model.tie_weights) == (2, 0.2, True)
    assert config.model.locked_dropout and config.model.embedding_dropout == 0.1 and config.train.amp == "bf16"
    result = train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert result.status == "completed" and math.isfinite(result.best_metric)
    _, model = LMTask.from_run(tmp_path / "run")
    assert model.lstm.weight_drop == 0.2 and model.lstm.proj_size == 8 and model.lstm.input_dropout == 0.3
