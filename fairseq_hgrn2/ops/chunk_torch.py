"""Chunked PyTorch implementation of the gated outer-product recurrence.

The sequence is cut into chunks of ``chunk_size`` tokens. Inside a chunk, with ``b = cumsum(g)`` (chunk-local):

* inter-chunk: ``O += (Q * exp(b)) S_start`` and ``S_next = Diag(exp(b_last)) S + (K * exp(b_last - b))^T V``;
* intra-chunk: ``A_ij = sum_c q_ic k_jc exp(b_ic - b_jc)`` for ``i >= j``, ``O += A V``.

The intra-chunk scores are computed per sub-chunk of ``sub_chunk_size`` rows: queries are scaled relative to the
first row of their sub-chunk and keys of earlier sub-chunks relative to that same row, so every exponent is a
difference ``<= 0`` and nothing can overflow however strong the decay. The diagonal sub-blocks use the exact
pairwise decay. All the work runs in fp32 (fp64 for fp64 inputs) whatever the input dtype; gradients come from
autograd.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def hgrn2_recurrence_chunk_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    sub_chunk_size: int = 16,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated outer-product recurrence, chunked. Same signature and result as ``hgrn2_recurrence_ref``.

    Args:
        q, k, g: ``[B, T, H, K]``; ``g`` is the log decay (``<= 0``) per key channel.
        v: ``[B, T, H, V]``.
        initial_state: optional ``[B, H, K, V]`` state ``S_0``.
        output_final_state: also return ``S_T``.
        chunk_size: tokens per chunk (a multiple of ``sub_chunk_size``).
        sub_chunk_size: rows per sub-chunk of the intra-chunk scores.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in the dtype of ``q``; ``final_state`` is ``[B, H, K, V]``
        in fp32 (fp64 for fp64 inputs), or ``None`` unless asked for.
    """
    if chunk_size % sub_chunk_size != 0:
        raise ValueError(f"chunk_size {chunk_size} is not a multiple of sub_chunk_size {sub_chunk_size}")
    in_dtype = q.dtype
    compute_dtype = torch.float64 if in_dtype == torch.float64 else torch.float32
    B, T, H, K = q.shape
    V = v.shape[-1]
    if initial_state is None:
        state = q.new_zeros(B, H, K, V, dtype=compute_dtype)
    else:
        state = initial_state.to(compute_dtype)
    if T == 0:
        return v.new_zeros(B, 0, H, V, dtype=in_dtype), (state if output_final_state else None)

    S = sub_chunk_size
    C = min(chunk_size, -(-T // S) * S)  # short inputs use one chunk rounded up to whole sub-chunks
    N = -(-T // C)
    n_sub = C // S
    pad = N * C - T

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, D] -> [B, H, T, D] -> (zero-pad T) -> [B, H, N, C, D]
        x = x.to(compute_dtype).transpose(1, 2)
        if pad:
            # padded rows have g = 0 (no decay) and k = q = v = 0: they change neither outputs nor the state
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, N, C, x.shape[-1])

    q, k, v, g = to_chunks(q), to_chunks(k), to_chunks(v), to_chunks(g)
    b = g.cumsum(dim=-2)  # [B, H, N, C, K], chunk-local cumulative log decay, non-increasing in C
    b_last = b[..., -1:, :]  # [B, H, N, 1, K]

    # ---- inter-chunk: pass the state from chunk to chunk ----
    k_to_end = k * torch.exp(b_last - b)  # [B, H, N, C, K], exponents <= 0
    chunk_updates = k_to_end.transpose(-1, -2) @ v  # [B, H, N, K, V]
    chunk_decay = b_last.squeeze(-2).exp().unsqueeze(-1)  # [B, H, N, K, 1]
    start_states = []
    for n in range(N):
        start_states.append(state)
        state = chunk_decay[:, :, n] * state + chunk_updates[:, :, n]
    start_states = torch.stack(start_states, dim=2)  # [B, H, N, K, V]
    o = (q * b.exp()) @ start_states  # [B, H, N, C, V]

    # ---- intra-chunk, between sub-chunks: reference row = first row of the query's sub-chunk ----
    qs = q.reshape(B, H, N, n_sub, S, K)
    ks = k.reshape(B, H, N, n_sub, S, K)
    bs = b.reshape(B, H, N, n_sub, S, K)
    vs = v.reshape(B, H, N, n_sub, S, V)
    b_ref = bs[..., :1, :]  # [B, H, N, n_sub, 1, K]
    q_scaled = qs * torch.exp(bs - b_ref)  # [B, H, N, n_sub, S, K], exponents <= 0
    if n_sub > 1:
        # keys j of the whole chunk, seen from each sub-chunk s: kept only if j is in an earlier sub-chunk,
        # where b_ref[s] <= b[j]. The mask is applied to the exponent, before the exp.
        rows = torch.arange(C, device=q.device)
        earlier = rows.unsqueeze(0) < (torch.arange(n_sub, device=q.device) * S).unsqueeze(1)  # [n_sub, C]
        exponent = b_ref - b.unsqueeze(3)  # [B, H, N, n_sub, 1, K] - [B, H, N, 1, C, K] -> [B, H, N, n_sub, C, K]
        exponent = torch.where(earlier.unsqueeze(-1), exponent, exponent.new_tensor(float("-inf")))
        k_scaled = k.unsqueeze(3) * exponent.exp()  # [B, H, N, n_sub, C, K]
        scores = q_scaled @ k_scaled.transpose(-1, -2)  # [B, H, N, n_sub, S, C]
        o_intra = scores @ v.unsqueeze(3)  # [B, H, N, n_sub, S, C] @ [B, H, N, 1, C, V] -> [B, H, N, n_sub, S, V]
    else:
        o_intra = 0

    # ---- intra-chunk, diagonal sub-blocks: exact pairwise decay exp(b_i - b_j), i >= j ----
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()  # [S, S]
    pair = bs.unsqueeze(-2) - bs.unsqueeze(-3)  # [B, H, N, n_sub, S, 1, K] - [.., 1, S, K] -> [.., S, S, K]
    pair = torch.where(causal.unsqueeze(-1), pair, pair.new_tensor(float("-inf")))
    diag_scores = (qs.unsqueeze(-2) * ks.unsqueeze(-3) * pair.exp()).sum(-1)  # [B, H, N, n_sub, S, S]
    o_intra = o_intra + diag_scores @ vs  # [B, H, N, n_sub, S, V]

    o = o + o_intra.reshape(B, H, N, C, V)
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # [B, T, H, V]
    return o.to(in_dtype), (state if output_final_state else None)
