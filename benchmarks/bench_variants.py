"""LSTM variants, a train step each, against the standard torch.nn.LSTM and against the same variant written as a
Python loop over torch ops (what users write today), timed in the same run.

For configs a, b, c of `bench_lstm.py` and each variant (peephole, coupled gates, cell clip, all three, recurrent
dropout, zoneout of h and c, layer normalisation; the masked ones in training, their masks drawn by the module), the
contenders are: "nn.LSTM" (the standard cell, torch's kernel: the baseline of every ratio), "lstmkit" (the standard
cell, backend="auto"), "lstmkit <variant>" (backend="auto": what dispatch picks for the variant) and "loop
<variant>" (a Python loop over torch ops, one nn.Linear pair per layer, as a hand-written cell; with layer
normalisation three nn.LayerNorm per layer, each applied per step). The loop is first
checked against the NumPy oracle (float64, forward and every gradient); lstmkit's variant is then checked against
the loop run in float64 on the benchmark's own input (1e-4, or twice the float32 loop's own error). Ratios come
from interleaved repeats whose order rotates.

Run: `python benchmarks/bench_variants.py [--repeats N] [--configs a,b,c] [--variants peephole,cifg,clip,all,dropout,
zoneout,layer_norm]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_lstm import CONFIGS, rotated, time_call  # noqa: E402

import lstmkit  # noqa: E402
from lstmkit.nn import LAYER_NORM_EPS  # noqa: E402
from lstmkit.ops import tune  # noqa: E402
from lstmkit.reference import lstm_backward, lstm_forward, random_lstm_problem  # noqa: E402

VARIANTS = {"peephole": {"peephole": True}, "cifg": {"coupled_gates": True}, "clip": {"cell_clip": 3.0},
            "all": {"peephole": True, "coupled_gates": True, "cell_clip": 3.0}, "dropout": {"recurrent_dropout": 0.25},
            "zoneout": {"zoneout_h": 0.1, "zoneout_c": 0.5}, "layer_norm": {"layer_norm": True}}


class LoopVariantLSTM(nn.Module):
    """A variant cell as users write it: per step, a = W x_t + U h_{t-1} + b through two nn.Linear, then the
    gates with torch ops; layers one after another. Weights copied from an lstmkit.LSTM (one direction)."""

    def __init__(self, source: lstmkit.LSTM) -> None:
        super().__init__()
        self.coupled, self.clip, self.H = source.coupled_gates, source.cell_clip, source.hidden_size
        # training masks (recurrent dropout, zoneout) drawn as the source module draws them: under one seed, the same
        self.draw_masks = source._draw_masks if source.recurrent_dropout or source.zoneout_h or source.zoneout_c \
            else None
        self.W, self.U = nn.ModuleList(), nn.ModuleList()
        self.peepholes = nn.ParameterList()
        self.layer_norm = source.layer_norm  # LN(W x_t) + LN(U h_{t-1}) + b, and LN(c_t) before tanh
        self.norms, self.biases = nn.ModuleList(), nn.ParameterList()  # [ln_x, ln_h, ln_c] per layer, b apart
        for layer in range(source.num_layers):
            W, U, b_ih, b_hh, _ = source.layer_weights(layer)
            w, u = nn.Linear(W.shape[1], W.shape[0], dtype=W.dtype), nn.Linear(U.shape[1], U.shape[0], bias=False,
                                                                                dtype=W.dtype)
            with torch.no_grad():
                w.weight.copy_(W)
                u.weight.copy_(U)
                w.bias.copy_(b_ih + b_hh)
            self.W.append(w)
            self.U.append(u)
            if self.layer_norm:  # b after the normalisation: W keeps no bias of its own
                self.biases.append(nn.Parameter(w.bias.detach().clone()))
                w.bias = None
                norms = nn.ModuleList()
                for gain_bias in source.cell(layer).layer_norm:
                    norm = nn.LayerNorm(gain_bias.shape[1], eps=LAYER_NORM_EPS, dtype=W.dtype)
                    with torch.no_grad():
                        norm.weight.copy_(gain_bias[0])
                        norm.bias.copy_(gain_bias[1])
                    norms.append(norm)
                self.norms.append(norms)
            peephole = source.cell(layer).peephole
            self.peepholes.append(nn.Parameter(peephole.detach().clone() if peephole is not None
                                               else torch.zeros(3, self.H, dtype=W.dtype), requires_grad=peephole
                                               is not None))

    def step(self, layer: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, h_mask=None, z_h=None, z_c=None
             ) -> tuple[torch.Tensor, ...]:
        H, p = self.H, self.peepholes[layer]
        h_prev, c_prev = h, c
        h_in = h if h_mask is None else h * h_mask
        if self.layer_norm:
            ln_x, ln_h, ln_c = self.norms[layer]
            a = ln_x(self.W[layer](x)) + ln_h(self.U[layer](h_in)) + self.biases[layer]
        else:
            a = self.W[layer](x) + self.U[layer](h_in)
        if self.coupled:
            a_i, a_g, a_o = a.split(H, dim=1)
            i = torch.sigmoid(a_i + p[0] * c)
            f = 1 - i
        else:
            a_i, a_f, a_g, a_o = a.split(H, dim=1)
            i, f = torch.sigmoid(a_i + p[0] * c), torch.sigmoid(a_f + p[1] * c)
        c = f * c + i * torch.tanh(a_g)
        if self.clip:
            c = c.clamp(-self.clip, self.clip)
        h = torch.sigmoid(a_o + p[2] * c) * torch.tanh(ln_c(c) if self.layer_norm else c)
        if z_h is not None:  # zoneout: z = 1 keeps the previous value
            h = z_h * h_prev + (1 - z_h) * h
        if z_c is not None:
            c = z_c * c_prev + (1 - z_c) * c
        return h, c

    def forward(self, x: torch.Tensor, masks: dict | None = None) -> torch.Tensor:  # x: [B, T, I] -> [B, T, H]
        B, T = x.shape[:2]
        if masks is None:  # {"h_mask_l0": [B, H], "zoneout_h_l0": [T*B, H] time-major rows, ...}
            masks = (self.draw_masks(B, T * B) if self.draw_masks and self.training else None) or {}
        for layer in range(len(self.W)):
            h = c = x.new_zeros(B, self.H)
            h_mask = masks.get(f"h_mask_l{layer}")
            z_h, z_c = (masks[k].view(T, B, -1) if k in masks else None
                        for k in (f"zoneout_h_l{layer}", f"zoneout_c_l{layer}"))
            outputs = []
            for t in range(T):
                h, c = self.step(layer, x[:, t], h, c, h_mask, z_h[t] if z_h is not None else None,
                                 z_c[t] if z_c is not None else None)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
        return x


def check_loop_against_the_oracle(name: str, variant: dict) -> None:
    """The loop baseline, one layer, float64, against lstm_numpy: output, final state and every gradient."""
    T, B, I, H = 7, 3, 4, 5
    coupled = variant.get("coupled_gates", False)
    inputs, upstream = random_lstm_problem(np.random.default_rng(0), T, B, I, H, peephole=variant.get("peephole",
                                           False), coupled_gates=coupled,
                                           layer_norm=variant.get("layer_norm", False),
                                           recurrent_dropout=variant.get("recurrent_dropout", 0.0),
                                           zoneout=variant.get("zoneout_c", 0.0))
    inputs["h0"][:] = 0.0
    inputs["c0"][:] = 0.0
    source = lstmkit.LSTM(I, H, dtype=torch.float64, forget_bias=0.0, **variant)
    with torch.no_grad():
        source.weight_ih_l0.copy_(torch.tensor(inputs["W"]))
        source.weight_hh_l0.copy_(torch.tensor(inputs["U"]))
        source.bias_ih_l0.copy_(torch.tensor(inputs["b"]))
        source.bias_hh_l0.zero_()
        if "peephole" in inputs:
            source.weight_peephole_l0.copy_(torch.tensor(inputs["peephole"]))
        for key, name in (("ln_x", "layer_norm_ih_l0"), ("ln_h", "layer_norm_hh_l0"), ("ln_c", "layer_norm_c_l0")):
            if key in inputs:
                getattr(source, name).copy_(torch.tensor(inputs[key]))
    loop = LoopVariantLSTM(source)
    x = torch.tensor(inputs["x"]).transpose(0, 1).requires_grad_(True)
    masks = {f"{name}_l0": torch.tensor(inputs[name]).reshape(-1, H) for name in ("h_mask", "zoneout_h", "zoneout_c")
             if name in inputs}  # the oracle's masks, as the module's rows
    y = loop(x, masks)
    (y * torch.tensor(upstream["dy"]).transpose(0, 1)).sum().backward()
    options = {"coupled_gates": coupled, "cell_clip": variant.get("cell_clip", 0.0)}
    y_ref, _, _, cache = lstm_forward(**inputs, **options)
    grads = lstm_backward(upstream["dy"], np.zeros((B, H)), np.zeros((B, H)), cache)
    checks = {"y": (y.detach().transpose(0, 1), y_ref), "dx": (x.grad.transpose(0, 1), grads["dx"]),
              "dW": (loop.W[0].weight.grad, grads["dW"]), "dU": (loop.U[0].weight.grad, grads["dU"]),
              "db": ((loop.biases[0] if loop.layer_norm else loop.W[0].bias).grad, grads["db"])}
    if "peephole" in inputs:
        checks["dpeephole"] = (loop.peepholes[0].grad, grads["dpeephole"])
    if loop.layer_norm:
        for k, key in enumerate(("dln_x", "dln_h", "dln_c")):
            norm = loop.norms[0][k]
            checks[key] = (torch.stack([norm.weight.grad, norm.bias.grad]), grads[key])
    for what, (a, b) in checks.items():
        rel = float(np.abs(a.numpy() - b).max() / max(np.abs(b).max(), 1e-300))
        if rel > 1e-10:
            raise SystemExit(f"loop {name}: {what} differs from the NumPy oracle (relative error {rel:.1e}); "
                             "not timing")


def check_against_the_loop(name: str, ours: nn.Module, loop: nn.Module, x: torch.Tensor) -> None:
    """lstmkit's variant and the loop, both in float32, against the loop in float64 on the benchmark's input (one seed,
    the same masks): lstmkit's relative error may be 1e-4, or twice the float32 loop's own where that is larger (layer
    normalisation divides by each row's sigma, which magnifies both sides' rounding)."""
    exact = copy.deepcopy(loop).double()
    results = []
    dy = None
    for module, dtype in ((ours, torch.float32), (loop, torch.float32), (exact, torch.float64)):
        xi = x.to(dtype).clone().requires_grad_(True)
        torch.manual_seed(1)  # one seed, the same masks (drawn after dispatch, which keeps the generator)
        out = module(xi)
        y = out[0] if isinstance(out, tuple) else out
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)) if dy is None else dy
        (y * dy.to(dtype)).sum().backward()
        results.append((y.detach().double(), xi.grad.double()))
    for k, what in enumerate(("output", "input grad")):
        expected = results[2][k]
        rel = [((r[k] - expected).abs().max() / expected.abs().max()).item() for r in results[:2]]
        if rel[0] > max(1e-4, 2 * rel[1]):
            raise SystemExit(f"lstmkit {name}: {what} differs from the float64 loop (relative error {rel[0]:.2e}, the "
                             f"float32 loop's {rel[1]:.2e}); not timing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="a,b,c")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for what, chosen, known in (("config", configs, CONFIGS), ("variant", variants, VARIANTS)):
        if unknown := [n for n in chosen if n not in known]:
            raise SystemExit(f"unknown {what} {unknown[0]!r}; choose from {', '.join(known)}")
    if not os.environ.get("LSTMKIT_CACHE"):
        os.environ["LSTMKIT_CACHE"] = tempfile.mkdtemp(prefix="lstmkit-bench-")
    model, _ = tune.cpu_description()
    print(f"CPU: {model}; torch {torch.__version__}, {torch.get_num_threads()} threads; train steps (fp32)")
    for name in variants:
        check_loop_against_the_oracle(name, VARIANTS[name])
    print("loop baselines equal the NumPy oracle (float64, output and every gradient)")
    print(f"{'config':17s} {'impl':22s} {'ms':>9s} {'x nn.LSTM':>10s} {'path':>6s}")
    for config_name in configs:
        cfg = CONFIGS[config_name]
        torch.manual_seed(0)
        standard = lstmkit.LSTM(cfg.I, cfg.H, cfg.layers, batch_first=True)
        contenders: dict[str, nn.Module] = {"nn.LSTM": standard.to_torch(), "lstmkit": standard}
        paths = {"lstmkit": standard.path_for(cfg.B, cfg.T, False, True)}
        x = torch.randn(cfg.B, cfg.T, cfg.I)
        for name in variants:
            torch.manual_seed(0)
            ours = lstmkit.LSTM(cfg.I, cfg.H, cfg.layers, batch_first=True, **VARIANTS[name])
            loop = LoopVariantLSTM(ours)
            check_against_the_loop(name, ours, loop, x[:, : min(cfg.T, 50)])
            contenders[f"lstmkit {name}"], contenders[f"loop {name}"] = ours, loop
            paths[f"lstmkit {name}"] = ours.path_for(cfg.B, cfg.T, False, True)

        def step(module: nn.Module, x: torch.Tensor = x) -> None:
            out = module(x)
            (out[0] if isinstance(out, tuple) else out).sum().backward()

        for module in contenders.values():  # warm-up (and auto's measuring of the kind)
            step(module)
        times: dict[str, list[float]] = {n: [] for n in contenders}
        for r in range(args.repeats):
            for n in rotated(list(contenders), r):
                times[n].append(time_call(lambda m=contenders[n]: step(m)))
        medians = {n: statistics.median(ts) for n, ts in times.items()}
        for n, seconds in medians.items():
            print(f"{cfg.name:17s} {n:22s} {seconds * 1e3:9.1f} {medians['nn.LSTM'] / seconds:10.2f} "
                  f"{paths.get(n, '-'):>6s}", flush=True)
        for name in variants:
            ratio = medians[f"lstmkit {name}"] / medians["nn.LSTM"]
            faster = medians[f"loop {name}"] / medians[f"lstmkit {name}"]
            print(f"{cfg.name:17s} {name}: {ratio:.2f}x nn.LSTM's time (target <= 1.3), {faster:.2f}x faster than "
                  "its loop (target >= 3)")


if __name__ == "__main__":
    main()
