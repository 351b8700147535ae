"""Exported ONNX files in onnxruntime: int8 quantisation, and the file as a model that lstmkit's tasks score.

`open_onnx(FILE)` gives (task, model) as `lstmkit.ensemble.open_run` does for a run directory: the task is rebuilt
from the run files the export carried in the model's metadata, the model is an onnxruntime session behind the
call signature of lstmkit's own model (a classifier: (inputs, lengths) -> logits; a language model: (ids, state) ->
(logits, state)). So `lstmkit evaluate FILE.onnx` runs the task's own metrics on the file's outputs, fp32 or int8.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lstmkit.errors import DataError
from lstmkit.export import require
from lstmkit.export.onnx_graph import METADATA_PREFIX


def quantize_int8(proto, out: Path) -> None:
    """onnxruntime's dynamic quantiser: LSTM -> DynamicQuantizeLSTM (int8 W and R per output channel), MatMul with
    constant weights -> MatMulInteger (in a Scan's body too), the embedding's Gather -> int8 table; activations
    quantised at run time."""
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization", "onnxruntime")
    with tempfile.TemporaryDirectory(prefix="lstmkit-int8-") as scratch:
        source = Path(scratch) / "fp32.onnx"
        onnx.save_model(proto, str(source))
        with _quiet_root_logger():
            # EnableSubgraph: the MatMuls of a Scan's body (U h, R m: the LSTM written out, onnx_scan) too
            quantization.quantize_dynamic(source, out, weight_type=quantization.QuantType.QInt8,
                                          extra_options={"EnableSubgraph": True})
    quantized = onnx.load(str(out))
    # The quantiser keeps the graph's metadata only in some versions; the run files must travel either way.
    kept = {p.key for p in quantized.metadata_props}
    for prop in proto.metadata_props:
        if prop.key not in kept:
            quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key="lstmkit.int8", value="onnxruntime.quantization.quantize_dynamic QInt8")
    onnx.save_model(quantized, str(out))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantiser calls logging.warning (advice to pre-process), which would also give the root logger a
    handler for the rest of the process; a NullHandler meanwhile keeps the root logger as it was."""
    root, handler = logging.getLogger(), logging.NullHandler()
    root.addHandler(handler)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        root.removeHandler(handler)


def session(path: Path, threads: int = 0):
    """An onnxruntime CPU session of `path` (threads 0: onnxruntime's default, one per core)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own classes for a damaged or foreign file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path} cannot be loaded by onnxruntime ({first[:200]}); export it again") from None


class _OnnxModule(nn.Module):
    """An onnxruntime session where lstmkit's tasks expect a torch module. The tasks read the device from the
    parameters; `where` is one empty parameter on the CPU, the session's device."""

    def __init__(self, sess) -> None:
        super().__init__()
        self.session = sess
        self.where = nn.Parameter(torch.zeros(0), requires_grad=False)


class OnnxClassifier(_OnnxModule):
    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        name = self.session.get_inputs()[0].name  # "tokens" or "features"
        feed = {name: inputs.cpu().numpy().astype(np.int64 if name == "tokens" else np.float32),
                "lengths": lengths.cpu().numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


class OnnxLanguageModel(_OnnxModule):
    def __init__(self, sess) -> None:
        super().__init__(sess)
        shapes = {i.name: i.shape for i in sess.get_inputs()}
        self.num_layers, self.state_size = int(shapes["h0"][0]), int(shapes["h0"][2])  # P: proj_size or H
        self.hidden_size = int(shapes["c0"][2])

    def forward(self, ids: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """ids [T, B] -> (logits [T, B, V], (h_n, c_n)), as lstmkit's LanguageModel."""
        if state is None:
            state = (torch.zeros(self.num_layers, ids.shape[1], self.state_size),
                     torch.zeros(self.num_layers, ids.shape[1], self.hidden_size))
        logits, h_n, c_n = self.session.run(["logits", "h_n", "c_n"], {
            "tokens": ids.cpu().numpy().astype(np.int64), "h0": state[0].cpu().float().numpy(),
            "c0": state[1].cpu().float().numpy()})
        return torch.from_numpy(logits), (torch.from_numpy(h_n), torch.from_numpy(c_n))


def open_onnx(path: Path):
    """(task, model) of an ONNX file written by `lstmkit export`: the task from the run files in its metadata."""
    from lstmkit import runs
    from lstmkit.tasks import get_task, load_run_config

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; write it with lstmkit export RUN --format onnx --out {path}")
    onnx = require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise DataError(f"{path} is damaged or not an ONNX file ({type(error).__name__}); export it again") from None
    files = {p.key[len(METADATA_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}
    if runs.CONFIG_FILE not in files:
        raise DataError(f"{path} was not written by lstmkit export (its metadata holds no run configuration); "
                        "lstmkit can score only the ONNX files it wrote")
    sess = session(path)
    with tempfile.TemporaryDirectory(prefix="lstmkit-onnx-run-") as scratch:
        for name, text in files.items():
            (Path(scratch) / Path(name).name).write_text(text, encoding="utf-8")
        config = load_run_config(Path(scratch))
        task = get_task(config.task)(config, run_dir=Path(scratch))  # reads its vocabulary and labels now
    model = OnnxLanguageModel(sess) if config.task == "lm" else OnnxClassifier(sess)
    return task, model.eval()
