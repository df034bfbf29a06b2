#!/usr/bin/env python
"""Forward+backward time of the HGRN2 recurrence against SDPA causal attention of the same width, on CPU.

Usage: python benchmarks/ops_speed.py [--quick] [--lengths 512 1024 ...] [--expand 2 16 128] [--repeats N]
                                      [--ref-max-len T] [--threads N] [--out-dir DIR]

For each length T and expand ratio e (B=2, width d=512, so H=512/e heads of e), it times, interleaved in one
run (each repeat runs every variant once, the median is reported):

* ``reference``: the plain time loop of ``fairseq_hgrn2/ops/reference.py`` (only up to ``--ref-max-len`` tokens:
  it takes seconds per call beyond that);
* ``chunk``: the chunked PyTorch path ``hgrn2_recurrence_chunk_torch``;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` with 8 heads of 64 (d=512).

GFLOP/s are nominal: the op counts ``3 * B*H*T * (4*K*V + 64*(K+V))`` FLOP (chunked matmuls at chunks of 64, the
intra-chunk scores causal-halved, backward = 2x forward), SDPA ``3 * 2 * B*T^2*d`` (causal-halved). They are
compared with a fp32 2048x2048 matmul measured in the same run. Memory is the bytes of the tensors the autograd
graph keeps for the backward (unique storages, inputs included): the part of training memory that grows with T.
It prints a table of times and ratios and writes ``ops_speed.csv`` and ``ops_speed.png``.
"""
import argparse
import csv
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fairseq_hgrn2.ops import hgrn2_recurrence_chunk_torch, hgrn2_recurrence_ref  # noqa: E402

logger = logging.getLogger("ops_speed")
WIDTH, BATCH, SDPA_HEADS = 512, 2, 8


def matmul_gflops(repeats: int = 5) -> float:
    """Achieved GFLOP/s of a fp32 2048x2048 matmul (median of ``repeats``)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def op_inputs(T: int, e: int, seed: int = 0):
    """q, k, v, g ``[B, T, H, e]`` as the first HGRN2 layer makes them at init (decay ``sigmoid(N(0, 1))``)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, T, WIDTH // e, e)
    f = torch.randn(shape, generator=gen)
    q = torch.sigmoid(torch.randn(shape, generator=gen))
    v = F.silu(torch.randn(shape, generator=gen))
    return [q, torch.sigmoid(-f), v, F.logsigmoid(f)]


def sdpa_inputs(T: int, seed: int = 0):
    """q, k, v ``[B, 8, T, 64]``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, SDPA_HEADS, T, WIDTH // SDPA_HEADS, generator=gen) for _ in range(3)]


def saved_bytes(run) -> int:
    """Bytes of the unique storages the autograd graph saves for the backward while ``run()`` builds it."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(storages.values())


def make_variant(name: str, T: int, e: int):
    """A closure running forward+backward once, and the closure that builds the graph only (for memory)."""
    if name == "sdpa":
        inputs = [x.requires_grad_() for x in sdpa_inputs(T)]

        def forward():
            return F.scaled_dot_product_attention(*inputs, is_causal=True)

    else:
        inputs = [x.requires_grad_() for x in op_inputs(T, e)]
        fn = hgrn2_recurrence_ref if name == "reference" else hgrn2_recurrence_chunk_torch

        def forward():
            return fn(*inputs)[0]

    grad_out = torch.randn_like(forward().detach())

    def step():
        for x in inputs:
            x.grad = None
        forward().backward(grad_out)

    return step, forward


def nominal_flops(name: str, T: int, e: int) -> float:
    if name == "sdpa":
        return 3 * 2 * BATCH * T * T * WIDTH
    H = WIDTH // e
    return 3 * BATCH * H * T * (4 * e * e + 64 * 2 * e)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T in {512, 4096}, e in {2, 128}, 3 repeats")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--expand", type=int, nargs="+", default=[2, 16, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-max-len", type=int, default=1024, help="longest T the reference loop is timed at")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.lengths, args.expand, args.repeats = [512, 4096], [2, 128], 3
    if any(WIDTH % e for e in args.expand) or any(t < 1 for t in args.lengths) or args.repeats < 1:
        logger.error("error: every --expand must divide %d, lengths and repeats must be positive", WIDTH)
        return 2
    torch.manual_seed(0)
    logger.info("torch %s, %d threads", torch.__version__, torch.get_num_threads())

    rows = []
    for T in args.lengths:
        variants = [("sdpa", 0)] + [(name, e) for e in args.expand for name in ("chunk", "reference")]
        variants = [(n, e) for n, e in variants if n != "reference" or T <= args.ref_max_len]
        runs = {v: make_variant(v[0], T, v[1]) for v in variants}
        times = {v: [] for v in variants}
        peak = []
        for run, _ in runs.values():  # warm-up
            run()
        for _ in range(args.repeats):
            peak.append(matmul_gflops(3))
            for v, (run, _) in runs.items():
                start = time.perf_counter()
                run()
                times[v].append(time.perf_counter() - start)
        peak_gflops = statistics.median(peak)
        sdpa_time = statistics.median(times[("sdpa", 0)])
        for (name, e), (_, forward) in runs.items():
            t = statistics.median(times[(name, e)])
            gflops = nominal_flops(name, T, e) / t / 1e9
            rows.append(
                dict(
                    T=T, variant=name, e=e if name != "sdpa" else "", heads=WIDTH // e if name != "sdpa" else 8,
                    seconds=round(t, 5), sdpa_over_this=round(sdpa_time / t, 3), gflops=round(gflops, 1),
                    matmul_gflops=round(peak_gflops, 1), fraction_of_matmul=round(gflops / peak_gflops, 3),
                    saved_mib=round(saved_bytes(forward) / 2**20, 1),
                )
            )
        logger.info("T=%d done (matmul %.0f GFLOP/s)", T, peak_gflops)
        if T > args.ref_max_len:
            logger.info("  reference loop skipped at T=%d (> --ref-max-len %d)", T, args.ref_max_len)

    header = ["T", "variant", "e", "heads", "seconds", "sdpa_over_this", "gflops", "fraction_of_matmul", "saved_mib"]
    widths = [6, 10, 4, 6, 9, 15, 8, 19, 10]
    lines = ["".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["".join(str(r[h]).rjust(w) for h, w in zip(header, widths)) for r in rows]
    logger.info("\n%s", "\n".join(lines))
    logger.info("sdpa_over_this > 1: faster than SDPA causal attention (8 heads of 64) at the same T and width")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "ops_speed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out_dir / "ops_speed.png")
    logger.info("wrote %s and %s", args.out_dir / "ops_speed.csv", args.out_dir / "ops_speed.png")
    return 0


def plot(rows, path: Path) -> None:
    """Time against T (log-log) and saved memory against T, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({(r["variant"], str(r["e"])) for r in rows}):
        sel = [r for r in rows if (r["variant"], str(r["e"])) == key]
        label = key[0] if key[0] == "sdpa" else f"{key[0]} e={key[1]}"
        ax_t.plot([r["T"] for r in sel], [r["seconds"] for r in sel], marker="o", label=label)
        ax_m.plot([r["T"] for r in sel], [r["saved_mib"] for r in sel], marker="o", label=label)
    ax_t.set(xscale="log", yscale="log", xlabel="T", ylabel="forward+backward (s)", title="time, B=2, d=512")
    ax_m.set(xscale="log", yscale="log", xlabel="T", ylabel="saved for backward (MiB)", title="memory")
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
