"""Building blocks of the HGRN2 language model, in PyTorch.

The token mixer keeps its decoding state with fairseq's incremental-state helpers.
"""
from .block import HGRN2Block
from .glu import BilinearGLU
from .lower_bound import ForgetGateLowerBounds
from .token_mixer import HGRN2TokenMixer, forget_gate

__all__ = ["BilinearGLU", "ForgetGateLowerBounds", "HGRN2Block", "HGRN2TokenMixer", "forget_gate"]
