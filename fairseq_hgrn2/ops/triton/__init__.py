"""Triton kernels of the gated outer-product recurrence (CUDA; CPU only under ``TRITON_INTERPRET=1``).

Importing this package imports triton: ``fairseq_hgrn2.ops.dispatch`` imports it lazily, on first use.

* ``chunk.py``: chunked forward and backward with ``tl.dot`` tiles, for key and value widths >= 16;
* ``scan.py``: a time scan with the states of several heads in registers, for widths below 16 (e = 1..8);
* ``states.py``: the state (and its gradient) passed between segments of 64 tokens, which the two above then
  process in parallel;
* ``step.py``: the decoding step, updating a carried state in place.
"""
import logging
from typing import Optional, Tuple

import torch

from ..chunk_torch import hgrn2_recurrence_chunk_torch
from .chunk import hgrn2_recurrence_chunk_triton
from .scan import hgrn2_recurrence_scan_triton
from .step import hgrn2_recurrent_step_triton

logger = logging.getLogger(__name__)

__all__ = [
    "hgrn2_recurrence_chunk_triton",
    "hgrn2_recurrence_scan_triton",
    "hgrn2_recurrence_triton",
    "hgrn2_recurrent_step_triton",
]


def hgrn2_recurrence_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated outer-product recurrence on Triton kernels: chunked for ``16 <= K <= 128, V >= 16``, scan otherwise.

    Same arguments and result as ``fairseq_hgrn2.ops.hgrn2_recurrence`` (``q, k, g: [B, T, H, K]``,
    ``v: [B, T, H, V]``, optional ``[B, H, K, V]`` initial state; returns ``o`` in the dtype of ``q`` and an fp32
    final state or ``None``). fp64 inputs, which the kernels do not take, go to the chunked PyTorch path.
    """
    if q.dtype == torch.float64:
        logger.debug("fp64 inputs: using the chunked PyTorch path")
        return hgrn2_recurrence_chunk_torch(q, k, v, g, initial_state, output_final_state)
    K, V = q.shape[-1], v.shape[-1]
    impl = hgrn2_recurrence_chunk_triton if 16 <= K <= 128 and V >= 16 else hgrn2_recurrence_scan_triton
    return impl(q, k, v, g, initial_state=initial_state, output_final_state=output_final_state)
