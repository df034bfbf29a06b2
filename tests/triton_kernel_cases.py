"""The Triton kernels against the fp64 reference. Run in their own process (see test_triton.py).

On CPU this needs ``TRITON_INTERPRET=1`` set before triton is imported; ``HGRN2_TEST_DEVICE=cuda`` runs the same
cases natively on a GPU (with ``TRITON_F32_DEFAULT=ieee`` for the fp32 comparisons), plus a few larger shapes.
"""
import os

import pytest
import torch

from conftest import assert_close, random_inputs

DEVICE = os.environ.get("HGRN2_TEST_DEVICE", "cpu")
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("the Triton kernel cases run on CPU only under TRITON_INTERPRET=1 (see tests/test_triton.py)")

from fairseq_hgrn2.ops import hgrn2_recurrence, hgrn2_recurrence_ref, hgrn2_recurrent_step  # noqa: E402
from fairseq_hgrn2.ops.triton import (  # noqa: E402
    hgrn2_recurrence_chunk_triton,
    hgrn2_recurrence_scan_triton,
    hgrn2_recurrence_triton,
    hgrn2_recurrent_step_triton,
)

TOLERANCE = 5e-3
NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "dh0")
FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(autouse=True)
def nan_filled_buffers(monkeypatch):
    """Fresh float buffers start as NaN, so a kernel that leaves part of its output unwritten fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(x):
        return x.fill_(float("nan")) if x.is_floating_point() else x

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: fill(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: fill(empty_like(*a, **kw)))


def outputs_and_grads(fn, inputs, do, ds, with_state=True):
    """Output, final state and the gradients of q, k, v, g (and h0) for the loss <o, do> + <S_T, ds>."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    if with_state:
        o, s = fn(*inputs[:4], initial_state=inputs[4], output_final_state=True)
        loss = (o.double() * do).sum() + (s.double() * ds).sum()
        return [o, s, *torch.autograd.grad(loss, inputs)]
    o, s = fn(*inputs[:4])
    assert s is None
    return [o, *torch.autograd.grad((o.double() * do).sum(), inputs[:4])]


def check(fn, B, T, H, K, V, dtype, logit_range=12.0, seed=0, with_state=True):
    """Compare ``fn`` with the fp64 reference run on the same (rounded) inputs."""
    inputs = [x.to(DEVICE) for x in random_inputs(B, T, H, K, V, dtype, logit_range=logit_range, seed=seed)]
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64).to(DEVICE)
    ds = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64).to(DEVICE)
    if not with_state:
        inputs = inputs[:4]
    ref = outputs_and_grads(hgrn2_recurrence_ref, [x.double() for x in inputs], do, ds, with_state)
    out = outputs_and_grads(fn, inputs, do, ds, with_state)
    names = NAMES if with_state else ("o", "dq", "dk", "dv", "dg")
    for name, r, o in zip(names, ref, out):
        expected = torch.float32 if name == "final_state" else dtype
        assert o.dtype == expected, f"{name} came back as {o.dtype}"
        assert o.device.type == DEVICE
        assert_close(name, r, o, TOLERANCE)


def case(T, e, dtype=FP32, B=1, H=2, logit_range=12.0):
    name = f"T{T}-e{e}-{str(dtype).split('.')[-1]}-B{B}H{H}" + (f"-r{logit_range:g}" if logit_range != 12.0 else "")
    return pytest.param(T, e, dtype, B, H, logit_range, id=name)


# logit_range r: decays lambda = sigmoid(U(-r, r)); r = 12 spans 6e-6 .. 1 - 6e-6, r = 30 spans 1e-13 .. 1 - 1e-13
SCAN_CASES = [
    case(1, 1), case(65, 1, B=2), case(15, 2), case(63, 2, FP16), case(33, 2, BF16), case(256, 2, H=1),
    case(63, 4), case(100, 4, logit_range=30.0), case(65, 8, FP16, B=2), case(15, 8, BF16),
]
CHUNK_CASES = [
    case(1, 16), case(15, 16, B=2), case(63, 16), case(65, 16, FP16), case(63, 16, BF16), case(200, 16, H=1),
    case(100, 16, logit_range=30.0), case(65, 32, FP16), case(15, 64), case(63, 64, BF16, H=1),
    case(20, 128, H=1),
]
if DEVICE == "cuda":  # shapes too slow for the interpreter: long sequences, several value blocks, many heads
    SCAN_CASES += [case(1000, 2, BF16, B=2, H=64), case(777, 8, FP32, B=2, H=16)]
    CHUNK_CASES += [
        case(1000, 128, BF16, B=2, H=4), case(777, 128, FP32, B=2, H=4), case(2048, 64, FP16, B=2, H=8),
        case(513, 16, BF16, B=3, H=32, logit_range=30.0),
    ]


@pytest.mark.parametrize("T, e, dtype, B, H, logit_range", SCAN_CASES)
def test_scan_matches_reference(T, e, dtype, B, H, logit_range):
    check(hgrn2_recurrence_scan_triton, B, T, H, e, e, dtype, logit_range)


@pytest.mark.parametrize("T, e, dtype, B, H, logit_range", CHUNK_CASES)
def test_chunk_matches_reference(T, e, dtype, B, H, logit_range):
    check(hgrn2_recurrence_chunk_triton, B, T, H, e, e, dtype, logit_range)


