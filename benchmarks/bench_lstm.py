"""lstmkit.LSTM vs torch.nn.LSTM vs a Python loop over nn.LSTMCell, timed in the same run.

"lstmkit" is the default backend="auto"; "lstmkit/torch" is lstmkit's portable implementation.
Every path is first checked against torch.nn.LSTM with the same weights; only then is it timed.
Ratios (baseline time / lstmkit time, > 1 means lstmkit is faster) come from interleaved repeats in one
process, so machine noise hits all contenders alike. Run: `make bench` or
`python benchmarks/bench_lstm.py [--repeats N] [--configs a,b,d]`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import lstmkit


@dataclass(frozen=True)
class BenchConfig:
    name: str
    B: int
    T: int
    I: int
    H: int
    layers: int = 1
    modes: tuple[str, ...] = ("train", "infer")


CONFIGS = {
    "a": BenchConfig("a: seed recipe", 32, 500, 128, 64),
    "b": BenchConfig("b", 64, 100, 256, 256),
    "c": BenchConfig("c: 2 layers", 32, 128, 64, 512, layers=2),
    "d": BenchConfig("d: batch 1", 1, 100, 128, 256, modes=("infer",)),
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


def first_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    return out[0] if isinstance(out, tuple) else out


def validate(candidate: nn.Module, reference: nn.LSTM, x: torch.Tensor, name: str) -> None:
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = first_output(candidate, xa), first_output(reference, xb)
    dy = torch.randn_like(yb)
    (ya * dy).sum().backward()
    (yb * dy).sum().backward()
    for what, a, b in (("output", ya, yb), ("input grad", xa.grad, xb.grad)):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        if rel > 1e-4:
            raise SystemExit(f"{name}: {what} differs from torch.nn.LSTM (relative error {rel:.2e}); not timing it")


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_config(cfg: BenchConfig, repeats: int) -> list[dict[str, object]]:
    torch.manual_seed(0)
    ours = lstmkit.LSTM(cfg.I, cfg.H, cfg.layers, batch_first=True)  # backend="auto"
    reference = ours.to_torch()
    portable = lstmkit.LSTM.from_torch(reference, backend="torch")
    contenders: dict[str, nn.Module] = {"nn.LSTM": reference, "lstmkit": ours, "lstmkit/torch": portable}
    if cfg.layers == 1:
        contenders["loop cell"] = LoopLSTM(reference)
    x = torch.randn(cfg.B, cfg.T, cfg.I)
    for name, module in contenders.items():
        if module is not reference:
            validate(module, reference, x, name)

    rows = []
    for mode in cfg.modes:
        def step(module: nn.Module, mode: str = mode) -> None:
            if mode == "infer":
                with torch.no_grad():
                    first_output(module, x)
            else:
                first_output(module, x).sum().backward()

        for module in contenders.values():  # warm-up
            step(module)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):  # interleaved, so drifts in machine load hit every contender
            for name, module in contenders.items():
                times[name].append(time_call(lambda module=module: step(module)))
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        base = medians["nn.LSTM"]
        for name, seconds in medians.items():
            rows.append({
                "config": cfg.name, "mode": mode, "impl": name, "ms": seconds * 1e3,
                "speedup_vs_nn.LSTM": base / seconds, "tokens_per_s": cfg.B * cfg.T / seconds,
            })
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
        for _ in range(repeats):
            for name, run in contenders.items():
                times[name].append(time_call(run))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return [{"config": cfg.name, "mode": "stream", "impl": name, "ms": seconds * 1e3,
             "speedup_vs_nn.LSTM": medians["nn.LSTM"] / seconds, "tokens_per_s": cfg.B * cfg.T / seconds}
            for name, seconds in medians.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'config':16s} {'mode':6s} {'impl':15s} {'ms':>9s} {'x nn.LSTM':>10s} {'tokens/s':>11s}")
    for name in names:
        cfg = CONFIGS[name]
        for row in (bench_streaming if "stream" in cfg.modes else bench_config)(cfg, args.repeats):
            print(f"{row['config']:16s} {row['mode']:6s} {row['impl']:15s} {row['ms']:9.2f} "
                  f"{row['speedup_vs_nn.LSTM']:10.2f} {row['tokens_per_s']:11.0f}", flush=True)


if __name__ == "__main__":
    main()
