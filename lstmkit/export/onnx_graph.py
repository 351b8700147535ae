"""A run's model as an ONNX graph, written with `onnx.helper`, the LSTM as the standard `LSTM` operator.

Why not torch.onnx.export: lstmkit's layer is not `aten.lstm`, so the exporters would trace its time loop
(unrolled: T fixed at the example's length) or meet its custom op; and even for `nn.LSTM` the dynamo exporter
lowers `aten.lstm` to the ONNX op only from onnxscript's PR #2674 on, and has frozen the time axis of a
bidirectional pattern (pytorch/pytorch#191855). The graph below is small and explicit instead: one `LSTM` node per
layer (both directions in it), dynamic batch and sequence axes, `sequence_lens` from the batch's lengths.

From torch.nn.LSTM's weights to the operator's (ONNX Operators, LSTM):
    W [D, 4H, I], R [D, 4H, H]: gate blocks i, f, g, o reordered to ONNX's i, o, f, c (c = our g)
    B [D, 8H]: [Wb; Rb] = [bias_ih; bias_hh], each reordered the same way
    Y [T, D, B, H] (zeros past each row's length), Y_h / Y_c [D, B, H] (each row's state at its own length)
    (P below: proj_size, or H without a projection)

Graphs (inputs -> outputs; B and T are dynamic):
    classifier of tokens:   tokens int64 [B, T], lengths int64 [B]      -> logits [B, 1 or C]
    classifier of features: features float [B, T, F], lengths int64 [B] -> logits [B, 1 or C]
    language model:         tokens int64 [T, B], h0 [L, B, P], c0 [L, B, H] -> logits [T, B, V], h_n, c_n (alike)
Logits as lstmkit's: one logit means sigmoid (two classes), more mean softmax. The language model's graph is also
its step: called with T = 1 and the state it returned, it streams token by token.

Variants: peepholes go to the operator's `P` input (blocks i, o, f; ONNX's order), coupled gates to its
`input_forget=1` (f = 1 - i; the f blocks of W, R, B written as zeros, since they are unused). What the operator
cannot express (`proj_size`, `cell_clip`: the operator's `clip` bounds the gates' pre-activations, not c_t;
`zoneout` at evaluation, `layer_norm`) is written out as a Scan over time instead (`lstmkit.export.onnx_scan`; in
float64 for layer_norm), the whole LSTM then, not layer by layer, so one model has one form.
The run's small files (config.json, vocab.json, labels.json, ...) travel in the model's metadata_props, so
`lstmkit evaluate FILE.onnx` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lstmkit.errors import ConfigError
from lstmkit.export import ONNX_FEATURES, LSTMSpec, lstm_spec, open_for_export, require, written_atomically
from lstmkit.export.onnx_scan import scan_layer

OPSET = 17
TORCH_TO_ONNX_GATES = [0, 3, 1, 2]  # ONNX block k is torch block TORCH_TO_ONNX_GATES[k]: i, o, f, c <- i, f, g, o
COUPLED_TO_ONNX_GATES = [0, 2, None, 1]  # i, o, f, c <- i, g, o of a coupled LSTM; f: zeros (input_forget)
PEEPHOLE_TO_ONNX = [0, 2, 1]  # P's blocks i, o, f <- our (p_i, p_f, p_o)
OPERATOR_FEATURES = ("peephole", "coupled_gates")  # what the LSTM operator itself computes
METADATA_PREFIX = "lstmkit.file/"  # + a run file's name: its text
MAX_METADATA_FILE = 32 * 2**20  # a run's JSON files are small; a vocabulary of a million words is about 16 MB


def onnx_gates(t: torch.Tensor, H: int) -> np.ndarray:
    """[4H, ...] in torch's gate order (or [3H, ...]: i, g, o, coupled) -> ONNX's i, o, f, c, as float32 numpy."""
    G = t.shape[0] // H
    blocks = t.detach().float().cpu().reshape(G, H, *t.shape[1:]).numpy()
    order = TORCH_TO_ONNX_GATES if G == 4 else COUPLED_TO_ONNX_GATES
    zeros = np.zeros_like(blocks[0])
    return np.concatenate([blocks[n] if n is not None else zeros for n in order]).reshape(4 * H, *t.shape[1:])


def uses_operator(spec: LSTMSpec) -> bool:
    """Whether the LSTM operator computes this LSTM; else the Scan of `onnx_scan`."""
    return not spec.proj_size and all(name in OPERATOR_FEATURES for name in spec.features)


class GraphBuilder:
    """Nodes and initializers with unique names."""

    def __init__(self, int8: bool = False) -> None:
        self.onnx = require("onnx")
        self.int8 = int8  # the graph is for onnxruntime's quantiser (onnx_scan.scan_dtype: float32 Scans)
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        array = np.asarray(array)
        # ascontiguousarray makes a scalar [1]: a Gather index must stay 0-d to drop its axis
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array) if array.ndim else
                                                                   array, name))
        return name

    def ints(self, stem: str, values: list[int]) -> str:
        return self.const(stem, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, into: list | None = None, **attributes
           ) -> list[str]:
        """A node with fresh output names, appended to this graph's nodes, or to `into` (a Scan body's)."""
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        node = self.onnx.helper.make_node(op_type, inputs, names, name=self.name(op_type), **attributes)
        (self.nodes if into is None else into).append(node)
        return names

    def op1(self, op_type: str, inputs: list[str], **attributes) -> str:
        return self.op(op_type, inputs, 1, **attributes)[0]

    def lstm_layer(self, spec: LSTMSpec, k: int, x: str, seq_lens: str = "", h0: str = "", c0: str = ""
                   ) -> tuple[str, str, str]:
        """One layer, every direction: x [T, B, I] -> (Y [T, D, B, H], Y_h [D, B, H], Y_c [D, B, H])."""
        H, directions = spec.hidden_size, spec.layers[k]
        W = np.stack([onnx_gates(d.W, H) for d in directions])
        R = np.stack([onnx_gates(d.U, H) for d in directions])
        inputs = [x, self.const(f"W_l{k}", W), self.const(f"R_l{k}", R)]
        if directions[0].b_ih is not None:
            B = np.stack([np.concatenate([onnx_gates(d.b_ih, H), onnx_gates(d.b_hh, H)]) for d in directions])
            inputs.append(self.const(f"B_l{k}", B))
        else:
            inputs.append("")
        inputs += [seq_lens, h0, c0]
        if directions[0].peephole is not None:
            P = np.stack([d.peephole.detach().float().cpu().numpy()[PEEPHOLE_TO_ONNX].reshape(3 * H)
                          for d in directions])
            if spec.coupled_gates:
                P[:, 2 * H:] = 0.0  # p_f: unused when f = 1 - i
            inputs.append(self.const(f"P_l{k}", P))
        while inputs and not inputs[-1]:
            inputs.pop()
        direction = "bidirectional" if spec.num_directions == 2 else "forward"
        extra = {"input_forget": 1} if spec.coupled_gates else {}
        Y, Y_h, Y_c = self.op("LSTM", inputs, 3, hidden_size=H, direction=direction, **extra)
        return Y, Y_h, Y_c

    def layer(self, spec: LSTMSpec, k: int, x: str, seq_lens: str = "", valid: str = "", h0: str = "",
              c0: str = "") -> tuple[str, str, str]:
        """Layer k by the LSTM operator or the Scan: x [T, B, I] -> (x of the next layer [T, B, D*P], Y_h [D, B, P],
        Y_c [D, B, H]); seq_lens int32 [B] (operator) and valid bool [T, B, 1] (Scan), or both "" (every step)."""
        if not uses_operator(spec):
            return scan_layer(self, spec, k, x, valid, h0, c0)
        Y, Y_h, Y_c = self.lstm_layer(spec, k, x, seq_lens, h0, c0)
        # [T, D, B, H] -> [T, B, D*H]: the next layer's input, directions side by side as in torch
        time_major = self.op1("Transpose", [Y], perm=[0, 2, 1, 3])
        return self.op1("Reshape", [time_major, self.ints("shape", [0, 0, -1])]), Y_h, Y_c

    def valid_steps(self, x: str, lengths: str) -> str:
        """bool [T, B, 1]: step t < length of row b, for x [T, B, ...] and lengths int64 [B]."""
        T = self.op1("Squeeze", [self.op1("Shape", [x], start=0, end=1), self.ints("axes", [0])])
        steps = self.op1("Range", [self.const("zero", np.asarray(0, np.int64)), T,
                                   self.const("one", np.asarray(1, np.int64))])
        valid = self.op1("Less", [self.op1("Unsqueeze", [steps, self.ints("axes", [1])]),
                                  self.op1("Unsqueeze", [lengths, self.ints("axes", [0])])])
        return self.op1("Unsqueeze", [valid, self.ints("axes", [2])])


def classifier_graph(model, builder: GraphBuilder, token_inputs: bool):
    """The SequenceClassifier's graph (see the module docstring): Embedding -> LSTM layers -> pooling -> Linear."""
    onnx = builder.onnx
    helper, TensorProto = onnx.helper, onnx.TensorProto
    spec = lstm_spec(model.lstm, ONNX_FEATURES)
    if token_inputs:
        graph_input = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])
        ids = builder.op1("Transpose", ["tokens"], perm=[1, 0])  # [T, B]
        x = builder.op1("Gather", [builder.const("embedding", model.embedding.weight.detach().float().numpy()), ids])
    else:
        graph_input = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "time", spec.input_size])
        x = builder.op1("Transpose", ["features"], perm=[1, 0, 2])  # [T, B, F]
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])
    seq_lens = builder.op1("Cast", ["lengths"], to=TensorProto.INT32) if uses_operator(spec) else ""
    valid = "" if uses_operator(spec) else builder.valid_steps(x, "lengths")
    Y_h = None
    for k in range(spec.num_layers):
        x, Y_h, _ = builder.layer(spec, k, x, seq_lens, valid)
    pooled = pooled_output(builder, model.pooling, x, Y_h, valid)
    head_weight = model.head.weight.detach().float().numpy().T  # [features, classes]; MatMul: int8 quantises it
    logits = builder.op1("MatMul", [pooled, builder.const("head_weight", head_weight)])
    builder.op("Add", [logits, builder.const("head_bias", model.head.bias.detach().float().numpy())])
    builder.nodes[-1].output[0] = "logits"
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.head.out_features])
    return [graph_input, lengths], [output]


