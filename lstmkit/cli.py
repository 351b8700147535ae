"""The `lstmkit` command. Thin: parse, call an importable function, print.

Every `LstmkitError` (a mistake the user can fix) becomes one line, `Error: ...`, and its exit code; other
exceptions are bugs and keep their tracebacks.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

import lstmkit
from lstmkit.errors import ConfigError, LstmkitError


class UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LstmkitError as error:
            raise UserError(str(error), error.exit_code) from None


def _echo_piece(piece: str) -> None:
    """Text as it is generated: no newline, flushed so that it shows at once."""
    click.echo(piece, nl=False)
    sys.stdout.flush()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lstmkit.__version__, prog_name="lstmkit")
def main() -> None:
    """lstmkit: the textbook LSTM as a drop-in torch.nn.LSTM, and the tools around it."""


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"), show_default=True,
              help="Directory for the gradient-flow plot and the language model's run.")
@click.option("--steps", "T", type=click.IntRange(min=2), default=100, show_default=True,
              help="Sequence length T of the adding problem.")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden size of both models.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Epochs of each adding-problem model (--seconds may stop it sooner).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=75.0, show_default=True,
              help="Wall-clock cap on each adding-problem model's training.")
@click.option("--lm-minutes", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Training time of the character language model (0: skip it and its sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of every part of the tour.")
def demo(out: Path, T: int, hidden: int, epochs: int, seconds: float, lm_minutes: float, seed: int) -> None:
    """The tour: long-range memory (LSTM vs a plain RNN on the adding problem, and their gradient flow), then a
    character language model trained on Python's own documentation, and text generated from it."""
    from lstmkit.demo import run_tour
    from lstmkit.longrange import DemoConfig

    config = DemoConfig(T=T, hidden_size=hidden, epochs=epochs, seconds_per_model=seconds, seed=seed)
    try:
        run_tour(out, config, lm_minutes, log=lambda line: click.echo(line), write=_echo_piece)
    except OSError as error:
        raise click.ClickException(f"cannot write to {out}: {error.strerror or error}") from None


def _data_path(data: Path | None) -> str | None:
    """--data as a run saves it: resolved, so the run's own data is found from any working directory later."""
    if data is None:
        return None
    return str(data.resolve()) if data.exists() else str(data)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rendezvous(nnodes: int, rdzv: str | None, out: Path) -> list[str]:
    """torchrun's options for one machine (a free loopback port), or for `nnodes` meeting at `rdzv`."""
    if nnodes == 1:
        return ["--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    host, _, port = (rdzv or "").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--rdzv must be HOST:PORT (an address of one of the machines and a free port), not {rdzv!r}")
    # The run directory's name is the job's id: the same on every machine, different for another run.
    args = [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv}", f"--rdzv_id=lstmkit-{out.name}"]
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        args.append("--local_addr=127.0.0.1")  # agents of one machine (a test): keep every connection on loopback
    return args


@main.command()
@click.argument("task")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The run directory.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Training data (for tasks that read files).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs (also when resuming).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Wall-clock budget: stop cleanly when it is spent, keeping the best checkpoint.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the config's, 0).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar or evaluation lines.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes for data-parallel training on this machine (torchrun).")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines training together: run the same command on each, with the same --rdzv.")
@click.option("--rdzv", metavar="HOST:PORT", default=None,
              help="With --nnodes > 1: torchrun's c10d rendezvous, an address of one of the machines and a free "
                   "port on it.")
