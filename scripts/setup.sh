#!/usr/bin/env bash
# Set up everything on a fresh machine that has only `python3` (Debian/Ubuntu, or any Python 3.10+):
# a virtual environment (.venv/, unless one is active), the project with its training, Ray, S3 and test
# dependencies, CPU torch, and Chromium for the browser test. Safe to run again.
# On a GPU machine: install the torch build you want into the environment first; this leaves it alone.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO"

as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { apt-get update -qq && apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ! -x "$PYTHON" ]; then
    # Debian and Ubuntu ship venv (and the pip it bootstraps, ensurepip) in a separate package
    if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
        if as_root; then
            echo "setup: installing python3-venv (Debian's venv and ensurepip)"
            apt_install python3-venv
        else
            echo "setup: python3 cannot make a virtual environment; install it first: sudo apt-get install python3-venv" >&2
            exit 1
        fi
    fi
    echo "setup: making the virtual environment $VENV"
    python3 -m venv "$VENV"
fi
echo "setup: installing into $VENV"

# Chromium renders the HTML report in a real browser test; without it that one test skips.
if ! command -v chromium >/dev/null 2>&1 && as_root; then
    apt_install chromium || echo "setup: chromium could not be installed; the browser test will skip"
fi

# torch pinned to the release whose CPU build is provided here (a looser spec could pull a CUDA build of
# several GB); an environment that already has torch keeps it (a CUDA build on a GPU machine)
torch_spec="torch==2.13.0"
if "$PYTHON" -c "import torch" 2>/dev/null; then
    torch_spec=""
fi
# every extra, so the tests run the Ray executor on a real two-node cluster and the builds on S3 (moto)
"$PYTHON" -m pip install -q ${torch_spec} -e ".[train,ray,s3,dev]"
echo "setup: done. Use it with: source $VENV/bin/activate   (or call $VENV/bin/sftdata directly)"
