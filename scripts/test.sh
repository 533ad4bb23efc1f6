#!/usr/bin/env bash
# Run the test suite in the environment setup.sh made. Arguments go to pytest (e.g. -k recipes).
# A red test, or no test collected (pytest's exit status 5), fails this script.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO"
if [ -d "$SFTDATA_SHARED/tokenizers" ]; then
    echo "tests: real tokenizers and datasets from $SFTDATA_SHARED"
else
    echo "tests: no $SFTDATA_SHARED/tokenizers: the tests that need the real tokenizers will skip (set SFTDATA_SHARED)"
fi
exec "$PYTHON" -m pytest -q "$@"
