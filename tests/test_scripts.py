"""The training, evaluation, data and sweep scripts, run as a user runs them, with tiny settings on CPU.

Tiny settings go through the same two doors a user has: recipe values as environment variables (read by
configs/wikitext103.sh), model shape as extra fairseq flags.
"""
import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

ARCH = "hgrn2_lm_outproduct_2"
# 8 sequences of 32 tokens per update, at most 2 per process and step: 2 processes accumulate 2 steps each
TINY_ENV = {
    "GLOBAL_BATCH": "8", "BATCH_SIZE": "2", "TOKENS_PER_SAMPLE": "32", "MAX_UPDATE": "3", "WARMUP_UPDATES": "1",
    "PRECISION": "fp32", "LOG_INTERVAL": "1", "EVAL_MAX_TOKENS": "2048",
}
TINY_MODEL = ["--decoder-embed-dim", "32", "--decoder-layers", "1"]
RESULT_RE = re.compile(r"^eval_lm: subset=(\w+) context_window=(\d+) tokens=(\d+) loss_base2=(\S+) ppl=(\S+)$", re.M)


def run_script(name, *args, env=None, timeout=600):
    """Run scripts/<name> with bash and this interpreter; returns the CompletedProcess whatever its exit code."""
    return subprocess.run(
        ["bash", str(REPO / "scripts" / name), *map(str, args)],
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def one_line_error(proc, *fragments):
    """The process failed with exactly one line on stderr, starting with 'error:' and naming each fragment."""
    assert proc.returncode != 0, f"expected a failure\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(root: Path) -> dict:
    """Every file and folder under root, files with their content hash: shows that nothing was written."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in root.rglob("*")
    }


def split_tokens(data_bin: Path, subset: str) -> int:
    """Tokens in a binarized split, end-of-line symbols included, counted by fairseq's own loader."""
    from fairseq.data import Dictionary, data_utils

    dataset = data_utils.load_indexed_dataset(str(data_bin / subset), Dictionary.load(str(data_bin / "dict.txt")))
    return int(dataset.sizes.sum())


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory) -> Path:
    """SAVE_ROOT of a 3-update run of ARCH with 2 CPU processes; the script's output is in SAVE_ROOT/run.out."""
    save_root = tmp_path_factory.mktemp("runs")
    env = {**TINY_ENV, "CPU_PROCS": "2", "SAVE_ROOT": str(save_root)}
    proc = ok(run_script("script_lm.sh", ARCH, 0, tiny_data_bin, *TINY_MODEL, env=env))
    (save_root.parent / f"{save_root.name}.out").write_text(proc.stdout + proc.stderr)
    return save_root


# --- script_lm.sh ---

