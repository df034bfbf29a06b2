"""Reliability: exact resume after a SIGKILL, checkpoints that are never half written, numerical stability at long
length and in bf16, and a clear one-line error for each bad input, with nothing overwritten.

Bad inputs tested elsewhere and not repeated here: an expand ratio that does not divide the width
(test_cli.py::test_bad_expand_ratio_fails_with_both_numbers), a missing data dir and invalid GPU counts
(test_scripts.py::test_script_lm_refuses_bad_input_and_writes_nothing: missing-data-dir, num-gpus-abc,
gpus-cannot-make-batch, more-gpus-than-exist), a missing checkpoint for eval_lm.sh
(test_scripts.py::test_eval_lm_fails_when_nothing_is_evaluated).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BIN, REPO, USER_DIR, assert_close, random_inputs, rel_rms
from test_scripts import ARCH, TINY_MODEL, ok, one_line_error, run_script, snapshot

# One process, 4 sequences of 32 tokens per update, dropout on (the recipe's 0.1): a resume must restore the
# weights, Adam's moments, the learning-rate schedule, the data order and the dropout seeds to match exactly.
RESUME_ENV = {
    "GLOBAL_BATCH": "4", "BATCH_SIZE": "4", "TOKENS_PER_SAMPLE": "32", "MAX_UPDATE": "12", "WARMUP_UPDATES": "2",
    "PRECISION": "fp32", "LOG_INTERVAL": "1", "CPU_PROCS": "1", "EVAL_MAX_TOKENS": "2048",
}
RESUME_FLAGS = [*TINY_MODEL, "--save-interval-updates", "4", "--keep-interval-updates", "1"]
# Tiny models on 2 shared cores run several times faster on one thread than on two (fewer, larger time slices).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TRAIN_LOSS_RE = re.compile(r"train_inner \|.*? loss=([^,]+),.*?num_updates=(\d+),")
SAVED_RE = re.compile(r"Saved checkpoint \S+ \(epoch \d+ @ (\d+) updates")


def script(name, *args, env=None):
    """scripts/<name> run as test_scripts.run_script runs it, on one thread."""
    return run_script(name, *args, env={**ONE_THREAD, **(env or {})})


def train_losses(output: str) -> dict:
    """{update: loss as printed} from fairseq's train_inner lines."""
    return {int(n): loss for loss, n in TRAIN_LOSS_RE.findall(output)}


def model_tensors(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def train_direct(data_bin, save_dir, *extra, arch=ARCH):
    """fairseq-train itself (not the scripts) on the tiny model; returns the CompletedProcess whatever its exit."""
    cmd = [
        str(BIN / "fairseq-train"), str(data_bin), "--user-dir", str(USER_DIR), "--task", "language_modeling",
        "--arch", arch, *TINY_MODEL, "--tokens-per-sample", "32", "--cpu", "--optimizer", "adam", "--lr", "0.002",
        "--batch-size", "4", "--max-update", "3", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
        "--share-decoder-input-output-embed", "--log-format", "simple", "--log-interval", "1", *map(str, extra),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ONE_THREAD})


def last_error_line(proc) -> str:
    """The last line of a failed Python process's stderr: the exception and its message."""
    assert proc.returncode != 0, f"expected a failure\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stderr.strip().splitlines()[-1]


# --- 1. Resume after a kill ---

@pytest.fixture(scope="module")
def resumed(tiny_data_bin, tmp_path_factory):
    """An uninterrupted run, and the same command killed with SIGKILL after its first checkpoint, then rerun."""
    root = tmp_path_factory.mktemp("resume")
    full = ok(script("script_lm.sh", ARCH, 0, tiny_data_bin, *RESUME_FLAGS,
                         env={**RESUME_ENV, "SAVE_ROOT": str(root / "full")}))

    env = {**os.environ, "PYTHON": sys.executable, **ONE_THREAD, **RESUME_ENV, "SAVE_ROOT": str(root / "killed")}
    cmd = ["bash", str(REPO / "scripts/script_lm.sh"), ARCH, "0", str(tiny_data_bin), *RESUME_FLAGS]
    # a session of its own, so that the kill reaches bash, fairseq and tee at once, as a scheduler's does
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    killed_output = []
    try:
        for line in job.stdout:
            killed_output.append(line)
            if SAVED_RE.search(line):
                os.killpg(job.pid, signal.SIGKILL)
                break
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    killed_output = "".join(killed_output)
    assert job.returncode == -signal.SIGKILL, killed_output[-3000:]

    rerun = ok(script("script_lm.sh", ARCH, 0, tiny_data_bin, *RESUME_FLAGS, env=env))
    return {"root": root, "full": full.stdout + full.stderr, "killed": killed_output, "rerun": rerun}


