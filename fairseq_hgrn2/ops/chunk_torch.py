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

Heads with a small state (``K * V <= SMALL_STATE``, e <= 8) skip the ``[C, C]`` scores, whose matmuls would
have an inner size of ``e``: they take chunk-local prefix sums of ``kt (x) v`` (``[C, K, V]`` per chunk, elementwise)
and read ``o_t = qt_t . (exp(r) S_start + prefix_t)``.

The backward recomputes the chunk states (nothing but the inputs is saved) and gets the gate gradient from the
identity ``dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + sum_v (S_T * dS_T)``. All the work runs in fp32 (fp64 for
fp64 inputs) whatever the input dtype.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Largest log-decay range allowed inside one chunk: exp(+-40) stays far from fp32's limits (exp(+-88)).
MAX_LOG_RANGE = 80.0


# Heads whose state has at most this many entries take the elementwise path (see ``_ChunkedRecurrence``).
SMALL_STATE = 64


def default_chunk_size(head_dim: int) -> int:
    """Chunk size used when none is given: about the head size (scores cost ``C`` per channel, the state ``K``)."""
    if head_dim * head_dim <= SMALL_STATE:
        return 64
    return max(16, min(64, head_dim))


def stable_chunk_size(g: torch.Tensor, chunk_size: int) -> int:
    """Largest power-of-two fraction of ``chunk_size`` whose chunks all have a log-decay range <= MAX_LOG_RANGE.

    Args:
        g: ``[B, T, H, K]`` log decays (``<= 0``).
        chunk_size: the largest chunk size allowed (a power of two).
    """
    B, T, H, K = g.shape
    C = chunk_size
    while C > 1:
        pad = -T % C
        gp = F.pad(g, (0, 0, 0, 0, 0, pad)) if pad else g
        # [B, T', H, K] -> [B, N, C, H, K]: minus the chunk sum bounds the range b_first - b_last from above
        if -gp.reshape(B, -1, C, H, K).sum(2, dtype=torch.float64).min().item() <= MAX_LOG_RANGE:
            break
        C //= 2
    return C


def _chunk_scaled(q, k, g):
    """``qt``, ``kt``, ``scale = exp(b - r)`` (``[N, Z, C, K]``), ``r`` and ``b_last`` (``[N, Z, 1, K]``)."""
    b = g.cumsum(dim=2)  # [N, Z, C, K], chunk-local cumulative log decay, non-increasing in C
    b_last = b[:, :, -1:].clone()  # [N, Z, 1, K]
    r = 0.5 * (b[:, :, :1] + b_last)  # [N, Z, 1, K]
    scale = b.sub_(r).exp_()  # [N, Z, C, K], exp(b - r), within exp(+-MAX_LOG_RANGE / 2)
    return q * scale, k / scale, scale, r, b_last


# PyTorch runs an elementwise op on one thread below this many elements (at::internal::GRAIN_SIZE).
_SERIAL_NUMEL = 32768


