"""The channel mixer of every HGRN2 block."""
import torch
import torch.nn as nn


class BilinearGLU(nn.Module):
    """Gated linear unit without activation: ``w3(w1(x) * w2(x))``, all with bias."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(embed_dim, hidden_dim)
        self.w2 = nn.Linear(embed_dim, hidden_dim)
        self.w3 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.w1(x) * self.w2(x))
