"""lstmkit.LSTM / LSTMCell as drop-ins for torch.nn.LSTM / LSTMCell: same weights, same numbers, same API."""

from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass

import pytest
import torch
from conftest import assert_close, bf16_tolerance, paths_pinned
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import lstmkit
from lstmkit.ops import lstm_cpu


@dataclass(frozen=True)
class Config:
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    batch_first: bool = False
    bias: bool = True
    T: int = 5
    B: int = 3
    packed: str = ""  # "", "sorted" or "unsorted"
    with_hx: bool = True
    unbatched: bool = False


EDGE_CONFIGS = [
    Config(I=1, H=1, T=1, B=1),
    Config(I=3, H=123, T=1, B=1, with_hx=False),
    Config(I=4, H=7, T=63, B=2),
    Config(I=5, H=6, layers=3, bidirectional=True, proj=2, batch_first=True, packed="unsorted"),
    Config(I=2, H=5, layers=2, packed="sorted", T=6, B=4),
    Config(I=3, H=4, bias=False, bidirectional=True),
    Config(I=3, H=5, proj=3, unbatched=True),
    Config(I=2, H=3, layers=2, bidirectional=True, unbatched=True, with_hx=False),
]


def random_config(seed: int) -> Config:
    r = random.Random(seed)
    H = r.randint(1, 12)
    return Config(
        I=r.randint(1, 9), H=H, layers=r.randint(1, 3), bidirectional=r.random() < 0.5,
        proj=r.randint(1, H - 1) if H > 1 and r.random() < 0.35 else 0, batch_first=r.random() < 0.5,
        bias=r.random() < 0.85, T=r.choice([1, 2, r.randint(3, 17)]), B=r.choice([1, r.randint(2, 6)]),
        packed=r.choice(["", "", "sorted", "unsorted"]), with_hx=r.random() < 0.6,
    )


CONFIGS = EDGE_CONFIGS + [random_config(seed) for seed in range(30)]


