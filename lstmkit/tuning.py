"""`lstmkit tune`: meet the kinds of LSTM call a training run makes, ahead of time, so that backend="auto" measures
them now (and caches its choice, `lstmkit.ops.tune`) instead of during the run's first steps."""

from __future__ import annotations

import torch

from lstmkit import config as cfg
from lstmkit.ops import tune
from lstmkit.tasks import get_task
from lstmkit.train import _device, _seed_everything, amp_context, to_device


def rehearse_training(config: cfg.RunConfig, batches: int = 3) -> dict[str, str]:
    """Run `batches` train steps of `config` (forward and backward, no optimiser step, no files written) and the
    same batches in inference, under the run's autocast. Returns every choice made ({key: path})."""
    train = config.train
    _seed_everything(train.seed)
    task = get_task(config.task)(config)
    device = _device(train)
    model = task.build_model().to(device)
    autocast = amp_context(train, device)
    task.start_epoch(0, 0)
    items = task.train_plan(0)[:batches]
    for training in (True, False):
        model.train(training)
        for item in items:
            batch = to_device(task.make_batch(item, 0, 1), device)
            with torch.set_grad_enabled(training), autocast:
                loss, _ = task.loss(model, batch)
            if training:
                loss.backward()
                model.zero_grad(set_to_none=True)
    return tune.tuner().decisions()


def describe(choices: dict[str, str]) -> list[str]:
    """One line per choice: the kind of call, the path taken and, where this machine measured it, each time."""
    lines = []
    for key, path in sorted(choices.items()):
        entry = tune.tuner().entries().get(key, {})
        timings = ", ".join(f"{p} {ms:.2f} ms" for p, ms in sorted(entry.get("ms", {}).items(), key=lambda kv: kv[1]))
        lines.append(f"{key}: {path}" + (f" ({timings})" if timings else ""))
    return lines
