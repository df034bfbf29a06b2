"""Helpers shared by the Triton kernels: launch configurations, the device guard and the gate gradient."""
import contextlib
import os
from typing import Dict, List, Optional

import torch
import triton


def interpreting() -> bool:
    """True when kernels run on CPU through the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(options: List[Dict[str, int]]) -> List[triton.Config]:
    """``triton.Config`` list for ``@triton.autotune``; only the first option under the interpreter.

    The interpreter cannot time kernels, and autotuning with more than one config fails on a host without a GPU.
    ``HGRN2_TRITON_SINGLE_CONFIG=1`` also keeps one config on a GPU, to compile less in correctness tests.
    """
    if interpreting() or os.environ.get("HGRN2_TRITON_SINGLE_CONFIG", "0") == "1":
        options = options[:1]
    return [triton.Config({}, num_warps=o["num_warps"], num_stages=o.get("num_stages", 1)) for o in options]


def device_guard(x: torch.Tensor):
    """Make ``x``'s GPU the current one while launching (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def next_power_of_2(n: int) -> int:
    """Smallest power of two ``>= n`` (tile sizes must be powers of two)."""
    return 1 << max(0, (n - 1).bit_length())


def gate_gradient(
    q: torch.Tensor,
    k: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    final_state: torch.Tensor,
    d_final_state: Optional[torch.Tensor],
) -> torch.Tensor:
    """Gradient of the log decay from the gradients of q and k, in fp32.

    With ``b_t = sum_{s<=t} g_s``, the recurrence only sees ``g`` through ``q_t exp(b_t)``, ``k_t exp(-b_t)`` and
    ``S_T = exp(b_T) (...)``, so ``dL/db_t = q_t dq_t - k_t dk_t`` (plus ``sum_v dS_T S_T`` at ``t = T``) and
    ``dg`` is the reverse cumulative sum of that over time.

    Args:
        q, k, dq, dk: ``[B, T, H, K]`` (dq, dk in fp32).
        final_state, d_final_state: ``[B, H, K, V]``; ``d_final_state`` may be ``None`` (no gradient).

    Returns:
        ``dg``: ``[B, T, H, K]`` fp32.
    """
    per_step = q.float() * dq - k.float() * dk  # [B, T, H, K]
    dg = per_step.flip(1).cumsum(1).flip(1)  # [B, T, H, K], reverse cumsum over T
    if d_final_state is not None:
        dg = dg + (d_final_state.float() * final_state).sum(-1).unsqueeze(1)  # [B, H, K] -> [B, 1, H, K]
    return dg
