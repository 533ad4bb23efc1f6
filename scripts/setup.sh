#!/usr/bin/env bash
# Set up everything the project and its tests need on a fresh machine (Debian/Ubuntu or any Python 3.10+).
# CPU machines: torch==2.13.0 resolves to the CPU build where one is provided (as on our CI); on a GPU
# machine install the torch build you want first and this leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium renders the HTML report in a real browser test; without it that one test skips.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium >/dev/null) || echo "setup: chromium could not be installed; the browser test will skip"
fi

torch_spec="torch==2.13.0"
if python -c "import torch" 2>/dev/null; then
    torch_spec=""  # keep the torch already installed (a CUDA build on a GPU box)
fi
python -m pip install -q ${torch_spec} -e ".[train,dev]"
