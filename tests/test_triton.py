"""The Triton backend: dispatch rules here, and the kernels under the Triton interpreter in a child process.

``TRITON_INTERPRET=1`` must be set before the kernels are defined, so the kernel cases live in
``triton_kernel_cases.py`` and run through ``python -m pytest`` in a fresh process; its failures fail these tests
with the child's output.
"""
import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from fairseq_hgrn2.ops import dispatch, resolve_backend

needs_triton = pytest.mark.skipif(not dispatch.triton_available(), reason="triton is not installed")


def test_auto_picks_torch_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("HGRN2_BACKEND", raising=False)
    assert resolve_backend(torch.device("cpu")) == "torch"


@needs_triton
def test_auto_picks_triton_for_cuda_tensors(monkeypatch):
    monkeypatch.delenv("HGRN2_BACKEND", raising=False)
    assert resolve_backend(torch.device("cuda")) == "triton"
    monkeypatch.setenv("HGRN2_BACKEND", "torch")
    assert resolve_backend(torch.device("cuda")) == "torch"


def test_forcing_triton_on_cpu_without_the_interpreter_fails_clearly(monkeypatch):
    monkeypatch.setenv("HGRN2_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="HGRN2 backend 'triton' needs"):
        resolve_backend(torch.device("cpu"))


@needs_triton
@pytest.mark.parametrize(
    "selection", ["scan_matches", "chunk_matches", "not matches_reference"], ids=["scan", "chunk", "both-step-dispatch"]
)
def test_kernels_under_the_interpreter(selection):
    """Every kernel against the fp64 reference: outputs, final state, all gradients (see triton_kernel_cases.py)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "HGRN2_TEST_DEVICE": "cpu"}
    env.pop("HGRN2_BACKEND", None)
    cmd = [
        sys.executable, "-m", "pytest", str(REPO / "tests/triton_kernel_cases.py"), "-q", "-k", selection,
        "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"interpreter cases '{selection}' failed:\n{output}"
    assert " passed" in proc.stdout and " deselected" in proc.stdout, proc.stdout[-2000:]


@needs_triton
def test_gpu_bench_runs_on_cpu_under_the_interpreter(tmp_path):
    """The benchmark's plumbing (timings, CSV, ratio table) on tiny shapes; the real run is gpu_check.sh."""
    out = tmp_path / "bench.csv"
    cmd = [
        sys.executable, str(REPO / "benchmarks/gpu_bench.py"), "--csv", str(out), "--device", "cpu",
        "--T", "16", "--e", "4,16", "--B", "1", "--d", "32", "--budget-s", "0",
    ]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert {(r["impl"], r["e"]) for r in rows} == {
        (impl, e) for impl in ("triton", "torch_chunk", "sdpa_causal") for e in ("4", "16")
    }
    assert all(float(r["ms"]) > 0 and not r["error"] for r in rows), rows
    assert "torch_chunk/triton" in proc.stdout


def test_gpu_check_rejects_bad_input_and_a_missing_gpu(tmp_path):
    script = REPO / "benchmarks/gpu_check.sh"
    proc = subprocess.run(["bash", str(script), "a", "b"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    if not torch.cuda.is_available():
        env = {**os.environ, "PYTHON": sys.executable}
        proc = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, env=env)
        assert proc.returncode == 1 and "sees no CUDA GPU" in proc.stderr


@needs_triton
def test_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    """Lower every kernel through the NVIDIA backend to a cubin for sm_90, ptxas included (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    cmd = [sys.executable, str(REPO / "tests/triton_compile_check.py"), "--arch", "90", "--e", "2,128"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for name in ("segment_states", "segment_state_grads", "chunk_fwd[w4]", "chunk_bwd[w8]", "scan_fwd", "scan_bwd"):
        assert f" {name} " in proc.stdout, proc.stdout
