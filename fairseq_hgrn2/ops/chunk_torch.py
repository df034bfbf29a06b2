"""Chunked PyTorch implementation of the gated outer-product recurrence, with a hand-written backward.

The sequence is cut into chunks of ``C`` tokens. Inside a chunk, with ``b = cumsum(g)`` (chunk-local) and a
per-channel reference ``r = (b_first + b_last) / 2`` (the middle of the chunk's log-decay range):

* ``qt = q * exp(b - r)`` and ``kt = k * exp(r - b)``, so that the intra-chunk scores
  ``A_ij = sum_c q_ic k_jc exp(b_ic - b_jc)`` (``i >= j``) are one matmul ``tril(qt @ kt^T)``;
* inter-chunk: ``O += qt @ (exp(r)^T * S_start)`` and
  ``S_next = exp(b_last)^T * S_start + exp(b_last - r)^T * (kt^T @ V)``.

Every exponent is bounded by half the chunk's log-decay range ``R = b_first - b_last``; the chunk size is halved
(down to 1, where every exponent is 0) until ``R <= MAX_LOG_RANGE`` in every chunk and channel, so the factors stay
within ``exp(+-MAX_LOG_RANGE / 2)`` and nothing overflows or underflows in fp32 however strong the decay. Scores
above the diagonal may overflow; they are cut by ``tril`` before any use.

The backward recomputes the chunk states (nothing but the inputs is saved) and gets the gate gradient from the
identity ``dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + sum_v (S_T * dS_T)``. All the work runs in fp32 (fp64 for
fp64 inputs) whatever the input dtype.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Largest log-decay range allowed inside one chunk: exp(+-40) stays far from fp32's limits (exp(+-88)).
MAX_LOG_RANGE = 80.0


def default_chunk_size(head_dim: int) -> int:
    """Chunk size used when none is given: big matmuls for big heads, short score rows for small ones."""
    return 64 if head_dim >= 32 else 32


def stable_chunk_size(g: torch.Tensor, chunk_size: int) -> int:
    """Largest power-of-two fraction of ``chunk_size`` whose chunks all have a log-decay range <= MAX_LOG_RANGE.

    Args:
        g: ``[Z, T, K]`` log decays (``<= 0``), compute dtype.
        chunk_size: the largest chunk size allowed.
    """
    Z, T, K = g.shape
    C = chunk_size
    while C > 1:
        pad = -T % C
        gp = F.pad(g, (0, 0, 0, pad)) if pad else g
        # [Z, T', K] -> [Z, N, C, K]: minus the chunk sum bounds the range b_first - b_last from above
        if -gp.reshape(Z, -1, C, K).sum(2).min().item() <= MAX_LOG_RANGE:
            break
        C //= 2
    return C


def _chunk_scaled(q, k, g, C):
    """``qt``, ``kt``, ``scale = exp(b - r)`` (``[Z, N, C, K]``), ``r`` and ``b_last`` (``[Z, N, 1, K]``)."""
    b = g.cumsum(dim=2)  # [Z, N, C, K], chunk-local cumulative log decay, non-increasing in C
    b_last = b[:, :, -1:]  # [Z, N, 1, K]
    r = 0.5 * (b[:, :, :1] + b_last)  # [Z, N, 1, K]
    scale = torch.exp(b - r)  # [Z, N, C, K], within exp(+-MAX_LOG_RANGE / 2)
    return q * scale, k / scale, scale, r, b_last


def _start_states(kt, v, r, b_last, state):
    """States at the start of each chunk ``[Z, N, K, V]`` and the final state ``[Z, K, V]``."""
    updates = (torch.exp(b_last - r).transpose(-1, -2) * (kt.transpose(-1, -2) @ v))  # [Z, N, K, V]
    decay = torch.exp(b_last).transpose(-1, -2)  # [Z, N, K, 1]
    starts = torch.empty_like(updates)
    for n in range(updates.shape[1]):
        starts[:, n] = state
        state = torch.addcmul(updates[:, n], decay[:, n], state)
    return starts, state


def _to_chunks(x: torch.Tensor, C: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, H, D]`` -> ``[B*H, N, C, D]`` in ``dtype``, zero-padded to whole chunks."""
    B, T, H, D = x.shape
    x = x.to(dtype).transpose(1, 2)  # [B, H, T, D]
    pad = -T % C
    if pad:
        # padded rows have g = 0 (no decay) and q = k = v = 0: they change neither outputs nor the state
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(B * H, -1, C, D)  # [B*H, N, C, D]


