"""Tasks: what the one training engine (`lstmkit.train`) trains. Each task module defines one `Task`.

A task owns its data, its model and its loss; the engine owns everything else (optimiser, schedule,
clipping, evaluation cadence, checkpoints, resume, progress, distribution). The contract:

* `train_plan(epoch)`: the epoch's global batches, as cheap descriptions (indices, seeds), fixed by
  (seed, epoch) alone so that a resumed run replays exactly the same data.
* `make_batch(item, rank, world)`: this process's share of one global batch (data parallelism).
* `loss(model, batch) -> (mean loss, count)`: count is what throughput is measured in (tokens, examples).
* `evaluate(model) -> metrics`: on the validation data; `metric` / `metric_mode` name the one that picks
  the best checkpoint.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lstmkit.config import RunConfig
from lstmkit.errors import ConfigError


class Task:
    name: ClassVar[str]
    ModelConfig: ClassVar[type]
    DataConfig: ClassVar[type]
    metric: ClassVar[str] = "loss"
    metric_mode: ClassVar[str] = "min"  # "min" or "max"
    count_unit: ClassVar[str] = "examples"  # what `loss` counts, for the progress bar's rate

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def train_plan(self, epoch: int) -> list[Any]:
        raise NotImplementedError

    def make_batch(self, item: Any, rank: int, world: int) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    # Optional hooks, no-ops by default.
    def save_artifacts(self, run_dir: Path) -> None:
        """Write what a reloaded model needs besides its weights (a vocabulary, a label set)."""

    def start_epoch(self, epoch: int) -> None:
        """Called before the first batch of each epoch (and of a resumed epoch)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """State carried across batches that a bit-exact resume needs (e.g. a language model's hidden state)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


def task_classes() -> dict[str, type[Task]]:
    from lstmkit.tasks.adding import AddingTask

    return {cls.name: cls for cls in (AddingTask,)}


def get_task(name: str) -> type[Task]:
    tasks = task_classes()
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown task {name!r}{hint} (tasks: {', '.join(sorted(tasks))})")
    return tasks[name]


def default_config(name: str) -> RunConfig:
    cls = get_task(name)
    return RunConfig(task=name, model=cls.ModelConfig(), data=cls.DataConfig())
