"""Where the IMDB seed model's time goes in onnxruntime, fp32 and int8: per-operator totals from onnxruntime's own
profiler (SessionOptions.enable_profiling), one thread, the model of bench_export.py (random weights, T=200).

Run: python benchmarks/profile_export.py [--batch 32] [--calls 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
from bench_export import _Task, build, inputs_for

from lstmkit.export.onnx_graph import model_proto
from lstmkit.export.onnx_run import quantize_int8
from lstmkit.ops import tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    print(f"CPU: {tune.cpu_description()[0]}; onnxruntime {ort.__version__}; 1 thread; batch {args.batch}")
    task, model, T = build("imdb")
    proto = model_proto(_Task(task), model, {"config.json": "{}"})
    tokens, lengths = inputs_for(task, T, args.batch)
    feed = {"tokens": tokens.numpy(), "lengths": lengths.numpy()}
    with tempfile.TemporaryDirectory() as scratch:
        onnx.save_model(proto, str(Path(scratch) / "fp32.onnx"))
        quantize_int8(proto, Path(scratch) / "int8.onnx")
        for name in ("fp32", "int8"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.enable_profiling, options.profile_file_prefix = True, str(Path(scratch) / name)
            sess = ort.InferenceSession(str(Path(scratch) / f"{name}.onnx"), options,
                                        providers=["CPUExecutionProvider"])
            for _ in range(args.calls):
                sess.run(None, feed)
            per_op = collections.Counter()
            for event in json.loads(Path(sess.end_profiling()).read_text()):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    per_op[event["args"]["op_name"]] += event["dur"]  # microseconds
            total = sum(per_op.values())
            print(f"{name}: {total / args.calls / 1e3:.2f} ms of kernels per call")
            for op, us in per_op.most_common(6):
                print(f"  {op:24s} {us / args.calls / 1e3:7.3f} ms  {100 * us / total:5.1f}%")


if __name__ == "__main__":
    main()
