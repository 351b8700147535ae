"""LSTM implementations with one signature (see `lstm_torch.lstm_layer`: rows, batch sizes, initial state and one
`cell.Cell`), and `dispatch`, the one place that decides which of them runs a call.

Paths (what `dispatch` returns):
  "vendor" torch's fused LSTM (`lstm_vendor`: oneDNN on the CPU, cuDNN on CUDA, what torch.nn.LSTM runs) with
           lstmkit's weights; only for what it computes exactly (the standard stack, no gate recording).
  "cpu"    the fused CPU kernel (`lstm_cpu`: the time loops of forward and BPTT in C, both cores busy).
  "op"     each layer one `torch.library` custom op with a hand-written backward (`lstm_op`): what
           torch.compile(fullgraph=True) and torch.export see as one node per layer, whatever T is.
  "torch"  lstmkit's portable implementation (torch ops + autograd, any device): the one checked against the
           NumPy oracle, and the one that records gates.

Backends a user names (`lstmkit.LSTM(backend=...)`): a path by name ("torch", "op", "cpu"), or "auto": the fastest
path that computes the call exactly, measured on this machine the first time it meets a kind of call and cached
(`tune`); with LSTMKIT_TUNE=0 (and under torch.distributed) the measured-elsewhere `rule` instead. Under
torch.compile and torch.export, "auto" and "cpu" run as "op", which those can trace; packed input and gate
recording always take "torch". Variant cells (`Cell.features`, part of the call's kind and its tuning key) never
take "vendor" (torch's kernel computes the standard cell only), and "cpu" only for the features the C kernel lists
in `lstm_cpu.SUPPORTS`; "op" only for those in `lstm_op.SUPPORTS` (today every feature).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lstmkit.ops import lstm_cpu, lstm_op, lstm_torch, tune
from lstmkit.ops.cell import FEATURES, STACK_FEATURES, Cell
from lstmkit.ops.tune import CallKind

BACKENDS = ("auto", "torch", "op", "cpu")
PATHS = ("vendor", "cpu", "op", "torch")
__all__ = ["BACKENDS", "FEATURES", "PATHS", "CallKind", "Cell", "check_backend", "dispatch", "layer_function", "rule",
           "step_function"]


def _compiling() -> bool:
    """Whether torch.compile or torch.export is tracing this call (torch >= 2.3 can say; older cannot)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def check_backend(name: object) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    return name  # type: ignore[return-value]


def _cpu_kernel_fits(call: CallKind) -> bool:
    """The C kernel computes float32 parameters on the CPU, with float32 input or under CPU autocast, for the
    variant features it lists. (The standard cell's "" asks no set: this runs on every call of "auto".)"""
    return (call.device == "cpu" and call.dtype == "float32" and lstm_cpu.available()
            and (not call.features or _computes(lstm_cpu.SUPPORTS, call.features.split("+"))))


def _computes(supported: frozenset[str], features: tuple[str, ...] | list[str]) -> bool:
    """Whether a layer-by-layer path whose cells compute the features `supported` runs a call with `features`
    (the stack features are applied between its layers by lstmkit.LSTM)."""
    return supported.issuperset(set(features) - STACK_FEATURES)


def candidates(call: CallKind, training: bool) -> list[str]:
    """The paths that compute this call exactly, for "auto" to choose from. Where the C kernel runs, the portable
    path is not among them: on the 2-core EPYC (Zen 5) it lost to the kernel on every fp32 config of make bench
    (1.2-3.4x), and where it beat the kernel under bf16 (config c: 305 vs 324 ms a train step) oneDNN's bf16 LSTM
    beat both by 2.5x (BENCHMARKS.md); rehearsing it would add a third to the first call's cost."""
    paths = ["cpu"] if _cpu_kernel_fits(call) else ["torch"]
    # cuDNN's backward refuses eval mode (lstmkit promises gradients in eval mode too), and cuDNN draws dropout
    # masks from a state of its own that no checkpoint captures (F.dropout's come from torch's generator, so an
    # interrupted and resumed run repeats them exactly).
    vendor_fits = call.device == "cpu" or not ((not training and call.train) or (training and call.dropout))
    if vendor_fits and not call.features:  # torch's kernel computes the standard cell only
        paths.insert(0, "vendor")
    return paths


