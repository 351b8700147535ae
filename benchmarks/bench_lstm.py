"""lstmkit.LSTM vs torch.nn.LSTM (oneDNN on and off) vs a Python loop over nn.LSTMCell, timed in the same run.

"lstmkit" is the default backend="auto"; "lstmkit/torch" is lstmkit's portable implementation;
"lstmkit/op" its torch.library custom op with hand-written BPTT (backend="op"); "lstmkit/cpu" the fused C
kernel (backend="cpu", lstmkit/ops/csrc/lstm_cpu.c, built at first use: its cold build and warm load times
are printed first); "nn.LSTM -oneDNN" is torch.nn.LSTM with `torch.backends.mkldnn` disabled (its native
path). Every path is first checked against torch.nn.LSTM with the same weights; only then is it timed.
Ratios (nn.LSTM time / this time, > 1 means faster than nn.LSTM) come from interleaved repeats in one
process, so machine noise hits all contenders alike; the order rotates each repeat. GFLOP/s counts the
LSTM's matmul work (forward 2·B·T·4H·(I+P) per layer and direction, plus 2·B·T·H·P for a projection; a
train step 3× that) and is shown as a fraction of this machine's GEMM peak, measured in the same run.
bf16 runs under `torch.autocast("cpu", torch.bfloat16)`.

Run: `make bench` or `python benchmarks/bench_lstm.py [--repeats N] [--configs a,b,e] [--dtypes fp32,bf16]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import lstmkit
from lstmkit.ops import tune

# torch.nn.LSTM warns on every projected call that oneDNN takes no projections; that is what config e measures.
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # said when mkldnn.flags() is set

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAME = {v: k for k, v in DTYPES.items()}
AUTO_SUMMARY: list[str] = []  # one line per config, dtype and mode: what auto chose and what it cost
# ISA flags that decide which GEMM and LSTM paths are fast (printed with the CPU model).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve", "bf16")


@dataclass(frozen=True)
class BenchConfig:
    name: str
    B: int
    T: int
    I: int
    H: int
    layers: int = 1
    proj: int = 0
    bidirectional: bool = False
    modes: tuple[str, ...] = ("train", "infer")

    def flops(self, mode: str) -> float:
        """Matmul FLOPs of one call: forward, or forward + backward (3x) for a train step."""
        P = self.proj or self.H
        D = 2 if self.bidirectional else 1
        total = 0.0
        for layer in range(self.layers):
            width = self.I if layer == 0 else D * P
            total += D * 2 * self.B * self.T * (4 * self.H * (width + P) + (self.H * P if self.proj else 0))
        return total * (3 if mode == "train" else 1)


CONFIGS = {
    "a": BenchConfig("a: seed recipe", 32, 500, 128, 64),
    "b": BenchConfig("b", 64, 100, 256, 256),
    "c": BenchConfig("c: 2 layers", 32, 128, 64, 512, layers=2),
    "d": BenchConfig("d: batch 1", 1, 100, 128, 256, modes=("infer",)),
    "e": BenchConfig("e: proj 64", 64, 100, 256, 256, proj=64),
    "f": BenchConfig("f: bi, 2 layers", 64, 100, 256, 256, layers=2, bidirectional=True),
    "g": BenchConfig("g: streaming", 1, 100, 128, 256, modes=("stream",)),
}


class LoopLSTM(nn.Module):
    """The custom-cell baseline: a Python loop over nn.LSTMCell, one layer."""

    def __init__(self, reference: nn.LSTM) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(reference.input_size, reference.hidden_size)
        self.cell.load_state_dict({k[: -len("_l0")]: v for k, v in reference.state_dict().items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, I]
        state = None
        outputs = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1)


class WithoutOneDNN(nn.Module):
    """torch.nn.LSTM with oneDNN switched off around each call: torch's native CPU path."""

    def __init__(self, reference: nn.LSTM) -> None:
        super().__init__()
        self.lstm = reference

    def forward(self, x: torch.Tensor) -> tuple:
        with torch.backends.mkldnn.flags(enabled=False):
            return self.lstm(x)


