"""Shared helpers for the test suite."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "fairseq_hgrn2"
BIN = Path(sys.executable).parent


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Relative RMS error ``||ref - out|| / ||ref||`` in fp64 (0 when both are exactly zero)."""
    ref, out = ref.double(), out.double()
    denom = ref.norm().item()
    err = (ref - out).norm().item()
    return err / denom if denom > 0 else err


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> None:
    """Relative-RMS comparison that also rejects NaN/Inf and shape changes."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = rel_rms(ref, out)
    assert err < tol, f"{name}: relative RMS error {err:.3e} >= {tol:.1e}"


def random_inputs(B, T, H, K, V, dtype, logit_range=12.0, seed=0, initial_state=True):
    """q, k, v, g ``[B, T, H, *]`` and h0 ``[B, H, K, V]``; decays lambda = sigmoid(U(-r, r)) span (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    k = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    logits = (torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) * 2 - 1) * logit_range
    g = torch.nn.functional.logsigmoid(logits)
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64) if initial_state else None
    cast = [x.to(dtype) for x in (q, k, v, g)]
    return (*cast, h0.to(dtype) if h0 is not None else None)


def run_cli(args, cwd=None, env=None, timeout=600):
    """Run a console script of this environment (fairseq-train, ...); fail with its output if it fails."""
    exe = BIN / str(args[0])
    cmd = [str(exe) if exe.exists() else str(args[0]), *map(str, args[1:])]
    proc = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory) -> Path:
    """A binarized tiny corpus made with fairseq-preprocess."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    run_cli([sys.executable, REPO / "scripts/make_tiny_corpus.py", root / "raw"])
    run_cli(
        [
            "fairseq-preprocess", "--only-source",
            "--trainpref", root / "raw/train.txt", "--validpref", root / "raw/valid.txt",
            "--testpref", root / "raw/test.txt", "--destdir", root / "bin", "--workers", "1",
        ]
    )
    return root / "bin"


EVAL_RE = re.compile(r"Evaluated ([\d,]+) tokens.*?Perplexity: ([\d.,a-z]+)", re.S)


def parse_eval_lm(output: str):
    """(tokens evaluated, perplexity) from fairseq-eval-lm's log."""
    match = EVAL_RE.search(output)
    assert match, f"no perplexity in fairseq-eval-lm output:\n{output[-3000:]}"
    return int(match.group(1).replace(",", "")), float(match.group(2).replace(",", ""))
