"""`make demo`: the tour of lstmkit in about three and a half minutes on 2 cores.

1. Long-range memory (lstmkit.longrange): an LSTM and a plain tanh RNN on the adding problem, and how far back
   the gradient reaches in each.
2. A character language model trained for `lm_minutes` on Python's own documentation (the built-in corpus,
   no download), with the engine every task uses (`lstmkit train lm --preset tour_lm`).
3. A sample generated from it, streamed as it is produced (`lstmkit generate`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from lstmkit import config as cfg
from lstmkit.longrange import DemoConfig, run_demo

TOUR_PROMPT = "The "


def run_tour(out_dir: Path, adding: DemoConfig, lm_minutes: float, sample_length: int = 400,
             log: Callable[[str], None] = print, write: Callable[[str], None] = print) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # fail before anything runs, not after
    log("== 1. Long-range memory: the adding problem ==")
    run_demo(adding, out_dir=out_dir, log=log)
    if lm_minutes <= 0:
        return
    from lstmkit.sample import generate
    from lstmkit.tasks import open_run, preset_config
    from lstmkit.train import train_and_evaluate

    run_dir = out_dir / "char_lm"
    log(f"\n== 2. A character language model, {lm_minutes:g} minutes on Python's own documentation ==")
    config = preset_config("lm", ["tour_lm"])
    cfg.set_value(config, "train.minutes", lm_minutes)
    cfg.set_value(config, "train.seed", adding.seed)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own output from an earlier run: start afresh
    result = train_and_evaluate(config, run_dir)
    if result.status == "interrupted":
        log(f"interrupted at step {result.step}; the run so far is in {run_dir}")
        return
    log(f"best validation loss {result.best_metric:.3f} nats/char after {result.step} steps; run in {run_dir}")
    log(f"\n== 3. Generated from it (lstmkit generate {run_dir} --prompt {TOUR_PROMPT!r} --temperature 0.7) ==")
    task, model = open_run(run_dir)
    write(TOUR_PROMPT)
    for piece in generate(model, task.vocab, TOUR_PROMPT, sample_length, temperature=0.7, seed=adding.seed):
        write(piece)
    write("\n")
    log(f"\nnext: lstmkit inspect {run_dir} \"def f(x):\" --out {out_dir / 'gates'}   (gate heatmaps)\n"
        f"      lstmkit serve {run_dir}   (the web page: gates and memory cell on your own text)")