def pooled_output(builder: GraphBuilder, how: str, x: str, Y_h: str, valid: str = "") -> str:
    """lstmkit.models.pool in ONNX: x [T, B, D*H] (valid steps first), Y_h [D, B, H] -> [B, D*H] (2x for max_mean).
    valid: the graph's valid-step mask where the Scan layers already built it, else ""."""
    TensorProto = builder.onnx.TensorProto
    if how == "last":
        # Y_h holds each row's forward state at its own length and the reverse direction's at step 0: the same
        # two vectors pool("last") reads
        return builder.op1("Reshape", [builder.op1("Transpose", [Y_h], perm=[1, 0, 2]),
                                       builder.ints("shape", [0, -1])])
    valid = valid or builder.valid_steps(x, "lengths")  # T and lengths are the layers': one mask serves both
    parts = []
    if how in ("max", "max_mean"):
        masked = builder.op1("Where", [valid, x, builder.const("minus_inf", np.asarray(-np.inf, np.float32))])
        parts.append(builder.op1("ReduceMax", [masked], axes=[0], keepdims=0))
    if how in ("mean", "max_mean"):
        total = builder.op1("ReduceSum", [builder.op1("Mul", [x, builder.op1("Cast", [valid], to=TensorProto.FLOAT)]),
                                          builder.ints("axes", [0])], keepdims=0)
        count = builder.op1("Unsqueeze", [builder.op1("Cast", ["lengths"], to=TensorProto.FLOAT),
                                          builder.ints("axes", [1])])
        parts.append(builder.op1("Div", [total, count]))
    if not parts:
        raise ConfigError(f"pooling {how!r} has no ONNX form here")
    return parts[0] if len(parts) == 1 else builder.op1("Concat", parts, axis=1)


