"""The seed recipe on IMDB: lstmkit's sentiment task vs the same model in plain PyTorch, in one run.

Baseline, as the seed does it: every review cut and padded to 500 words *before* it ("pre", Keras'
pad_sequences defaults), Embedding(10000, 128) -> torch.nn.LSTM(64) -> Linear(64, 1) on the last step,
Adam 1e-3, BCE, batch 32, shuffled. lstmkit: `lstmkit train sentiment --preset imdb` (length buckets,
each review read at its own last word; the same model, trained with clipping and Adam 2e-3, see the
preset). Both get the same tokenized reviews, the same 20k / 5k split and
the same vocabulary; each epoch's time includes its validation pass. Reported: seconds per epoch and
validation accuracy per epoch, and the ratio of the medians.

Run: `python benchmarks/bench_tasks.py [--data ../shared/data/imdb/imdb_train.jsonl.gz] [--epochs 5]
[--fused-adam]`. `--fused-adam` gives the baseline torch's fused Adam (`fused=True`, opt-in on the CPU; lstmkit
uses it by default): the strongest plain-PyTorch setup rather than the usual one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lstmkit import config as cfg
from lstmkit.data.vocab import pad_sequences
from lstmkit.tasks import preset_config
from lstmkit.tasks.sentiment import SentimentTask
from lstmkit.train import train_and_evaluate

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/imdb/imdb_train.jsonl.gz"


class SeedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10000, 128)
        self.lstm = nn.LSTM(128, 64, batch_first=True)
        self.head = nn.Linear(64, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: [B, 500], pre-padded
        return self.head(self.lstm(self.embedding(ids))[0][:, -1]).squeeze(1)


def plain_pytorch(task: SentimentTask, epochs: int, seed: int, fused_adam: bool) -> list[tuple[float, float]]:
    """(seconds, validation accuracy) per epoch of the seed recipe written the usual way."""
    torch.manual_seed(seed)
    train_ids, _ = pad_sequences([e.tolist() for e in task.train_examples], maxlen=500)  # pre, pre
    valid_ids, _ = pad_sequences([e.tolist() for e in task.valid_examples], maxlen=500)
    train_y = torch.tensor(task.train_labels, dtype=torch.float32)
    valid_y = torch.tensor(task.valid_labels)
    model = SeedModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused_adam or None)
    results = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for batch in torch.randperm(len(train_ids)).split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(model(train_ids[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(chunk) for chunk in valid_ids.split(256)])
        accuracy = ((logits > 0).long() == valid_y).float().mean().item()
        results.append((time.perf_counter() - start, accuracy))
        print(f"  plain PyTorch epoch {len(results)}: {results[-1][0]:.1f} s, accuracy {accuracy:.4f}", flush=True)
    return results


def lstmkit_run(config: cfg.RunConfig) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        train_and_evaluate(config, Path(tmp) / "run", quiet=True)
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    elapsed = [m["elapsed_s"] for m in metrics]
    seconds = [b - a for a, b in zip([0.0, *elapsed[:-1]], elapsed, strict=True)]
    for epoch, (s, m) in enumerate(zip(seconds, metrics, strict=True), 1):
        print(f"  lstmkit epoch {epoch}: {s:.1f} s, accuracy {m['accuracy']:.4f}", flush=True)
    return [(s, m["accuracy"]) for s, m in zip(seconds, metrics, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fused-adam", action="store_true", help="Give the baseline torch's fused Adam.")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data PATH to the IMDB train split (JSON lines)")
    config = preset_config("sentiment", ["imdb"])
    cfg.apply_overrides(config, [f"data.path={args.data}", f"train.epochs={args.epochs}", f"train.seed={args.seed}"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
          f"IMDB seed recipe, {args.epochs} epochs")
    task = SentimentTask(config)  # the shared tokenized data, split and vocabulary
    print(f"plain PyTorch (nn.LSTM, pre-padded to 500, {'fused' if args.fused_adam else 'default'} Adam):")
    baseline = plain_pytorch(task, args.epochs, args.seed, args.fused_adam)
    print("lstmkit (lstmkit train sentiment --preset imdb):")
    ours = lstmkit_run(config)
    base_s = statistics.median(s for s, _ in baseline)
    our_s = statistics.median(s for s, _ in ours)
    print(f"median seconds per epoch: plain PyTorch {base_s:.1f}, lstmkit {our_s:.1f}: {base_s / our_s:.2f}x faster")
    print(f"best validation accuracy: plain PyTorch {max(a for _, a in baseline):.4f}, "
          f"lstmkit {max(a for _, a in ours):.4f}")


if __name__ == "__main__":
    main()
