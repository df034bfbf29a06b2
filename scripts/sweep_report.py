#!/usr/bin/env python3
"""Write the expand-ratio sweep's results: sweep.csv, sweep.md (markdown table) and sweep.png.

    python scripts/sweep_report.py ROWS.tsv RESULTS_DIR [--context-window N]

ROWS.tsv (written by scripts/sweep_expand.sh), one line per architecture, tab separated:
arch, checkpoint, train.log, valid ppl, valid tokens, test ppl, test tokens. The checkpoint gives the expand
ratio, the parameter count and the number of updates; train.log gives the training speed (the median over
epochs of fairseq's per-epoch tokens per second, all processes together).
"""
import argparse
import csv
import os
import re
import statistics
import sys
from pathlib import Path

from checkpoint_info import checkpoint_info

COLUMNS = [
    "arch", "token_mixer", "expand_ratio", "params", "num_updates",
    "valid_ppl", "valid_tokens", "test_ppl", "test_tokens", "train_tokens_per_s", "checkpoint",
]
# fairseq's end-of-epoch summary with --log-format simple: "... | train | epoch 003 | loss 4.1 | ... | wps 81234.5 | ..."
EPOCH_WPS = re.compile(r"\| train \| epoch \d+ \|.*?\| wps ([\d.]+) \|")


def train_tokens_per_s(train_log: str):
    """Median of the per-epoch training speeds in ``train_log``, or None when it has none."""
    try:
        speeds = [float(m.group(1)) for m in EPOCH_WPS.finditer(Path(train_log).read_text(errors="replace"))]
    except FileNotFoundError:
        return None
    return statistics.median(speeds) if speeds else None


def read_rows(rows_tsv: str) -> list:
    """One dict per architecture: the evaluation results joined with what its checkpoint and log say."""
    rows = []
    for line in Path(rows_tsv).read_text().splitlines():
        arch, checkpoint, train_log, valid_ppl, valid_tokens, test_ppl, test_tokens = line.split("\t")
        info = checkpoint_info(checkpoint)
        rows.append({
            "arch": arch,
            "token_mixer": info["token_mixer"],
            "expand_ratio": info["expand_ratio"],
            "params": info["params"],
            "num_updates": info["num_updates"],
            "valid_ppl": float(valid_ppl),
            "valid_tokens": int(valid_tokens),
            "test_ppl": float(test_ppl),
            "test_tokens": int(test_tokens),
            "train_tokens_per_s": train_tokens_per_s(train_log),
            "checkpoint": checkpoint,
        })
    return rows


def markdown_table(rows: list, context_window: int) -> str:
    """The sweep as a markdown table, outer-product models by expand ratio, then the others."""
    def speed(row):
        return "n/a" if row["train_tokens_per_s"] is None else f"{row['train_tokens_per_s']:,.0f}"

    lines = [
        f"BPE-level perplexity, context window {context_window}; tokens/s: training speed (median over epochs).",
        "",
        "| arch | e | params | updates | valid ppl | test ppl | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['arch']} | {row['expand_ratio']} | {row['params']:,} | {row['num_updates']:,} | "
            f"{row['valid_ppl']:.2f} | {row['test_ppl']:.2f} | {speed(row)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path) -> None:
    """Perplexity against expand ratio (log scale) for the outer-product models; other mixers as flat lines."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    outer = [r for r in rows if r["token_mixer"] == "outproduct"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for subset, color in (("valid", "tab:blue"), ("test", "tab:orange")):
        if outer:
            ax.plot([r["expand_ratio"] for r in outer], [r[f"{subset}_ppl"] for r in outer], "o-", color=color,
                    label=f"HGRN2 outer product, {subset}")
        for r in rows:
            if r["token_mixer"] != "outproduct":
                ax.axhline(r[f"{subset}_ppl"], linestyle="--", color=color, alpha=0.7, label=f"{r['arch']}, {subset}")
    ax.set_xscale("log", base=2)
    if outer:
        ratios = [r["expand_ratio"] for r in outer]
        ax.set_xticks(ratios, [str(e) for e in ratios])
        ax.minorticks_off()
    ax.set_xlabel("expand ratio e (head size; state e x e per head)")
    ax.set_ylabel("perplexity (BPE tokens)")
    ax.set_title("HGRN2: perplexity against state expansion")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_atomically(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path``, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(tmp)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows")
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--context-window", type=int, default=0)
    args = parser.parse_args()

    rows = read_rows(args.rows)
    if not rows:
        print("error: no results to report", file=sys.stderr)
        return 2
    # outer-product models by expand ratio first, then the other mixers in the order given
    rows.sort(key=lambda r: (r["token_mixer"] != "outproduct", r["expand_ratio"] if r["token_mixer"] == "outproduct" else 0))
    args.results_dir.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(args.results_dir / "sweep.csv", write_csv)
    table = markdown_table(rows, args.context_window)
    write_atomically(args.results_dir / "sweep.md", lambda tmp: tmp.write_text(table))
    write_atomically(args.results_dir / "sweep.png", lambda tmp: plot(rows, tmp))
    print(table, end="")
    print(f"[sweep_report] wrote {args.results_dir}/sweep.csv, sweep.md, sweep.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