def build_pair(cfg: Config, dtype=torch.float32, backend: str = "torch") -> tuple[lstmkit.LSTM, nn.LSTM]:
    args = (cfg.I, cfg.H, cfg.layers, cfg.bias, cfg.batch_first, 0.0, cfg.bidirectional, cfg.proj)
    ours, theirs = lstmkit.LSTM(*args, dtype=dtype, backend=backend), nn.LSTM(*args, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def make_inputs(cfg: Config, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D, P = 1 + cfg.bidirectional, cfg.proj or cfg.H
    shape = (cfg.T, cfg.I) if cfg.unbatched else ((cfg.B, cfg.T, cfg.I) if cfg.batch_first else (cfg.T, cfg.B, cfg.I))
    x = torch.randn(*shape, generator=g, dtype=dtype)
    state_shape = (cfg.layers * D,) if cfg.unbatched else (cfg.layers * D, cfg.B)
    h0 = torch.randn(*state_shape, P, generator=g, dtype=dtype)
    c0 = torch.randn(*state_shape, cfg.H, generator=g, dtype=dtype)
    lengths = None
    if cfg.packed:
        lengths = torch.randint(1, cfg.T + 1, (cfg.B,), generator=g)
        lengths[torch.randint(0, cfg.B, (1,), generator=g)] = cfg.T  # the longest one fills T
        if cfg.packed == "sorted":
            lengths = lengths.sort(descending=True).values
    return x, h0, c0, lengths


def run_and_backprop(module, cfg: Config, x, h0, c0, lengths, upstream_seed: int = 1):
    """Forward, then backward of sum(y*dy) + sum(h_n*dh) + sum(c_n*dc) with random dy, dh, dc."""
    x, h0, c0 = (t.clone().requires_grad_(True) for t in (x, h0, c0))
    inp = pack_padded_sequence(x, lengths, cfg.batch_first, enforce_sorted=cfg.packed == "sorted") if cfg.packed else x
    out, (h_n, c_n) = module(inp, (h0, c0) if cfg.with_hx else None)
    y = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(upstream_seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (y, h_n, c_n))
    loss.backward()
    grads = {"input": x.grad, **({"h_0": h0.grad, "c_0": c0.grad} if cfg.with_hx else {})}
    grads |= {name: p.grad for name, p in module.named_parameters()}
    return out, h_n, c_n, grads


def config_id(cfg: Config) -> str:
    parts = [f"I{cfg.I}H{cfg.H}L{cfg.layers}T{cfg.T}B{cfg.B}"]
    parts += [flag for flag, on in (("bi", cfg.bidirectional), ("bf", cfg.batch_first), ("nobias", not cfg.bias),
                                    ("nohx", not cfg.with_hx), ("unbatched", cfg.unbatched)) if on]
    parts += [f"proj{cfg.proj}"] if cfg.proj else []
    parts += [f"packed-{cfg.packed}"] if cfg.packed else []
    return "-".join(parts)


# "torch" is lstmkit's own computation; "auto" runs torch's fused kernel or the C kernel, and this checks its
# plumbing (state layout, packing, batch order) in lstmkit.LSTM.
BACKENDS = ["torch", "auto"]
# The oracle of each path: "torch" against torch.nn.LSTM; what "auto" runs, with the path pinned, against "torch"
# (not against nn.LSTM, whose op is the very one the "vendor" path calls: torch compared with torch).
PATHS = ["torch", "auto:vendor", "auto:cpu"]


def pinned(path: str):
    """A context running backend="auto" on `path` ("auto:vendor", "auto:cpu"), or nothing for a plain backend."""
    return paths_pinned(path.split(":")[1]) if path.startswith("auto:") else contextlib.nullcontext()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_matches_torch_nn_lstm(cfg: Config, path: str):
    if path == "auto:cpu" and not lstm_cpu.available():
        pytest.skip(f"the C kernel is not built here ({lstm_cpu.unavailable_reason()})")
    ours, theirs = build_pair(cfg, backend=path.split(":")[0])
    oracle = theirs if path == "torch" else lstmkit.LSTM.from_torch(theirs, backend="torch")
    inputs = make_inputs(cfg)
    with pinned(path) as tuner:
        out_a, h_a, c_a, grads_a = run_and_backprop(ours, cfg, *inputs)
    if tuner is not None:
        ran = {v for k, v in tuner.decisions().items() if not k.startswith("gemm|")}
        assert ran == {path.split(":")[1]}, f"{path} pinned, but auto ran {ran}"
    out_b, h_b, c_b, grads_b = run_and_backprop(oracle, cfg, *inputs)
    if cfg.packed:
        assert isinstance(out_a, PackedSequence)
        assert torch.equal(out_a.batch_sizes, out_b.batch_sizes)
        for field in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out_a, field), getattr(out_b, field)
            assert (a is None and b is None) or torch.equal(a, b), field
        out_a, out_b = out_a.data, out_b.data
    assert_close(out_a, out_b, f"{path}: output")
    assert_close(h_a, h_b, f"{path}: h_n")
    assert_close(c_a, c_b, f"{path}: c_n")
    assert set(grads_a) == set(grads_b)
    for name in grads_a:
        assert_close(grads_a[name], grads_b[name], f"{path}: grad of {name}")


@pytest.mark.parametrize("cfg", CONFIGS[:8], ids=config_id)
def test_matches_torch_nn_lstm_in_float64(cfg: Config):
    ours, theirs = build_pair(cfg, torch.float64)
    inputs = make_inputs(cfg, torch.float64)
    out_a, h_a, c_a, grads_a = run_and_backprop(ours, cfg, *inputs)
    out_b, h_b, c_b, grads_b = run_and_backprop(theirs, cfg, *inputs)
    y_a = out_a.data if cfg.packed else out_a
    y_b = out_b.data if cfg.packed else out_b
    for name, a, b in (("output", y_a, y_b), ("h_n", h_a, h_b), ("c_n", c_a, c_b)):
        assert_close(a, b, name)
    for name in grads_a:
        assert_close(grads_a[name], grads_b[name], f"grad of {name}")


def test_state_dict_round_trip_both_ways():
    cfg = Config(I=4, H=6, layers=2, bidirectional=True, proj=3)
    torch.manual_seed(3)
    theirs = nn.LSTM(cfg.I, cfg.H, cfg.layers, bidirectional=True, proj_size=cfg.proj)
    ours = lstmkit.LSTM(cfg.I, cfg.H, cfg.layers, bidirectional=True, proj_size=cfg.proj)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.state_dict().items())
    ours.load_state_dict(theirs.state_dict())  # torch -> lstmkit
    back = nn.LSTM(cfg.I, cfg.H, cfg.layers, bidirectional=True, proj_size=cfg.proj)
    back.load_state_dict(ours.state_dict())  # lstmkit -> torch
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(5, 2, cfg.I)
    assert_close(ours(x)[0], back(x)[0], "output after the round trip")
    assert torch.equal(lstmkit.LSTM.from_torch(theirs).to_torch().weight_hr_l1_reverse, theirs.weight_hr_l1_reverse)


