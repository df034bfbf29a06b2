"""The HGRN2 language model for fairseq: ``--arch hgrn2_lm_outproduct_<e>`` and ``--arch hgrn2_lm_expand2``."""
import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from fairseq.utils import safe_getattr
from omegaconf import II, OmegaConf, open_dict

from ..modules import ForgetGateLowerBounds, HGRN2Block, HGRN2TokenMixer

TOKEN_MIXERS = ["outproduct", "expand"]


@dataclass
class HGRN2LanguageModelConfig(FairseqDataclass):
    token_mixer: ChoiceEnum(TOKEN_MIXERS) = field(
        default="outproduct",
        metadata={
            "help": "outproduct: HGRN2, heads of expand-ratio channels with an outer-product state; "
            "expand: the parametric expansion baseline, an elementwise recurrence on expand-ratio x width channels"
        },
    )
    expand_ratio: int = field(
        default=128,
        metadata={
            "help": "state expansion: the head size e of the outer-product state (e x e per head, must divide "
            "--decoder-embed-dim), or the width multiplier of the expand mixer"
        },
    )
    decoder_embed_dim: int = field(default=512, metadata={"help": "model width d"})
    decoder_layers: int = field(default=6, metadata={"help": "number of HGRN2 blocks"})
    glu_dim: int = field(
        default=0, metadata={"help": "hidden size of the bilinear GLU channel mixer; 0 means int(8/3 * width)"}
    )
    dropout: float = field(
        default=0.1, metadata={"help": "dropout after the embedding and on every residual branch"}
    )
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "tie the input embedding and the output projection"}
    )
    log_decay_clamp: Optional[float] = field(
        default=None,
        metadata={
            "help": "clamp each step's log forget gate from below at this value (the original kernels used -3 "
            "for e >= 16); off by default"
        },
    )
    tokens_per_sample: int = II("task.tokens_per_sample")
    max_target_positions: Optional[int] = II("task.max_target_positions")


# Every registered architecture and the defaults it sets. Names are stored in checkpoints: never rename one.
EXPAND_RATIOS = (1, 2, 4, 8, 16, 32, 64, 128)
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "hgrn2_lm_expand2": {"token_mixer": "expand", "expand_ratio": 2},
    **{f"hgrn2_lm_outproduct_{e}": {"token_mixer": "outproduct", "expand_ratio": e} for e in EXPAND_RATIOS},
}


def base_architecture(args) -> None:
    """Fill every option the user left unset with the config's default; a value already set always wins."""
    with open_dict(args) if OmegaConf.is_config(args) else nullcontext():
        for f in dataclasses.fields(HGRN2LanguageModelConfig):
            if f.default is dataclasses.MISSING or (isinstance(f.default, str) and f.default.startswith("${")):
                continue  # interpolated from the task config
            setattr(args, f.name, safe_getattr(args, f.name, f.default))


