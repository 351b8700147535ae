"""The fused CPU LSTM layer (`backend="cpu"`): a small plain-C time loop (`csrc/lstm_cpu.c`) around MKL.

Same signature as `lstm_torch.lstm_layer` (packed rows, reverse, projection, initial states, one `Cell`), for
the standard cell and its variants (`SUPPORTS`: peepholes, coupled gates, cell clip and zoneout of c, elementwise
terms in the C row functions; recurrent dropout and zoneout of h, terms of the C time loop on rows of h; layer
normalisation, per-row passes of the C loop around the rows, and one threaded C pass over all rows for LN(W x_t)).
What runs where:
  torch, before the loop  the input projection W x_t of every step: one GEMM (the loop adds b); then its LN, rows
                          in C (`layer_norm_rows`)
  C, per step             a_t += U h_{t-1} (one MKL GEMM on U packed once; with LN into rows of its own, normalised
                          and added), then every gate, the cell and h_t in one vectorised pass over the row (with
                          LN, m_t = o tanh(LN(c_t)) in a second); h_t = R h_t with a projection
  C, BPTT per step        the gate gradients in one pass (with LN the passes back through LN(c_t) and LN(U h)),
                          then dh_{t-1} = U^T dz_t
  torch, after the loop   dx, dW, dU, dR, db: one GEMM each over all steps (before them LN(W x)'s backward, in C)
Sequences are independent, so each core takes a block of rows and runs the whole time loop on it.

Why C and how it is built: the torch-ops loop pays ~10 Python-dispatched ops per step, which on small
layers costs more than the maths (config a of `benchmarks/bench_lstm.py`: 500 steps). The C file needs
no torch or Python headers; it is compiled at first use with the system C compiler (`cc`, or $CC) into a
cache directory ($LSTMKIT_CACHE, else ~/.cache/lstmkit) in about half a second, and loaded with ctypes.
The per-step GEMMs are MKL's, found in the libtorch_cpu that torch has loaded already (x86-64 wheels ship MKL);
the big GEMMs before and after the loop run in the library `gemm_choice` measured fastest on this machine.
Without a compiler, without MKL, or with LSTMKIT_NO_C_KERNEL=1, `available()` is False and every call
goes to the portable backend, so nothing else changes. So do gate traces and torch.func transforms; a
backward with create_graph=True (double backward) re-runs the layer on the portable path to differentiate it.

Compiled with -march=native for the machine that runs it; the cache key holds the CPU's flags, so a
shared home directory on mixed machines builds one library per kind of CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from lstmkit.ops import lstm_torch, tune
from lstmkit.ops.cell import FEATURES, LAYER_NORM_EPS, Cell

SOURCE = Path(__file__).with_name("csrc") / "lstm_cpu.c"
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-fopenmp"]
_MKL_SYMBOLS = ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute", "MKL_Set_Num_Threads_Local")
# Below this many rows per thread a second thread costs more than it saves (measured, see BENCHMARKS.md).
MIN_ROWS_PER_THREAD = 4

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_signature() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}"


def cache_dir() -> Path:
    return tune.cache_root() / "kernels"


def _compile(compiler: list[str]) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:20]
    name = f"lstm_cpu_{key}.so"
    for directory in (cache_dir(), Path(tempfile.gettempdir()) / f"lstmkit-{os.getuid()}" / "kernels"):
        if (directory / name).exists():
            return directory / name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Build beside the target, then rename: processes that start together never load half a file.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        except OSError:
            continue  # a read-only home: the temporary directory instead
        os.close(fd)
        try:
            result = subprocess.run([*compiler, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                    timeout=120)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
                raise RuntimeError(f"{' '.join(compiler)} failed: {last}")
            os.chmod(tmp, 0o755)  # mkstemp makes it 0600; a cache shared between users must be readable
            os.replace(tmp, directory / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return directory / name
    raise RuntimeError(f"cannot write the kernel cache ({cache_dir()}); set LSTMKIT_CACHE to a writable folder")


def _mkl_addresses() -> list[int]:
    lib_dir = Path(torch.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libtorch_cpu.*"))
    if not candidates:
        raise RuntimeError("torch has no libtorch_cpu library to take MKL from")
    torch_cpu = ctypes.CDLL(str(candidates[0]))  # already loaded by torch: this only opens a handle
    try:
        return [ctypes.cast(getattr(torch_cpu, name), ctypes.c_void_p).value for name in _MKL_SYMBOLS]
    except AttributeError as e:
        raise RuntimeError("this torch build has no MKL packed GEMM (x86-64 Linux wheels have it)") from e


def _load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (reason in `unavailable_reason()`). Compiles once per process."""
    if "lib" in _state:  # every call after the first: no lock
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        start = time.perf_counter()
        lib, reason = None, ""
        try:
            if os.environ.get("LSTMKIT_NO_C_KERNEL", "0") not in ("", "0"):
                raise RuntimeError("disabled by LSTMKIT_NO_C_KERNEL")
            if sys.platform != "linux":
                raise RuntimeError(f"the C kernel is built for Linux only, not {sys.platform}")
            cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if not cc:
                raise RuntimeError("no C compiler found (install gcc, or set CC)")
            compiler = shlex.split(cc)  # CC may carry words: "ccache gcc"
            addresses = _mkl_addresses()
            lib = ctypes.CDLL(str(_compile(compiler)))
            lib.lk_init(*[ctypes.c_void_p(a) for a in addresses])
            lib.lk_forward.restype = lib.lk_backward.restype = ctypes.c_int
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            lib, reason = None, str(e) or type(e).__name__
        _state.update(lib=lib, reason=reason, seconds=time.perf_counter() - start)
        return lib


