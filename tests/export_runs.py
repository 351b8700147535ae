"""Run directories for the export tests, written without training: a task's configuration, artifacts and the
weights of a freshly built model (random, so every gate and bias matters), as `lstmkit train` lays them out."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from lstmkit import config as cfg
from lstmkit import runs
from lstmkit.cli import main
from lstmkit.tasks import get_task, requested_config

WORDS = ["great", "awful", "the", "film", "plot", "was", "and", "a", "it", "of", "music", "dull", "superb"]


def write_reviews(path: Path, n: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))), "label": i % 2})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_sequences(path: Path, n: int = 60, features: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, n)
    x = rng.normal(size=(n, 12, features)).astype(np.float32)
    for i, length in enumerate(lengths):
        x[i, length:] = 0
    np.savez(path, x=x, y=rng.integers(0, 3, n), lengths=lengths)
    return path


def write_text(path: Path) -> Path:
    path.write_text("the quick brown fox jumps over the lazy dog; a small text for a language model. " * 40)
    return path


def make_run(root: Path, task_name: str, overrides: list[str], data: Path, name: str = "run", scale: float = 1.0):
    """(run directory, task, model in eval mode); `scale` multiplies the random LSTM weights."""
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    config = requested_config(task_name, (), overrides, {"data.path": str(data)}).config
    task = get_task(task_name)(config)
    model = task.build_model().eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.startswith("lstm."):
                param.mul_(scale)
            if "bias" in param_name:  # biases of both kinds, every gate, not torch's small uniform ones only
                param.add_(torch.randn_like(param) * 0.3)
    runs.write_config(run, cfg.to_dict(config))
    task.save_artifacts(run)
    runs.save_tensors(run / runs.MODEL_FILE, model.state_dict(), {})
    return run, task, model


def invoke(*args):
    """`lstmkit ARGS` in-process (CliRunner), every argument as a string."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *words: str) -> None:
    """A failed command that said one line, no traceback, with each of `words` in it."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for word in words:
        assert word in result.output, result.output
