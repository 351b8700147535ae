"""The LSTM layers the ONNX `LSTM` operator cannot express, written out as an ONNX `Scan` over time.

The operator's h is o * tanh(c) with no projection, its `clip` bounds the gates' pre-activations (not c_t, which is
what lstmkit's cell_clip bounds), and it has no layer normalisation and no zoneout. A layer with any of these
(`proj_size`, `cell_clip`, `zoneout`, `layer_norm`) becomes, per direction:

    xw = W x + b                          one MatMul over all steps, [T, B, GH] (LN(W x; ln_ih) + b with layer_norm)
    Scan over t (reversed for the reverse direction), state (h, c), one step:
        a   = xw_t + U h                  (xw_t + LN(U h; ln_hh))
        i   = sigma(a_i + p_i * c)        f = sigma(a_f + p_f * c), or 1 - i with coupled gates
        g   = tanh(a_g)
        c~  = f * c + i * g               then Clip(c~, -v, v) with cell_clip = v
        o   = sigma(a_o + p_o * c~)
        h~  = o * tanh(c~)                (tanh(LN(c~; ln_c))), then R h~ with proj_size
        c', h' = z_c c + (1 - z_c) c~, z_h h + (1 - z_h) h~   zoneout at evaluation (z: the rates); else c~, h~
        a step at or past a row's length keeps (h, c) and outputs 0, as the LSTM operator's `sequence_lens` does
    -> Y [T, B, P] per direction, and the state after the last step

the equations of `lstmkit.nn.LSTM` term by term, gate blocks in torch's order (i, f, g, o; i, g, o when coupled),
since no operator reads them. The reverse direction scans from the last step: the steps past a row's length come
first and keep its zero state, so the row starts at its own last step, as packed sequences do. Batch and sequence
length stay dynamic. int8: onnxruntime's quantiser turns the MatMuls (W x outside the Scan; U h and R m in its
body, with its EnableSubgraph option) into int8 MatMuls; the gates stay float32, and there is no fused kernel, so
this path is slower than the LSTM operator's.

layer_norm computes in float64 (`scan_dtype`): x is cast up as it enters the first layer, and y, h_n and c_n
back to float32 as they leave (the layers between stay float64). LN divides each row's rounding by the row's spread,
and on random LN models float32 was over the parity bound from the truth on 11 of 480 results in lstmkit itself and
9 in onnxruntime (BENCHMARKS.md, "Take it elsewhere"): no float32 form can be held to it. In float64 the exported
model agrees with lstmkit's float64 computation to the bound everywhere, and so is at least as close to lstmkit's
float32 as float32 itself allows. sigma and tanh are written out from Exp (`Activations`) there. Under --int8 the
Scan stays float32 (the quantiser rewrites float32 MatMuls only, and int8's own rounding is far larger).
"""

from __future__ import annotations

import numpy as np

from lstmkit.export import LayerWeights, LSTMSpec
from lstmkit.nn import LAYER_NORM_EPS  # the epsilon of lstmkit.LSTM(layer_norm=True)


def scan_dtype(spec: LSTMSpec, int8: bool = False) -> type:
    """The float type the Scans compute in: float64 for layer_norm (see the module docstring), else float32."""
    return np.float64 if "layer_norm" in spec.features and not int8 else np.float32


def values(t, dtype: type = np.float32) -> np.ndarray:
    """A tensor's values as a numpy array of `dtype` (float32 parameters are exact in float64)."""
    return t.detach().double().cpu().numpy().astype(dtype)


def scalar(value: float, dtype: type) -> np.ndarray:
    return np.asarray(value, dtype)


class StepBody:
    """The nodes of one Scan body (a subgraph): its own node list and names; constants live in the outer graph,
    which a subgraph may read by name."""

    def __init__(self, builder) -> None:
        self.builder, self.nodes = builder, []

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> list[str]:
        return self.builder.op(op_type, inputs, outputs, into=self.nodes, **attributes)

    def op1(self, op_type: str, inputs: list[str], **attributes) -> str:
        return self.op(op_type, inputs, 1, **attributes)[0]


def layer_norm(graph, z: str, norm, stem: str, dtype: type) -> str:
    """LN over the last axis (gains row 0, biases row 1), written in two passes: the variance as the mean of
    (z - mean)^2, as torch computes it. (onnxruntime's LayerNormalization kernel takes E[z^2] - E[z]^2, which
    cancels in float32: 2e-5 relative error on these models, against 1e-6 for torch.)"""
    builder = graph.builder if isinstance(graph, StepBody) else graph
    gain = builder.const(f"{stem}_gain", values(norm[0], dtype))
    bias = builder.const(f"{stem}_bias", values(norm[1], dtype))
    centred = graph.op1("Sub", [z, graph.op1("ReduceMean", [z], axes=[-1], keepdims=1)])
    variance = graph.op1("ReduceMean", [graph.op1("Mul", [centred, centred])], axes=[-1], keepdims=1)
    sigma = graph.op1("Sqrt", [graph.op1("Add", [variance, builder.const("eps", scalar(LAYER_NORM_EPS, dtype))])])
    return graph.op1("Add", [graph.op1("Mul", [graph.op1("Div", [centred, sigma]), gain]), bias])