def available() -> bool:
    """True when the C kernel is built and loaded (building it now if needed)."""
    return _load() is not None


def unavailable_reason() -> str:
    _load()
    return str(_state["reason"])


def load_seconds() -> float:
    """Seconds the first `available()` call took in this process (compile or cache load)."""
    _load()
    return float(_state["seconds"])  # type: ignore[arg-type]


# The variant features (`Cell.features`) the C kernel computes; a cell with any other runs on lstm_torch.
SUPPORTS: frozenset[str] = frozenset({"peephole", "coupled_gates", "cell_clip", "layer_norm", "recurrent_dropout",
                                      "zoneout"})
assert set(FEATURES) >= SUPPORTS


def supports(x: Tensor, cell: Cell) -> bool:
    """Whether the C kernel can run a layer: a cell whose features it has (`SUPPORTS`), float32 weights on the
    CPU, and float32 input (or bf16/fp16 input under CPU autocast: the time loop then computes in float32, the big
    GEMMs as `gemm_choice` says)."""
    if not SUPPORTS.issuperset(cell.features):
        return False
    if not all(w is None or (w.device.type == "cpu" and w.dtype == torch.float32) for w in cell.tensors()):
        return False
    if x.device.type != "cpu" or not (x.dtype == torch.float32 or (x.dtype in (torch.bfloat16, torch.float16)
                                                                   and torch.is_autocast_enabled("cpu"))):
        return False
    return available()


def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _zoneout(value: Tensor | float | None) -> Tensor | float | None:
    """A zoneout argument as the kernel reads it: a mask, a rate > 0, or None (a rate of 0 is no zoneout, and the
    kernel keeps no states for it)."""
    return value if isinstance(value, Tensor) or value else None


def _masks(h_mask: Tensor | None, zoneout_h: Tensor | float | None, zoneout_c: Tensor | float | None,
           rows: tuple[int, int, int, int]) -> tuple:
    """The C arguments of recurrent dropout and zoneout (`Cell.h_mask`, `zoneout_h`, `zoneout_c`): (h_mask, zh mask,
    zh rate, zc mask, zc rate, the tensors to hold), a zoneout given as a mask [N, *] (training) or a rate (eval).
    rows: (B, N, P, H), for the shape checks that must come before any pointer reaches C."""
    B, N, P, H = rows
    expected = {"h_mask": (B, P), "zoneout_h": (N, P), "zoneout_c": (N, H)}
    held, args = [], []
    for name, value in (("h_mask", h_mask), ("zoneout_h", zoneout_h), ("zoneout_c", zoneout_c)):
        if isinstance(value, Tensor):
            if tuple(value.shape) != expected[name] or value.dtype != torch.float32 or value.device.type != "cpu":
                raise ValueError(f"lstmkit C kernel: {name} is a {value.dtype} {tuple(value.shape)} on {value.device}, "
                                 f"expected float32 {list(expected[name])} on the CPU; pass the masks "
                                 "lstmkit.LSTM draws for the call (or run the cell on backend='torch')")
            value = value.detach().contiguous()
            held.append(value)
            args.append(_ptr(value))
        else:
            args.append(_ptr(None))
        if name != "h_mask":
            args.append(ctypes.c_float(0.0 if value is None or isinstance(value, Tensor) else float(value)))
    return (*args, held)


