"""The long-range demo: its data, its gradient measurement, and a seconds-long smoke run."""

from __future__ import annotations

import math

import pytest
import torch

from lstmkit.longrange import (
    TRIVIAL_MSE,
    DemoConfig,
    adding_problem,
    hidden_state_gradient_norms,
    make_model,
    run_demo,
)


def test_adding_problem_data():
    x, y = adding_problem(500, 20, torch.Generator().manual_seed(0))
    assert x.shape == (500, 20, 2) and y.shape == (500,)
    markers = x[..., 1]
    assert torch.equal(markers.sum(dim=1), torch.full((500,), 2.0))
    assert (markers[:, :10].sum(dim=1) == 1).all() and (markers[:, 10:].sum(dim=1) == 1).all()  # one per half
    assert torch.allclose(y, (x[..., 0] * markers).sum(dim=1))
    assert abs(((y - 1.0) ** 2).mean().item() - TRIVIAL_MSE) < 0.02  # the baseline the demo quotes
    with pytest.raises(ValueError, match="T >= 2"):
        adding_problem(4, 1, torch.Generator())


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_gradient_norm_at_the_loss_matches_the_full_model(kind):
    """The step-by-step rerun reproduces the trained module: dL/dh_T = dL/dprediction * w_head."""
    torch.manual_seed(1)
    model = make_model(kind, 6)
    x, y = adding_problem(16, 9, torch.Generator().manual_seed(1))
    norms = hidden_state_gradient_norms(model, x, y)
    assert len(norms) == 9 and all(math.isfinite(n) and n > 0 for n in norms)
    with torch.no_grad():
        dloss_dpred = 2.0 * (model(x) - y) / len(y)
        expected = (dloss_dpred[:, None] * model.head.weight).norm(dim=1).mean().item()
    assert math.isclose(norms[0], expected, rel_tol=1e-5)


def test_demo_smoke_run_writes_the_plot(tmp_path):
    config = DemoConfig(T=10, hidden_size=8, batch_size=16, steps_per_epoch=3, epochs=2, eval_size=64)
    lines: list[str] = []
    result = run_demo(config, out_dir=tmp_path, log=lines.append)
    assert set(result.losses) == {"lstm", "rnn"}
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in result.losses.values())
    assert all(len(v) == 10 for v in result.grad_norms.values())
    png = tmp_path / "gradient_flow.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert any(line.startswith("LSTM final MSE") for line in lines)
    assert any("trivial baseline MSE 0.167" in line for line in lines)
