"""LSTM variants (peepholes, coupled input-forget gate, cell clip, layer normalisation, recurrent dropout, weight
drop, per-layer forget bias): the oracle's BPTT against finite differences, every backend against the oracle
(float64, random upstream gradients, both directions, packed rows, projections), the fused paths against the torch
backend (float32), and the module's arguments, errors, masks, traces, streaming and runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import assert_close, paths_pinned
from test_ops import GRAD_NAMES

import lstmkit
from lstmkit.nn import LSTM, LSTMCell, bernoulli_mask, dropout_mask
from lstmkit.ops import lstm_cpu, lstm_op, lstm_torch
from lstmkit.ops.cell import Cell
from lstmkit.reference import check_bptt, lstm_backward, lstm_forward, random_lstm_problem
from lstmkit.stream import LSTMStream

GRAD_NAMES = {**GRAD_NAMES, "peephole": "dpeephole", "ln_x": "dln_x", "ln_h": "dln_h", "ln_c": "dln_c"}
# (peephole, coupled_gates, cell_clip, layer_norm, recurrent_dropout, zoneout): each feature alone, then together;
# the last two are the rates of the recurrent dropout (a fixed mask per sequence) and of zoneout (Bernoulli masks on
# h and c at every step). The C kernel and the op compute them all (FUSED: those without layer normalisation, which
# has its own float32 test, test_the_c_kernel_and_the_op_compute_layer_norm_...).
VARIANTS = [(True, False, 0.0, False, 0.0, 0.0), (False, True, 0.0, False, 0.0, 0.0),
            (False, False, 0.7, False, 0.0, 0.0), (True, True, 0.9, False, 0.0, 0.0),
            (False, False, 0.0, True, 0.0, 0.0), (True, True, 0.9, True, 0.0, 0.0),
            (False, False, 0.0, False, 0.4, 0.0), (False, False, 0.0, False, 0.0, 0.4),
            (True, True, 0.9, False, 0.4, 0.4), (True, True, 0.9, True, 0.4, 0.4)]
VARIANT_IDS = ["peephole", "cifg", "clip", "cell-fused", "layer_norm", "ln-all", "recurrent_dropout", "zoneout",
               "all-fused", "all"]
ZONEOUT = ("zoneout_h", "zoneout_c")  # the masks [T, B, *] of the oracle's inputs
FUSED = [v for v in VARIANTS if not v[3]]
LAYERS = {"torch": lstm_torch.lstm_layer, "cpu": lstm_cpu.lstm_layer, "op": lstm_op.layer}


def problem(seed: int, T: int, B: int, I: int, H: int, P: int | None, variant: tuple) -> tuple[dict, dict, dict]:
    peephole, coupled, clip, layer_norm, dropout, zoneout = variant
    inputs, upstream = random_lstm_problem(np.random.default_rng(seed), T, B, I, H, P, peephole=peephole,
                                           coupled_gates=coupled, layer_norm=layer_norm, recurrent_dropout=dropout,
                                           zoneout=zoneout)
    return inputs, upstream, {"coupled_gates": coupled, "cell_clip": clip}


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", [(1, 1, 2, 1, None), (5, 2, 3, 4, None), (4, 3, 2, 5, 2)],
                         ids=lambda s: "T{}-B{}-I{}-H{}-P{}".format(*s))
def test_variant_bptt_matches_finite_differences(variant, shape):
    if variant[3] and shape[3] == 1:  # LN of one unit is a constant (LSTM refuses it): H = 2 instead
        shape = (*shape[:3], 2, shape[4])
    inputs, upstream, options = problem(sum(shape[:4]) + 31, *shape, variant)
    errors = check_bptt(inputs, upstream, **options)
    assert ("dpeephole" in errors) == variant[0]
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, f"{worst}: relative error {errors[worst]:.2e} against finite differences"
    if options["cell_clip"] and shape[0] > 1:  # the clip must be active somewhere and not everywhere
        s = lstm_forward(**inputs, **options)[3].s
        clipped = np.abs(s) >= options["cell_clip"]
        assert clipped.any() and not clipped.all()


def test_cifg_and_peephole_by_hand():
    """One unit, one step: f = 1 - i, and the peepholes read c_{t-1} for i and f, c_t for o."""
    x, h0, c0 = np.ones((1, 1, 1)), np.zeros((1, 1)), np.array([[2.0]])
    W, U, b = np.array([[0.5], [1.0], [-0.5]]), np.zeros((3, 1)), np.zeros(3)  # blocks i, g, o
    p = np.array([[0.25], [9.0], [0.5]])  # p_f is unused with coupled gates
    _, hT, cT, cache = lstm_forward(x, W, U, b, h0, c0, peephole=p, coupled_gates=True)
    i = 1 / (1 + np.exp(-(0.5 + 0.25 * 2.0)))
    c = (1 - i) * 2.0 + i * np.tanh(1.0)
    o = 1 / (1 + np.exp(-(-0.5 + 0.5 * c)))
    assert cache.f[0, 0, 0] == pytest.approx(1 - i, abs=1e-15)
    assert cT[0, 0] == pytest.approx(c, abs=1e-15)
    assert hT[0, 0] == pytest.approx(o * np.tanh(c), abs=1e-15)


def run_layer(layer_fn, inputs, upstream, options, batch_sizes, reverse):
    """One layer on float64 copies of the oracle's inputs (x as rows); outputs and every gradient."""
    constants = ("h_mask", *ZONEOUT)
    leaves = {k: torch.tensor(v, requires_grad=k not in constants) for k, v in inputs.items()}
    mask = leaves.pop("h_mask", None)
    # zoneout masks as the layer's rows (given as rows when packed, time-major [T, B, *] otherwise)
    zoneout = [leaves.pop(k).reshape(-1, inputs[k].shape[-1]) if k in inputs else None for k in ZONEOUT]
    x = leaves["x"]
    rows = x.reshape(-1, x.shape[-1]) if batch_sizes is None else x
    T, B = (inputs["x"].shape[0], inputs["x"].shape[1]) if batch_sizes is None else (len(batch_sizes), batch_sizes[0])
    sizes = (T, B) if layer_fn is lstm_op.layer else (batch_sizes or [B] * T)
    ln = (leaves["ln_x"], leaves["ln_h"], leaves["ln_c"]) if "ln_x" in leaves else None
    cell = Cell(leaves["W"], leaves["U"], leaves["b"], leaves.get("R"), leaves.get("peephole"), **options,
                layer_norm=ln, h_mask=mask, zoneout_h=zoneout[0], zoneout_c=zoneout[1])
    y, hT, cT = layer_fn(rows, sizes, leaves["h0"], leaves["c0"], cell, reverse=reverse)
    dy = torch.tensor(upstream["dy"]).reshape(y.shape)
    ((y * dy).sum() + (hT * torch.tensor(upstream["dhT"])).sum() + (cT * torch.tensor(upstream["dcT"])).sum()
     ).backward()
    return y, hT, cT, {GRAD_NAMES[k]: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("path", ["torch", "op", "cpu"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_every_path_computes_the_variants_as_the_oracle(path, variant, reverse):
    """float64, full-length batches, with and without a projection: outputs, states and every gradient. (In
    float64 the op runs its torch loops and "cpu" the torch backend; the C loops are the float32 tests below.)"""
    for k, (T, B, I, H, P) in enumerate([(6, 3, 4, 5, None), (5, 2, 3, 6, 3), (1, 1, 2, 1 + variant[3], None)]):
        inputs, upstream, options = problem(100 * k + 7 * reverse + len(path), T, B, I, H, P, variant)
        flip = (lambda a: a[::-1].copy()) if reverse else (lambda a: a)
        flipped = {k: flip(inputs[k]) for k in ("x", *ZONEOUT) if k in inputs}  # per step, in processing order
        y_ref, hT_ref, cT_ref, cache = lstm_forward(**dict(inputs, **flipped), **options)
        grads_ref = lstm_backward(flip(upstream["dy"]), upstream["dhT"], upstream["dcT"], cache)
        y, hT, cT, grads = run_layer(LAYERS[path], inputs, upstream, options, None, reverse)
        assert_close(y.view(T, B, -1), flip(y_ref), f"{path} y")
        assert_close(hT, hT_ref, f"{path} h_T")
        assert_close(cT, cT_ref, f"{path} c_T")
        assert grads.keys() == grads_ref.keys()
        for name, g in grads.items():
            expected = flip(grads_ref[name]) if name == "dx" else grads_ref[name]
            assert_close(g, expected, f"{path} {name} (shape {T, B, I, H, P})")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_packed_rows_of_a_variant_are_the_oracle_per_sequence(variant, reverse):
    lengths, I, H, P = [6, 4, 4, 1], 3, 5, 2
    T, B = lengths[0], len(lengths)
    inputs, upstream, options = problem(17 + reverse, T, B, I, H, P, variant)
    batch_sizes = [sum(n > t for n in lengths) for t in range(T)]
    order = [(t, k) for t in range(T) for k in range(batch_sizes[t])]
    packed = dict(inputs, **{name: np.stack([inputs[name][t, k] for t, k in order]) for name in ("x", *ZONEOUT)
                             if name in inputs})
    packed_up = dict(upstream, dy=np.stack([upstream["dy"][t, k] for t, k in order]))
    y, hT, cT, grads = run_layer(lstm_torch.lstm_layer, packed, packed_up, options, batch_sizes, reverse)
    summed = {name: 0.0 for name in grads if name not in ("dx", "dh0", "dc0")}
    for k, n in enumerate(lengths):
        step = slice(None, None, -1) if reverse else slice(None)
        alone = dict(inputs, x=inputs["x"][:n, k:k + 1][step].copy(), h0=inputs["h0"][k:k + 1],
                     c0=inputs["c0"][k:k + 1])
        if "h_mask" in inputs:  # sequence k's own mask (its row of the batch's)
            alone["h_mask"] = inputs["h_mask"][k:k + 1]
        for name in ZONEOUT:  # and its own zoneout masks, in processing order
            if name in inputs:
                alone[name] = inputs[name][:n, k:k + 1][step].copy()
        y_ref, hT_ref, cT_ref, cache = lstm_forward(**alone, **options)
        g = lstm_backward(upstream["dy"][:n, k:k + 1][step].copy(), upstream["dhT"][k:k + 1],
                          upstream["dcT"][k:k + 1], cache)
        mine = [order.index((t, k)) for t in range(n)]
        assert_close(y[mine], y_ref[step][:, 0].copy(), f"y of sequence {k}")
        assert_close(hT[k], hT_ref[0], f"h_T of sequence {k}")
        assert_close(cT[k], cT_ref[0], f"c_T of sequence {k}")
        assert_close(grads["dx"][mine], g["dx"][step][:, 0].copy(), f"dx of sequence {k}")
        for name in summed:
            summed[name] = summed[name] + g[name]
    for name, total in summed.items():
        assert_close(grads[name], total, f"{name} summed over sequences")


def cell_of_oracle(inputs: dict, options: dict, zoneout: float) -> LSTMCell:
    """An LSTMCell (float64) holding the oracle problem's weights: b in bias_ih, bias_hh zero."""
    I, H = inputs["x"].shape[2], inputs["c0"].shape[1]
    cell = LSTMCell(I, H, dtype=torch.float64, peephole="peephole" in inputs, layer_norm="ln_x" in inputs,
                    coupled_gates=options["coupled_gates"], cell_clip=options["cell_clip"] or None,
                    zoneout_h=zoneout, zoneout_c=zoneout)
    names = {"W": "weight_ih", "U": "weight_hh", "b": "bias_ih", "peephole": "weight_peephole",
             "ln_x": "layer_norm_ih", "ln_h": "layer_norm_hh", "ln_c": "layer_norm_c"}
    with torch.no_grad():
        cell.bias_hh.zero_()
        for key, name in names.items():
            if key in inputs:
                getattr(cell, name).copy_(torch.from_numpy(inputs[key]))
    return cell


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v[4]],
                         ids=[name for v, name in zip(VARIANTS, VARIANT_IDS, strict=True) if not v[4]])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_cell_stepped_by_hand_computes_the_variants_as_the_oracle(variant, training):
    """LSTMCell called step by step: outputs, state and every gradient against the oracle's layer, float64, with
    zoneout's masks those the cell draws (the same seed, the same draws: h's then c's at every step) in training
    and its rates in eval."""
    T, B, I, H = 5, 3, 4, 6
    inputs, upstream, options = problem(41 + training, T, B, I, H, None, variant)
    rate = variant[5]
    cell = cell_of_oracle(inputs, options, rate).train(training)
    if rate:
        torch.manual_seed(8)
        if training:
            draws = [bernoulli_mask(cell.weight_ih, (B, H), rate).numpy() for _ in range(2 * T)]
            inputs["zoneout_h"], inputs["zoneout_c"] = np.stack(draws[0::2]), np.stack(draws[1::2])
        else:
            inputs["zoneout_h"] = inputs["zoneout_c"] = np.full((T, B, H), rate)
        torch.manual_seed(8)
    y_ref, hT_ref, cT_ref, cache = lstm_forward(**inputs, **options)
    grads_ref = lstm_backward(upstream["dy"], upstream["dhT"], upstream["dcT"], cache)
    x, h0, c0 = (torch.tensor(inputs[k], requires_grad=True) for k in ("x", "h0", "c0"))
    h, c, ys = h0, c0, []
    for t in range(T):
        h, c = cell(x[t], (h, c))
        ys.append(h)
    y = torch.stack(ys)
    loss = (y * torch.from_numpy(upstream["dy"])).sum() + (h * torch.from_numpy(upstream["dhT"])).sum() + \
        (c * torch.from_numpy(upstream["dcT"])).sum()
    loss.backward()
    assert_close(y, y_ref, "y")
    assert_close(h, hT_ref, "h_T")
    assert_close(c, cT_ref, "c_T")
    grads = {"dx": x.grad, "dh0": h0.grad, "dc0": c0.grad, "dW": cell.weight_ih.grad, "dU": cell.weight_hh.grad,
             "db": cell.bias_ih.grad}
    for key, name in (("dpeephole", "weight_peephole"), ("dln_x", "layer_norm_ih"), ("dln_h", "layer_norm_hh"),
                      ("dln_c", "layer_norm_c")):
        if key in grads_ref:
            grads[key] = getattr(cell, name).grad
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert_close(g, grads_ref[name], f"cell {name}")
    assert_close(cell.bias_hh.grad, grads_ref["db"], "cell db of bias_hh")


def test_the_cell_of_a_variant_is_the_one_layer_lstm_and_refuses_what_it_cannot_see():
    """Stepped over a sequence, a variant cell with a one-layer LSTM's weights gives its outputs (the names map
    weight_ih <-> weight_ih_l0, ...); its parameters, forget bias, errors and loading follow lstmkit.LSTM's."""
    torch.manual_seed(2)
    variant = {"peephole": True, "coupled_gates": True, "cell_clip": 0.8, "layer_norm": True}
    lstm = LSTM(3, 5, dtype=torch.float64, forget_bias=2.0, **variant)
    torch.manual_seed(2)
    cell = LSTMCell(3, 5, dtype=torch.float64, forget_bias=2.0, **variant)
    assert {k: v.shape for k, v in cell.state_dict().items()} == {
        k.removesuffix("_l0"): v.shape for k, v in lstm.state_dict().items()}
    for name, value in lstm.state_dict().items():  # same draws, same forget-bias shift (-2 on i: f = 1 - i)
        assert torch.equal(cell.state_dict()[name.removesuffix("_l0")], value), name
    assert cell.variant_features == lstm.variant_features
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    out, (h_n, c_n) = lstm(x)
    h = c = torch.zeros(2, 5, dtype=torch.float64)
    for t in range(7):
        h, c = cell(x[t], (h, c))
        assert_close(h, out[t], f"h_{t}")
    assert_close(c, c_n[0], "c_T")
    for kwargs, message in (({"recurrent_dropout": 0.2}, "recurrent_dropout keeps one mask for a whole sequence"),
                            ({"weight_drop": 0.5}, r"use lstmkit.LSTM\(weight_drop=...\)"),
                            ({"input_dropout": 0.1}, "input_dropout keeps one mask"),
                            ({"zoneout_h": 1.0}, r"zoneout_h must be a probability in \[0, 1\)"),
                            ({"cell_clip": -1.0}, "cell_clip must be a number > 0"),
                            ({"layer_norm": True, "hidden_size": 1}, "layer_norm needs hidden_size >= 2"),
                            ({"peephole": 1}, "peephole must be True or False")):
        with pytest.raises((ValueError, TypeError), match=message) as error:
            LSTMCell(**{"input_size": 3, "hidden_size": 4, **kwargs})
        assert "\n" not in str(error.value)
    standard = LSTMCell(3, 4).state_dict()
    with pytest.raises(ValueError, match=r"4 gate blocks .* build it with coupled_gates=False"):
        LSTMCell(3, 4, coupled_gates=True).load_state_dict(standard)
    for feature in ("peephole", "layer_norm"):
        with pytest.raises(ValueError, match=f"the state has no {feature} parameters"):
            LSTMCell(3, 4, **{feature: True}).load_state_dict(standard)
    zoneout = LSTMCell(3, 4, zoneout_h=0.5, zoneout_c=0.5)
    step = torch.randn(6, 3), (torch.randn(6, 4), torch.randn(6, 4))
    assert not torch.equal(zoneout(*step)[0], zoneout(*step)[0])  # new masks at every call in training
    zoneout.eval()
    assert torch.equal(zoneout(*step)[0], zoneout(*step)[0])  # the expectation in eval


def module_pair(**variant) -> tuple[LSTM, LSTM]:
    torch.manual_seed(3)
    a = LSTM(4, 6, 2, bidirectional=True, proj_size=3, dtype=torch.float64, backend="torch", **variant)
    b = LSTM(4, 6, 2, bidirectional=True, proj_size=3, dtype=torch.float64, backend="op", **variant)
    b.load_state_dict(a.state_dict())
    return a, b


def test_the_module_runs_a_variant_on_the_op_as_on_the_torch_backend():
    """The whole stack: two bidirectional layers with projections, all features on, random upstream gradients."""
    portable, op = module_pair(peephole=True, coupled_gates=True, cell_clip=1.5, forget_bias=[1.0, -0.5])
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    results = []
    for module in (portable, op):
        y, (h_n, c_n) = module(x)
        g = torch.Generator().manual_seed(0)
        upstream = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (y, h_n, c_n)]
        loss = sum((t * u).sum() for t, u in zip((y, h_n, c_n), upstream, strict=True))
        results.append((y, h_n, c_n, *torch.autograd.grad(loss, list(module.parameters()))))
    assert any(name.startswith("weight_peephole") for name, _ in op.named_parameters())
    for k, (a, b) in enumerate(zip(*results, strict=True)):
        assert_close(b, a, f"op vs torch, output or gradient {k}")