@pytest.mark.parametrize("e", (2, 16), ids=["scan-e2", "chunk-e16"])
def test_long_sequence_with_extreme_decays_stays_finite_and_exact(e):
    """Stability at the longest T the interpreter runs in seconds (1024; 4096 on CUDA): decays from 8e-7 to
    1 - 8e-7 (logits in [-14, 14]) over a whole sequence, outputs and every gradient against the fp64 loop."""
    T = 1024 if DEVICE == "cpu" else 4096  # the fp64 loop with autograd is the slow part
    check(hgrn2_recurrence_triton, 1, T, 1, e, e, FP32, logit_range=14.0)


@pytest.mark.parametrize("K, V", [(4, 8), (16, 32)], ids=["scan-K4V8", "chunk-K16V32"])
def test_both_paths_with_different_key_and_value_widths(K, V):
    check(hgrn2_recurrence_triton, 1, 40, 2, K, V, FP32)


@pytest.mark.parametrize("e", (2, 16), ids=["scan-e2", "chunk-e16"])
def test_both_paths_without_initial_or_final_state(e):
    check(hgrn2_recurrence_triton, 2, 40, 2, e, e, FP32, with_state=False)


@pytest.mark.parametrize("e", (2, 16), ids=["scan-e2", "chunk-e16"])
def test_both_paths_empty_sequence_passes_the_state_through(e):
    q, k, v, g, h0 = (x.to(DEVICE) for x in random_inputs(2, 0, 2, e, e, FP32))
    o, s = hgrn2_recurrence_triton(q, k, v, g, initial_state=h0, output_final_state=True)
    assert o.shape == (2, 0, 2, e)
    assert torch.equal(s, h0)


@pytest.mark.parametrize("e, tokens", [(2, 1), (2, 3), (16, 1), (16, 3), (128, 1), (128, 2)])
def test_step_updates_the_state_in_place(e, tokens):
    """Prefill with the Triton chunked op, then step: same outputs and state as the reference over the whole run."""
    B, H, T0 = 2, (2 if e < 128 else 1), 20
    q, k, v, g, h0 = (x.to(DEVICE) for x in random_inputs(B, T0 + 2 * tokens, H, e, e, FP32))
    ref_o, ref_s = hgrn2_recurrence_ref(*(x.double() for x in (q, k, v, g, h0)), output_final_state=True)
    o, state = hgrn2_recurrence_triton(q[:, :T0], k[:, :T0], v[:, :T0], g[:, :T0], h0, True)
    outputs, storage = [o], state.data_ptr()
    for t in range(T0, T0 + 2 * tokens, tokens):
        sl = slice(t, t + tokens)
        step_o = hgrn2_recurrent_step_triton(q[:, sl], k[:, sl], v[:, sl], g[:, sl], state)
        assert step_o.shape == (B, tokens, H, e) and step_o.dtype == q.dtype
        outputs.append(step_o)
    assert state.data_ptr() == storage and state.dtype == torch.float32
    assert_close("o", ref_o, torch.cat(outputs, 1), TOLERANCE)
    assert_close("state", ref_s, state, TOLERANCE)


@pytest.mark.parametrize("dtype", (FP16, BF16), ids=["fp16", "bf16"])
def test_step_with_half_inputs_and_a_non_contiguous_state(dtype):
    q, k, v, g, h0 = (x.to(DEVICE) for x in random_inputs(2, 1, 2, 8, 8, FP32))
    q, k, v, g = (x.to(dtype) for x in (q, k, v, g))
    state = h0.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, [B, H, K, V] non-contiguous
    ref_o, ref_s = hgrn2_recurrence_ref(*(x.double() for x in (q, k, v, g, h0)), output_final_state=True)
    o = hgrn2_recurrent_step_triton(q, k, v, g, state)
    assert o.dtype == dtype
    assert_close("o", ref_o, o, TOLERANCE)
    assert_close("state", ref_s, state, 1e-5)


def test_dispatch_routes_to_triton(monkeypatch):
    """HGRN2_BACKEND=triton reaches the kernels through the shared op and the step; fp64 falls back to torch."""
    monkeypatch.setenv("HGRN2_BACKEND", "triton")
    for e in (4, 16):
        q, k, v, g, h0 = (x.to(DEVICE) for x in random_inputs(1, 30, 2, e, e, FP32))
        o, s = hgrn2_recurrence(q, k, v, g, initial_state=h0, output_final_state=True)
        ref_o, ref_s = hgrn2_recurrence_ref(q, k, v, g, initial_state=h0, output_final_state=True)
        assert_close("o", ref_o, o, 1e-5)
        step_o = hgrn2_recurrent_step(q[:, :1], k[:, :1], v[:, :1], g[:, :1], h0)
        assert_close("step o", ref_o[:, :1], step_o, 1e-5)
    q64, k64, v64, g64, h64 = (x.to(DEVICE) for x in random_inputs(1, 30, 2, 16, 16, torch.float64))
    o, s = hgrn2_recurrence(q64, k64, v64, g64, initial_state=h64, output_final_state=True)
    ref_o, ref_s = hgrn2_recurrence_ref(q64, k64, v64, g64, initial_state=h64, output_final_state=True)
    assert o.dtype == torch.float64
    assert_close("fp64 o", ref_o, o, 1e-10)