@click.option("--preset", "presets", multiple=True, help="A preset name (lstmkit/configs) or TOML path; repeatable.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one configuration value, e.g. --set train.lr=3e-4; repeatable.")
def train(task: str, out: Path, data: Path | None, epochs: int | None, minutes: float | None, seed: int | None,
          resume: bool, quiet: bool, nproc: int, nnodes: int, rdzv: str | None, presets: tuple[str, ...],
          overrides: tuple[str, ...]) -> None:
    """Train TASK into the run directory --out (tasks: adding, sentiment, sequences, lm, speech).

    With --resume, the command that started the run continues it: its options must agree with the run's saved
    configuration (only --epochs and --minutes may change); on a directory with no run yet it starts one."""
    from lstmkit import runs
    from lstmkit.ensemble import train_and_evaluate
    from lstmkit.tasks import requested_config
    from lstmkit.train import check_run_dir, config_for_resume

    requested = requested_config(task, presets, overrides, {
        "data.path": _data_path(data), "train.epochs": epochs, "train.minutes": minutes, "train.seed": seed})
    if resume and not runs.holds_run(out):
        # A job script reruns one fixed command, --resume included, from its very first start.
        click.echo(f"{out} holds no run yet: starting a new one (--resume will continue it)", err=True)
        resume = False
    config = config_for_resume(out, requested=requested) if resume else requested.config
    check_run_dir(out, resume)
    if (nproc > 1 or nnodes > 1) and config.train.members > 1:
        raise ConfigError("an ensemble (train.members > 1) trains its members one process each; drop --nproc and "
                          "--nnodes")
    if (nnodes > 1) != (rdzv is not None):
        raise ConfigError("--nnodes N (N > 1) and --rdzv HOST:PORT go together: every machine runs the same command "
                          "with both")
    if nproc > 1 or nnodes > 1:
        # Checked above in this process (one-line errors); then torchrun takes this process's place, so a
        # Ctrl-C reaches it directly and it forwards it to the workers, which save and stop.
        args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                *_rendezvous(nnodes, rdzv, out), "-m", "lstmkit", "train", task, "--out", str(out)]
        for flag, value in (("--data", data), ("--epochs", epochs), ("--minutes", minutes), ("--seed", seed)):
            if value is not None:
                args += [flag, str(value)]
        args += ["--resume"] * resume + ["--quiet"] * quiet
        for preset in presets:
            args += ["--preset", preset]
        for override in overrides:
            args += ["--set", override]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, args)

    result = train_and_evaluate(config, out, resume=resume, quiet=quiet)
    best = f"{result.best_metric:.4f}" if result.best_metric is not None else "n/a"
    kept = "last" if config.train.keep == "last" else "best"  # whose weights model.safetensors holds
    resume_hint = f"continue with: lstmkit train {task} --out {out} --resume"
    if result.status == "interrupted":
        click.echo(f"interrupted at step {result.step}; checkpoint saved in {out}; {resume_hint}", err=True)
        sys.exit(130)
    messages = {
        "completed": f"done: {result.epoch} epoch{'s' * (result.epoch != 1)}, {result.step} steps; {kept} validation "
        f"metric {best}; run in {out}",
        "early_stopped": f"early stop at step {result.step} (no improvement); best validation metric {best}; "
        f"run in {out}",
        "time_budget": f"time budget spent at step {result.step}; {kept} validation metric {best} kept; {resume_hint}",
    }
    click.echo(messages[result.status], err=quiet)


def _print_metrics(metrics: dict, as_json: bool) -> None:
    import json

    if as_json:
        click.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        if key == "confusion_matrix":
            click.echo("confusion matrix (rows: true label, columns: predicted):")
            for row in value:
                click.echo("  " + " ".join(f"{n:7d}" for n in row))
        elif isinstance(value, float):
            click.echo(f"{key:10s} {value:.4f}")
        else:
            click.echo(f"{key:10s} {value}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", default=None,
              help="Data to score: labelled examples, or a text for a language model (default: the run's own "
                   "held-out part, for classifiers).")
@click.option("--split", type=click.Choice(["valid", "test"]), default="valid", show_default=True,
              help="Which held-out part of the run's own data, when --data is not given.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def evaluate(run: Path, data: str | None, split: str, as_json: bool) -> None:
    """Score the best model of RUN (or an ONNX file written by `lstmkit export`, fp32 or int8): classifiers give
    accuracy, precision, recall, F1, ROC-AUC and the confusion matrix; language models give loss (nats/token) and
    bits per character or perplexity."""
    if run.suffix == ".onnx":  # a file from `lstmkit export --format onnx`, scored by onnxruntime
        from lstmkit.export.onnx_run import open_onnx as open_run
    else:
        from lstmkit.ensemble import open_run

    task, model = open_run(run)
    if data is not None:
        metrics = task.evaluate_path(model, data)
    else:
        examples, labels = task.held_out(split)
        metrics = task.evaluate_examples(model, examples, labels)
    metrics = {"labels": task.label_names, **metrics} if hasattr(task, "label_names") else metrics
    _print_metrics(metrics, as_json)


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", "file", type=click.Path(path_type=Path), default=None,
              help="A UTF-8 file with one text (a recording's path, for a speech run) per line ('-' for standard "
                   "input).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text or recording.")