def test_forget_bias_zero_is_torch_initialisation_and_one_shifts_the_forget_gate():
    torch.manual_seed(42)
    theirs = nn.LSTM(3, 8, 2, bidirectional=True, proj_size=4)
    torch.manual_seed(42)
    plain = lstmkit.LSTM(3, 8, 2, bidirectional=True, proj_size=4, forget_bias=0.0)
    torch.manual_seed(42)
    shifted = lstmkit.LSTM(3, 8, 2, bidirectional=True, proj_size=4)  # default forget_bias=1.0
    for name, p in theirs.named_parameters():
        assert torch.equal(getattr(plain, name), p), name
        delta = getattr(shifted, name) - p
        if name.startswith("bias_ih"):
            assert torch.allclose(delta[8:16], torch.ones(8)), name  # the forget block, i f g o
            assert torch.equal(delta[:8], torch.zeros(8)) and torch.equal(delta[16:], torch.zeros(16)), name
        else:
            assert torch.equal(delta, torch.zeros_like(delta)), name
    cell = lstmkit.LSTMCell(3, 5, forget_bias=2.0)
    assert (cell.bias_ih[5:10] >= 2.0 - 1 / 5**0.5).all() and (cell.bias_ih[:5].abs() <= 1 / 5**0.5).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_invariance_each_sequence_as_if_alone(backend):
    torch.manual_seed(5)
    lstm = lstmkit.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True, backend=backend)
    lengths = torch.tensor([4, 9, 1, 6])
    x = torch.randn(4, 9, 3)
    x_padded = x.clone()
    for k, n in enumerate(lengths):
        x_padded[k, n:] = 1e3  # garbage in the padding must not matter
    out, (h_n, c_n) = lstm(pack_padded_sequence(x_padded, lengths, batch_first=True, enforce_sorted=False))
    padded, out_lengths = pad_packed_sequence(out, batch_first=True)
    assert torch.equal(out_lengths, lengths)
    for k, n in enumerate(lengths.tolist()):
        alone, (h_alone, c_alone) = lstm(x[k : k + 1, :n])
        assert_close(padded[k, :n], alone[0], f"output of sequence {k}")
        assert torch.equal(padded[k, n:], torch.zeros_like(padded[k, n:])), f"padding of sequence {k}"
        assert_close(h_n[:, k], h_alone[:, 0], f"h_n of sequence {k}")
        assert_close(c_n[:, k], c_alone[:, 0], f"c_n of sequence {k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_in_eval_mode_equal_train_mode_without_dropout(backend):
    lstm = lstmkit.LSTM(3, 5, num_layers=2, backend=backend)
    x = torch.randn(6, 2, 3, requires_grad=True)
    grads = []
    for mode in (lstm.train, lstm.eval):
        mode()
        x.grad = None
        lstm.zero_grad()
        lstm(x)[0].pow(2).sum().backward()
        grads.append((x.grad.clone(), lstm.weight_hh_l1.grad.clone()))
    assert not lstm.training
    assert grads[1][0].abs().sum() > 0
    assert_close(grads[1][0], grads[0][0], "input grad, eval vs train")
    assert_close(grads[1][1], grads[0][1], "weight_hh_l1 grad, eval vs train")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_acts_between_layers_in_training_only(backend):
    lstm = lstmkit.LSTM(3, 16, num_layers=2, dropout=0.5, backend=backend)
    x = torch.randn(4, 2, 3)
    lstm.eval()
    assert torch.equal(lstm(x)[0], lstm(x)[0])
    no_dropout = lstmkit.LSTM(3, 16, num_layers=2, backend=backend)
    no_dropout.load_state_dict(lstm.state_dict())
    assert torch.equal(lstm(x)[0], no_dropout(x)[0])
    lstm.train()
    a, b = lstm(x)[0], lstm(x)[0]
    assert not torch.equal(a, b)
    assert not torch.allclose(a, no_dropout(x)[0])
    with pytest.warns(UserWarning, match="dropout acts between stacked layers"):
        lstmkit.LSTM(3, 4, num_layers=1, dropout=0.2)


def test_lstm_cell_matches_torch_and_the_lstm_layer():
    torch.manual_seed(9)
    theirs = nn.LSTMCell(4, 7)
    ours = lstmkit.LSTMCell(4, 7)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 4, requires_grad=True)
    h0, c0 = torch.randn(3, 7, requires_grad=True), torch.randn(3, 7, requires_grad=True)
    results = []
    for cell in (ours, theirs):
        h1, c1 = cell(x, (h0, c0))
        grads = torch.autograd.grad((h1 * torch.arange(7.0)).sum() + c1.sum(), (x, h0, c0, cell.weight_hh))
        results.append((h1, c1, *grads))
    for name, a, b in zip(("h_1", "c_1", "dx", "dh0", "dc0", "dU"), *results, strict=True):
        assert_close(a, b, name)
    h_unbatched, c_unbatched = ours(x[0], (h0[0], c0[0]))
    assert_close(h_unbatched, results[0][0][0], "unbatched h_1")
    assert_close(c_unbatched, results[0][1][0], "unbatched c_1")
    # Stepping the cell T times is the one-layer LSTM.
    layer = lstmkit.LSTM(4, 7)
    layer.load_state_dict({f"{k}_l0": v for k, v in ours.state_dict().items()})
    seq = torch.randn(5, 3, 4)
    state = None
    for t in range(5):
        state = ours(seq[t], state)
    out, (h_n, c_n) = layer(seq)
    assert_close(state[0], h_n[0], "h after 5 cell steps")
    assert_close(state[1], c_n[0], "c after 5 cell steps")


