#!/usr/bin/env python
"""Training throughput (tokens/s) of HGRN2 language models against fairseq's transformer_lm, on CPU.

Usage: python benchmarks/train_throughput.py [--quick] [--lengths 512 2048 4096] [--tokens N] [--layers N]
                                             [--repeats N] [--threads N] [--out-dir DIR]

Models are built in-process through fairseq's task and model registries, at the same width (512), depth (6),
vocabulary (``--vocab``) and ~12 d^2 parameters per block: ``hgrn2_lm_outproduct_{2,16,128}`` (GLU of 8/3 d) and
``transformer_lm`` (8 heads, FFN 2048, ``--decoder-input-dim``/``--decoder-output-dim`` set to the width). A step is
fairseq's cross-entropy criterion forward, backward and an Adam update, on a batch of ``--tokens`` tokens
(``tokens / T`` sequences of T). For each T, every repeat runs one step of every model in turn (interleaved); the
median is reported. Memory is the bytes the autograd graph of one forward keeps for the backward (unique storages):
at a fixed number of tokens per batch, a memory linear in T per sequence shows as a constant.
It prints a table with the ratios to transformer_lm and writes ``train_throughput.csv`` and ``.png``.
"""
import argparse
import csv
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("train_throughput")
HGRN2_ARCHS = ["hgrn2_lm_outproduct_2", "hgrn2_lm_outproduct_16", "hgrn2_lm_outproduct_128"]
BASELINE = "transformer_lm"


def build(arch: str, data_dir: Path, width: int, layers: int, max_len: int):
    """(model, criterion) built by fairseq's registries from command-line style arguments."""
    from fairseq import options, tasks

    argv = [
        str(data_dir), "--task", "language_modeling", "--arch", arch, "--user-dir", str(REPO / "fairseq_hgrn2"),
        "--tokens-per-sample", str(max_len), "--decoder-embed-dim", str(width), "--decoder-layers", str(layers),
        "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", str(max_len),
        "--dropout", "0.0", "--cpu",
    ]
    if arch == BASELINE:
        argv += [
            "--decoder-ffn-embed-dim", str(4 * width), "--decoder-attention-heads", "8",
            "--decoder-input-dim", str(width), "--decoder-output-dim", str(width),
        ]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv)
    task = tasks.setup_task(args)
    return task.build_model(args), task.build_criterion(args)


def make_sample(tokens: int, T: int, vocab: int, seed: int = 0):
    """A fairseq LM batch of ``tokens // T`` random sequences of ``T`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    B = max(1, tokens // T)
    src = torch.randint(4, vocab, (B, T), generator=gen)
    target = torch.randint(4, vocab, (B, T), generator=gen)
    return {
        "id": torch.arange(B), "nsentences": B, "ntokens": B * T, "target": target,
        "net_input": {"src_tokens": src, "src_lengths": torch.full((B,), T)},
    }


def saved_bytes(model, criterion, sample) -> int:
    """Bytes of the unique storages that one forward's autograd graph keeps for the backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = criterion(model, sample)[0]
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, T in {512, 2048}, 2 repeats")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per batch (a multiple of every T)")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.layers, args.lengths, args.repeats = 2, [512, 2048], 2
    if any(T < 1 or args.tokens % T for T in args.lengths) or args.repeats < 1 or args.vocab < 8:
        logger.error("error: --tokens %d must be a multiple of every length; repeats >= 1, vocab >= 8", args.tokens)
        return 2
    torch.manual_seed(0)
    logger.info("torch %s, %d threads, width %d, %d layers, vocab %d, %d tokens per batch",
                torch.__version__, torch.get_num_threads(), args.width, args.layers, args.vocab, args.tokens)

    archs = HGRN2_ARCHS + [BASELINE]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        # fairseq's Dictionary adds 4 special symbols to the words of dict.txt
        (data_dir / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(args.vocab - 4)))
        models = {a: build(a, data_dir, args.width, args.layers, max(args.lengths)) for a in archs}
    optimizers = {a: torch.optim.Adam(m.parameters(), lr=1e-4) for a, (m, _) in models.items()}
    for model, _ in models.values():
        model.train()

    def step(arch, sample):
        model, criterion = models[arch]
        loss = criterion(model, sample)[0]
        loss.backward()
        optimizers[arch].step()
        optimizers[arch].zero_grad(set_to_none=True)

    for T in args.lengths:
        sample = make_sample(args.tokens, T, args.vocab)
        times = {a: [] for a in archs}
        for a in archs:  # warm-up
            step(a, sample)
        for _ in range(args.repeats):
            for a in archs:
                start = time.perf_counter()
                step(a, sample)
                times[a].append(time.perf_counter() - start)
        base = args.tokens / statistics.median(times[BASELINE])
        for a in archs:
            tps = args.tokens / statistics.median(times[a])
            rows.append(dict(
                T=T, model=a, tokens_per_s=round(tps, 1), ratio_to_transformer=round(tps / base, 3),
                step_s=round(statistics.median(times[a]), 3),
                saved_mib=round(saved_bytes(*models[a], sample) / 2**20, 1),
            ))
        logger.info("T=%d done", T)

    header = list(rows[0])
    widths = [6, 26, 14, 22, 9, 11]
    lines = ["".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["".join(str(r[h]).rjust(w) for h, w in zip(header, widths)) for r in rows]
    logger.info("\n%s", "\n".join(lines))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "train_throughput.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out_dir / "train_throughput.png", args.tokens)
    logger.info("wrote %s and %s", args.out_dir / "train_throughput.csv", args.out_dir / "train_throughput.png")
    return 0


def plot(rows, path: Path, tokens: int) -> None:
    """Tokens/s and saved activation memory against T, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        ax_t.plot([r["T"] for r in sel], [r["tokens_per_s"] for r in sel], marker="o", label=model)
        ax_m.plot([r["T"] for r in sel], [r["saved_mib"] for r in sel], marker="o", label=model)
    ax_t.set(xscale="log", xlabel="T", ylabel="training tokens/s", title=f"CPU training, {tokens} tokens/batch")
    ax_m.set(xscale="log", xlabel="T", ylabel="saved for backward (MiB)", title="activation memory")
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
