"""Reference implementation of the gated outer-product recurrence: a plain time loop.

This is the oracle the tests compare every fast path against. It is slow on purpose: one step per token,
no chunking, no tricks, so that it is obviously the recurrence of MODEL.md.
"""
from typing import Optional, Tuple

import torch


def hgrn2_recurrence_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated outer-product recurrence, one step at a time.

        S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = q_t S_t

    Args:
        q, k, g: ``[B, T, H, K]``; ``g`` is the log decay (``<= 0``) per key channel.
        v: ``[B, T, H, V]``.
        initial_state: optional ``[B, H, K, V]`` state ``S_0``.
        output_final_state: also return ``S_T``.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in the dtype of ``q``; ``final_state`` is ``[B, H, K, V]``
        in the compute dtype, or ``None`` unless asked for. The loop runs in fp64 when ``q`` is fp64, in fp32
        otherwise.
    """
    in_dtype = q.dtype
    compute_dtype = torch.float64 if in_dtype == torch.float64 else torch.float32
    B, T, H, K = q.shape
    V = v.shape[-1]
    q, k, v, g = (x.to(compute_dtype) for x in (q, k, v, g))
    if initial_state is None:
        state = q.new_zeros(B, H, K, V)
    else:
        state = initial_state.to(compute_dtype)
    outputs = []
    for t in range(T):
        # [B, H, K, 1] * [B, H, K, V] + [B, H, K, 1] * [B, H, 1, V]
        state = g[:, t].exp().unsqueeze(-1) * state + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        # [B, H, K] x [B, H, K, V] -> [B, H, V]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    if T > 0:
        o = torch.stack(outputs, dim=1)  # [B, T, H, V]
    else:
        o = q.new_zeros(B, 0, H, V)
    return o.to(in_dtype), (state if output_final_state else None)