def test_a_killed_run_resumes_from_checkpoint_last_with_the_losses_of_an_uninterrupted_run(resumed):
    full, killed = train_losses(resumed["full"]), train_losses(resumed["killed"])
    assert sorted(full) == list(range(1, 13))
    saved_at = int(SAVED_RE.search(resumed["killed"]).group(1))
    assert max(killed) < 12, "the kill came after the end of training"

    rerun = resumed["rerun"]
    match = re.search(r"resuming from \S+checkpoint_last\.pt at update (\d+)", rerun.stderr)
    assert match, rerun.stderr[-3000:]
    start = int(match.group(1))
    assert start >= saved_at and start % 4 == 0 and start < 12
    resumed_losses = train_losses(rerun.stdout + rerun.stderr)
    assert sorted(resumed_losses) == list(range(start + 1, 13))  # continued, not restarted
    assert resumed_losses == {n: full[n] for n in resumed_losses}  # as printed: 3-4 significant digits

    # and exactly: the final weights of both runs are the same bits
    full_model = model_tensors(resumed["root"] / "full" / ARCH / "checkpoint_last.pt")
    resumed_model = model_tensors(resumed["root"] / "killed" / ARCH / "checkpoint_last.pt")
    assert full_model.keys() == resumed_model.keys()
    for name, tensor in full_model.items():
        assert torch.equal(tensor, resumed_model[name]), name


def test_checkpoints_this_project_writes_load_with_the_safe_loader(resumed):
    checkpoint = resumed["root"] / "full" / ARCH / "checkpoint_last.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 12
    assert state["cfg"]["model"]["_name"] == ARCH and len(state["model"]) > 0


def test_no_blanket_weights_only_false():
    """Neither the project nor fairseq's checkpoint loader turns the safe loader off."""
    unsafe = "weights_only=" + "False"  # spelled in two pieces so that this file does not match itself
    sources = [*(REPO / "fairseq_hgrn2").rglob("*.py"), *(REPO / "scripts").glob("*.py"),
               *(REPO / "scripts").glob("*.sh")]
    import fairseq.checkpoint_utils

    sources.append(Path(fairseq.checkpoint_utils.__file__))
    offenders = [str(p) for p in sources if unsafe in p.read_text().replace(" ", "")]
    assert len(sources) > 10 and offenders == []


def test_a_copy_cut_short_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """fairseq copies its first checkpoint file over checkpoint_last.pt; with the plugin the copy is atomic."""
    import fairseq_hgrn2.models  # noqa: F401  (applies the plugin's fairseq patches)
    from fairseq.file_io import PathManager

    src, dst = tmp_path / "checkpoint_1_8.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old" * 1000)

    def copy_half_then_die(a, b, *args, **kwargs):  # what a kill in the middle of a copy leaves
        Path(b).write_bytes(Path(a).read_bytes()[:1500])
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", copy_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old" * 1000
    monkeypatch.undo()
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"new" * 1000 and {p.name for p in tmp_path.iterdir()} == {dst.name, src.name}


# --- 3. Bad input around checkpoints ---

@pytest.fixture
def save_root(resumed, tmp_path):
    """A copy of the uninterrupted run's SAVE_ROOT, to spoil."""
    root = tmp_path / "runs"
    shutil.copytree(resumed["root"] / "full", root)
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_checkpoint_last_is_refused_by_script_lm_and_by_fairseq_train(save_root, tiny_data_bin, tmp_path):
    checkpoint = save_root / ARCH / "checkpoint_last.pt"
    truncate(checkpoint)
    before = snapshot(tmp_path)
    env = {**RESUME_ENV, "SAVE_ROOT": str(save_root), "MAX_UPDATE": "20"}
    proc = script("script_lm.sh", ARCH, 0, tiny_data_bin, *RESUME_FLAGS, env=env)
    one_line_error(proc, f"checkpoint {checkpoint} is truncated or corrupt", "move it away")

    # fairseq-train through the plugin: a crash whose last line says the same (not a silent restart)
    proc = train_direct(tiny_data_bin, save_root / ARCH, "--max-update", "20")
    assert "truncated or corrupt" in last_error_line(proc) and "CheckpointError" in last_error_line(proc)
    assert snapshot(tmp_path) == before


