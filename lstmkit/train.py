"""One training loop for every task: optimiser, schedule, clipping, evaluation, early stopping, best-checkpoint
selection, bf16 autocast, progress, crash-safe checkpoints with bit-exact resume, and data parallelism.

Entry point: `train_and_evaluate(config, run_dir, resume=False)`. The loop, per optimiser step:

    batch = task.make_batch(plan[k], rank, world)      plan fixed by (seed, epoch): resume replays it exactly
    loss = task.loss(model, batch); backward; clip; step
    every eval_every steps and at each epoch's end:  evaluate -> metrics.jsonl, model.safetensors if best
    every checkpoint_every steps, after each evaluation, and on any stop:  checkpoint.safetensors

Bit-exact resume: the checkpoint holds the weights, the optimiser state, every RNG state, the data position
and the task's carried state; evaluation runs under a forked RNG so it never shifts the training stream.
Signals (Ctrl-C, SIGTERM), the wall-clock budget and a non-finite loss are acted on between steps only, so
a checkpoint is never taken half-way through an optimiser update.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lstmkit import config as cfg
from lstmkit import runs
from lstmkit.errors import ConfigError, LstmkitError, RunDirError
from lstmkit.ops import tune
from lstmkit.progress import progress_bar
from lstmkit.tasks import RequestedConfig, Task, get_task, load_run_config


class TrainingStopped(LstmkitError):
    """Training ended early for a reason the user should see (non-finite loss, a failed save)."""


@dataclass
class TrainResult:
    status: str  # "completed", "early_stopped", "time_budget" or "interrupted"
    step: int
    epoch: int
    best_metric: float | None
    run_dir: Path


@dataclass
class Position:
    """Where training stands: optimiser steps taken, and the next batch to run."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # index into the epoch's plan of the next batch
    best: float | None = None
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    metrics_size: int = 0  # bytes of metrics.jsonl written up to this point
    loss_sum: float = 0.0  # training loss since the last evaluation (for its log line)
    loss_count: int = 0
    train_seconds: float = 0.0


# --- distribution ----------------------------------------------------------------------------------------

def _init_distributed() -> tuple[int, int, bool]:
    """(rank, world, whether we created the process group) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    created = not dist.is_initialized()
    if created:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            # nccl for the model's gradients, gloo for the small CPU tensors of the per-step agreement.
            dist.init_process_group(backend="cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size(), created


def _all_reduce(values: list[float], world: int) -> list[float]:
    """Sum of each value over all processes (a CPU tensor, so gloo carries it on GPU machines too)."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _from_rank0(value: float, world: int) -> float:
    """Rank 0's value on every process, so decisions taken on it (best, early stop) are the same everywhere."""
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def _scaled_for_share(loss: torch.Tensor, count: int, world: int) -> torch.Tensor:
    """The loss to differentiate, so that DDP's gradient average is the gradient of the global batch's mean loss.

    `loss` is the mean over this process's `count` examples; DDP averages the processes' gradients, which is the
    global mean only when every share is the same size. A classifier's batches may split unevenly (5 examples over
    2 processes: 3 and 2; 1 example: 1 and none), so each process weighs its mean by count * world / global_count
    (exactly 1.0 for even shares). One small collective per step, under DDP only."""
    if world == 1:
        return loss
    (global_count,) = _all_reduce([float(count)], world)
    return loss * (count * world / global_count)


def _task_state_of_all(task: Task, world: int) -> dict[str, torch.Tensor]:
    """The task's carried state of the whole global batch, gathered from every process (a collective: every
    rank calls it). Each process carries its own columns, batch on dim 1 (`Task.state_tensors`), so a checkpoint
    holds every column whatever the process count (and does not depend on it)."""
    state = task.state_tensors()
    if world == 1:
        return state
    gathered = {}
    for key, tensor in state.items():
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        gathered[key] = torch.cat(parts, dim=1)
    return gathered


