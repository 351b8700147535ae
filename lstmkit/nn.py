"""`lstmkit.LSTM` and `lstmkit.LSTMCell`: drop-in replacements for `torch.nn.LSTM` / `torch.nn.LSTMCell`.

Same constructor arguments, parameter names and shapes (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`,
`bias_hh_l0`, `weight_hr_l0`, `..._reverse`), gate order i, f, g, o, return values and PackedSequence
handling as torch, so `load_state_dict` works in both directions. Additions:

* `forget_bias` (default 1.0): after torch's own initialisation (every parameter uniform in
  [-1/sqrt(H), 1/sqrt(H)], drawn in the same order, so the same seed gives the same numbers), the
  forget-gate slice of `bias_ih` is shifted by `forget_bias`. The forget gate then starts near
  sigma(1) = 0.73 instead of 0.5, so early training does not wipe the memory cell (Gers et al. 2000;
  Jozefowicz et al. 2015). `forget_bias=0.0` is exactly torch's initialisation. Nothing to shift when
  `bias=False`.
* `backend`: "auto", "torch" (the portable backend), "op" (a torch.library custom op per layer) or "cpu"
  (the fused C kernel); see `lstmkit.ops`.
* Gradients work in eval mode too, and every gate can be read with `lstmkit.trace`.
* Variants (keyword arguments, each off by default, any combination), per layer and direction, with
  a_t = W x_t + U h_{t-1} + b split into the gates' blocks:
    peephole=True       diagonal peepholes (Gers & Schmidhuber 2000), parameter `weight_peephole_l{k}` [3, H]
                        = (p_i, p_f, p_o):   i_t = sigma(a_i + p_i * c_{t-1}),  f_t = sigma(a_f + p_f * c_{t-1}),
                        o_t = sigma(a_o + p_o * c_t)
    coupled_gates=True  the coupled input-forget gate (CIFG, Greff et al. 2017): f_t = 1 - i_t; W, U and the
                        biases hold three blocks (i, g, o) of H rows; `lstmkit.trace` still shows f
    cell_clip=v > 0     c_t = clip(f_t * c_{t-1} + i_t * g_t, -v, v), before tanh and o's peephole
                        (TensorFlow's LSTMCell cell_clip; no gradient flows through a clipped unit)
    layer_norm=True     layer normalisation (Ba et al. 2016, eq. 20-22), the input and recurrent parts apart:
                        a_t = LN(W x_t; ln_ih) + LN(U h_{t-1}; ln_hh) + b,  h_t = o_t * tanh(LN(c_t; ln_c)),
                        LN(z; g, beta) = g * (z - mean z) / sqrt(var z + 1e-5) + beta over all G*H gate rows at once
                        (over H for c_t); c_t itself, the state carried on, is not normalised. Parameters
                        `layer_norm_ih_l{k}`, `layer_norm_hh_l{k}` [2, GH] and `layer_norm_c_l{k}` [2, H]: row 0 the
                        gains (initially 1), row 1 the biases (initially 0). Runs on the C kernel, the op and the
                        torch backend.
    recurrent_dropout=p variational dropout of the recurrent connection (Gal & Ghahramani 2016): in training, one
                        mask m per sequence, layer and direction, for every step: a_t = W x_t + U (h_{t-1} * m) + b,
                        m in {0, 1/(1-p)}; none in eval (its expectation is h_{t-1}). On the C kernel, the op
                        and the torch backend in training (eval runs the standard cell on any path).
    input_dropout=p     variational dropout of each layer's input (Gal & Ghahramani 2016; AWD-LSTM's locked
                        dropout): in training, one mask m per sequence and layer for every step, a_t = W (x_t * m)
                        + U h_{t-1} + b, m in {0, 1/(1-p)}; none in eval. One rate, or one per layer ([p_0, p_1,
                        ...]: p_0 on the LSTM's input, p_k on layer k-1's output). Applied between layers by this
                        module, so it runs on every path but torch's own whole-stack kernel (which layer 0's alone
                        keeps). Unlike `dropout` (nn.LSTM's, a new mask at every step), it drops the same units of
                        a sequence throughout.
    weight_drop=p       DropConnect on the recurrent weights (AWD-LSTM's weight drop, Merity et al. 2017): in
                        training, U is replaced by U * M / (1-p) with one Bernoulli mask M per call (per batch) and
                        layer-direction, on whichever path runs the call (torch's own kernel included); off in eval.
                        Masks come from torch's generator, so a seed (and a resumed run) repeats them exactly.
    zoneout_h=p, zoneout_c=p  zoneout (Krueger et al. 2016) of h and of c, apart: with c~_t, h~_t the cell and output
                        of the equations above, c_t = z^c * c_{t-1} + (1 - z^c) * c~_t and h_t = z^h * h_{t-1} +
                        (1 - z^h) * h~_t; in training z ~ Bernoulli(p) per unit, step and sequence (torch's
                        generator), in eval z = p, the expectation. Runs on the C kernel, the op and the torch
                        backend.
    forget_bias=[...]   one forget-gate bias shift per layer (with coupled gates the i-block is shifted by
                        -forget_bias, since f = 1 - i = sigma(-a_i))
  c_t = f_t * c_{t-1} + i_t * g_t (6.55) and h_t = o_t * tanh(c_t) (6.56) are unchanged. A variant runs on the
  paths that compute it (`lstmkit.ops.dispatch`), never on torch's own kernel, and `to_torch()` refuses it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from lstmkit import ops
from lstmkit.ops import lstm_cpu, lstm_op, lstm_torch, lstm_vendor
from lstmkit.ops.cell import FEATURES, Cell, features_of
from lstmkit.ops.cell import LAYER_NORM_EPS as LAYER_NORM_EPS  # layer_norm's epsilon, for the exporters

# The variant features that torch.compile and torch.export run through the op (backend="op"), for the exporters.
TRACEABLE_FEATURES = tuple(name for name in FEATURES if name in lstm_op.SUPPORTS)

GATE_ORDER = ("i", "f", "g", "o")  # PyTorch's order of the four row blocks of weight_ih / weight_hh / biases


def _check_size(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_forget_bias(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"forget_bias must be a finite number (1.0 is the usual choice), got {value!r}")
    return float(value)


def _per_layer(name: str, value: object, num_layers: int, check, what: str) -> tuple[float, ...]:
    """One checked value for every layer: a single `what`, or a sequence of num_layers of them."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != num_layers:
            raise ValueError(f"{name} needs one {what} per layer ({num_layers}), got {len(value)}: {list(value)}")
        return tuple(check(v) for v in value)
    return (check(value),) * num_layers


