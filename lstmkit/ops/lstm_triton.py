"""The time loops of the op (`lstm_op`) as Triton kernels, for CUDA tensors: the standard LSTM cell.

Each step of the forward is one kernel: the recurrent GEMM U h_{t-1} of a tile of rows and units, for all four gate
blocks of those units, with the gates (eq. 6.51-6.54), the cell (6.55) and o * tanh(c) (6.56) as its epilogue, so
the pre-activations never leave the chip. Each step of the backward is one pointwise kernel (the cell's BPTT, which
writes dz, the gradients of the pre-activations, and dc_{t-1}) and one GEMM dh_{t-1} = dz U. As in the CPU op, the
input projection W x of every step is one GEMM before the loop, and dW, dU, db, dx are GEMMs after it.

Triton compiles these at first use with nothing but the `triton` wheel. Without a GPU they run in Triton's
interpreter (TRITON_INTERPRET=1, set before triton is imported), which is how the tests check them on the CPU
against the torch backend, with the op routed here for that test alone. What runs here: the standard cell,
full-length batches, any dtype the weights have (fp32 accumulation), projections (h_t = R m_t, a GEMM per step).
Variants take the op's torch loops.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as error:  # an optional dependency: the op's torch loops run instead
    triton = None
    UNAVAILABLE = f"triton is not installed ({error}); pip install triton"
else:
    UNAVAILABLE = ""

BLOCK_ROWS, BLOCK_UNITS, BLOCK_K = 16, 32, 32  # a step's tile: tl.dot needs every side >= 16
BLOCK_POINTWISE = 256


# Whether Triton runs its interpreter (TRITON_INTERPRET=1 when triton was imported, which is when its decorator
# reads it): kernels then take CPU tensors.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def runs(x: Tensor, cell) -> bool:
    """Whether these kernels run a layer: triton present, the standard cell, CUDA tensors. (tests/test_triton.py
    sends CPU tensors here under the interpreter itself; nothing else does, so the op's torch loops stay tested.)"""
    return triton is not None and cell.standard and x.device.type == "cuda"


if triton is not None:
    @triton.jit
    def _sigmoid(z):
        return 1.0 / (1.0 + tl.exp(-z))

    @triton.jit
    def _tanh(z):
        return 2.0 * _sigmoid(2.0 * z) - 1.0

    @triton.jit
    def _forward_step(xw_ptr, h_ptr, U_ptr, c_ptr, gates_ptr, cells_ptr, m_ptr, B, H, P,
                      BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
                      PRECISION: tl.constexpr):
        """One step for a tile of rows x units: a = xw_t + U h_{t-1} for the four gate blocks of these units,
        then i, f, g, o, c_t = f c_{t-1} + i g and m_t = o tanh(c_t). xw_t holds W x_t + b. ACC: the dtype of
        the sums and the pointwise math (float32; float64 for float64 weights). PRECISION: tl.dot's
        input_precision, "ieee" (Triton's default for float32 on NVIDIA is TF32, 10-bit products)."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        row_ok, unit_ok = rows < B, units < H
        acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        for k0 in range(0, P, BLOCK_P):
            ks = k0 + tl.arange(0, BLOCK_P)
            k_ok = ks < P
            h = tl.load(h_ptr + rows[:, None] * P + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            u_mask = k_ok[:, None] & unit_ok[None, :]
            u_at = U_ptr + units[None, :] * P + ks[:, None]  # U^T's [k, unit] of gate block 0; block q: + q H P
            acc_i += tl.dot(h, tl.load(u_at, mask=u_mask, other=0.0), input_precision=PRECISION)
            acc_f += tl.dot(h, tl.load(u_at + H * P, mask=u_mask, other=0.0), input_precision=PRECISION)
            acc_g += tl.dot(h, tl.load(u_at + 2 * H * P, mask=u_mask, other=0.0), input_precision=PRECISION)
            acc_o += tl.dot(h, tl.load(u_at + 3 * H * P, mask=u_mask, other=0.0), input_precision=PRECISION)
        tile = row_ok[:, None] & unit_ok[None, :]
        gate_at = rows[:, None] * (4 * H) + units[None, :]
        state_at = rows[:, None] * H + units[None, :]
        i = _sigmoid(acc_i + tl.load(xw_ptr + gate_at, mask=tile, other=0.0).to(ACC))           # 6.51
        f = _sigmoid(acc_f + tl.load(xw_ptr + gate_at + H, mask=tile, other=0.0).to(ACC))       # 6.52
        g = _tanh(acc_g + tl.load(xw_ptr + gate_at + 2 * H, mask=tile, other=0.0).to(ACC))      # 6.54
        o = _sigmoid(acc_o + tl.load(xw_ptr + gate_at + 3 * H, mask=tile, other=0.0).to(ACC))   # 6.53
        c = f * tl.load(c_ptr + state_at, mask=tile, other=0.0).to(ACC) + i * g                  # 6.55
        m = o * _tanh(c)                                                                                # 6.56
        out = gates_ptr.dtype.element_ty
        tl.store(gates_ptr + gate_at, i.to(out), mask=tile)
        tl.store(gates_ptr + gate_at + H, f.to(out), mask=tile)
        tl.store(gates_ptr + gate_at + 2 * H, g.to(out), mask=tile)
        tl.store(gates_ptr + gate_at + 3 * H, o.to(out), mask=tile)
        tl.store(cells_ptr + state_at, c.to(cells_ptr.dtype.element_ty), mask=tile)
        tl.store(m_ptr + state_at, m.to(m_ptr.dtype.element_ty), mask=tile)

    @triton.jit
    def _backward_step(dm_ptr, dc_ptr, gates_ptr, cells_ptr, c_prev_ptr, dz_ptr, dc_prev_ptr, n, H,
                       BLOCK: tl.constexpr, ACC: tl.constexpr):
        """The cell's BPTT for n = B*H (row, unit) pairs: from dL/dm_t and dL/dc_t (from step t+1) to dz_t (the
        pre-activations' gradients, gate order i, f, g, o) and dL/dc_{t-1}."""
        k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = k < n
        gate_at = (k // H) * (4 * H) + k % H
        i = tl.load(gates_ptr + gate_at, mask=ok, other=0.0).to(ACC)
        f = tl.load(gates_ptr + gate_at + H, mask=ok, other=0.0).to(ACC)
        g = tl.load(gates_ptr + gate_at + 2 * H, mask=ok, other=0.0).to(ACC)
        o = tl.load(gates_ptr + gate_at + 3 * H, mask=ok, other=0.0).to(ACC)
        tanh_c = _tanh(tl.load(cells_ptr + k, mask=ok, other=0.0).to(ACC))
        dm = tl.load(dm_ptr + k, mask=ok, other=0.0).to(ACC)
        dc = tl.load(dc_ptr + k, mask=ok, other=0.0).to(ACC) + dm * o * (1.0 - tanh_c * tanh_c)
        c_prev = tl.load(c_prev_ptr + k, mask=ok, other=0.0).to(ACC)
        out = dz_ptr.dtype.element_ty
        tl.store(dz_ptr + gate_at, (dc * g * i * (1.0 - i)).to(out), mask=ok)
        tl.store(dz_ptr + gate_at + H, (dc * c_prev * f * (1.0 - f)).to(out), mask=ok)
        tl.store(dz_ptr + gate_at + 2 * H, (dc * i * (1.0 - g * g)).to(out), mask=ok)
        tl.store(dz_ptr + gate_at + 3 * H, (dm * tanh_c * o * (1.0 - o)).to(out), mask=ok)
        tl.store(dc_prev_ptr + k, (dc * f).to(dc_prev_ptr.dtype.element_ty), mask=ok)


def _accumulator(dtype: torch.dtype):
    """The kernels' working precision: float32 (bf16 and fp16 weights too), float64 for float64."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward_loop(xw: Tensor, h0: Tensor, c0: Tensor, U: Tensor, R: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op's forward time loop: xw [T, B, 4H] (W x_t + b of every step, in processing order), h0 [B, P],
    c0 [B, H], U [4H, P], R [P, H] or None -> y [T, B, P], h_T, c_T, gates [T, B, 4H] (activated), cells."""
    T, B, G = xw.shape
    H, P = G // 4, U.shape[1]
    xw, U = xw.contiguous(), U.contiguous()
    gates, cells = torch.empty_like(xw), xw.new_empty(T, B, H)
    y = xw.new_empty(T, B, P)
    m = xw.new_empty(B, H) if R is not None else None
    grid = (triton.cdiv(B, BLOCK_ROWS), triton.cdiv(H, BLOCK_UNITS))
    h, c = h0.contiguous(), c0.contiguous()
    for t in range(T):
        m_t = m if R is not None else y[t]  # without a projection, m_t is h_t: written straight into y
        _forward_step[grid](xw[t], h, U, c, gates[t], cells[t], m_t, B, H, P,
                            BLOCK_B=BLOCK_ROWS, BLOCK_H=BLOCK_UNITS, BLOCK_P=BLOCK_K, ACC=_accumulator(xw.dtype),
                            PRECISION="ieee")
        if R is not None:
            torch.mm(m, R.t(), out=y[t])  # h_t = R m_t
        h, c = y[t], cells[t]
    return y, h.clone(), c.clone(), gates, cells


def backward_loop(dy: Tensor, dh_T: Tensor, dc_T: Tensor, c0: Tensor, U: Tensor, R: Tensor | None, gates: Tensor,
                  cells: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """The op's BPTT time loop (processing order): dz [T, B, 4H], dL/dh_t with a projection (for dR), dh0, dc0."""
    T, B, G = gates.shape
    H = G // 4
    dz = torch.empty_like(gates)
    dh_total = torch.empty_like(dy) if R is not None else None
    dc = dc_T.contiguous().clone()
    dc_prev = torch.empty_like(dc)
    dh_next = dh_T
    n = B * H
    grid = (triton.cdiv(n, BLOCK_POINTWISE),)
    for t in range(T - 1, -1, -1):
        dh = dy[t] + dh_next
        if R is not None:
            dh_total[t] = dh
            dh = dh @ R  # back through the projection: dL/dm_t [B, H]
        c_prev = cells[t - 1] if t > 0 else c0.contiguous()
        _backward_step[grid](dh.contiguous(), dc, gates[t], cells[t], c_prev, dz[t], dc_prev, n, H,
                             BLOCK=BLOCK_POINTWISE, ACC=_accumulator(gates.dtype))
        dc, dc_prev = dc_prev, dc
        dh_next = dz[t] @ U  # dL/dh_{t-1}: [B, P]
    return dz, dh_total, dh_next, dc
