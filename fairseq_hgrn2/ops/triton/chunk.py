"""Triton chunked kernels of the gated outer-product recurrence, for expand ratios e >= 16 (``tl.dot`` tiles).

One program owns one (batch, head, value block, segment of 64 tokens): it starts from the segment's state, computed
by ``states.py``, and walks its segment chunk by chunk of ``C = 16`` tokens, keeping the ``K x BV`` state in fp32
registers. Inside a chunk, with ``b = cumsum(g)`` (chunk-local, fp32):

* inter-chunk: ``O = (Q * exp(b)) S``, then ``S = exp(b_last) S + (K * exp(b_last - b))^T V``;
* intra-chunk: ``A_ij = sum_c q_ic k_jc exp(b_ic - b_jc)`` for ``i >= j``, built one key row ``j`` at a time
  with the exact pairwise decay, ``O += A V``.

Every exponent is a difference ``<= 0`` (clamped at 0 against rounding), and rows ``i < j`` are masked to
``-inf`` before the exp. The backward recomputes the segment states, gets the state gradients at the segment
ends (``states.py``), then one kernel per segment makes two sweeps: a forward sweep rebuilds ``S`` for ``dq``, a
reverse sweep carries ``dS`` (the gradient of the state) for ``dk`` and ``dv``. ``dg`` is the reverse cumsum of
``q dq - k dk`` plus the final-state term.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import autotune_configs, device_guard, next_power_of_2
from .states import SEGMENT, recurrence_backward, segment_states

CHUNK = 16
_CONFIGS = autotune_configs(
    [
        {"num_warps": 4, "num_stages": 1},
        {"num_warps": 8, "num_stages": 1},
        {"num_warps": 2, "num_stages": 1},
    ]
)


@triton.autotune(configs=_CONFIGS, key=["K", "V", "BK", "BV"])
@triton.jit(do_not_specialize=["T", "NS"])
def _chunk_fwd_kernel(
    q, k, v, g, states, o,
    T, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, SEG: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)  # heads on grid axis 0, which has no 65535 limit
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    rows = tl.arange(0, C)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mk = ck < K
    mv = cv < V
    base_k = i_b * T * H * K + i_h * K  # int64 offset of token 0 of this head in q, k, g
    base_v = i_b * T * H * V + i_h * V
    i_s = tl.program_id(2)
    p_s = (i_bh * NS + i_s) * K * V + ck[:, None] * V + cv[None, :]  # [BK, BV] in states [B*H, NS, K, V]
    m_s = mk[:, None] & mv[None, :]
    state = tl.load(states + p_s, mask=m_s, other=0.0)
    n_here = tl.minimum(SEG // C, tl.cdiv(T - i_s * SEG, C))  # chunks of this segment that hold tokens
    for c in range(n_here):
        n = i_s * (SEG // C) + c  # chunk index in the sequence
        t = n * C + rows  # [C]
        mt = t < T
        p_k = base_k + t.to(tl.int64)[:, None] * (H * K) + ck[None, :]  # [C, BK]
        p_v = base_v + t.to(tl.int64)[:, None] * (H * V) + cv[None, :]  # [C, BV]
        m_tk = mt[:, None] & mk[None, :]
        m_tv = mt[:, None] & mv[None, :]
        # padded rows and channels load g = k = q = v = 0: no decay and no contribution
        b_q = tl.load(q + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_b = tl.cumsum(b_g, axis=0)  # [C, BK], <= 0
        b_last = tl.sum(b_g, axis=0)  # [BK]
        b_o = tl.dot(b_q * tl.exp(b_b), state)  # [C, BV]
        # intra-chunk scores, one key row j at a time; b_j is rebuilt by a running sum of the g rows
        scores = tl.zeros([C, C], dtype=tl.float32)
        b_j = tl.zeros([BK], dtype=tl.float32)
        p_j = base_k + tl.cast(n * C, tl.int64) * (H * K) + ck  # [BK]
        for j in range(C):
            m_j = mk & (n * C + j < T)
            k_j = tl.load(k + p_j, mask=m_j, other=0.0).to(tl.float32)
            b_j += tl.load(g + p_j, mask=m_j, other=0.0).to(tl.float32)
            expo = tl.where(rows[:, None] >= j, tl.minimum(b_b - b_j[None, :], 0.0), float("-inf"))
            col = tl.sum(b_q * k_j[None, :] * tl.exp(expo), axis=1)  # [C]
            scores = tl.where(rows[None, :] == j, col[:, None], scores)
            p_j += H * K
        b_o += tl.dot(scores, b_v)
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_tv)
        k_to_end = b_k * tl.exp(tl.minimum(b_last[None, :] - b_b, 0.0))  # [C, BK]
        state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_to_end), b_v)


@triton.autotune(configs=_CONFIGS, key=["K", "V", "BK", "BV"])
@triton.jit(do_not_specialize=["T", "NS"])
def _chunk_bwd_kernel(
    q, k, v, g, states, do, dstates, dq, dk, dv,
    T, BH, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, SEG: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)  # heads on grid axis 0, which has no 65535 limit
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    rows = tl.arange(0, C)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mk = ck < K
    mv = cv < V
    base_k = i_b * T * H * K + i_h * K
    base_v = i_b * T * H * V + i_h * V
    part = i_v.to(tl.int64) * BH * T * K  # dq, dk: partial sums over value blocks, [NV, B, T, H, K]
    i_s = tl.program_id(2)
    p_s = (i_bh * NS + i_s) * K * V + ck[:, None] * V + cv[None, :]  # [BK, BV] in [B*H, NS, K, V]
    m_s = mk[:, None] & mv[None, :]

    # forward sweep from the segment's start state:
    # dq_i = exp(b_i) (S do_i) + sum_{j <= i} (do_i . v_j) k_j exp(b_i - b_j)
    state = tl.load(states + p_s, mask=m_s, other=0.0)
    n_here = tl.minimum(SEG // C, tl.cdiv(T - i_s * SEG, C))
    for c in range(n_here):
        n = i_s * (SEG // C) + c
        t = n * C + rows
        mt = t < T
        p_k = base_k + t.to(tl.int64)[:, None] * (H * K) + ck[None, :]
        p_v = base_v + t.to(tl.int64)[:, None] * (H * V) + cv[None, :]
        m_tk = mt[:, None] & mk[None, :]
        m_tv = mt[:, None] & mv[None, :]
        b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_b = tl.cumsum(b_g, axis=0)
        b_last = tl.sum(b_g, axis=0)
        b_dq = tl.dot(b_do, tl.trans(state)) * tl.exp(b_b)  # [C, BK]
        do_v = tl.dot(b_do, tl.trans(b_v))  # [C, C]: do_i . v_j
        b_j = tl.zeros([BK], dtype=tl.float32)
        p_j = base_k + tl.cast(n * C, tl.int64) * (H * K) + ck
        for j in range(C):
            m_j = mk & (n * C + j < T)
            k_j = tl.load(k + p_j, mask=m_j, other=0.0).to(tl.float32)
            b_j += tl.load(g + p_j, mask=m_j, other=0.0).to(tl.float32)
            expo = tl.where(rows[:, None] >= j, tl.minimum(b_b - b_j[None, :], 0.0), float("-inf"))
            coef = tl.sum(tl.where(rows[None, :] == j, do_v, 0.0), axis=1)  # [C], column j
            b_dq += coef[:, None] * k_j[None, :] * tl.exp(expo)
            p_j += H * K
        tl.store(dq + part + p_k, b_dq, mask=m_tk)
        k_to_end = b_k * tl.exp(tl.minimum(b_last[None, :] - b_b, 0.0))
        state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_to_end), b_v)

    # reverse sweep: d_state is the gradient of the state at the end of the chunk, from the tokens after it
    d_state = tl.load(dstates + p_s, mask=m_s, other=0.0)
    for i in range(n_here):
        n = i_s * (SEG // C) + (n_here - 1 - i)
        t = n * C + rows
        mt = t < T
        p_k = base_k + t.to(tl.int64)[:, None] * (H * K) + ck[None, :]
        p_v = base_v + t.to(tl.int64)[:, None] * (H * V) + cv[None, :]
        m_tk = mt[:, None] & mk[None, :]
        m_tv = mt[:, None] & mv[None, :]
        b_q = tl.load(q + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_b = tl.cumsum(b_g, axis=0)
        b_last = tl.sum(b_g, axis=0)
        to_end = tl.exp(tl.minimum(b_last[None, :] - b_b, 0.0))  # [C, BK]
        b_dv = tl.dot(b_k * to_end, d_state)  # [C, BV]
        b_dk = tl.dot(b_v, tl.trans(d_state)) * to_end  # [C, BK]
        do_v = tl.dot(b_do, tl.trans(b_v))  # [C, C]: do_j . v_i
        scores = tl.zeros([C, C], dtype=tl.float32)
        b_j = tl.zeros([BK], dtype=tl.float32)
        p_j = base_k + tl.cast(n * C, tl.int64) * (H * K) + ck
        for j in range(C):
            m_j = mk & (n * C + j < T)
            q_j = tl.load(q + p_j, mask=m_j, other=0.0).to(tl.float32)
            k_j = tl.load(k + p_j, mask=m_j, other=0.0).to(tl.float32)
            b_j += tl.load(g + p_j, mask=m_j, other=0.0).to(tl.float32)
            # forward scores A[:, j] (rows i >= j), for dv = A^T do
            expo = tl.where(rows[:, None] >= j, tl.minimum(b_b - b_j[None, :], 0.0), float("-inf"))
            col = tl.sum(b_q * k_j[None, :] * tl.exp(expo), axis=1)
            scores = tl.where(rows[None, :] == j, col[:, None], scores)
            # dk_i += (do_j . v_i) q_j exp(b_j - b_i) for rows i <= j
            expo = tl.where(rows[:, None] <= j, tl.minimum(b_j[None, :] - b_b, 0.0), float("-inf"))
            coef = tl.sum(tl.where(rows[:, None] == j, do_v, 0.0), axis=0)  # [C], row j
            b_dk += coef[:, None] * q_j[None, :] * tl.exp(expo)
            p_j += H * K
        b_dv += tl.dot(tl.trans(scores), b_do)
        tl.store(dk + part + p_k, b_dk, mask=m_tk)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_tv)
        d_state = d_state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(b_q * tl.exp(b_b)), b_do)


def chunk_tiles(K: int, V: int) -> Tuple[int, int]:
    """``(BK, BV)``: the whole key width per program (at least 16 for ``tl.dot``), values in blocks of <= 64."""
    return max(16, next_power_of_2(K)), max(16, min(64, next_power_of_2(V)))


class ChunkHGRN2Function(torch.autograd.Function):
    """Autograd wrapper of the chunked kernels; returns ``(o, final_state)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV = chunk_tiles(K, V)
        states, final_state = segment_states(k, v, g, h0)  # [B*H, NS, K, V], [B, H, K, V]
        NS = states.shape[1]
        o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
        _chunk_fwd_kernel[(B * H, triton.cdiv(V, BV), NS)](
            q, k, v, g, states, o, T, NS, H=H, K=K, V=V, C=CHUNK, SEG=SEGMENT, BK=BK, BV=BV
        )
        ctx.save_for_backward(q, k, v, g, h0, final_state)
        return o, final_state

    @staticmethod
    def backward(ctx, do, d_final_state):
        q, k, v, g = ctx.saved_tensors[:4]
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV = chunk_tiles(K, V)
        NV = triton.cdiv(V, BV)

        def launch(states, dstates, do, dq, dk, dv):
            _chunk_bwd_kernel[(B * H, NV, states.shape[1])](
                q, k, v, g, states, do, dstates, dq, dk, dv, T, B * H, states.shape[1],
                H=H, K=K, V=V, C=CHUNK, SEG=SEGMENT, BK=BK, BV=BV,
            )

        return recurrence_backward(ctx.saved_tensors, do, d_final_state, NV, launch)


def hgrn2_recurrence_chunk_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated outer-product recurrence by the chunked Triton kernels; needs ``K, V <= 128`` (``>= 16`` to be fast).

    Args:
        q, k, g: ``[B, T, H, K]`` fp32/fp16/bf16; ``g`` is the log decay (``<= 0``).
        v: ``[B, T, H, V]``.
        initial_state: optional ``[B, H, K, V]``.
        output_final_state: also return ``S_T``.

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in the dtype of ``q``; ``final_state`` ``[B, H, K, V]`` fp32
        or ``None``. Differentiable in q, k, v, g and the initial state.
    """
    if q.shape[-1] > 128:
        raise ValueError(f"the chunked Triton kernel holds the key width in one tile: K = {q.shape[-1]} > 128")
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    h0 = initial_state.contiguous() if initial_state is not None else None
    with device_guard(q):
        o, final_state = ChunkHGRN2Function.apply(q, k, v, g, h0)
    return o, (final_state if output_final_state else None)
