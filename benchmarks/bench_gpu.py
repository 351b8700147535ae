"""GPU benchmark (issue 19): lstmkit's Triton op against torch.nn.LSTM (cuDNN), lstmkit's portable path and a
Python loop over nn.LSTMCell, fp32 and bf16, train step and inference, in one run on one CUDA device.

Configs: PyTorch's fastrnns (T=100, B=64, H=512), FlashRNN's chart (B=16, T=1024, H=768), and B in {1, 8, 64} at
H in {256, 512, 1024} (T=100); input size = H, one layer. Every candidate is checked against nn.LSTM on the same
weights before it is timed (max relative error printed). Times: CUDA events, medians of interleaved repeats.

    python benchmarks/bench_gpu.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from torch import nn

import lstmkit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def configs(quick: bool) -> list[tuple[str, int, int, int]]:
    """(name, T, B, H)."""
    named = [("fastrnns", 100, 64, 512), ("flashrnn", 1024, 16, 768)]
    grid = [(f"B{B}-H{H}", 100, B, H) for B in (1, 8, 64) for H in (256, 512, 1024)]
    return named + (grid[::3] if quick else grid)


class LoopCell(nn.Module):
    """The baseline users write: a Python loop over nn.LSTMCell, with nn.LSTM's weights."""

    def __init__(self, reference: nn.LSTM) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(reference.input_size, reference.hidden_size).to(reference.weight_ih_l0)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(reference, f"{name}_l0"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, B, I]
        h = c = x.new_zeros(x.shape[1], self.cell.hidden_size)
        outputs = []
        for x_t in x:
            h, c = self.cell(x_t, (h, c))
            outputs.append(h)
        return torch.stack(outputs)


def first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def run(name: str, T: int, B: int, H: int, dtype: torch.dtype, repeats: int) -> None:
    torch.manual_seed(0)
    reference = nn.LSTM(H, H).cuda().to(dtype)
    candidates = {
        "nn.LSTM (cuDNN)": reference,
        "lstmkit op (Triton)": lstmkit.LSTM.from_torch(reference, backend="op"),
        "lstmkit torch": lstmkit.LSTM.from_torch(reference, backend="torch"),
        "loop cell": LoopCell(reference),
    }
    x = torch.randn(T, B, H, device="cuda", dtype=dtype)
    with torch.no_grad():
        expected = first(reference(x)).float()
        for label, module in candidates.items():
            got = first(module(x)).float()
            error = ((got - expected).abs().max() / expected.abs().max()).item()
            print(f"  check {label:20s} max relative error vs nn.LSTM {error:.2e}", flush=True)

    def step(module: nn.Module, train: bool):
        def call() -> None:
            if train:
                leaf = x.detach().requires_grad_(True)
                first(module(leaf)).float().square().mean().backward()
            else:
                with torch.no_grad():
                    module(x)
        return call

    for mode in ("train", "infer"):
        calls = {label: step(module, mode == "train") for label, module in candidates.items()}
        for call in calls.values():  # warm-up: Triton compiles here, cuDNN picks its algorithm
            call()
        torch.cuda.synchronize()
        times: dict[str, list[float]] = {label: [] for label in calls}
        for _ in range(repeats):  # interleaved: the device's clocks drift alike for all
            for label, call in calls.items():
                times[label] += timed(call, 1)
        base = statistics.median(times["nn.LSTM (cuDNN)"])
        for label, samples in times.items():
            ms = statistics.median(samples)
            print(f"{name:9s} T={T:<5d} B={B:<3d} H={H:<5d} {dtype_name(dtype)} {mode:5s} {label:20s} "
                  f"{ms:9.3f} ms  x cuDNN {base / ms:5.2f}", flush=True)


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--quick", action="store_true", help="a third of the B x H grid")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}")
    for dtype in (DTYPES[d] for d in args.dtypes.split(",")):
        for name, T, B, H in configs(args.quick):
            run(name, T, B, H, dtype, args.repeats)


if __name__ == "__main__":
    main()
