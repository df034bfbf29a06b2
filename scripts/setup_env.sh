#!/usr/bin/env bash
# Create the project's virtual environment (default .venv) and install the plugin with its pinned stack.
# Does nothing when the environment is already up to date with setup.py.
#
# Usage: bash scripts/setup_env.sh
# Environment: VENV (default <repo>/.venv), PYTHON (default python3; 3.11 or 3.12),
#              TORCH_SPEC (default torch==2.13.0; e.g. "torch==2.11.0" on a GPU machine)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.fairseq-hgrn2-installed"
WANT="$(sha256sum "$REPO/setup.py" | cut -d' ' -f1) $TORCH_SPEC"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "[setup] environment up to date: $VENV"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null; then
    echo "error: $PYTHON not found; set PYTHON to a Python 3.11 or 3.12 interpreter" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)'; then
    echo "error: $("$PYTHON" --version 2>&1) is not supported; set PYTHON to Python 3.11 or 3.12" >&2
    exit 2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing $TORCH_SPEC, fairseq (ve-fairseq) and fairseq-hgrn2 into $VENV (about 2 minutes)"
# torch goes in the same command as fairseq, so pip never swaps it for another build
"$VENV/bin/python" -m pip install --progress-bar off "$TORCH_SPEC" -e "$REPO[test]"
"$VENV/bin/python" -c 'import fairseq, torch, fairseq_hgrn2.models; print("[setup] ok: torch", torch.__version__, "fairseq", fairseq.__version__)'
echo "$WANT" > "$STAMP"