def _has_bf16_hardware() -> bool:
    flags = tune.cpu_description()[1]
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def rule(call: CallKind, training: bool) -> str:
    """"auto"'s choice without measuring (LSTMKIT_TUNE=0, torch.distributed): what measured best on the CPUs
    tried so far (BENCHMARKS.md). A guess on any other machine; the measurement is what "auto" trusts."""
    if call.features:  # torch's kernel computes the standard cell only
        return "cpu" if _cpu_kernel_fits(call) else "torch"
    if _cpu_kernel_fits(call):
        # Projections and packed input: the kernel 1.4-1.8x oneDNN's fallbacks on Xeon and EPYC alike.
        if call.packed or call.proj_size:
            return "cpu"
        if call.autocast:
            # oneDNN's bf16 LSTM: 4x its fp32 speed on a Zen 5 with AVX512_BF16 and 3.3x on a Xeon with AMX
            # (configs b, c), slower than fp32 on a Xeon without either, where the kernel was 1.3-2.9x faster. At
            # H=64 (config a) the kernel's train step beat it on all three CPUs (1.5-1.7x nn.LSTM); H=128 and the
            # sizes between 64 and 256 are unmeasured.
            if not _has_bf16_hardware():
                return "cpu"
            small = call.train and call.hidden_size <= 64 and call.batch >= 2 * lstm_cpu.MIN_ROWS_PER_THREAD
            return "cpu" if small else "vendor"
        # Train steps of 8 sequences or more: the kernel 1.1-2.1x on the Xeon; below 8, and fp32 inference of a
        # plain batch, oneDNN.
        return "cpu" if call.train and call.batch >= 2 * lstm_cpu.MIN_ROWS_PER_THREAD else "vendor"
    # oneDNN takes no packed input and no projection: torch then runs a native fallback, 4x slower than lstmkit's
    # packed rows (train step, B=32 T<=300 I=128 H=64: 301 ms vs 80; 2 cores, Xeon, 2026-11-23).
    if call.device == "cpu" and (call.packed or call.proj_size):
        return "torch"
    return "vendor" if "vendor" in candidates(call, training) else "torch"


def dispatch(backend: str, call: Callable[[], CallKind], *, packed: bool, training: bool, recording: bool = False,
             rehearse: Callable[[str], object] | None = None, features: tuple[str, ...] = ()) -> str:
    """The path ("vendor", "cpu", "op" or "torch") that runs one call of a full LSTM stack.

    call: makes the call's description, only where the choice needs it (never while torch.compile traces, where
    its sizes are symbolic); packed: PackedSequence input; training: the module's mode (cuDNN's limits depend on
    it); recording: gates are being traced; rehearse(path): runs a call of this kind on that path (random data),
    for "auto" to time when it first meets the kind; features: the cell's variant features (`Cell.features`)."""
    check_backend(backend)
    if recording or backend == "torch":
        return "torch"
    if backend == "op" or _compiling():  # one traceable node per layer; the op takes full-length input only
        return "torch" if packed or not _computes(lstm_op.SUPPORTS, features) else "op"
    kind = call()
    if backend == "cpu":
        return "cpu" if _cpu_kernel_fits(kind) else "torch"
    paths = candidates(kind, training)
    if len(paths) == 1:
        return paths[0]
    return tune.tuner().decide(kind.key, paths, rule(kind, training), rehearse)


def layer_function(path: str) -> Callable:
    """The function that runs one layer in one direction on a path other than "vendor" (same signature)."""
    return {"cpu": lstm_cpu.lstm_layer, "op": lstm_op.layer, "torch": lstm_torch.lstm_layer}[path]


def step_function(backend: str) -> Callable:
    """The function that advances an LSTM state by one step for `backend` (used by LSTMCell): (xw_t, h, c, cell)."""
    check_backend(backend)
    return lstm_torch.lstm_step
