"""The `lstmkit` command. Thin: parse, call an importable function, print."""

from __future__ import annotations

from pathlib import Path

import click

import lstmkit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lstmkit.__version__, prog_name="lstmkit")
def main() -> None:
    """lstmkit: the textbook LSTM as a drop-in torch.nn.LSTM, and the tools around it."""


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"), show_default=True,
              help="Directory for the gradient-flow plot.")
@click.option("--steps", "T", type=click.IntRange(min=2), default=100, show_default=True,
              help="Sequence length T of the adding problem.")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden size of both models.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=75.0, show_default=True,
              help="Wall-clock cap on each model's training.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: Path, T: int, hidden: int, epochs: int, seconds: float, seed: int) -> None:
    """Long-range memory: LSTM vs a plain tanh RNN on the adding problem, and their gradient flow."""
    from lstmkit.longrange import DemoConfig, run_demo

    config = DemoConfig(T=T, hidden_size=hidden, epochs=epochs, seconds_per_model=seconds, seed=seed)
    try:
        run_demo(config, out_dir=out, log=lambda line: click.echo(line))
    except OSError as error:
        raise click.ClickException(f"cannot write to {out}: {error.strerror or error}") from None