def test_trace_is_consistent_with_the_forward_and_differentiable():
    torch.manual_seed(2)
    lstm = lstmkit.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, proj_size=2)
    lstm.eval()
    lengths = torch.tensor([3, 7, 5])
    x = torch.randn(3, 7, 3)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    tr = lstmkit.trace(lstm, packed)
    out, (h_n, c_n) = lstm(packed)
    # The trace runs the portable backend; "auto" may run the C kernel (same maths, other rounding).
    assert_close(tr.output.data, out.data, "traced output")
    assert_close(tr.h_n, h_n, "traced h_n")
    assert_close(tr.c_n, c_n, "traced c_n")
    lstm.backend = "torch"
    portable_out, (portable_h, portable_c) = lstm(packed)
    assert torch.equal(tr.output.data, portable_out.data) and torch.equal(tr.h_n, portable_h)
    assert torch.equal(tr.c_n, portable_c)
    assert torch.equal(tr.lengths, lengths)
    padded_out = pad_packed_sequence(out)[0]  # [T, B, 2P]
    for layer in range(2):
        for direction in range(2):
            gates = tr[layer, direction]
            assert gates.i.shape == gates.f.shape == gates.g.shape == gates.o.shape == gates.c.shape == (7, 3, 5)
            assert gates.h.shape == (7, 3, 2)
            for k, n in enumerate(lengths.tolist()):
                assert (gates.f[n:, k] == 0).all(), "padded steps are zero"
                last = n - 1 if direction == 0 else 0  # the reverse direction ends at step 0
                assert_close(gates.c[last, k], c_n[2 * layer + direction, k], f"c at the last step, seq {k}")
                # Equation 6.55 and 6.56 hold between the recorded tensors.
                c_prev = gates.c[: n - 1, k] if direction == 0 else gates.c[1:n, k]
                c_next = gates.c[1:n, k] if direction == 0 else gates.c[: n - 1, k]
                f_next, i_next, g_next = ((gates.f, gates.i, gates.g)[j][1:n, k] if direction == 0
                                          else (gates.f, gates.i, gates.g)[j][: n - 1, k] for j in range(3))
                assert_close(c_next, f_next * c_prev + i_next * g_next, "c_t = f*c_{t-1} + i*g")
    assert_close(tr[1, 0].h, padded_out[..., :2], "last layer's forward h is the output")
    assert_close(tr[1, 1].h, padded_out[..., 2:], "last layer's reverse h is the output")
    # Gradients flow through the trace, in eval mode.
    x.requires_grad_(True)
    tr = lstmkit.trace(lstm, x)
    tr[0].f.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert tr[0, 0].i.shape == (7, 3, 5)  # batch_first input, time-major trace