def shift_forget_bias(b_ih: Tensor, H: int, coupled_gates: bool, shift: float) -> None:
    """Shift a layer-direction's forget-gate bias by `shift`, in place: f's block of b_ih, or with coupled gates
    (f = 1 - i = sigma(-a_i)) i's block by -shift, so f starts near sigma(shift) either way."""
    if coupled_gates:
        b_ih[:H] -= shift
    else:
        b_ih[H:2 * H] += shift


def bernoulli_mask(like: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """A mask of `shape` in `like`'s dtype and device, 1 with probability p, else 0, from torch's generator (so a
    seed, and a resumed run, repeat it). `torch.rand(shape) < p` costs the same at every p; torch.bernoulli's cost
    grows toward p = 0.5, where it took 20 ms against 7 for 6,400 x 256 (2 cores, Xeon): zoneout's masks were
    most of its train step's extra time. The uniform draw is float32 (float64 for float64): in bf16 it would take
    only 256 values, and the probability would be p rounded to them."""
    uniform = torch.float64 if like.dtype == torch.float64 else torch.float32
    return (torch.rand(shape, dtype=uniform, device=like.device) < p).to(like.dtype)


def dropout_mask(like: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """An inverted-dropout mask of `shape` in `like`'s dtype and device, from torch's generator: 0 with
    probability p, else 1/(1-p)."""
    return bernoulli_mask(like, shape, 1.0 - p) / (1.0 - p)


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1) (0 turns it off), got {value!r}")
    return float(value)


def _check_variant_flags(hidden_size: int, **flags: object) -> None:
    """peephole, coupled_gates and layer_norm (they decide the parameters): each True or False, and layer_norm
    with at least two units."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if flags.get("layer_norm") and hidden_size < 2:
        raise ValueError("layer_norm needs hidden_size >= 2: the normalisation of one unit is a constant")


def _refuse_other_gate_blocks(state_dict, key: str, rows: int, hidden_size: int, gates: int, what: str) -> None:
    """A one-line error where the state's `key` holds weights of another number of gate blocks than this module's
    `rows` (a standard LSTM's state for coupled gates, or the reverse)."""
    weight = state_dict.get(key)
    if weight is not None and weight.dim() == 2 and weight.shape[0] != rows and \
            weight.shape[0] in (3 * hidden_size, 4 * hidden_size):
        saved = weight.shape[0] // hidden_size
        kind = "i, g, o: coupled gates" if saved == 3 else "i, f, g, o: a standard LSTM"
        raise ValueError(f"the state holds weights of {saved} gate blocks ({kind}), but this {what} has "
                         f"{gates}; build it with coupled_gates={saved == 3}")


def _refuse_missing_variant_parameters(module: nn.Module, state_dict, strict: bool, what: str) -> None:
    """A one-line error for a strict load of a state without the module's peephole or layer_norm parameters."""
    for feature, prefix in (("peephole", "weight_peephole"), ("layer_norm", "layer_norm_")):
        if strict and getattr(module, feature) and not any(k.startswith(prefix) for k in state_dict):
            raise ValueError(f"the state has no {feature} parameters ({prefix}...), but this {what} has "
                             f"{feature}=True; build it with {feature}=False, or load with strict=False to keep "
                             "their initial values")


def _check_cell_clip(value: object) -> float:
    """cell_clip: None (off) or a finite number > 0; returns 0.0 for off (`Cell`'s convention)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"cell_clip must be a number > 0 (e.g. 3.0), or None for no clip; got {value!r}")
    return float(value)


def _check_tensor_like(name: str, t: object, like: Tensor) -> Tensor:
    """`t` must be a floating tensor with the dtype and device of the parameters (`like`)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}; convert it with .float()")
    # Under autocast, torch.nn.LSTM takes lower-precision input for full-precision weights; so do we.
    if t.dtype != like.dtype and not torch.is_autocast_enabled(like.device.type):
        raise TypeError(
            f"{name} has dtype {t.dtype} but the LSTM's parameters are {like.dtype}; "
            f"convert one of them (e.g. .to({like.dtype}) or model.to({t.dtype}))"
        )
    if t.device != like.device:
        raise ValueError(
            f"{name} is on device {t.device} but the LSTM's parameters are on {like.device}; "
            f"move one of them (e.g. .to('{like.device}'))"
        )
    return t


def _batch_sizes_list(batch_sizes: Tensor) -> list[int]:
    sizes = [int(n) for n in batch_sizes.tolist()]
    if not sizes:
        raise ValueError("the PackedSequence holds no time steps: every sequence must have length >= 1")
    if any(n <= 0 for n in sizes) or any(b > a for a, b in zip(sizes, sizes[1:], strict=False)):
        raise ValueError(
            "PackedSequence.batch_sizes must be positive and non-increasing (sequences sorted longest "
            f"first), got {sizes[:10]}{'...' if len(sizes) > 10 else ''}; build it with "
            "torch.nn.utils.rnn.pack_padded_sequence or pack_sequence"
        )
    return sizes


def pack_padded_sequence(
    input: Tensor, lengths: Tensor | list[int], batch_first: bool = False, enforce_sorted: bool = True
) -> PackedSequence:
    """`torch.nn.utils.rnn.pack_padded_sequence` with its input checked first, so a mistake says what it was.

    input: [T, B, *] (or [B, T, *] with batch_first); lengths: B ints in 1..T, longest first unless
    enforce_sorted=False.
    """
    if not isinstance(input, Tensor) or input.dim() < 2:
        raise ValueError("input must be a padded tensor [T, B, *] (or [B, T, *] with batch_first=True)")
    lengths_list = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
    T, B = (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])
    if len(lengths_list) != B:
        raise ValueError(f"got {len(lengths_list)} lengths for a batch of {B} sequences")
    bad = [n for n in lengths_list if not 1 <= n <= T]
    if bad:
        raise ValueError(f"every length must be between 1 and T={T} (empty sequences cannot be packed), got {bad[0]}")
    if enforce_sorted and any(b > a for a, b in zip(lengths_list, lengths_list[1:], strict=False)):
        raise ValueError(
            f"lengths must be sorted longest first when enforce_sorted=True, got {lengths_list[:10]}; "
            "sort the batch or pass enforce_sorted=False"
        )
    return nn.utils.rnn.pack_padded_sequence(
        input, torch.as_tensor(lengths_list, dtype=torch.int64), batch_first, enforce_sorted
    )


