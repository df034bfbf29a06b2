"""The fairseq model: registration, architectures, exact parameter count, the block maths, precision casts."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from fairseq import options
from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

import fairseq_hgrn2.models  # noqa: F401  (registers the architectures)
from conftest import assert_close
from fairseq_hgrn2.models.hgrn2_lm import ARCHITECTURES, HGRN2LanguageModel
from fairseq_hgrn2.modules import ForgetGateLowerBounds, HGRN2TokenMixer, forget_gate

ARCH_NAMES = ["hgrn2_lm_expand2"] + [f"hgrn2_lm_outproduct_{e}" for e in (1, 2, 4, 8, 16, 32, 64, 128)]
WIKITEXT103_GPT2_VOCAB = 50264


def make_dictionary(size: int) -> Dictionary:
    d = Dictionary()  # 4 specials
    for i in range(size - len(d)):
        d.add_symbol(f"tok{i}")
    assert len(d) == size
    return d


def parse(arch: str, *extra: str):
    """Namespace exactly as fairseq-train builds it from a command line."""
    parser = options.get_training_parser()
    return options.parse_args_and_arch(
        parser, ["data-bin/none", "--task", "language_modeling", "--arch", arch, *extra]
    )


def build(arch: str, *extra: str, vocab: int = 1000) -> HGRN2LanguageModel:
    args = parse(arch, *extra)
    d = make_dictionary(vocab)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))


def test_the_nine_architectures_are_registered():
    assert "hgrn2_lm" in MODEL_REGISTRY
    assert sorted(ARCHITECTURES) == sorted(ARCH_NAMES)
    for name in ARCH_NAMES:
        assert ARCH_MODEL_REGISTRY[name] is HGRN2LanguageModel


@pytest.mark.parametrize("arch", ARCH_NAMES + ["hgrn2_lm"])
def test_every_architecture_builds_and_runs(arch):
    model = build(arch, "--decoder-embed-dim", "128", "--decoder-layers", "2")
    tokens = torch.randint(4, 1000, (2, 37))
    logits, extra = model(tokens)
    assert logits.shape == (2, 37, 1000)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("e", (1, 2, 4, 8, 16, 32, 64, 128))
def test_outproduct_parameter_count_is_exact_and_independent_of_e(e):
    model = build(f"hgrn2_lm_outproduct_{e}", "--share-decoder-input-output-embed", vocab=WIKITEXT103_GPT2_VOCAB)
    assert sum(p.numel() for p in model.parameters()) == 44_660_732


def test_architecture_defaults_never_overwrite_user_flags():
    model = build("hgrn2_lm_outproduct_128", "--expand-ratio", "4", "--decoder-layers", "3")
    assert len(model.decoder.layers) == 3
    for layer in model.decoder.layers:
        mixer = layer.token_mixer
        assert (mixer.num_heads, mixer.head_dim) == (128, 4)


def test_architecture_sets_its_defaults():
    args = parse("hgrn2_lm_outproduct_16")
    assert (args.token_mixer, args.expand_ratio, args.decoder_embed_dim, args.decoder_layers) == (
        "outproduct", 16, 512, 6,
    )
    assert args.dropout == 0.1
    expand = build("hgrn2_lm_expand2", "--decoder-embed-dim", "64", "--decoder-layers", "1")
    mixer = expand.decoder.layers[0].token_mixer
    assert (mixer.inner_dim, mixer.head_dim, mixer.num_heads) == (128, 1, 128)
    assert expand.decoder.lower_bounds.gamma_logits.shape == (1, 128)


def test_expand_ratio_that_does_not_divide_the_width_fails_at_build_time():
    with pytest.raises(ValueError) as info:
        build("hgrn2_lm_outproduct_128", "--expand-ratio", "48", "--decoder-embed-dim", "512")
    message = str(info.value)
    assert "48" in message and "512" in message and "\n" not in message


def test_block_structure_matches_the_paper():
    model = build("hgrn2_lm_outproduct_64", "--share-decoder-input-output-embed")
    dec = model.decoder
    layer = dec.layers[0]
    assert layer.glu.w1.weight.shape == (1365, 512) and layer.glu.w3.weight.shape == (512, 1365)
    assert layer.token_mixer.in_proj.weight.shape == (1536, 512) and layer.token_mixer.in_proj.bias is not None
    assert dec.output_projection.weight is dec.embed_tokens.weight
    assert dec.embed_scale == math.sqrt(512)
    assert not any("pos" in name for name, _ in model.named_parameters())
    assert torch.equal(dec.embed_tokens.weight[dec.embed_tokens.padding_idx], torch.zeros(512))
    std = dec.embed_tokens.weight.std().item()
    assert abs(std - 512**-0.5) < 0.1 * 512**-0.5


def test_lower_bounds_rise_with_depth_from_zero():
    gamma = ForgetGateLowerBounds(6, 8)()
    expected = torch.arange(6, dtype=torch.float32).div(6).unsqueeze(1).expand(6, 8)
    assert torch.allclose(gamma, expected, atol=1e-6)


def test_forget_gate_is_stable_at_the_extremes():
    f = torch.tensor([-80.0, -20.0, 0.0, 20.0, 80.0], requires_grad=True)
    for lb in (None, torch.tensor(1e-30), torch.tensor(0.5), torch.tensor(1 - 1e-6)):
        k, g = forget_gate(f, lb)
        lam = (0 if lb is None else lb.double()) + (1 - (0 if lb is None else lb.double())) * torch.sigmoid(
            f.detach().double()
        )
        assert torch.isfinite(g).all() and torch.isfinite(k).all()
        assert torch.allclose(k.double(), 1 - lam, rtol=1e-4, atol=1e-12)
        assert torch.allclose(g.double().exp(), lam, rtol=1e-5)
        (grad,) = torch.autograd.grad(g.sum() + k.sum(), f)
        assert torch.isfinite(grad).all()


def test_mixer_is_the_recurrence_of_the_paper():
    """The mixer against MODEL.md written out step by step in fp64."""
    torch.manual_seed(0)
    d, e, T = 16, 4, 23
    mixer = HGRN2TokenMixer(d, d, e).double()
    x = torch.randn(2, T, d, dtype=torch.float64)
    lb = torch.rand(d, dtype=torch.float64) * 0.9
    y, _ = mixer(x, lb)

    i, o, f = mixer.in_proj(x).chunk(3, -1)
    i, o = F.silu(i), torch.sigmoid(o)
    lam = lb + (1 - lb) * torch.sigmoid(f)
    H = d // e
    state = torch.zeros(2, H, e, e, dtype=torch.float64)
    outs = []
    for t in range(T):
        lam_t, k_t = lam[:, t].view(2, H, e), (1 - lam[:, t]).view(2, H, e)
        state = lam_t.unsqueeze(-1) * state + k_t.unsqueeze(-1) * i[:, t].view(2, H, 1, e)
        outs.append(torch.einsum("bhk,bhkv->bhv", o[:, t].view(2, H, e), state).reshape(2, d))
    expected = mixer.out_proj(mixer.norm(torch.stack(outs, 1)))
    assert_close("mixer output", expected, y, 1e-10)


def test_mixer_hands_over_its_state():
    torch.manual_seed(0)
    mixer = HGRN2TokenMixer(16, 16, 8)
    x = torch.randn(1, 30, 16)
    full, _ = mixer(x, None)
    first, state = mixer(x[:, :11], None, output_final_state=True)
    second, _ = mixer(x[:, 11:], None, initial_state=state)
    assert_close("split", full, torch.cat([first, second], 1), 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["hgrn2_lm_outproduct_16", "hgrn2_lm_expand2"])
def test_model_cast_to_half_precision(arch, dtype):
    """fairseq --bf16/--fp16 cast the whole model: it must run and stay close to fp32."""
    torch.manual_seed(0)
    model = build(arch, "--decoder-embed-dim", "64", "--decoder-layers", "2", "--dropout", "0").eval()
    tokens = torch.randint(4, 1000, (2, 50))
    with torch.no_grad():
        ref = model(tokens)[0]
    model = model.to(dtype).train()
    logits = model(tokens)[0]
    assert logits.dtype == dtype
    assert torch.isfinite(logits).all()
    logits.float().logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert_close("logits", ref, logits.float(), 5e-2)
