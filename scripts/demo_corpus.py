#!/usr/bin/env python3
"""Turn raw text into the demo's tokenised train/valid/test split (scripts/demo.sh calls this).

    python scripts/demo_corpus.py RAW_TEXT OUT_DIR [--format plain|bible] [--max-bytes N]

--format bible reads the output of Debian's ``bible -l10000 gen1:1-rev22:21`` (chapter headings such as
``Genesis 1``, then one verse per line after its number) and keeps the verse texts; plain keeps every non-blank
line. --max-bytes keeps only the first N bytes of those lines (the demo's --tiny mode).

Tokenisation: words (letters and digits, with inner apostrophes and hyphens: ``LORD's``, ``Beth-el``) and every
punctuation mark become tokens separated by spaces; case is kept, so the sample reads like the text. The split is
deterministic: the lines are cut into up to 10 equal contiguous segments, and the last 2% of each segment (at
least one line) goes to test, the 2% before them to valid, the rest to train. Writes OUT_DIR/{train,valid,test}.txt
and prints one line of counts; a corpus with too few lines or no words is a one-line error and exit 2, before
anything is written.
"""
import argparse
import re
import sys
from pathlib import Path

# a word with inner apostrophes or hyphens, or a single character that is neither a word character nor a space
TOKEN = re.compile(r"\w+(?:['\u2019-]\w+)*|[^\w\s]")
# a verse line of the bible program: leading spaces, the verse number, the text
BIBLE_VERSE = re.compile(r"^\s+\d+\s+(\S.*)$")
MIN_LINES = 10
HELD_OUT_FRACTION = 0.02
SEGMENTS = 10


def read_lines(text: str, fmt: str) -> list:
    """The text lines of ``text``: verse texts for ``fmt == "bible"``, non-blank lines for ``"plain"``."""
    if fmt == "bible":
        return [m.group(1).strip() for m in map(BIBLE_VERSE.match, text.splitlines()) if m]
    return [line.strip() for line in text.splitlines() if line.strip()]


def tokenize(line: str) -> str:
    """``line`` as space-separated tokens: words, and each punctuation mark on its own."""
    return " ".join(TOKEN.findall(line))


def split_lines(lines: list) -> dict:
    """Deterministic {"train", "valid", "test"} lists of lines, held-out lines taken from every segment."""
    splits = {"train": [], "valid": [], "test": []}
    segments = min(SEGMENTS, len(lines) // MIN_LINES) or 1
    bounds = [round(i * len(lines) / segments) for i in range(segments + 1)]
    for start, end in zip(bounds, bounds[1:]):
        held_out = max(1, round((end - start) * HELD_OUT_FRACTION))
        splits["train"] += lines[start:end - 2 * held_out]
        splits["valid"] += lines[end - 2 * held_out:end - held_out]
        splits["test"] += lines[end - held_out:end]
    return splits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_text", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--format", choices=["plain", "bible"], default="plain")
    parser.add_argument("--max-bytes", type=int, default=0, help="keep only the first N bytes of text (0: all)")
    args = parser.parse_args()

    try:
        text = args.raw_text.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        print(f"error: cannot read {args.raw_text}: {err.strerror}", file=sys.stderr)
        return 2
    lines = [tokenize(line) for line in read_lines(text, args.format)]
    lines = [line for line in lines if line]
    if args.max_bytes > 0:
        kept, size = [], 0
        for line in lines:
            if size >= args.max_bytes:
                break
            kept.append(line)
            size += len(line.encode()) + 1
        lines = kept
    if not lines:
        print(f"error: {args.raw_text} has no text: the corpus is empty", file=sys.stderr)
        return 2
    if len(lines) < MIN_LINES:
        print(f"error: {args.raw_text} has {len(lines)} non-blank lines; the demo needs at least {MIN_LINES} "
              "to make train, valid and test splits", file=sys.stderr)
        return 2

    splits = split_lines(lines)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        (args.out_dir / f"{name}.txt").write_text("".join(line + "\n" for line in split), encoding="utf-8")
    counts = ", ".join(f"{name} {len(split)} lines / {sum(len(s.split()) for s in split)} tokens"
                       for name, split in splits.items())
    print(f"[demo_corpus] {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
