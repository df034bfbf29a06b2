"""Per-layer lower bounds of the forget gate, shared with HGRN1."""
import torch
import torch.nn as nn


class ForgetGateLowerBounds(nn.Module):
    """Learned, monotone lower bounds ``gamma[l]`` of each layer's forget gate.

    The parameter ``Gamma`` (``[num_layers, dim]``, initialised to ones) is turned into bounds at every forward:
    ``P = softmax(Gamma, dim=0)``, ``C = cumsum(P)``, ``gamma = C - C[0]``. Layer 0 gets no bound and the bound
    rises with depth (``l / L`` at initialisation).
    """

    def __init__(self, num_layers: int, dim: int):
        super().__init__()
        self.gamma_logits = nn.Parameter(torch.ones(num_layers, dim))

    def forward(self) -> torch.Tensor:
        """Returns ``gamma``, ``[num_layers, dim]`` in fp32 whatever the parameter dtype."""
        cumulative = torch.softmax(self.gamma_logits.float(), dim=0).cumsum(dim=0)  # [L, dim]
        return cumulative - cumulative[0]
