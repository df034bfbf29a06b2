#!/usr/bin/env python3
"""Write a small synthetic corpus (train/valid/test.txt) with learnable structure, for quick CPU runs and tests.

Each line walks a fixed cycle of words with a random start and stride, so a language model can learn it in a few
hundred updates. Usage: python scripts/make_tiny_corpus.py DEST [--vocab 120] [--train-lines 1500] [--seed 0]
"""
import argparse
import random
import sys
from pathlib import Path


def write_tiny_corpus(dest: Path, vocab: int = 120, train_lines: int = 1500, seed: int = 0) -> None:
    """Write ``dest/{train,valid,test}.txt``; valid and test have a tenth of the train lines each."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    dest.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", train_lines), ("valid", max(1, train_lines // 10)), ("test", max(1, train_lines // 10))):
        with open(dest / f"{split}.txt", "w", encoding="utf-8") as f:
            for _ in range(lines):
                start, stride = rng.randrange(vocab), rng.choice((1, 2, 3))
                f.write(" ".join(words[(start + stride * j) % vocab] for j in range(rng.randint(4, 16))) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="output folder")
    parser.add_argument("--vocab", type=int, default=120, help="number of distinct words (>= 4)")
    parser.add_argument("--train-lines", type=int, default=1500, help="lines in train.txt (>= 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    if args.vocab < 4 or args.train_lines < 10:
        print("error: --vocab must be >= 4 and --train-lines >= 10", file=sys.stderr)
        return 2
    write_tiny_corpus(args.dest, args.vocab, args.train_lines, args.seed)
    print(f"wrote {args.dest}/train.txt, valid.txt, test.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
