"""The one dispatch point between the models and the implementations of the recurrence.

``HGRN2_BACKEND=auto|triton|torch|reference`` (environment) or the ``backend`` argument picks the implementation;
``auto`` resolves to the fastest one available for the tensors' device: ``triton`` for CUDA tensors when triton
is installed, ``torch`` otherwise. The Triton kernels are imported on first use only, so importing this module
never imports triton.
"""
import importlib.util
import logging
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from .chunk_torch import hgrn2_recurrence_chunk_torch
from .reference import hgrn2_recurrence_ref
from .step_torch import hgrn2_recurrent_step_torch

logger = logging.getLogger(__name__)


class Backend(NamedTuple):
    """One implementation of the op: the parallel form (training, prefill) and the recurrent step (decoding)."""

    chunk: Callable
    step: Callable


def _triton_recurrence(*args, **kwargs):
    """``hgrn2_recurrence_triton``, imported on first call (importing it imports triton)."""
    from .triton import hgrn2_recurrence_triton

    return hgrn2_recurrence_triton(*args, **kwargs)


def _triton_step(*args, **kwargs):
    """``hgrn2_recurrent_step_triton``, imported on first call."""
    from .triton import hgrn2_recurrent_step_triton

    return hgrn2_recurrent_step_triton(*args, **kwargs)


BACKENDS: Dict[str, Backend] = {
    "triton": Backend(chunk=_triton_recurrence, step=_triton_step),
    "torch": Backend(chunk=hgrn2_recurrence_chunk_torch, step=hgrn2_recurrent_step_torch),
    "reference": Backend(chunk=hgrn2_recurrence_ref, step=hgrn2_recurrent_step_torch),
}
_logged = set()


def triton_available() -> bool:
    """Whether triton is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _triton_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(device: torch.device, backend: Optional[str] = None) -> str:
    """Name of the implementation used for tensors on ``device``: ``backend`` if given, else ``HGRN2_BACKEND``."""
    name = backend or os.environ.get("HGRN2_BACKEND", "auto")
    if name == "auto":
        name = "triton" if device.type == "cuda" and triton_available() else "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown HGRN2 backend {name!r}: choose one of auto, {', '.join(sorted(BACKENDS))}")
    if name == "triton" and not (triton_available() and _triton_runs_on(device)):
        raise ValueError(
            f"HGRN2 backend 'triton' needs triton installed and CUDA tensors (or TRITON_INTERPRET=1), "
            f"got {device.type} tensors{'' if triton_available() else ' and no triton'}"
        )
    if (name, device.type) not in _logged:
        _logged.add((name, device.type))
        logger.info("HGRN2 recurrence backend on %s: %s", device.type, name)
    return name


def _check_shapes(q, k, v, g) -> None:
    if q.shape != k.shape or q.shape != g.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, g {tuple(g.shape)} must be [B, T, H, K] "
            f"and v {tuple(v.shape)} [B, T, H, V]"
        )


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
    _check_shapes(q, k, v, g)
    impl = BACKENDS[resolve_backend(q.device, backend)].chunk
    return impl(q, k, v, g, initial_state=initial_state, output_final_state=output_final_state)


def hgrn2_recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    state: torch.Tensor,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Decode: advance ``state`` (``[B, H, K, V]``, fp32) in place by a few tokens and return ``o`` ``[B, T, H, V]``.

    Same shapes and maths as ``hgrn2_recurrence`` with ``initial_state=state``; meant for ``T = 1`` (or a few),
    without autograd.
    """
    _check_shapes(q, k, v, g)
    if state.shape != (q.shape[0], q.shape[2], q.shape[3], v.shape[3]):
        raise ValueError(f"state {tuple(state.shape)} must be [B, H, K, V] for q {tuple(q.shape)}, v {tuple(v.shape)}")
    impl = BACKENDS[resolve_backend(q.device, backend)].step
    return impl(q, k, v, g, state)
