"""The run directory, the unit users move around, and crash-safe files inside it.

    RUN/config.json             the resolved configuration, with the format version and lstmkit's version
    RUN/model.safetensors       the best weights so far (what evaluate / predict / generate load)
    RUN/checkpoint.safetensors  resume state: last weights, optimiser state, RNG states, data position
    RUN/metrics.jsonl           one JSON object per evaluation
    RUN/<task artifacts>        e.g. vocab.json

Every file is written atomically: a temporary file in the same directory, fsync, rename over the old one,
fsync the directory. A crash (even SIGKILL) leaves the old file or the new one, never half of one. The
checkpoint is a single safetensors file whose JSON metadata holds everything that is not a tensor, so one
rename makes the whole resume state consistent. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

import lstmkit
from lstmkit.errors import RunDirError

FORMAT = "lstmkit.run"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
ENSEMBLE_FILE = "ensemble.json"  # an ensemble run's record of its members (lstmkit/ensemble.py)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def _reason(error: OSError, path: Path) -> tuple[str, str]:
    """What an OSError of a write means to the user, in a few words, and what to do about it."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full", "Free some space, then rerun with --resume"
    if error.errno == errno.ENOENT:
        return f"its folder {path.parent} is missing", "Create it (or give another folder), then rerun"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return error.strerror or str(error), f"Make {path.parent} writable, then rerun with --resume"
    return error.strerror or str(error), "Fix that, then rerun with --resume"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once; on failure the old file is untouched and the error says so."""
    path = Path(path)
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as error:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        reason, advice = _reason(error, path)
        raise RunDirError(f"could not write {path}: {reason}; {kept}. {advice}") from None
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable. Not every platform lets a directory be opened for this.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """safetensors file with `metadata` stored as JSON strings in its header."""
    contiguous: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        # safetensors refuses two names on one storage (tied weights: embedding and output layer); the second
        # name gets its own copy, and loading both into a tied model writes the same values twice.
        storage = t.untyped_storage().data_ptr()
        contiguous[name] = t.clone() if storage in storages else t
        storages.add(storage)
    header = {key: json.dumps(value) for key, value in metadata.items()}
    atomic_write_bytes(path, safetensors_bytes(contiguous, metadata=header))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a file written by `save_tensors`; a damaged file is a RunDirError."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        metadata = {key: json.loads(value) for key, value in header.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirError(
            f"{path} is damaged or not a safetensors file ({detail}); delete it to start over, "
            "or restore it from a copy"
        ) from None
    return tensors, metadata


def write_json(path: Path, document: dict[str, Any]) -> None:
    """A small JSON file of a run directory (config, labels, ...), written atomically."""
    atomic_write_bytes(Path(path), (json.dumps(document, indent=2) + "\n").encode())


def read_json(path: Path, kind: str) -> dict[str, Any]:
    """A JSON object written by `write_json` whose "format" is `kind`; missing or damaged: a RunDirError."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; the run directory is incomplete") from None
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
        raise RunDirError(f"{path} is damaged ({error}); it cannot be read as JSON") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise RunDirError(f"{path} is not the file lstmkit expects there (no \"format\": \"{kind}\")")
    return document


def write_config(run_dir: Path, config_dict: dict[str, Any]) -> None:
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "lstmkit_version": lstmkit.__version__}
    write_json(Path(run_dir) / CONFIG_FILE, document | config_dict)


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run, or the start of one: a config, a checkpoint, an ensemble's record or member."""
    run_dir = Path(run_dir)
    held = (CONFIG_FILE, CHECKPOINT_FILE, ENSEMBLE_FILE)
    return any((run_dir / name).exists() for name in held) or any(run_dir.glob("member-*"))


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.json of a run directory, checked for format and version."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; train one with `lstmkit train ... --out {run_dir}`")
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not an lstmkit run directory: it has no {CONFIG_FILE}")
    document = read_json(path, FORMAT)
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RunDirError(
            f"{run_dir} was written by lstmkit {document.get('lstmkit_version', '?')} (run format {version}); "
            f"this lstmkit {lstmkit.__version__} reads format {FORMAT_VERSION}: upgrade lstmkit"
        )
    return document


def load_weights(model: torch.nn.Module, path: Path) -> dict[str, Any]:
    """Load a state dict saved by `save_tensors` into `model`, with every mismatch spelled out."""
    tensors, metadata = load_tensors(path)
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors)
    return metadata


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(tensors[k].shape)} (model expects {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}")
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:3])}{'...' if len(wrong) > 3 else ''}")
    if problems:
        raise RunDirError(
            f"the weights in {source} do not fit the model its config.json describes ({'; '.join(problems)}); "
            "was the file copied from another run?"
        )


def append_metrics(run_dir: Path, record: dict[str, Any]) -> int:
    """Append one line to metrics.jsonl, flushed to disk; returns the file's new size in bytes."""
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            return handle.tell()
    except OSError as error:
        # A part of the line may be on disk: a resume truncates the file to its checkpoint's size, dropping it.
        reason, advice = _reason(error, path)
        raise RunDirError(f"could not append to {path}: {reason}; the last checkpoint is intact. {advice}") from None


def truncate_metrics(run_dir: Path, size: int) -> None:
    """Drop lines written after the checkpoint being resumed (they will be written again)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as handle:
                handle.truncate(size)
    except OSError as error:
        raise RunDirError(f"could not cut {path} back to its checkpoint's {size} bytes: {_reason(error, path)[0]}; "
                          "nothing was trained. Move it away (it is rewritten from the checkpoint on), then rerun"
                          ) from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise RunDirError(f"{path} line {number} is not JSON; the file is damaged") from None
    return records
