"""Speaker-independent accuracy of a speech recipe on FSDD: leave-one-speaker-out and the official split.

    nice -n 19 python benchmarks/speech_fsdd.py --preset fsdd [--set KEY=VALUE ...] [--only loso|official]

Each fold trains a run (train on three speakers, test on the fourth; validation: a random 15% of the three), then
scores the held-out speaker with the best checkpoint. The official split tests recordings 0-4 of every speaker.
Prints one JSON line per fold and a summary (mean and standard deviation over the speakers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lstmkit.ensemble import open_run, train_and_evaluate
from lstmkit.tasks import requested_config

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler")


def run_fold(name: str, test_match: str, presets: list[str], overrides: list[str], root: Path, data: Path) -> dict:
    out = root / name
    config = requested_config("speech", presets, [*overrides, f"data.test_match={test_match}"],
                              {"data.path": str(data)}).config
    started = time.perf_counter()
    result = train_and_evaluate(config, out, quiet=True)
    seconds = time.perf_counter() - started
    task, model = open_run(out)
    examples, labels = task.held_out("test")
    metrics = task.evaluate_examples(model, examples, labels)
    return {"fold": name, "test_accuracy": round(metrics["accuracy"], 4),
            "valid_accuracy": round(result.best_metric, 4), "test_files": len(labels),
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", default=[])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--only", choices=["loso", "official"], default=None)
    parser.add_argument("--folds", default="", help="Comma-separated fold names to run (e.g. theo,official); "
                                                     "default: all of --only")
    parser.add_argument("--data", type=Path, default=FSDD)
    parser.add_argument("--out", type=Path, default=None, help="Keep the runs here (default: a temporary folder).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        folds = []
        if args.only in (None, "loso"):
            folds += [(f"loso-{speaker}", f"_{speaker}_") for speaker in SPEAKERS]
        if args.only in (None, "official"):
            folds.append(("official", r"_[0-4]\.wav$"))
        if args.folds:
            wanted = {f"loso-{n}" if n in SPEAKERS else n for n in args.folds.split(",")}
            folds = [(name, match) for name, match in folds if name in wanted]
        rows = []
        for name, match in folds:
            row = run_fold(name, match, args.preset, args.overrides, root, args.data)
            rows.append(row)
            print(json.dumps(row), flush=True)
        loso = [row["test_accuracy"] for row in rows if row["fold"].startswith("loso")]
        summary = {"recipe": {"presets": args.preset, "overrides": args.overrides}}
        if loso:
            summary |= {"loso_mean": round(statistics.mean(loso), 4), "loso_std": round(statistics.pstdev(loso), 4),
                        "loso_min": min(loso)}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
