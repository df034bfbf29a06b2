#!/usr/bin/env bash
# The demo: train a small HGRN2 and a transformer baseline on real text on CPU, evaluate both, generate a sample.
#
# Usage: bash scripts/demo.sh [--text FILE] [--out DIR] [--tiny] [--prompt TEXT]
#
#   --text FILE    train on this UTF-8 text file (one paragraph or sentence per line); default: the King James
#                  Bible of Debian's bible-kjv package, installed with apt-get when missing and possible
#   --out DIR      output directory (default demo/); its previous demo outputs are removed first
#   --tiny         a few KB of text and a handful of updates: checks the pipeline in about a minute
#   --prompt TEXT  the start of the generated sample (default: the first words of the test split)
#
# Steps: environment (scripts/setup_env.sh), corpus (scripts/demo_corpus.py: tokenised, deterministic
# train/valid/test split), fairseq-preprocess with a capped vocabulary, training of hgrn2_lm_outproduct_$E
# (scripts/script_lm.sh) and of fairseq's transformer_lm with the same width, depth, vocabulary, recipe and
# number of updates (fairseq-train: script_lm.sh only takes the plugin's architectures), evaluation of both on
# the test split (scripts/eval_lm.sh), a sample from HGRN2 through fairseq-interactive, and the report
# (scripts/demo_report.py): summary.md, summary.csv and valid_curves.png in DIR. Every run starts clean.
set -euo pipefail

USAGE="usage: bash scripts/demo.sh [--text FILE] [--out DIR] [--tiny] [--prompt TEXT]"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MARKER=".hgrn2-demo"  # marks a directory as the demo's own, so a rerun may empty it

fail() {
    echo "error: $*" >&2
    exit 2
}

TEXT="" OUT="demo" TINY=0 PROMPT=""
while (($#)); do
    case "$1" in
        --text | --out | --prompt) (($# >= 2)) || fail "$1 needs a value; $USAGE" ;;&
        --text) TEXT="$2" && shift 2 ;;
        --out) OUT="$2" && shift 2 ;;
        --prompt) PROMPT="$2" && shift 2 ;;
        --tiny) TINY=1 && shift ;;
        -h | --help) echo "$USAGE" && exit 0 ;;
        *) fail "unknown argument '$1'; $USAGE" ;;
    esac
done

# --- Check the input before touching anything ---
if [[ -n "$TEXT" ]]; then
    [[ -f "$TEXT" ]] || fail "--text file '$TEXT' not found"
    [[ -r "$TEXT" ]] || fail "--text file '$TEXT' is not readable"
    [[ -s "$TEXT" ]] || fail "--text file '$TEXT' is empty"
fi
if [[ -e "$OUT" && ! -d "$OUT" ]]; then
    fail "--out '$OUT' exists and is not a directory"
fi
if [[ -d "$OUT" && ! -f "$OUT/$MARKER" && -n "$(ls -A "$OUT")" ]]; then
    fail "--out '$OUT' is a non-empty directory that the demo did not make; choose another one"
fi

# --- The demo's settings (both models share every one) ---
if ((TINY)); then
    MAX_BYTES=6000 VOCAB=4000 DIM=32 LAYERS=2 E=8 HEADS=2
    export TOKENS_PER_SAMPLE=32 GLOBAL_BATCH=4 MAX_UPDATE=8 WARMUP_UPDATES=2 LOG_INTERVAL=2
    VALIDATE_EVERY=4 SAMPLE_TOKENS=12
else
    MAX_BYTES=0 VOCAB=4000 DIM=128 LAYERS=4 E=16 HEADS=4
    export TOKENS_PER_SAMPLE=128 GLOBAL_BATCH=16 MAX_UPDATE=500 WARMUP_UPDATES=50 LOG_INTERVAL=25
    VALIDATE_EVERY=50 SAMPLE_TOKENS=40
