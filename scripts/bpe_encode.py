#!/usr/bin/env python3
"""Encode a text file with the GPT-2 BPE, one line in, one line of token ids out (fairseq's GPT-2 BPE code).

    python scripts/bpe_encode.py --encoder-json encoder.json --vocab-bpe vocab.bpe INPUT OUTPUT [--workers N]

Each line is stripped and encoded to space-separated GPT-2 token ids; empty lines stay empty, so
fairseq-preprocess keeps the document structure (each line ends with an end-of-sentence token there).
scripts/prepare_wikitext103.sh runs this for each split of WikiText-103.
"""
import argparse
import logging
import sys
from multiprocessing import Pool

_encoder = None


def _load_encoder(encoder_json: str, vocab_bpe: str) -> None:
    global _encoder
    logging.disable(logging.WARNING)  # importing fairseq logs noise about optional packages
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    _encoder = get_encoder(encoder_json, vocab_bpe)


def encode_line(line: str) -> str:
    """GPT-2 token ids of one stripped line, space separated; an empty line gives an empty string."""
    line = line.strip()
    return " ".join(map(str, _encoder.encode(line))) if line else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-json", required=True)
    parser.add_argument("--vocab-bpe", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()

    with open(args.input, encoding="utf-8") as src, open(args.output, "w", encoding="utf-8") as dst:
        init = (args.encoder_json, args.vocab_bpe)
        with Pool(max(1, args.workers), initializer=_load_encoder, initargs=init) as pool:
            # chunks of lines keep the inter-process traffic small
            for count, encoded in enumerate(pool.imap(encode_line, src, chunksize=1000), 1):
                dst.write(encoded + "\n")
                if count % 200_000 == 0:
                    print(f"[bpe_encode] {args.input}: {count:,} lines", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
