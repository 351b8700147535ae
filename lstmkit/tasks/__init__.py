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
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    # Keys added to the task's configuration after runs were first saved: the value a run saved without the key
    # behaved by (which may differ from today's default). See load_run_config.
    former_defaults: ClassVar[dict[str, Any]] = {}
    data_summary: str = ""  # one line on the data as loaded for training, for the log (how it was split, say)
    cache_dir: Path | None = None  # the run directory while training: where a task may cache what it derives

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        """Load the training data; with `run_dir`, load only what inference needs from that run instead."""
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

    def start_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Called before each epoch's first batch to run: 0, or where a resumed run picks the epoch up (then
        the state the task carries across batches has just been restored by `load_state_tensors`)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """State carried across batches that a bit-exact resume needs (e.g. a language model's hidden state):
        this process's share, the batch on dim 1 ([layers, B, H] as torch's LSTM states); the checkpoint gathers
        every process's columns (`train._task_state_of_all`)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    # What `lstmkit evaluate` / `predict` use; a task without them says so.
    def evaluate_path(self, model: nn.Module, path: str) -> dict[str, Any]:
        raise ConfigError(f"task {self.name!r} cannot evaluate a data file")

    def held_out(self, split: str) -> Any:
        raise ConfigError(f"`lstmkit evaluate` does not score {self.name!r} runs; their validation metrics are "
                          "in metrics.jsonl")

    @classmethod
    def from_run(cls, run_dir: Path, config: RunConfig | None = None) -> tuple[Task, nn.Module]:
        """The task (without its training data) and the best model of a run directory, ready for inference.

        `config`: the run's configuration when the caller has already read it (see `open_run`)."""
        from lstmkit import runs

        task = cls(config or load_run_config(run_dir), run_dir=run_dir)
        model = task.build_model()
        runs.load_weights(model, Path(run_dir) / runs.MODEL_FILE)
        return task, model.eval()


def task_classes() -> dict[str, type[Task]]:
    from lstmkit.tasks.adding import AddingTask
    from lstmkit.tasks.lm import LMTask
    from lstmkit.tasks.sentiment import SentimentTask
    from lstmkit.tasks.sequences import SequencesTask
    from lstmkit.tasks.speech import SpeechTask

    return {cls.name: cls for cls in (AddingTask, SentimentTask, SequencesTask, LMTask, SpeechTask)}


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


def preset_config(name: str, presets: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The task's defaults with `presets` (names or TOML paths) applied in order; a preset for another task
    is refused."""
    return requested_config(name, presets).config


@dataclass
class RequestedConfig:
    """What a `lstmkit train` command asks for, and which keys it named: through a preset, or itself (--set and
    the options --data, --epochs, --minutes, --seed). A resumed run compares exactly those keys with its own."""

    config: RunConfig
    preset_keys: set[str] = field(default_factory=set)
    command_keys: set[str] = field(default_factory=set)


def requested_config(name: str, presets: Sequence[str] = (), overrides: Sequence[str] = (),
                     values: dict[str, Any] | None = None) -> RequestedConfig:
    """The task's defaults, then `presets` in order, then `overrides` ("section.key=value"), then `values`
    ({"section.key": value}; None means not given)."""
    from lstmkit import config as cfg

    config = default_config(name)
    requested = RequestedConfig(config)
    for preset in presets:
        mapping = cfg.load_preset(preset)
        if mapping.get("task", name) != name:
            raise ConfigError(f"preset {preset!r} is for task {mapping['task']!r}, not {name!r}")
        cfg.apply_mapping(config, mapping, f"preset {preset}")
        requested.preset_keys |= cfg.mapping_keys(mapping)
    config.presets = ",".join(presets)
    cfg.apply_overrides(config, list(overrides))
    requested.command_keys |= {item.partition("=")[0].strip() for item in overrides}
    for key, value in (values or {}).items():
        if value is None:
            continue
        if key == "data.path" and not hasattr(config.data, "path"):
            raise ConfigError(f"task {name!r} generates its data and takes no --data")
        cfg.set_value(config, key, value)
        requested.command_keys.add(key)
    return requested


def open_run(run_dir: Path) -> tuple[Task, nn.Module]:
    """The task and best model of a single run's directory, its config.json read once. An ensemble's directory
    (train.members > 1) opens with `lstmkit.ensemble.open_run`, which opens either kind."""
    config = load_run_config(run_dir)
    return get_task(config.task).from_run(run_dir, config)


def load_run_config(run_dir: Path) -> RunConfig:
    """The resolved configuration saved in a run directory, checked against this lstmkit's options."""
    from lstmkit import config as cfg
    from lstmkit import runs

    saved = runs.read_config(run_dir)
    config = default_config(saved.get("task", "?"))
    for key, value in get_task(config.task).former_defaults.items():
        section, _, name = key.partition(".")
        if name not in (saved.get(section) or {}):
            cfg.set_value(config, key, value)
    return cfg.apply_mapping(config, saved, str(Path(run_dir) / runs.CONFIG_FILE))
