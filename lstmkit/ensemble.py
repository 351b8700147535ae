"""Ensembles of classifiers: `train.members = N` trains N models and predicts with the mean of their probabilities.

Models trained from different random starts make partly different mistakes, so averaging their class
probabilities is more accurate than any one of them: on IMDB three bidirectional LSTMs of 90.2, 90.6 and
89.6% validation accuracy gave 91.4% together (`--preset imdb_ensemble`, BENCHMARKS.md).

The run directory of an ensemble:

    RUN/config.json        the configuration, train.members = N
    RUN/member-1/ ...      one ordinary run per member: seed train.seed + k - 1, data.split_seed pinned to the
    RUN/member-N/          ensemble's, so every member holds out the same validation examples
    RUN/ensemble.json      the members trained so far, their best validation metrics and the ensemble's

Members train one after another, each a whole `train_and_evaluate`; an interrupted ensemble resumes at the
member it stopped in, and `--resume --epochs E` trains every member on to E epochs. `open_run(RUN)` gives the
first member's task and an `EnsembleClassifier`, so `lstmkit evaluate`, `predict` and `serve` take an ensemble
wherever they take a classifier; `inspect` and the web page trace the first member's gates (`trace_text`).

Imports point one way: this module sits above `lstmkit.train` and `lstmkit.tasks` (members are ordinary runs), and
its `train_and_evaluate` and `open_run` are the entry points for any run, an ensemble or not.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lstmkit import config as cfg
from lstmkit import runs
from lstmkit import train as single
from lstmkit.errors import ConfigError, RunDirError
from lstmkit.tasks import get_task, load_run_config
from lstmkit.tasks.classify import ClassifierTask, class_probabilities
from lstmkit.train import TrainResult, prepare_run_dir

ENSEMBLE_FILE = runs.ENSEMBLE_FILE
ENSEMBLE_FORMAT = "lstmkit.ensemble"


class EnsembleClassifier(nn.Module):
    """Classifiers that read the same inputs, as one: the logits it returns are those whose class probabilities
    (sigmoid for one logit, softmax for more) are the mean of the members' probabilities."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("lstm", "head", "embedding", "pooling", "dropout"):
                raise AttributeError(f"an ensemble of {len(self.members)} classifiers has no single {name!r}; "
                                     f"take one member's: .members[k].{name}") from None
            raise

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:

        logits = [member(inputs, lengths) for member in self.members]
        probabilities = torch.stack([class_probabilities(z) for z in logits]).mean(dim=0)  # [N, C]
        tiny = torch.finfo(probabilities.dtype).tiny
        if logits[0].shape[1] == 1:  # two classes, one logit: log-odds of the mean probability
            return (probabilities[:, 1:].clamp_min(tiny).log() - probabilities[:, :1].clamp_min(tiny).log())
        return probabilities.clamp_min(tiny).log()  # softmax(log p) = p


def member_name(k: int) -> str:
    return f"member-{k + 1}"


def member_config(config: cfg.RunConfig, k: int) -> cfg.RunConfig:
    """Member k's configuration: one model, seed + k, the ensemble's validation split."""
    member = copy.deepcopy(config)
    member.train.members = 1
    member.train.seed = config.train.seed + k
    if config.data.split_seed is None:
        member.data.split_seed = config.train.seed
    return member