def test_dispatch_never_takes_the_vendor_kernel_for_a_variant():
    fused = "cpu" if lstm_cpu.available() else "torch"  # the C kernel computes these three features
    for variant in ({"peephole": True}, {"coupled_gates": True}, {"cell_clip": 2.0}):
        lstm = LSTM(4, 8, **variant)
        assert lstm.variant_features == tuple(variant)
        assert lstm.call_kind(8, 10, False, True).features == next(iter(variant))
        for packed, training in ((False, True), (True, True), (False, False)):
            assert lstm.path_for(8, 10, packed, training) == fused, (variant, packed, training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert lstm.path_for(8, 10, False, True) == fused
        assert LSTM(4, 8, dtype=torch.float64, **variant).path_for(8, 10, False, True) == "torch"
        assert LSTM(4, 8, backend="cpu", **variant).path_for(8, 10, False, True) == fused
        assert LSTM(4, 8, backend="op", **variant).path_for(8, 10, False, True) == "op"
    normalised = {"layer_norm": True, "peephole": True}
    for backend in ("auto", "cpu"):  # the C kernel computes layer normalisation, with the other features
        for packed, training in ((False, True), (True, True), (False, False)):
            assert LSTM(4, 8, backend=backend, **normalised).path_for(8, 10, packed, training) == fused, backend
    assert LSTM(4, 8, backend="op", **normalised).path_for(8, 10, False, True) == "op"  # and so does the op"
    standard = LSTM(4, 8).call_kind(8, 10, False, True)
    assert standard.features == "" and "peephole" not in standard.key


def test_the_forget_bias_per_layer_and_the_coupled_gates_shift():
    H = 5
    for coupled in (False, True):
        torch.manual_seed(0)
        plain = LSTM(3, H, 3, forget_bias=0.0, coupled_gates=coupled)
        torch.manual_seed(0)
        shifted = LSTM(3, H, 3, forget_bias=[2.0, 0.0, -1.0], coupled_gates=coupled)
        for layer, shift in enumerate((2.0, 0.0, -1.0)):
            delta = shifted.layer_weights(layer)[2] - plain.layer_weights(layer)[2]
            block = slice(0, H) if coupled else slice(H, 2 * H)
            expected = torch.zeros_like(delta)
            expected[block] = -shift if coupled else shift
            assert_close(delta, expected, f"bias shift of layer {layer}, coupled={coupled}", dtype=torch.float32)
    assert LSTM(3, H, 2, forget_bias=[1.0, 1.0]).forget_bias == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cell_clip": 0}, "cell_clip must be a number > 0"),
    ({"cell_clip": -1.0}, "cell_clip must be a number > 0"),
    ({"cell_clip": float("nan")}, "cell_clip must be a number > 0"),
    ({"forget_bias": [1.0]}, r"forget_bias needs one number per layer \(2\)"),
    ({"peephole": "yes"}, "peephole must be True or False"),
    ({"layer_norm": True, "hidden_size": 1}, "layer_norm needs hidden_size >= 2"),
    ({"recurrent_dropout": -0.1}, r"recurrent_dropout must be a probability in \[0, 1\)"),
    ({"recurrent_dropout": 1.0}, r"recurrent_dropout must be a probability in \[0, 1\)"),
    ({"weight_drop": 1.5}, r"weight_drop must be a probability in \[0, 1\)"),
    ({"zoneout_c": -0.5}, r"zoneout_c must be a probability in \[0, 1\)"),
    ({"input_dropout": 1.0}, r"input_dropout must be a probability in \[0, 1\)"),
    ({"input_dropout": [0.1, 0.2, 0.3]}, r"input_dropout needs one rate per layer \(2\)"),
])
def test_bad_variant_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message) as error:
        LSTM(**{"input_size": 3, "hidden_size": 4, "num_layers": 2, **kwargs})
    assert "\n" not in str(error.value)