class LSTM(nn.Module):
    """Multi-layer LSTM with the interface of `torch.nn.LSTM` (see the module docstring for additions).

    input: [T, B, I] ([B, T, I] with batch_first), [T, I] unbatched, or a PackedSequence.
    Returns (output, (h_n, c_n)): output [T, B, D*P] (or packed), h_n [L*D, B, P], c_n [L*D, B, H],
    with D = 2 if bidirectional else 1 and P = proj_size or hidden_size.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        forget_bias: float | Sequence[float] = 1.0,
        backend: str = "auto",
        peephole: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        input_dropout: float | Sequence[float] = 0.0,
        weight_drop: float = 0.0,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size, 1)
        self.hidden_size = _check_size("hidden_size", hidden_size, 1)
        self.num_layers = _check_size("num_layers", num_layers, 1)
        _check_variant_flags(self.hidden_size, peephole=peephole, coupled_gates=coupled_gates, layer_norm=layer_norm)
        # peephole, coupled_gates and layer_norm decide the parameters, so they are fixed here; cell_clip may change
        self.peephole, self.coupled_gates, self.layer_norm = peephole, coupled_gates, layer_norm
        self.recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
        self.input_dropouts = _per_layer("input_dropout", input_dropout, self.num_layers,
                                         lambda rate: _check_rate("input_dropout", rate), "rate")
        # one number where all layers share it, else the per-layer tuple (as forget_bias)
        self.input_dropout = self.input_dropouts[0] if len(set(self.input_dropouts)) == 1 else self.input_dropouts
        self.weight_drop = _check_rate("weight_drop", weight_drop)
        self.zoneout_h = _check_rate("zoneout_h", zoneout_h)
        self.zoneout_c = _check_rate("zoneout_c", zoneout_c)
        self.cell_clip = cell_clip
        self.proj_size = _check_size("proj_size", proj_size, 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size (it projects h down), got proj_size={proj_size} "
                f">= hidden_size={hidden_size}; use proj_size=0 for no projection"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout acts between stacked layers only, so with num_layers=1 it does nothing "
                f"(got dropout={dropout}, num_layers=1)",
                stacklevel=2,
            )
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.forget_biases = _per_layer("forget_bias", forget_bias, self.num_layers, _check_forget_bias, "number")
        # one number where all layers share it (as torch-style code reads it), else the per-layer tuple
        self.forget_bias = self.forget_biases[0] if len(set(self.forget_biases)) == 1 else self.forget_biases
        self.backend = ops.check_backend(backend)

        factory = {"device": device, "dtype": dtype}
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        G = self.gates
        self._param_names: list[list[tuple[str, ...]]] = []  # [layer][direction] -> (W, U, b_ih, b_hh, R, p) names
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else P * self.num_directions
            per_direction = []
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {f"weight_ih{suffix}": (G * H, layer_input), f"weight_hh{suffix}": (G * H, P)}
                if self.bias:
                    shapes |= {f"bias_ih{suffix}": (G * H,), f"bias_hh{suffix}": (G * H,)}
                if self.proj_size:
                    shapes[f"weight_hr{suffix}"] = (self.proj_size, H)
                if self.peephole:
                    shapes[f"weight_peephole{suffix}"] = (3, H)
                if self.layer_norm:
                    shapes |= {f"layer_norm_ih{suffix}": (2, G * H), f"layer_norm_hh{suffix}": (2, G * H),
                               f"layer_norm_c{suffix}": (2, H)}
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                per_direction.append(tuple(shapes))
            self._param_names.append(per_direction)
        # torch.nn.LSTM's flat order (layer, direction, then W, U, b_ih, b_hh, R), for the vendor kernel's calls
        self._flat_param_names = [names for per_layer in self._param_names for names in per_layer]
        self.reset_parameters()

    @classmethod
    def from_torch(cls, module: nn.LSTM, **kwargs: object) -> LSTM:
        """An lstmkit.LSTM with the configuration and weights of a torch.nn.LSTM (kwargs: backend=...).

        Its forget_bias is 0.0 (torch's initialisation) unless given, so `reset_parameters` stays torch's.
        """
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"from_torch needs a torch.nn.LSTM, got {type(module).__name__}")
        kwargs.setdefault("forget_bias", 0.0)
        weight = module.weight_ih_l0
        new = cls(
            module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first,
            module.dropout, module.bidirectional, module.proj_size, device=weight.device, dtype=weight.dtype,
            **kwargs,
        )
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    @property
    def gates(self) -> int:
        """G, the gate blocks of the weights: 4 (i, f, g, o), or 3 (i, g, o) with coupled gates."""
        return 3 if self.coupled_gates else 4

    @property
    def cell_clip(self) -> float | None:
        return self._cell_clip

    @cell_clip.setter
    def cell_clip(self, value: float | None) -> None:
        self._cell_clip = _check_cell_clip(value) or None
        # Kept, not recomputed per call: the dispatch reads them on every forward (bench_lstm's cached-dispatch cost).
        self._variant_features = features_of(self.peephole, self.coupled_gates, self._cell_clip, self.layer_norm,
                                             zoneout=bool(self.zoneout_h or self.zoneout_c))
        self._features_key = "+".join(self._variant_features)

    @property
    def variant_features(self) -> tuple[str, ...]:
        """The variant features that are on (`lstmkit.ops.cell.FEATURES` names); () for the standard LSTM."""
        return self._variant_features

    def to_torch(self) -> nn.LSTM:
        """A torch.nn.LSTM with this module's configuration and weights."""
        features = self.variant_features + ("recurrent_dropout",) * (self.recurrent_dropout > 0) + (
            "input_dropout",) * any(self.input_dropouts) + ("weight_drop",) * (self.weight_drop > 0)
        if features:
            raise ValueError(f"torch.nn.LSTM cannot compute {' or '.join(features)}: to_torch() takes a "
                             "standard lstmkit.LSTM (build one without those arguments)")
        weight = self.weight_ih_l0
        module = nn.LSTM(
            self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first, self.dropout,
            self.bidirectional, self.proj_size, device=weight.device, dtype=weight.dtype,
        )
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_state_size(self) -> int:
        """P: the size of h (proj_size when projecting, else hidden_size)."""
        return self.proj_size or self.hidden_size

    def reset_parameters(self) -> None:
        # torch's initialisation, same draw order, then the forget-gate bias shift (see module docstring).
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, weight in self.named_parameters():
                if name.startswith("layer_norm"):  # LN's gains 1 and biases 0: the identity at the start
                    weight[0].fill_(1.0)
                    weight[1].zero_()
                else:
                    nn.init.uniform_(weight, -bound, bound)
            if self.bias:
                H = self.hidden_size
                for layer in range(self.num_layers):
                    shift = self.forget_biases[layer]
                    for direction in range(self.num_directions):
                        shift_forget_bias(self.layer_weights(layer, direction)[2], H, self.coupled_gates, shift)

    def layer_weights(self, layer: int, direction: int = 0) -> tuple[Tensor | None, ...]:
        """(W, U, b_ih, b_hh, R) of one layer and direction; absent ones are None (see `cell` for the rest)."""
        return self._named_weights(layer, direction)[:5]

    def _named_weights(self, layer: int, direction: int) -> tuple[Tensor | None, ...]:
        names = self._param_names[layer][direction]
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        return tuple(
            getattr(self, f"{kind}{suffix}") if f"{kind}{suffix}" in names else None
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_peephole",
                         "layer_norm_ih", "layer_norm_hh", "layer_norm_c")
        )

    def cell(self, layer: int, direction: int = 0, masks: dict | None = None) -> Cell:
        """The `Cell` the layer functions take for one layer and direction: its weights, b = b_ih + b_hh (one bias;
        the two only mirror nn.LSTM's parameters) or None without biases, and the variant features. masks: this
        call's dropout (`_draw_masks`): U with its weight drop, the recurrent dropout's h mask and zoneout's masks
        (else its rates, in eval)."""
        W, U, b_ih, b_hh, R, peephole, ln_ih, ln_hh, ln_c = self._named_weights(layer, direction)
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        masks = masks or {}
        # zoneout: this call's masks in training, else the rates (evaluation: the expectation)
        z_h, z_c = (masks.get(f"{name}{suffix}", getattr(self, name) or None) for name in ("zoneout_h", "zoneout_c"))
        return Cell(W, masks.get(f"weight_hh{suffix}", U), b_ih + b_hh if b_ih is not None else None, R, peephole,
                    self.coupled_gates, self.cell_clip or 0.0, (ln_ih, ln_hh, ln_c) if ln_ih is not None else None,
                    masks.get(f"h_mask{suffix}"), z_h, z_c)

    def _draw_masks(self, batch: int, rows: int = 0) -> dict[str, Tensor] | None:
        """This training call's dropout, drawn from torch's generator in a fixed order (layer, direction; U's, h's,
        then zoneout's), each layer's input mask first: {"input_mask_l{k}": [B, I_k]} with input_dropout,
        {"weight_hh_l{k}": U * M / (1-p)} with weight_drop, {"h_mask_l{k}": [B, P]} with recurrent_dropout,
        {"zoneout_h_l{k}": [N, P], "zoneout_c_l{k}": [N, H]} over the call's N rows."""
        if not self.training or not (self.weight_drop or self.recurrent_dropout or self.zoneout_h or self.zoneout_c
                                     or any(self.input_dropouts)):
            return None
        masks = {}
        for layer in range(self.num_layers):
            if self.input_dropouts[layer]:
                width = getattr(self, f"weight_ih_l{layer}").shape[1]
                masks[f"input_mask_l{layer}"] = dropout_mask(self.weight_ih_l0, (batch, width),
                                                             self.input_dropouts[layer])
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                U = getattr(self, f"weight_hh{suffix}")
                if self.weight_drop:
                    masks[f"weight_hh{suffix}"] = U * dropout_mask(U, U.shape, self.weight_drop)
                if self.recurrent_dropout:
                    masks[f"h_mask{suffix}"] = dropout_mask(U, (batch, U.shape[1]), self.recurrent_dropout)
                for name, width in (("zoneout_h", U.shape[1]), ("zoneout_c", self.hidden_size)):
                    if getattr(self, name):
                        masks[f"{name}{suffix}"] = bernoulli_mask(U, (rows, width), getattr(self, name))
        return masks

    def _call_features(self) -> tuple[str, ...]:
        """The features of this call: the module's, and while training its recurrent dropout (a cell feature) and
        the dropout of the inputs of layers above the first (a `STACK_FEATURES` one, which keeps the call off
        torch's whole-stack kernel)."""
        stacked = self.training and any(self.input_dropouts[1:])
        if not (self.training and self.recurrent_dropout) and not stacked:
            return self._variant_features
        features = features_of(self.peephole, self.coupled_gates, self.cell_clip, self.layer_norm,
                               self.training and self.recurrent_dropout > 0, bool(self.zoneout_h or self.zoneout_c))
        return features + ("input_dropout",) * stacked

    def _masked_input(self, x: Tensor, layer: int, masks: dict[str, Tensor] | None,
                      batch_sizes: list[int] | Tensor | None, steps: tuple[int, int] | None) -> Tensor:
        """x [N, I] rows with this call's input_dropout mask of `layer` ([B, I], one row per sequence) applied to
        every step's rows: full batches (batch_sizes None, steps (T, B)) and packed rows alike."""
        mask = masks.get(f"input_mask_l{layer}") if masks else None
        if mask is None:
            return x
        if batch_sizes is None:
            T, B = steps
            return (x.view(T, B, -1) * mask).view(T * B, -1)
        sizes = torch.as_tensor(batch_sizes, device=x.device)
        present = torch.arange(mask.shape[0], device=x.device) < sizes[:, None]  # [T, B]: which sequences step t has
        return x * mask.expand(len(sizes), *mask.shape)[present]  # the rows of step t: its sequences, in order

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """torch's loading, with a one-line error where a state saved by another kind of LSTM meets this one."""
        _refuse_other_gate_blocks(state_dict, prefix + "weight_ih_l0", self.weight_ih_l0.shape[0], self.hidden_size,
                                  self.gates, "LSTM")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's, with a one-line error for a state without this variant's parameters (a standard LSTM's).
        Nested in a model, torch's own missing-keys error names them (`weight_peephole_l0`, ...)."""
        _refuse_missing_variant_parameters(self, state_dict, strict, "LSTM")
        return super().load_state_dict(state_dict, strict, assign)

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[getattr(self, name) for name in names] for per_layer in self._param_names for names in per_layer]

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn.LSTM (there is no cuDNN weight buffer to compact)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        s += f", forget_bias={self.forget_bias}"
        for name in ("peephole", "coupled_gates", "cell_clip", "layer_norm", "recurrent_dropout", "input_dropout",
                     "weight_drop", "zoneout_h", "zoneout_c"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def forward(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        return self.run(input, hx)

    def run(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        record: list[list[dict[str, Tensor]]] | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        """`forward`, and when `record` is a list, also the gates of every layer and direction.

        record receives, per layer, a list per direction of dicts i, f, g, o, c, h in the packed-row
        layout of the internal computation; `lstmkit.trace` turns them into [T, B, H] tensors.
        """
        like = self.weight_ih_l0
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes_t, sorted_indices, _ = input
            _check_tensor_like("PackedSequence.data", x, like)
            batch_sizes = _batch_sizes_list(batch_sizes_t)
            if x.dim() != 2 or x.shape[1] != self.input_size or x.shape[0] != sum(batch_sizes):
                raise ValueError(
                    f"PackedSequence.data must be [sum(batch_sizes)={sum(batch_sizes)}, input_size="
                    f"{self.input_size}], got {tuple(x.shape)}"
                )
            is_batched = True
        else:
            _check_tensor_like("input", input, like)
            if input.dim() not in (2, 3):
                layout = "[B, T, I]" if self.batch_first else "[T, B, I]"
                raise ValueError(
                    f"input must be 3-D {layout} or 2-D unbatched [T, I] with I={self.input_size}; "
                    f"got {input.dim()}-D, shape {tuple(input.shape)}"
                )
            is_batched = input.dim() == 3
            x = input if is_batched else input.unsqueeze(1)
            if is_batched and self.batch_first:
                x = x.transpose(0, 1)  # internal layout is time-major: [T, B, I]
            T, B, feat = x.shape
            if feat != self.input_size:
                raise ValueError(
                    f"input has {feat} features per step but the LSTM was built with input_size={self.input_size} "
                    f"(input shape {tuple(input.shape)}, batch_first={self.batch_first})"
                )
            if T == 0 or B == 0:
                raise ValueError(f"input is empty (T={T} steps, B={B} sequences); an LSTM needs T >= 1 and B >= 1")
            x = x.reshape(T * B, feat)
            batch_sizes = None  # all T steps are full; made a list only where a path needs one (an op does not,
            sorted_indices = None  # so T stays symbolic under torch.export)

        h0, c0 = self._initial_state(hx, batch_sizes[0] if packed else B, is_batched, like, sorted_indices)
        steps = (len(batch_sizes), batch_sizes[0]) if packed else (T, B)
        needs_grad = torch.is_grad_enabled() and (like.requires_grad or x.requires_grad)
        path = self.path_for(steps[1], steps[0], packed, needs_grad, x.dtype, record is not None,
                             batch_sizes if packed else None)
        sizes = batch_sizes_t if packed and path == "vendor" else batch_sizes
        # after dispatch, whose measuring leaves torch's generator as it was
        masks = self._draw_masks(steps[1], x.shape[0])
        x, h_n, c_n = self._stack(path, x, sizes, h0, c0, record, packed, steps, masks)
        low = lstm_torch.autocast_dtype(like.device.type)
        if low is not None:  # what torch.nn.LSTM returns under autocast, whichever path computed it
            x, h_n, c_n = x.to(low), h_n.to(low), c_n.to(low)
        return self._assemble(x, h_n, c_n, packed, is_batched, input)

    def embedded(
        self, embedding: nn.Embedding, tokens: Tensor | PackedSequence
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        """`self(embedding(tokens))` for token ids (a padded [T, B] tensor, [B, T] with batch_first, or a
        PackedSequence of ids), with the Embedding fused into the input projection where the C kernel runs a train
        step of one standard layer (`lstm_cpu.embedded_lstm_layer`): W x is then computed once per distinct token
        of the batch rather than once per step (the IMDB seed model: 16 ms a step instead of 21, 2 cores).
        Elsewhere it is exactly `self(embedding(tokens))`. Forward hooks on this module do not see fused calls."""
        packed = isinstance(tokens, PackedSequence)
        ids = tokens.data if packed else tokens
        if packed:
            sizes = _batch_sizes_list(tokens.batch_sizes)
            steps = (len(sizes), sizes[0])
        elif ids.dim() == 2:
            sizes = None
            steps = (ids.shape[1], ids.shape[0]) if self.batch_first else tuple(ids.shape)
        if not self._fuses_embedding(embedding, packed, ids, steps, sizes):
            inputs = embedding(ids)
            return self(PackedSequence(inputs, *tokens[1:]) if packed else inputs)
        T, B = steps
        if not packed:  # time-major rows, the LSTM's own layout
            ids, sizes = (ids.t() if self.batch_first else ids).reshape(T * B), [B] * T
        zeros = embedding.weight.new_zeros(self.num_directions, B, self.hidden_size)
        cells = [self.cell(0, d) for d in range(self.num_directions)]
        y, h_n, c_n = lstm_cpu.embedded_lstm_layer(embedding.weight, ids, sizes, zeros, zeros, cells,
                                                   embedding.padding_idx)
        return self._assemble(y, h_n, c_n, packed, True, tokens)

    def _fuses_embedding(self, embedding: nn.Embedding, packed: bool, ids: Tensor, steps: tuple, sizes: list | None
                         ) -> bool:
        """Whether `embedded` takes the fused path: a train step that this module would run on the C kernel, of
        one standard layer without a projection, a plain Embedding, no autocast and no torch.func transform."""
        if not (self.training and torch.is_grad_enabled()) or ids.dim() != (1 if packed else 2):
            return False
        if self.num_layers != 1 or self.proj_size or self.variant_features or type(embedding) is not nn.Embedding:
            return False
        if self.weight_drop or self.recurrent_dropout or self.input_dropouts[0]:  # training: masks the fused layer
            # does not take (zoneout is among variant_features)
            return False
        if embedding.max_norm is not None or torch.is_autocast_enabled("cpu") or lstm_cpu._functorch_active():
            return False
        if self.path_for(steps[1], steps[0], packed, True, batch_sizes=sizes) != "cpu":
            return False
        return all(lstm_cpu.supports(embedding.weight, self.cell(0, d)) for d in range(self.num_directions))

    def call_kind(self, batch: int, steps: int, packed: bool, needs_grad: bool) -> ops.CallKind:
        """What `ops.dispatch` decides on for a call of B=batch sequences of up to T=steps steps."""
        like = self.weight_ih_l0
        low = lstm_torch.autocast_dtype(like.device.type)
        features = self._call_features()
        return ops.CallKind(
            device=like.device.type, dtype=str(like.dtype).removeprefix("torch."),
            autocast=str(low).removeprefix("torch.") if low is not None else "", train=needs_grad, batch=batch,
            steps=steps, input_size=self.input_size, hidden_size=self.hidden_size, proj_size=self.proj_size,
            layers=self.num_layers, bidirectional=self.bidirectional, packed=packed,
            dropout=self.training and self.dropout > 0 and self.num_layers > 1, threads=torch.get_num_threads(),
            features=self._features_key if features is self._variant_features else "+".join(features))

    def path_for(self, batch: int, steps: int, packed: bool, needs_grad: bool, input_dtype: torch.dtype | None = None,
                 recording: bool = False, batch_sizes: list[int] | None = None) -> str:
        """The path ("vendor", "cpu", "op" or "torch") that `ops.dispatch` picks for such a call of this module;
        under backend="auto", the first call of a kind rehearses the candidates on random data of its shape."""
        like = self.weight_ih_l0

        def rehearse(path: str) -> None:
            T = self.call_kind(batch, steps, packed, needs_grad).rehearsal_steps()
            sizes = batch_sizes[:T] if batch_sizes is not None else None
            rows = sum(sizes) if sizes is not None else T * batch
            generator = torch.Generator(device=like.device).manual_seed(0)
            x = torch.randn(rows, self.input_size, generator=generator, device=like.device,
                            dtype=input_dtype or like.dtype)
            h0 = x.new_zeros(self.num_layers * self.num_directions, batch, self.output_state_size, dtype=like.dtype)
            c0 = x.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size, dtype=like.dtype)
            with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(needs_grad):  # dropout must not shift it
                x.requires_grad_(needs_grad)
                y, h_n, c_n = self._stack(path, x, sizes, h0, c0, None, packed, (T, batch))
                if needs_grad:  # grads returned, not accumulated: the module's .grad stays untouched
                    leaves = [x] + [p for p in self.parameters() if p.requires_grad]
                    torch.autograd.grad(y, leaves, torch.ones_like(y), allow_unused=True)

        return ops.dispatch(self.backend, lambda: self.call_kind(batch, steps, packed, needs_grad), packed=packed,
                            training=self.training, recording=recording, rehearse=rehearse,
                            features=self._call_features())

    def _stack(
        self, path: str, x: Tensor, batch_sizes: list[int] | Tensor | None, h0: Tensor, c0: Tensor, record: list | None,
        packed: bool, steps: tuple[int, int], masks: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Every layer and direction on one path: x [N, I] rows -> ([N, D*P], h_n, c_n). batch_sizes: of packed
        input (a list, or for the vendor the PackedSequence's tensor as it is), None for a full [T, B] batch.
        masks: the call's dropout (`_draw_masks`), or None."""
        if path == "vendor":
            # The parameter dict before getattr (nn.Module.__getattr__ costs ~0.5 us a name, per call); getattr
            # for names that are no longer plain parameters (torch.nn.utils.parametrize, weight norm).
            params = self._parameters
            flat_weights = [params[name] if name in params else getattr(self, name)
                            for names in self._flat_param_names for name in names]
            # layer 0's input dropout here; that of the layers above, and recurrent dropout, never take the vendor
            # (dispatch sees their features)
            x = self._masked_input(x, 0, masks, batch_sizes if packed else None, steps)
            if masks:  # weight drop
                flat_names = [name for names in self._flat_param_names for name in names]
                flat_weights = [masks.get(name, w) for name, w in zip(flat_names, flat_weights, strict=True)]
            vendor_args = (
                h0, c0, flat_weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional
            )
            if packed:
                return lstm_vendor.lstm_stack(x, torch.as_tensor(batch_sizes), *vendor_args)
            T, B = steps
            y, h_n, c_n = lstm_vendor.lstm_stack(x.view(T, B, -1), None, *vendor_args)
            return y.reshape(T * B, y.shape[2]), h_n, c_n
        return self._run_layers(path, x, batch_sizes, h0, c0, record, steps=None if packed else steps, masks=masks)

    def _run_layers(
        self, path: str, x: Tensor, batch_sizes: list[int] | None, h0: Tensor, c0: Tensor,
        record: list | None, steps: tuple[int, int] | None = None, masks: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """lstmkit's own computation, layer by layer: x [N, I] packed rows -> ([N, D*P], h_n, c_n).

        A full batch comes with batch_sizes=None and steps=(T, B)."""
        layer_fn = ops.layer_function(path)
        packed_sizes = batch_sizes
        if batch_sizes is None:
            T, B = steps
            batch_sizes = (T, B) if path == "op" else [B] * T  # the op takes (T, B): T stays symbolic in export
        final_h, final_c = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
            x = self._masked_input(x, layer, masks, packed_sizes, steps)
            outputs, per_direction = [], []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                rec: dict[str, Tensor] | None = {} if record is not None else None
                y, hT, cT = layer_fn(x, batch_sizes, h0[k], c0[k], self.cell(layer, direction, masks),
                                     reverse=direction == 1, record=rec)
                outputs.append(y)
                final_h.append(hT)
                final_c.append(cT)
                per_direction.append(rec)
            if record is not None:
                record.append(per_direction)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return x, torch.stack(final_h), torch.stack(final_c)

    def _assemble(
        self, x: Tensor, h_n: Tensor, c_n: Tensor, packed: bool, is_batched: bool, input: Tensor | PackedSequence
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        """Packed rows [N, D*P] and final states back into the caller's layout and batch order."""
        if packed:
            _, batch_sizes_t, sorted_indices, unsorted_indices = input
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
            return PackedSequence(x, batch_sizes_t, sorted_indices, unsorted_indices), (h_n, c_n)
        T = input.shape[1] if is_batched and self.batch_first else input.shape[0]
        output = x.view(T, -1, x.shape[1])
        if not is_batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _initial_state(
        self,
        hx: object,
        batch: int,
        is_batched: bool,
        like: Tensor,
        sorted_indices: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """h0 [L*D, B, P] and c0 [L*D, B, H], zeros when hx is None, checked and sorted like the batch."""
        LD, P, H = self.num_layers * self.num_directions, self.output_state_size, self.hidden_size
        if hx is None:
            return (
                torch.zeros(LD, batch, P, dtype=like.dtype, device=like.device),
                torch.zeros(LD, batch, H, dtype=like.dtype, device=like.device),
            )
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h_0, c_0) of two tensors, or None for zeros")
        h0 = _check_tensor_like("h_0", hx[0], like)
        c0 = _check_tensor_like("c_0", hx[1], like)
        expect_h, expect_c = (LD, batch, P), (LD, batch, H)
        if not is_batched:
            expect_h, expect_c = (LD, P), (LD, H)
        batch_dim = "batch, " if is_batched else ""
        for name, t, expect, last_dim in (
            ("h_0", h0, expect_h, "proj_size" if self.proj_size else "hidden_size"),
            ("c_0", c0, expect_c, "hidden_size"),
        ):
            if tuple(t.shape) != expect:
                raise ValueError(
                    f"{name} must have shape {expect} (num_layers*num_directions, {batch_dim}{last_dim}), "
                    f"got {tuple(t.shape)}"
                )
        if not is_batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if sorted_indices is not None:
            h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        return h0, c0


class LSTMCell(nn.Module):
    """One LSTM step with the interface of `torch.nn.LSTMCell`: (h_1, c_1) = cell(x, (h_0, c_0)).

    input: [B, I] or unbatched [I]; hx: ([B, H], [B, H]) or None for zeros. Same `forget_bias` as LSTM, and the
    variants of one step, as `lstmkit.LSTM` computes them (equations in the module docstring): `peephole`
    (`weight_peephole` [3, H]), `coupled_gates` (W, U and the biases of 3 blocks i, g, o), `cell_clip`,
    `layer_norm` (`layer_norm_ih`, `layer_norm_hh` [2, GH], `layer_norm_c` [2, H]) and `zoneout_h` / `zoneout_c`
    (in training a new Bernoulli mask per unit and sequence at every call, that is every step; in eval the rate).
    Recurrent dropout, input dropout and weight drop keep one mask for a whole sequence, which a cell called step by
    step does not see: it refuses them (use lstmkit.LSTM, or multiply h or x by a mask you draw once per sequence).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        forget_bias: float = 1.0,
        backend: str = "auto",
        peephole: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
        layer_norm: bool = False,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size, 1)
        self.hidden_size = _check_size("hidden_size", hidden_size, 1)
        self.bias = bool(bias)
        self.forget_bias = _check_forget_bias(forget_bias)
        self.backend = ops.check_backend(backend)
        _check_variant_flags(self.hidden_size, peephole=peephole, coupled_gates=coupled_gates, layer_norm=layer_norm)
        self.peephole, self.coupled_gates, self.layer_norm = peephole, coupled_gates, layer_norm
        self.cell_clip = cell_clip
        self.zoneout_h = _check_rate("zoneout_h", zoneout_h)
        self.zoneout_c = _check_rate("zoneout_c", zoneout_c)
        for name, rate in (("recurrent_dropout", recurrent_dropout), ("input_dropout", input_dropout),
                           ("weight_drop", weight_drop)):
            if _check_rate(name, rate):
                raise ValueError(f"{name} keeps one mask for a whole sequence, which LSTMCell (one step per call) "
                                 f"cannot see: use lstmkit.LSTM({name}=...), or apply a mask you draw once per "
                                 "sequence (lstmkit.nn.dropout_mask) yourself")
        factory = {"device": device, "dtype": dtype}
        H = self.hidden_size
        G = 3 if coupled_gates else 4
        shapes = {"weight_ih": (G * H, self.input_size), "weight_hh": (G * H, H)}
        if self.bias:
            shapes |= {"bias_ih": (G * H,), "bias_hh": (G * H,)}
        if peephole:
            shapes["weight_peephole"] = (3, H)
        if layer_norm:
            shapes |= {"layer_norm_ih": (2, G * H), "layer_norm_hh": (2, G * H), "layer_norm_c": (2, H)}
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        if not self.bias:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    @property
    def gates(self) -> int:
        """G, the gate blocks of the weights: 4 (i, f, g, o), or 3 (i, g, o) with coupled gates."""
        return 3 if self.coupled_gates else 4

    @property
    def cell_clip(self) -> float | None:
        return self._cell_clip

    @cell_clip.setter
    def cell_clip(self, value: float | None) -> None:
        self._cell_clip = _check_cell_clip(value) or None

    @property
    def variant_features(self) -> tuple[str, ...]:
        """The variant features that are on (`lstmkit.ops.cell.FEATURES` names); () for the standard cell."""
        return features_of(self.peephole, self.coupled_gates, self.cell_clip, self.layer_norm,
                           zoneout=bool(self.zoneout_h or self.zoneout_c))

    def reset_parameters(self) -> None:
        # torch's initialisation and draw order (then the variants' own), LN as the identity, the forget-bias shift
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, weight in self.named_parameters():
                if name.startswith("layer_norm"):
                    weight[0].fill_(1.0)
                    weight[1].zero_()
                else:
                    nn.init.uniform_(weight, -bound, bound)
            if self.bias and self.forget_bias:
                shift_forget_bias(self.bias_ih, self.hidden_size, self.coupled_gates, self.forget_bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        _refuse_other_gate_blocks(state_dict, prefix + "weight_ih", self.weight_ih.shape[0], self.hidden_size,
                                  self.gates, "LSTMCell")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's, with a one-line error for a state without this variant's parameters (a standard cell's)."""
        _refuse_missing_variant_parameters(self, state_dict, strict, "LSTMCell")
        return super().load_state_dict(state_dict, strict, assign)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        s += f", forget_bias={self.forget_bias}"
        for name in ("peephole", "coupled_gates", "cell_clip", "layer_norm", "zoneout_h", "zoneout_c"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        return s + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def cell(self, batch: int) -> Cell:
        """The `Cell` of this call: the weights, b = b_ih + b_hh, the variants; zoneout's masks [B, H] drawn now in
        training (h's, then c's, from torch's generator), its rates in eval."""
        like = self.weight_ih
        zoneout = [None if not rate else bernoulli_mask(like, (batch, self.hidden_size), rate) if self.training
                   else rate for rate in (self.zoneout_h, self.zoneout_c)]
        layer_norm = (self.layer_norm_ih, self.layer_norm_hh, self.layer_norm_c) if self.layer_norm else None
        return Cell(self.weight_ih, self.weight_hh, self.bias_ih + self.bias_hh if self.bias else None, None,
                    self.weight_peephole if self.peephole else None, self.coupled_gates, self.cell_clip or 0.0,
                    layer_norm, None, *zoneout)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        like = self.weight_ih
        _check_tensor_like("input", input, like)
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise ValueError(
                f"input must be [B, {self.input_size}] or unbatched [{self.input_size}], got {tuple(input.shape)}"
            )
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        B, H = x.shape[0], self.hidden_size
        if B == 0:
            raise ValueError("input has an empty batch (B=0); an LSTMCell needs B >= 1")
        if hx is None:
            h0 = c0 = torch.zeros(B, H, dtype=like.dtype, device=like.device)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h_0, c_0) of two tensors, or None for zeros")
            h0 = _check_tensor_like("h_0", hx[0], like)
            c0 = _check_tensor_like("c_0", hx[1], like)
            expect = (B, H) if is_batched else (H,)
            for name, t in (("h_0", h0), ("c_0", c0)):
                if tuple(t.shape) != expect:
                    raise ValueError(f"{name} must have shape {expect}, got {tuple(t.shape)}")
            if not is_batched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        cell = self.cell(B)
        h1, c1, _ = ops.step_function(self.backend)(lstm_torch.input_projection(x, cell), h0, c0, cell,
                                                    (cell.zoneout_h, cell.zoneout_c))
        if not is_batched:
            return h1.squeeze(0), c1.squeeze(0)
        return h1, c1
