"""PNG plots of a run: training curves from metrics.jsonl, and gate / memory-cell heatmaps of a traced text.

matplotlib is used headless (Agg), so plotting works on a server with no display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.errors import RunDirError
from lstmkit.introspect import TextTrace

# The panels of a gate figure: the three gates and the memory cell, as the textbook explains the LSTM.
HEATMAP_PANELS = (
    ("input", "input gate i_t (6.51): what the cell writes"),
    ("forget", "forget gate f_t (6.52): what the cell keeps"),
    ("output", "output gate o_t (6.53): what the cell shows"),
    ("cell", "memory cell c_t (6.55)"),
)
MAX_TOKEN_LABELS = 120  # beyond this, every k-th token is labelled so the labels stay readable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _token_label(token: str) -> str:
    return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(token, token)


def _gate_panel(ax: Any, name: str, values: np.ndarray, **imshow: Any) -> Any:
    """One heat map of a gate or of the cell, [units, time]: the colour scale of each kind in one place."""
    if name == "cell":  # unbounded and signed: a diverging scale symmetric about 0
        bound = float(np.abs(values).max()) or 1.0
        return ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest",
                         **imshow)
    # a gate is a sigmoid: 0 (closed) to 1 (open)
    return ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", **imshow)


def gate_heatmaps(trace: TextTrace, out_dir: Path, max_units: int | None = None) -> list[Path]:
    """One PNG per layer and direction: input, forget and output gates and the cell state, units × tokens.

    `max_units`: show only the first N units (a 512-unit layer is tall). Returns the files written."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T = len(trace.tokens)
    labels = [_token_label(t) + ("*" if unknown else "") for t, unknown in zip(trace.tokens, trace.unknown,
                                                                                strict=True)]
    every = max(1, math.ceil(T / MAX_TOKEN_LABELS))
    paths = []
    H = trace.hidden_size  # every layer's
    width = min(40.0, max(7.0, 0.22 * T + 2.0))
    for entry in trace.layers:
        units = H if max_units is None else min(max_units, H)
        height = min(30.0, 2.0 + len(HEATMAP_PANELS) * max(1.6, 0.02 * units))
        fig, axes = plt.subplots(len(HEATMAP_PANELS), 1, figsize=(width, height), dpi=100, squeeze=False)
        for ax, (name, title) in zip(axes[:, 0], HEATMAP_PANELS, strict=True):
            image = _gate_panel(ax, name, entry[name][:, :units].T)  # [units, T]
            fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
            ax.set_title(title, fontsize=10, loc="left")
            ax.set_ylabel("unit")
            ax.set_xticks(range(0, T, every))
            ax.set_xticklabels(labels[::every], rotation=90, fontsize=8)
        direction = "" if entry["direction"] == "forward" else f", {entry['direction']} direction"
        shown = f"first {units} of {H} units" if units < H else f"{units} units"
        fig.suptitle(f"layer {entry['layer']}{direction}: {T} tokens × {shown}", fontsize=11)
        fig.tight_layout()
        suffix = "" if entry["direction"] == "forward" else f"_{entry['direction']}"
        path = out_dir / f"gates_layer{entry['layer']}{suffix}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# Per task metric: how to label it; "mse" etc. fall back to the key itself.
METRIC_LABELS = {"accuracy": "validation accuracy", "bpc": "bits per character", "perplexity": "perplexity",
                 "f1": "validation F1"}


def training_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss (training and validation) and the task's main metric against steps, and the learning rate, as a PNG."""
    plt = _pyplot()
    fig = curves_figure(records, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def curves_figure(records: list[dict[str, Any]], title: str = "") -> Any:
    """The figure `training_curves` saves."""
    if not records:
        raise RunDirError("the run has no evaluations in metrics.jsonl yet; plot it after its first evaluation")
    plt = _pyplot()
    steps = [r["step"] for r in records]
    metric = next((key for key in ("accuracy", "bpc", "perplexity") if key in records[-1]), None)
    panels = 2 + (metric is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 4.0), dpi=110, squeeze=False)
    ax = axes[0, 0]
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), marker=".", label="training (mean since last evaluation)")
    valid = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float | int)]
    if valid:
        ax.plot(*zip(*valid, strict=True), marker=".", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if metric is not None:
        ax = axes[0, 1]
        ax.plot(steps, [r.get(metric) for r in records], marker=".", color="tab:green")
        best = [(r["step"], r[metric]) for r in records if r.get("best")]
        if best:
            ax.plot(*zip(*best[-1:], strict=True), marker="*", markersize=14, color="tab:red", linestyle="",
                    label=f"best kept: {best[-1][1]:.4g} at step {best[-1][0]}")
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    ax = axes[0, -1]
    rates = [r.get("lr") for r in records]
    ax.plot(steps, rates, color="tab:gray")
    # From 0: a constant rate then reads as one, not as a line across an axis zoomed to its last digits.
    ax.set_ylim(0, 1.1 * max((rate for rate in rates if rate is not None), default=0.0) or 1.0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate (at each evaluation)")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def recording_gates(result: dict[str, Any], out: Path, max_units: int | None = None) -> Path:
    """One PNG of a traced recording (`SpeechTask.trace_recording`): its mel spectrogram on top, then the input,
    forget and output gates and the memory cell of every layer and direction, all on one time axis (seconds)."""
    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spectrogram = result["spectrogram"]  # [T, M] dB
    T = spectrogram.shape[0]
    extent_time = T * result["hop_seconds"]
    panels: list[tuple[str, np.ndarray, str]] = [("spectrogram", spectrogram.T, "mel spectrogram (dB)")]
    for entry in result["layers"]:
        where = f"layer {entry['layer']}" + ("" if entry["direction"] == "forward" else f" {entry['direction']}")
        for name, title in HEATMAP_PANELS:
            values = entry[name] if max_units is None else entry[name][:, :max_units]
            panels.append((name, values.T, f"{where}: {title}"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7.0, min(30.0, 2.0 + 0.08 * T)), 1.7 * len(panels) + 1.0),
                             dpi=100, squeeze=False, sharex=True)
    for ax, (name, values, title) in zip(axes[:, 0], panels, strict=True):
        extent = (0.0, extent_time, values.shape[0] - 0.5, -0.5)
        if name == "spectrogram":
            image = ax.imshow(values, aspect="auto", origin="lower", cmap="magma",  # low bands at the bottom
                              extent=(0.0, extent_time, -0.5, values.shape[0] - 0.5), interpolation="nearest")
            ax.set_ylabel("mel band")
        else:
            image = _gate_panel(ax, name, values, extent=extent)
            ax.set_ylabel("unit")
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
        ax.set_title(title, fontsize=10, loc="left")
    axes[-1, 0].set_xlabel("time (s)")
    prediction = result["prediction"]
    fig.suptitle(f"{result['file']}: {T} frames; prediction {prediction['label']} ({prediction['probability']:.3f})",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
