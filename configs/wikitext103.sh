# The HGRN2 paper's WikiText-103 recipe, read by scripts/script_lm.sh, eval_lm.sh and sweep_expand.sh.
#
# Every line only sets a variable that the environment left unset, so any value can be overridden per run:
#     MAX_UPDATE=1000 PRECISION=fp32 bash scripts/script_lm.sh hgrn2_lm_outproduct_128 1 data-bin/wikitext-103
# or a whole other recipe can be used with CONFIG=path/to/recipe.sh. Model shape flags (--decoder-layers,
# --decoder-embed-dim, --expand-ratio, ...) are not here: the architecture sets them, and extra fairseq flags
# given to script_lm.sh after DATA_DIR override them.

# --- Batch: GLOBAL_BATCH sequences of TOKENS_PER_SAMPLE tokens per update, 128 x 512 = 65,536 tokens ---
: "${TOKENS_PER_SAMPLE:=512}"   # tokens per training sequence; evaluation uses the same block length
: "${GLOBAL_BATCH:=128}"        # sequences per update, summed over all processes and accumulation steps
: "${BATCH_SIZE:=16}"           # most sequences one process holds at once (memory bound); script_lm.sh picks
                                # the largest divisor of GLOBAL_BATCH / processes not above it and accumulates
                                # the rest with --update-freq

# --- Optimisation (Adam, inverse square-root schedule) ---
: "${MAX_UPDATE:=50000}"        # updates; 50,000 x 65,536 tokens is about 32 epochs of WikiText-103
: "${LR:=0.0005}"               # peak learning rate, reached after WARMUP_UPDATES
: "${WARMUP_UPDATES:=4000}"
: "${WARMUP_INIT_LR:=1e-07}"
: "${ADAM_BETAS:=(0.9, 0.98)}"
: "${WEIGHT_DECAY:=0.1}"
: "${CLIP_NORM:=1.0}"           # gradient norm clipping
: "${DROPOUT:=0.1}"             # after the embedding and on every residual branch
: "${SEED:=1}"

# --- Numerics ---
: "${PRECISION:=bf16}"          # bf16 (the paper), fp16, or fp32 (use fp32 for quick CPU runs: bf16 is slow there)

# --- Outputs ---
: "${SAVE_ROOT:=checkpoints}"   # checkpoints, train.log and tensorboard/ go to $SAVE_ROOT/<arch>
: "${LOG_INTERVAL:=100}"        # updates between two progress lines

# --- Evaluation (fairseq-eval-lm) ---
: "${CONTEXT_WINDOW:=0}"        # 0: non-overlapping blocks; N > 0: each block also sees the N tokens before it
: "${EVAL_MAX_TOKENS:=16384}"   # tokens per evaluation batch (memory only: the result does not depend on it)
: "${EVAL_CHECKPOINT:=checkpoint_best.pt}"  # which checkpoint of a save dir sweep_expand.sh evaluates
: "${RESULTS_DIR:=results}"     # where sweep_expand.sh writes sweep.csv, sweep.md and sweep.png