def test_to_torch_and_load_state_dict_of_variants_say_what_to_do():
    for variant, feature in (({"peephole": True}, "peephole"), ({"coupled_gates": True}, "coupled_gates"),
                             ({"cell_clip": 3.0}, "cell_clip"), ({"layer_norm": True}, "layer_norm"),
                             ({"recurrent_dropout": 0.2}, "recurrent_dropout"), ({"weight_drop": 0.5}, "weight_drop"),
                             ({"input_dropout": 0.3}, "input_dropout")):
        with pytest.raises(ValueError, match=f"torch.nn.LSTM cannot compute {feature}") as error:
            LSTM(3, 4, **variant).to_torch()
        assert "\n" not in str(error.value)
    standard = LSTM(3, 4, 2).state_dict()
    with pytest.raises(ValueError, match=r"4 gate blocks .* build it with coupled_gates=False"):
        LSTM(3, 4, 2, coupled_gates=True).load_state_dict(standard)
    with pytest.raises(ValueError, match=r"3 gate blocks .* build it with coupled_gates=True"):
        LSTM(3, 4, 2).load_state_dict(LSTM(3, 4, 2, coupled_gates=True).state_dict())
    with pytest.raises(ValueError, match="the state has no peephole parameters"):
        LSTM(3, 4, 2, peephole=True).load_state_dict(standard)
    with pytest.raises(ValueError, match="the state has no layer_norm parameters"):
        LSTM(3, 4, 2, layer_norm=True).load_state_dict(standard)
    model = torch.nn.Sequential(LSTM(3, 4, coupled_gates=True))  # nested in a model: the same one-line error
    with pytest.raises(ValueError, match="4 gate blocks"):
        model.load_state_dict({f"0.{k}": v for k, v in LSTM(3, 4).state_dict().items()})
    peephole = LSTM(3, 4, 2, peephole=True)
    peephole.load_state_dict(standard, strict=False)  # what strict=False asks: the peepholes keep their values
    assert LSTM.from_torch(LSTM(3, 4, 2).to_torch()).variant_features == ()


