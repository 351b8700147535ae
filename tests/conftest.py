"""Shared test helpers: one tolerance table, one comparison that names what failed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# One cache for the whole session and the processes its tests start (a killed run and its resume meet the same
# choices), apart from the user's ~/.cache/lstmkit. An LSTMKIT_CACHE set by the caller is kept.
os.environ.setdefault("LSTMKIT_CACHE", tempfile.mkdtemp(prefix="lstmkit-test-cache-"))
# Where no CUDA GPU is, Triton's kernels (lstmkit.ops.lstm_triton) are decorated for its interpreter, so test_triton
# can run them on CPU tensors (nothing else sends CPU tensors there); triton reads this when it is first imported,
# which may be inside any test (torch.compile imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lstmkit.ops import tune  # noqa: E402

# Relative error max|actual - expected| / max|expected|, set once per dtype and never loosened to pass.
# float64: both sides compute the same equations in double precision; differences are rounding only.
# float32: the worst case measured over the 38 nn.LSTM configurations of test_nn was 5.3e-7
# (weight_hr_l1 gradient, 3 layers, bidirectional, packed; 2026-11-23, this 2-core CPU). 1e-5 leaves
# ~20x headroom for other BLAS summation orders; the mutations tried (gate order swapped, a wrong
# initial state, a missing BPTT term) give relative errors of 1e-2 and above.
# bfloat16 (autocast; 8-bit mantissa, 3.9e-3 per rounding): lstmkit's own path against torch.nn.LSTM's,
# 2 layers, T=20, worst over 5 seeds was 1.2e-2 (2026-11-23); 3e-2 leaves headroom, a wrong gate is ~1.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}


def float32_tolerance(reduction: int, computations: int = 2) -> float:
    """The relative error (max|diff| / max|expected|, as `relative_error`) allowed between float32 results whose
    elements are sums of up to `reduction` products (rows summed into a weight gradient, steps chained in BPTT).

    Derived from the problem, not from one CPU's error: a sum of n terms of random sign carries a rounding error
    of about sqrt(n) u times the sum of the terms' magnitudes (Higham & Mary 2019, probabilistic analysis), and
    that sum is about sqrt(n) times the largest result, so the relative error grows like n u; each of the
    `computations` compared carries its own (BLAS libraries sum in different orders on different CPUs). The
    table's 1e-5 stays the floor: small problems keep the tight check."""
    return max(TOLERANCE[torch.float32], computations * reduction * UNIT_ROUNDOFF[torch.float32])


def bf16_tolerance(layers: int) -> float:
    """Relative error (as `relative_error`) allowed under bf16 autocast against float64, derived from bf16's
    precision: every GEMM rounds both operands to bf16's 8-bit significand (u = 2^-8 each), so each product
    carries up to 2u, and the float32 sum of such products of random sign carries about 2u of its own size; a
    layer chains two GEMMs (input and recurrent) and rounds its output to bf16 once more (u). Forward:
    L (2 * 2u + u); a gradient repeats the chain backwards: twice that. A wrong gate or a missing term is ~1."""
    return layers * 5 * UNIT_ROUNDOFF[torch.bfloat16]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(actual, expected, name: str, dtype: torch.dtype | None = None, tolerance: float | None = None
                 ) -> None:
    """Fail with the tensor's name, its max abs difference and its relative error (bound: the dtype's, or given)."""
    actual = torch.as_tensor(np.asarray(actual)) if not isinstance(actual, torch.Tensor) else actual
    expected = torch.as_tensor(np.asarray(expected)) if not isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    tol = tolerance if tolerance is not None else TOLERANCE[dtype or expected.dtype]
    rel = relative_error(actual, expected)
    diff = (actual.detach().double() - expected.detach().double()).abs().max().item() if expected.numel() else 0.0
    assert rel <= tol, f"{name}: max abs diff {diff:.3e}, relative error {rel:.3e} > tolerance {tol:.1e}"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def kernel_threads(batch: int) -> int:
    """How many threads the C kernel splits a batch of `batch` full-length sequences between (1 without it)."""
    from lstmkit.ops import lstm_cpu

    return lstm_cpu._plan([batch])[2] if lstm_cpu.available() else 1


needs_two_threads = pytest.mark.skipif(torch.get_num_threads() < 2, reason=(
    f"torch has {torch.get_num_threads()} thread here: the C kernel's rows cannot split between threads"))


def random_lstm_configs(count: int, seed: int, bidirectional: bool = True) -> list[dict]:
    """Random lstmkit.LSTM / torch.nn.LSTM constructor arguments plus a problem size: T, B and whether to pass an
    initial state (hx). Odd sizes, T=1 and B=1 are in the draw."""
    import random

    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        hidden = rng.choice([1, 4, 7, 13, 16])
        configs.append({
            "input_size": rng.choice([1, 3, 8, 9]), "hidden_size": hidden, "num_layers": rng.randint(1, 3),
            "bias": rng.random() < 0.8, "batch_first": rng.random() < 0.5,
            "bidirectional": bidirectional and rng.random() < 0.5,
            "proj_size": rng.choice([0, 0, hidden - 1]) if hidden > 1 else 0,
            "T": rng.choice([1, 2, 7, 9]), "B": rng.choice([1, 3, 5]), "hx": rng.random() < 0.5,
        })
    return configs


@contextlib.contextmanager
def batches_drawn(task_class: type):
    """The items of every training batch a task class makes while this is open (what a resumed run trains on:
    a resume that started over from step 0 would end with the same weights, but draws every batch again)."""
    drawn: list = []
    own = "make_batch" in vars(task_class)
    real = task_class.make_batch

    def counting(self, item, rank, world):
        drawn.append(item)
        return real(self, item, rank, world)

    task_class.make_batch = counting
    try:
        yield drawn
    finally:
        if own:
            task_class.make_batch = real
        else:
            del task_class.make_batch


@contextlib.contextmanager
def paths_pinned(path: str):
    """backend="auto" runs `path` wherever that path can run the call (a tuner of its own with "*" pinned)."""
    with tempfile.TemporaryDirectory() as folder, tune.using(tune.Tuner(Path(folder) / "dispatch.json")) as tuner:
        tuner.pin({"*": path})
        yield tuner
