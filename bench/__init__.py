"""Benchmarks (`python -m bench.bench_build`, ...). `SHARED`: where the real tokenizers and datasets are,
the folder SFTDATA_SHARED names, else `shared/` beside the repository (as for the tests)."""

import os
from pathlib import Path

SHARED = Path(os.environ.get("SFTDATA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
