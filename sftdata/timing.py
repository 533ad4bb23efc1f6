"""Seconds per stage of a build, summed across batches and workers: `with seconds.timing("render"): ...`."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Iterator


class StageSeconds(Counter):
    @contextlib.contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self[stage] += time.perf_counter() - started
