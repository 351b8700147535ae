"""The LSTM layers the ONNX `LSTM` operator cannot express, written out as an ONNX `Scan` over time.

The operator's h is o * tanh(c) with no projection, its `clip` bounds the gates' pre-activations (not c_t, which is
what lstmkit's cell_clip bounds), and it has no layer normalisation and no zoneout. A layer with any of these
(`proj_size`, `cell_clip`, `zoneout`; `layer_norm` is written here too but not offered yet:
`lstmkit.export.ONNX_FEATURES` says why) becomes, per direction:

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
this path is slower than the LSTM operator's. With layer_norm, sigma and tanh are written out exactly
(`Activations`), since LN(c~) magnifies their rounding.
"""

from __future__ import annotations

import numpy as np

from lstmkit.export import LayerWeights, LSTMSpec
from lstmkit.nn import LAYER_NORM_EPS  # the epsilon of lstmkit.LSTM(layer_norm=True)


def f32(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class StepBody:
    """The nodes of one Scan body (a subgraph): its own node list and names; constants live in the outer graph,
    which a subgraph may read by name."""

    def __init__(self, builder) -> None:
        self.builder, self.nodes = builder, []

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> list[str]:
        return self.builder.op(op_type, inputs, outputs, into=self.nodes, **attributes)

    def op1(self, op_type: str, inputs: list[str], **attributes) -> str:
        return self.op(op_type, inputs, 1, **attributes)[0]


def layer_norm(graph, z: str, norm, stem: str) -> str:
    """LN over the last axis (gains row 0, biases row 1), written in two passes: the variance as the mean of
    (z - mean)^2, as torch computes it. (onnxruntime's LayerNormalization kernel takes E[z^2] - E[z]^2, which
    cancels in float32: 2e-5 relative error on these models, against 1e-6 for torch.)"""
    builder = graph.builder if isinstance(graph, StepBody) else graph
    gain, bias = builder.const(f"{stem}_gain", f32(norm[0])), builder.const(f"{stem}_bias", f32(norm[1]))
    centred = graph.op1("Sub", [z, graph.op1("ReduceMean", [z], axes=[-1], keepdims=1)])
    variance = graph.op1("ReduceMean", [graph.op1("Mul", [centred, centred])], axes=[-1], keepdims=1)
    sigma = graph.op1("Sqrt", [graph.op1("Add", [variance, builder.const("eps", np.asarray(LAYER_NORM_EPS,
                                                                                          np.float32))])])
    return graph.op1("Add", [graph.op1("Mul", [graph.op1("Div", [centred, sigma]), gain]), bias])


class Activations:
    """sigma and tanh of a Scan body. exact=False: onnxruntime's Sigmoid and Tanh kernels, fast approximations
    (measured on an Intel Xeon over [-20, 20]: Tanh up to 3.6 float32 ulp of 1 from float64, Sigmoid up to 1.2e-7
    absolute and, where sigma is ~1e-9, off by 4x sigma itself). exact=True: sigma(z) = 1 / (1 + exp(-z)) and
    tanh(z) = 2 sigma(2z) - 1 from onnxruntime's Exp: sigma within 2.3 ulp relative, tanh 2.8 ulp of 1, no NaN at
    +-inf. For layer_norm, whose LN(c~) divides c~'s rounding by its spread: on the 480 random LN results of
    benchmarks/onnx_ln_accuracy.py, 9 were over the 1e-5 bound from float64 with these and 12 with the kernels'
    (BENCHMARKS.md)."""

    def __init__(self, body: StepBody, exact: bool) -> None:
        self.body, self.exact = body, exact
        if exact:
            self.one = body.builder.const("one", np.ones((), np.float32))
            self.two = body.builder.const("two", np.asarray(2.0, np.float32))

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


def step_graph(builder, spec: LSTMSpec, w: LayerWeights, stem: str, masked: bool):
    """The Scan body of one direction: (h, c, xw_t[, valid_t]) -> (h', c', y_t)."""
    helper, TensorProto = builder.onnx.helper, builder.onnx.TensorProto
    H, G = spec.hidden_size, spec.gates
    body = StepBody(builder)
    h, c, xw = builder.name("h_prev"), builder.name("c_prev"), builder.name("xw_t")
    valid = builder.name("valid_t")
    act = Activations(body, exact=w.layer_norm is not None)
    recurrent = body.op1("MatMul", [h, builder.const(f"{stem}_U_T", f32(w.U).T.copy())])  # [B, GH]
    if w.layer_norm is not None:
        recurrent = layer_norm(body, recurrent, w.layer_norm[1], f"{stem}_ln_hh")
    a = body.op1("Add", [xw, recurrent])
    blocks = body.op("Split", [a, builder.ints("split", [H] * G)], G, axis=1)
    a_i, a_f, a_g, a_o = (blocks[0], None, blocks[1], blocks[2]) if spec.coupled_gates else blocks
    peep = [builder.const(f"{stem}_p{gate}", f32(w.peephole[n])) if gate != "f" or not spec.coupled_gates else ""
            for n, gate in enumerate("ifo")] if w.peephole is not None else None  # p_f: unused when coupled
    if peep:
        a_i = body.op1("Add", [a_i, body.op1("Mul", [peep[0], c])])
    i = act.sigmoid(a_i)
    if spec.coupled_gates:
        f = body.op1("Sub", [builder.const("one", np.ones((), np.float32)), i])
    else:
        f = act.sigmoid(body.op1("Add", [a_f, body.op1("Mul", [peep[1], c])]) if peep else a_f)
    g = act.tanh(a_g)
    cell = body.op1("Add", [body.op1("Mul", [f, c]), body.op1("Mul", [i, g])])  # c~ (6.55)
    if spec.cell_clip:
        cell = body.op1("Clip", [cell, builder.const("clip_min", np.asarray(-spec.cell_clip, np.float32)),
                                 builder.const("clip_max", np.asarray(spec.cell_clip, np.float32))])
    o = act.sigmoid(body.op1("Add", [a_o, body.op1("Mul", [peep[2], cell])]) if peep else a_o)
    shown = layer_norm(body, cell, w.layer_norm[2], f"{stem}_ln_c") if w.layer_norm is not None else cell
    out = body.op1("Mul", [o, act.tanh(shown)])  # (6.56)
    if w.R is not None:
        out = body.op1("MatMul", [out, builder.const(f"{stem}_R_T", f32(w.R).T.copy())])
    for rate, prev, which in ((spec.zoneout_c, c, "c"), (spec.zoneout_h, h, "h")):
        if rate:
            kept = body.op1("Mul", [builder.const(f"zoneout_{which}", np.asarray(rate, np.float32)), prev])
            new = body.op1("Mul", [builder.const(f"zoneout_{which}_rest", np.asarray(1.0 - rate, np.float32)),
                                   cell if which == "c" else out])
            if which == "c":
                cell = body.op1("Add", [kept, new])
            else:
                out = body.op1("Add", [kept, new])
    if masked:
        y = body.op1("Where", [valid, out, builder.const("zero", np.zeros((), np.float32))])
        out, cell = body.op1("Where", [valid, out, h]), body.op1("Where", [valid, cell, c])
    else:
        y = body.op1("Identity", [out])
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in (h, c, xw)]
    if masked:
        inputs.append(helper.make_tensor_value_info(valid, TensorProto.BOOL, None))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in (out, cell, y)]
    return helper.make_graph(body.nodes, builder.name(f"{stem}_step"), inputs, outputs)