def _plan(batch_sizes: list[int]) -> tuple[Tensor, Tensor, int, Tensor]:
    """int64 batch sizes and row offsets per step, the thread count and the row split between threads.

    The split balances the work (steps per row), not the rows: packed rows are sorted longest first."""
    sizes = torch.tensor(batch_sizes, dtype=torch.int64)
    offsets = torch.zeros_like(sizes)
    offsets[1:] = sizes.cumsum(0)[:-1]
    B = batch_sizes[0]
    threads = max(1, min(torch.get_num_threads(), B // MIN_ROWS_PER_THREAD, 64))
    if threads == 1:
        return sizes, offsets, 1, torch.tensor([0, B], dtype=torch.int64)
    # lengths[b] = steps that hold row b = steps whose size exceeds b (O(B + T)); cumulative work, cut in equal parts
    lengths = len(batch_sizes) - torch.bincount(sizes, minlength=B + 1).cumsum(0)[:B]
    work = lengths.cumsum(0)
    cuts = torch.searchsorted(work, work[-1] * torch.arange(1, threads) / threads)
    splits = torch.cat([torch.tensor([0]), cuts + 1, torch.tensor([B])]).clamp(max=B)
    splits = torch.unique_consecutive(splits)
    return sizes, offsets, len(splits) - 1, splits.to(torch.int64)


def _check(gates: Tensor, batch_sizes: list[int], h0: Tensor, c0: Tensor, U: Tensor, R: Tensor | None,
           *others: Tensor | None, blocks: int = 4, peephole: Tensor | None = None,
           layer_norm: tuple[Tensor, Tensor] | None = None) -> None:
    """Shapes and dtypes, before any pointer reaches C (a mismatch there corrupts memory instead of raising).
    blocks: the gate blocks of a row (4, or 3 with coupled gates); layer_norm: (ln_h [2, GH], ln_c [2, H])."""
    N, G = gates.shape
    H, P = G // blocks, U.shape[1] if U.dim() == 2 else -1
    B = batch_sizes[0] if batch_sizes else 0
    problems = []
    if layer_norm is not None:
        ln_h, ln_c = layer_norm
        if tuple(ln_h.shape) != (2, G) or tuple(ln_c.shape) != (2, H):
            problems.append(f"layer_norm is {tuple(ln_h.shape)}, {tuple(ln_c.shape)}, expected [2, {G}], [2, {H}]")
        others = (*others, ln_h, ln_c)
    if peephole is not None and tuple(peephole.shape) != (3, H):
        problems.append(f"peephole is {tuple(peephole.shape)}, expected [3, {H}]")
    if G % blocks or U.shape != (G, P):
        problems.append(f"U is {tuple(U.shape)}, gates are [N, {G}]")
    if sum(batch_sizes) != N or any(n <= 0 for n in batch_sizes):
        problems.append(f"batch_sizes sum to {sum(batch_sizes)}, not the {N} rows given")
    if h0.dim() != 2 or h0.shape[0] < B or h0.shape[1] != P:
        problems.append(f"h0 is {tuple(h0.shape)}, expected [>={B}, {P}]")
    if c0.dim() != 2 or c0.shape[0] < B or c0.shape[1] != H:
        problems.append(f"c0 is {tuple(c0.shape)}, expected [>={B}, {H}]")
    if R is not None and R.shape != (P, H):
        problems.append(f"R is {tuple(R.shape)}, expected [{P}, {H}]")
    for t in (gates, h0, c0, U, R, peephole, *others):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            problems.append(f"a {t.dtype} tensor on {t.device}; the C kernel takes float32 CPU tensors")
            break
    if problems:
        raise ValueError("lstmkit C kernel: " + "; ".join(problems))


def forward(gates: Tensor, batch_sizes: list[int], h0: Tensor, c0: Tensor, U: Tensor, R: Tensor | None,
            reverse: bool, keep_for_backward: bool, keep_inputs: bool = True, bias: Tensor | None = None,
            peephole: Tensor | None = None, coupled_gates: bool = False, cell_clip: float = 0.0,
            h_mask: Tensor | None = None, zoneout_h: Tensor | float | None = None,
            zoneout_c: Tensor | float | None = None, layer_norm: tuple[Tensor, Tensor] | None = None
            ) -> dict[str, Tensor]:
    """Run the time loop. gates: [N, GH] input projection W x (LN(W x) with layer normalisation), to which the loop
    adds `bias` [GH] (if any); peephole [3, H], coupled_gates, cell_clip, h_mask [B, P], zoneout_h [N, P] | rate,
    zoneout_c [N, H] | rate, layer_norm (ln_h [2, GH], ln_c [2, H]: the LNs of U h_{t-1} and of c_t): the cell's
    variant features (`Cell`).

    Returns y [N, P], h_T, c_T and, with keep_for_backward, what BPTT needs: the activated gates (written
    over `gates`), cells [N, H] (c~_t, before zoneout), with zoneout of c states [N, H] (c_t after it),
    h_prev [N, P] (each row's h_{t-1}, times h_mask under recurrent dropout) and, with a projection, m [N, H]
    (o tanh c before it); h_prev and m only with keep_inputs (the op rebuilds them from y); with layer_norm v_hat
    [N, GH] (the normalised U h_{t-1}) and ln_stats [N, 3] (1/sigma of U h_{t-1}, mean and 1/sigma of c~_t)."""
    lib = _load()
    assert lib is not None, "call supports() first"
    assert gates.is_contiguous(), "gates must be a contiguous buffer (it is written in place)"
    zoneout_h, zoneout_c = _zoneout(zoneout_h), _zoneout(zoneout_c)
    blocks = 3 if coupled_gates else 4
    _check(gates, batch_sizes, h0, c0, U, R, bias, blocks=blocks, peephole=peephole, layer_norm=layer_norm)
    if bias is not None and tuple(bias.shape) != (gates.shape[1],):
        raise ValueError(f"lstmkit C kernel: bias is {tuple(bias.shape)}, expected [{gates.shape[1]}]")
    N, G = gates.shape
    H, P = G // blocks, h0.shape[1]
    *variant, held = _masks(h_mask, zoneout_h, zoneout_c, (batch_sizes[0], N, P, H))
    sizes, offsets, threads, splits = _plan(batch_sizes)
    out = {
        "y": gates.new_empty(N, P), "cells": gates.new_empty(N, H) if keep_for_backward else None,
        "states": gates.new_empty(N, H) if keep_for_backward and zoneout_c is not None else None,
        "h": h0.contiguous().clone(), "c": c0.contiguous().clone(),
        "h_prev": gates.new_empty(N, P) if keep_for_backward and keep_inputs else None,
        "m": gates.new_empty(N, H) if keep_for_backward and keep_inputs and R is not None else None,
        "v_hat": gates.new_empty(N, G) if keep_for_backward and layer_norm is not None else None,
        "ln_stats": gates.new_empty(N, 3) if keep_for_backward and layer_norm is not None else None,
    }
    # Held in locals until the call returns.
    U, R = U.contiguous(), R.contiguous() if R is not None else None
    bias = bias.detach().contiguous() if bias is not None else gates.new_zeros(G)
    peephole = peephole.detach().contiguous() if peephole is not None else None
    ln_h, ln_c = (t.detach().contiguous() for t in layer_norm) if layer_norm is not None else (None, None)
    status = lib.lk_forward(len(batch_sizes), H, P, int(reverse), _ptr(sizes), _ptr(offsets), threads, _ptr(splits),
                            _ptr(U), _ptr(R), _ptr(bias), int(coupled_gates), ctypes.c_float(cell_clip),
                            _ptr(peephole), *variant, _ptr(ln_h), _ptr(ln_c), ctypes.c_float(LAYER_NORM_EPS),
                            _ptr(gates), _ptr(out["cells"]), _ptr(out["states"]), _ptr(out["y"]), _ptr(out["h_prev"]),
                            _ptr(out["m"]), _ptr(out["v_hat"]), _ptr(out["ln_stats"]), _ptr(out["h"]), _ptr(out["c"]))
    del held  # the masks' contiguous copies, alive until here
    if status != 0:
        raise MemoryError("lstmkit's C kernel could not allocate its buffers (packed weights, masked states); "
                          "use backend='torch'")
    return out


def backward(dy: Tensor, dh_T: Tensor, dc_T: Tensor, batch_sizes: list[int], c0: Tensor, U: Tensor,
             R: Tensor | None, gates: Tensor, cells: Tensor, reverse: bool, peephole: Tensor | None = None,
             coupled_gates: bool = False, cell_clip: float = 0.0, h_mask: Tensor | None = None,
             zoneout_h: Tensor | float | None = None, zoneout_c: Tensor | float | None = None,
             states: Tensor | None = None, layer_norm: tuple[Tensor, Tensor] | None = None,
             v_hat: Tensor | None = None, ln_stats: Tensor | None = None) -> dict[str, Tensor]:
    """BPTT's time loop: dz [N, GH] (pre-activation gradients), dh0, dc0, with R dh [N, P] (dL/dh~_t, before
    zoneout), and with peepholes dpeephole [3, H]. states: the forward's (with zoneout of c). With layer_norm (ln_h,
    ln_c) and the forward's v_hat and ln_stats: dv [N, GH] (the gradient of U h_{t-1}, for dU), dln_h [2, GH] and
    dln_c [2, H]; dz is then the gradient of LN(W x_t) (and of b)."""
    lib = _load()
    assert lib is not None, "call supports() first"
    zoneout_h, zoneout_c = _zoneout(zoneout_h), _zoneout(zoneout_c)
    blocks = 3 if coupled_gates else 4
    _check(gates, batch_sizes, dh_T, c0, U, R, dc_T, cells, dy, v_hat, ln_stats, blocks=blocks, peephole=peephole,
           layer_norm=layer_norm)
    if layer_norm is not None and (v_hat is None or ln_stats is None or v_hat.shape != gates.shape
                                   or tuple(ln_stats.shape) != (gates.shape[0], 3)):
        raise ValueError("lstmkit C kernel: layer_norm needs the forward's v_hat [N, GH] and ln_stats [N, 3]")
    if cells.shape != (gates.shape[0], gates.shape[1] // blocks) or dy.shape != (gates.shape[0], U.shape[1]) or (
            dc_T.shape != c0.shape):
        raise ValueError(f"lstmkit C kernel: cells {tuple(cells.shape)}, dy {tuple(dy.shape)} or dc_T "
                         f"{tuple(dc_T.shape)} do not fit gates {tuple(gates.shape)}")
    if (zoneout_c is not None) != (states is not None) or (states is not None and states.shape != cells.shape):
        raise ValueError("lstmkit C kernel: zoneout of c needs the forward's states [N, H], and only it does; pass "
                         "the states the forward returned with its zoneout_c mask or rate")
    gates, cells = gates.contiguous(), cells.contiguous()
    states = states.contiguous() if states is not None else None
    N, G = gates.shape
    H, P = G // blocks, dh_T.shape[1]
    *variant, held = _masks(h_mask, zoneout_h, zoneout_c, (batch_sizes[0], N, P, H))
    sizes, offsets, threads, splits = _plan(batch_sizes)
    out = {
        "dz": gates.new_empty(N, G), "dh0": dh_T.contiguous().clone(), "dc0": dc_T.contiguous().clone(),
        "dh": gates.new_empty(N, P) if R is not None else None,
        "dv": gates.new_empty(N, G) if layer_norm is not None else None,
    }
    per_thread = gates.new_zeros(threads, 3, H) if peephole is not None else None  # summed below
    ln_per_thread = gates.new_zeros(threads, 2 * G + 2 * H) if layer_norm is not None else None  # and these
    peephole = peephole.detach().contiguous() if peephole is not None else None
    ln_h, ln_c = (t.detach().contiguous() for t in layer_norm) if layer_norm is not None else (None, None)
    v_hat = v_hat.contiguous() if v_hat is not None else None
    ln_stats = ln_stats.contiguous() if ln_stats is not None else None
    # Every tensor handed over by pointer is held in a local until the call returns.
    U, R, dy, c0 = U.contiguous(), R.contiguous() if R is not None else None, dy.contiguous(), c0.contiguous()
    status = lib.lk_backward(len(batch_sizes), H, P, int(reverse), _ptr(sizes), _ptr(offsets), threads,
                             _ptr(splits), _ptr(U), _ptr(R), int(coupled_gates), ctypes.c_float(cell_clip),
                             _ptr(peephole), *variant, _ptr(ln_h), _ptr(ln_c), _ptr(per_thread), _ptr(gates),
                             _ptr(cells), _ptr(states), _ptr(c0), _ptr(dy), _ptr(v_hat), _ptr(ln_stats),
                             _ptr(out["dz"]), _ptr(out["dh"]), _ptr(out["dv"]), _ptr(ln_per_thread),
                             _ptr(out["dh0"]), _ptr(out["dc0"]))
    del held
    if status != 0:
        raise MemoryError("lstmkit's C kernel could not allocate its buffers (packed weights, masked states); "
                          "use backend='torch'")
    if per_thread is not None:
        out["dpeephole"] = per_thread.sum(0)
    if ln_per_thread is not None:
        sums = ln_per_thread.sum(0)
        out["dln_h"], out["dln_c"] = sums[:2 * G].view(2, G), sums[2 * G:].view(2, H)
    return out


def _row_threads(N: int) -> int:
    return max(1, min(torch.get_num_threads(), N // MIN_ROWS_PER_THREAD, 64))


def _check_rows_and_norm(name: str, z: Tensor, ln: Tensor, dout: Tensor | None = None,
                         inv_sigma: Tensor | None = None) -> None:
    """Shapes, dtypes and layout of the layer-norm passes' tensors, before any pointer reaches C."""
    rows = z.dim() == 2 and z.is_contiguous() and z.dtype == torch.float32 and z.device.type == "cpu"
    fits = rows and tuple(ln.shape) == (2, z.shape[1]) and ln.dtype == torch.float32
    if dout is not None:
        fits = fits and dout.shape == z.shape and dout.dtype == torch.float32
    if inv_sigma is not None:
        fits = fits and tuple(inv_sigma.shape) == (z.shape[0],) and inv_sigma.is_contiguous() and (
            inv_sigma.dtype == torch.float32)
    if not fits:
        raise ValueError(f"lstmkit C kernel: {name} takes contiguous float32 rows [N, G] on the CPU and gains and "
                         f"biases [2, G]; got rows {z.dtype} {tuple(z.shape)} and ln {ln.dtype} {tuple(ln.shape)}")


def layer_norm_rows(z: Tensor, ln: Tensor) -> tuple[Tensor, Tensor]:
    """LN(z; gain, bias) of every row of z [N, G] (float32, contiguous; it is overwritten with the normalised rows,
    which `layer_norm_rows_backward` takes): returns (LN(z) [N, G], 1/sigma [N])."""
    lib = _load()
    assert lib is not None, "call supports() first"
    _check_rows_and_norm("layer_norm_rows", z, ln)
    out, inv_sigma = z.new_empty(z.shape), z.new_empty(z.shape[0])
    ln = ln.detach().contiguous()
    lib.lk_layer_norm_forward(ctypes.c_int64(z.shape[0]), z.shape[1], _ptr(z), _ptr(ln),
                              ctypes.c_float(LAYER_NORM_EPS), _ptr(out), _ptr(inv_sigma), _row_threads(z.shape[0]))
    return out, inv_sigma


def layer_norm_rows_backward(dout: Tensor, z_hat: Tensor, inv_sigma: Tensor, ln: Tensor) -> tuple[Tensor, Tensor]:
    """The backward of `layer_norm_rows`: (dz [N, G], dln [2, G]) from dout [N, G]."""
    lib = _load()
    assert lib is not None, "call supports() first"
    _check_rows_and_norm("layer_norm_rows_backward", z_hat, ln, dout, inv_sigma)
    N, G = z_hat.shape
    threads = _row_threads(N)
    dz, dln = z_hat.new_empty(N, G), z_hat.new_zeros(threads, 2 * G)
    dout, ln = dout.contiguous(), ln.detach().contiguous()
    lib.lk_layer_norm_backward(ctypes.c_int64(N), G, _ptr(dout), _ptr(z_hat), _ptr(inv_sigma), _ptr(ln), _ptr(dz),
                               _ptr(dln), threads)
    return dz, dln.sum(0).view(2, G)


# --- the GEMMs around the time loop -------------------------------------------------------------------------
# x W^T before it, dx, dW, dU, dR after it: most of a layer's FLOPs. Which library runs them fastest depends on
# the CPU: MKL runs its AVX2 code on AMD, 184 GFLOP/s on a 2-core EPYC (Zen 5) where oneDNN's own JIT reaches
# 409 (fp32, 2048^3); under bf16 autocast a bf16 GEMM (oneDNN, fp32 accumulation) ran at 781 there, but is slower
# than fp32 on CPUs without AVX512_BF16 or AMX. So it is measured once per machine (`tune`, key "gemm|...").
# "bf16" is a candidate only under autocast, where rounding the GEMMs' inputs to bf16 is what the user asked for;
# the time loop (the recurrent GEMM and the cell state) stays float32 either way.
GEMMS = ("mkl", "onednn", "bf16")


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def gemm_nt(a: Tensor, b: Tensor, how: str) -> Tensor:
    """a [M, K] @ b [N, K]^T -> [M, N] float32, by `how` (one of GEMMS). a and b may be transposed views.

    oneDNN's op copies a transposed `a` into a contiguous one first: for the weight gradients (dz^T x, a reduction
    over all N rows) those copies took 38% of config a's train step (13.7 of ~36 ms, torch.profiler), more than
    oneDNN saved, so they stay MKL's, which reads transposed operands in place."""
    if how == "onednn" and a.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    if how == "bf16":
        return (a.to(torch.bfloat16) @ b.to(torch.bfloat16).t()).float()
    return a @ b.t()


def gemm_choice(autocast: bool) -> str:
    """The GEMM library for the layer's big GEMMs on this machine, measured once (then cached) on a GEMM of
    the size of config b's input projection (6400 x 256 x 1024)."""
    candidates = ["mkl"] + (["onednn"] if _onednn_available() else []) + (["bf16"] if autocast else [])
    if len(candidates) == 1:
        return "mkl"
    key = f"gemm|{'autocast' if autocast else 'float32'}|threads{torch.get_num_threads()}"
    operands: list[Tensor] = []  # made at the first rehearsal only: a cached choice allocates nothing

    def rehearse(how: str) -> Tensor:
        if not operands:
            generator = torch.Generator().manual_seed(0)
            operands.extend((torch.randn(6400, 256, generator=generator), torch.randn(1024, 256, generator=generator)))
        return gemm_nt(*operands, how)

    with torch.autocast("cpu", enabled=False):
        return tune.tuner().decide(key, candidates, "mkl", rehearse)


class _FusedLayer(torch.autograd.Function):
    """One layer on the C kernel. x: [N, I] inputs, whose W x_t one GEMM computes; or, with `rows` (and W None),
    x is a table of input projections [K, GH] and step row n reads x[rows[n]] (see `embedded_lstm_layer`).
    peephole, coupled, clip, masks (h_mask, zoneout_h, zoneout_c), ln_x, ln_h, ln_c (layer normalisation, with W x
    only): the cell's variant features."""

    @staticmethod
    def forward(ctx, x, h0, c0, W, U, b, R, peephole, batch_sizes, reverse, rows=None, gemm="mkl", coupled=False,
                clip=0.0, masks=(None, None, None), ln_x=None, ln_h=None, ln_c=None):
        # Every step's W x_t in one GEMM, or gathered from the table; the loop adds b. `gates` is a new tensor
        # either way: the loop writes the activated gates over it. gemm: how the big GEMMs run (`gemm_nt`).
        xw = gemm_nt(x, W, gemm) if rows is None else x.index_select(0, rows)
        gates, ln_rstd = xw, None
        if ln_x is not None:  # LN(W x_t) of every step at once; xw becomes its normalised rows, for the backward
            gates, ln_rstd = layer_norm_rows(xw, ln_x)
        keep = any(ctx.needs_input_grad)  # forward runs under no_grad; this says whether backward will come
        out = forward(gates, batch_sizes, h0, c0, U, R, reverse, keep_for_backward=keep, bias=b, peephole=peephole,
                      coupled_gates=coupled, cell_clip=clip, h_mask=masks[0], zoneout_h=masks[1], zoneout_c=masks[2],
                      layer_norm=(ln_h, ln_c) if ln_x is not None else None)
        ctx.save_for_backward(x, h0, c0, W, U, b, R, peephole, gates, out["cells"], out["h_prev"], out["m"], rows,
                              out["states"], ln_x, ln_h, ln_c, xw if ln_x is not None else None, ln_rstd,
                              out["v_hat"], out["ln_stats"])
        ctx.batch_sizes, ctx.reverse, ctx.has_bias, ctx.gemm = batch_sizes, reverse, b is not None, gemm
        ctx.coupled, ctx.clip, ctx.masks = coupled, clip, masks  # masks: constants, no gradient
        return out["y"], out["h"], out["c"]

    @staticmethod
    def backward(ctx, dy, dh_T, dc_T):
        (x, h0, c0, W, U, b, R, peephole, gates, cells, h_prev, m, rows, states, ln_x, ln_h, ln_c, xw, ln_rstd,
         v_hat, ln_stats) = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, double backward): the C loop's gradients are not themselves
            # differentiable, so run the layer again on the portable path and differentiate that, with a graph.
            return _differentiable_backward(ctx, (x, h0, c0, W, U, b, R, peephole, ln_x, ln_h, ln_c), rows,
                                            (dy, dh_T, dc_T))
        normalised = ln_x is not None
        grads = backward(dy, dh_T, dc_T, ctx.batch_sizes, c0, U, R, gates, cells, ctx.reverse, peephole, ctx.coupled,
                         ctx.clip, *ctx.masks, states=states, layer_norm=(ln_h, ln_c) if normalised else None,
                         v_hat=v_hat, ln_stats=ln_stats)
        dz, gemm = grads["dz"], ctx.gemm
        need = ctx.needs_input_grad
        dxw, dln_x = dz, None  # the gradient of W x_t: dz, or LN(W x_t)'s backward of it
        if normalised:
            dxw, dln_x = layer_norm_rows_backward(dz, xw, ln_rstd, ln_x)
            dln_x = dln_x if need[15] else None
        if rows is None:
            dx = gemm_nt(dxw, W.t(), gemm) if need[0] else None
        else:  # a table row read at several steps gathers the gradients of all of them
            dx = torch.zeros_like(x).index_add_(0, rows, dxw) if need[0] else None
        dW = gemm_nt(dxw.t(), x.t(), gemm) if rows is None and need[3] else None
        dU = gemm_nt((grads["dv"] if normalised else dz).t(), h_prev.t(), gemm) if need[4] else None
        db = dz.sum(0) if ctx.has_bias and need[5] else None
        dR = gemm_nt(grads["dh"].t(), m.t(), gemm) if R is not None and need[6] else None
        dp = grads["dpeephole"] if peephole is not None and need[7] else None
        dln_h = grads["dln_h"] if normalised and need[16] else None
        dln_c = grads["dln_c"] if normalised and need[17] else None
        return (dx, grads["dh0"], grads["dc0"], dW, dU, db, dR, dp, None, None, None, None, None, None, None, dln_x,
                dln_h, dln_c)


def _differentiable_backward(ctx, inputs: tuple, rows: Tensor | None, upstream: tuple) -> tuple:
    """inputs: the Function's x, h0, c0, W, U, b, R, peephole, ln_x, ln_h, ln_c; returns its gradients in its order."""
    flags = (*ctx.needs_input_grad, *[False] * (18 - len(ctx.needs_input_grad)))  # embedded_lstm_layer passes 12
    need = (*flags[:8], *flags[15:18])
    wanted = [t for t, n in zip(inputs, need, strict=True) if n and t is not None]
    x, h0, c0, W, U, b, R, peephole, ln_x, ln_h, ln_c = inputs
    with torch.enable_grad():
        if rows is not None:  # a table of projections: gather the steps' rows; W x is then x itself
            x, W = x.index_select(0, rows), torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        h_mask, zoneout_h, zoneout_c = ctx.masks
        cell = Cell(W, U, b, R, peephole, ctx.coupled, ctx.clip, layer_norm=(ln_x, ln_h, ln_c) if ln_x is not None
                    else None, h_mask=h_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c)
        outputs = lstm_torch.lstm_layer(x, ctx.batch_sizes, h0, c0, cell, reverse=ctx.reverse)
        grads = iter(torch.autograd.grad(outputs, wanted, upstream, create_graph=True, allow_unused=True))
    result = [next(grads) if n and t is not None else None for t, n in zip(inputs, need, strict=True)]
    return (*result[:8], None, None, None, None, None, None, None, *result[8:])


def _functorch_active() -> bool:
    """torch.func transforms (grad, vmap, ...) are running: they need composable ops, not this Function."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)  # what autograd.Function itself asks
    return bool(active and active())


def lstm_layer(
    x: Tensor,
    batch_sizes: list[int],
    h0: Tensor,
    c0: Tensor,
    cell: Cell,
    reverse: bool = False,
    record: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`lstm_torch.lstm_layer` on the C kernel; what it cannot run (gate recording, variant features it lacks,
    other dtypes or devices, no compiler) goes to `lstm_torch.lstm_layer`."""
    if record is not None or x.shape[0] == 0 or not supports(x, cell) or _functorch_active():
        return lstm_torch.lstm_layer(x, batch_sizes, h0, c0, cell, reverse, record)
    W, U, b, R = cell.W, cell.U, cell.b, cell.R
    # Under autocast the input may be bf16: the time loop computes in float32, the big GEMMs in whatever
    # `gemm_choice` measured fastest here, and autocast must not reach the GEMMs inside.
    autocast = torch.is_autocast_enabled("cpu")
    gemm = gemm_choice(autocast)
    x, h0, c0 = (t.float().contiguous() for t in (x, h0, c0))
    with torch.autocast("cpu", enabled=False):
        y, h, c = _FusedLayer.apply(x, h0, c0, W, U, b, R, cell.peephole, list(batch_sizes), reverse, None, gemm,
                                    cell.coupled_gates, float(cell.cell_clip),
                                    (cell.h_mask, cell.zoneout_h, cell.zoneout_c), *(cell.layer_norm or (None,) * 3))
    low = lstm_torch.autocast_dtype("cpu")
    if low is not None:  # what torch.nn.LSTM returns under autocast, whatever path computed it
        y, h, c = y.to(low), h.to(low), c.to(low)
    return y, h, c


def embedded_lstm_layer(
    embedding: Tensor,
    ids: Tensor,
    batch_sizes: list[int],
    h0: Tensor,
    c0: Tensor,
    directions: list[Cell],
    padding_idx: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """An Embedding followed by one LSTM layer (one or both directions), with W x_t computed once per distinct
    token rather than once per step.

    ids: [N] token ids in the layer's row order (packed rows, or a padded batch's time-major rows with
    batch_sizes [B] * T); embedding: [V, E]; directions: the cell of each direction (standard, no projection),
    the second reverse.
    Returns y [N, D*H], h_n [D, B, H], c_n [D, B, H]; h0, c0: [D, B, H]. Equal to
    `lstm_layer(F.embedding(ids, embedding), ...)` per direction; call it where `supports` holds, without autocast.

    Why: a batch of 32 reviews has ~7,700 steps but ~2,300 distinct words. The three GEMMs on W (W x, and in
    BPTT dx and dW) then run on 2,300 rows instead of 7,700, and the embedding's gradient lands on 2,300 rows.
    """
    distinct, rows = torch.unique(ids, return_inverse=True)
    embedded = torch.nn.functional.embedding(distinct, embedding, padding_idx)  # [K, E]
    G = directions[0].W.shape[0]  # 4H
    gemm = gemm_choice(autocast=False)
    table = embedded @ torch.cat([cell.W for cell in directions]).t()  # [K, D*4H]: every W x, once per word
    ys, hs, cs = [], [], []
    for d, cell in enumerate(directions):
        y, h, c = _FusedLayer.apply(table[:, d * G:(d + 1) * G], h0[d], c0[d], None, cell.U, cell.b, None, None,
                                    list(batch_sizes), d == 1, rows, gemm)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return (ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)), torch.stack(hs), torch.stack(cs)
