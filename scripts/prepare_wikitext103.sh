#!/usr/bin/env bash
# Build the binarized WikiText-103 of the paper: raw text, GPT-2 BPE, fairseq-preprocess with the GPT-2 dictionary.
#
# Usage: bash scripts/prepare_wikitext103.sh [DEST] [--from DIR]
#
#   DEST        output folder (default data-bin/wikitext-103)
#   --from DIR  take wikitext-103-raw-v1.zip, encoder.json, vocab.bpe and dict.txt from DIR instead of
#               downloading them (for machines without internet); they are checked the same way
#
# Steps, each skipped when its output exists (all of them when DEST is complete): fetch and verify the four
# files into RAW_DIR, unzip, BPE-encode each split, binarize into DEST. Every output is written under a temporary
# name and renamed when complete, so an interrupted run leaves nothing that a later run would take as done;
# rerunning finishes the job.
#
# Environment: RAW_DIR (data-raw/wikitext-103: downloads, raw and BPE text), WORKERS (CPU count),
#   WIKITEXT_URL, ENCODER_URL, VOCAB_URL, DICT_URL and their SHA256_* checksums (below), PYTHON.
set -euo pipefail

USAGE="usage: bash scripts/prepare_wikitext103.sh [DEST] [--from DIR]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The WikiText-103 raw archive (Merity et al., 2016), 191,984,949 bytes. The original host was
# https://s3.amazonaws.com/research.metamind.io/wikitext/; the same archive is served by its author's mirror.
: "${WIKITEXT_URL:=https://wikitext.smerity.com/wikitext-103-raw-v1.zip}"
: "${SHA256_WIKITEXT_ZIP:=91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794}"
# The GPT-2 BPE (OpenAI's files, which fairseq's GPT-2 BPE mirrors) and fairseq's dictionary for it.
: "${ENCODER_URL:=https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json}"
: "${SHA256_ENCODER_JSON:=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783}"
: "${VOCAB_URL:=https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe}"
: "${SHA256_VOCAB_BPE:=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5}"
: "${DICT_URL:=https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/dict.txt}"
# No published checksum for dict.txt: it is checked for the dictionary format instead, unless one is given here.
: "${SHA256_DICT_TXT:=}"
: "${RAW_DIR:=data-raw/wikitext-103}"
: "${WORKERS:=$(nproc 2>/dev/null || echo 1)}"

DEST=""
FROM=""
while (($#)); do
    case "$1" in
        --from) (($# >= 2)) || die "--from needs a folder; $USAGE" && FROM="$2" && shift 2 ;;
        -h | --help) echo "$USAGE" && exit 0 ;;
        -*) die "unknown option $1; $USAGE" ;;
        *) [[ -z "$DEST" ]] || die "one DEST only; $USAGE" && DEST="$1" && shift ;;
    esac
done
DEST="${DEST:-data-bin/wikitext-103}"
SPLITS=(train valid test)
RAW_TEXT="$RAW_DIR/wikitext-103-raw"

dest_complete() {
    local split
    [[ -f "$DEST/dict.txt" ]] || return 1
    for split in "${SPLITS[@]}"; do
        [[ -f "$DEST/$split.bin" && -f "$DEST/$split.idx" ]] || return 1
    done
}

# --- Check before doing anything ---
[[ -z "$FROM" || -d "$FROM" ]] || die "--from folder '$FROM' not found"
require_int WORKERS 1
if dest_complete; then
    log "$DEST is complete already: nothing to do"
    exit 0
elif [[ -e "$DEST" ]]; then
    die "'$DEST' exists but is not a complete data-bin (dict.txt, {train,valid,test}.{bin,idx}); move it away first"
fi
if [[ -z "$FROM" ]] && ! command -v curl >/dev/null; then
    die "curl is needed to download; or use --from DIR with local copies"
fi

# check_file NAME PATH SHA256: the checksum when one is known, else the fairseq dictionary format for dict.txt.
check_file() {
    local name="$1" path="$2" want="$3" got
    if [[ -n "$want" ]]; then
        got="$(sha256sum "$path" | cut -d' ' -f1)"
        [[ "$got" == "$want" ]] || { rm -f "$path" && die "$name: SHA-256 $got, expected $want"; }
    elif [[ "$name" == dict.txt ]]; then
        # "<token> <count>" per line; a saved error page would not look like that
        [[ -s "$path" ]] && ! grep -qvE '^[^[:space:]]+ [0-9]+( #fairseq:overwrite)?$' "$path" ||
            { rm -f "$path" && die "$name is not a fairseq dictionary (lines of '<token> <count>')"; }
    fi
}

