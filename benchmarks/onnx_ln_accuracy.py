"""How close onnxruntime's run of layer-normalised LSTMs comes to the truth (lstmkit in float64), beside lstmkit's
own float32: the measurement behind layer_norm's float64 Scan (lstmkit.export.onnx_scan.scan_dtype).

Exports random layer-normalised sentiment classifiers (built by the ONNX parity test's `classifier_parity`: random
sizes, lengths, weights x2, biases of every gate; 1-3 layers, both directions, three poolings; + peephole, +
proj_size 3), runs each on its four batches, and prints per result, relative to the parity test's 1e-5 bound:
onnxruntime against lstmkit float64 (the truth), onnxruntime against lstmkit float32, lstmkit float32 against
float64. `--scan float32` exports the Scan in float32 instead (as --int8 does before quantising, and as every
export did before 2026-12-05), to compare the two. `--activations kernels` writes the Scan's sigma and tanh with
onnxruntime's Sigmoid and Tanh kernels instead of `onnx_scan.Activations`' exact form.

Run (from the repository root): python benchmarks/onnx_ln_accuracy.py [--models 40] [--scan float64|float32]
[--activations exact|kernels]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

from lstmkit.export import onnx_scan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_export_onnx as parity  # noqa: E402
from conftest import relative_error  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40, help="random configurations, each x3 variants")
    parser.add_argument("--scan", choices=["float64", "float32"], default="float64")
    parser.add_argument("--activations", choices=["exact", "kernels"], default="exact")
    args = parser.parse_args()
    if args.scan == "float32":
        onnx_scan.scan_dtype = lambda spec, int8=False: onnx_scan.np.float32
    if args.activations == "kernels":
        exact_init = onnx_scan.Activations.__init__
        onnx_scan.Activations.__init__ = lambda self, body, exact, dtype=onnx_scan.np.float32: exact_init(
            self, body, False, dtype)
    results = []

    def record(got, model, inputs, name):  # in place of the test's assertion: measure, then go on
        expected, bound = parity.logits_and_bound(model, inputs)
        truth = parity.in_float64(model, *inputs).float()
        results.append((relative_error(got, truth) / bound, relative_error(got, expected) / bound,
                        relative_error(expected, truth) / bound, name))

    parity.assert_matches_lstmkit = record
    configs = [(bool(k % 2), 1 + k % 3, ["last", "mean", "max_mean"][k % 3], 100 + k) for k in range(args.models)]
    for extra, (bidirectional, layers, pooling, seed) in itertools.product(
            [[], ["model.lstm.peephole=true"], ["model.lstm.proj_size=3"]], configs):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as folder:
            parity.classifier_parity(Path(folder), ["model.lstm.layer_norm=true", *extra,
                                                    f"model.lstm.num_layers={layers}", f"model.pooling={pooling}",
                                                    f"model.lstm.bidirectional={str(bidirectional).lower()}"], seed)
    print(f"{len(results)} results, Scan in {args.scan}, activations {args.activations}; errors as multiples of the "
          "1e-5 bound")
    for column, what in enumerate(("onnxruntime vs float64", "onnxruntime vs lstmkit f32", "lstmkit f32 vs float64")):
        values = sorted(r[column] for r in results)
        print(f"  {what:28s} median {values[len(values) // 2]:.3f}  max {values[-1]:.3f}  "
              f"over 1: {sum(v > 1 for v in values)}")
    relative = sum(r[0] > max(1.0, 2 * r[2]) for r in results)
    print(f"  onnxruntime over max(1, 2x lstmkit's error) from float64: {relative} of {len(results)}")
    print("worst (ort/f64, ort/lstmkit f32, lstmkit f32/f64):")
    for result in sorted(results, reverse=True)[:3]:
        print(f"  {result[0]:.3f} {result[1]:.3f} {result[2]:.3f}  {result[3]}")


if __name__ == "__main__":
    main()