def test_trace_of_unbatched_and_of_a_torch_module():
    lstm = lstmkit.LSTM(2, 4)
    tr = lstmkit.trace(lstm, torch.randn(6, 2))
    assert tr[0].o.shape == (6, 1, 4)
    assert_close(tr[0].h[:, 0], tr.output, "unbatched h")
    with pytest.raises(TypeError, match="from_torch"):
        lstmkit.trace(nn.LSTM(2, 4), torch.randn(6, 2))


# --- bad input: a clear ValueError / TypeError saying what was expected and what was given ---------------

@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_size": 0, "hidden_size": 4}, ValueError, "input_size must be >= 1, got 0"),
        ({"input_size": 3, "hidden_size": -2}, ValueError, "hidden_size must be >= 1, got -2"),
        ({"input_size": 3.0, "hidden_size": 4}, TypeError, "input_size must be an int"),
        ({"input_size": 3, "hidden_size": 4, "num_layers": 0}, ValueError, "num_layers must be >= 1"),
        ({"input_size": 3, "hidden_size": 4, "proj_size": 4}, ValueError, "proj_size must be smaller than hidden_size"),
        ({"input_size": 3, "hidden_size": 4, "proj_size": -1}, ValueError, "proj_size must be >= 0"),
        ({"input_size": 3, "hidden_size": 4, "dropout": 1.5}, ValueError, "dropout must be a probability"),
        ({"input_size": 3, "hidden_size": 4, "backend": "gpu"}, ValueError, "backend must be one of"),
        ({"input_size": 3, "hidden_size": 4, "forget_bias": float("nan")}, ValueError, "forget_bias must be a finite"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        lstmkit.LSTM(**kwargs)


def _bad_calls():
    lstm = lstmkit.LSTM(3, 4, num_layers=2)
    ok = torch.randn(5, 2, 3)
    h_ok, c_ok = torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)
    return lstm, [
        ("rank", lambda: lstm(torch.randn(5, 2, 3, 1)), ValueError, r"must be 3-D \[T, B, I\].*got 4-D"),
        ("features", lambda: lstm(torch.randn(5, 2, 7)), ValueError, "7 features per step but .*input_size=3"),
        ("dtype", lambda: lstm(ok.double()), TypeError, "dtype torch.float64 but the LSTM's parameters are .*float32"),
        ("int", lambda: lstm(torch.ones(5, 2, 3, dtype=torch.int64)), TypeError, "must be a floating-point tensor"),
        ("device", lambda: lstm(torch.empty(5, 2, 3, device="meta")), ValueError, "on device meta but"),
        ("not a tensor", lambda: lstm([[1.0, 2.0, 3.0]]), TypeError, "must be a torch.Tensor, got list"),
        ("empty T", lambda: lstm(torch.randn(0, 2, 3)), ValueError, r"input is empty \(T=0"),
        ("empty B", lambda: lstm(torch.randn(5, 0, 3)), ValueError, r"input is empty \(T=5 steps, B=0"),
        ("h0 shape", lambda: lstm(ok, (torch.zeros(1, 2, 4), c_ok)), ValueError, r"h_0 must have shape \(2, 2, 4\)"),
        ("c0 shape", lambda: lstm(ok, (h_ok, torch.zeros(2, 3, 4))), ValueError, r"c_0 must have shape \(2, 2, 4\)"),
        ("hx type", lambda: lstm(ok, h_ok), TypeError, r"hx must be a tuple \(h_0, c_0\)"),
        ("hx dtype", lambda: lstm(ok, (h_ok.double(), c_ok)), TypeError, "h_0 has dtype torch.float64"),
        ("unbatched hx", lambda: lstm(torch.randn(5, 3), (h_ok, c_ok)), ValueError, r"h_0 must have shape \(2, 4\)"),
        ("bad packed", lambda: lstm(PackedSequence(torch.randn(6, 3), torch.tensor([1, 2, 3]))), ValueError,
         "batch_sizes must be positive and non-increasing"),
        ("packed features", lambda: lstm(PackedSequence(torch.randn(6, 2), torch.tensor([3, 2, 1]))), ValueError,
         r"PackedSequence.data must be \[sum\(batch_sizes\)=6, input_size=3\]"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls()[1])), ids=[c[0] for c in _bad_calls()[1]])