@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_trace_of_a_cifg_shows_f_as_one_minus_i_and_streaming_follows_the_module(layer_norm):
    torch.manual_seed(4)
    lstm = LSTM(3, 5, 2, peephole=True, coupled_gates=True, cell_clip=0.5, proj_size=2, layer_norm=layer_norm)
    with torch.no_grad():  # gains and biases away from their initial 1 and 0
        for name, p in lstm.named_parameters():
            if name.startswith("layer_norm"):
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(9, 2, 3)
    traced = lstmkit.trace(lstm, x)
    for layer in range(2):
        gates = traced[layer]
        assert_close(gates.f, 1 - gates.i, f"f of layer {layer}", dtype=torch.float32)
        assert gates.c.abs().max() <= 0.5
    y, (h_n, c_n) = lstm(x)
    assert_close(traced.output, y, "traced output", dtype=torch.float32)
    stream = LSTMStream(lstm, batch_size=2)
    streamed = stream.steps(x)
    assert_close(streamed, y, "streamed output", dtype=torch.float32)
    assert_close(stream.state[1], c_n, "streamed c_n", dtype=torch.float32)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-variants", "masked-variants"])
def test_a_run_with_variants_saves_reloads_and_resumes_exactly(tmp_path, fused):
    """Fused: peepholes, coupled gates, cell clip and a forget bias (the C kernel's). Masked: layer norm, weight drop,
    recurrent dropout and zoneout, whose masks a resumed run must draw again exactly (torch's generator state is in
    the checkpoint)."""
    from test_train import assert_bit_identical, final_weights, tiny_config

    from lstmkit.ensemble import open_run
    from lstmkit.train import config_for_resume, train_and_evaluate

    variant = (["model.lstm.peephole=true", "model.lstm.coupled_gates=true", "model.lstm.cell_clip=2.5",
                "model.lstm.forget_bias=[0.5]"] if fused else
               ["model.lstm.layer_norm=true", "model.lstm.weight_drop=0.3", "model.lstm.recurrent_dropout=0.2",
                "model.lstm.zoneout_h=0.1", "model.lstm.zoneout_c=0.2", "model.lstm.input_dropout=0.25"])
    train_and_evaluate(tiny_config(*variant, "train.epochs=2"), tmp_path / "full", quiet=True)
    train_and_evaluate(tiny_config(*variant, "train.epochs=1"), tmp_path / "split", quiet=True)
    train_and_evaluate(config_for_resume(tmp_path / "split", epochs=2), tmp_path / "split", resume=True, quiet=True)
    assert_bit_identical(final_weights(tmp_path / "split"), final_weights(tmp_path / "full"))
    task, model = open_run(tmp_path / "full")
    lstm = model.recurrent
    if fused:
        assert lstm.variant_features == ("peephole", "coupled_gates", "cell_clip")
        assert lstm.cell_clip == 2.5 and lstm.forget_bias == 0.5 and task.config.model.lstm.coupled_gates
    else:
        assert lstm.variant_features == ("layer_norm", "zoneout")
        assert (lstm.weight_drop, lstm.recurrent_dropout, lstm.zoneout_c, lstm.input_dropout) == (0.3, 0.2, 0.2, 0.25)
        assert any(name.startswith("layer_norm") for name in lstm.state_dict())


needs_kernel = pytest.mark.skipif(not lstm_cpu.available(), reason=f"C kernel not built here: "
                                  f"{lstm_cpu.unavailable_reason()} (variants run on the torch backend)")


