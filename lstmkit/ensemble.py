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
member it stopped in. `open_run(RUN)` gives the member's task and an `EnsembleClassifier`, so `lstmkit
evaluate`, `predict` and `serve` take an ensemble wherever they take a classifier.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lstmkit import config as cfg
from lstmkit import runs
from lstmkit.errors import ConfigError, RunDirError

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "lstmkit.ensemble"


class EnsembleClassifier(nn.Module):
    """Classifiers that read the same inputs, as one: the logits it returns are those whose class probabilities
    (sigmoid for one logit, softmax for more) are the mean of the members' probabilities."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        from lstmkit.tasks.classify import class_probabilities

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
    from lstmkit.tasks import get_task
    from lstmkit.tasks.classify import ClassifierTask

    if not issubclass(get_task(config.task), ClassifierTask):
        raise ConfigError(f"train.members > 1 makes an ensemble of classifiers; a {config.task!r} run has one model "
                          "(set train.members = 1)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("an ensemble trains its members one process each; drop --nproc (or set train.members = 1)")


def _read_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ENSEMBLE_FILE
    if not path.is_file():
        return {"format": ENSEMBLE_FORMAT, "members": []}
    record = runs.read_json(path, ENSEMBLE_FORMAT)
    members = record.get("members")
    if not isinstance(members, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                  for m in members):
        raise RunDirError(f"{path} is damaged: \"members\" must be a list of {{\"name\": ...}} records")
    return record


def train_ensemble(config: cfg.RunConfig, run_dir: Path, resume: bool, quiet: bool) -> Any:
    """Train (or, with resume, finish) every member of an ensemble run, then score the ensemble."""
    import click

    from lstmkit.tasks import get_task
    from lstmkit.train import TrainResult, prepare_run_dir, train_and_evaluate

    _check_ensemble_task(config)
    prepare_run_dir(run_dir, resume)
    if not resume:
        runs.write_config(run_dir, cfg.to_dict(config))
    record = _read_record(run_dir)
    trained = {m["name"] for m in record["members"]}
    steps = 0
    result = None
    for k in range(config.train.members):
        name = member_name(k)
        if name in trained:
            continue
        member_dir = run_dir / name
        started = (member_dir / runs.CHECKPOINT_FILE).is_file()
        if not quiet:
            click.echo(f"member {k + 1} of {config.train.members} (seed {config.train.seed + k})"
                       f"{', resumed' if started else ''}", err=True)
        if not started and (member_dir / runs.CONFIG_FILE).is_file():
            # Stopped before its first checkpoint: nothing was trained, so it starts again.
            (member_dir / runs.CONFIG_FILE).unlink()
        try:
            result = train_and_evaluate(member_config(config, k), member_dir, resume=started, quiet=quiet)
        except Exception:
            if not resume and k == 0 and not (member_dir / runs.CONFIG_FILE).exists():
                # The first member refused its configuration or data before writing anything: so does the
                # ensemble, leaving --out free for the corrected command.
                (run_dir / runs.CONFIG_FILE).unlink(missing_ok=True)
            raise
        steps += result.step
        if result.status not in ("completed", "early_stopped"):
            return TrainResult(status=result.status, step=steps, epoch=result.epoch, best_metric=None,
                               run_dir=run_dir)
        record["members"].append({"name": name, "seed": config.train.seed + k, "best": result.best_metric})
        runs.write_json(run_dir / ENSEMBLE_FILE, record)
    task, model = open_ensemble(get_task(config.task), run_dir, config)
    examples, labels = task.held_out("valid")
    metrics = task.evaluate_examples(model, examples, labels)
    record["valid"] = {key: value for key, value in metrics.items() if isinstance(value, float)}
    runs.write_json(run_dir / ENSEMBLE_FILE, record)
    metric = metrics[task.metric]
    if not quiet:
        each = " ".join(f"{m['best']:.4f}" for m in record["members"])
        click.echo(f"members' best validation {task.metric}: {each}; the ensemble's: {metric:.4f}", err=True)
    epoch = result.epoch if result is not None else config.train.epochs
    return TrainResult(status="completed", step=steps, epoch=epoch, best_metric=metric, run_dir=run_dir)


def open_ensemble(task_class: Any, run_dir: Path, config: cfg.RunConfig) -> tuple[Any, EnsembleClassifier]:
    """The first member's task and an EnsembleClassifier of every member, checked to read inputs alike."""
    record = _read_record(run_dir)
    names = [m["name"] for m in record["members"]]
    expected = [member_name(k) for k in range(config.train.members)]
    if names != expected:
        raise RunDirError(f"{run_dir} is an ensemble of {config.train.members} with {len(names)} trained; finish it "
                          f"with: lstmkit train {config.task} --out {run_dir} --resume")
    task, models = None, []
    for name in names:
        member_task, model = task_class.from_run(run_dir / name)
        if task is None:
            task = member_task
        elif (member_task.label_names != task.label_names
              or member_task.input_signature() != task.input_signature()):
            raise RunDirError(f"{run_dir / name} reads its inputs or names its labels unlike {run_dir / names[0]}; "
                              "the members of an ensemble must share them")
        models.append(model)
    return task, EnsembleClassifier(models).eval()