class Activations:
    """sigma and tanh of a Scan body. exact=False: onnxruntime's Sigmoid and Tanh kernels, fast approximations
    (measured on an Intel Xeon over [-20, 20]: Tanh up to 3.6 float32 ulp of 1 from float64, Sigmoid up to 1.2e-7
    absolute and, where sigma is ~1e-9, off by 4x sigma itself). exact=True: sigma(z) = 1 / (1 + exp(-z)) and
    tanh(z) = 2 sigma(2z) - 1 from onnxruntime's Exp: sigma within 2.3 ulp relative, tanh 2.8 ulp of 1, no NaN at
    +-inf. For layer_norm, whose LN(c~) divides c~'s rounding by its spread: in float32, on the 480 random LN
    results of benchmarks/onnx_ln_accuracy.py, 9 were over the 1e-5 bound from float64 with these and 12 with the
    kernels' (BENCHMARKS.md); layer_norm's Scans compute in float64, with these."""

    def __init__(self, body: StepBody, exact: bool, dtype: type = np.float32) -> None:
        self.body, self.exact = body, exact
        if exact:
            self.one = body.builder.const("one", scalar(1.0, dtype))
            self.two = body.builder.const("two", scalar(2.0, dtype))

    def sigmoid(self, z: str) -> str:
        if not self.exact:
            return self.body.op1("Sigmoid", [z])
        exp = self.body.op1("Exp", [self.body.op1("Neg", [z])])
        return self.body.op1("Reciprocal", [self.body.op1("Add", [self.one, exp])])

    def tanh(self, z: str) -> str:
        if not self.exact:
            return self.body.op1("Tanh", [z])
        s = self.sigmoid(self.body.op1("Mul", [z, self.two]))
        return self.body.op1("Sub", [self.body.op1("Mul", [s, self.two]), self.one])


def step_graph(builder, spec: LSTMSpec, w: LayerWeights, stem: str, masked: bool, dtype: type):
    """The Scan body of one direction: (h, c, xw_t[, valid_t]) -> (h', c', y_t), all of `dtype`."""
    helper, TensorProto = builder.onnx.helper, builder.onnx.TensorProto
    H, G = spec.hidden_size, spec.gates
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    body = StepBody(builder)
    h, c, xw = builder.name("h_prev"), builder.name("c_prev"), builder.name("xw_t")
    valid = builder.name("valid_t")
    act = Activations(body, exact=w.layer_norm is not None, dtype=dtype)
    recurrent = body.op1("MatMul", [h, builder.const(f"{stem}_U_T", values(w.U, dtype).T.copy())])  # [B, GH]
    if w.layer_norm is not None:
        recurrent = layer_norm(body, recurrent, w.layer_norm[1], f"{stem}_ln_hh", dtype)
    a = body.op1("Add", [xw, recurrent])
    blocks = body.op("Split", [a, builder.ints("split", [H] * G)], G, axis=1)
    a_i, a_f, a_g, a_o = (blocks[0], None, blocks[1], blocks[2]) if spec.coupled_gates else blocks
    peep = [builder.const(f"{stem}_p{gate}", values(w.peephole[n], dtype)) if gate != "f" or not spec.coupled_gates
            else ""
            for n, gate in enumerate("ifo")] if w.peephole is not None else None  # p_f: unused when coupled
    if peep:
        a_i = body.op1("Add", [a_i, body.op1("Mul", [peep[0], c])])
    i = act.sigmoid(a_i)
    if spec.coupled_gates:
        f = body.op1("Sub", [builder.const("one", scalar(1.0, dtype)), i])
    else:
        f = act.sigmoid(body.op1("Add", [a_f, body.op1("Mul", [peep[1], c])]) if peep else a_f)
    g = act.tanh(a_g)
    cell = body.op1("Add", [body.op1("Mul", [f, c]), body.op1("Mul", [i, g])])  # c~ (6.55)
    if spec.cell_clip:
        cell = body.op1("Clip", [cell, builder.const("clip_min", scalar(-spec.cell_clip, dtype)),
                                 builder.const("clip_max", scalar(spec.cell_clip, dtype))])
    o = act.sigmoid(body.op1("Add", [a_o, body.op1("Mul", [peep[2], cell])]) if peep else a_o)
    shown = layer_norm(body, cell, w.layer_norm[2], f"{stem}_ln_c", dtype) if w.layer_norm is not None else cell
    out = body.op1("Mul", [o, act.tanh(shown)])  # (6.56)
    if w.R is not None:
        out = body.op1("MatMul", [out, builder.const(f"{stem}_R_T", values(w.R, dtype).T.copy())])
    for rate, prev, which in ((spec.zoneout_c, c, "c"), (spec.zoneout_h, h, "h")):
        if rate:
            kept = body.op1("Mul", [builder.const(f"zoneout_{which}", scalar(rate, dtype)), prev])
            new = body.op1("Mul", [builder.const(f"zoneout_{which}_rest", scalar(1.0 - rate, dtype)),
                                   cell if which == "c" else out])
            if which == "c":
                cell = body.op1("Add", [kept, new])
            else:
                out = body.op1("Add", [kept, new])
    if masked:
        y = body.op1("Where", [valid, out, builder.const("zero", scalar(0.0, dtype))])
        out, cell = body.op1("Where", [valid, out, h]), body.op1("Where", [valid, cell, c])
    else:
        y = body.op1("Identity", [out])
    inputs = [helper.make_tensor_value_info(name, elem, None) for name in (h, c, xw)]
    if masked:
        inputs.append(helper.make_tensor_value_info(valid, TensorProto.BOOL, None))
    outputs = [helper.make_tensor_value_info(name, elem, None) for name in (out, cell, y)]
    return helper.make_graph(body.nodes, builder.name(f"{stem}_step"), inputs, outputs)


