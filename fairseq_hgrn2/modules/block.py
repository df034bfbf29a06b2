"""One pre-norm HGRN2 residual block."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .glu import BilinearGLU
from .token_mixer import HGRN2TokenMixer


class HGRN2Block(nn.Module):
    """``x = x + drop(mixer(LN(x)))``, then ``x = x + drop(glu(LN(x)))``."""

    def __init__(self, embed_dim: int, token_mixer: HGRN2TokenMixer, glu_dim: int, dropout: float):
        super().__init__()
        self.mixer_norm = nn.LayerNorm(embed_dim)
        self.token_mixer = token_mixer
        self.glu_norm = nn.LayerNorm(embed_dim)
        self.glu = BilinearGLU(embed_dim, glu_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        lower_bound: Optional[torch.Tensor],
        initial_state: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        incremental_state: Optional[Dict[str, Dict[str, Optional[torch.Tensor]]]] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x``: ``[B, T, embed_dim]``; returns the new ``x`` and the mixer's final state (see the mixer).

        With ``incremental_state`` (fairseq's decoding cache), ``x`` holds only the new tokens and the mixer
        carries its recurrent state there; the rest of the block is position-wise and needs no state.
        """
        mixed, final_state = self.token_mixer(
            self.mixer_norm(x),
            lower_bound,
            initial_state=initial_state,
            output_final_state=output_final_state,
            incremental_state=incremental_state,
        )
        x = x + self.dropout(mixed)
        x = x + self.dropout(self.glu(self.glu_norm(x)))
        return x, final_state