def _from_chunks(x: torch.Tensor, B: int, T: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B*H, N, C, D]`` -> ``[B, T, H, D]`` in ``dtype`` (the padding cut off)."""
    Z, N, C, D = x.shape
    return x.reshape(B, Z // B, N * C, D)[:, :, :T].transpose(1, 2).to(dtype)  # [B, T, H, D]


class _ChunkedRecurrence(torch.autograd.Function):
    """Forward and backward of the chunked recurrence on ``[B, T, H, *]`` tensors (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, chunk_size):
        B, T, H, K = q.shape
        V = v.shape[-1]
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32
        g_c = g.to(cd).transpose(1, 2).reshape(B * H, T, K)  # [B, T, H, K] -> [B*H, T, K]
        C = stable_chunk_size(g_c, min(chunk_size, T))
        q_, k_, v_, g_ = (_to_chunks(x, C, cd) for x in (q, k, v, g))
        state = q_.new_zeros(B * H, K, V) if h0 is None else h0.to(cd).reshape(B * H, K, V)  # [B*H, K, V]
        qt, kt, _, r, b_last = _chunk_scaled(q_, k_, g_, C)
        starts, final = _start_states(kt, v_, r, b_last, state)
        scores = torch.tril(qt @ kt.transpose(-1, -2))  # [Z, N, C, C]
        o = torch.baddbmm(
            (scores @ v_).flatten(0, 1), qt.flatten(0, 1), (torch.exp(r).transpose(-1, -2) * starts).flatten(0, 1)
        )  # [Z*N, C, V]
        ctx.save_for_backward(q, k, v, g, h0)
        ctx.chunk = C
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return _from_chunks(o.view(B * H, -1, C, V), B, T, q.dtype), final.view(B, H, K, V)

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, g, h0 = ctx.saved_tensors
        C = ctx.chunk
        B, T, H, K = q.shape
        V = v.shape[-1]
        Z = B * H
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32
        q_, k_, v_, g_, do_ = (_to_chunks(x, C, cd) for x in (q, k, v, g, do))
        state = q_.new_zeros(Z, K, V) if h0 is None else h0.to(cd).reshape(Z, K, V)  # [Z, K, V]
        qt, kt, scale, r, b_last = _chunk_scaled(q_, k_, g_, C)
        starts, final = _start_states(kt, v_, r, b_last, state)
        exp_r = torch.exp(r).transpose(-1, -2)  # [Z, N, K, 1]
        decay = torch.exp(b_last).transpose(-1, -2)  # [Z, N, K, 1]
        to_end = torch.exp(b_last - r)  # [Z, N, 1, K]

        # gradient of the state at the start of each chunk, from the last chunk back to the first
        local = exp_r * (qt.transpose(-1, -2) @ do_)  # [Z, N, K, V], from this chunk's outputs
        d_final = d_final.to(cd).reshape(Z, K, V)  # [B, H, K, V] -> [Z, K, V]
        d_next = torch.empty_like(local)  # [Z, N, K, V]: gradient of the state at the end of chunk n
        grad = d_final
        for n in range(local.shape[1] - 1, -1, -1):
            d_next[:, n] = grad
            grad = torch.addcmul(local[:, n], decay[:, n], grad)
        d_h0 = grad

        d_scores = torch.tril(do_ @ v_.transpose(-1, -2))  # [Z, N, C, C]
        scores = torch.tril(qt @ kt.transpose(-1, -2))  # [Z, N, C, C]
        d_update = to_end.transpose(-1, -2) * d_next  # [Z, N, K, V], gradient of kt^T @ V
        dqt = torch.baddbmm(
            (d_scores @ kt).flatten(0, 1), do_.flatten(0, 1), (exp_r * starts).transpose(-1, -2).flatten(0, 1)
        ).view_as(qt)  # [Z, N, C, K]
        dkt = torch.baddbmm(
            (d_scores.transpose(-1, -2) @ qt).flatten(0, 1), v_.flatten(0, 1), d_update.transpose(-1, -2).flatten(0, 1)
        ).view_as(kt)  # [Z, N, C, K]
        dv = torch.baddbmm(
            (scores.transpose(-1, -2) @ do_).flatten(0, 1), kt.flatten(0, 1), d_update.flatten(0, 1)
        ).view_as(v_)  # [Z, N, C, V]
        # q = qt / scale and k = kt * scale: q dq = qt dqt, k dk = kt dkt
        dB = (qt * dqt - kt * dkt).reshape(Z, -1, K)  # [Z, N*C, K], gradient of the global cumsum of g
        dg = dB.flip(1).cumsum(1).flip(1) + (final * d_final).sum(-1).unsqueeze(1)  # [Z, N*C, K]
        dq = dqt * scale
        dk = dkt / scale
        dg = dg.view(Z, -1, C, K)  # [Z, N*C, K] -> [Z, N, C, K]
        d_h0 = None if h0 is None else d_h0.view(B, H, K, V).to(ctx.h0_dtype)
        return (
            _from_chunks(dq, B, T, q.dtype),
            _from_chunks(dk, B, T, k.dtype),
            _from_chunks(dv, B, T, v.dtype),
            _from_chunks(dg, B, T, g.dtype),
            d_h0,
            None,
        )


def hgrn2_recurrence_chunk_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated outer-product recurrence, chunked. Same signature and result as ``hgrn2_recurrence_ref``.

    Args:
        q, k, g: ``[B, T, H, K]``; ``g`` is the log decay (``<= 0``) per key channel.
        v: ``[B, T, H, V]``.
        initial_state: optional ``[B, H, K, V]`` state ``S_0``.
        output_final_state: also return ``S_T``.
        chunk_size: largest chunk size (a power of two; ``default_chunk_size(K)`` if ``None``); it is halved
            where the decay within a chunk is too strong for the scaled matmuls.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in the dtype of ``q``; ``final_state`` is ``[B, H, K, V]``
        in fp32 (fp64 for fp64 inputs), or ``None`` unless asked for.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    if chunk_size is None:
        chunk_size = default_chunk_size(K)
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if T == 0:
        state = q.new_zeros(B, H, K, V, dtype=compute_dtype) if initial_state is None else initial_state
        return v.new_zeros(B, 0, H, V, dtype=q.dtype), (state.to(compute_dtype) if output_final_state else None)
    o, final = _ChunkedRecurrence.apply(q, k, v, g, initial_state, chunk_size)
    return o, (final if output_final_state else None)