def scan_layer(builder, spec: LSTMSpec, k: int, x: str, valid: str = "", h0: str = "", c0: str = ""
               ) -> tuple[str, str, str]:
    """Layer k, every direction, as Scans: x [T, B, I], valid bool [T, B, 1] or "" (every step valid), h0 [D, B, P]
    and c0 [D, B, H] or "" (zeros) -> (Y [T, B, D*P], Y_h [D, B, P], Y_c [D, B, H]). Inputs and outputs are
    float32, except Y between layers, which keeps `scan_dtype` (x of layer k > 0 is the layer below's Y)."""
    helper, TensorProto = builder.onnx.helper, builder.onnx.TensorProto
    H, P = spec.hidden_size, spec.proj_size or spec.hidden_size
    dtype = scan_dtype(spec, builder.int8)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def cast(name: str, to: int) -> str:
        return builder.op1("Cast", [name], to=to) if dtype != np.float32 else name

    if k == 0:
        x = cast(x, elem)
    if h0:
        h0, c0 = cast(h0, elem), cast(c0, elem)
    else:
        batch = builder.op1("Shape", [x], start=1, end=2)
        zero = helper.make_tensor("zero", elem, [1], [0.0])
        h0, c0 = (builder.op1("ConstantOfShape", [builder.op1("Concat", [
            builder.ints("directions", [spec.num_directions]), batch, builder.ints("width", [width])], axis=0)],
            value=zero) for width in (P, H))
    outputs, finals_h, finals_c = [], [], []
    for d, w in enumerate(spec.layers[k]):
        stem = f"l{k}" + ("_reverse" if d else "")
        xw = builder.op1("MatMul", [x, builder.const(f"{stem}_W_T", values(w.W, dtype).T.copy())])  # [T, B, GH]
        if w.layer_norm is not None:
            xw = layer_norm(builder, xw, w.layer_norm[0], f"{stem}_ln_ih", dtype)
        if w.b_ih is not None:
            xw = builder.op1("Add", [xw, builder.const(f"{stem}_b", values(w.b_ih.double() + w.b_hh.double(),
                                                                            dtype))])  # summed exactly, rounded once
        index = builder.const("direction", np.asarray(d, np.int64))
        state = [builder.op1("Gather", [s, index], axis=0) for s in (h0, c0)]  # [B, P], [B, H]
        scanned = [xw, valid] if valid else [xw]
        names = [builder.name(f"{stem}_{part}") for part in ("h_n", "c_n", "y")]
        builder.nodes.append(builder.onnx.helper.make_node(
            "Scan", state + scanned, names, name=builder.name("Scan"), num_scan_inputs=len(scanned),
            scan_input_directions=[d] * len(scanned), scan_output_directions=[d],
            body=step_graph(builder, spec, w, stem, masked=bool(valid), dtype=dtype)))
        h_n, c_n, y = names
        outputs.append(y)
        finals_h.append(builder.op1("Unsqueeze", [h_n, builder.ints("axes", [0])]))
        finals_c.append(builder.op1("Unsqueeze", [c_n, builder.ints("axes", [0])]))
    def joined(parts: list[str], axis: int) -> str:
        return parts[0] if len(parts) == 1 else builder.op1("Concat", parts, axis=axis)

    y = joined(outputs, 2)
    if k == spec.num_layers - 1:
        y = cast(y, TensorProto.FLOAT)
    return y, cast(joined(finals_h, 0), TensorProto.FLOAT), cast(joined(finals_c, 0), TensorProto.FLOAT)
