"""The HGRN2 token mixer: input/output/forget gates driving the gated recurrence of ``fairseq_hgrn2.ops``."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state

from ..ops import hgrn2_recurrence, hgrn2_recurrent_step

IncrementalState = Dict[str, Dict[str, Optional[torch.Tensor]]]


def forget_gate(f: torch.Tensor, lower_bound: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Input gate ``k = 1 - lambda`` and log forget gate ``g = log(lambda)`` from the pre-activation ``f``.

    ``lambda = lb + (1 - lb) * sigmoid(f)``; both results are computed in fp32 without cancellation or
    ``log(0)``: ``k = (1 - lb) * sigmoid(-f)``, ``g = logaddexp(log lb, log1p(-lb) + logsigmoid(f))``.
    ``lower_bound=None`` means no bound (``lb = 0``), which is exact for the first layer. fp64 stays fp64.
    """
    f = f.to(torch.promote_types(f.dtype, torch.float32))
    if lower_bound is None:
        return torch.sigmoid(-f), F.logsigmoid(f)
    lb = lower_bound.to(f.dtype)
    k = (1 - lb) * torch.sigmoid(-f)
    g = torch.logaddexp(torch.log(lb), torch.log1p(-lb) + F.logsigmoid(f))
    return k, g


@with_incremental_state
class HGRN2TokenMixer(nn.Module):
    """Gated linear recurrence over ``inner_dim`` channels split into heads of ``head_dim``.

    ``in_proj`` (``embed_dim -> 3 * inner_dim``, bias) gives, in this order, the value ``i = silu(.)``, the output
    gate ``o = sigmoid(.)`` and the forget gate pre-activation ``f``. Per head, with ``lambda`` the bounded forget
    gate, ``S_t = Diag(lambda_t) S_{t-1} + (1 - lambda_t) (x) i_t`` and ``y_t = o_t . S_t``; the heads are
    concatenated, normalised by ``LayerNorm(inner_dim)`` and projected back by ``out_proj`` (bias).

    * HGRN2 (outer-product state expansion): ``inner_dim = embed_dim``, ``head_dim = e``; each head has an
      ``e x e`` state and the expansion adds no parameters.
    * Parametric expansion baseline (``hgrn2_lm_expand2``): ``inner_dim = e * embed_dim``, ``head_dim = 1``;
      an elementwise HGRN recurrence on a state of ``e * embed_dim`` scalars.

    Incremental decoding keeps the recurrent state (``[B, H, head_dim, head_dim]``, fp32) in fairseq's
    ``incremental_state`` under this module's key: its size does not depend on how many tokens were seen.
    """

    def __init__(
        self,
        embed_dim: int,
        inner_dim: int,
        head_dim: int,
        log_decay_clamp: Optional[float] = None,
    ):
        super().__init__()
        if inner_dim % head_dim != 0:
            raise ValueError(
                f"expand ratio {head_dim} does not divide the model width {inner_dim}: "
                f"--expand-ratio must divide --decoder-embed-dim"
            )
        self.embed_dim = embed_dim
        self.inner_dim = inner_dim
        self.head_dim = head_dim
        self.num_heads = inner_dim // head_dim
        self.log_decay_clamp = log_decay_clamp
        self.in_proj = nn.Linear(embed_dim, 3 * inner_dim)
        self.norm = nn.LayerNorm(inner_dim)
        self.out_proj = nn.Linear(inner_dim, embed_dim)

    @property
    def state_shape(self) -> Tuple[int, int, int]:
        """Shape ``(H, K, V)`` of the recurrent state of one sequence."""
        return (self.num_heads, self.head_dim, self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        lower_bound: Optional[torch.Tensor],
        initial_state: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        incremental_state: Optional[IncrementalState] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Mix tokens.

        Args:
            x: ``[B, T, embed_dim]``.
            lower_bound: ``[inner_dim]`` lower bound of the forget gate, or ``None`` for no bound.
            initial_state: optional ``[B, H, head_dim, head_dim]`` fp32 state carried in from earlier tokens.
            output_final_state: also return the state after the last token.
            incremental_state: fairseq's decoding cache. ``x`` then holds only the new tokens: with no saved state
                a prompt (``T > 1``) is prefilled by the chunked op, which hands over its final state; with a saved
                state (or ``T = 1``) each token is one recurrent step that updates the state in place.
                ``initial_state`` is ignored in this mode.

        Returns:
            ``(y, final_state)``: ``y`` is ``[B, T, embed_dim]`` in the dtype of ``x``; in incremental mode
            ``final_state`` is the saved state.
        """
        B, T, _ = x.shape
        i, o, f = self.in_proj(x).chunk(3, dim=-1)  # 3 x [B, T, inner_dim]
        compute_dtype = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
        v = F.silu(i.to(compute_dtype))
        q = torch.sigmoid(o.to(compute_dtype))
        k, g = forget_gate(f, lower_bound)
        if self.log_decay_clamp is not None:
            g = g.clamp(min=self.log_decay_clamp)
        # [B, T, inner_dim] -> [B, T, H, head_dim]
        q, k, v, g = (t.reshape(B, T, self.num_heads, self.head_dim) for t in (q, k, v, g))
        if incremental_state is None:
            y, final_state = hgrn2_recurrence(
                q, k, v, g, initial_state=initial_state, output_final_state=output_final_state
            )
        else:
            y, final_state = self._decode(q, k, v, g, incremental_state)
        y = y.reshape(B, T, self.inner_dim).to(x.dtype)  # [B, T, H, head_dim] -> [B, T, inner_dim]
        return self.out_proj(self.norm(y)), final_state

    def _decode(self, q, k, v, g, incremental_state: IncrementalState) -> Tuple[torch.Tensor, torch.Tensor]:
        """Advance the state saved in ``incremental_state`` over the new tokens ``q, k, v, g`` (``[B, T, H, e]``)."""
        B, T = q.shape[:2]
        saved = self.get_incremental_state(incremental_state, "recurrent_state")
        state = saved.get("state") if saved is not None else None
        if state is None and T > 1:  # prompt: the chunked (parallel) form, which hands over its final state
            y, state = hgrn2_recurrence(q, k, v, g, output_final_state=True)
        elif T > 1:  # several new tokens after a saved state
            y, state = hgrn2_recurrence(q, k, v, g, initial_state=state, output_final_state=True)
        else:  # one token: one recurrent step, in place
            if state is None:
                state = q.new_zeros(B, *self.state_shape, dtype=torch.promote_types(q.dtype, torch.float32))
            y = hgrn2_recurrent_step(q, k, v, g, state)
        self.set_incremental_state(incremental_state, "recurrent_state", {"state": state})
        return y, state

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: torch.Tensor) -> None:
        """Follow beam search: row ``b`` of the saved state becomes row ``new_order[b]`` of the old one."""
        saved = self.get_incremental_state(incremental_state, "recurrent_state")
        if saved is not None and saved.get("state") is not None:
            saved["state"] = saved["state"].index_select(0, new_order)  # [B', H, K, V]
            self.set_incremental_state(incremental_state, "recurrent_state", saved)

    def has_decoding_state(self, incremental_state: Optional[IncrementalState]) -> bool:
        """Whether ``incremental_state`` already holds this mixer's recurrent state."""
        saved = self.get_incremental_state(incremental_state, "recurrent_state")
        return saved is not None and saved.get("state") is not None
