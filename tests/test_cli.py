"""End to end through fairseq's own command-line tools, as a user runs them."""
import math

import pytest

from conftest import USER_DIR, parse_eval_lm, run_cli
from test_model import ARCH_NAMES

TINY = ["--decoder-embed-dim", "128", "--decoder-layers", "2", "--tokens-per-sample", "64"]


def train(data_bin, save_dir, arch, *extra):
    return run_cli(
        [
            "fairseq-train", data_bin, "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", arch,
            *TINY, "--cpu", "--optimizer", "adam", "--lr", "0.002", "--max-tokens", "1024",
            "--max-update", "3", "--save-dir", save_dir, "--no-epoch-checkpoints",
            "--share-decoder-input-output-embed", "--log-format", "simple", "--log-interval", "1", *extra,
        ]
    )


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_train_then_eval_lm(arch, tiny_data_bin, tmp_path):
    proc = train(tiny_data_bin, tmp_path, arch)
    assert "num_updates=3" in proc.stderr + proc.stdout
    checkpoint = tmp_path / "checkpoint_last.pt"
    assert checkpoint.exists()
    proc = run_cli(
        [
            "fairseq-eval-lm", tiny_data_bin, "--path", checkpoint, "--user-dir", USER_DIR, "--cpu",
            "--gen-subset", "test", "--tokens-per-sample", "64", "--context-window", "0", "--max-tokens", "4096",
        ]
    )
    tokens, ppl = parse_eval_lm(proc.stderr + proc.stdout)
    assert tokens > 0
    assert math.isfinite(ppl) and 1.0 < ppl < 1000


def test_train_in_bf16_on_cpu(tiny_data_bin, tmp_path):
    """fairseq turns --bf16 into --tpu; the plugin undoes that when torch_xla is absent."""
    proc = train(tiny_data_bin, tmp_path, "hgrn2_lm_outproduct_16", "--bf16")
    assert "num_updates=3" in proc.stderr + proc.stdout


def test_bad_expand_ratio_fails_with_both_numbers(tiny_data_bin, tmp_path):
    with pytest.raises(AssertionError) as info:
        train(tiny_data_bin, tmp_path, "hgrn2_lm_outproduct_128", "--expand-ratio", "48")
    assert "--expand-ratio 48 does not divide --decoder-embed-dim 128" in str(info.value)
    assert not (tmp_path / "checkpoint_last.pt").exists()
