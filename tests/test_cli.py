"""The command line: thin, and every mistake a one-line message with a non-zero exit code."""

from __future__ import annotations

from click.testing import CliRunner

import lstmkit
from lstmkit.cli import main


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and lstmkit.__version__ in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output


def test_demo_runs_small(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--steps", "6", "--hidden", "4", "--epochs", "1", "--out", str(out),
                                       "--lm-minutes", "0.03"])
    assert result.exit_code == 0, result.output
    assert "LSTM final MSE" in result.output and "RNN  final MSE" in result.output
    assert "\r" not in result.output  # not a terminal: plain lines, no progress bar
    assert (out / "gradient_flow.png").stat().st_size > 0
    assert (out / "char_lm" / "model.safetensors").is_file()
    sample = result.output.split("--temperature 0.7) ==\n", 1)[1].split("\n\nnext:")[0]
    assert sample.startswith("The ") and len(sample) == len("The ") + 400  # 400 characters generated


def test_demo_bad_options_are_one_line_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["demo", "--steps", "1"])
    assert result.exit_code == 2 and "Invalid value for '--steps'" in result.output
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    args = ["demo", "--steps", "6", "--hidden", "4", "--epochs", "1", "--out", str(blocker / "x"), "--lm-minutes", "0"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot write to") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