def test_eval_lm_and_fairseq_eval_lm_refuse_a_truncated_checkpoint(save_root, tiny_data_bin, tmp_path):
    checkpoint = save_root / ARCH / "checkpoint_best.pt"
    truncate(checkpoint)
    before = snapshot(tmp_path)
    proc = script("eval_lm.sh", checkpoint, tiny_data_bin, env=RESUME_ENV)
    one_line_error(proc, f"checkpoint {checkpoint} is truncated or corrupt")
    # fairseq-eval-lm through the plugin: the same message as its last line
    proc = subprocess.run(
        [str(BIN / "fairseq-eval-lm"), str(tiny_data_bin), "--path", str(checkpoint), "--user-dir", str(USER_DIR),
         "--cpu", "--gen-subset", "test", "--tokens-per-sample", "32"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **ONE_THREAD},
    )
    line = last_error_line(proc)
    assert "CheckpointError" in line and f"checkpoint {checkpoint} is truncated or corrupt" in line, line
    assert snapshot(tmp_path) == before


def test_script_lm_refuses_a_checkpoint_of_another_architecture(save_root, tiny_data_bin, tmp_path):
    # the save dir of hgrn2_lm_expand2 holds an outproduct checkpoint (copied there by hand, say)
    other = save_root / "hgrn2_lm_expand2"
    other.mkdir()
    shutil.copy(save_root / ARCH / "checkpoint_last.pt", other / "checkpoint_last.pt")
    before = snapshot(tmp_path)
    env = {**RESUME_ENV, "SAVE_ROOT": str(save_root), "MAX_UPDATE": "20"}
    proc = script("script_lm.sh", "hgrn2_lm_expand2", 0, tiny_data_bin, *TINY_MODEL, env=env)
    one_line_error(proc, f"holds a {ARCH} model, not hgrn2_lm_expand2")
    # the same through --finetune-from-model, a model to start a new run from
    proc = script("script_lm.sh", "hgrn2_lm_expand2", 0, tiny_data_bin, *TINY_MODEL,
                      "--finetune-from-model", other / "checkpoint_last.pt", env={**env, "SAVE_ROOT": str(tmp_path / "new")})
    one_line_error(proc, f"holds a {ARCH} model, not hgrn2_lm_expand2")
    # --restore-file would restart every rerun from that file: refused, with what to do instead
    proc = script("script_lm.sh", ARCH, 0, tiny_data_bin, "--restore-file", other / "checkpoint_last.pt", env=env)
    one_line_error(proc, "--restore-file", "checkpoint_last.pt", "--finetune-from-model")
    assert snapshot(tmp_path) == before


def test_fairseq_train_refuses_to_resume_another_model_with_the_same_parameter_shapes(save_root, tiny_data_bin,
                                                                                     tmp_path):
    """--expand-ratio 4 instead of 2 changes no parameter shape: fairseq alone would load the weights and go on."""
    before = snapshot(tmp_path)
    proc = train_direct(tiny_data_bin, save_root / ARCH, "--expand-ratio", "4", "--max-update", "20")
    line = last_error_line(proc)
    assert "holds another model (expand_ratio=2) than this run builds (expand_ratio=4)" in line, line
    # and a --restore-file that does not exist is no longer a silent start from scratch
    proc = train_direct(tiny_data_bin, tmp_path / "new", "--restore-file", tmp_path / "missing.pt")
    assert f"--restore-file {tmp_path / 'missing.pt'} not found" in last_error_line(proc)
    assert not (tmp_path / "new" / "checkpoint_last.pt").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("new")} == before


