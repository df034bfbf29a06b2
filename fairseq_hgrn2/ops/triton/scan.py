"""Triton recurrent scan of the gated outer-product recurrence, for small expand ratios (e = 1..8).

Below the 16-wide minimum of ``tl.dot`` the chunked kernel does not apply. Here each program keeps the ``K x BV``
states of ``NH`` heads in registers and walks one segment of the sequence one token at a time with elementwise
products and reductions: ``S = exp(g_t) S + k_t^T v_t``, ``o_t = q_t S``. Several heads per program keep the tiles
wide; the segments (64 tokens) run in parallel from start states computed by ``states.py``. The only exponent is
``g_t <= 0``. The backward recomputes: a forward sweep rebuilds the states for ``dq``, a reverse sweep from the
state gradient at the segment's end carries ``dS`` for ``dk`` and ``dv``; ``dg`` follows from ``dq`` and ``dk``.
The forward kernel also serves the decoding step (``step.py``): one segment, the state as its start and its end.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import device_guard, next_power_of_2
from .states import SEGMENT, recurrence_backward, segment_states


@triton.jit(do_not_specialize=["T", "NS", "SEG"])
def _scan_fwd_kernel(
    q, k, v, g, states, o, ht,
    T, BH, NS, SEG,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    NH: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    i_v = tl.program_id(1)
    i_s = tl.program_id(2)
    t0 = (i_s * SEG).to(tl.int64)  # first token of this segment
    bh = tl.program_id(0) * NH + tl.arange(0, NH)  # [NH] flattened (batch, head) indices
    mh = bh < BH
    bh64 = bh.to(tl.int64)
    i_b = bh64 // H
    i_h = bh64 % H
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    m_k = mh[:, None] & (ck < K)[None, :]  # [NH, BK]
    m_v = mh[:, None] & (cv < V)[None, :]  # [NH, BV]
    p_k = i_b[:, None] * T * H * K + t0 * H * K + i_h[:, None] * K + ck[None, :]  # [NH, BK] int64, token t0
    p_v = i_b[:, None] * T * H * V + t0 * H * V + i_h[:, None] * V + cv[None, :]  # [NH, BV] int64, token t0
    p_kv = ck[None, :, None] * V + cv[None, None, :]  # [1, BK, BV] inside one [K, V] state
    m_s = m_k[:, :, None] & m_v[:, None, :]
    state = tl.load(states + (bh64 * NS + i_s)[:, None, None] * K * V + p_kv, mask=m_s, other=0.0).to(tl.float32)
    for _ in range(tl.minimum(SEG, T - i_s * SEG)):
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
        tl.store(ht + bh64[:, None, None] * K * V + p_kv, state, mask=m_s)


@triton.jit(do_not_specialize=["T", "NS", "SEG"])
def _scan_bwd_kernel(
    q, k, v, g, states, do, dstates, dq, dk, dv,
    T, BH, NS, SEG,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    NH: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    i_v = tl.program_id(1)
    i_s = tl.program_id(2)
    t0 = (i_s * SEG).to(tl.int64)
    n_here = tl.minimum(SEG, T - i_s * SEG)  # tokens in this segment
    bh = tl.program_id(0) * NH + tl.arange(0, NH)  # [NH]
    mh = bh < BH
    bh64 = bh.to(tl.int64)
    i_b = bh64 // H
    i_h = bh64 % H
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    m_k = mh[:, None] & (ck < K)[None, :]
    m_v = mh[:, None] & (cv < V)[None, :]
    base_k = i_b[:, None] * T * H * K + t0 * H * K + i_h[:, None] * K + ck[None, :]  # [NH, BK] int64, token t0
    base_v = i_b[:, None] * T * H * V + t0 * H * V + i_h[:, None] * V + cv[None, :]  # [NH, BV] int64, token t0
    # dq and dk are partial sums over this program's value block: one slice of [NV, B, T, H, K] each
    part = i_v.to(tl.int64) * BH * T * K
    p_s = (bh64 * NS + i_s)[:, None, None] * K * V + ck[None, :, None] * V + cv[None, None, :]  # [NH, BK, BV]
    m_s = m_k[:, :, None] & m_v[:, None, :]

    # forward sweep from the segment's start state: dq_t = S_t do_t
    state = tl.load(states + p_s, mask=m_s, other=0.0)
    p_k = base_k
    p_v = base_v
    for _ in range(n_here):
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.0).to(tl.float32)
        state = state * tl.exp(b_g)[:, :, None] + b_k[:, :, None] * b_v[:, None, :]
        b_dq = tl.sum(state * b_do[:, None, :], axis=2)  # [NH, BK]
        tl.store(dq + part + p_k, b_dq, mask=m_k)
        p_k += H * K
        p_v += H * V

    # reverse sweep from the segment's end: dS_t = q_t^T do_t + exp(g_{t+1}) dS_{t+1}; dk_t = dS_t v_t, dv_t = k_t dS_t
    d_state = tl.load(dstates + p_s, mask=m_s, other=0.0)
    p_k = base_k + (n_here - 1).to(tl.int64) * (H * K)
    p_v = base_v + (n_here - 1).to(tl.int64) * (H * V)
    for _ in range(n_here):
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


def scan_tiles(K: int, V: int, BH: int) -> Tuple[int, int, int, int]:
    """``(NH, BK, BV, num_warps)``: heads per program and the state tile, about 2K fp32 values per program."""
    BK = max(2, next_power_of_2(K))  # no tile dimension of 1
    BV = max(2, min(next_power_of_2(V), 4096 // BK))
    NH = max(1, min(16, next_power_of_2(BH), 2048 // (BK * BV)))
    num_warps = 4 if NH * BK * BV >= 1024 else 1
    return NH, BK, BV, num_warps


def scan_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    states: torch.Tensor, n_segments: int, segment: int, final_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the forward scan over segments of ``segment`` tokens in parallel.

    Inputs are contiguous ``[B, T, H, K|V]``; ``states`` holds the start state of each of the ``n_segments``
    segments, ``[B*H, NS, K, V]`` fp32. ``final_state`` (``[B, H, K, V]`` fp32, may alias ``states`` when ``NS = 1``) is
    written when given, from the last segment only: pass it with a single segment. Returns ``o`` ``[B, T, H, V]``
    in the dtype of ``q``.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    NS = n_segments
    if final_state is not None and NS != 1:
        raise ValueError("the scan stores a final state only for a single segment")
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    NH, BK, BV, num_warps = scan_tiles(K, V, B * H)
    grid = (triton.cdiv(B * H, NH), triton.cdiv(V, BV), NS)  # heads on axis 0: no 65535 limit
    _scan_fwd_kernel[grid](
        q, k, v, g, states, o, final_state, T, B * H, NS, segment, H=H, K=K, V=V, NH=NH, BK=BK, BV=BV,
        STORE_HT=final_state is not None, num_warps=num_warps,
    )
    return o


class ScanHGRN2Function(torch.autograd.Function):
    """Autograd wrapper of the scan kernels; returns ``(o, final_state)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0):
        states, final_state = segment_states(k, v, g, h0)  # [B*H, NS, K, V], [B, H, K, V]
        o = scan_forward(q, k, v, g, states, states.shape[1], SEGMENT)
        ctx.save_for_backward(q, k, v, g, h0, final_state)
        return o, final_state

    @staticmethod
    def backward(ctx, do, d_final_state):
        q, k, v, g = ctx.saved_tensors[:4]
        B, T, H, K = q.shape
        V = v.shape[-1]
        NH, BK, BV, num_warps = scan_tiles(K, V, B * H)
        NV = triton.cdiv(V, BV)

        def launch(states, dstates, do, dq, dk, dv):
            _scan_bwd_kernel[(triton.cdiv(B * H, NH), NV, states.shape[1])](
                q, k, v, g, states, do, dstates, dq, dk, dv, T, B * H, states.shape[1], SEGMENT,
                H=H, K=K, V=V, NH=NH, BK=BK, BV=BV, num_warps=num_warps,
            )

        return recurrence_backward(ctx.saved_tensors, do, d_final_state, NV, launch)


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
    with device_guard(q):
        o, final_state = ScanHGRN2Function.apply(q, k, v, g, h0)
    return o, (final_state if output_final_state else None)
