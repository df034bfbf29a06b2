"""Triton kernels that pass the state (forward) and its gradient (backward) from segment to segment.

The sequence is cut into segments of ``SEGMENT`` tokens so that the chunked and scan kernels can run every
segment in parallel: these two sequential kernels first compute what each segment needs from the others.

* ``segment_states``: the state at the start of every segment, ``[B*H, NS, K, V]`` fp32, and the final state:
  per segment, ``S = exp(b_last) S + (K * exp(b_last - b))^T V`` with ``b = cumsum(g)`` over the segment;
* ``segment_state_grads``: the gradient of the state at the end of every segment from the tokens after it,
  ``[B*H, NS, K, V]``, and the gradient of the initial state: ``dS = exp(b_last) dS + (Q * exp(b))^T dO``
  walking backwards, one whole segment per step.

Both only exp differences ``<= 0``; padded rows load ``g = 0`` and zeros, which change nothing. Tiles are at
least 16 wide for ``tl.dot`` (masked when the head is narrower).
"""
from typing import Callable, Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import gate_gradient, next_power_of_2

SEGMENT = 64  # tokens per segment: a multiple of the 16-token chunk of chunk.py


@triton.jit(do_not_specialize=["T", "NS"])
def _segment_states_kernel(
    k, v, g, h0, states, ht,
    T, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    SEG: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    rows = tl.arange(0, SEG)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mk = ck < K
    mv = cv < V
    base_k = i_b * T * H * K + i_h * K
    base_v = i_b * T * H * V + i_h * V
    p_s = ck[:, None] * V + cv[None, :]  # [BK, BV] inside one [K, V] state
    m_s = mk[:, None] & mv[None, :]
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + i_bh * K * V + p_s, mask=m_s, other=0.0).to(tl.float32)
    for s in range(NS):
        tl.store(states + (i_bh * NS + s) * K * V + p_s, state, mask=m_s)
        t = s * SEG + rows  # [SEG]
        mt = t < T
        p_k = base_k + t.to(tl.int64)[:, None] * (H * K) + ck[None, :]  # [SEG, BK]
        p_v = base_v + t.to(tl.int64)[:, None] * (H * V) + cv[None, :]  # [SEG, BV]
        b_k = tl.load(k + p_k, mask=mt[:, None] & mk[None, :], other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=mt[:, None] & mk[None, :], other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=mt[:, None] & mv[None, :], other=0.0).to(tl.float32)
        b_b = tl.cumsum(b_g, axis=0)  # [SEG, BK], segment-local
        b_last = tl.sum(b_g, axis=0)  # [BK]
        k_to_end = b_k * tl.exp(tl.minimum(b_last[None, :] - b_b, 0.0))
        state = state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_to_end), b_v)
    tl.store(ht + i_bh * K * V + p_s, state, mask=m_s)


@triton.jit(do_not_specialize=["T", "NS"])
def _segment_state_grads_kernel(
    q, g, do, dht, dstates, dh0,
    T, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    SEG: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DHT: tl.constexpr, HAS_H0: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    rows = tl.arange(0, SEG)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mk = ck < K
    mv = cv < V
    base_k = i_b * T * H * K + i_h * K
    base_v = i_b * T * H * V + i_h * V
    p_s = ck[:, None] * V + cv[None, :]
    m_s = mk[:, None] & mv[None, :]
    d_state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        d_state += tl.load(dht + i_bh * K * V + p_s, mask=m_s, other=0.0).to(tl.float32)
    for i in range(NS):
        s = NS - 1 - i
        tl.store(dstates + (i_bh * NS + s) * K * V + p_s, d_state, mask=m_s)
        t = s * SEG + rows
        mt = t < T
        p_k = base_k + t.to(tl.int64)[:, None] * (H * K) + ck[None, :]
        p_v = base_v + t.to(tl.int64)[:, None] * (H * V) + cv[None, :]
        b_q = tl.load(q + p_k, mask=mt[:, None] & mk[None, :], other=0.0).to(tl.float32)
        b_g = tl.load(g + p_k, mask=mt[:, None] & mk[None, :], other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=mt[:, None] & mv[None, :], other=0.0).to(tl.float32)
        b_b = tl.cumsum(b_g, axis=0)
        b_last = tl.sum(b_g, axis=0)
        d_state = d_state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(b_q * tl.exp(b_b)), b_do)
    if HAS_H0:
        tl.store(dh0 + i_bh * K * V + p_s, d_state, mask=m_s)


