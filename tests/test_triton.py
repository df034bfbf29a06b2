"""The Triton backend: dispatch rules here, and the kernels under the Triton interpreter in a child process.

``TRITON_INTERPRET=1`` must be set before the kernels are defined, so the kernel cases live in
``triton_kernel_cases.py`` and run through ``python -m pytest`` in a fresh process; its failures fail these tests
with the child's output.
"""
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
    assert proc.returncode == 0, f"interpreter cases '{selection}' failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and " deselected" in proc.stdout, proc.stdout[-2000:]
