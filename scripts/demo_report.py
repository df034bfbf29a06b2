#!/usr/bin/env python3
"""Write the demo's report from its output directory (scripts/demo.sh calls this last).

    python scripts/demo_report.py OUT_DIR

Reads OUT_DIR/runs.tsv (model, checkpoint, train.log, the result line of scripts/eval_lm.sh) and
OUT_DIR/sample.txt (fairseq-interactive's tokens), prints the summary table and the sample, and writes
OUT_DIR/summary.md, OUT_DIR/summary.csv and OUT_DIR/valid_curves.png (validation perplexity against updates,
parsed from fairseq's logs). Training tokens/s is fairseq's wps of the training run (its end-of-run summary).
"""
import argparse
import csv
import math
import re
import sys
from pathlib import Path

from checkpoint_info import checkpoint_info
from sweep_report import train_tokens_per_s

# "| valid | epoch 001 | valid on 'valid' subset | loss 6.852 | ppl 115.55 | ... | num_updates 30 ..."
VALID_LINE = re.compile(r"\| valid on 'valid' subset \| loss ([\d.]+) \| ppl ([\d.]+) \|.*?\| num_updates (\d+)")
# "eval_lm: subset=test context_window=0 tokens=19779 loss_base2=6.1 ppl=68.59"
EVAL_LINE = re.compile(r"tokens=(\d+) loss_base2=\S+ ppl=(\S+)")
COLUMNS = ["model", "arch", "params", "updates", "train_tokens_per_s", "final_valid_ppl", "test_ppl", "test_tokens"]


def valid_curve(train_log: Path) -> list:
    """[(updates, valid ppl)] of every validation in ``train_log``, in order."""
    text = train_log.read_text(errors="replace")
    return [(int(m.group(3)), float(m.group(2))) for m in VALID_LINE.finditer(text)]


def detokenize(tokens: str) -> str:
    """Join the demo's tokens back into text: no space before closing punctuation or after an opening one."""
    text = re.sub(r" ([,.;:?!)\]}])", r"\1", tokens.strip())
    return re.sub(r"([(\[{]) ", r"\1", text)


def read_runs(out: Path) -> list:
    """One dict per model, with its validation curve under ``"curve"``."""
    rows = []
    with open(out / "runs.tsv", newline="") as f:
        for run in csv.DictReader(f, delimiter="\t"):
            match = EVAL_LINE.search(run["eval"])
            if not match:
                raise ValueError(f"no result in the evaluation line of {run['model']}: {run['eval']!r}")
            info = checkpoint_info(run["checkpoint"])
            curve = valid_curve(Path(run["train_log"]))
            speed = train_tokens_per_s(run["train_log"])
            rows.append({
                "model": run["model"],
                "arch": info["arch"],
                "params": info["params"],
                "updates": info["num_updates"],
                "train_tokens_per_s": round(speed) if speed is not None else "",
                "final_valid_ppl": curve[-1][1] if curve else "",
                "test_ppl": float(match.group(2)),
                "test_tokens": int(match.group(1)),
                "curve": curve,
            })
    return rows


def markdown(rows: list, sample: str) -> str:
    """The summary table and the sample, as markdown."""
    lines = [
        "| model | arch | params | updates | training tokens/s | final valid ppl | test ppl | test tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | `{r['arch']}` | {r['params']:,} | {r['updates']} | {r['train_tokens_per_s']} | "
            f"{r['final_valid_ppl']} | {r['test_ppl']:.2f} | {r['test_tokens']:,} |"
        )
    return "\n".join(lines) + f"\n\nHGRN2 sample: {sample}\n"


def plot(rows: list, path: Path) -> None:
    """Validation perplexity against updates, one line per model, log scale."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["curve"]:
            updates, ppl = zip(*r["curve"])
            ax.plot(updates, ppl, marker="o", label=f"{r['model']} ({r['params']:,} params)")
    ax.set_xlabel("updates")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 120, not 1.2 x 10^2
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Validation perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    out = args.out_dir
    try:
        rows = read_runs(out)
        sample = detokenize((out / "sample.txt").read_text())
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot make the report of {out}: {err}", file=sys.stderr)
        return 2
    bad = [r["model"] for r in rows if not math.isfinite(r["test_ppl"])]
    if bad or not sample:
        print(f"error: {'non-finite test perplexity for ' + ', '.join(bad) if bad else 'empty sample'}",
              file=sys.stderr)
        return 2

    table = markdown(rows, sample)
    (out / "summary.md").write_text(table)
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + ["sample"], extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "sample": sample if r["model"] == "HGRN2" else ""})
    plot(rows, out / "valid_curves.png")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
