"""Recurrent step of the gated outer-product recurrence in PyTorch: decoding a few tokens from a carried state."""
import torch


@torch.no_grad()
def hgrn2_recurrent_step_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """Advance ``state`` in place by the ``T`` tokens given (``T`` is small: 1 when decoding) and return the outputs.

    Args:
        q, k, g: ``[B, T, H, K]``; ``g`` is the log decay (``<= 0``).
        v: ``[B, T, H, V]``.
        state: ``[B, H, K, V]`` fp32 (or fp64) state, updated in place.

    Returns:
        ``o``: ``[B, T, H, V]`` in the dtype of ``q``. Not differentiable: this is the inference path.
    """
    outputs = []
    for t in range(q.shape[1]):
        decay = g[:, t].to(state.dtype).exp().unsqueeze(-1)  # [B, H, K, 1]
        update = k[:, t].to(state.dtype).unsqueeze(-1) * v[:, t].to(state.dtype).unsqueeze(-2)  # [B, H, K, V]
        state.mul_(decay).add_(update)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(state.dtype), state))  # [B, H, V]
    return torch.stack(outputs, dim=1).to(q.dtype)  # [B, T, H, V]
