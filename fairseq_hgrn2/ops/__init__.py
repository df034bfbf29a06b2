"""The gated outer-product recurrence shared by every HGRN2 architecture.

Importing this package needs neither fairseq nor triton.
"""
from .chunk_torch import hgrn2_recurrence_chunk_torch
from .dispatch import hgrn2_recurrence, resolve_backend
from .reference import hgrn2_recurrence_ref

__all__ = ["hgrn2_recurrence", "hgrn2_recurrence_chunk_torch", "hgrn2_recurrence_ref", "resolve_backend"]