def test_eval_lm_and_script_lm_refuse_a_data_bin_with_another_dictionary(save_root, tiny_data_bin, tmp_path):
    other = tmp_path / "other-bin"
    shutil.copytree(tiny_data_bin, other)
    with open(other / "dict.txt", "a") as f:
        f.write("extra_word_1 1\nextra_word_2 1\n")
    before = snapshot(tmp_path)
    proc = script("eval_lm.sh", save_root / ARCH / "checkpoint_best.pt", other, env=RESUME_ENV)
    vocab = len(torch.load(save_root / ARCH / "checkpoint_best.pt", weights_only=True)["model"]
                ["decoder.embed_tokens.weight"])
    one_line_error(proc, f"vocabulary of {vocab} entries", f"gives {vocab + 2}", "data-bin")
    # resuming the training on it
    proc = script("script_lm.sh", ARCH, 0, other, *RESUME_FLAGS,
                  env={**RESUME_ENV, "SAVE_ROOT": str(save_root), "MAX_UPDATE": "20"})
    one_line_error(proc, f"vocabulary of {vocab} entries", f"gives {vocab + 2}", "data-bin")
    assert snapshot(tmp_path) == before


# --- 3. Other bad input ---

@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_zero_or_negative_sequence_length_is_refused(value, tiny_data_bin, tmp_path):
    save_root = tmp_path / "runs"
    (save_root / ARCH).mkdir(parents=True)
    (save_root / ARCH / "train.log").write_text("an earlier run\n")
    checkpoint = save_root / ARCH / "checkpoint_best.pt"
    checkpoint.write_bytes(b"not read")
    before = snapshot(tmp_path)
    proc = script("script_lm.sh", ARCH, 0, tiny_data_bin, env={"SAVE_ROOT": str(save_root),
                                                                  "TOKENS_PER_SAMPLE": value})
    one_line_error(proc, "TOKENS_PER_SAMPLE must be an integer >= 1", f"'{value}'")
    proc = script("eval_lm.sh", checkpoint, tiny_data_bin, "--tokens-per-sample", value)
    one_line_error(proc, "TOKENS_PER_SAMPLE must be an integer >= 1", f"'{value}'")
    assert snapshot(tmp_path) == before


@pytest.fixture
def empty_valid_bin(tiny_data_bin, tmp_path) -> Path:
    """The tiny data-bin with its valid split replaced by an empty one, written as fairseq-preprocess writes it."""
    from fairseq.data import indexed_dataset

    data = tmp_path / "empty-valid"
    shutil.copytree(tiny_data_bin, data)
    builder = indexed_dataset.make_builder(str(data / "valid.bin"), impl="mmap", vocab_size=1000)
    builder.finalize(str(data / "valid.idx"))
    assert (data / "valid.bin").stat().st_size == 0
    return data


def test_an_empty_split_is_refused_by_training_and_evaluation(empty_valid_bin, save_root, tmp_path):
    before = snapshot(tmp_path)
    env = {**RESUME_ENV, "SAVE_ROOT": str(tmp_path / "new")}
    proc = script("script_lm.sh", ARCH, 0, empty_valid_bin, *TINY_MODEL, env=env)
    one_line_error(proc, "split 'valid'", "is empty (0 tokens)", "fairseq-preprocess")
    proc = script("eval_lm.sh", save_root / ARCH / "checkpoint_best.pt", empty_valid_bin, "--subset", "valid",
                      env=RESUME_ENV)
    one_line_error(proc, "split 'valid'", "is empty (0 tokens)")
    assert snapshot(tmp_path) == before


# --- 2. Numerical stability ---

LONG_T = 16384


@pytest.fixture(scope="module")
def long_inputs():
    """B=1, T=16384, H=2, e=16 in fp64, decays from 1e-6 to 1 - 1e-6, two channels held at either end throughout."""
    q, k, v, g, h0 = random_inputs(1, LONG_T, 2, 16, 16, torch.float64, logit_range=13.9, seed=3)
    g[..., 0, 0] = torch.nn.functional.logsigmoid(torch.tensor(13.9, dtype=torch.float64))  # lambda = 1 - 9e-7
    g[..., 0, 1] = torch.nn.functional.logsigmoid(torch.tensor(-13.9, dtype=torch.float64))  # lambda = 9e-7
    decay = g.exp()
    assert decay.min() < 1e-6 and decay.max() > 1 - 1e-6
    return q, k, v, g, h0


def forward_backward(inputs, dtype):
    """Output, final state and the gradients of q, k, v, g, h0 of the chunked torch path, inputs cast to dtype."""
    from fairseq_hgrn2.ops import hgrn2_recurrence

    leaves = [x.detach().to(dtype).requires_grad_() for x in inputs]
    o, final = hgrn2_recurrence(*leaves[:4], initial_state=leaves[4], output_final_state=True, backend="torch")
    gen = torch.Generator().manual_seed(1)
    do, dfinal = (torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (o, final))
    ((o.double() * do).sum() + (final.double() * dfinal).sum()).backward()
    return [o, final, *(x.grad for x in leaves)]


