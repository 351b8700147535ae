"""Where a zoneout train step's time goes on the C kernel: config b (B=64, T=100, I=256, H=256, one layer,
backend="cpu"), median ms of 7 calls each of the train step, the training forward alone (it draws the masks),
`_draw_masks` alone, and the eval-mode step (zoneout as rates, no masks), beside the standard cell, peepholes and
recurrent dropout. Run: `python benchmarks/bench_zoneout.py`.
"""

from __future__ import annotations

import statistics
import time

import torch

import lstmkit

B, T, I, H = 64, 100, 256, 256
CELLS = {"standard": {}, "peephole": {"peephole": True}, "zoneout_h": {"zoneout_h": 0.1},
         "zoneout_c": {"zoneout_c": 0.5}, "both": {"zoneout_h": 0.1, "zoneout_c": 0.5},
         "dropout": {"recurrent_dropout": 0.25}}


def median_ms(call, repeats: int = 7) -> float:
    call()
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(B, T, I)
    print(f"B={B} T={T} I={I} H={H}, backend='cpu', torch {torch.__version__}, {torch.get_num_threads()} threads; ms")
    for name, variant in CELLS.items():
        lstm = lstmkit.LSTM(I, H, batch_first=True, backend="cpu", **variant).train()
        step = median_ms(lambda m=lstm: m(x)[0].sum().backward())
        forward = median_ms(lambda m=lstm: m(x)[0])
        draw = median_ms(lambda m=lstm: m._draw_masks(B, T * B))
        lstm.eval()
        evaluation = median_ms(lambda m=lstm: m(x)[0].sum().backward())
        print(f"{name:10s} train step {step:7.1f}  forward {forward:7.1f}  draw masks {draw:6.1f}  "
              f"eval-mode step {evaluation:7.1f}", flush=True)


if __name__ == "__main__":
    main()
