#!/usr/bin/env python3
"""Print the number of tokens (end-of-line symbols included) in one split of a fairseq-preprocess output.

    python scripts/dataset_tokens.py DATA_DIR SUBSET

scripts/eval_lm.sh compares it with what fairseq-eval-lm evaluated: every token should be scored once.
"""
import logging
import struct
import sys
from pathlib import Path

import numpy as np

# fairseq's default ("mmap") index: magic, version <Q, dtype code <B, sequence count <Q, then int32 sizes
MMAP_MAGIC = b"MMIDIDX\x00\x00"
MMAP_SIZES_OFFSET = 9 + 8 + 1 + 8


def dataset_tokens(data_dir: str, subset: str) -> int:
    """Total length of the binarized split ``data_dir/subset`` as fairseq loads it."""
    index = Path(data_dir) / f"{subset}.idx"
    with open(index, "rb") as f:
        header = f.read(MMAP_SIZES_OFFSET)
    if header[:9] == MMAP_MAGIC:
        # read the sizes directly: importing fairseq just for this would take seconds
        (count,) = struct.unpack("<Q", header[18:MMAP_SIZES_OFFSET])
        sizes = np.fromfile(index, dtype=np.int32, count=count, offset=MMAP_SIZES_OFFSET)
        return int(sizes.sum(dtype=np.int64))

    logging.disable(logging.WARNING)  # importing fairseq logs noise about optional packages
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(Path(data_dir) / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(Path(data_dir) / subset), dictionary)
    if dataset is None:
        raise FileNotFoundError(f"fairseq cannot load split '{subset}' of {data_dir}")
    return int(dataset.sizes.sum())


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python scripts/dataset_tokens.py DATA_DIR SUBSET", file=sys.stderr)
        return 2
    try:
        print(dataset_tokens(sys.argv[1], sys.argv[2]))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
