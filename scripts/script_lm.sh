#!/usr/bin/env bash
# Train one HGRN2 language model with the paper's recipe (configs/wikitext103.sh) on GPUs, CPUs or several nodes.
#
# Usage: bash scripts/script_lm.sh ARCH NUM_GPUS DATA_DIR [extra fairseq-train flags...]
#
#   ARCH       an architecture of the plugin (hgrn2_lm_outproduct_<e>, hgrn2_lm_expand2)
#   NUM_GPUS   GPUs per node; 0 trains on CPU with CPU_PROCS processes per node (default 1)
#   DATA_DIR   a fairseq-preprocess output (scripts/prepare_wikitext103.sh builds data-bin/wikitext-103)
#   extra flags go to fairseq-train last, so they win (e.g. --decoder-layers 2 --decoder-embed-dim 128)
#
# The global batch is GLOBAL_BATCH sequences (128 x 512 tokens) whatever the number of processes: the per-process
# batch and --update-freq are derived from it, and a process count that cannot make it exactly is refused.
# Outputs go to $SAVE_ROOT/ARCH: checkpoints, train.log (appended; train.node<N>.log on other nodes) and
# tensorboard/. Running the same command again resumes from checkpoint_last.pt, and does nothing once MAX_UPDATE
# updates are done.
#
# Environment: every value of configs/wikitext103.sh (or of $CONFIG), plus
#   CPU_PROCS (1)  processes per node on CPU      NNODES (1), NODE_RANK (0)  several nodes: run once per node
#   MASTER_ADDR, MASTER_PORT (29500)  the node with NODE_RANK=0, for torchrun's rendezvous across nodes
#   PYTHON  the interpreter with fairseq (default: the active virtualenv, else .venv)
set -euo pipefail

USAGE="usage: bash scripts/script_lm.sh ARCH NUM_GPUS DATA_DIR [extra fairseq-train flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 3)) || die "$USAGE"
ARCH="$1" NUM_GPUS="$2" DATA_DIR="$3"
shift 3
EXTRA_FLAGS=("$@")

# --- Check everything before writing anything ---
[[ "$NUM_GPUS" =~ ^[0-9]+$ ]] || die "NUM_GPUS must be a number of GPUs per node (0 for CPU), got '$NUM_GPUS'"
[[ -d "$DATA_DIR" ]] || die "data dir '$DATA_DIR' not found (scripts/prepare_wikitext103.sh builds one)"
[[ -f "$DATA_DIR/dict.txt" ]] || die "'$DATA_DIR' has no dict.txt: not a fairseq-preprocess output"
# fairseq-train crashes on an empty split only once it has started ("cannot mmap an empty file")
SPLITS=(train valid)
[[ " ${EXTRA_FLAGS[*]} " == *" --disable-validation "* ]] && SPLITS=(train)
for split in "${SPLITS[@]}"; do
    [[ -f "$DATA_DIR/$split.idx" ]] || die "'$DATA_DIR' has no split '$split' ($split.idx): binarize it with fairseq-preprocess"
    split_tokens="$("$PYTHON" "$REPO/scripts/dataset_tokens.py" "$DATA_DIR" "$split")"
    ((split_tokens > 0)) ||
        die "split '$split' of '$DATA_DIR' is empty (0 tokens): binarize a non-empty one with fairseq-preprocess"
done

: "${CPU_PROCS:=1}" "${NNODES:=1}" "${NODE_RANK:=0}" "${MASTER_ADDR:=}" "${MASTER_PORT:=29500}"
for name in CPU_PROCS NNODES GLOBAL_BATCH BATCH_SIZE TOKENS_PER_SAMPLE MAX_UPDATE LOG_INTERVAL; do
    require_int "$name" 1
done
for name in NODE_RANK MASTER_PORT WARMUP_UPDATES SEED; do
    require_int "$name" 0
done
((10#$NODE_RANK < 10#$NNODES)) || die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
((10#$NNODES == 1)) || [[ -n "$MASTER_ADDR" ]] || die "NNODES=$NNODES needs MASTER_ADDR, the host of NODE_RANK=0"
case "$PRECISION" in
    bf16) PRECISION_FLAGS=(--bf16) ;;
    fp16) PRECISION_FLAGS=(--fp16) ;;
    fp32) PRECISION_FLAGS=() ;;
    *) die "PRECISION must be bf16, fp16 or fp32, got '$PRECISION'" ;;
esac

# Flags this script owns: given again as extra flags they would silently change the global batch or the layout.
for flag in "${EXTRA_FLAGS[@]}"; do
    case "${flag%%=*}" in
        --batch-size | --max-sentences | --max-tokens | --update-freq | --tokens-per-sample)
            die "$flag is derived from GLOBAL_BATCH, BATCH_SIZE and TOKENS_PER_SAMPLE; set those in the environment" ;;
        --save-dir | --tensorboard-logdir) die "$flag is derived from SAVE_ROOT; set SAVE_ROOT in the environment" ;;
        # fairseq reloads a --restore-file on every run, so a rerun would restart from it instead of resuming
        --restore-file) die "--restore-file would make every rerun start again from that file; to continue a checkpoint, copy it to \$SAVE_ROOT/$ARCH/checkpoint_last.pt, to start from one, use --finetune-from-model" ;;
        --arch | --user-dir | --cpu | --distributed-world-size | --distributed-rank | --device-id | \
            --distributed-init-method | --distributed-backend | --distributed-no-spawn)
            die "$flag is set by script_lm.sh from its arguments (ARCH, NUM_GPUS) and NNODES" ;;
    esac
