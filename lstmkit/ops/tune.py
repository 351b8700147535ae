"""Which implementation runs a kind of LSTM call under `backend="auto"`: measured on this machine, then cached.

Why measure: which path is fastest depends on the CPU, not only on the shapes. On a 2-core Intel Xeon without
AMX, our C kernel beat torch's oneDNN LSTM on every train step and oneDNN's bf16 was slower than fp32; on a
2-core AMD EPYC (Zen 5, AVX512_BF16), oneDNN's bf16 LSTM runs 4x its fp32 speed and MKL (behind the C kernel's
GEMMs) reaches half of oneDNN's fp32 GEMM speed (184 vs 409 GFLOP/s, 2048^3; BENCHMARKS.md). A threshold
measured on one of them is a guess on the other. So, like `torch.backends.cudnn.benchmark`, the first call of a
kind (`CallKind.key`: a bucket of B, T, I, H, layers, direction, projection, dtype and autocast, train or infer,
threads) runs a short rehearsal of each candidate path on random data of that shape and keeps the fastest.

Where the choice lives:
  1. choices pinned by a training run (`pin`): a run keeps the paths it started with for its whole life,
     so a resumed run computes exactly what the uninterrupted one would have (the engine records them);
  2. the cache file `$LSTMKIT_CACHE/tune/dispatch-<machine>.json` (default `~/.cache/lstmkit`), one per CPU model,
     ISA flags, torch version and lstmkit version; a damaged or foreign file is ignored with one warning and
     rewritten; a cache that cannot be written is kept in memory for the process;
  3. a measurement, now; or, with `LSTMKIT_TUNE=0`, under torch.distributed (ranks must not disagree) or when
     every candidate fails, the rule the caller gives (`lstmkit.ops.rule`). `LSTMKIT_TUNE=vendor` (or cpu,
     torch) takes that path wherever it can run the call, and the rule elsewhere.
A cache entry "*" (any kind) is honoured after the exact key: it pins one path everywhere, for tests and for
users who want one.

This module knows nothing of LSTMs beyond `CallKind`; `lstmkit.ops` says which paths can run a call.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_FORMAT = 1
# A rehearsal runs the call's own shape, up to REHEARSAL_STEPS steps: per-step costs change with T (oneDNN's train
# step at B=32, H=64 costs 2.1x as much per step at T=256 as at T=128 on a Zen 5, its workspace leaving the cache),
# so a much shorter rehearsal misjudges small layers. Large layers, whose steps are GEMM-bound and cost the same
# at any T, are cut to REHEARSAL_FLOPS of matrix work (but never below MIN_REHEARSAL_STEPS): that keeps the first
# call of config f (two bidirectional layers of 256, a train step) at 1.4 s instead of 2.1 (EPYC, Zen 5).
REHEARSAL_STEPS = 512
MIN_REHEARSAL_STEPS = 32
REHEARSAL_FLOPS = 10e9
REPEATS = 2  # timed runs per candidate after an untimed one; the fastest counts (noise only ever adds time)
BUDGET_SECONDS = 1.5  # past this, no further repeat starts: the best so far is taken
DROP_FACTOR = 2.0  # a candidate this much slower than the best after one run is not run again


def cache_root() -> Path:
    """lstmkit's cache directory: $LSTMKIT_CACHE, else ~/.cache/lstmkit (compiled kernels, tuned choices)."""
    return Path(os.environ.get("LSTMKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lstmkit"))