def first_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    return out[0] if isinstance(out, tuple) else out


def autocast(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def validate(candidate: nn.Module, reference: nn.LSTM, x: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with autocast(dtype):
        ya, yb = first_output(candidate, xa), first_output(reference, xb)
    dy = torch.randn_like(yb.float())
    (ya.float() * dy).sum().backward()
    (yb.float() * dy).sum().backward()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2  # bf16: 8-bit mantissa (tests/conftest.py: 3e-2)
    for what, a, b in (("output", ya.float(), yb.float()), ("input grad", xa.grad, xb.grad)):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        if rel > tolerance:
            raise SystemExit(f"{name}: {what} differs from torch.nn.LSTM (relative error {rel:.2e}); not timing it")


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rotated(names: list[str], r: int) -> list[str]:
    """The contenders' order for repeat r, rotated by r: what ran just before a call changes its time (after
    torch.nn.LSTM with oneDNN off, the next oneDNN call took ~60 us longer at batch 1, measured), so no
    contender always follows the same one."""
    k = r % len(names)
    return names[k:] + names[:k]


def gemm_peak(dtype: torch.dtype, repeats: int = 10) -> float:
    """GFLOP/s of a large square GEMM in this dtype, now (best of `repeats` after a warm-up): the ceiling the
    GFLOP/s column is read against. Measured before and after the configs; the higher is used."""
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = min(time_call(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def bench_config(cfg: BenchConfig, repeats: int, dtype: torch.dtype) -> list[dict[str, object]]:
    torch.manual_seed(0)
    ours = lstmkit.LSTM(cfg.I, cfg.H, cfg.layers, batch_first=True, proj_size=cfg.proj,
                        bidirectional=cfg.bidirectional)  # backend="auto"
    reference = ours.to_torch()
    portable = lstmkit.LSTM.from_torch(reference, backend="torch")
    contenders: dict[str, nn.Module] = {"nn.LSTM": reference, "nn.LSTM -oneDNN": WithoutOneDNN(reference),
                                        "lstmkit": ours, "lstmkit/torch": portable,
                                        "lstmkit/op": lstmkit.LSTM.from_torch(reference, backend="op"),
                                        "lstmkit/cpu": lstmkit.LSTM.from_torch(reference, backend="cpu")}
    if cfg.layers == 1 and not cfg.proj and not cfg.bidirectional:
        contenders["loop cell"] = LoopLSTM(reference)
    x = torch.randn(cfg.B, cfg.T, cfg.I)

    def step(module: nn.Module, mode: str) -> None:
        if mode == "infer":
            with torch.no_grad(), autocast(dtype):
                first_output(module, x)
        else:
            with autocast(dtype):
                out = first_output(module, x)
            out.float().sum().backward()

    first_calls = {}
    for mode in cfg.modes:  # the first call of each kind: backend="auto" measures its candidates (fresh cache)
        began = time.perf_counter()
        step(ours, mode)
        first_calls[mode] = time.perf_counter() - began
    for name, module in contenders.items():
        if module is not reference:
            validate(module, reference, x, name, dtype)

    rows = []
    for mode in cfg.modes:
        first_call = first_calls[mode]
        for module in contenders.values():  # warm-up
            step(module, mode)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(repeats):  # interleaved, so drifts in machine load hit every contender
            for name in rotated(list(contenders), r):
                times[name].append(time_call(lambda module=contenders[name], mode=mode: step(module, mode)))
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        base = medians["nn.LSTM"]
        for name, seconds in medians.items():
            rows.append({
                "config": cfg.name, "mode": mode, "impl": name, "ms": seconds * 1e3,
                "speedup_vs_nn.LSTM": base / seconds, "tokens_per_s": cfg.B * cfg.T / seconds,
                "gflops": cfg.flops(mode) / seconds / 1e9,
            })
        # What "auto" chose, and how it stands against the fastest single path of this run (nn.LSTM is the vendor
        # path; the loop cell and nn.LSTM -oneDNN are not paths of lstmkit's).
        with autocast(dtype):  # the kind's key holds the autocast dtype
            kind = ours.call_kind(cfg.B, cfg.T, False, mode == "train")
        chosen = tune.tuner().decisions().get(kind.key)
        singles = {n: medians[n] for n in ("nn.LSTM", "lstmkit/cpu", "lstmkit/torch", "lstmkit/op")}
        best = min(singles, key=singles.get)
        AUTO_SUMMARY.append(f"{cfg.name:17s} {DTYPE_NAME[dtype]:5s} {mode:6s} auto ran {chosen or '?':6s} "
                            f"first call {first_call * 1e3:7.0f} ms; auto / fastest single path ({best}): "
                            f"{singles[best] / medians['lstmkit']:.2f}")
    return rows


def bench_streaming(cfg: BenchConfig, repeats: int) -> list[dict[str, object]]:
    """One token per call, the state carried: how generation and online use drive an LSTM. Each contender
    reads the same cfg.T tokens one call at a time; lstmkit's is an LSTMStream."""
    torch.manual_seed(0)
    ours = lstmkit.LSTM(cfg.I, cfg.H, cfg.layers)
    reference = ours.to_torch().eval()
    cell = LoopLSTM(reference).cell
    stream = lstmkit.LSTMStream(ours, batch_size=cfg.B)
    tokens = torch.randn(cfg.T, cfg.B, cfg.I)

    def run_nn_lstm() -> torch.Tensor:
        state = None
        for t in range(cfg.T):
            out, state = reference(tokens[t: t + 1], state)
        return out[0]

    def run_lstmkit_module() -> torch.Tensor:
        state = None
        for t in range(cfg.T):
            out, state = ours(tokens[t: t + 1], state)
        return out[0]

    def run_cell() -> torch.Tensor:
        state = None
        for t in range(cfg.T):
            state = cell(tokens[t], state)
        return state[0]

    def run_stream() -> torch.Tensor:
        stream.reset()
        for t in range(cfg.T):
            out = stream.step(tokens[t])
        return out

    contenders = {"nn.LSTM": run_nn_lstm, "lstmkit stream": run_stream, "lstmkit module": run_lstmkit_module,
                  "loop cell": run_cell}
    with torch.inference_mode():
        expected = run_nn_lstm()
        for name, run in contenders.items():
            rel = ((run() - expected).abs().max() / expected.abs().max()).item()
            if rel > 1e-4:
                raise SystemExit(f"{name}: last state differs from torch.nn.LSTM ({rel:.2e}); not timing it")
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(repeats):
            for name in rotated(list(contenders), r):
                times[name].append(time_call(contenders[name]))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return [{"config": cfg.name, "mode": "stream", "impl": name, "ms": seconds * 1e3,
             "speedup_vs_nn.LSTM": medians["nn.LSTM"] / seconds, "tokens_per_s": cfg.B * cfg.T / seconds,
             "gflops": cfg.flops("infer") / seconds / 1e9}
            for name, seconds in medians.items()]


def ours_for_cost() -> lstmkit.LSTM:
    model = lstmkit.LSTM(8, 16)
    with torch.no_grad():
        model(torch.randn(4, 2, 8))  # the kind is measured and cached here
    return model


def dispatch_cost(model: lstmkit.LSTM, calls: int = 2000) -> float:
    """Seconds of one `path_for` (the dispatch of a call whose kind is cached), averaged over `calls`."""
    began = time.perf_counter()
    for _ in range(calls):
        model.path_for(2, 4, False, False)
    return (time.perf_counter() - began) / calls


def kernel_load_times() -> tuple[float, float] | str:
    """Seconds to build the C kernel into an empty cache (cold) and to load it from there (warm), each in a
    fresh process; or why it is not available."""
    code = "from lstmkit.ops import lstm_cpu; lstm_cpu.available(); print(lstm_cpu.load_seconds())"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LSTMKIT_CACHE": cache}
        times = []
        for _ in range(2):
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            if result.returncode != 0:
                return result.stderr.strip().splitlines()[-1]
            times.append(float(result.stdout.split()[-1]))
    from lstmkit.ops import lstm_cpu

    return (times[0], times[1]) if lstm_cpu.available() else lstm_cpu.unavailable_reason()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of " + ",".join(DTYPES))
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for what, chosen, known in (("config", names, CONFIGS), ("dtype", dtypes, DTYPES)):
        unknown = [n for n in chosen if n not in known]
        if unknown:
            raise SystemExit(f"unknown {what} {unknown[0]!r}; choose from {', '.join(known)}")
    if not os.environ.get("LSTMKIT_CACHE"):  # a fresh cache, so that the first-call cost is measured, not read
        os.environ["LSTMKIT_CACHE"] = tempfile.mkdtemp(prefix="lstmkit-bench-")
    model, flags = tune.cpu_description()
    print(f"CPU: {model} ({platform.machine()}); ISA: {' '.join(f for f in ISA_FLAGS if f in flags) or 'none listed'}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dispatch cache {tune.tuner().path}")
    load = kernel_load_times()
    print("C kernel: " + (f"built cold in {load[0]:.2f} s, loaded warm in {load[1]:.3f} s" if isinstance(load, tuple)
                          else f"not available ({load}); lstmkit/cpu runs the torch backend"))
    peaks = {d: gemm_peak(DTYPES[d]) for d in dtypes}
    print(f"{'config':17s} {'dtype':5s} {'mode':6s} {'impl':16s} {'ms':>9s} {'x nn.LSTM':>10s} {'tokens/s':>11s} "
          f"{'GFLOP/s':>8s}")
    rows_by_dtype: dict[str, list[dict]] = {d: [] for d in dtypes}
    for name in names:
        cfg = CONFIGS[name]
        for dtype_name in dtypes if "stream" not in cfg.modes else dtypes[:1]:
            rows = (bench_streaming(cfg, args.repeats) if "stream" in cfg.modes
                    else bench_config(cfg, args.repeats, DTYPES[dtype_name]))
            for row in rows:
                rows_by_dtype[dtype_name].append(row)
                print(f"{row['config']:17s} {dtype_name:5s} {row['mode']:6s} {row['impl']:16s} {row['ms']:9.2f} "
                      f"{row['speedup_vs_nn.LSTM']:10.2f} {row['tokens_per_s']:11.0f} {row['gflops']:8.1f}",
                      flush=True)
    print("\nbackend=\"auto\": what it ran, its first call of the kind (measuring included), and its time against "
          "the fastest single path")
    for line in AUTO_SUMMARY:
        print(line)
    from lstmkit.ops import lstm_cpu

    print("GEMM library of the C kernel's big GEMMs: " + ", ".join(
        f"{k} {v['path']} ({', '.join(f'{p} {ms:.1f} ms' for p, ms in v['ms'].items())})"
        for k, v in tune.tuner().entries().items() if k.startswith("gemm|")) if lstm_cpu.available() else "none")
    cached_cost = dispatch_cost(ours_for_cost())
    print(f"a cached choice costs {cached_cost * 1e6:.1f} us a call (ops.dispatch with a known kind)")
    peaks = {d: max(peak, gemm_peak(DTYPES[d])) for d, peak in peaks.items()}
    print("\nGEMM peak (2048^3, best before and after): " + ", ".join(f"{d} {p:.0f} GFLOP/s" for d, p in peaks.items()))
    print(f"{'config':17s} {'dtype':5s} {'mode':6s} {'impl':16s} {'% of peak':>9s}")
    for dtype_name, rows in rows_by_dtype.items():
        for row in rows:
            print(f"{row['config']:17s} {dtype_name:5s} {row['mode']:6s} {row['impl']:16s} "
                  f"{100 * row['gflops'] / peaks[dtype_name]:8.1f}%")


if __name__ == "__main__":
    main()