# fetch NAME URL SHA256: RAW_DIR/NAME, downloaded (or copied from --from) to NAME.part, checked, then renamed.
fetch() {
    local name="$1" url="$2" want="$3" target="$RAW_DIR/$1"
    if [[ -f "$target" ]]; then
        log "have $target"
        return
    fi
    rm -f "$target.part"
    if [[ -n "$FROM" ]]; then
        [[ -f "$FROM/$name" ]] || die "--from folder '$FROM' has no $name"
        log "copying $FROM/$name"
        cp "$FROM/$name" "$target.part"
    else
        log "downloading $url"
        curl -fL --retry 3 --progress-bar -o "$target.part" "$url" || { rm -f "$target.part" && die "download of $url failed"; }
    fi
    check_file "$name" "$target.part" "$want"
    mv "$target.part" "$target"
}

mkdir -p "$RAW_DIR"

# --- 1. Fetch ---
fetch wikitext-103-raw-v1.zip "$WIKITEXT_URL" "$SHA256_WIKITEXT_ZIP"
fetch encoder.json "$ENCODER_URL" "$SHA256_ENCODER_JSON"
fetch vocab.bpe "$VOCAB_URL" "$SHA256_VOCAB_BPE"
fetch dict.txt "$DICT_URL" "$SHA256_DICT_TXT"

# --- 2. Unzip: wikitext-103-raw/wiki.{train,valid,test}.raw ---
if [[ -d "$RAW_TEXT" ]]; then
    log "have $RAW_TEXT"
else
    log "unzipping into $RAW_TEXT"
    rm -rf "$RAW_DIR/unzip.tmp"
    "$PYTHON" -m zipfile -e "$RAW_DIR/wikitext-103-raw-v1.zip" "$RAW_DIR/unzip.tmp"
    for split in "${SPLITS[@]}"; do
        [[ -f "$RAW_DIR/unzip.tmp/wikitext-103-raw/wiki.$split.raw" ]] ||
            die "the archive has no wikitext-103-raw/wiki.$split.raw"
    done
    mv "$RAW_DIR/unzip.tmp/wikitext-103-raw" "$RAW_TEXT"
    rm -rf "$RAW_DIR/unzip.tmp"
fi

# --- 3. GPT-2 BPE: wiki.<split>.bpe, one line of token ids per raw line ---
INPUTS=() OUTPUTS=()
for split in "${SPLITS[@]}"; do
    if [[ -f "$RAW_DIR/wiki.$split.bpe" ]]; then
        log "have $RAW_DIR/wiki.$split.bpe"
    else
        INPUTS+=("$RAW_TEXT/wiki.$split.raw") OUTPUTS+=("$RAW_DIR/wiki.$split.bpe")
    fi
done
if ((${#OUTPUTS[@]})); then
    log "BPE-encoding ${OUTPUTS[*]} with $WORKERS workers (the train split has 1.8M lines: minutes)"
    # bpe_encode.py writes each output under a temporary name and renames it when complete
    "$PYTHON" "$REPO/scripts/bpe_encode.py" --encoder-json "$RAW_DIR/encoder.json" --vocab-bpe "$RAW_DIR/vocab.bpe" \
        --workers "$WORKERS" --inputs "${INPUTS[@]}" --outputs "${OUTPUTS[@]}"
fi

# --- 4. Binarize with the GPT-2 dictionary ---
log "binarizing into $DEST"
rm -rf "$DEST.tmp"
"$PYTHON" -m fairseq_cli.preprocess --only-source --srcdict "$RAW_DIR/dict.txt" \
    --trainpref "$RAW_DIR/wiki.train.bpe" --validpref "$RAW_DIR/wiki.valid.bpe" \
    --testpref "$RAW_DIR/wiki.test.bpe" --destdir "$DEST.tmp" --workers "$WORKERS"
mkdir -p "$(dirname "$DEST")"
mv "$DEST.tmp" "$DEST"
log "done: $DEST ($(du -sh "$DEST" | cut -f1)); token counts in $DEST/preprocess.log"