def _bucket(n: int) -> int:
    """n rounded up to a power of two: calls of similar size share a measurement."""
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class CallKind:
    """What a dispatch decision depends on. Sizes are exact here; `key` buckets them."""

    device: str
    dtype: str  # the parameters' dtype, e.g. "float32"
    autocast: str  # "" or the autocast dtype, e.g. "bfloat16"
    train: bool  # a backward will follow
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    proj_size: int
    layers: int
    bidirectional: bool
    packed: bool
    dropout: bool  # inter-layer dropout in training
    threads: int
    features: str = ""  # the cell's variant features (`Cell.features`, joined by "+"); "" for the standard cell

    def flops_per_step(self) -> float:
        """Matrix FLOPs of one time step of the whole stack (forward; a train step 3x): 2 B 4H (I + P) per layer and
        direction, plus 2 B H P for a projection."""
        P, D = self.proj_size or self.hidden_size, 2 if self.bidirectional else 1
        total = 0.0
        for layer in range(self.layers):
            width = self.input_size if layer == 0 else D * P
            total += D * 2 * self.batch * (4 * self.hidden_size * (width + P) + (self.hidden_size * P
                                                                                 if self.proj_size else 0))
        return total * (3 if self.train else 1)

    def rehearsal_steps(self) -> int:
        """How many steps a rehearsal of this call runs (see REHEARSAL_STEPS)."""
        affordable = int(REHEARSAL_FLOPS / max(self.flops_per_step(), 1.0))
        return min(self.steps, REHEARSAL_STEPS, max(MIN_REHEARSAL_STEPS, affordable))

    @property
    def key(self) -> str:
        if self.features:  # standard cells keep the keys they had before variants
            return f"{self._key()}|{self.features}"
        return self._key()

    def _key(self) -> str:
        return "|".join([
            self.device, self.dtype, self.autocast or "-", "train" if self.train else "infer",
            f"B{_bucket(self.batch)}", f"T{_bucket(self.steps)}", f"I{_bucket(self.input_size)}",
            f"H{_bucket(self.hidden_size)}", f"P{_bucket(self.proj_size) if self.proj_size else 0}",
            f"L{self.layers}", "bi" if self.bidirectional else "uni", "packed" if self.packed else "padded",
            "dropout" if self.dropout else "-", f"threads{self.threads}",
        ])


@functools.lru_cache(maxsize=1)
def cpu_description() -> tuple[str, frozenset[str]]:
    """This CPU's model name and ISA flags, from /proc/cpuinfo (x86 "flags", Arm "Features"); read once."""
    model, flags = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "CPU part") and not model:
                model = value.strip()
            elif name in ("flags", "Features") and not flags:
                flags = value.strip()
    return model or platform.processor() or platform.machine(), frozenset(flags.split())


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, str]:
    """What a cached choice is valid for: this CPU model and ISA, this torch, this lstmkit (read once)."""
    import lstmkit  # at call time: lstmkit's package imports this module while it is being set up

    model, flags = cpu_description()
    return {"cpu": model, "arch": platform.machine(),
            "isa": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12], "torch": torch.__version__,
            "lstmkit": lstmkit.__version__}


def measure(candidates: list[str], run: Callable[[str], object], clock: Callable[[], float] = time.perf_counter,
            repeats: int = REPEATS, budget: float = BUDGET_SECONDS) -> dict[str, float]:
    """Seconds of the fastest timed run of each candidate (inf where it raised), after one untimed run of each.
    Interleaved, so a drift in machine load hits all alike; one that is DROP_FACTOR slower than the best is not
    run again; the timed rounds are as many as fit in `budget` seconds at the untimed round's cost (at least one),
    and none starts past it."""
    best = dict.fromkeys(candidates, math.inf)
    start, alive = clock(), list(candidates)
    for path in candidates:  # untimed: a first call pays one-time costs (oneDNN builds its primitives, ~0.5 s)
        try:
            run(path)
        except (RuntimeError, MemoryError, ValueError):
            best[path] = math.nan
    alive = [p for p in alive if best[p] == best[p]]
    # As many timed rounds as the budget left allows at the untimed round's cost (at least one, at most `repeats`).
    round_cost = max(clock() - start, 1e-9)
    repeats = max(1, min(repeats, int((budget - round_cost) / round_cost)))
    for _ in range(repeats):
        for path in alive:
            began = clock()
            try:
                run(path)
            except (RuntimeError, MemoryError, ValueError):
                best[path] = math.nan  # marked: never chosen, never run again
                continue
            best[path] = min(best[path], clock() - began)
        fastest = min((s for s in best.values() if s == s), default=math.inf)
        alive = [p for p in alive if best[p] == best[p] and best[p] <= DROP_FACTOR * fastest]
        if len(alive) <= 1 or clock() - start > budget:
            break
    return {p: (math.inf if s != s else s) for p, s in best.items()}


def fastest(times: dict[str, float]) -> str | None:
    """The candidate with the least time, or None when all failed."""
    finite = {p: s for p, s in times.items() if math.isfinite(s)}
    return min(finite, key=finite.get) if finite else None  # type: ignore[arg-type]


def _setting() -> str:
    return os.environ.get("LSTMKIT_TUNE", "1").strip().lower()


def tuning_enabled() -> bool:
    """False with LSTMKIT_TUNE=0 (or a path's name, below), and under torch.distributed, where ranks timing apart
    could pick different paths (and the engine records rank 0's run only); the rule decides there."""
    if _setting() in ("0", "off", "false", "no") or forced_path():
        return False
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1