def lm_graph(model, builder: GraphBuilder):
    """The LanguageModel's graph: tokens [T, B] and the state in, logits [T, B, V] and the state out."""
    helper, TensorProto = builder.onnx.helper, builder.onnx.TensorProto
    spec = lstm_spec(model.lstm, ONNX_FEATURES)
    L, H, P = spec.num_layers, spec.hidden_size, spec.proj_size or spec.hidden_size
    V = model.head.out_features
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["time", "batch"]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [L, "batch", P]),
              helper.make_tensor_value_info("c0", TensorProto.FLOAT, [L, "batch", H])]
    x = builder.op1("Gather", [builder.const("embedding", model.embedding.weight.detach().float().numpy()), "tokens"])
    final_h, final_c = [], []
    for k in range(L):
        start, end, axis = builder.ints("start", [k]), builder.ints("end", [k + 1]), builder.ints("axis", [0])
        h0 = builder.op1("Slice", ["h0", start, end, axis])
        c0 = builder.op1("Slice", ["c0", start, end, axis])
        x, Y_h, Y_c = builder.layer(spec, k, x, "", "", h0, c0)
        final_h.append(Y_h)
        final_c.append(Y_c)
    # The output layer's own copy even when tied to the embedding: MatMul's constant B is what int8 quantises
    head_weight = model.head.weight.detach().float().numpy().T.copy()  # [P, V]
    logits = builder.op1("MatMul", [x, builder.const("head_weight", head_weight)])
    builder.nodes.append(helper.make_node("Add", [logits, builder.const("head_bias", model.head.bias.detach().float()
                                                                        .numpy())], ["logits"], name="head_add"))
    builder.nodes.append(helper.make_node("Concat", final_h, ["h_n"], axis=0, name="state_h"))
    builder.nodes.append(helper.make_node("Concat", final_c, ["c_n"], axis=0, name="state_c"))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["time", "batch", V]),
               helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [L, "batch", P]),
               helper.make_tensor_value_info("c_n", TensorProto.FLOAT, [L, "batch", H])]
    return inputs, outputs


