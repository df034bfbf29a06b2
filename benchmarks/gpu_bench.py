"""Time forward + backward of the recurrence backends side by side, write a CSV and print a ratio table.

Implementations timed on the same inputs in one run: the Triton kernels, the chunked PyTorch path, PyTorch SDPA
causal attention of the same width (head dim 64) and, if importable, fla's ``chunk_gla``. Ratios are
``other / triton`` (above 1: Triton is faster). Meant for a GPU (see gpu_check.sh); ``--device cpu`` under
``TRITON_INTERPRET=1`` with tiny shapes only checks that the script works.

Usage: python benchmarks/gpu_bench.py --csv OUT.csv [--T 512,2048,8192] [--e 2,16,128] [--B 8] [--d 512]
"""
import argparse
import csv
import inspect
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fairseq_hgrn2.ops import hgrn2_recurrence_chunk_torch  # noqa: E402

logger = logging.getLogger("gpu_bench")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SDPA_HEAD_DIM = 64


def int_list(text: str):
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True, type=Path, help="where to write the timings")
    parser.add_argument("--T", type=int_list, default=[512, 2048, 8192], help="sequence lengths")
    parser.add_argument("--e", type=int_list, default=[2, 16, 128], help="expand ratios (head dims)")
    parser.add_argument("--B", type=int, default=8, help="batch size")
    parser.add_argument("--d", type=int, default=512, help="model width: H = d / e heads")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=1.5, help="time spent timing one implementation")
    parser.add_argument("--max-s", type=float, default=180.0, help="skip what is left after this many seconds")
    args = parser.parse_args(argv)
    for e in args.e:
        if e <= 0 or args.d % e:
            parser.error(f"--e {e} does not divide --d {args.d}")
    if args.d % SDPA_HEAD_DIM and args.d >= SDPA_HEAD_DIM:
        parser.error(f"--d {args.d} is not a multiple of the attention head dim {SDPA_HEAD_DIM}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    return args


def load_fla():
    """fla's ``chunk_gla`` or ``None``."""
    try:
        from fla.ops.gla import chunk_gla
    except Exception as err:  # any import failure means "not available", reported in the table
        logger.info("fla chunk_gla not importable: %s", err)
        return None
    return chunk_gla


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(fn, inputs, device, budget_s):
    """Median milliseconds of one forward + backward (``fn(*inputs)`` returns the output to differentiate)."""

    def once():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, torch.ones_like(out))

    once()  # compile, autotune, warm caches
    synchronize(device)
    start = time.perf_counter()
    once()
    synchronize(device)
    first = time.perf_counter() - start
    reps = max(1, min(50, int(budget_s / max(first, 1e-6))))
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            once()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            once()
            samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def implementations(B, T, d, e, dtype, device, chunk_gla):
    """``name -> (fn, inputs)`` for one shape; inputs are fresh leaf tensors."""
    from fairseq_hgrn2.ops.triton import hgrn2_recurrence_triton

    H = d // e
    gen = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape, log_decay=False):
        x = torch.randn(*shape, generator=gen)
        if log_decay:
            x = F.logsigmoid(x + 3.0)  # decays around sigmoid(3) = 0.95
        return x.to(device=device, dtype=dtype).requires_grad_()

    qkvg = lambda: (leaf(B, T, H, e), leaf(B, T, H, e), leaf(B, T, H, e), leaf(B, T, H, e, log_decay=True))  # noqa
    impls = {
        "triton": (lambda q, k, v, g: hgrn2_recurrence_triton(q, k, v, g)[0], qkvg()),
        "torch_chunk": (lambda q, k, v, g: hgrn2_recurrence_chunk_torch(q, k, v, g)[0], qkvg()),
    }
    heads = max(1, d // SDPA_HEAD_DIM)
    width = min(d, SDPA_HEAD_DIM)
    attn = tuple(leaf(B, heads, T, width) for _ in range(3))  # [B, heads, T, 64]
    impls["sdpa_causal"] = (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), attn)
    if chunk_gla is not None:
        # [B, T, H, K] inputs; older fla releases default to head-first [B, H, T, K] unless told otherwise
        layout = {"head_first": False} if "head_first" in inspect.signature(chunk_gla).parameters else {}
        impls["fla_chunk_gla"] = (lambda q, k, v, g: chunk_gla(q, k, v, g, scale=1.0, **layout)[0], qkvg())
    return impls


def triton_error(impls) -> str:
    """Relative RMS difference of the Triton output from the chunked PyTorch one on the timed inputs."""
    (triton_fn, inputs), (torch_fn, torch_inputs) = impls["triton"], impls["torch_chunk"]
    with torch.no_grad():
        ref = torch_fn(*torch_inputs).double()
        out = triton_fn(*torch_inputs).double()
    return f"{((ref - out).norm() / ref.norm()).item():.2e}"


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    chunk_gla = load_fla() if device.type == "cuda" else None
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    with open(args.csv, "w", newline="") as handle:
        fields = ["impl", "B", "T", "d", "e", "H", "dtype", "ms", "rel_err_vs_torch", "error"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for T in args.T:
            for e in args.e:
                impls = implementations(args.B, T, args.d, e, dtype, device, chunk_gla)
                try:
                    rel_err = triton_error(impls)
                except Exception as err:  # reported in the CSV; the timings still run
                    rel_err = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                for name, (fn, inputs) in impls.items():
                    row = {"impl": name, "B": args.B, "T": T, "d": args.d, "e": e, "H": args.d // e,
                           "dtype": args.dtype, "ms": "", "rel_err_vs_torch": rel_err if name == "triton" else "",
                           "error": ""}
                    try:
                        if time.perf_counter() - started > args.max_s:
                            raise TimeoutError(f"skipped: past --max-s {args.max_s:g}")
                        row["ms"] = f"{time_fwd_bwd(fn, inputs, device, args.budget_s):.4f}"
                    except Exception as err:  # one failing implementation must not hide the others' timings
                        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                        logger.warning("%s T=%d e=%d failed: %s", name, T, e, row["error"])
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    writer.writerow(row)
                    handle.flush()
                    rows.append(row)
                    logger.info("%-14s T=%-5d e=%-4d %s", name, T, e, f"{row['ms']} ms" if row["ms"] else row["error"])
    print_table(rows)
    for row in rows:
        if row["impl"] == "triton":
            logger.info("triton vs torch_chunk output, T=%s e=%s: relative RMS %s",
                        row["T"], row["e"], row["rel_err_vs_torch"])
    return 0 if all(r["ms"] for r in rows if r["impl"] == "triton") else 1


def print_table(rows):
    """One line per shape: milliseconds per implementation and ``other / triton`` ratios."""
    shapes = sorted({(r["T"], r["e"]) for r in rows})
    names = [n for n in ("triton", "torch_chunk", "sdpa_causal", "fla_chunk_gla") if any(r["impl"] == n for r in rows)]
    ms = {(r["impl"], r["T"], r["e"]): (float(r["ms"]) if r["ms"] else None) for r in rows}
    header = ["T", "e"] + [f"{n} ms" for n in names] + [f"{n}/triton" for n in names[1:]]
    lines = [header]
    for T, e in shapes:
        base = ms.get(("triton", T, e))
        cells = [str(T), str(e)] + [f"{ms[(n, T, e)]:.3f}" if ms.get((n, T, e)) else "n/a" for n in names]
        for n in names[1:]:
            other = ms.get((n, T, e))
            cells.append(f"{other / base:.2f}" if other and base else "n/a")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


if __name__ == "__main__":
    sys.exit(main())