fi
export BATCH_SIZE="$GLOBAL_BATCH" CPU_PROCS=1 LR=0.002 PRECISION=fp32
HGRN2_ARCH="hgrn2_lm_outproduct_$E"
STEPS=7
START=$SECONDS
step() {
    echo "[demo] step $1/$STEPS ($((SECONDS - START)) s): $2" >&2
}

step 1 "environment"
bash "$REPO/scripts/setup_env.sh" >&2
VENV="${VENV:-$REPO/.venv}"
export PYTHON="$VENV/bin/python"  # what script_lm.sh and eval_lm.sh run
source "$REPO/scripts/common.sh"  # die, log and the rest of the recipe (configs/wikitext103.sh)

step 2 "corpus"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
if [[ -n "$TEXT" ]]; then
    FORMAT=plain RAW="$TEXT"
else
    if ! command -v bible >/dev/null; then
        command -v apt-get >/dev/null || die "the bible program (Debian's bible-kjv) is missing and there is no apt-get; pass --text FILE"
        SUDO=()
        ((EUID == 0)) || SUDO=(sudo)
        log "installing Debian's bible-kjv (the default corpus) with apt-get"
        "${SUDO[@]}" apt-get install -y bible-kjv >&2 ||
            { "${SUDO[@]}" apt-get update >&2 && "${SUDO[@]}" apt-get install -y bible-kjv >&2; } ||
            die "could not install bible-kjv with apt-get; pass --text FILE"
    fi
    FORMAT=bible RAW="$STAGE/kjv.txt"
    bible -l10000 gen1:1-rev22:21 >"$RAW"  # every verse, one per line (-l: no line wrapping)
fi
"$PYTHON" "$REPO/scripts/demo_corpus.py" "$RAW" "$STAGE/text" --format "$FORMAT" --max-bytes "$MAX_BYTES" >&2

# The corpus is good: only now are the previous outputs removed.
if [[ -f "$OUT/$MARKER" ]]; then
    log "removing the previous demo outputs in $OUT (every run starts clean)"
    find "$OUT" -mindepth 1 -delete
fi
mkdir -p "$OUT"
touch "$OUT/$MARKER"
mv "$STAGE/text" "$OUT/text"
DATA="$OUT/data-bin"
"$PYTHON" -m fairseq_cli.preprocess --only-source --trainpref "$OUT/text/train.txt" \
    --validpref "$OUT/text/valid.txt" --testpref "$OUT/text/test.txt" --destdir "$DATA" \
    --nwordssrc "$VOCAB" --workers 2 2>&1 | tee "$OUT/preprocess.log" | sed -n -E '/Dictionary|replaced/p' >&2

# --num-workers 0: batches are loaded in the training process (a loader process would compete for the 2 cores)
SHAPE=(--decoder-embed-dim "$DIM" --decoder-layers "$LAYERS" --validate-interval-updates "$VALIDATE_EVERY"
    --num-workers 0)
step 3 "training $HGRN2_ARCH (d=$DIM, $LAYERS layers, e=$E) for $MAX_UPDATE updates"
SAVE_ROOT="$OUT/checkpoints" bash "$REPO/scripts/script_lm.sh" "$HGRN2_ARCH" 0 "$DATA" "${SHAPE[@]}" |
    sed -u -n -E '/train_inner|valid on|Stopping/p' >&2