class HGRN2Decoder(FairseqIncrementalDecoder):
    """Scaled token embedding, ``decoder_layers`` pre-norm HGRN2 blocks, final LayerNorm, output projection.

    No positional embeddings: the recurrence carries order. Incremental decoding keeps one recurrent state per
    layer in fairseq's ``incremental_state``; ``reorder_incremental_state`` of each token mixer follows beam
    search (fairseq calls it on every submodule).
    """

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        embed_dim = args.decoder_embed_dim
        if args.token_mixer == "outproduct":
            inner_dim, head_dim = embed_dim, args.expand_ratio
        else:
            inner_dim, head_dim = args.expand_ratio * embed_dim, 1
        glu_dim = args.glu_dim or int(8 / 3 * embed_dim)

        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(embed_dim)
        self.dropout = nn.Dropout(args.dropout)
        self.lower_bounds = ForgetGateLowerBounds(args.decoder_layers, inner_dim)
        self.layers = nn.ModuleList(
            HGRN2Block(
                embed_dim,
                HGRN2TokenMixer(embed_dim, inner_dim, head_dim, log_decay_clamp=args.log_decay_clamp),
                glu_dim,
                args.dropout,
            )
            for _ in range(args.decoder_layers)
        )
        self.final_norm = nn.LayerNorm(embed_dim)
        if args.share_decoder_input_output_embed:
            self.output_projection = nn.Linear(embed_dim, len(dictionary), bias=False)
            self.output_projection.weight = embed_tokens.weight
        else:
            self.output_projection = nn.Linear(embed_dim, len(dictionary), bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0, std=embed_dim**-0.5)
        self.max_target_positions = args.max_target_positions or args.tokens_per_sample

    def forward(
        self,
        prev_output_tokens: torch.Tensor,
        incremental_state: Optional[Dict[str, Dict[str, Optional[torch.Tensor]]]] = None,
        features_only: bool = False,
        src_lengths=None,
        **kwargs,
    ):
        """``prev_output_tokens``: ``[B, T]``; returns logits ``[B, T', vocab]`` (or features) and an extra dict.

        ``T' = T`` without ``incremental_state`` and for a prompt; ``T' = 1`` for a decoding step (see
        ``extract_features``).
        """
        x, extra = self.extract_features(prev_output_tokens, incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens: torch.Tensor, incremental_state=None, **kwargs):
        """Features ``[B, T', embed_dim]`` after the final LayerNorm.

        With ``incremental_state`` (fairseq's decoding cache, as the sequence generator passes it), every token
        is read once: the first call runs the whole prompt (``T' = T``) and leaves each layer's recurrent state
        in the cache; later calls get the whole prefix, as fairseq's generators pass it, and run only its last
        token (``T' = 1``) as one recurrent step. The cache has the same size whatever the context length.
        """
        if incremental_state is not None and self.layers[0].token_mixer.has_decoding_state(incremental_state):
            prev_output_tokens = prev_output_tokens[:, -1:]  # [B, T] -> [B, 1]: only the new token
        x = self.dropout(self.embed_scale * self.embed_tokens(prev_output_tokens))  # [B, T', embed_dim]
        gamma = self.lower_bounds()  # [L, inner_dim]
        for index, layer in enumerate(self.layers):
            # layer 0 has no bound: gamma[0] is exactly 0, and log(0) would poison the gradient
            x, _ = layer(x, gamma[index] if index > 0 else None, incremental_state=incremental_state)
        return self.final_norm(x), {"attn": [None], "inner_states": [x]}

    def decoding_state_numel(self, incremental_state) -> int:
        """Number of scalars this decoder keeps in ``incremental_state`` (constant in the context length)."""
        total = 0
        for layer in self.layers:
            saved = layer.token_mixer.get_incremental_state(incremental_state, "recurrent_state") or {}
            total += sum(t.numel() for t in saved.values() if t is not None)
        return total

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        return self.output_projection(features)

    def max_positions(self) -> int:
        return self.max_target_positions


@register_model("hgrn2_lm", dataclass=HGRN2LanguageModelConfig)
class HGRN2LanguageModel(FairseqLanguageModel):
    """HGRN2 decoder-only language model (Qin et al., "HGRN2: Gated Linear RNNs with State Expansion")."""

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        if args.token_mixer == "outproduct" and args.decoder_embed_dim % args.expand_ratio != 0:
            raise ValueError(
                f"--expand-ratio {args.expand_ratio} does not divide --decoder-embed-dim {args.decoder_embed_dim}: "
                "the heads of an outer-product model split the width into blocks of expand-ratio channels"
            )
        if args.expand_ratio < 1:
            raise ValueError(f"--expand-ratio must be a positive integer, got {args.expand_ratio}")
        dictionary = task.target_dictionary
        embed_tokens = nn.Embedding(len(dictionary), args.decoder_embed_dim, padding_idx=dictionary.pad())
        nn.init.normal_(embed_tokens.weight, mean=0, std=args.decoder_embed_dim**-0.5)
        nn.init.constant_(embed_tokens.weight[dictionary.pad()], 0)
        return cls(HGRN2Decoder(args, dictionary, embed_tokens))


def _architecture(defaults: Dict[str, Any]):
    def set_defaults(args) -> None:
        with open_dict(args) if OmegaConf.is_config(args) else nullcontext():
            for name, value in defaults.items():
                setattr(args, name, safe_getattr(args, name, value))
        base_architecture(args)

    return set_defaults


for _arch_name, _defaults in ARCHITECTURES.items():
    register_model_architecture("hgrn2_lm", _arch_name)(_architecture(_defaults))
