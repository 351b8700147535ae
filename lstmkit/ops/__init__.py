"""LSTM implementations with one signature (see `lstm_torch.lstm_layer`); this module only picks one.

Backends a user can name:
  "torch"  lstmkit's portable implementation (torch ops + autograd, any device): the one checked
           against the NumPy oracle, and the one that records gates.
  "auto"   the fastest correct path per call: torch's fused vendor kernel (`lstm_vendor`, what
           torch.nn.LSTM runs) where it computes exactly the standard LSTM, else "torch".
  "op"     each layer is one `torch.library` custom op with a hand-written backward (`lstm_op`): what
           torch.compile(fullgraph=True) and torch.export see as one node per layer, whatever T is.
           Packed input and gate recording go to "torch". On the CPU in float32 its time loops are the
           C kernel's.
  "cpu"    the fused CPU kernel (`lstm_cpu`: the time loops of forward and BPTT in C around MKL's GEMMs,
           both cores busy). What it cannot run (gate recording, GPU tensors, other dtypes, a machine
           without a C compiler) goes to "torch".
"auto" on the CPU in float32 takes the C kernel where it measured faster than torch's fused kernel (train steps
and bf16-autocast calls of 8 or more sequences, projections, packed input; BENCHMARKS.md), torch's elsewhere.
Under torch.compile and torch.export, "auto" and "cpu" run as "op", which those can trace.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lstmkit.ops import lstm_cpu, lstm_op, lstm_torch

BACKENDS = ("auto", "torch", "op", "cpu")


def _compiling() -> bool:
    """Whether torch.compile or torch.export is tracing this call (torch >= 2.3 can say; older cannot)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def check_backend(name: object) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    return name  # type: ignore[return-value]


def pick(
    backend: str,
    *,
    device: torch.device,
    projected: bool,
    recording: bool,
    training: bool,
    packed: bool = False,
    dropout: bool = False,
    dtype: torch.dtype = torch.float32,
    needs_grad: bool = False,
    batch: int = 0,
) -> str:
    """"vendor" or "torch" (lstmkit's own layers, see `layer_function`) for one call of a full LSTM stack.

    dtype: the parameters' dtype; needs_grad: whether a backward will follow; batch: sequences in the call."""
    check_backend(backend)
    if backend in ("torch", "op", "cpu") or recording or _compiling():
        return "torch"
    if device.type == "cpu" and dtype == torch.float32 and lstm_cpu.available():
        # The C kernel against torch.nn.LSTM on oneDNN (benchmarks/bench_lstm.py, 2 cores, 2026-11-23):
        # - fp32 train steps 1.1-2.1x; projections 1.5-1.8x; under bf16 autocast (oneDNN then computes in
        #   bf16, at half this CPU's fp32 speed; the kernel in fp32) 1.3-2.9x.
        # - fp32 inference of a plain batch 0.78-1.10x over two runs: oneDNN keeps it.
        # - below 8 sequences (4 rows per core) oneDNN is faster: batch 1, T=100, H=256: 0.88x for a train
        #   step, 0.77x for inference; batch 4-8: even.
        if packed or projected:
            return "torch"
        if batch >= 2 * lstm_cpu.MIN_ROWS_PER_THREAD and (needs_grad or torch.is_autocast_enabled("cpu")):
            return "torch"
        return "vendor"
    # oneDNN takes no packed input: torch then runs a native fallback 4x slower than lstmkit's packed rows
    # (train step, B=32 T<=300 I=128 H=64: 301 ms vs 80 ms; bidirectional 510 vs 128; 2 cores, 2026-11-23).
    if packed and device.type == "cpu":
        return "torch"
    # oneDNN refuses projections, and torch then runs a native fallback of its own; without the C kernel,
    # our portable path is kept there (0.98-1.02x that fallback, config e of bench_lstm.py).
    if projected:
        return "torch"
    # cuDNN's backward refuses eval mode; lstmkit promises gradients in eval mode too.
    if device.type == "cuda" and not training and torch.is_grad_enabled():
        return "torch"
    # cuDNN draws dropout masks from a state of its own that no checkpoint captures; with F.dropout the
    # masks come from torch's generator, so an interrupted and resumed run repeats them exactly.
    if device.type == "cuda" and training and dropout:
        return "torch"
    return "vendor"


def layer_function(backend: str, packed: bool = False, recording: bool = False) -> Callable:
    """The function that runs one LSTM layer in one direction with lstmkit's own code."""
    check_backend(backend)
    if recording:
        return lstm_torch.lstm_layer
    # Under torch.compile / torch.export, "auto" and "cpu" become the op: one traceable node per layer (the C
    # kernel behind a ctypes call, or torch's fused LSTM, would break the graph), running the same C loops.
    if (backend == "op" or (backend in ("auto", "cpu") and _compiling())) and not packed:
        return lstm_op.layer
    if backend in ("cpu", "auto"):
        return lstm_cpu.lstm_layer  # itself hands what it cannot run to lstm_torch
    return lstm_torch.lstm_layer


def step_function(backend: str) -> Callable:
    """The function that advances an LSTM state by one step for `backend` (used by LSTMCell)."""
    check_backend(backend)
    return lstm_torch.lstm_step
