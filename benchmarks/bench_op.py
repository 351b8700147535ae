"""The op (`backend="op"`, what torch.compile and torch.export run) against the C kernel's autograd.Function
(`backend="cpu"`) and the portable path (`backend="torch"`): a train step (forward, then backward of y.sum()) of
lstmkit.LSTM, the standard cell and with layer normalisation, on configs of `bench_lstm.py`, in the same run.

On the CPU in float32 the op's time loops are the C kernel's, so the ratio op / cpu is what the op's own wrapping
costs (its GEMMs outside the loops, the flips, the outputs it saves). Each repeat runs the contenders in a rotated
order; the figure is the median over repeats after one warm-up.

Run: `python benchmarks/bench_op.py [--repeats N] [--configs b,c]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_lstm import CONFIGS, rotated, time_call  # noqa: E402

import lstmkit  # noqa: E402

BACKENDS = ("cpu", "op", "torch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="b,c")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for key in args.configs.split(","):
        config = CONFIGS[key]
        x = torch.randn(config.T, config.B, config.I)
        for layer_norm in (False, True):
            torch.manual_seed(0)
            models = {backend: lstmkit.LSTM(config.I, config.H, config.layers, layer_norm=layer_norm,
                                            backend=backend) for backend in BACKENDS}

            times: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
            for r in range(args.repeats + 1):
                for backend in rotated(list(BACKENDS), r):
                    seconds = time_call(lambda model=models[backend], x=x: model(x)[0].sum().backward())
                    if r:  # the first round is the warm-up
                        times[backend].append(seconds)
            ms = {backend: 1000 * statistics.median(values) for backend, values in times.items()}
            cell = "layer_norm" if layer_norm else "standard"
            print(f"{config.name:<16} {cell:<10} " + "  ".join(f"{b} {ms[b]:7.1f} ms" for b in BACKENDS)
                  + f"   op/cpu {ms['op'] / ms['cpu']:.2f}")


if __name__ == "__main__":
    main()