def _serial_slices(state: torch.Tensor):
    """Slices of the first dim of ``state`` ``[Z, K, V]`` small enough that each op on them runs on one thread.

    The state loops run ``N`` tiny steps one after the other: on a busy machine each multi-threaded step can wait
    a whole scheduler time slice at its barrier (measured under load at e=128: 63 steps took 0.75 s on two
    threads, 0.013 s on one), so they are cut below PyTorch's parallel grain size instead.
    """
    Z = state.shape[0]
    step = max(1, _SERIAL_NUMEL // max(1, state[0].numel()))
    return [slice(z, min(Z, z + step)) for z in range(0, Z, step)]


def _prefix_states(kt, v):
    """Chunk-local prefix sums ``sum_{s <= t} kt_s (x) v_s`` ``[B, N, C, K, V, H]`` (the elementwise path)."""
    return (kt.unsqueeze(4) * v.unsqueeze(3)).cumsum(2)  # [B, N, C, K, 1, H] * [B, N, C, 1, V, H]


def _start_states_from(kv, r, b_last, state):
    """States at the start of each chunk ``[N, Z, K, V]`` and the final state ``[Z, K, V]``.

    ``kv = kt^T @ V`` (``[N, Z, K, V]``) of each chunk; it is scaled in place into the chunk's state update.
    """
    updates = kv.mul_(torch.exp(b_last - r).transpose(-1, -2))  # [N, Z, K, V]
    decay = torch.exp(b_last).transpose(-1, -2)  # [N, Z, K, 1]
    N = updates.shape[0]
    starts = torch.empty_like(updates)
    starts[0] = state
    final = torch.empty_like(state)
    for z in _serial_slices(state):
        for n in range(N - 1):  # S_{n+1} = decay_n * S_n + U_n, written in place
            torch.addcmul(updates[n, z], decay[n, z], starts[n, z], out=starts[n + 1, z])
        torch.addcmul(updates[N - 1, z], decay[N - 1, z], starts[N - 1, z], out=final[z])
    return starts, final


def _to_chunks(x: torch.Tensor, C: int, dtype: torch.dtype, small: bool) -> torch.Tensor:
    """``[B, T, H, D]`` -> ``[N, B*H, C, D]`` (``small``: ``[B, N, C, D, H]``) in ``dtype``, zero-padded."""
    B, T, H, D = x.shape
    pad = -T % C
    if pad:
        # padded rows have g = 0 (no decay) and q = k = v = 0: they change neither outputs nor the state
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
    x = x.reshape(B, -1, C, H, D)  # [B, N, C, H, D]
    if small:  # elementwise work only: heads innermost, so that every op runs along a long contiguous axis
        return x.transpose(3, 4).to(dtype=dtype, memory_format=torch.contiguous_format)  # [B, N, C, D, H]
    x = x.permute(1, 0, 3, 2, 4)  # [B, N, C, H, D] -> [N, B, H, C, D]
    return x.to(dtype=dtype, memory_format=torch.contiguous_format).reshape(-1, B * H, C, D)  # [N, B*H, C, D]


def _from_chunks(x: torch.Tensor, B: int, T: int, dtype: torch.dtype) -> torch.Tensor:
    """``[N, B*H, C, D]`` or ``[B, N, C, D, H]`` -> ``[B, T, H, D]`` in ``dtype`` (the padding cut off)."""
    if x.dim() == 5:
        x = x.transpose(3, 4)  # [B, N, C, D, H] -> [B, N, C, H, D]
        return x.reshape(B, -1, x.shape[3], x.shape[4])[:, :T].to(dtype)  # [B, N*C, H, D] -> [B, T, H, D]
    N, Z, C, D = x.shape
    x = x.reshape(N, B, Z // B, C, D).permute(1, 0, 3, 2, 4)  # [N, B, H, C, D] -> [B, N, C, H, D]
    return x.reshape(B, N * C, Z // B, D)[:, :T].to(dtype)  # [B, T, H, D]


def _chunk_major(x: torch.Tensor) -> torch.Tensor:
    """A fresh ``[N, B*H, *]`` copy of a per-chunk tensor ``[B, N, *, H]`` (the small path's state loop layout)."""
    B, N, H = x.shape[0], x.shape[1], x.shape[-1]
    x = x.movedim(-1, 2).transpose(0, 1)  # [B, N, *, H] -> [N, B, H, *]
    return x.clone(memory_format=torch.contiguous_format).view(N, B * H, *x.shape[3:])


def _batch_major(x: torch.Tensor, B: int) -> torch.Tensor:
    """``[N, B*H, *]`` -> the view ``[B, N, 1, *, H]`` that broadcasts over the rows of a chunk."""
    N, Z = x.shape[:2]
    return x.view(N, B, Z // B, *x.shape[2:]).transpose(0, 1).movedim(2, -1).unsqueeze(2)


def _reverse_cumsum_in_time(x: torch.Tensor, chunk_dim: int) -> torch.Tensor:
    """``y_t = sum_{s >= t} x_s`` over the time axes ``(N, C)`` = dims ``(chunk_dim, 2)`` of ``x``."""
    within = x.flip(2).cumsum(2).flip(2)  # suffix sums inside each chunk
    totals = within.narrow(2, 0, 1)  # sum of each chunk
    later = torch.zeros_like(totals)  # sum of all the later chunks
    N = x.shape[chunk_dim]
    suffix = totals.narrow(chunk_dim, 1, N - 1).flip(chunk_dim).cumsum(chunk_dim).flip(chunk_dim)
    later.narrow(chunk_dim, 0, N - 1).copy_(suffix)
    return within.add_(later)


class _ChunkedRecurrence(torch.autograd.Function):
    """Forward and backward of the chunked recurrence on ``[B, T, H, *]`` tensors (see the module docstring).

    Inside, tensors are ``[N, Z, C, D]`` (chunk, batch*head, row, channel) so that each chunk's slice of the
    sequential state loop is contiguous; the small-state path works in ``[B, N, C, D, H]`` (heads innermost) and
    moves only the per-chunk states to ``[N, Z, K, V]``.
    """

    @staticmethod
    def forward(ctx, q, k, v, g, h0, chunk_size):
        B, T, H, K = q.shape
        V = v.shape[-1]
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32
        C = stable_chunk_size(g, min(chunk_size, T))
        small = K * V <= SMALL_STATE
        q_, k_, v_, g_ = (_to_chunks(x, C, cd, small) for x in (q, k, v, g))
        state = q_.new_zeros(B * H, K, V) if h0 is None else h0.to(cd).reshape(B * H, K, V)  # [Z, K, V]
        qt, kt, _, r, b_last = _chunk_scaled(q_, k_, g_)
        if small:
            prefix = _prefix_states(kt, v_)  # [B, N, C, K, V, H]
            r_n, b_last_n = (_chunk_major(x.squeeze(2)).unsqueeze(2) for x in (r, b_last))  # [N, Z, 1, K]
            starts, final = _start_states_from(_chunk_major(prefix[:, :, -1]), r_n, b_last_n, state)
            starts = _batch_major(starts.mul_(torch.exp(r_n).transpose(-1, -2)), B)  # [B, N, 1, K, V, H]
            # o = qt . (exp(r) S_start + prefix): [B, N, C, K, 1, H] * [B, N, C, K, V, H] -> sum over K
            o = (qt.unsqueeze(4) * prefix.add_(starts)).sum(3)  # [B, N, C, V, H]
        else:
            starts, final = _start_states_from(kt.transpose(-1, -2) @ v_, r, b_last, state)
            scores = torch.matmul(qt, kt.transpose(-1, -2)).tril_()  # [N, Z, C, C]
            o = scores @ v_  # [N, Z, C, V]
            o.view(-1, C, V).baddbmm_(  # [N*Z, C, V]
                qt.reshape(-1, C, K), starts.mul_(torch.exp(r).transpose(-1, -2)).reshape(-1, K, V)
            )
        ctx.save_for_backward(q, k, v, g, h0)
        ctx.chunk = C
        return _from_chunks(o, B, T, q.dtype), final.view(B, H, K, V)

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, g, h0 = ctx.saved_tensors
        C = ctx.chunk
        B, T, H, K = q.shape
        V = v.shape[-1]
        Z = B * H
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32
        small = K * V <= SMALL_STATE
        q_, k_, v_, g_, do_ = (_to_chunks(x, C, cd, small) for x in (q, k, v, g, do))
        state = q_.new_zeros(Z, K, V) if h0 is None else h0.to(cd).reshape(Z, K, V)  # [Z, K, V]
        qt, kt, scale, r, b_last = _chunk_scaled(q_, k_, g_)
        if small:
            prefix = _prefix_states(kt, v_)  # [B, N, C, K, V, H]
            r, b_last = (_chunk_major(x.squeeze(2)).unsqueeze(2) for x in (r, b_last))  # [N, Z, 1, K]
            starts, final = _start_states_from(_chunk_major(prefix[:, :, -1]), r, b_last, state)
            # d(prefix)_t = qt_t (x) do_t, summed from the end of the chunk: [B, N, C, K, V, H]
            d_prefix = (qt.unsqueeze(4) * do_.unsqueeze(3)).flip(2).cumsum(2).flip(2)
            local = _chunk_major(d_prefix[:, :, 0])  # [N, Z, K, V], gradient of exp(r) S_start from the outputs
        else:
            starts, final = _start_states_from(kt.transpose(-1, -2) @ v_, r, b_last, state)
            local = qt.transpose(-1, -2) @ do_  # [N, Z, K, V]
        exp_r = torch.exp(r).transpose(-1, -2)  # [N, Z, K, 1]
        decay = torch.exp(b_last).transpose(-1, -2)  # [N, Z, K, 1]
        local.mul_(exp_r)

        # gradient of the state at the end of each chunk, from the last chunk back to the first
        d_final = d_final.to(cd).reshape(Z, K, V)  # [B, H, K, V] -> [Z, K, V]
        N = local.shape[0]
        d_end = torch.empty_like(local)  # [N, Z, K, V]
        d_end[N - 1] = d_final
        d_start = torch.empty_like(d_final)  # [Z, K, V], gradient of the initial state
        for z in _serial_slices(d_final):
            for n in range(N - 1, 0, -1):  # dS_end[n-1] = decay_n * dS_end[n] + local_n
                torch.addcmul(local[n, z], decay[n, z], d_end[n, z], out=d_end[n - 1, z])
            torch.addcmul(local[0, z], decay[0, z], d_end[0, z], out=d_start[z])
        d_h0 = None if h0 is None else d_start.view(B, H, K, V).to(h0.dtype)
        del local

        d_update = d_end.mul_(torch.exp(b_last - r).transpose(-1, -2))  # [N, Z, K, V], gradient of kt^T @ V
        if small:
            # every row's kt (x) v enters the chunk's update: [B, N, C, K, V, H]
            d_prefix.add_(_batch_major(d_update, B))
            full = prefix.add_(_batch_major(starts.mul_(exp_r), B))  # [B, N, C, K, V, H], exp(r) S_start + prefix
            dqt = (full * do_.unsqueeze(3)).sum(4)  # [B, N, C, K, H]
            dkt = (d_prefix * v_.unsqueeze(3)).sum(4)  # [B, N, C, K, H]
            dv = (d_prefix * kt.unsqueeze(4)).sum(3)  # [B, N, C, V, H]
            del full, d_prefix
        else:
            d_scores = torch.matmul(do_, v_.transpose(-1, -2)).tril_()  # [N, Z, C, C]
            dqt = d_scores @ kt  # [N, Z, C, K]
            dqt.view(-1, C, K).baddbmm_(  # [N*Z, C, K]
                do_.reshape(-1, C, V), starts.mul_(exp_r).transpose(-1, -2).reshape(-1, V, K)
            )
            dkt = d_scores.transpose(-1, -2) @ qt  # [N, Z, C, K]
            dkt.view(-1, C, K).baddbmm_(v_.reshape(-1, C, V), d_update.transpose(-1, -2).reshape(-1, V, K))
            del d_scores
            scores = torch.matmul(qt, kt.transpose(-1, -2)).tril_()  # [N, Z, C, C]
            dv = scores.transpose(-1, -2) @ do_  # [N, Z, C, V]
            dv.view(-1, C, V).baddbmm_(kt.reshape(-1, C, K), d_update.reshape(-1, K, V))
            del scores
        # q = qt / scale and k = kt * scale: q dq = qt dqt and k dk = kt dkt
        dg = _reverse_cumsum_in_time(qt.mul_(dqt).sub_(kt.mul_(dkt)), chunk_dim=1 if small else 0)
        state_term = (final * d_final).sum(-1)  # [Z, K], sum_v S_T dS_T, the same for every step
        dg.add_(state_term.view(B, 1, 1, H, K).transpose(3, 4) if small else state_term.unsqueeze(-2))
        return (
            _from_chunks(dqt.mul_(scale), B, T, q.dtype),
            _from_chunks(dkt.div_(scale), B, T, k.dtype),
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
