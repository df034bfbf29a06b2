"""Triton recurrent scan of the gated outer-product recurrence, for small expand ratios (e = 1..8).

Below the 16-wide minimum of ``tl.dot`` the chunked kernel does not apply. Here each program keeps the ``K x BV``
states of ``NH`` heads in registers and walks the sequence one token at a time with elementwise products and
reductions: ``S = exp(g_t) S + k_t^T v_t``, ``o_t = q_t S``. Several heads per program keep the tiles wide.
The only exponent is ``g_t <= 0``. The backward recomputes: a forward sweep rebuilds the states for ``dq``, a
reverse sweep carries ``dS`` for ``dk``, ``dv`` and the initial state; ``dg`` follows from ``dq`` and ``dk``.
The forward kernel also serves the decoding step (``step.py``), which passes the same tensor as ``h0`` and ``ht``.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import gate_gradient, next_power_of_2


@triton.jit(do_not_specialize=["T"])
def _scan_fwd_kernel(
    q, k, v, g, h0, o, ht,
    T, BH,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    NH: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    i_v = tl.program_id(0)
    bh = tl.program_id(1) * NH + tl.arange(0, NH)  # [NH] flattened (batch, head) indices
    mh = bh < BH
    bh64 = bh.to(tl.int64)
    i_b = bh64 // H
    i_h = bh64 % H
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    m_k = mh[:, None] & (ck < K)[None, :]  # [NH, BK]
    m_v = mh[:, None] & (cv < V)[None, :]  # [NH, BV]
    p_k = i_b[:, None] * T * H * K + i_h[:, None] * K + ck[None, :]  # [NH, BK] int64, token 0
    p_v = i_b[:, None] * T * H * V + i_h[:, None] * V + cv[None, :]  # [NH, BV] int64, token 0
    p_s = bh64[:, None, None] * K * V + ck[None, :, None] * V + cv[None, None, :]  # [NH, BK, BV]
    m_s = m_k[:, :, None] & m_v[:, None, :]
    state = tl.zeros([NH, BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + p_s, mask=m_s, other=0.0).to(tl.float32)
    for _ in range(T):
        b_q = tl.load(q + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        state = state * tl.exp(b_g)[:, :, None] + b_k[:, :, None] * b_v[:, None, :]
        b_o = tl.sum(b_q[:, :, None] * state, axis=1)  # [NH, BV]
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_v)
        p_k += H * K
        p_v += H * V
    if STORE_HT:
        tl.store(ht + p_s, state, mask=m_s)


@triton.jit(do_not_specialize=["T"])
def _scan_bwd_kernel(
    q, k, v, g, h0, do, dht, dq, dk, dv, dh0,
    T, BH,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    NH: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr,
):
    i_v = tl.program_id(0)
    bh = tl.program_id(1) * NH + tl.arange(0, NH)  # [NH]
    mh = bh < BH
    bh64 = bh.to(tl.int64)
    i_b = bh64 // H
    i_h = bh64 % H
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    m_k = mh[:, None] & (ck < K)[None, :]
    m_v = mh[:, None] & (cv < V)[None, :]
    base_k = i_b[:, None] * T * H * K + i_h[:, None] * K + ck[None, :]  # [NH, BK] int64
    base_v = i_b[:, None] * T * H * V + i_h[:, None] * V + cv[None, :]  # [NH, BV] int64
    # dq and dk are partial sums over this program's value block: one slice of [NV, B, T, H, K] each
    part = i_v.to(tl.int64) * BH * T * K
    p_s = bh64[:, None, None] * K * V + ck[None, :, None] * V + cv[None, None, :]
    m_s = m_k[:, :, None] & m_v[:, None, :]

    # forward sweep: rebuild the states, dq_t = S_t do_t
    state = tl.zeros([NH, BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + p_s, mask=m_s, other=0.0).to(tl.float32)
    p_k = base_k
    p_v = base_v
    for _ in range(T):
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.0).to(tl.float32)
        state = state * tl.exp(b_g)[:, :, None] + b_k[:, :, None] * b_v[:, None, :]
        b_dq = tl.sum(state * b_do[:, None, :], axis=2)  # [NH, BK]
        tl.store(dq + part + p_k, b_dq, mask=m_k)
        p_k += H * K
        p_v += H * V

    # reverse sweep: dS_t = q_t^T do_t + exp(g_{t+1}) dS_{t+1}; dk_t = dS_t v_t, dv_t = k_t dS_t
    d_state = tl.zeros([NH, BK, BV], dtype=tl.float32)
    if HAS_DHT:
        d_state += tl.load(dht + p_s, mask=m_s, other=0.0).to(tl.float32)
    p_k = base_k + tl.cast(T - 1, tl.int64) * (H * K)
    p_v = base_v + tl.cast(T - 1, tl.int64) * (H * V)
    for _ in range(T):
        b_q = tl.load(q + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.0).to(tl.float32)
        d_state += b_q[:, :, None] * b_do[:, None, :]
        b_dk = tl.sum(d_state * b_v[:, None, :], axis=2)  # [NH, BK]
        b_dv = tl.sum(d_state * b_k[:, :, None], axis=1)  # [NH, BV]
        tl.store(dk + part + p_k, b_dk, mask=m_k)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_v)
        d_state = d_state * tl.exp(b_g)[:, :, None]
        p_k -= H * K
        p_v -= H * V
    if HAS_H0:
        tl.store(dh0 + p_s, d_state, mask=m_s)


def scan_tiles(K: int, V: int, BH: int) -> Tuple[int, int, int, int]:
    """``(NH, BK, BV, num_warps)``: heads per program and the state tile, about 2K fp32 values per program."""
    BK = max(2, next_power_of_2(K))  # no tile dimension of 1
    BV = max(2, min(next_power_of_2(V), 4096 // BK))
    NH = max(1, min(16, next_power_of_2(BH), 2048 // (BK * BV)))
    num_warps = 4 if NH * BK * BV >= 1024 else 1
    return NH, BK, BV, num_warps


def scan_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    h0: Optional[torch.Tensor], final_state: Optional[torch.Tensor], out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the forward scan. Inputs are contiguous ``[B, T, H, K|V]``; ``final_state`` (fp32 ``[B, H, K, V]``,
    may alias ``h0``) is written when given. Returns ``o`` ``[B, T, H, V]`` in the dtype of ``q`` (or ``out``)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device) if out is None else out
    NH, BK, BV, num_warps = scan_tiles(K, V, B * H)
    grid = (triton.cdiv(V, BV), triton.cdiv(B * H, NH))
    _scan_fwd_kernel[grid](
        q, k, v, g, h0, o, final_state, T, B * H, H=H, K=K, V=V, NH=NH, BK=BK, BV=BV,
        HAS_H0=h0 is not None, STORE_HT=final_state is not None, num_warps=num_warps,
    )
    return o


class ScanHGRN2Function(torch.autograd.Function):
    """Autograd wrapper of the scan kernels; returns ``(o, final_state)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0):
        B, T, H, K = q.shape
        final_state = torch.empty(B, H, K, v.shape[-1], dtype=torch.float32, device=q.device)
        o = scan_forward(q, k, v, g, h0, final_state)
        ctx.save_for_backward(q, k, v, g, h0, final_state)
        return o, final_state

    @staticmethod
    def backward(ctx, do, d_final_state):
        q, k, v, g, h0, final_state = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        NH, BK, BV, num_warps = scan_tiles(K, V, B * H)
        NV = triton.cdiv(V, BV)
        dq = torch.empty(NV, B, T, H, K, dtype=torch.float32, device=q.device)  # partial sums per value block
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        d_final_state = d_final_state.contiguous() if d_final_state is not None else None
        _scan_bwd_kernel[(NV, triton.cdiv(B * H, NH))](
            q, k, v, g, h0, do.contiguous(), d_final_state, dq, dk, dv, dh0, T, B * H,
            H=H, K=K, V=V, NH=NH, BK=BK, BV=BV,
            HAS_H0=h0 is not None, HAS_DHT=d_final_state is not None, num_warps=num_warps,
        )
        dq, dk = dq.sum(0), dk.sum(0)  # [B, T, H, K]
        dg = gate_gradient(q, k, dq, dk, final_state, d_final_state)
        dh0 = dh0.to(h0.dtype) if h0 is not None else None
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype), dh0


def hgrn2_recurrence_scan_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated outer-product recurrence by a Triton time scan: any ``K``, ``V``, fastest for ``K, V <= 8``.

    Args:
        q, k, g: ``[B, T, H, K]`` fp32/fp16/bf16; ``g`` is the log decay (``<= 0``).
        v: ``[B, T, H, V]``.
        initial_state: optional ``[B, H, K, V]``.
        output_final_state: also return ``S_T``.

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in the dtype of ``q``; ``final_state`` ``[B, H, K, V]`` fp32
        or ``None``. Differentiable in q, k, v, g and the initial state.
    """
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    h0 = initial_state.contiguous() if initial_state is not None else None
    o, final_state = ScanHGRN2Function.apply(q, k, v, g, h0)
    return o, (final_state if output_final_state else None)