def float32_run(layer_fn, args: dict, options: dict, sizes, reverse: bool, upstream: tuple) -> tuple:
    """One layer on float32 leaves (float64 for the torch backend, given float64 args and options); outputs and every
    gradient under the given upstream gradients. args: x, h0, c0, W, U, b, R, peephole and, for layer normalisation,
    ln_x, ln_h, ln_c; options: the cell's other fields (coupled_gates, cell_clip, and the constant masks h_mask,
    zoneout_h, zoneout_c)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in args.items() if v is not None}
    ln = (leaves["ln_x"], leaves["ln_h"], leaves["ln_c"]) if "ln_x" in leaves else None
    cell = Cell(leaves["W"], leaves["U"], leaves.get("b"), leaves.get("R"), leaves.get("peephole"), **options,
                layer_norm=ln)
    if layer_fn is not lstm_torch.lstm_layer:  # a fused path that fell back to the torch backend would test nothing
        assert lstm_cpu.supports(leaves["x"], cell), cell.features
    y, hT, cT = layer_fn(leaves["x"], sizes, leaves["h0"], leaves["c0"], cell, reverse=reverse)
    ((y * upstream[0]).sum() + (hT * upstream[1]).sum() + (cT * upstream[2]).sum()).backward()
    return (y, hT, cT), {GRAD_NAMES[k]: v.grad for k, v in leaves.items()}


def zoneout_of(rng: random.Random, rate: float, rows: int, width: int, g: torch.Generator, other: bool):
    """A zoneout of a layer's rows: a Bernoulli(rate) mask [rows, width] (training) or the rate (evaluation), or
    None (then `other`, the other zoneout, is on)."""
    kind = rng.choice(["mask", "rate"] + (["none"] if other else []))
    if kind == "mask":
        return (torch.rand(rows, width, generator=g) < rate).float()
    return rate if kind == "rate" else None


def random_layer_problem(rng: random.Random, trial: int, B: int, T: int, I: int, H: int, P: int | None,
                         lengths: list[int], coupled: bool, peephole: bool, layer_norm: bool = False,
                         dropout: float = 0.0, zoneout: float = 0.0, clip: float = 0.0):
    """One layer's random problem for the kernel tests: (batch_sizes, N, args, options, upstream), args the
    layer's inputs and weights (the LN gains and biases away from 1 and 0 with layer_norm), options its variant
    arguments (recurrent dropout's mask, zoneout as masks or rates), upstream the gradients of y, h_T and c_T."""
    batch_sizes = [sum(1 for n in lengths if n > t) for t in range(T)]
    N, Pout, G = sum(batch_sizes), P or H, 3 if coupled else 4
    g = torch.Generator().manual_seed(trial)
    args = dict(x=torch.randn(N, I, generator=g), h0=torch.randn(B, Pout, generator=g),
                c0=torch.randn(B, H, generator=g) * 2, W=torch.randn(G * H, I, generator=g) * 0.4,
                U=torch.randn(G * H, Pout, generator=g) * 0.4,
                b=torch.randn(G * H, generator=g) if rng.random() < 0.8 else None,
                R=torch.randn(Pout, H, generator=g) * 0.4 if P else None,
                peephole=torch.randn(3, H, generator=g) * 0.5 if peephole else None)
    if layer_norm:
        args |= {name: torch.stack([1 + 0.3 * torch.randn(width, generator=g), 0.3 * torch.randn(width, generator=g)])
                 for name, width in (("ln_x", G * H), ("ln_h", G * H), ("ln_c", H))}
    upstream = (torch.randn(N, Pout, generator=g), torch.randn(B, Pout, generator=g), torch.randn(B, H, generator=g))
    options = {"coupled_gates": coupled, "cell_clip": clip}
    if dropout:
        options["h_mask"] = (torch.rand(B, Pout, generator=g) >= dropout) / (1.0 - dropout)
    if zoneout:
        options["zoneout_h"] = zoneout_of(rng, zoneout, N, Pout, g, other=True)
        options["zoneout_c"] = zoneout_of(rng, zoneout, N, H, g, other=options["zoneout_h"] is not None)
    return batch_sizes, N, args, options, upstream


@needs_kernel
@pytest.mark.parametrize("trial", range(4 * len(FUSED)))
def test_the_fused_paths_compute_the_variants_as_the_torch_backend(trial):
    """The C kernel (packed rows) and the op (full length, its loops the C kernel's) against the torch backend,
    float32: random shapes, lengths, directions, projections and features (zoneout as masks, as rates or on one of
    h and c only), every gradient."""
    from conftest import float32_tolerance

    rng = random.Random(trial)
    peephole, coupled, clip, _, dropout, zoneout = FUSED[trial % len(FUSED)]
    # each variant in turn: forward without a projection, reverse with one, forward with one, reverse without
    reverse, projected = [(False, False), (True, True), (False, True), (True, False)][trial // len(FUSED)]
    B, T, I, H = rng.randint(1, 24), rng.randint(1, 24), rng.randint(1, 12), rng.randint(1 + projected, 24)
    P = rng.randint(1, H - 1) if projected else None
    full = trial % 3 == 0  # the op takes full-length batches only
    lengths = [T] * B if full else sorted([T] + [rng.randint(1, T) for _ in range(B - 1)], reverse=True)
    batch_sizes, N, args, options, upstream = random_layer_problem(rng, trial, B, T, I, H, P, lengths, coupled,
                                                                   peephole, dropout=dropout, zoneout=zoneout,
                                                                   clip=clip)
    G = 3 if coupled else 4
    expected = float32_run(lstm_torch.lstm_layer, args, options, batch_sizes, reverse, upstream)
    fused = {"cpu": float32_run(lstm_cpu.lstm_layer, args, options, batch_sizes, reverse, upstream)}
    if full:
        fused["op"] = float32_run(lstm_op.layer, args, options, (T, B), reverse, upstream)
    # Weight gradients sum over all N rows; BPTT chains T steps of GH-long sums: the bound follows the problem.
    tolerance = float32_tolerance(max(N, T * G * H))
    for path, (outputs, grads) in fused.items():
        for name, a, b in zip(("y", "h_T", "c_T"), outputs, expected[0], strict=True):
            assert_close(a, b, f"{path} {name}", tolerance=tolerance)
        assert grads.keys() == expected[1].keys()
        for name, grad in grads.items():
            assert_close(grad, expected[1][name], f"{path} {name} (N={N}, T={T}, H={H}, P={P})", tolerance=tolerance)


@needs_kernel
@pytest.mark.parametrize("trial", range(16))
def test_the_c_kernel_and_the_op_compute_layer_norm_as_the_torch_backend(trial):
    """The C kernel's layer normalisation (LN of U h_{t-1} and of c_t per step in C, LN of W x in a C pass before
    the loop), directly and through the op (a third of the trials, full-length), against the torch backend: random
    shapes, packed lengths, both directions, projections, and combined with peepholes, coupled gates, cell clip,
    recurrent dropout and zoneout (masks or rates), LN gains and biases away from 1 and 0; outputs, final states and
    every gradient, the LN parameters' included.

    Bound: both sides against the torch backend in float64. LN divides each row by its sigma, which magnifies the
    rounding of rows whose spread is small, so a fixed float32 bound would hold on one machine's draws only; the
    torch backend's own float32 error on the same problem measures that conditioning. The kernel may err by the
    float32 bound of the kernel tests (sums of up to max(N, T GH) products) plus 4x that measured error (other
    orders of summation, its own exp and tanh)."""
    from conftest import float32_tolerance, relative_error

    rng = random.Random(1000 + trial)
    peephole, coupled, clip = rng.random() < 0.4, rng.random() < 0.3, rng.choice([0.0, 0.0, 0.8])
    dropout, zoneout = rng.choice([0.0, 0.0, 0.3]), rng.choice([0.0, 0.0, 0.4])
    reverse, projected = trial % 2 == 1, trial % 4 >= 2
    B, T, I, H = rng.randint(1, 16), rng.randint(1, 20), rng.randint(1, 10), rng.randint(2 + projected, 20)
    P = rng.randint(1, H - 1) if projected else None
    full = trial % 3 == 0  # then the op too (full-length batches only), its loops the C kernel's
    lengths = [T] * B if full else sorted([T] + [rng.randint(1, T) for _ in range(B - 1)], reverse=True)
    batch_sizes, N, args, options, upstream = random_layer_problem(rng, trial, B, T, I, H, P, lengths, coupled,
                                                                   peephole, layer_norm=True, dropout=dropout,
                                                                   zoneout=zoneout, clip=clip)
    G = 3 if coupled else 4

    def double(value):
        return value.double() if isinstance(value, torch.Tensor) else value

    exact = float32_run(lstm_torch.lstm_layer, {k: double(v) for k, v in args.items()},
                        {k: double(v) for k, v in options.items()}, batch_sizes, reverse, tuple(map(double, upstream)))
    portable = float32_run(lstm_torch.lstm_layer, args, options, batch_sizes, reverse, upstream)
    paths = {"C kernel": float32_run(lstm_cpu.lstm_layer, args, options, batch_sizes, reverse, upstream)}
    if full:
        paths["op"] = float32_run(lstm_op.layer, args, options, (T, B), reverse, upstream)
    bound = float32_tolerance(max(N, T * G * H))
    names = ("y", "h_T", "c_T", *exact[1])
    for path, fused in paths.items():
        assert fused[1].keys() == portable[1].keys() == exact[1].keys()
        for name, expected, ours, theirs in zip(names, (*exact[0], *exact[1].values()),
                                                (*fused[0], *fused[1].values()),
                                                (*portable[0], *portable[1].values()), strict=True):
            tolerance = bound + 4 * relative_error(theirs, expected)
            assert_close(ours, expected, f"{path} {name} against float64 (N={N}, T={T}, H={H}, P={P}, "
                         f"{Cell(args['W'], args['U'], None, args['R'], args['peephole'], **options).features}, "
                         f"torch float32 error {relative_error(theirs, expected):.1e})", tolerance=tolerance)


@needs_kernel
@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
def test_a_layer_normalised_module_runs_on_the_c_kernel_as_on_the_torch_backend(packed, monkeypatch):
    """lstmkit.LSTM(layer_norm=True) with backend="cpu": two bidirectional layers with projections, peepholes,
    recurrent dropout and zoneout, in training (the seed's masks) and in eval (zoneout's expectation, gradients still);
    outputs, states and every parameter's gradient against the torch backend, bounded as the layer test bounds them
    (both against float64)."""
    from conftest import float32_tolerance, relative_error
    from torch.nn.utils.rnn import pack_padded_sequence

    variant = dict(layer_norm=True, peephole=True, recurrent_dropout=0.2, zoneout_h=0.1, zoneout_c=0.3)
    torch.manual_seed(3)
    modules = {"cpu": LSTM(4, 6, 2, bidirectional=True, proj_size=3, backend="cpu", **variant),
               "torch": LSTM(4, 6, 2, bidirectional=True, proj_size=3, backend="torch", **variant),
               "float64": LSTM(4, 6, 2, bidirectional=True, proj_size=3, backend="torch", dtype=torch.float64,
                               **variant)}
    with torch.no_grad():  # gains and biases away from their initial 1 and 0
        for name, p in modules["cpu"].named_parameters():
            if name.startswith("layer_norm"):
                p.add_(torch.randn_like(p) * 0.3)
    for name in ("torch", "float64"):
        modules[name].load_state_dict(modules["cpu"].state_dict())
    calls = []
    real_forward = lstm_cpu.forward
    monkeypatch.setattr(lstm_cpu, "forward", lambda *a, **k: calls.append(k.get("layer_norm")) or real_forward(*a, **k))
    T, B = 7, 3
    x, lengths = torch.randn(T, B, 4), torch.tensor([7, 5, 2] if packed else [7, 7, 7])
    g = torch.Generator().manual_seed(0)
    upstream = [torch.randn(int(lengths.sum()), 6, generator=g), torch.randn(4, B, 3, generator=g),
                torch.randn(4, B, 6, generator=g)]
    for training in (True, False):
        results = {}
        for name, module in modules.items():
            module.train(training)
            dtype = torch.float64 if name == "float64" else torch.float32
            inputs = x.to(dtype).requires_grad_(True)
            torch.manual_seed(1)  # one seed, the same masks
            out, (h_n, c_n) = module(pack_padded_sequence(inputs, lengths) if packed else inputs)
            y = out.data if packed else out.reshape(-1, 6)
            loss = sum((t * u.to(dtype)).sum() for t, u in zip((y, h_n, c_n), upstream, strict=True))
            grads = torch.autograd.grad(loss, [inputs, *module.parameters()])
            results[name] = dict(zip(["y", "h_n", "c_n", "dx", *(n for n, _ in module.named_parameters())],
                                     (y, h_n, c_n, *grads), strict=True))
        assert modules["cpu"].path_for(B, T, packed, training) == "cpu"
        bound = float32_tolerance(max(B * T, T * 4 * 6))
        for name, expected in results["float64"].items():
            measured = relative_error(results["torch"][name], expected)
            assert_close(results["cpu"][name], expected, f"{name} ({'train' if training else 'eval'}; torch float32 "
                         f"error {measured:.1e})", tolerance=bound + 4 * measured)
    with torch.no_grad():  # inference keeps nothing for BPTT: the loop's own scratch rows, the same numbers
        out, (h_n, c_n) = modules["cpu"](pack_padded_sequence(x, lengths) if packed else x)
    assert torch.equal(out.data if packed else out.reshape(-1, 6), results["cpu"]["y"]), "no_grad output"
    assert torch.equal(c_n, results["cpu"]["c_n"]), "no_grad c_n"
    assert len(calls) == 12 and all(ln is not None for ln in calls)  # 3 calls x 2 layers x 2 directions, in C


def test_dropout_masks_are_seeded_exact_on_every_path_and_off_in_eval():
    """weight_drop and recurrent_dropout draw their masks from torch's generator: under one seed every path computes
    the same training call (the oracle of the recurrent mask: the reference with that mask); in eval both are off."""
    torch.manual_seed(5)
    T, B, I, H = 6, 5, 3, 4
    x = torch.randn(T, B, I, dtype=torch.float64)
    dropped = LSTM(I, H, 2, weight_drop=0.5, recurrent_dropout=0.3, dtype=torch.float64, backend="torch").train()
    plain = LSTM(I, H, 2, dtype=torch.float64, backend="torch")
    plain.load_state_dict(dropped.state_dict())
    torch.manual_seed(11)
    y, (h_n, c_n) = dropped(x)
    torch.manual_seed(11)
    masks = dropped._draw_masks(B)
    assert set(masks) == {"weight_hh_l0", "weight_hh_l1", "h_mask_l0", "h_mask_l1"}
    assert ((masks["h_mask_l0"] == 0) | (masks["h_mask_l0"] == 1 / 0.7)).all() and (masks["h_mask_l0"] == 0).any()
    # The oracle, layer by layer, with the dropped U and the h mask of this seed.
    below = x.numpy()
    for layer in range(2):
        W, U, b_ih, b_hh, _ = (t.detach().numpy() if t is not None else None for t in dropped.layer_weights(layer))
        ref = lstm_forward(below, W, masks[f"weight_hh_l{layer}"].detach().numpy(), b_ih + b_hh, np.zeros((B, H)),
                           np.zeros((B, H)), h_mask=masks[f"h_mask_l{layer}"].numpy())
        below = ref[0]
        assert_close(h_n[layer], ref[1], f"h_n of layer {layer} against the oracle with the seed's masks")
    assert_close(y, below, "output against the oracle with the seed's masks")
    for path in ("cpu", "op", "vendor"):  # weight drop alone runs on every path; the same seed, the same masks
        one = LSTM(I, H, 2, weight_drop=0.5, backend="auto" if path == "vendor" else path).train()
        other = LSTM(I, H, 2, weight_drop=0.5, backend="torch").train()
        other.load_state_dict(one.state_dict())
        outputs = []
        for module in (one, other):
            torch.manual_seed(3)
            with paths_pinned("vendor"):  # what "auto" runs for `one` when path is "vendor"
                assert path != "vendor" or one.path_for(B, T, False, True) == "vendor"
                out = module(x.float())[0]
            out.square().sum().backward()
            outputs.append((out, module.weight_hh_l0.grad))
        assert_close(outputs[0][0], outputs[1][0], f"{path} output under weight drop", dtype=torch.float32)
        assert_close(outputs[0][1], outputs[1][1], f"{path} dU under weight drop", dtype=torch.float32)
    dropped.eval()
    assert_close(dropped(x)[0], plain(x)[0], "eval: no dropout")
    assert dropped.path_for(B, T, False, False) == plain.path_for(B, T, False, False)
    assert "recurrent_dropout" in dropped.train().call_kind(B, T, False, True).key


@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
def test_input_dropout_is_one_mask_per_sequence_on_every_path_and_off_in_eval(packed):
    """input_dropout: the oracle of a seeded training call is the reference run layer by layer on inputs times that
    seed's masks (one row per sequence, the same at every step); every path computes the same call and gradients;
    only a rate on layer 0 keeps torch's whole-stack kernel; in eval it is off."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(7)
    T, B, I, H = 6, 4, 3, 5
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([6, 5, 3, 1]) if packed else torch.full((B,), T)
    dropped = LSTM(I, H, 2, input_dropout=[0.3, 0.5], dtype=torch.float64, backend="torch").train()
    torch.manual_seed(11)
    out = dropped(pack_padded_sequence(x, lengths) if packed else x)[0]
    y = pad_packed_sequence(out)[0] if packed else out
    torch.manual_seed(11)
    masks = dropped._draw_masks(B)
    assert set(masks) == {"input_mask_l0", "input_mask_l1"}
    second = masks["input_mask_l1"]
    assert ((second == 0) | (second == 2.0)).all() and (second == 0).any() and second.shape == (B, H)
    below = x.numpy()
    for layer in range(2):
        W, U, b_ih, b_hh = (t.detach().numpy() for t in dropped.layer_weights(layer)[:4])
        per_sequence = []
        for j in range(B):  # each sequence alone, over its own length: the packed rows' meaning
            n = int(lengths[j])
            inputs = below[:n, j:j + 1] * masks[f"input_mask_l{layer}"][j].numpy()
            per_sequence.append(np.pad(lstm_forward(inputs, W, U, b_ih + b_hh, np.zeros((1, H)),
                                                    np.zeros((1, H)))[0], ((0, T - n), (0, 0), (0, 0))))
        below = np.concatenate(per_sequence, axis=1)
    assert_close(y, below, "output against the oracle on the seed's masked inputs")
    for path in ("cpu", "op", "auto"):
        one = LSTM(I, H, 2, input_dropout=[0.3, 0.5], backend=path).train()
        other = LSTM(I, H, 2, input_dropout=[0.3, 0.5], backend="torch").train()
        other.load_state_dict(one.state_dict())
        results = []
        for module in (one, other):
            inputs = x.float().requires_grad_(True)
            torch.manual_seed(3)
            out = module(pack_padded_sequence(inputs, lengths) if packed else inputs)[0]
            (out.data if packed else out).square().sum().backward()
            results.append((out.data if packed else out, inputs.grad, module.weight_ih_l1.grad))
        for name, a, b in zip(("output", "dx", "dW of layer 1"), *results, strict=True):
            assert_close(a, b, f"{path}: {name} under input dropout", dtype=torch.float32)
    with paths_pinned("vendor"):  # the layers above the first drop inputs between layers: never the vendor
        assert LSTM(I, H, 2, input_dropout=[0.0, 0.5]).train().path_for(B, T, False, True) != "vendor"
        first_only = LSTM(I, H, 2, input_dropout=[0.5, 0.0]).train()
        assert first_only.path_for(B, T, False, True) == "vendor"
        plain = LSTM(I, H, 2).train()
        plain.load_state_dict(first_only.state_dict())
        torch.manual_seed(4)
        vendor = first_only(x.float())[0]
        torch.manual_seed(4)
        mask = dropout_mask(x.float(), (B, I), 0.5)  # the module's draw, repeated
        assert_close(vendor, plain(x.float() * mask)[0], "vendor: layer 0's input dropout", dtype=torch.float32)
    dropped.eval()
    plain = LSTM(I, H, 2, dtype=torch.float64, backend="torch").eval()
    plain.load_state_dict(dropped.state_dict())
    assert_close(dropped(x)[0], plain(x)[0], "eval: no input dropout")
    assert "input_dropout" in dropped.train().call_kind(B, T, False, True).key
    assert "input_dropout" not in dropped.eval().call_kind(B, T, False, True).key


def test_zoneout_masks_in_training_and_its_expectation_in_eval():
    """Training: the seed's Bernoulli masks (drawn by the module) are the oracle's; eval: z = p at every unit."""
    torch.manual_seed(6)
    T, B, I, H = 5, 3, 2, 4
    x = torch.randn(T, B, I, dtype=torch.float64)
    lstm = LSTM(I, H, 2, zoneout_h=0.3, zoneout_c=0.6, peephole=True, dtype=torch.float64)
    assert "zoneout" in lstm.variant_features and lstm.path_for(B, T, False, True) == "torch"

    def oracle(masks_of):  # both layers through lstm_forward, with masks_of(layer) = (z^h, z^c) [T, B, *]
        below, finals = x.numpy(), []
        for layer in range(2):
            W, U, b_ih, b_hh = (t.detach().numpy() for t in lstm.layer_weights(layer)[:4])
            z_h, z_c = masks_of(layer)
            y, h_T, c_T, _ = lstm_forward(below, W, U, b_ih + b_hh, np.zeros((B, H)), np.zeros((B, H)),
                                          peephole=lstm.cell(layer).peephole.detach().numpy(), zoneout_h=z_h,
                                          zoneout_c=z_c)
            below = y
            finals.append((h_T, c_T))
        return below, finals

    lstm.train()
    torch.manual_seed(12)
    y, (h_n, c_n) = lstm(x)
    torch.manual_seed(12)
    masks = lstm._draw_masks(B, T * B)
    assert 0 < masks["zoneout_c_l0"].mean() < 1
    y_ref, finals = oracle(lambda k: tuple(masks[f"{n}_l{k}"].view(T, B, -1).numpy() for n in ZONEOUT))
    assert_close(y, y_ref, "training output with the seed's zoneout masks")
    assert_close(c_n[1], finals[1][1], "training c_n of layer 1")
    lstm.eval()
    y, (h_n, c_n) = lstm(x)
    y_ref, finals = oracle(lambda k: (np.full((T, B, H), 0.3), np.full((T, B, H), 0.6)))
    assert_close(y, y_ref, "eval output: zoneout's expectation")
    assert_close(h_n[0], finals[0][0], "eval h_n of layer 0")
    stream = LSTMStream(lstm, batch_size=B)
    assert_close(stream.steps(x), y, "streamed (eval) output")


def test_dispatch_sends_recurrent_dropout_and_zoneout_to_the_fused_paths():
    fused = "cpu" if lstm_cpu.available() else "torch"
    for variant in ({"zoneout_h": 0.2}, {"zoneout_c": 0.3}, {"recurrent_dropout": 0.3, "zoneout_h": 0.1}):
        lstm = LSTM(4, 8, **variant).train()
        for packed in (False, True):
            assert lstm.path_for(8, 10, packed, True) == fused, (variant, packed)
        assert LSTM(4, 8, backend="op", **variant).train().path_for(8, 10, False, True) == "op"
    with paths_pinned("vendor"):  # recurrent dropout is off in eval: the standard cell, torch's kernel again
        assert LSTM(4, 8, recurrent_dropout=0.3).eval().path_for(8, 10, False, True) == "vendor"
        assert LSTM(4, 8, zoneout_c=0.3).eval().path_for(8, 10, False, True) == fused  # eval: the expectation


def exports_one_node_per_layer(model: LSTM, x: torch.Tensor, longer: torch.Tensor, nodes: int) -> None:
    """torch.export of an eval-mode model with a dynamic T: `nodes` lstmkit::lstm_layer nodes (one per layer and
    direction), and the program equal to the model at another T."""
    exported = torch.export.export(model, (x,), dynamic_shapes=({1: torch.export.Dim("T", min=2, max=512)},))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.lstmkit.lstm_layer.default) == nodes
    assert_close(exported.module()(longer)[0], model(longer)[0], "exported, another T", dtype=torch.float32)


def test_a_masked_variant_compiles_and_exports_as_one_op_node_per_layer():
    """recurrent dropout and zoneout through the op: torch.compile(fullgraph=True) of a training call (the masks
    the module draws under a seed, the same as eager's), torch.export of the eval model (zoneout's rates), and
    opcheck of the op's mask and rate arguments."""
    torch.manual_seed(9)
    model = LSTM(4, 6, 2, batch_first=True, recurrent_dropout=0.3, zoneout_h=0.2, zoneout_c=0.4, peephole=True,
                 backend="op").train()
    x, longer = torch.randn(3, 9, 4), torch.randn(3, 23, 4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    y = compiled(x)[0]
    y.square().sum().backward()
    grad = model.weight_hh_l0.grad.clone()
    model.zero_grad()
    torch.manual_seed(1)
    eager = model(x)[0]
    eager.square().sum().backward()
    assert_close(y, eager, "compiled training output (the seed's masks)", dtype=torch.float32)
    assert_close(grad, model.weight_hh_l0.grad, "compiled dU", dtype=torch.float32)
    model.eval()
    exports_one_node_per_layer(model, x, longer, 2)
    T, B, I, H = 3, 2, 4, 5
    for zoneout_h, rate_h, zoneout_c, rate_c in ((torch.rand(T * B, H).round(), 0.0, None, 0.3),
                                                 (None, 0.2, torch.rand(T * B, H).round(), 0.0)):
        args = (torch.randn(T, B, I, requires_grad=True), torch.randn(B, H, requires_grad=True),
                torch.randn(B, H, requires_grad=True), torch.randn(4 * H, I, requires_grad=True),
                torch.randn(4 * H, H, requires_grad=True), torch.randn(4 * H, requires_grad=True), None, True, None,
                False, 0.0, torch.rand(B, H).round() * 2, zoneout_h, rate_h, zoneout_c, rate_c)
        torch.library.opcheck(lstm_op.lstm_layer, args)


def test_a_fused_variant_compiles_and_exports_as_one_op_node_per_layer():
    """peephole + coupled gates + cell clip through the op: torch.compile(fullgraph=True) and torch.export with a
    dynamic T, and opcheck of the op's new arguments."""
    torch.manual_seed(8)
    model = LSTM(4, 6, 2, batch_first=True, peephole=True, coupled_gates=True, cell_clip=1.0, backend="op")
    x, longer = torch.randn(2, 9, 4), torch.randn(2, 23, 4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)[0]
    y.sum().backward()
    assert_close(y, model(x)[0], "compiled output", dtype=torch.float32)
    exports_one_node_per_layer(model.eval(), x, longer, 2)
    T, B, I, H = 3, 2, 4, 5
    args = (torch.randn(T, B, I, requires_grad=True), torch.randn(B, H, requires_grad=True),
            torch.randn(B, H, requires_grad=True), torch.randn(3 * H, I, requires_grad=True),
            torch.randn(3 * H, H, requires_grad=True), torch.randn(3 * H, requires_grad=True), None, True,
            torch.randn(3, H, requires_grad=True), True, 0.8)
    torch.library.opcheck(lstm_op.lstm_layer, args)


def test_a_layer_normalised_lstm_compiles_and_exports_as_one_op_node_per_layer():
    """layer_norm through the op: torch.compile(fullgraph=True) of a training step equal to the torch backend's
    (outputs and every gradient, the LN parameters' included), torch.export with a dynamic T, and opcheck of the
    op's normalisation arguments and outputs on both of its loops (float32: the C kernel's; float64: torch's)."""
    torch.manual_seed(11)
    variant = dict(layer_norm=True, peephole=True, zoneout_c=0.3, proj_size=3, bidirectional=True)
    model = LSTM(4, 6, 2, batch_first=True, backend="op", **variant).train()
    portable = LSTM(4, 6, 2, batch_first=True, backend="torch", **variant).train()
    with torch.no_grad():  # LN gains and biases away from 1 and 0
        for name, p in model.named_parameters():
            if name.startswith("layer_norm"):
                p.add_(0.3 * torch.randn_like(p))
    portable.load_state_dict(model.state_dict())
    x, longer = torch.randn(3, 9, 4), torch.randn(3, 23, 4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    results = []
    for module in (compiled, portable):
        torch.manual_seed(1)  # the same zoneout masks
        y = module(x)[0]
        results.append((y, *torch.autograd.grad(y.square().sum(), list(portable.parameters() if module is portable
                                                                        else model.parameters()))))
    names = ["y", *(name for name, _ in portable.named_parameters())]
    assert any(name.startswith("layer_norm_c") for name in names)
    for name, a, b in zip(names, *results, strict=True):
        assert_close(a, b, f"compiled op vs torch backend: {name}", tolerance=1e-4)  # LN magnifies float32 rounding
    model.eval()
    exports_one_node_per_layer(model, x, longer, 4)
    T, B, I, H = 3, 2, 4, 5
    for dtype in (torch.float32, torch.float64):
        def leaf(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, dtype=dtype) * scale + shift).requires_grad_(True)

        ln = [leaf(2, width, scale=0.3) for width in (4 * H, 4 * H, H)]
        with torch.no_grad():
            for gains in ln:
                gains[0] += 1.0
        args = (leaf(T, B, I), leaf(B, H), leaf(B, H), leaf(4 * H, I), leaf(4 * H, H), leaf(4 * H), None, False,
                None, False, 0.0, None, None, 0.0, None, 0.0, *ln)
        torch.library.opcheck(lstm_op.lstm_layer, args)