def _check_ensemble_task(config: cfg.RunConfig) -> None:
    if not issubclass(get_task(config.task), ClassifierTask):
        raise ConfigError(f"train.members > 1 makes an ensemble of classifiers; a {config.task!r} run has one model "
                          "(set train.members = 1)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("an ensemble trains its members one process each; drop --nproc (or set train.members = 1)")


def _read_record(run_dir: Path, config: cfg.RunConfig) -> dict[str, Any]:
    """ensemble.json, checked: members named member-1..N at most once each, with numbers where numbers go."""
    path = run_dir / ENSEMBLE_FILE
    if not path.is_file():
        return {"format": ENSEMBLE_FORMAT, "members": []}
    record = runs.read_json(path, ENSEMBLE_FORMAT)
    members = record.get("members")
    names = [member_name(k) for k in range(config.train.members)]
    damaged = RunDirError(f"{path} is damaged: \"members\" must list records {{\"name\": \"member-K\", \"epochs\": E, "
                          f"\"best\": ...}} of K = 1..{config.train.members}, each once; delete the file and resume "
                          "to rebuild it from the members' own runs")
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise damaged
    seen = [m.get("name") for m in members]
    if len(set(seen)) != len(seen) or not all(name in names for name in seen):
        raise damaged
    for m in members:
        if "epochs" not in m:  # written before records had it: the member's own configuration says
            member_dir = run_dir / str(m.get("name"))
            saved = runs.read_config(member_dir) if (member_dir / runs.CONFIG_FILE).is_file() else {}
            m["epochs"] = (saved.get("train") or {}).get("epochs") if isinstance(saved.get("train"), dict) else None
        if not isinstance(m["epochs"], int) or not isinstance(m.get("best"), int | float | None):
            raise damaged
    record["members"] = sorted(members, key=lambda m: names.index(m["name"]))
    return record


def train_ensemble(config: cfg.RunConfig, run_dir: Path, resume: bool, quiet: bool) -> Any:
    """Train (or, with resume, finish) every member of an ensemble run, then score the ensemble.

    A member listed in ensemble.json is done unless `--epochs` changed since: then it resumes, as a single run
    does. train.minutes is the budget of the whole invocation, shared by the members in turn."""
    import click

    _check_ensemble_task(config)
    prepare_run_dir(run_dir, resume)
    # Also on resume: a changed --epochs or --minutes is then what a later plain --resume continues with.
    runs.write_config(run_dir, cfg.to_dict(config))
    record = _read_record(run_dir, config)
    started_at = time.monotonic()
    steps, epoch = 0, config.train.epochs
    for k in range(config.train.members):
        name = member_name(k)
        member_dir = run_dir / name
        listed = next((m for m in record["members"] if m["name"] == name), None)
        if listed is not None and listed["epochs"] == config.train.epochs and (member_dir / runs.MODEL_FILE).is_file():
            continue
        record["members"] = [m for m in record["members"] if m["name"] != name]
        member = member_config(config, k)
        if config.train.minutes > 0:
            member.train.minutes = config.train.minutes - (time.monotonic() - started_at) / 60
            if member.train.minutes <= 0:
                return TrainResult(status="time_budget", step=steps, epoch=0, best_metric=None, run_dir=run_dir)
        started = (member_dir / runs.CHECKPOINT_FILE).is_file()
        if not started and member_dir.exists():
            if (member_dir / runs.MODEL_FILE).exists():
                raise RunDirError(f"{member_dir} has trained weights but no checkpoint to resume from; move it away "
                                  "to train that member again, then resume")
            shutil.rmtree(member_dir)  # stopped before its first checkpoint: only set-up files, nothing trained
        if not quiet:
            click.echo(f"member {k + 1} of {config.train.members} (seed {member.train.seed})"
                       f"{', resumed' if started else ''}", err=True)
        try:
            result = single.train_and_evaluate(member, member_dir, resume=started, quiet=quiet)
        except Exception:
            if not resume and k == 0 and not (member_dir / runs.CONFIG_FILE).exists():
                # The first member refused its configuration or data before writing anything: so does the
                # ensemble, leaving --out free for the corrected command.
                (run_dir / runs.CONFIG_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    member_dir.rmdir()  # made empty by the member's own set-up
            raise
        steps, epoch = steps + result.step, result.epoch
        if result.status not in ("completed", "early_stopped"):
            return TrainResult(status=result.status, step=steps, epoch=result.epoch, best_metric=None,
                               run_dir=run_dir)
        if not (member_dir / runs.MODEL_FILE).is_file():
            raise RunDirError(f"{member_dir} finished without its {runs.MODEL_FILE} (was it deleted?); move the "
                              "directory away to train that member again, then resume")
        record["members"].append({"name": name, "seed": member.train.seed, "epochs": config.train.epochs,
                                  "best": result.best_metric})
        record["members"].sort(key=lambda m: int(m["name"].split("-")[1]))
        runs.write_json(run_dir / ENSEMBLE_FILE, record)
    try:
        task, model = open_ensemble(get_task(config.task), run_dir, config)
        examples, labels = task.held_out("valid")
        metrics = task.evaluate_examples(model, examples, labels)
    except KeyboardInterrupt:  # every member is saved; a resume only scores the ensemble again
        return TrainResult(status="interrupted", step=steps, epoch=epoch, best_metric=None, run_dir=run_dir)
    record["valid"] = {key: value for key, value in metrics.items() if isinstance(value, float)}
    runs.write_json(run_dir / ENSEMBLE_FILE, record)
    metric = metrics[task.metric]
    if not quiet:
        each = " ".join("n/a" if m["best"] is None else f"{m['best']:.4f}" for m in record["members"])
        click.echo(f"members' best validation {task.metric}: {each}; the ensemble's: {metric:.4f}", err=True)
    return TrainResult(status="completed", step=steps, epoch=epoch, best_metric=metric, run_dir=run_dir)


def open_ensemble(task_class: Any, run_dir: Path, config: cfg.RunConfig) -> tuple[Any, EnsembleClassifier]:
    """The first member's task and an EnsembleClassifier of every member, checked to read inputs alike."""
    record = _read_record(run_dir, config)
    names = [m["name"] for m in record["members"]]
    missing = [member_name(k) for k in range(config.train.members) if member_name(k) not in names]
    if missing:
        raise RunDirError(f"{run_dir} is an ensemble of {config.train.members} with {len(names)} trained (not "
                          f"{', '.join(missing)}); finish it: lstmkit train {config.task} --out {run_dir} --resume")
    task, models = None, []
    for name in names:
        member_config_saved = load_run_config(run_dir / name)
        if member_config_saved.task != config.task:
            raise RunDirError(f"{run_dir / name} is a {member_config_saved.task!r} run inside a {config.task!r} "
                              "ensemble; the run directory is damaged")
        member_task, model = task_class.from_run(run_dir / name, member_config_saved)
        if task is None:
            task = member_task
        elif (member_task.label_names != task.label_names
              or member_task.input_signature() != task.input_signature()):
            raise RunDirError(f"{run_dir / name} reads its inputs or names its labels unlike {run_dir / names[0]}; "
                              "the members of an ensemble must share them")
        models.append(model)
    return task, EnsembleClassifier(models).eval()


def train_and_evaluate(config: cfg.RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Train any run: an ensemble when train.members > 1 (`train_ensemble`), else one model (`lstmkit.train`)."""
    if config.train.members > 1:
        return train_ensemble(config, Path(run_dir), resume, quiet)
    return single.train_and_evaluate(config, run_dir, resume, quiet)


def open_run(run_dir: Path) -> tuple[Any, nn.Module]:
    """The task and best model of any run directory (an ensemble's: the first member's task and an
    EnsembleClassifier), its config.json read once."""
    config = load_run_config(run_dir)
    task_class = get_task(config.task)
    if config.train.members > 1:
        return open_ensemble(task_class, Path(run_dir), config)
    return task_class.from_run(run_dir, config)
