#!/usr/bin/env python3
"""Encode text files with the GPT-2 BPE, one line in, one line of token ids out (fairseq's GPT-2 BPE code).

    python scripts/bpe_encode.py --encoder-json encoder.json --vocab-bpe vocab.bpe \
        --inputs A.raw B.raw --outputs A.bpe B.bpe [--workers N]

Each line is stripped and encoded to space-separated GPT-2 token ids; empty lines stay empty, so
fairseq-preprocess keeps the document structure (each line ends with an end-of-sentence token there).
Each output is written under a temporary name and renamed when complete. scripts/prepare_wikitext103.sh runs
this for the splits of WikiText-103.
"""
import argparse
import logging
import os
import sys
from multiprocessing import Pool

_encoder = None


def load_encoder(encoder_json: str, vocab_bpe: str) -> None:
    """Load the BPE into this process (each worker of the pool calls it once)."""
    global _encoder
    logging.disable(logging.WARNING)  # importing fairseq logs noise about optional packages
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    _encoder = get_encoder(encoder_json, vocab_bpe)


def encode_line(line: str) -> str:
    """GPT-2 token ids of one stripped line, space separated; an empty line gives an empty string."""
    line = line.strip()
    return " ".join(map(str, _encoder.encode(line))) if line else ""


def encode_file(source: str, target: str, pool=None) -> None:
    """Encode ``source`` line by line into ``target``, through ``pool`` when given."""
    tmp = target + ".tmp"
    with open(source, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        # chunks of lines keep the inter-process traffic small
        encoded_lines = pool.imap(encode_line, src, chunksize=1000) if pool else map(encode_line, src)
        for count, encoded in enumerate(encoded_lines, 1):
            dst.write(encoded + "\n")
            if count % 200_000 == 0:
                print(f"[bpe_encode] {source}: {count:,} lines", file=sys.stderr, flush=True)
    os.replace(tmp, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-json", required=True)
    parser.add_argument("--vocab-bpe", required=True)
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--outputs", nargs="+", required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes; 1 encodes in this process")
    args = parser.parse_args()
    if len(args.inputs) != len(args.outputs):
        print("error: --inputs and --outputs must have the same length", file=sys.stderr)
        return 2

    bpe_files = (args.encoder_json, args.vocab_bpe)
    if args.workers <= 1:
        load_encoder(*bpe_files)
        for source, target in zip(args.inputs, args.outputs):
            encode_file(source, target)
    else:
        with Pool(args.workers, initializer=load_encoder, initargs=bpe_files) as pool:
            for source, target in zip(args.inputs, args.outputs):
                encode_file(source, target, pool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