done

SAVE_DIR="$SAVE_ROOT/$ARCH"
# a model to start from: read by fairseq on the first launch only, checked here like checkpoint_last.pt
INIT_CHECKPOINT=()
for ((i = 0; i < ${#EXTRA_FLAGS[@]}; i++)); do
    case "${EXTRA_FLAGS[i]}" in
        --finetune-from-model) INIT_CHECKPOINT=(--init-checkpoint "${EXTRA_FLAGS[i + 1]:-}") ;;
        --finetune-from-model=*) INIT_CHECKPOINT=(--init-checkpoint "${EXTRA_FLAGS[i]#*=}") ;;
    esac
done
# node 0 has fairseq's progress log; other nodes keep their own (warnings only) beside it
LOG_FILE="$SAVE_DIR/train.log"
((10#$NODE_RANK == 0)) || LOG_FILE="$SAVE_DIR/train.node$((10#$NODE_RANK)).log"
# Architecture, batch arithmetic, GPU count and the progress of an earlier run, checked by Python against the
# plugin, torch and the checkpoint.
PLAN="$("$PYTHON" "$REPO/scripts/launch_plan.py" --arch "$ARCH" --gpus "$NUM_GPUS" --nodes "$NNODES" \
    --cpu-procs "$CPU_PROCS" --global-batch "$GLOBAL_BATCH" --batch-size "$BATCH_SIZE" \
    --checkpoint "$SAVE_DIR/checkpoint_last.pt" "${INIT_CHECKPOINT[@]}" --data "$DATA_DIR")"
read -r DEVICE PROCS BATCH UPDATE_FREQ DONE <<<"$PLAN"
if [[ -f "$SAVE_DIR/checkpoint_last.pt" ]]; then
    if ((DONE >= 10#$MAX_UPDATE)); then
        # fairseq would train one more update on every rerun of a finished job
        log "$SAVE_DIR/checkpoint_last.pt has $DONE updates (MAX_UPDATE=$MAX_UPDATE): training is done"
        exit 0
    fi
    log "resuming from $SAVE_DIR/checkpoint_last.pt at update $DONE"
fi

# --- The paper's recipe ---
TRAIN_FLAGS=(
    "$DATA_DIR" --user-dir "$REPO/fairseq_hgrn2" --task language_modeling --arch "$ARCH"
    --share-decoder-input-output-embed --dropout "$DROPOUT" "${PRECISION_FLAGS[@]}"
    --optimizer adam --adam-betas "$ADAM_BETAS" --weight-decay "$WEIGHT_DECAY" --clip-norm "$CLIP_NORM"
    --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP_UPDATES" --warmup-init-lr "$WARMUP_INIT_LR"
    --tokens-per-sample "$TOKENS_PER_SAMPLE" --sample-break-mode none
    --batch-size "$BATCH" --max-tokens "$((BATCH * TOKENS_PER_SAMPLE))" --update-freq "$UPDATE_FREQ"
    --required-batch-size-multiple 1  # else fairseq rounds batches down to multiples of 8
    --max-update "$MAX_UPDATE" --seed "$SEED"
    # checkpoint_last.pt (resume) and checkpoint_best.pt (evaluation); per-epoch copies would cost ~0.5 GB each
    --save-dir "$SAVE_DIR" --no-epoch-checkpoints --tensorboard-logdir "$SAVE_DIR/tensorboard"
    --log-format simple --log-interval "$LOG_INTERVAL"
)
[[ "$DEVICE" == cpu ]] && TRAIN_FLAGS+=(--cpu)
TRAIN_FLAGS+=("${EXTRA_FLAGS[@]}")

WORKERS=$((PROCS * 10#$NNODES))
if ((WORKERS == 1)); then
    # an explicit world size of 1: by default fairseq would spread over every visible GPU
    CMD=("$PYTHON" -m fairseq_cli.train "${TRAIN_FLAGS[@]}" --distributed-world-size 1)
elif ((10#$NNODES == 1)); then
    CMD=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$PROCS"
        "$REPO/scripts/train_worker.py" "${TRAIN_FLAGS[@]}")
else
    CMD=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK"
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node "$PROCS"
        "$REPO/scripts/train_worker.py" "${TRAIN_FLAGS[@]}")
fi

mkdir -p "$SAVE_DIR"
log "training $ARCH on $WORKERS $DEVICE process(es); log: $LOG_FILE"
echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) node $NODE_RANK: ${CMD[*]}" >>"$LOG_FILE"
"${CMD[@]}" 2>&1 | tee -a "$LOG_FILE"
