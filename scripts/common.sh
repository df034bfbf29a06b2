# Shared by the training, evaluation and data scripts; sourced, never run.
# Sets REPO and PYTHON, loads the recipe (configs/wikitext103.sh, or $CONFIG) and defines die and log.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The interpreter that has fairseq and the plugin: $PYTHON, else the active virtualenv, else the repo's .venv.
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        PYTHON="$VIRTUAL_ENV/bin/python"
    elif [[ -x "$REPO/.venv/bin/python" ]]; then
        PYTHON="$REPO/.venv/bin/python"
    else
        PYTHON=python3
    fi
fi

# One line on stderr and a non-zero exit: every refusal of bad input goes through here.
die() {
    echo "error: $*" >&2
    exit 2
}

log() {
    echo "[$(basename "$0" .sh)] $*" >&2
}

# Load the recipe. Its lines only fill variables the environment left unset, so the environment wins.
CONFIG="${CONFIG:-$REPO/configs/wikitext103.sh}"
[[ -f "$CONFIG" ]] || die "config file $CONFIG not found"
# shellcheck source=../configs/wikitext103.sh
source "$CONFIG"

# require_int NAME MIN: the variable NAME holds an integer >= MIN.
require_int() {
    local value="${!1}"
    [[ "$value" =~ ^[0-9]+$ ]] && ((10#$value >= $2)) || die "$1 must be an integer >= $2, got '$value'"
}