def predict(run: Path, texts: tuple[str, ...], file: Path | None, as_json: bool) -> None:
    """Label and probability for each text, with the best model of a sentiment RUN; for a speech RUN, for each
    recording (WAV, FLAC, OGG) given as TEXTS."""
    import json

    from lstmkit.ensemble import open_run
    from lstmkit.errors import DataError

    task, model = open_run(run)
    if not hasattr(task, "predict_texts") and not hasattr(task, "predict_files"):
        raise ConfigError(f"{run} is a {task.name!r} run; predict works on text classifiers (sentiment runs) and "
                          "on recording classifiers (speech runs)")
    inputs = list(texts)
    if file is not None:
        try:
            content = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"file not found: {file}") from None
        except UnicodeDecodeError as error:
            raise DataError(f"{file} is not UTF-8 (byte {error.start}); re-encode it, e.g. with iconv") from None
        inputs += [line for line in content.splitlines() if line.strip()]
    if not inputs:
        raise DataError("nothing to predict: give texts as arguments or --file F")
    if hasattr(task, "predict_files"):  # a speech run: the arguments are recordings
        for result in task.predict_files(model, inputs):
            click.echo(json.dumps(result) if as_json else f"{result['label']}\t{result['probability']:.3f}\t"
                       f"{result['file']}")
        return
    _refuse_recordings(inputs, run, task, "predict")
    empty = [i + 1 for i, text in enumerate(inputs) if not text.strip()]
    if empty:
        raise DataError(f"text {empty[0]} is empty; give it some words")
    for result in task.predict_texts(model, inputs):
        if as_json:
            click.echo(json.dumps(result))
        else:
            preview = result["text"] if len(result["text"]) <= 60 else result["text"][:57] + "..."
            click.echo(f"{result['label']}\t{result['probability']:.3f}\t{preview}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--prompt", default="\n", show_default="a newline", help="Text the model continues.")
