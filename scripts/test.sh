#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite (extra arguments go to pytest).
#
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
bash "$REPO/scripts/setup_env.sh"
cd "$REPO"
exec "$VENV/bin/python" -m pytest tests "$@"
