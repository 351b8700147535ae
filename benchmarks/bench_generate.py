"""Text generation speed at batch 1: `lstmkit.sample.generate` vs a plain PyTorch loop over torch.nn.LSTM.

Both read the prompt in one call, then produce one token per step from the same weights with the same
sampling code (`lstmkit.sample.pick_next`) and the same seed, so they must write the same text; only how the
LSTM is stepped differs. The baseline is what one writes by hand: Embedding -> nn.LSTM on a [1, 1, E] input
with the carried state -> Linear. lstmkit steps an LSTMStream. Checked first (same text), then timed with
interleaved repeats in one process.

Run: `python benchmarks/bench_generate.py [--run RUN] [--tokens N] [--repeats N]`; without --run, a model of
the char_lm preset's size (embedding 128, 2 x 512, 65 symbols) with random weights.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import string
import time
from pathlib import Path

import torch

from lstmkit.data.vocab import Vocab
from lstmkit.lstm_config import LSTMConfig
from lstmkit.sample import encode_prompt, generate, pick_next
from lstmkit.tasks.lm import LanguageModel, LMModelConfig


def baseline_generate(model: LanguageModel, vocab: Vocab, prompt_ids: list[int], length: int, temperature: float,
                      seed: int) -> list[int]:
    """The hand-written loop: torch.nn.LSTM called once per token."""
    lstm = model.lstm.to_torch().eval()
    generator = torch.Generator().manual_seed(seed)
    specials = torch.tensor([vocab.pad_id, vocab.unk_id])
    tokens = []
    with torch.inference_mode():
        output, state = lstm(model.embedding(torch.tensor(prompt_ids)[:, None]))
        last = model.head(output[-1, 0])
        for _ in range(length):
            last[specials] = float("-inf")
            token = pick_next(last, temperature, None, None, False, generator)
            tokens.append(token)
            output, state = lstm(model.embedding(torch.tensor([[token]])), state)
            last = model.head(output[0, 0])
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="A language-model run directory to use.")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.run is not None:
        from lstmkit.tasks import open_run

        task, model = open_run(args.run)
        vocab, source = task.vocab, str(args.run)
    else:
        symbols = list(string.ascii_letters + string.digits[:1] + " .,;:!?'-\n")[:63]
        vocab = Vocab(["<pad>", "<unk>", *symbols], level="char")
        m = LMModelConfig(embedding_dim=128, lstm=LSTMConfig(hidden_size=512, num_layers=2))
        model = LanguageModel(len(vocab), m).eval()
        source = "random weights, char_lm preset size"
    lstm = model.lstm
    prompt = "".join(vocab.tokens[2:12]) if vocab.level == "char" else " ".join(vocab.tokens[2:6])
    prompt_ids = encode_prompt(vocab, prompt)

    def ours() -> str:
        return "".join(generate(model, vocab, prompt, args.tokens, temperature=args.temperature, seed=1))

    def theirs() -> str:
        ids = baseline_generate(model, vocab, prompt_ids, args.tokens, args.temperature, seed=1)
        pieces = vocab.decode(ids)
        return "".join(pieces) if vocab.level == "char" else "".join(" " + p if p != "<eos>" else "\n" for p in pieces)

    same = ours() == theirs()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"model: {source}; {lstm.num_layers} x {lstm.hidden_size}, vocabulary {len(vocab)}; {args.tokens} tokens "
          f"per run at batch 1, temperature {args.temperature}; same text from both: {same}")
    if not same:
        raise SystemExit("the two loops wrote different texts; not timing them")
    times: dict[str, list[float]] = {"nn.LSTM loop": [], "lstmkit generate": []}
    for _ in range(args.repeats):
        for name, run in (("nn.LSTM loop", theirs), ("lstmkit generate", ours)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["nn.LSTM loop"])
    print(f"{'impl':18s} {'tokens/s':>10s} {'x nn.LSTM loop':>15s}")
    for name, ts in times.items():
        seconds = statistics.median(ts)
        print(f"{name:18s} {args.tokens / seconds:10.0f} {base / seconds:15.2f}")


if __name__ == "__main__":
    main()