@click.option("--length", type=int, default=500, show_default=True, help="Tokens to generate.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Below 1: safer; above: wilder.")
@click.option("--top-k", type=int, default=None, help="Sample among the k most likely tokens only.")
@click.option("--top-p", type=float, default=None, help="Sample among the most likely tokens that make up p.")
@click.option("--greedy", is_flag=True, help="Always the most likely token (no sampling).")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed gives the same text.")
def generate(run: Path, prompt: str, length: int, temperature: float, top_k: int | None, top_p: float | None,
             greedy: bool, seed: int) -> None:
    """Continue --prompt with the best model of a language-model RUN, printing each token as it comes."""
    from lstmkit.sample import check_sampling
    from lstmkit.sample import generate as generate_tokens

    check_sampling(length, temperature, top_k, top_p)  # before the model loads: a typo fails at once
    from lstmkit.ensemble import open_run

    task, model = open_run(run)
    if task.name != "lm":
        raise ConfigError(f"{run} is a {task.name!r} run; generate works on language-model runs (lstmkit train lm)")
    tokens = generate_tokens(model, task.vocab, prompt, length, temperature, top_k, top_p, greedy, seed)
    click.echo(prompt, nl=False)
    for piece in tokens:
        _echo_piece(piece)
    click.echo()


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("text")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the heatmaps (gates_layer0.png, ...) and, with --json, trace.json.")
@click.option("--json", "as_json", is_flag=True, help="Also write the raw values of every gate as trace.json.")
@click.option("--max-units", type=click.IntRange(min=1), default=None, help="Plot only the first N units.")
def inspect(run: Path, text: str, out: Path, as_json: bool, max_units: int | None) -> None:
    """Heatmaps (token × unit) of the input, forget and output gates and the memory cell of every layer of
    RUN's LSTM reading TEXT ('-' reads standard input). Tokens the model does not know are marked *.

    For a speech RUN, TEXT is a recording: one PNG, --out/inspect.png, with its mel spectrogram above the gates and
    cell of every layer, frame by frame on one time axis."""
    import json

    from lstmkit.ensemble import open_run
    from lstmkit.introspect import trace_text
    from lstmkit.plots import gate_heatmaps

    if text == "-":
        text = sys.stdin.read()
    task, model = open_run(run)
    if hasattr(task, "trace_recording"):  # a speech run: TEXT is a recording
        _inspect_recording(task, model, Path(text), out, as_json, max_units)
        return
    _refuse_recordings([text], run, task, "inspect")
    result = trace_text(task, model, text)
    try:
        paths = gate_heatmaps(result, out, max_units=max_units)
        if as_json:
            paths.append(out / "trace.json")
            (out / "trace.json").write_text(json.dumps(result.to_json()), encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot write to {out}: {error.strerror or error}") from None
    if result.prediction and "label" in result.prediction:
        click.echo(f"prediction: {result.prediction['label']} ({result.prediction['probability']:.3f})")
    elif result.prediction:
        shown = ", ".join(f"{p['token']!r} {p['probability']:.2f}" for p in result.prediction["next"])
        click.echo(f"next token: {shown}")
    if result.shown_member:
        click.echo(f"gates of {result.shown_member}; the prediction is the ensemble's")
    unknown = sum(result.unknown)
    layers, directions = result.num_layers, result.num_directions
    click.echo(f"{len(result.tokens)} tokens{f' ({unknown} unknown to the model, marked *)' if unknown else ''}; "
               f"{layers} layer{'s' * (layers > 1)}{f' × {directions} directions' if directions > 1 else ''} of "
               f"{result.hidden_size} units")
    for path in paths:
        click.echo(f"wrote {path}")


def _refuse_recordings(texts: list[str], run: Path, task: object, verb: str) -> None:
    """A recording given to a run that reads text: one line that says which run takes it."""
    from lstmkit.data.audio import AUDIO_SUFFIXES
    from lstmkit.errors import DataError

    for text in texts:
        if text.lower().endswith(AUDIO_SUFFIXES) and Path(text).is_file():
            raise DataError(f"{text} is a recording, but {run} is a {task.name!r} run, which reads text; {verb} "
                            "recordings with a speech run (lstmkit train speech)")


def _inspect_recording(task, model, recording: Path, out: Path, as_json: bool, max_units: int | None) -> None:
    """inspect on a speech run: one PNG (spectrogram, then gates and cell of each layer, one time axis)."""
    import json

    from lstmkit.plots import recording_gates
    from lstmkit.tasks.speech import trace_json

    result = task.trace_recording(model, recording)
    try:
        paths = [recording_gates(result, out / "inspect.png", max_units=max_units)]
        if as_json:
            paths.append(out / "trace.json")
            (out / "trace.json").write_text(json.dumps(trace_json(result)), encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot write to {out}: {error.strerror or error}") from None
    prediction = result["prediction"]
    click.echo(f"prediction: {prediction['label']} ({prediction['probability']:.3f})")
    if result["shown_member"]:
        click.echo(f"gates of {result['shown_member']}; the prediction is the ensemble's")
    frames, hop_ms = len(result["spectrogram"]), result["hop_seconds"] * 1000
    click.echo(f"{frames} frames of {hop_ms:.3g} ms ({result['seconds']:.2f} s)")
    for path in paths:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The PNG to write (default: RUN/curves.png, or gradient_flow.png with --gradient-flow).")
@click.option("--gradient-flow", is_flag=True,
              help="Instead of a run: train an LSTM and a plain RNN briefly on the adding problem and plot how "
                   "the gradient reaches back through time in each (the long-range demo's plot).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="With --gradient-flow: training time per model.")
def plot(run: Path | None, out: Path | None, gradient_flow: bool, seconds: float) -> None:
    """Training curves of RUN (loss, its metric, learning rate) from metrics.jsonl as a PNG."""
    if gradient_flow:
        if run is not None:
            raise ConfigError("--gradient-flow trains its own two models; give no RUN with it")
        from lstmkit.longrange import DemoConfig, plot_gradient_flow, run_demo

        out = out or Path("gradient_flow.png")
        config = DemoConfig(seconds_per_model=seconds)
        result = run_demo(config, out_dir=None, log=lambda line: click.echo(line))
        try:
            click.echo(f"wrote {plot_gradient_flow(result.grad_norms, config.T, out)}")
        except OSError as error:
            raise UserError(f"cannot write {out}: {error.strerror or error}") from None
        return
    if run is None:
        raise ConfigError("give a run directory to plot (or --gradient-flow)")
    from lstmkit import runs
    from lstmkit.plots import training_curves
    from lstmkit.tasks import load_run_config

    config = load_run_config(run)
    if config.train.members > 1:
        raise ConfigError(f"{run} is an ensemble of {config.train.members} runs; plot one of them, e.g. "
                          f"{run / 'member-1'}")
    out = out or run / "curves.png"
    try:
        path = training_curves(runs.read_metrics(run), out, title=f"{run.name} ({config.task})")
    except OSError as error:
        raise UserError(f"cannot write {out}: {error.strerror or error}") from None
    click.echo(f"wrote {path}")


@main.command()
@click.argument("runs_", metavar="RUN [RUN ...]", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the models to your network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-chars", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Longest text a request may send.")
@click.option("--max-generate", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Most tokens one generate request may ask for.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request may wait for and use a model.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Model calls running at once; the others wait (up to --timeout).")
def serve(runs_: tuple[Path, ...], host: str, port: int, max_chars: int, max_generate: int, timeout: float,
          concurrency: int) -> None:
    """Serve RUNs: a JSON API (docs at /docs) and a page at / that shows the gates and memory cell on the text
    you type, predictions of sentiment runs and streamed generation of language-model runs."""
    from lstmkit.web.app import Limits
    from lstmkit.web.app import serve as run_server

    limits = Limits(max_chars=max_chars, max_generate=max_generate, timeout_s=timeout, concurrency=concurrency)
    run_server(list(runs_), host=host, port=port, limits=limits)


@main.command()
@click.argument("target", metavar="RUN|TASK")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Training data, with a TASK.")
@click.option("--preset", "presets", multiple=True, help="A preset name or TOML path, with a TASK; repeatable.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="An override, with a TASK.")
@click.option("--batches", type=click.IntRange(min=1), default=3, show_default=True,
              help="Train batches to rehearse (each also once in inference).")
def tune(target: str, data: Path | None, presets: tuple[str, ...], overrides: tuple[str, ...], batches: int) -> None:
    """Measure now which LSTM path backend="auto" takes for the calls a training run makes, and cache the choice
    (~/.cache/lstmkit, or $LSTMKIT_CACHE) so the run does not measure during its first steps.

    RUN: a run directory (its configuration; also lists the paths its checkpoint recorded, which a resumed run
    keeps). TASK: a task name with --preset/--data/--set as `lstmkit train` takes them. Nothing is written
    besides the cache."""
    from lstmkit import runs
    from lstmkit.tasks import load_run_config, requested_config
    from lstmkit.train import recorded_dispatch
    from lstmkit.tuning import describe, rehearse_training

    run_dir = Path(target)
    if (run_dir / runs.CONFIG_FILE).is_file():
        if presets or overrides or data is not None:
            raise ConfigError("a run directory brings its own configuration: drop --preset, --set and --data")
        config = load_run_config(run_dir)
        if (run_dir / runs.CHECKPOINT_FILE).is_file():
            recorded = recorded_dispatch(run_dir)
            click.echo(f"recorded in {run_dir / runs.CHECKPOINT_FILE} (kept on --resume):")
            for line in describe(recorded) or ["  (none: an older run, or no LSTM call before its checkpoint)"]:
                click.echo(f"  {line}")
    else:
        if run_dir.exists() or os.sep in target:
            raise ConfigError(f"{target} is not a run directory (no {runs.CONFIG_FILE}); give a run or a task name")
        config = requested_config(target, presets, overrides, {"data.path": _data_path(data)}).config
    from lstmkit.ops import tune as dispatch_cache

    choices = rehearse_training(config, batches)
    click.echo(f"chosen on this machine ({dispatch_cache.machine()['cpu']}; cache {dispatch_cache.tuner().path}):")
    for line in describe(choices):
        click.echo(f"  {line}")


@main.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, metavar="onnx|keras|pt2",
              help="onnx: the standard LSTM operator, for onnxruntime and other runtimes; keras: a Keras 3 .keras "
                   "file; pt2: a torch.export program (torch.export.load).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The file to write.")
@click.option("--int8", is_flag=True, help="With --format onnx: onnxruntime's dynamic int8 quantisation.")
def export(run: Path, fmt: str, out: Path, int8: bool) -> None:
    """Write the best model of RUN (sentiment, sequences or lm) in another format; see README, Take it elsewhere."""
    from lstmkit.export import export_run

    click.echo(f"wrote {export_run(run, fmt, out, int8=int8)}")


@main.command("import-keras")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The run directory to create.")
@click.option("--vocab", type=click.Path(path_type=Path), default=None,
              help="A text model's vocabulary: one token a line (line n is id n), a JSON list of tokens, or an "
                   "lstmkit vocab.json.")
@click.option("--labels", default=None, help="Names of the classes, comma-separated (default: 0, 1, ...).")
def import_keras(model: Path, out: Path, vocab: Path | None, labels: str | None) -> None:
    """Turn a Keras 3 model (Embedding -> LSTM layers -> Dense, .keras or .weights.h5) into a run directory that
    evaluate, predict, inspect, serve and export take."""
    from lstmkit.export.keras_io import import_keras as import_model

    click.echo(f"wrote {import_model(model, out, vocab=vocab, labels=labels)}")
