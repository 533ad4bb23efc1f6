# Sourced by the other scripts: which Python they use, so all of them use the same environment.
# An active virtual environment (VIRTUAL_ENV) wins; otherwise the repository's own .venv/.
# shellcheck shell=bash
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${VIRTUAL_ENV:-}" ]; then
    VENV="$VIRTUAL_ENV"
else
    VENV="$REPO/.venv"
fi
PYTHON="$VENV/bin/python"
# the real tokenizers and datasets some tests and the benchmarks use (they skip or stop without them)
export SFTDATA_SHARED="${SFTDATA_SHARED:-$(dirname "$REPO")/shared}"
