"""Inference of exported ONNX models in onnxruntime (fp32, and int8 from its dynamic quantiser) against the same
model in PyTorch with torch.nn.LSTM, at batch 1 and batch 32, timed in the same run.

Models (random weights of the shape; speed does not depend on the values):
  imdb: the seed classifier, Embedding(10000, 128) -> LSTM(64) -> Dense(1), reviews of T=200 tokens
  ptb:  the ptb_word language model, Embedding(10000, 200) -> 2 x LSTM(200) -> Linear(10000), windows of T=35
  imdb_proj: imdb with LSTM(64, proj_size=32), which ONNX gets as a Scan over time (lstmkit.export.onnx_scan),
        not the fused LSTM operator (--models imdb_proj; not in the default set)
  imdb_ln: imdb with layer_norm=True, a Scan in float64 (onnx_scan.scan_dtype; --models imdb_ln, not in the default
        set). nn.LSTM has no layer normalisation: its baseline is lstmkit's LSTM itself, in float32 and float64
"lstmkit (auto)" is the same model with lstmkit.LSTM (backend="auto", its measured choice of path).
Each contender is first checked against PyTorch (fp32: relative error <= 1e-5; int8: reported), then timed:
each contender timed in turn (one warm-up call first), median time per call, `--threads` for every runtime. Ratios are
the baseline's time / contender time (> 1: faster than the baseline: nn.LSTM, or for imdb_ln lstmkit in float64).

Run: python benchmarks/bench_export.py [--threads 1,2] [--seconds 1.5] [--models imdb,ptb,imdb_proj]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from lstmkit.export.onnx_graph import model_proto
from lstmkit.export.onnx_run import OnnxClassifier, OnnxLanguageModel, quantize_int8, session
from lstmkit.lstm_config import LSTMConfig
from lstmkit.models import SequenceClassifier
from lstmkit.ops import tune
from lstmkit.tasks.lm import LanguageModel, LMModelConfig


class _Task:  # what model_proto reads of a task
    def __init__(self, name: str) -> None:
        self.name = name


def build(name: str):
    """(task name, PyTorch model with torch.nn.LSTM, a call of it on batch B)."""
    torch.manual_seed(0)
    if name in ("imdb", "imdb_proj", "imdb_ln"):
        model = SequenceClassifier(num_classes=2, hidden_size=64, vocab_size=10000, embedding_dim=128,
                                   proj_size=32 if name == "imdb_proj" else 0, layer_norm=name == "imdb_ln").eval()
        return "sentiment", model, 200
    model = LanguageModel(10000, LMModelConfig(embedding_dim=200, lstm=LSTMConfig(hidden_size=200, num_layers=2),
                                                tie_weights=True))
    return "lm", model.eval(), 35


def inputs_for(task: str, T: int, B: int):
    generator = torch.Generator().manual_seed(B)
    if task == "lm":
        return (torch.randint(2, 10000, (T, B), generator=generator),)
    return torch.randint(2, 10000, (B, T), generator=generator), torch.full((B,), T)


def _infer(model, *inputs):
    with torch.inference_mode():
        return model(*inputs)


def median_time(fn, seconds: float) -> float:
    fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per contender and shape")
    parser.add_argument("--models", default="imdb,ptb", help="imdb, ptb, imdb_proj (comma-separated)")
    args = parser.parse_args()
    print(f"CPU: {tune.cpu_description()[0]}; torch {torch.__version__}; onnxruntime "
          f"{__import__('onnxruntime').__version__}; {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            task, model, T = build(name)
            config_files = {"config.json": "{}"}
            proto = model_proto(_Task(task), model, config_files)
            fp32, int8 = Path(scratch) / f"{name}.onnx", Path(scratch) / f"{name}.int8.onnx"
            onnx.save_model(proto, str(fp32))
            quantize_int8(proto, int8)
            ours = copy.deepcopy(model)  # lstmkit.LSTM, backend="auto"
            layer_normalised = name == "imdb_ln"
            baseline_name = "lstmkit float64" if layer_normalised else "nn.LSTM (PyTorch)"
            if layer_normalised:  # nn.LSTM cannot compute it: the baseline is lstmkit in float64 (the truth)
                model = copy.deepcopy(model).double()
            else:
                baseline_lstm = model.lstm.to_torch()  # the baseline: the same weights in torch.nn.LSTM
                baseline_lstm.num_directions = model.lstm.num_directions  # what SequenceClassifier's pooling reads
                # SequenceClassifier feeds ids through lstmkit.LSTM.embedded (embedding + layer); nn.LSTM has none
                baseline_lstm.embedded = lambda embedding, ids, lstm=baseline_lstm: lstm(embedding(ids))
                model.lstm = baseline_lstm
            size = f"{fp32.stat().st_size / 2**20:.1f} MB fp32, {int8.stat().st_size / 2**20:.1f} MB int8"
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)
                wrap = OnnxLanguageModel if task == "lm" else OnnxClassifier
                contenders = {"lstmkit (auto)": lambda *x, m=ours: _infer(m, *x),
                              "onnxruntime fp32": wrap(session(fp32, threads)),
                              "onnxruntime int8": wrap(session(int8, threads))}
                for B in (1, 32):
                    inputs = inputs_for(task, T, B)
                    with torch.inference_mode():
                        expected = model(*inputs)
                    expected = (expected[0] if task == "lm" else expected).float()
                    errors = {}
                    for label, contender in contenders.items():
                        got = contender(*inputs)
                        got = got[0] if task == "lm" else got
                        errors[label] = ((got - expected).abs().max() / expected.abs().max()).item()
                    # lstmkit's float32 LN can be further than that from float64 (onnx_scan's docstring): reported
                    assert errors["onnxruntime fp32"] <= 1e-5, errors
                    assert errors["lstmkit (auto)"] <= 1e-5 or layer_normalised, errors

                    def baseline(model=model, inputs=inputs):
                        with torch.inference_mode():
                            model(*inputs)

                    times = {baseline_name: median_time(baseline, args.seconds)}
                    for label, contender in contenders.items():
                        times[label] = median_time(lambda c=contender, x=inputs: c(*x), args.seconds)
                    base = times[baseline_name]
                    print(f"{name} T={T} B={B} threads={threads} ({size}; max relative error int8 "
                          f"{errors['onnxruntime int8']:.1e}, lstmkit {errors['lstmkit (auto)']:.1e}):")
                    for label, seconds in times.items():
                        print(f"  {label:20s} {seconds * 1e3:9.3f} ms   {base / seconds:5.2f}x {baseline_name}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
