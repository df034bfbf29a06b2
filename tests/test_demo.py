"""scripts/demo.sh: the tiny pipeline end to end, its bad inputs, and the corpus builder it uses."""
import argparse
import collections
import csv
import json
import logging
import math
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from demo_corpus import read_lines, split_lines, tokenize  # noqa: E402
from demo_report import detokenize  # noqa: E402

DEMO = REPO / "scripts/demo.sh"
MARKER = ".hgrn2-demo"


def real_text(path: pathlib.Path) -> pathlib.Path:
    """A few KB of real English prose that every machine has offline: docstrings of the standard library."""
    modules = (argparse, json, textwrap, collections, subprocess, logging, pathlib)
    path.write_text("\n".join(m.__doc__ for m in modules if m.__doc__))
    return path


def run_demo(*args, timeout=300):
    return subprocess.run(["bash", str(DEMO), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_refused(proc, message):
    """Non-zero exit, and exactly one error line (the last line on stderr) containing ``message``."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0, proc.stderr
    assert len(errors) == 1 and proc.stderr.splitlines()[-1] == errors[0], proc.stderr
    assert message in errors[0], errors[0]


def test_tiny_demo_end_to_end(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).touch()
    (out / "stale.txt").write_text("from an earlier run")
    proc = run_demo("--tiny", "--text", real_text(tmp_path / "text.txt"), "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    assert not (out / "stale.txt").exists(), "a rerun must start clean"
    with open(out / "summary.csv", newline="") as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"HGRN2", "Transformer"}
    assert rows["HGRN2"]["arch"].startswith("hgrn2_lm_outproduct_") and rows["Transformer"]["arch"] == "transformer_lm"
    for row in rows.values():
        assert math.isfinite(float(row["test_ppl"])) and float(row["test_ppl"]) > 1, row
        assert int(row["test_tokens"]) > 0 and int(row["params"]) > 0, row
    assert rows["HGRN2"]["updates"] == rows["Transformer"]["updates"] == "8"
    # same width, depth and vocabulary: the parameter counts agree within 5%
    hgrn2, transformer = int(rows["HGRN2"]["params"]), int(rows["Transformer"]["params"])
    assert abs(hgrn2 - transformer) < 0.05 * transformer, (hgrn2, transformer)
    assert rows["HGRN2"]["sample"].strip(), "empty sample"
    assert "HGRN2 sample: " + rows["HGRN2"]["sample"] in proc.stdout
    assert (out / "summary.md").read_text() == proc.stdout
    assert (out / "valid_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # two validations per model (every 4 of the 8 updates), parsed into the curve
    for log in (out / "checkpoints").glob("*/train.log"):
        assert log.read_text().count("valid on 'valid' subset") == 2, log


@pytest.fixture
def previous_out(tmp_path):
    """An output directory of an earlier demo run, which bad input must leave as it is."""
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).touch()
    (out / "summary.md").write_text("earlier results")
    return out


def assert_untouched(out):
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "summary.md"])
    assert (out / "summary.md").read_text() == "earlier results"


def test_missing_text_file(tmp_path, previous_out):
    assert_refused(run_demo("--text", tmp_path / "nope.txt", "--out", previous_out), "not found")
    assert_untouched(previous_out)


@pytest.mark.parametrize("content", ["", "  \n\n\t\n"], ids=["zero-bytes", "blank-lines"])
def test_empty_corpus(tmp_path, previous_out, content):
    text = tmp_path / "empty.txt"
    text.write_text(content)
    assert_refused(run_demo("--text", text, "--out", previous_out), "empty")
    assert_untouched(previous_out)


def test_too_short_corpus(tmp_path, previous_out):
    text = tmp_path / "short.txt"
    text.write_text("In the beginning.\nAnd the earth.\n")
    assert_refused(run_demo("--text", text, "--out", previous_out), "at least")
    assert_untouched(previous_out)


def test_foreign_out_dir_and_bad_arguments(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert_refused(run_demo("--out", foreign), "did not make")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert_refused(run_demo("--frobnicate"), "unknown argument")
    assert_refused(run_demo("--text"), "needs a value")


BIBLE_SAMPLE = textwrap.dedent("""\

    Genesis 1

      1 In the beginning God created the heaven and the earth.
      2 And the earth was without form, and void; and darkness was upon the face of the deep.

    Genesis 2

      1 Thus the heavens and the earth were finished, and all the host of them.
    """)


def test_bible_format_keeps_verse_texts_only():
    lines = read_lines(BIBLE_SAMPLE, "bible")
    assert lines == [
        "In the beginning God created the heaven and the earth.",
        "And the earth was without form, and void; and darkness was upon the face of the deep.",
        "Thus the heavens and the earth were finished, and all the host of them.",
    ]
    assert read_lines(BIBLE_SAMPLE, "plain")[:2] == ["Genesis 1", "1 " + lines[0]]


def test_tokenize_and_detokenize_round_trip():
    line = "And Jacob said, Beth-el is the LORD's (the house of God): is it not?"
    tokens = tokenize(line)
    assert tokens == ("And Jacob said , Beth-el is the LORD's ( the house of God ) : is it not ?")
    assert detokenize(tokens) == line


@pytest.mark.parametrize("n", [10, 57, 1000, 31102])
def test_split_is_deterministic_disjoint_and_complete(n):
    lines = [f"line {i}" for i in range(n)]
    splits = split_lines(lines)
    assert splits == split_lines(lines)
    assert sorted(sum(splits.values(), []), key=lambda s: int(s.split()[1])) == lines
    assert all(splits[name] for name in ("train", "valid", "test"))
    held_out = len(splits["valid"]) + len(splits["test"])
    assert held_out <= max(0.05 * n, 2 * min(10, n // 10))


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian's bible-kjv is not installed")
def test_real_bible_output_gives_every_verse():
    text = subprocess.run(["bible", "-l10000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True)
    lines = read_lines(text.stdout, "bible")
    assert len(lines) == 31102  # the verses of the King James Bible
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert not any(line[0].isdigit() for line in lines)
