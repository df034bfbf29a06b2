"""The chunked PyTorch recurrence against the plain-loop reference: outputs, final state and every gradient."""
import subprocess
import sys

import pytest
import torch

from conftest import assert_close, random_inputs
from fairseq_hgrn2.ops.chunk_torch import stable_chunk_size
from fairseq_hgrn2.ops import (
    hgrn2_recurrence,
    hgrn2_recurrence_chunk_torch,
    hgrn2_recurrence_ref,
    hgrn2_recurrent_step,
)

LENGTHS = (1, 15, 63, 64, 65, 200)
EXPAND_RATIOS = (1, 2, 4, 8, 16, 64, 128)
TOLERANCE = {torch.float64: 1e-6, torch.float32: 5e-3}


def outputs_and_grads(fn, inputs, do, ds):
    """Output, final state and the gradients of q, k, v, g, h0 for the loss <o, do> + <S_T, ds>."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    o, s = fn(*inputs[:4], initial_state=inputs[4], output_final_state=True)
    loss = (o.double() * do).sum() + (s.double() * ds).sum()
    grads = torch.autograd.grad(loss, inputs)
    return [o, s, *grads]


def check_against_reference(B, T, H, e, dtype, logit_range=12.0, seed=0):
    inputs = random_inputs(B, T, H, e, e, dtype, logit_range=logit_range, seed=seed)
    ref_inputs = [x.double() for x in inputs]
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(B, T, H, e, generator=gen, dtype=torch.float64)
    ds = torch.randn(B, H, e, e, generator=gen, dtype=torch.float64)
    ref = outputs_and_grads(hgrn2_recurrence_ref, ref_inputs, do, ds)
    out = outputs_and_grads(hgrn2_recurrence_chunk_torch, inputs, do, ds)
    for name, r, o in zip(("o", "final_state", "dq", "dk", "dv", "dg", "dh0"), ref, out):
        assert o.dtype == dtype or name == "final_state", f"{name} came back as {o.dtype}"
        assert_close(name, r, o, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("e", EXPAND_RATIOS, ids=lambda e: f"e{e}")
@pytest.mark.parametrize("T", LENGTHS, ids=lambda t: f"T{t}")
def test_chunk_matches_reference(T, e, dtype):
    """Decays span sigmoid(-12)..sigmoid(12), i.e. from ~6e-6 to 1 - 6e-6, inside every tensor."""
    check_against_reference(B=2, T=T, H=2, e=e, dtype=dtype)


@pytest.mark.parametrize(
    "logit_range, name",
    [(1e-3, "decay-half"), (30.0, "decay-near-0-and-1")],
    ids=lambda x: x if isinstance(x, str) else "",
)
@pytest.mark.parametrize("e", (2, 128), ids=lambda e: f"e{e}")
def test_chunk_matches_reference_extreme_decays(logit_range, name, e):
    check_against_reference(B=1, T=200, H=2, e=e, dtype=torch.float32, logit_range=logit_range)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_decay_near_one_and_near_zero_everywhere(dtype):
    """All decays at one extreme: the state barely decays (long memory), or forgets everything at each step."""
    for log_decay in (-1e-6, -14.0):
        q, k, v, g, h0 = random_inputs(1, 130, 2, 16, 16, torch.float64)
        g = torch.full_like(g, log_decay)
        ref_o, ref_s = hgrn2_recurrence_ref(q, k, v, g, initial_state=h0, output_final_state=True)
        o, s = hgrn2_recurrence_chunk_torch(
            *(x.to(dtype) for x in (q, k, v, g)), initial_state=h0.to(dtype), output_final_state=True
        )
        assert_close(f"o at log decay {log_decay}", ref_o, o, TOLERANCE[dtype])
        assert_close(f"state at log decay {log_decay}", ref_s, s, TOLERANCE[dtype])


def test_without_initial_state_and_final_state():
    q, k, v, g, _ = random_inputs(2, 70, 3, 8, 8, torch.float64, initial_state=False)
    ref_o, none_state = hgrn2_recurrence_ref(q, k, v, g)
    o, state = hgrn2_recurrence_chunk_torch(q, k, v, g)
    assert none_state is None and state is None
    assert_close("o", ref_o, o, 1e-10)


def test_different_key_and_value_sizes():
    q, k, v, g, h0 = random_inputs(1, 40, 2, 8, 16, torch.float64)
    ref = hgrn2_recurrence_ref(q, k, v, g, initial_state=h0, output_final_state=True)
    out = hgrn2_recurrence_chunk_torch(q, k, v, g, initial_state=h0, output_final_state=True)
    assert_close("o", ref[0], out[0], 1e-10)
    assert_close("state", ref[1], out[1], 1e-10)


def test_empty_sequence_passes_the_state_through():
    q, k, v, g, h0 = random_inputs(2, 0, 2, 4, 4, torch.float32)
    o, s = hgrn2_recurrence_chunk_torch(q, k, v, g, initial_state=h0, output_final_state=True)
    assert o.shape == (2, 0, 2, 4)
    assert torch.equal(s, h0)


def test_splitting_a_sequence_carries_the_state():
    """Running [0, t) then [t, T) from the carried state equals one run over [0, T)."""
    q, k, v, g, h0 = random_inputs(2, 150, 2, 16, 16, torch.float64)
    full_o, full_s = hgrn2_recurrence_chunk_torch(q, k, v, g, initial_state=h0, output_final_state=True)
    o1, s1 = hgrn2_recurrence_chunk_torch(q[:, :77], k[:, :77], v[:, :77], g[:, :77], h0, True)
    o2, s2 = hgrn2_recurrence_chunk_torch(q[:, 77:], k[:, 77:], v[:, 77:], g[:, 77:], s1, True)
    assert_close("o", full_o, torch.cat([o1, o2], dim=1), 1e-12)
    assert_close("state", full_s, s2, 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_compute_in_fp32(dtype):
    """Half inputs come back in their dtype; the state stays fp32 and only the input rounding shows."""
    inputs = [x.to(dtype) for x in random_inputs(2, 100, 2, 16, 16, torch.float32)]
    o, s = hgrn2_recurrence_chunk_torch(*inputs[:4], initial_state=inputs[4], output_final_state=True)
    assert o.dtype == dtype and s.dtype == torch.float32
    ref_o, ref_s = hgrn2_recurrence_ref(*(x.double() for x in inputs[:4]), inputs[4].double(), True)
    assert_close("o", ref_o, o, 1e-2)
    assert_close("state", ref_s, s, 1e-5)


def test_dispatch_honours_the_backend_variable(monkeypatch):
    q, k, v, g, h0 = random_inputs(1, 33, 2, 4, 4, torch.float64)
    for backend in ("torch", "reference"):
        monkeypatch.setenv("HGRN2_BACKEND", backend)
        o, s = hgrn2_recurrence(q, k, v, g, initial_state=h0, output_final_state=True)
        ref_o, ref_s = hgrn2_recurrence_ref(q, k, v, g, initial_state=h0, output_final_state=True)
        assert_close(f"o via {backend}", ref_o, o, 1e-10)
    monkeypatch.setenv("HGRN2_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="unknown HGRN2 backend 'cuda-magic'"):
        hgrn2_recurrence(q, k, v, g)


def test_dispatch_rejects_mismatched_shapes():
    q, k, v, g, _ = random_inputs(1, 8, 2, 4, 4, torch.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        hgrn2_recurrence(q, k[:, :7], v, g)


def test_ops_import_neither_fairseq_nor_triton():
    code = "import sys, fairseq_hgrn2.ops; print(sorted(m for m in ('fairseq', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("tokens_per_step", (1, 3))
def test_recurrent_step_continues_the_chunked_state(tokens_per_step):
    """Prefill with the chunked op, then step token by token: same outputs and state as one full run."""
    q, k, v, g, h0 = random_inputs(2, 40, 2, 8, 8, torch.float32)
    full_o, full_s = hgrn2_recurrence_ref(q, k, v, g, initial_state=h0, output_final_state=True)
    o, state = hgrn2_recurrence(q[:, :25], k[:, :25], v[:, :25], g[:, :25], initial_state=h0, output_final_state=True)
    outputs = [o]
    for t in range(25, 40, tokens_per_step):
        sl = slice(t, t + tokens_per_step)
        outputs.append(hgrn2_recurrent_step(q[:, sl], k[:, sl], v[:, sl], g[:, sl], state))
    assert_close("o", full_o, torch.cat(outputs, 1), 1e-5)
    assert_close("state", full_s, state, 1e-5)


@pytest.mark.parametrize("e", (2, 16), ids=("e2-elementwise", "e16-scores"))
def test_custom_backward_passes_gradcheck(e):
    """Finite differences against the hand-written backward, with padding, several chunks and h0."""
    inputs = [x.detach().requires_grad_() for x in random_inputs(1, 21, 1, e, e, torch.float64)]

    def fn(q, k, v, g, h0):
        return hgrn2_recurrence_chunk_torch(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=8)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("e", (2, 16), ids=("e2-elementwise", "e16-scores"))
def test_non_contiguous_inputs_and_partial_requires_grad(e):
    """Inputs that are strided views; only k and g require grad; no initial state."""
    q, k, v, g, _ = random_inputs(2, 50, 2, e, e, torch.float64, initial_state=False)
    wide = [torch.stack([x, -x], dim=-1)[..., 0] for x in (q, k, v, g)]  # same values, last stride 2
    assert not any(x.is_contiguous() for x in wide)
    wide[1].requires_grad_()
    wide[3].requires_grad_()
    o, s = hgrn2_recurrence_chunk_torch(*wide, output_final_state=True)
    gen = torch.Generator().manual_seed(3)
    do, ds = torch.randn(o.shape, generator=gen, dtype=o.dtype), torch.randn(s.shape, generator=gen, dtype=s.dtype)
    dk, dg = torch.autograd.grad((o * do).sum() + (s * ds).sum(), [wide[1], wide[3]])
    ref = [x.clone().requires_grad_(i in (1, 3)) for i, x in enumerate((q, k, v, g))]
    ref_o, ref_s = hgrn2_recurrence_ref(*ref, output_final_state=True)
    ref_dk, ref_dg = torch.autograd.grad((ref_o * do).sum() + (ref_s * ds).sum(), [ref[1], ref[3]])
    for name, r, x in (("o", ref_o, o), ("state", ref_s, s), ("dk", ref_dk, dk), ("dg", ref_dg, dg)):
        assert_close(name, r, x, 1e-10)


def test_no_grad_builds_no_graph():
    q, k, v, g, h0 = random_inputs(1, 30, 2, 8, 8, torch.float32)
    with torch.no_grad():
        o, s = hgrn2_recurrence_chunk_torch(q, k, v, g, initial_state=h0, output_final_state=True)
    assert o.grad_fn is None and s.grad_fn is None
    o, _ = hgrn2_recurrence_chunk_torch(q, k, v, g, initial_state=h0)
    assert not o.requires_grad


@pytest.mark.parametrize("e", (2, 16), ids=("e2-elementwise", "e16-scores"))
def test_forgetting_everything_shrinks_chunks_to_one_token(e):
    """A log decay of -100 per step leaves no stable chunk longer than 1: still exact, still finite."""
    assert stable_chunk_size(torch.full((1, 64, 1, 4), -100.0), 64) == 1
    assert stable_chunk_size(torch.full((1, 64, 1, 4), -0.5), 64) == 64
    q, k, v, g, h0 = random_inputs(1, 40, 2, e, e, torch.float32)
    g[:, 10:20] = -100.0
    check = lambda x: [t.double() for t in x]  # noqa: E731
    ref = outputs_and_grads(hgrn2_recurrence_ref, check((q, k, v, g, h0)), *_probes(q, e))
    out = outputs_and_grads(hgrn2_recurrence_chunk_torch, (q, k, v, g, h0), *_probes(q, e))
    for name, r, o in zip(("o", "final_state", "dq", "dk", "dv", "dg", "dh0"), ref, out):
        assert_close(name, r, o, TOLERANCE[torch.float32])


def _probes(q, e):
    gen = torch.Generator().manual_seed(7)
    B, T, H, _ = q.shape
    return torch.randn(B, T, H, e, generator=gen, dtype=torch.float64), torch.randn(
        B, H, e, e, generator=gen, dtype=torch.float64
    )
