"""The gated outer-product recurrence shared by every HGRN2 architecture.

Importing this package needs neither fairseq nor triton.
"""
from .chunk_torch import hgrn2_recurrence_chunk_torch
from .dispatch import BACKENDS, Backend, hgrn2_recurrence, hgrn2_recurrent_step, resolve_backend
from .reference import hgrn2_recurrence_ref
from .step_torch import hgrn2_recurrent_step_torch

__all__ = [
    "BACKENDS",
    "Backend",
    "hgrn2_recurrence",
    "hgrn2_recurrence_chunk_torch",
    "hgrn2_recurrence_ref",
    "hgrn2_recurrent_step",
    "hgrn2_recurrent_step_torch",
    "resolve_backend",
]