step 4 "training transformer_lm (d=$DIM, $LAYERS layers, $HEADS heads) for $MAX_UPDATE updates"
# The recipe of script_lm.sh, flag for flag, from the same variables; the feed-forward width 4d gives the same
# parameters as HGRN2's three-matrix GLU of width 8d/3, and the input/output dims must be given (ENV.md).
TF_DIR="$OUT/checkpoints/transformer_lm"
mkdir -p "$TF_DIR"
"$PYTHON" -m fairseq_cli.train "$DATA" --task language_modeling --arch transformer_lm \
    --decoder-embed-dim "$DIM" --decoder-input-dim "$DIM" --decoder-output-dim "$DIM" \
    --decoder-ffn-embed-dim "$((4 * DIM))" --decoder-layers "$LAYERS" --decoder-attention-heads "$HEADS" \
    --decoder-normalize-before --share-decoder-input-output-embed --dropout "$DROPOUT" \
    --optimizer adam --adam-betas "$ADAM_BETAS" --weight-decay "$WEIGHT_DECAY" --clip-norm "$CLIP_NORM" \
    --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP_UPDATES" --warmup-init-lr "$WARMUP_INIT_LR" \
    --tokens-per-sample "$TOKENS_PER_SAMPLE" --sample-break-mode none \
    --batch-size "$GLOBAL_BATCH" --max-tokens "$((GLOBAL_BATCH * TOKENS_PER_SAMPLE))" --update-freq 1 \
    --required-batch-size-multiple 1 --max-update "$MAX_UPDATE" --seed "$SEED" \
    --save-dir "$TF_DIR" --no-epoch-checkpoints --log-format simple --log-interval "$LOG_INTERVAL" \
    --validate-interval-updates "$VALIDATE_EVERY" --num-workers 0 --cpu --distributed-world-size 1 2>&1 |
    tee "$TF_DIR/train.log" | sed -u -n -E '/train_inner|valid on|Stopping/p' >&2

step 5 "evaluating both on the test split"
HGRN2_DIR="$OUT/checkpoints/$HGRN2_ARCH"
printf 'model\tcheckpoint\ttrain_log\teval\n' >"$OUT/runs.tsv"
for name in HGRN2 Transformer; do
    dir="$HGRN2_DIR"
    [[ "$name" == HGRN2 ]] || dir="$TF_DIR"
    result="$(bash "$REPO/scripts/eval_lm.sh" "$dir/checkpoint_last.pt" "$DATA" --subset test 2>"$OUT/eval_$name.log" |
        tail -n 1)" || die "evaluation of $dir/checkpoint_last.pt failed (its log: $OUT/eval_$name.log)"
    log "$name: $result"
    printf '%s\t%s\t%s\t%s\n' "$name" "$dir/checkpoint_last.pt" "$dir/train.log" "$result" >>"$OUT/runs.tsv"
done

step 6 "generating a sample from HGRN2 with fairseq-interactive"
[[ -n "$PROMPT" ]] || PROMPT="$(head -n 1 "$OUT/text/test.txt" | cut -d' ' -f1-4)"
TOKENS="$(PYTHONPATH="$REPO/scripts" "$PYTHON" -c 'import sys; from demo_corpus import tokenize; print(tokenize(sys.argv[1]))' "$PROMPT")" \
    || die "cannot tokenise the prompt"
[[ -n "$TOKENS" ]] || die "--prompt '$PROMPT' has no words"
PROMPT_LEN="$(wc -w <<<"$TOKENS")"
# top-20 sampling of SAMPLE_TOKENS / 2 to SAMPLE_TOKENS new tokens (the end of a line may come after the minimum);
# fairseq-interactive prints "H-0<TAB>score<TAB>prompt and continuation" for each input line
echo "$TOKENS" | "$PYTHON" -m fairseq_cli.interactive "$DATA" \
    --user-dir "$REPO/fairseq_hgrn2" --task language_modeling --path "$HGRN2_DIR/checkpoint_last.pt" --cpu \
    --beam 1 --nbest 1 --sampling --sampling-topk 20 --seed "$SEED" \
    --min-len "$((PROMPT_LEN + SAMPLE_TOKENS / 2))" --max-len-a 0 --max-len-b "$((PROMPT_LEN + SAMPLE_TOKENS))" \
    2>"$OUT/sample.log" |
    sed -n 's/^H-0\t[^\t]*\t//p' >"$OUT/sample.txt"
[[ -s "$OUT/sample.txt" ]] || die "fairseq-interactive produced no sample (its log: $OUT/sample.log)"

step 7 "report"
"$PYTHON" "$REPO/scripts/demo_report.py" "$OUT"
log "done in $((SECONDS - START)) s: $OUT/summary.md, $OUT/summary.csv, $OUT/valid_curves.png"