def _task_state_of_rank(state: dict[str, torch.Tensor], rank: int, world: int, path: Path) -> dict[str, torch.Tensor]:
    """This process's columns of a saved carried state (the inverse of `_task_state_of_all`)."""
    if world == 1:
        return state
    for key, tensor in state.items():
        if tensor.dim() < 2 or tensor.shape[1] % world:
            raise RunDirError(f"{path} carries a task state {key!r} of shape {list(tensor.shape)} that does not split "
                              f"over {world} processes; resume with the process count it was saved with")
    return {key: tensor.chunk(world, dim=1)[rank].clone() for key, tensor in state.items()}


def _reseed_for_step(seed: int, step: int, rank: int) -> None:
    """Make the RNG stream of each step a pure function of (seed, step, rank).

    Dropout then draws the same masks whether or not the run was interrupted before this step, without
    relying on a saved generator state (which cannot capture, e.g., cuDNN's own dropout state), and each
    process of a data-parallel run draws its own masks.
    """
    torch.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


# --- optimiser and schedule ------------------------------------------------------------------------------

def make_optimizer(model: nn.Module, train: cfg.TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # torch's fused kernels update every parameter in one pass. Its default on the CPU is a Python loop of
    # small ops per tensor: for the IMDB seed model that is 4.0 ms a step against 0.6 ms fused, ~2 s an epoch.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                               fused=fused)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused)


def learning_rate(train: cfg.TrainConfig, step: int, total_steps: int) -> float:
    """A pure function of the step, so a resumed run needs no scheduler state."""
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return train.lr
    span = max(1, total_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    if train.schedule == "cosine":
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.lr * (1.0 - progress)  # linear


# --- checkpoint contents ---------------------------------------------------------------------------------

def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    for index, values in saved["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    return {"state": per_param, "param_groups": saved["param_groups"]}


def _rng_to_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_keys.astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    return tensors, {
        "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }


def _rng_from_files(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    kind, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, py_gauss = saved["python"]
    random.setstate((version, tuple(state), py_gauss))


def save_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, task_state: dict[str, torch.Tensor],
    pos: Position,
) -> None:
    """`task_state`: the task's carried state of the whole global batch (`_task_state_of_all`)."""
    optim_tensors, optim_meta = _optimizer_to_files(optimizer)
    rng_tensors, rng_meta = _rng_to_files()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= optim_tensors | rng_tensors | {f"task.{k}": v for k, v in task_state.items()}
    # The paths backend="auto" chose so far (and the GEMM library): a resumed run keeps them (see load_checkpoint).
    metadata = {"format": "lstmkit.checkpoint", "position": pos.__dict__, "optimizer": optim_meta, "rng": rng_meta,
                "dispatch": tune.tuner().decisions()}
    runs.save_tensors(Path(run_dir) / runs.CHECKPOINT_FILE, tensors, metadata)


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task,
                    rank: int = 0, world: int = 1) -> Position:
    path = Path(run_dir) / runs.CHECKPOINT_FILE
    tensors, metadata = runs.load_tensors(path)
    if metadata.get("format") != "lstmkit.checkpoint" or "position" not in metadata:
        raise RunDirError(f"{path} is not an lstmkit checkpoint (no resume state in its header)")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    runs.check_state_dict(model, weights, str(path))
    model.load_state_dict(weights)
    try:
        optimizer.load_state_dict(_optimizer_from_files(tensors, metadata["optimizer"]))
        _rng_from_files(tensors, metadata["rng"])
    except (KeyError, ValueError, TypeError) as error:
        raise RunDirError(f"{path} has a damaged resume state ({error}); delete it to start over") from None
    task_state = {k[len("task."):]: v for k, v in tensors.items() if k.startswith("task.")}
    task.load_state_tensors(_task_state_of_rank(task_state, rank, world, path))
    # The run computes on the paths it started with, whatever this machine's cache says now: a resumed run then
    # repeats the uninterrupted one bit for bit (a checkpoint of an older lstmkit has none; absent keys are decided).
    dispatch = metadata.get("dispatch", {})
    if isinstance(dispatch, dict):
        tune.tuner().pin(dispatch)
    return Position(**metadata["position"])


def recorded_dispatch(run_dir: Path) -> dict[str, str]:
    """The paths a run's checkpoint recorded (`CallKind.key` or "gemm|..." -> path); empty if none."""
    _, metadata = runs.load_tensors(Path(run_dir) / runs.CHECKPOINT_FILE)
    dispatch = metadata.get("dispatch", {})
    return dict(dispatch) if isinstance(dispatch, dict) else {}


# --- stop requests ---------------------------------------------------------------------------------------

class StopRequests:
    """SIGINT / SIGTERM set a flag that the loop reads between steps; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequests:
        with contextlib.suppress(ValueError):  # signals can only be handled in the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --- the loop --------------------------------------------------------------------------------------------

def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one that is not there; changes nothing on disk."""
    run_dir = Path(run_dir)
    if resume:
        saved = runs.read_config(run_dir)  # exists, and a format we read
        members = saved.get("train", {}).get("members", 1) if isinstance(saved.get("train"), dict) else 1
        if isinstance(members, int) and members > 1:
            return  # an ensemble: its members hold the checkpoints (lstmkit/ensemble.py)
        if not (run_dir / runs.CHECKPOINT_FILE).is_file():
            raise RunDirError(
                f"{run_dir} has no {runs.CHECKPOINT_FILE} to resume from (it stopped before its first step); "
                f"delete {run_dir} and train it again"
            )
        return
    if runs.holds_run(run_dir):
        raise RunDirError(
            f"{run_dir} already holds a run; continue it with --resume, or choose another --out "
            "(nothing was overwritten)"
        )


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    check_run_dir(run_dir, resume)
    if resume:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create run directory {run_dir}: {error.strerror or error}") from None


# What a resumed run may change; every other key it keeps (a changed value is refused by name).
RESUME_MAY_CHANGE = ("train.epochs", "train.minutes")


def config_for_resume(run_dir: Path, epochs: int | None = None, minutes: float | None = None,
                      requested: RequestedConfig | None = None) -> cfg.RunConfig:
    """The saved configuration of a run; only the epoch count and the time budget may change on resume.

    `requested`: what the resuming command asked for (the command that started the run, say, rerun by a job
    script). Each key it names must agree with the saved value, except the epochs and the time budget, which it
    sets when the command itself (not a preset) names them."""
    config = load_run_config(run_dir)
    if requested is not None:
        changes = []
        for key in sorted(requested.preset_keys | requested.command_keys):
            saved, given = cfg.get_value(config, key), cfg.get_value(requested.config, key)
            if key not in RESUME_MAY_CHANGE and saved != given:
                changes.append(f"{key} (saved {saved!r}, given {given!r})")
        if changes:
            raise ConfigError(
                f"this command changes {', '.join(changes)} of the run in {run_dir}; a resumed run keeps its "
                "configuration (only --epochs and --minutes may change): drop the change, or train a new run into "
                "another --out"
            )
        for key in RESUME_MAY_CHANGE:
            if key in requested.command_keys:
                cfg.set_value(config, key, cfg.get_value(requested.config, key))
    if epochs is not None:
        config.train.epochs = epochs
    if minutes is not None:
        config.train.minutes = minutes
    return config


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(train: cfg.TrainConfig) -> torch.device:
    if train.device == "cpu":
        return torch.device("cpu")
    if train.device.startswith("cuda") and train.device != "auto":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={train.device} but this torch build or machine has no CUDA GPU; "
                              "use train.device=cpu (or auto)")
        try:
            return torch.device(train.device)
        except RuntimeError:
            raise ConfigError(f"train.device={train.device!r} is not a device name (cuda, cuda:1, ...)") from None
    if train.device != "auto":
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {train.device!r}")
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def amp_context(train: cfg.TrainConfig, device: torch.device) -> torch.autocast:
    """The autocast of a run's forward passes: bf16 with train.amp=bf16, else off."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=train.amp == "bf16")


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere inside tuples, lists and dicts, moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def train_and_evaluate(
    config: cfg.RunConfig,
    run_dir: Path,
    resume: bool = False,
    quiet: bool = False,
) -> TrainResult:
    """Train `config.task` into `run_dir` (a new run, or the one there with resume=True): one model.

    An ensemble (train.members > 1) is trained by `lstmkit.ensemble.train_and_evaluate`, a layer above this one
    (its members are ordinary runs of this function)."""
    if config.train.members > 1:
        raise ConfigError("train.members > 1 is an ensemble: train it with lstmkit.ensemble.train_and_evaluate "
                          "(as `lstmkit train` does), or set train.members = 1")
    with StopRequests() as stops:  # from the start: a Ctrl-C during set-up stops after the first step
        return _train_and_evaluate(config, Path(run_dir), resume, quiet, stops)


def _train_and_evaluate(
    config: cfg.RunConfig, run_dir: Path, resume: bool, quiet: bool, stops: StopRequests
) -> TrainResult:
    rank, world, owns_group = _init_distributed()
    is_writer = rank == 0
    train = config.train
    if is_writer:
        prepare_run_dir(run_dir, resume)
    if world > 1:
        dist.barrier()

    _seed_everything(train.seed)
    # Everything that can reject the configuration or the data runs before the first file is written.
    if train.patience and train.keep == "last":
        raise ConfigError("train.patience stops after evaluations without a better one, but train.keep=last keeps "
                          "every last one: set train.patience=0 or train.keep=best")
    task = get_task(config.task)(config)
    task.cache_dir = run_dir  # e.g. the speech task's features, reused on --resume
    device = _device(train)
    model = task.build_model().to(device)
    optimizer = make_optimizer(model, train)
    steps_per_epoch = len(task.train_plan(0))
    if steps_per_epoch == 0:
        raise ConfigError("the training data gives no batches; check data.path and train.batch_size")
    if resume:
        pos = load_checkpoint(run_dir, model, optimizer, task, rank, world)
        if is_writer:
            runs.truncate_metrics(run_dir, pos.metrics_size)
    else:
        pos = Position()
        if is_writer:
            runs.write_config(run_dir, cfg.to_dict(config))
            task.save_artifacts(run_dir)
            # A checkpoint at step 0 right away: a run stopped at any moment after this can be resumed.
            save_checkpoint(run_dir, model, optimizer, task.state_tensors(), pos)  # nothing carried yet
    if world > 1 and device.type == "cuda":
        wrapped: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    else:
        wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    total_steps = steps_per_epoch * train.epochs
    autocast = amp_context(train, device)
    better = (lambda a, b: a < b) if task.metric_mode == "min" else (lambda a, b: a > b)
    status = "completed"
    start_time = time.monotonic()
    trained_before = pos.train_seconds
    progress = progress_bar(total_steps, pos.step, disable=quiet or not is_writer, unit="step", desc="train")
    if task.data_summary and is_writer and not quiet:
        progress.write(task.data_summary)
    board = tensorboard_writer(run_dir) if is_writer else None

    def elapsed() -> float:
        return trained_before + time.monotonic() - start_time

    def checkpoint() -> None:
        pos.train_seconds = elapsed()
        task_state = _task_state_of_all(task, world)
        if is_writer:
            save_checkpoint(run_dir, model, optimizer, task_state, pos)
        if world > 1:
            dist.barrier()

    def evaluate(epoch: float) -> bool:
        """Evaluate, log, keep the best weights; returns True when early stopping says stop."""
        model.eval()
        with torch.random.fork_rng(devices=[]), autocast:  # evaluation must not shift the training RNG
            metrics = task.evaluate(model)
        model.train()
        value = _from_rank0(metrics[task.metric], world)
        improved = pos.best is None or better(value, pos.best) or train.keep == "last"
        record = {
            "step": pos.step, "epoch": epoch, "split": "valid", **metrics,
            "train_loss": pos.loss_sum / pos.loss_count if pos.loss_count else None,
            "lr": optimizer.param_groups[0]["lr"], "best": improved, "elapsed_s": round(elapsed(), 2),
            "processes": world,
        }
        pos.loss_sum, pos.loss_count = 0.0, 0
        if improved:
            pos.best, pos.bad_evals = value, 0
            if is_writer:
                header = {"format": "lstmkit.model", "task": config.task, "step": pos.step, task.metric: value}
                runs.save_tensors(run_dir / runs.MODEL_FILE, model.state_dict(), header)
        else:
            pos.bad_evals += 1
        if board is not None:
            for key, number in record.items():
                if isinstance(number, float) and key != "elapsed_s":
                    board.add_scalar(f"valid/{key}" if key in metrics else key, number, pos.step)
            board.flush()
        if is_writer:
            pos.metrics_size = runs.append_metrics(run_dir, record)
            if not quiet:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
                kept = " (kept)" if train.keep == "last" else " (best)" if improved else ""
                progress.write(f"step {pos.step} epoch {epoch:g}: {shown}{kept}")
        return bool(train.patience) and pos.bad_evals >= train.patience

    try:
        model.train()
        while pos.epoch < train.epochs and status == "completed":
            task.start_epoch(pos.epoch, pos.batch)
            plan = task.train_plan(pos.epoch)
            window_count, window_time = 0, time.monotonic()
            while pos.batch < len(plan):
                _reseed_for_step(train.seed, pos.step, rank)
                batch = to_device(task.make_batch(plan[pos.batch], rank, world), device)
                lr = learning_rate(train, pos.step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    loss, count = task.loss(wrapped, batch)
                optimizer.zero_grad(set_to_none=True)
                _scaled_for_share(loss, count, world).backward()
                # The global gradient norm, clipped when asked (max_norm=inf measures without clipping).
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm or math.inf)
                # One collective per step carries the loss and every reason to stop, so all ranks agree.
                loss_value = loss.item()
                finite = math.isfinite(loss_value) and math.isfinite(grad_norm.item())
                over_budget = train.minutes > 0 and elapsed() - trained_before > 60 * train.minutes
                loss_sum, counted, nonfinite, stop, budget = _all_reduce(
                    [loss_value * count if finite else 0.0, count, float(not finite), float(stops.requested),
                     float(over_budget)], world)
                if nonfinite:
                    what = "loss" if not math.isfinite(loss_value) else "gradient"
                    raise TrainingStopped(
                        f"the training {what} became {loss_value if what == 'loss' else 'non-finite'} at step "
                        f"{pos.step + 1} (epoch {pos.epoch + 1}); the weights were not updated, and the last "
                        f"checkpoint in {run_dir} is intact. Lower the learning rate (--set train.lr=...) or "
                        "clip gradients (--set train.clip_norm=1), then start again or --resume"
                    )
                optimizer.step()
                pos.step += 1
                pos.batch += 1
                pos.loss_sum += loss_sum / max(counted, 1)
                pos.loss_count += 1
                window_count += int(counted)
                if not progress.disable and pos.step % max(1, train.log_every) == 0:
                    now = time.monotonic()
                    rate = window_count / max(now - window_time, 1e-9)
                    progress.set_postfix(
                        loss=f"{loss_sum / max(counted, 1):.4f}", rate=f"{rate:,.0f} {task.count_unit}/s"
                    )
                    window_count, window_time = 0, now
                progress.update(1)
                evaluated = bool(train.eval_every) and pos.step % train.eval_every == 0 and pos.batch < len(plan)
                epoch_now = round(pos.epoch + pos.batch / len(plan), 4)
                if evaluated and evaluate(epoch=epoch_now):
                    status = "early_stopped"
                if (stop or budget) and status == "completed":
                    status = "interrupted" if stop else "time_budget"
                if status == "time_budget" and pos.best is None and not evaluated:
                    # A budget shorter than the first evaluation still leaves a model to use.
                    evaluated = True
                    evaluate(epoch=epoch_now)
                if evaluated or status != "completed" or pos.step % max(1, train.checkpoint_every) == 0:
                    checkpoint()
                if status != "completed":
                    break
            if status != "completed":
                break
            # The epoch's end: evaluate, then checkpoint at (next epoch, batch 0).
            pos.epoch, pos.batch = pos.epoch + 1, 0
            if evaluate(epoch=pos.epoch):
                status = "early_stopped"
            checkpoint()
    finally:  # also when training stops with an error
        progress.close()
        if board is not None:
            board.close()
    if owns_group:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(status=status, step=pos.step, epoch=pos.epoch, best_metric=pos.best, run_dir=run_dir)


def tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter on RUN/tensorboard when the tensorboard package is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