def test_script_lm_trains_with_two_cpu_processes_and_the_exact_global_batch(trained):
    out = (trained.parent / f"{trained.name}.out").read_text()
    save_dir = trained / ARCH
    assert "training on 2 devices" in out
    assert "--update-freq 2" in out  # 8 sequences = 2 processes x 2 sequences x 2 accumulated steps
    updates = re.findall(r"train_inner \|.*?bsz=(\d+), num_updates=(\d+)", out)
    assert [n for _, n in updates] == ["1", "2", "3"]
    assert all(bsz == "8" for bsz, _ in updates), updates  # every update saw the whole global batch
    assert "wpb=256" in out  # 8 sequences x 32 tokens
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "train.log"):
        assert (save_dir / name).is_file()
    assert "num_updates=3" in (save_dir / "train.log").read_text()
    assert any((save_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_script_lm_resumes_from_checkpoint_last_then_stops_when_done(trained, tiny_data_bin, tmp_path):
    save_root = tmp_path / "runs"
    shutil.copytree(trained, save_root)
    env = {**TINY_ENV, "CPU_PROCS": "2", "SAVE_ROOT": str(save_root), "MAX_UPDATE": "5"}

    proc = ok(run_script("script_lm.sh", ARCH, 0, tiny_data_bin, *TINY_MODEL, env=env))
    out = proc.stdout + proc.stderr
    assert "resuming from" in proc.stderr and "at update 3" in proc.stderr
    assert re.search(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch 1 @ 3 updates\)", out)
    assert re.findall(r"train_inner \|.*?num_updates=(\d+)", out) == ["4", "5"]  # continued, not restarted

    # the same command once more: done, nothing trained or written but the log line
    checkpoint = save_root / ARCH / "checkpoint_last.pt"
    before = checkpoint.stat().st_mtime_ns
    proc = ok(run_script("script_lm.sh", ARCH, 0, tiny_data_bin, *TINY_MODEL, env=env))
    assert "has 5 updates (MAX_UPDATE=5): training is done" in proc.stderr
    assert checkpoint.stat().st_mtime_ns == before
    assert len(re.findall(r"^=== ", (save_root / ARCH / "train.log").read_text(), re.M)) == 2  # both runs kept


@pytest.mark.parametrize(
    "args, env, fragments",
    [
        pytest.param(["hgrn2_lm_outproduct_3", "0", "DATA"], {}, ["unknown architecture 'hgrn2_lm_outproduct_3'"],
                     id="unknown-arch"),
        pytest.param([ARCH, "0", "MISSING"], {}, ["data dir", "not found"], id="missing-data-dir"),
        pytest.param([ARCH, "abc", "DATA"], {}, ["NUM_GPUS", "'abc'"], id="num-gpus-abc"),
        # the paper's 128 sequences cannot be split over 3 GPUs
        pytest.param([ARCH, "3", "DATA"], {}, ["global batch of 128", "3 processes"], id="gpus-cannot-make-batch"),
        pytest.param([ARCH, "0", "DATA"], {"CPU_PROCS": "6"}, ["global batch of 128", "6 processes"],
                     id="cpu-procs-cannot-make-batch"),
        # 64 GPUs could make the batch (2 sequences each) but this machine does not have them
        pytest.param([ARCH, "64", "DATA"], {}, ["asked for 64 GPUs"], id="more-gpus-than-exist"),
        pytest.param([ARCH, "0", "DATA", "--update-freq", "4"], {}, ["--update-freq", "GLOBAL_BATCH"],
                     id="flag-owned-by-the-script"),
    ],
)
def test_script_lm_refuses_bad_input_and_writes_nothing(args, env, fragments, tiny_data_bin, tmp_path):
    save_root = tmp_path / "runs"
    (save_root / ARCH).mkdir(parents=True)
    (save_root / ARCH / "train.log").write_text("an earlier run\n")
    before = snapshot(tmp_path)
    args = [{"DATA": tiny_data_bin, "MISSING": tmp_path / "no-such-dir"}.get(a, a) for a in args]
    proc = run_script("script_lm.sh", *args, env={"SAVE_ROOT": str(save_root), **env})
    one_line_error(proc, *fragments)
    assert snapshot(tmp_path) == before


# --- eval_lm.sh ---

def test_eval_lm_scores_every_token_with_a_finite_perplexity(trained, tiny_data_bin):
    # a sliding context window here; the sweep test evaluates valid and test with non-overlapping blocks
    checkpoint = trained / ARCH / "checkpoint_best.pt"
    proc = ok(run_script("eval_lm.sh", checkpoint, tiny_data_bin, "--subset", "valid", "--context-window", "16",
                         env=TINY_ENV))
    results = RESULT_RE.findall(proc.stdout)
    assert len(results) == 1, proc.stdout
    subset, window, tokens, loss, ppl = results[0]
    assert (subset, window) == ("valid", "16")
    assert int(tokens) == split_tokens(tiny_data_bin, "valid")  # every token of the split
    assert math.isfinite(float(ppl)) and 1.0 < float(ppl) < 1000
    assert float(ppl) == pytest.approx(2 ** float(loss), rel=1e-2)


def test_eval_lm_fails_when_nothing_is_evaluated(trained, tiny_data_bin):
    checkpoint = trained / ARCH / "checkpoint_best.pt"
    # blocks longer than the model was trained on are all dropped: fairseq reports perplexity 1.00 over 0 tokens
    proc = run_script("eval_lm.sh", checkpoint, tiny_data_bin, env={**TINY_ENV, "TOKENS_PER_SAMPLE": "4096"})
    assert proc.returncode != 0
    assert "Perplexity: 1.00" in proc.stderr  # the trap is real ...
    expected = f"error: fairseq-eval-lm evaluated 0 tokens of {split_tokens(tiny_data_bin, 'test')}"
    assert proc.stderr.strip().splitlines()[-1].startswith(expected)
    assert not RESULT_RE.search(proc.stdout)  # ... and no result line is printed

    one_line_error(run_script("eval_lm.sh", trained / "missing.pt", tiny_data_bin), "checkpoint", "not found")


# --- prepare_wikitext103.sh ---

RAW_SPLITS = {
    "train": [" = Valkyria Chronicles III = ", "", " The game began development in 2010 . ", "",
              " It met with positive sales in Japan , and was praised by both Japanese and western critics . "] * 3,
    "valid": [" = Homarus gammarus = ", "", " Homarus gammarus is a species of lobster . "],
    "test": [" = Robert Boulter = ", "", " Robert Boulter is an English film , television and theatre actor . "],
}


def write_local_copies(dest: Path) -> dict:
    """A tiny stand-in for the four downloads, with the same names; returns their SHA-256 by file name.

    The BPE has the 256 byte symbols of GPT-2 plus a few merges, so it encodes any text; dict.txt lists every
    token id with a count, as fairseq's GPT-2 dictionary does.
    """
    from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

    dest.mkdir(parents=True)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("Ġ", "s")]
    tokens = list(bytes_to_unicode().values()) + ["".join(m) for m in merges]
    (dest / "encoder.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (dest / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (dest / "dict.txt").write_text("".join(f"{i} {len(tokens) - i}\n" for i in range(len(tokens))))
    with zipfile.ZipFile(dest / "wikitext-103-raw-v1.zip", "w") as archive:
        for split, lines in RAW_SPLITS.items():
            archive.writestr(f"wikitext-103-raw/wiki.{split}.raw", "\n".join(lines) + "\n")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.iterdir()}


def checksum_env(sums: dict) -> dict:
    return {
        "SHA256_WIKITEXT_ZIP": sums["wikitext-103-raw-v1.zip"],
        "SHA256_ENCODER_JSON": sums["encoder.json"],
        "SHA256_VOCAB_BPE": sums["vocab.bpe"],
        "WORKERS": "1",
    }


def test_prepare_from_local_copies_builds_a_loadable_data_bin_and_is_idempotent(tmp_path):
    from fairseq.data import Dictionary, data_utils
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    local = tmp_path / "local"
    sums = write_local_copies(local)
    raw_dir, dest = tmp_path / "raw", tmp_path / "data-bin" / "wikitext-103"
    # leftovers of an interrupted run must not be taken as done
    raw_dir.mkdir()
    (raw_dir / "encoder.json.part").write_text("{half")
    (tmp_path / "data-bin").mkdir()
    (tmp_path / "data-bin" / "wikitext-103.tmp").mkdir()
    env = {**checksum_env(sums), "RAW_DIR": str(raw_dir)}

    proc = ok(run_script("prepare_wikitext103.sh", dest, "--from", local, env=env))
    assert not (raw_dir / "encoder.json.part").exists() and not (tmp_path / "data-bin" / "wikitext-103.tmp").exists()

    # fairseq loads it, with the dictionary given, and every line decodes back to the raw text
    dictionary = Dictionary.load(str(dest / "dict.txt"))
    assert len(dictionary) == len(json.loads((local / "encoder.json").read_text())) + 4  # + 4 specials
    bpe = get_encoder(str(local / "encoder.json"), str(local / "vocab.bpe"))
    for split, lines in RAW_SPLITS.items():
        dataset = data_utils.load_indexed_dataset(str(dest / split), dictionary)
        assert len(dataset) == len(lines)
        for line, ids in zip(lines, dataset):
            assert ids[-1].item() == dictionary.eos() and dictionary.unk() not in ids.tolist()
            assert bpe.decode([int(dictionary[i]) for i in ids[:-1].tolist()]) == line.strip()

    before = snapshot(tmp_path)
    proc = ok(run_script("prepare_wikitext103.sh", dest, "--from", local, env=env))
    assert "nothing to do" in proc.stderr
    assert snapshot(tmp_path) == before


def test_prepare_checks_downloads_and_keeps_no_bad_file(tmp_path):
    local = tmp_path / "local"
    sums = write_local_copies(local)
    raw_dir, dest = tmp_path / "raw", tmp_path / "wikitext-103"
    env = {
        **checksum_env(sums), "RAW_DIR": str(raw_dir), "SHA256_WIKITEXT_ZIP": "0" * 64,
        "WIKITEXT_URL": (local / "wikitext-103-raw-v1.zip").as_uri(),
    }
    proc = run_script("prepare_wikitext103.sh", dest, env=env)  # downloads through curl, from a file:// URL
    assert proc.returncode != 0
    error = f"error: wikitext-103-raw-v1.zip: SHA-256 {sums['wikitext-103-raw-v1.zip']}, expected {'0' * 64}"
    assert proc.stderr.strip().splitlines()[-1] == error
    assert list(raw_dir.iterdir()) == [] and not dest.exists()

    one_line_error(run_script("prepare_wikitext103.sh", dest, "--from", tmp_path / "none"), "--from", "not found")


# --- sweep_expand.sh ---

def test_sweep_reuses_and_trains_then_writes_csv_table_and_plot(trained, tiny_data_bin, tmp_path):
    results = tmp_path / "results"
    env = {**TINY_ENV, "SAVE_ROOT": str(trained), "RESULTS_DIR": str(results)}
    proc = ok(run_script("sweep_expand.sh", tiny_data_bin, 0, ARCH, "hgrn2_lm_expand2", "--", *TINY_MODEL, env=env))
    assert f"{ARCH}/checkpoint_last.pt has 3 updates (MAX_UPDATE=3): training is done" in proc.stderr
    assert "training hgrn2_lm_expand2 on 1 cpu process(es)" in proc.stderr

    with open(results / "sweep.csv") as f:
        rows = {row["arch"]: row for row in csv.DictReader(f)}
    assert set(rows) == {ARCH, "hgrn2_lm_expand2"}
    assert rows[ARCH]["token_mixer"] == "outproduct" and rows[ARCH]["expand_ratio"] == "2"
    assert rows["hgrn2_lm_expand2"]["token_mixer"] == "expand"
    # tied embeddings counted once; the expand baseline has more parameters (its state projections)
    assert 0 < int(rows[ARCH]["params"]) < int(rows["hgrn2_lm_expand2"]["params"])
    for row in rows.values():
        assert row["num_updates"] == "3"
        for subset in ("valid", "test"):
            assert int(row[f"{subset}_tokens"]) == split_tokens(tiny_data_bin, subset)
        for key in ("valid_ppl", "test_ppl", "train_tokens_per_s"):
            assert math.isfinite(float(row[key])) and float(row[key]) > 0

    table = (results / "sweep.md").read_text()
    assert "| arch | e | params | updates | valid ppl | test ppl | tokens/s |" in table
    assert f"| {ARCH} | 2 | {int(rows[ARCH]['params']):,} | 3 | {float(rows[ARCH]['valid_ppl']):.2f} |" in table
    assert table in proc.stdout  # the table is also the script's output
    assert (results / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in results.iterdir()) == ["sweep.csv", "sweep.md", "sweep.png"]


def test_sweep_refuses_an_unknown_architecture_before_training(tiny_data_bin, tmp_path):
    env = {"SAVE_ROOT": str(tmp_path / "runs"), "RESULTS_DIR": str(tmp_path / "results")}
    proc = run_script("sweep_expand.sh", tiny_data_bin, 0, ARCH, "hgrn2_lm_outproduct_5", env=env)
    one_line_error(proc, "unknown architecture 'hgrn2_lm_outproduct_5'")
    assert list(tmp_path.iterdir()) == []