def test_bad_forward_input(case):
    _, calls = _bad_calls()
    _, call, error, match = calls[case]
    with pytest.raises(error, match=match):
        call()


def test_pack_padded_sequence_says_what_is_wrong():
    x = torch.randn(5, 3, 2)
    with pytest.raises(ValueError, match="sorted longest first when enforce_sorted=True, got \\[2, 5, 1\\]"):
        lstmkit.pack_padded_sequence(x, [2, 5, 1])
    with pytest.raises(ValueError, match="between 1 and T=5 .*got 0"):
        lstmkit.pack_padded_sequence(x, [5, 2, 0])
    with pytest.raises(ValueError, match="got 2 lengths for a batch of 3"):
        lstmkit.pack_padded_sequence(x, [5, 2])
    packed = lstmkit.pack_padded_sequence(x, [2, 5, 1], enforce_sorted=False)
    assert packed.batch_sizes.tolist() == [3, 2, 1, 1, 1]


def test_lstm_cell_bad_input():
    cell = lstmkit.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"input must be \[B, 3\] or unbatched \[3\], got \(2, 5\)"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(2, 5), torch.zeros(2, 4)))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        cell(torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("path", PATHS)
def test_autocast_input_like_torch_nn_lstm(path: str):
    """Under bf16 autocast an fp32 LSTM takes bf16 input, as torch.nn.LSTM does (e.g. after a Linear). Each path
    against the float64 portable backend on the same bf16 input, within a bound derived from bf16's precision."""
    if path == "auto:cpu" and not lstm_cpu.available():
        pytest.skip(f"the C kernel is not built here ({lstm_cpu.unavailable_reason()})")
    torch.manual_seed(4)
    linear = nn.Linear(8, 16)
    x = torch.randn(20, 4, 8)
    ours = lstmkit.LSTM(16, 32, 2, backend=path.split(":")[0])
    oracle = lstmkit.LSTM.from_torch(ours.to_torch().double(), backend="torch")
    with pinned(path) as tuner, torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = linear(x)
        out_a, (h_a, _) = ours(inputs)
    if tuner is not None:
        ran = {v for k, v in tuner.decisions().items() if not k.startswith("gemm|")}
        assert ran == {path.split(":")[1]}, f"{path} pinned, but auto ran {ran}"
    assert inputs.dtype == out_a.dtype == h_a.dtype == torch.bfloat16, (inputs.dtype, out_a.dtype, h_a.dtype)
    out_b, (h_b, _) = oracle(inputs.double())
    tolerance = bf16_tolerance(layers=2)
    assert_close(out_a, out_b, f"output under autocast ({path}) vs float64", tolerance=tolerance)
    assert_close(h_a, h_b, f"h_n under autocast ({path}) vs float64", tolerance=tolerance)
    with pytest.raises(TypeError, match="dtype torch.bfloat16 but the LSTM's parameters are"):
        ours(torch.randn(3, 2, 16, dtype=torch.bfloat16))  # outside autocast: still an error


def test_module_api_surface():
    lstm = lstmkit.LSTM(3, 4, 2, bidirectional=True, proj_size=2, batch_first=True)
    assert "proj_size=2" in repr(lstm) and "forget_bias=1.0" in repr(lstm)
    assert len(lstm.all_weights) == 4 and len(lstm.all_weights[0]) == 5
    lstm.flatten_parameters()  # exists, like torch's
    assert lstmkit.GATE_ORDER == ("i", "f", "g", "o")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstmkit.LSTM(3, 4)(torch.randn(2, 1, 3))  # no warning on the common path