def scan_layer(builder, spec: LSTMSpec, k: int, x: str, valid: str = "", h0: str = "", c0: str = ""
               ) -> tuple[str, str, str]:
    """Layer k, every direction, as Scans: x [T, B, I], valid bool [T, B, 1] or "" (every step valid), h0 [D, B, P]
    and c0 [D, B, H] or "" (zeros) -> (Y [T, B, D*P], Y_h [D, B, P], Y_c [D, B, H])."""
    H, P = spec.hidden_size, spec.proj_size or spec.hidden_size
    if not h0:
        batch = builder.op1("Shape", [x], start=1, end=2)
        h0, c0 = (builder.op1("ConstantOfShape", [builder.op1("Concat", [
            builder.ints("directions", [spec.num_directions]), batch, builder.ints("width", [width])], axis=0)])
            for width in (P, H))
    outputs, finals_h, finals_c = [], [], []
    for d, w in enumerate(spec.layers[k]):
        stem = f"l{k}" + ("_reverse" if d else "")
        xw = builder.op1("MatMul", [x, builder.const(f"{stem}_W_T", f32(w.W).T.copy())])  # [T, B, GH]
        if w.layer_norm is not None:
            xw = layer_norm(builder, xw, w.layer_norm[0], f"{stem}_ln_ih")
        if w.b_ih is not None:
            xw = builder.op1("Add", [xw, builder.const(f"{stem}_b", f32(w.b_ih + w.b_hh))])
        index = builder.const("direction", np.asarray(d, np.int64))
        state = [builder.op1("Gather", [s, index], axis=0) for s in (h0, c0)]  # [B, P], [B, H]
        scanned = [xw, valid] if valid else [xw]
        names = [builder.name(f"{stem}_{part}") for part in ("h_n", "c_n", "y")]
        builder.nodes.append(builder.onnx.helper.make_node(
            "Scan", state + scanned, names, name=builder.name("Scan"), num_scan_inputs=len(scanned),
            scan_input_directions=[d] * len(scanned), scan_output_directions=[d],
            body=step_graph(builder, spec, w, stem, masked=bool(valid))))
        h_n, c_n, y = names
        outputs.append(y)
        finals_h.append(builder.op1("Unsqueeze", [h_n, builder.ints("axes", [0])]))
        finals_c.append(builder.op1("Unsqueeze", [c_n, builder.ints("axes", [0])]))
    def joined(parts: list[str], axis: int) -> str:
        return parts[0] if len(parts) == 1 else builder.op1("Concat", parts, axis=axis)

    return joined(outputs, 2), joined(finals_h, 0), joined(finals_c, 0)
