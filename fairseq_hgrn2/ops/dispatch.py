"""The one dispatch point between the models and the implementations of the recurrence.

``HGRN2_BACKEND=auto|torch|reference`` (environment) or the ``backend`` argument picks the implementation;
``auto`` resolves to the fastest one available for the tensors' device.
"""
import logging
import os
from typing import Optional, Tuple

import torch

from .chunk_torch import hgrn2_recurrence_chunk_torch
from .reference import hgrn2_recurrence_ref

logger = logging.getLogger(__name__)

BACKENDS = {
    "torch": hgrn2_recurrence_chunk_torch,
    "reference": hgrn2_recurrence_ref,
}
_logged = set()


def resolve_backend(device: torch.device, backend: Optional[str] = None) -> str:
    """Name of the implementation used for tensors on ``device``: ``backend`` if given, else ``HGRN2_BACKEND``."""
    name = backend or os.environ.get("HGRN2_BACKEND", "auto")
    if name == "auto":
        name = "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown HGRN2 backend {name!r}: choose one of auto, {', '.join(sorted(BACKENDS))}")
    if (name, device.type) not in _logged:
        _logged.add((name, device.type))
        logger.info("HGRN2 recurrence backend on %s: %s", device.type, name)
    return name


def hgrn2_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated outer-product recurrence ``S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t``.

    Args:
        q, k, g: ``[B, T, H, K]``; ``g`` is the log decay (``<= 0``) per key channel.
        v: ``[B, T, H, V]``.
        initial_state: optional ``[B, H, K, V]`` state ``S_0``.
        output_final_state: also return ``S_T``.
        backend: force an implementation (see ``resolve_backend``).

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in the dtype of ``q``, ``final_state`` is ``[B, H, K, V]``
        in fp32 (fp64 for fp64 inputs) or ``None``. The computation runs in fp32 whatever the input dtype.
    """
    if q.shape != k.shape or q.shape != g.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, g {tuple(g.shape)} must be [B, T, H, K] "
            f"and v {tuple(v.shape)} [B, T, H, V]"
        )
    impl = BACKENDS[resolve_backend(q.device, backend)]
    return impl(q, k, v, g, initial_state=initial_state, output_final_state=output_final_state)