NAMES = ["o", "final_state", "dq", "dk", "dv", "dg", "dh0"]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 1.5e-2)], ids=["fp32", "bf16"])
def test_chunked_op_at_length_16384_matches_fp64(long_inputs, dtype, tol):
    """The oracle: the reference time loop in fp64 for o and the final state (its autograd graph of 16k steps
    takes minutes, so no gradients from it), and the chunked path in fp64 for the gradients, itself checked against
    the loop's output here and against its gradients in test_ops.py. bf16 is compared with fp64 on the same
    bf16-rounded inputs, so the bound measures the op, not the rounding of its inputs."""
    from fairseq_hgrn2.ops import hgrn2_recurrence_ref

    inputs = [x.to(dtype).double() for x in long_inputs]
    with torch.no_grad():
        o_ref, final_ref = hgrn2_recurrence_ref(*inputs[:4], initial_state=inputs[4], output_final_state=True)
    oracle = forward_backward(inputs, torch.float64)
    assert rel_rms(o_ref, oracle[0]) < 1e-10 and rel_rms(final_ref, oracle[1]) < 1e-10

    out = forward_backward(inputs, dtype)
    for name, ref, got in zip(NAMES, [o_ref, final_ref, *oracle[2:]], out):
        assert_close(f"{dtype} {name}", ref, got, tol)


def test_200_bf16_updates_on_cpu_stay_finite_and_lower_the_loss(tiny_data_bin, tmp_path):
    proc = train_direct(tiny_data_bin, tmp_path, "--bf16", "--max-update", "200", "--log-interval", "20",
                        "--lr", "0.003", "--no-save", "--disable-validation", "--seed", "1")
    output = ok(proc).stdout + proc.stderr
    assert "'bf16': True" in output
    losses = train_losses(output)
    assert sorted(losses) == list(range(20, 201, 20))
    values = [float(x) for x in losses.values()]
    assert all(torch.isfinite(torch.tensor(values))), losses
    assert values[-1] < 0.6 * values[0], losses  # e.g. 7.3 -> 2.7 on the tiny corpus
    progress = [line for line in output.splitlines() if "train_inner |" in line or "| train |" in line]
    assert progress and not any(re.search(r"=(nan|inf)\b| (nan|inf)\b", line, re.I) for line in progress)


# --- 4. An older checkpoint, refused by the safe loader, converted as the README says ---

def test_an_older_checkpoint_that_pickles_its_args_is_named_then_converts_as_the_readme_says(resumed, tiny_data_bin,
                                                                                             tmp_path):
    import argparse

    from fairseq import checkpoint_utils, options
    from omegaconf import OmegaConf

    from fairseq_hgrn2.checkpoints import CheckpointError, model_summary, read_checkpoint

    # the layout of older fairseq versions: the arguments as an argparse.Namespace under "args", no "cfg"
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(tiny_data_bin), "--user-dir", str(USER_DIR), "--task", "language_modeling", "--arch", ARCH, *TINY_MODEL,
        "--tokens-per-sample", "32", "--share-decoder-input-output-embed", "--optimizer", "adam", "--lr", "0.002",
    ])
    current = torch.load(resumed["root"] / "full" / ARCH / "checkpoint_last.pt", weights_only=True)
    old, converted = tmp_path / "old.pt", tmp_path / "converted.pt"
    torch.save({**current, "args": args, "cfg": None}, old)
    with pytest.raises(CheckpointError, match=r"refuses \S+old\.pt: it pickles argparse\.Namespace"):
        read_checkpoint(str(old))

    # the README's recipe; safe_globals is add_safe_globals limited to this block
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = checkpoint_utils.load_checkpoint_to_cpu(str(old))
    state["cfg"] = OmegaConf.to_container(state["cfg"], resolve=True, enum_to_str=True)
    state["args"] = None
    torch.save(state, converted)

    loaded = torch.load(converted, weights_only=True)
    assert loaded["model"].keys() == current["model"].keys()
    assert all(torch.equal(loaded["model"][k], current["model"][k]) for k in current["model"])
    assert model_summary(read_checkpoint(str(converted))) == model_summary(current)