def forced_path() -> str | None:
    """LSTMKIT_TUNE=vendor|cpu|torch: that path wherever it can run a call (the rule elsewhere), never measuring;
    for comparing paths on a whole program, and for the test suite's runs on one path."""
    setting = _setting()
    return setting if setting in ("vendor", "cpu", "torch") else None


class Tuner:
    """The cache of choices (file and memory) and the choices pinned by a run. `decide` is the one entry."""

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self._path = path
        self.clock = clock
        self._choices: dict[str, dict] | None = None  # loaded at first use
        self._pinned: dict[str, str] = {}
        self._decided: dict[str, str] = {}  # every decision of this process, for a run to record
        self._lock = threading.RLock()
        self._writable = True

    @property
    def path(self) -> Path:
        if self._path is None:
            key = hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]
            return cache_root() / "tune" / f"dispatch-{key}.json"
        return self._path

    # --- the file -------------------------------------------------------------------------------------------

    def _load(self) -> dict[str, dict]:
        if self._choices is not None:
            return self._choices
        self._choices = {}
        path = self.path
        if not path.exists():
            return self._choices
        try:
            document = json.loads(path.read_text())
            ok = (isinstance(document, dict) and document.get("format") == CACHE_FORMAT
                  and document.get("machine") == machine() and isinstance(document.get("choices"), dict)
                  and all(isinstance(v, dict) and isinstance(v.get("path"), str)
                          for v in document["choices"].values()))
            if not ok:
                raise ValueError("written for another machine, torch or lstmkit, or not a choices file")
            self._choices = dict(document["choices"])
        except (OSError, ValueError) as e:
            warnings.warn(f"lstmkit: ignoring the dispatch cache {path} ({e}); it will be rewritten", RuntimeWarning,
                          stacklevel=4)
            self._save()
        return self._choices

    def _save(self) -> None:
        if not self._writable:
            return
        path = self.path
        document = {"format": CACHE_FORMAT, "machine": machine(), "choices": self._choices or {}}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(document, f, indent=1, sort_keys=True)
            os.replace(tmp, path)  # processes writing at once leave one whole file, never a mix
        except OSError as e:
            self._writable = False
            warnings.warn(f"lstmkit: cannot write the dispatch cache {path} ({e}); choices are kept for this process "
                          "only (set LSTMKIT_CACHE to a writable folder)", RuntimeWarning, stacklevel=4)

    # --- decisions --------------------------------------------------------------------------------------------

    def cached(self, key: str) -> str | None:
        """The choice already made for a key: pinned by a run, else named by LSTMKIT_TUNE, else in the cache file
        (each: the exact key, then "*"); None when it is still to be measured."""
        pinned = self._pinned.get(key) or self._pinned.get("*") or forced_path()
        if pinned:
            return pinned
        choices = self._load()
        entry = choices.get(key) or choices.get("*")
        return entry["path"] if entry else None

    def decide(self, key: str, candidates: list[str], rule: str, rehearse: Callable[[str], object] | None) -> str:
        """The choice for `key` (a `CallKind.key`, or a machine fact such as "gemm|..."): pinned, cached,
        measured by timing `rehearse(candidate)` (and cached), or `rule`. Only a candidate is returned."""
        with self._lock:
            path = self.cached(key)
            if path in candidates:
                self._decided[key] = path
                return path
            if rehearse is None or not tuning_enabled():
                self._decided[key] = rule
                return rule
            times = measure(candidates, rehearse, self.clock)
            chosen = fastest(times) or rule
            self._load()[key] = {"path": chosen, "ms": {p: round(s * 1e3, 3) for p, s in times.items()
                                                        if math.isfinite(s)}}
            self._save()
            self._decided[key] = chosen
            return chosen

    def pin(self, choices: dict[str, str]) -> None:
        """Make these choices win over the cache and measurement (a resumed run's recorded paths)."""
        self._pinned.update({k: v for k, v in choices.items() if isinstance(k, str) and isinstance(v, str)})

    def unpin(self) -> None:
        self._pinned.clear()

    def decisions(self) -> dict[str, str]:
        """Every key decided in this process and its path (pinned ones included), for a run to record."""
        return dict(self._decided)

    def entries(self) -> dict[str, dict]:
        return dict(self._load())


_tuner = Tuner()


def tuner() -> Tuner:
    return _tuner


@contextlib.contextmanager
def using(replacement: Tuner) -> Iterator[Tuner]:
    """Run with another Tuner (tests: a fake clock, a cache file of their own)."""
    global _tuner
    saved, _tuner = _tuner, replacement
    try:
        yield replacement
    finally:
        _tuner = saved
