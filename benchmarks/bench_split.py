"""Issue 14: split a 2-thread LSTM step's recurrent GEMM by rows (today's C kernel) or by hidden units?

Times MKL's packed sgemm (the C kernel's) per step for B rows, H units (P = H, no projection), 2 threads:
  forward, a_t += h_{t-1} U^T   rows: each thread M = B/2, N = 4H, K = H, no barrier (rows never interact)
                                units: each thread M = B, N = 2H (the 4 gate blocks of its H/2 units), K = H, a barrier
  backward, dh_{t-1} = dz_t U   rows: M = B/2, N = H, K = 4H;  units: M = B, N = H/2, K = 4H, a barrier
The unit split's barrier is the least its h_{t-1} (dz_t) exchange costs; its pointwise work is the same.
Run: `python benchmarks/bench_split.py [--steps N]` (compiles split_gemm.c).
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
from pathlib import Path

import torch

from lstmkit.ops import lstm_cpu, tune

SHAPES = [(32, 128), (64, 256), (32, 512), (64, 512), (16, 512)]  # (B, H); config b: 64 x 256, c: 32 x 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    so = Path(tempfile.mkdtemp()) / "split_gemm.so"
    subprocess.run(["cc", "-O2", "-fopenmp", "-fPIC", "-shared", "-o", str(so),
                    str(Path(__file__).with_name("split_gemm.c"))], check=True)
    lib = ctypes.CDLL(str(so))
    lib.split_gemm.restype = ctypes.c_double
    addresses = [ctypes.c_void_p(a) for a in lstm_cpu._mkl_addresses()]

    def t(threads: int, M: int, N: int, K: int, barrier: int) -> float:
        """us per step, the median of 3 runs"""
        times = sorted(lib.split_gemm(*addresses, threads, M, N, K, args.steps, barrier) for _ in range(3))
        return times[1] * 1e6

    print(f"CPU: {tune.cpu_description()[0]}; torch {torch.__version__}; MKL packed sgemm, 2 threads, us per step "
          f"(median of 3 runs of {args.steps} steps)")
    print(f"{'B':>4s} {'H':>5s} {'fwd rows':>9s} {'fwd units':>9s} {'units/rows':>10s} {'bwd rows':>9s} "
          f"{'bwd units':>9s} {'units/rows':>10s}")
    for B, H in SHAPES:
        forward = t(2, B // 2, 4 * H, H, 0), t(2, B, 2 * H, H, 1)
        backward = t(2, B // 2, H, 4 * H, 0), t(2, B, H // 2, 4 * H, 1)
        print(f"{B:4d} {H:5d} {forward[0]:9.1f} {forward[1]:9.1f} {forward[1] / forward[0]:10.2f} {backward[0]:9.1f} "
              f"{backward[1]:9.1f} {backward[1] / backward[0]:10.2f}", flush=True)


if __name__ == "__main__":
    main()
