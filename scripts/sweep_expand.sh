#!/usr/bin/env bash
# The expand-ratio sweep: train each architecture (or reuse its finished run), evaluate it, tabulate and plot.
#
# Usage: bash scripts/sweep_expand.sh DATA_DIR NUM_GPUS [ARCH...] [-- extra fairseq-train flags...]
#
#   ARCH...   default: all nine architectures of the plugin
#   -- flags  passed to every scripts/script_lm.sh run (e.g. -- --decoder-layers 2 --decoder-embed-dim 128)
#
# Each architecture trains with scripts/script_lm.sh (same recipe, same environment overrides), which resumes an
# unfinished run and skips a finished one. $EVAL_CHECKPOINT of each is then scored on valid and test by
# scripts/eval_lm.sh. Writes $RESULTS_DIR/sweep.csv, sweep.md (a markdown table) and sweep.png (perplexity
# against expand ratio). With NNODES > 1 every node trains; only NODE_RANK=0 evaluates and reports.
set -euo pipefail

USAGE="usage: bash scripts/sweep_expand.sh DATA_DIR NUM_GPUS [ARCH...] [-- extra fairseq-train flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 2)) || die "$USAGE"
DATA_DIR="$1" NUM_GPUS="$2"
shift 2
ARCHS=()
while (($#)) && [[ "$1" != -- ]]; do
    ARCHS+=("$1")
    shift
done
(($#)) && shift # the "--"
TRAIN_FLAGS=("$@")

[[ "$NUM_GPUS" =~ ^[0-9]+$ ]] || die "NUM_GPUS must be a number of GPUs per node (0 for CPU), got '$NUM_GPUS'"
for file in dict.txt valid.idx test.idx; do
    [[ -f "$DATA_DIR/$file" ]] || die "data dir '$DATA_DIR' not found or has no $file"
done
KNOWN=" $("$PYTHON" "$REPO/scripts/launch_plan.py" --list-archs) "
((${#ARCHS[@]})) || read -r -a ARCHS <<<"$KNOWN"
for arch in "${ARCHS[@]}"; do
    [[ "$KNOWN" == *" $arch "* ]] || die "unknown architecture '$arch'; choose from:$KNOWN"
done

ROWS="$(mktemp)"
trap 'rm -f "$ROWS"' EXIT
for arch in "${ARCHS[@]}"; do
    log "=== $arch: training (or reusing a finished run)"
    # training logs go to stderr (and train.log): stdout is for the table
    bash "$REPO/scripts/script_lm.sh" "$arch" "$NUM_GPUS" "$DATA_DIR" "${TRAIN_FLAGS[@]}" >&2
    [[ "${NODE_RANK:-0}" == 0 ]] || continue

    checkpoint="$SAVE_ROOT/$arch/$EVAL_CHECKPOINT"
    [[ -f "$checkpoint" ]] || die "$arch trained but $checkpoint is missing"
    row=("$arch" "$checkpoint" "$SAVE_ROOT/$arch/train.log")
    for subset in valid test; do
        log "=== $arch: evaluating $subset"
        result="$(bash "$REPO/scripts/eval_lm.sh" "$checkpoint" "$DATA_DIR" --subset "$subset")"
        # eval_lm: subset=... context_window=... tokens=N loss_base2=... ppl=P
        row+=("$(sed -n 's/.* ppl=\([^ ]*\).*/\1/p' <<<"$result")" "$(sed -n 's/.* tokens=\([0-9]*\).*/\1/p' <<<"$result")")
    done
    (IFS=$'\t' && echo "${row[*]}") >>"$ROWS"
done
[[ "${NODE_RANK:-0}" == 0 ]] || exit 0

"$PYTHON" "$REPO/scripts/sweep_report.py" "$ROWS" "$RESULTS_DIR" --context-window "$CONTEXT_WINDOW"