def _tiles(K: int, V: int) -> Tuple[int, int]:
    return max(16, next_power_of_2(K)), max(16, min(64, next_power_of_2(V)))


def segment_states(
    k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, h0: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """States at the start of each segment ``[B*H, NS, K, V]`` and the final state ``[B, H, K, V]``, fp32.

    ``k, g``: ``[B, T, H, K]``, ``v``: ``[B, T, H, V]`` contiguous; ``h0``: optional ``[B, H, K, V]``.
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    NS = max(1, triton.cdiv(T, SEGMENT))
    BK, BV = _tiles(K, V)
    states = torch.empty(B * H, NS, K, V, dtype=torch.float32, device=k.device)
    final_state = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device)
    _segment_states_kernel[(B * H, triton.cdiv(V, BV))](
        k, v, g, h0, states, final_state, T, NS, H=H, K=K, V=V, SEG=SEGMENT, BK=BK, BV=BV,
        HAS_H0=h0 is not None, num_warps=4 if BK * BV <= 4096 else 8,
    )
    return states, final_state


def segment_state_grads(
    q: torch.Tensor, g: torch.Tensor, do: torch.Tensor, dht: Optional[torch.Tensor], want_dh0: bool
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gradients of the state at the end of each segment from the tokens after it, ``[B*H, NS, K, V]`` fp32, and
    of the initial state ``[B, H, K, V]`` fp32 (``None`` unless ``want_dh0``).

    ``q, g``: ``[B, T, H, K]``, ``do``: ``[B, T, H, V]`` contiguous; ``dht``: optional ``[B, H, K, V]``.
    """
    B, T, H, K = q.shape
    V = do.shape[-1]
    NS = max(1, triton.cdiv(T, SEGMENT))
    BK, BV = _tiles(K, V)
    dstates = torch.empty(B * H, NS, K, V, dtype=torch.float32, device=q.device)
    dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if want_dh0 else None
    _segment_state_grads_kernel[(B * H, triton.cdiv(V, BV))](
        q, g, do, dht, dstates, dh0, T, NS, H=H, K=K, V=V, SEG=SEGMENT, BK=BK, BV=BV,
        HAS_DHT=dht is not None, HAS_H0=want_dh0, num_warps=4 if BK * BV <= 4096 else 8,
    )
    return dstates, dh0


def recurrence_backward(
    saved: Tuple[torch.Tensor, ...],
    do: torch.Tensor,
    d_final_state: Optional[torch.Tensor],
    value_blocks: int,
    launch: Callable[..., None],
) -> Tuple[Optional[torch.Tensor], ...]:
    """The backward shared by the chunked and scan paths, around the path's own backward kernel.

    Recomputes the segment states (nothing but the inputs is kept from the forward), passes the state gradient
    between segments, lets ``launch(states, dstates, do, dq, dk, dv)`` fill ``dq, dk`` (``[value_blocks, B, T, H,
    K]`` fp32, partial sums per value block) and ``dv``, then gets ``dg`` from ``gate_gradient``.

    Args:
        saved: ``(q, k, v, g, h0, final_state)`` as the forward saved them.
        do: ``[B, T, H, V]``; d_final_state: optional ``[B, H, K, V]``.

    Returns:
        ``(dq, dk, dv, dg, dh0)`` in the dtypes of ``q, k, v, g, h0``.
    """
    q, k, v, g, h0, final_state = saved
    B, T, H, K = q.shape
    dq = torch.empty(value_blocks, B, T, H, K, dtype=torch.float32, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(v)
    do = do.contiguous()
    d_final_state = d_final_state.contiguous() if d_final_state is not None else None
    states, _ = segment_states(k, v, g, h0)  # recomputed rather than kept from the forward
    dstates, dh0 = segment_state_grads(q, g, do, d_final_state, h0 is not None)
    launch(states, dstates, do, dq, dk, dv)
    dq, dk = dq.sum(0), dk.sum(0)  # [NV, B, T, H, K] -> [B, T, H, K]
    dg = gate_gradient(q, k, dq, dk, final_state, d_final_state)
    dh0 = dh0.to(h0.dtype) if h0 is not None else None
    return dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype), dh0