def run_files(run: Path) -> dict[str, str]:
    """The run's small JSON files (configuration, vocabulary, labels, inputs), by name: what a reloaded task reads."""
    files = {}
    for path in sorted(Path(run).glob("*.json")):
        if path.stat().st_size > MAX_METADATA_FILE:
            raise ConfigError(f"{path} is over {MAX_METADATA_FILE >> 20} MB, too large to carry in the ONNX file")
        files[path.name] = path.read_text(encoding="utf-8")
    return files


def model_proto(task, model, files: dict[str, str], int8: bool = False):
    """The ModelProto of a run's task and model (eval mode), checked by onnx.checker; int8: to be quantised."""
    builder = GraphBuilder(int8)
    onnx = builder.onnx
    if task.name == "lm":
        inputs, outputs = lm_graph(model, builder)
    else:
        inputs, outputs = classifier_graph(model, builder, token_inputs=model.embedding is not None)
    graph = onnx.helper.make_graph(builder.nodes, f"lstmkit_{task.name}", inputs, outputs, builder.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="lstmkit", ir_version=8)
    onnx.helper.set_model_props(proto, {"lstmkit.task": task.name,
                                        **{METADATA_PREFIX + name: text for name, text in files.items()}})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(run: Path, out: Path, int8: bool = False) -> Path:
    task, model = open_for_export(run)  # a run that cannot be exported says so before a package is missed
    onnx = require("onnx")
    proto = model_proto(task, model, run_files(run), int8)
    with written_atomically(out) as tmp:
        if int8:
            from lstmkit.export.onnx_run import quantize_int8

            quantize_int8(proto, tmp)
        else:
            onnx.save_model(proto, str(tmp))
    return Path(out)
