"""Triton recurrent step for decoding: advance a carried state in place by one token (or a few).

Decoding touches the whole state every token and does almost no arithmetic, so the step is the forward scan
kernel of ``scan.py`` launched over a single segment with the state as both its start and its end: each program
reads its ``K x BV`` block of the state once, walks the few tokens, writes the outputs and stores the block back
in place.
"""
import logging

import torch

from ..step_torch import hgrn2_recurrent_step_torch
from .common import device_guard
from .scan import scan_forward

logger = logging.getLogger(__name__)


@torch.no_grad()
def hgrn2_recurrent_step_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """Advance ``state`` in place by the ``T`` tokens given and return their outputs (same API as the torch step).

    Args:
        q, k, g: ``[B, T, H, K]`` fp32/fp16/bf16; ``g`` is the log decay (``<= 0``).
        v: ``[B, T, H, V]``.
        state: ``[B, H, K, V]`` fp32, updated in place (an fp64 state or fp64 inputs go to the PyTorch step).

    Returns:
        ``o``: ``[B, T, H, V]`` in the dtype of ``q``. Not differentiable: this is the inference path.
    """
    if state.dtype != torch.float32 or q.dtype == torch.float64:
        logger.debug("state %s, inputs %s: using the PyTorch step", state.dtype, q.dtype)
        return hgrn2_recurrent_step_torch(q, k, v, g, state)
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    work = state if state.is_contiguous() else state.contiguous()  # [B, H, K, V]: one segment's start state
    with device_guard(q):
        o = scan_forward(q, k, v, g, work, 1, max(1, q.shape[1]), final_state=work)
    if work is not state:
        state.copy_(work)
    return o
