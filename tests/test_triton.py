"""The op's Triton loops (`lstm_triton`: the GPU kernels), run by Triton's interpreter on the CPU: the op through
them against the NumPy oracle (float64) and against the torch backend (float32), over random shapes that cross
the kernels' tiles, both directions, projections and biases. On a machine with a CUDA GPU the same tests run the
compiled kernels when TRITON_INTERPRET is unset (then they take CUDA tensors)."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import assert_close, float32_tolerance
from test_op import assert_the_op_matches_the_oracle

from lstmkit.ops import lstm_cpu, lstm_op

pytest.importorskip("triton", reason="triton is not installed (pip install triton): its kernels are not checked")


lstm_triton = pytest.importorskip("lstmkit.ops.lstm_triton")
# CPU tensors under the interpreter (conftest sets TRITON_INTERPRET where no GPU is), else the compiled kernels on CUDA
DEVICE = "cpu" if lstm_triton.INTERPRETED else "cuda"


@pytest.fixture
def through_triton(monkeypatch):
    """The op runs its Triton loops (on CPU tensors under the interpreter too: the C kernel's loops out of the way);
    calls are counted."""
    monkeypatch.setattr(lstm_cpu, "supports", lambda *args: False)
    monkeypatch.setattr(lstm_op, "_triton_runs", lambda x, cell: cell.standard)
    triton_loops = lstm_triton
    calls = []
    forward = triton_loops.forward_loop
    monkeypatch.setattr(triton_loops, "forward_loop", lambda *a: calls.append("forward") or forward(*a))
    backward = triton_loops.backward_loop
    monkeypatch.setattr(triton_loops, "backward_loop", lambda *a: calls.append("backward") or backward(*a))
    return calls


# (T, B, I, H, P): one step; rows and units past one tile (16 rows, 32 units); a projection; K past one block (32)
SHAPES = [(1, 1, 1, 1, None), (3, 17, 4, 33, None), (4, 5, 3, 6, 2), (2, 3, 40, 8, None), (5, 2, 3, 36, 35)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_triton_loops_match_the_oracle_in_float64(through_triton, shape, reverse):
    assert_the_op_matches_the_oracle(shape, reverse, DEVICE)
    assert through_triton == ["forward", "backward"]


@pytest.mark.parametrize("seed", range(4))
def test_the_triton_loops_equal_the_torch_backend_in_float32(through_triton, seed):
    """The whole module on backend="op" (its loops Triton's) against backend="torch": outputs, states and every
    gradient under random upstream gradients; random sizes, layers, directions, projections and biases."""
    import lstmkit

    rng = random.Random(seed)
    T, B, I, H = rng.randint(1, 6), rng.randint(1, 20), rng.randint(1, 12), rng.randint(2, 40)
    options = {"num_layers": rng.randint(1, 2), "bidirectional": rng.random() < 0.5, "bias": rng.random() < 0.8,
               "proj_size": rng.choice([0, 0, max(1, H // 3)])}
    torch.manual_seed(seed)
    op = lstmkit.LSTM(I, H, backend="op", device=DEVICE, **options)
    portable = lstmkit.LSTM(I, H, backend="torch", device=DEVICE, **options)
    portable.load_state_dict(op.state_dict())
    x = torch.randn(T, B, I).to(DEVICE)
    results = []
    for module in (op, portable):
        leaf = x.clone().requires_grad_(True)
        y, (h_n, c_n) = module(leaf)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
        loss = (y * weights).sum() + (h_n ** 2).sum() + (0.5 * c_n).sum()
        results.append((y, h_n, c_n, *torch.autograd.grad(loss, [leaf, *module.parameters()])))
    assert "forward" in through_triton and "backward" in through_triton
    tolerance = float32_tolerance(T * B + H)
    for k, (a, b) in enumerate(zip(*results, strict=True)):
        assert_close(a, b, f"op (Triton) vs torch, output {k} of {options}", tolerance=tolerance)


def test_the_triton_loops_run_only_the_standard_cell_on_cuda():
    from lstmkit.ops.cell import Cell

    W, U, x = (torch.zeros(shape, device=DEVICE) for shape in ((8, 3), (8, 2), (4, 3)))
    assert lstm_triton.runs(x, Cell(W, U, None)) == (DEVICE == "cuda")  # CPU tensors: the op's own loops
    assert not lstm_triton.runs(x, Cell(W, U, None, cell_clip=1.0))  # a variant: the op's torch loops
    assert not lstm_triton.runs(x, Cell(W, U, None, peephole=torch.zeros(3, 2, device=DEVICE)))
    assert not lstm_op._triton_runs(torch.zeros(4, 3), Cell(torch.zeros(8, 3), torch.zeros(8, 2), None))
