#!/usr/bin/env bash
# Evaluate a checkpoint with fairseq-eval-lm as in the paper and print its perplexity and token count.
#
# Usage: bash scripts/eval_lm.sh CHECKPOINT DATA_DIR [--subset valid|test] [--context-window N]
#                                [--tokens-per-sample N] [extra fairseq-eval-lm flags...]
#
#   --subset            split to score (default test)
#   --context-window    0 (default, $CONTEXT_WINDOW): non-overlapping blocks of TOKENS_PER_SAMPLE tokens;
#                       N > 0: blocks of TOKENS_PER_SAMPLE - N new tokens, each scored after the N tokens before it
#   --tokens-per-sample block length (default $TOKENS_PER_SAMPLE = 512): at most the length the model trained on,
#                       or fairseq silently skips the blocks that are too long
#
# The last line on stdout is the result, e.g.
#   eval_lm: subset=test context_window=0 tokens=245569 loss_base2=4.5678 ppl=23.73
# BPE-level perplexity (the data is GPT-2 BPE). The script fails unless every token of the split was scored:
# fairseq prints "Perplexity: 1.00" and exits 0 when it evaluated nothing.
set -euo pipefail

USAGE="usage: bash scripts/eval_lm.sh CHECKPOINT DATA_DIR [--subset valid|test] [--context-window N] [--tokens-per-sample N] [fairseq-eval-lm flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 2)) || die "$USAGE"
CHECKPOINT="$1" DATA_DIR="$2"
shift 2
SUBSET=test
EXTRA_FLAGS=()
while (($#)); do
    case "$1" in
        --subset | --context-window | --tokens-per-sample) (($# >= 2)) || die "$1 needs a value" ;;&
        --subset) SUBSET="$2" && shift 2 ;;
        --context-window) CONTEXT_WINDOW="$2" && shift 2 ;;
        --tokens-per-sample) TOKENS_PER_SAMPLE="$2" && shift 2 ;;
        *) EXTRA_FLAGS+=("$1") && shift ;;
    esac
done

[[ -f "$CHECKPOINT" ]] || die "checkpoint '$CHECKPOINT' not found"
[[ -f "$DATA_DIR/dict.txt" ]] || die "data dir '$DATA_DIR' not found or has no dict.txt"
[[ -f "$DATA_DIR/$SUBSET.idx" ]] || die "'$DATA_DIR' has no split '$SUBSET' ($SUBSET.idx)"
require_int TOKENS_PER_SAMPLE 1
require_int CONTEXT_WINDOW 0
require_int EVAL_MAX_TOKENS 1
((10#$CONTEXT_WINDOW < 10#$TOKENS_PER_SAMPLE)) ||
    die "--context-window $CONTEXT_WINDOW must be below --tokens-per-sample $TOKENS_PER_SAMPLE (it is part of each block)"

EXPECTED="$("$PYTHON" "$REPO/scripts/dataset_tokens.py" "$DATA_DIR" "$SUBSET")"
((EXPECTED > 0)) ||
    die "split '$SUBSET' of '$DATA_DIR' is empty (0 tokens): nothing to evaluate; binarize a non-empty one with fairseq-preprocess"
# A truncated checkpoint or one trained on another dictionary: one clear line, instead of fairseq's traceback
"$PYTHON" "$REPO/scripts/checkpoint_info.py" "$CHECKPOINT" --data "$DATA_DIR" >/dev/null || exit 2

OUTPUT="$(mktemp)"
trap 'rm -f "$OUTPUT"' EXIT
log "scoring $SUBSET of $DATA_DIR with $CHECKPOINT (blocks of $TOKENS_PER_SAMPLE, context window $CONTEXT_WINDOW)"
# fairseq-eval-lm uses the GPU when there is one; its log goes to stderr, the result line to stdout
"$PYTHON" -m fairseq_cli.eval_lm "$DATA_DIR" --path "$CHECKPOINT" --user-dir "$REPO/fairseq_hgrn2" \
    --gen-subset "$SUBSET" --tokens-per-sample "$TOKENS_PER_SAMPLE" --sample-break-mode none \
    --context-window "$CONTEXT_WINDOW" --max-tokens "$EVAL_MAX_TOKENS" "${EXTRA_FLAGS[@]}" 2>&1 |
    tee "$OUTPUT" >&2

# "Evaluated 1,630 tokens in 0.5s (3000.00 tokens/s)" and "Loss (base 2): 8.1466, Perplexity: 283.38"
TOKENS="$(sed -n 's/.*Evaluated \([0-9,]*\) tokens.*/\1/p' "$OUTPUT" | tail -n 1 | tr -d ,)"
LOSS="$(sed -n 's/.*Loss (base 2): \([^,]*\),.*/\1/p' "$OUTPUT" | tail -n 1)"
PPL="$(sed -n 's/.*Perplexity: \([0-9.,a-z]*\).*/\1/p' "$OUTPUT" | tail -n 1 | tr -d ,)"
[[ -n "$TOKENS" && -n "$PPL" ]] || die "no perplexity in the output of fairseq-eval-lm"
((TOKENS > 0)) ||
    die "fairseq-eval-lm evaluated 0 tokens of $EXPECTED, so its perplexity $PPL means nothing; is --tokens-per-sample $TOKENS_PER_SAMPLE longer than the model was trained on?"
((TOKENS == EXPECTED)) ||
    die "fairseq-eval-lm evaluated $TOKENS of the $EXPECTED tokens in $SUBSET; is --tokens-per-sample $TOKENS_PER_SAMPLE longer than the model was trained on?"
echo "eval_lm: subset=$SUBSET context_window=$CONTEXT_WINDOW tokens=$TOKENS loss_base2=$LOSS ppl=$PPL"
