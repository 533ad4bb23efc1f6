"""What a run reports: one JSON line per logged step in out/metrics.jsonl, and a rich progress bar."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsLog:
    """Only rank 0 writes; the others hold a disabled log so the loop needs no rank checks."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, progress: bool):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._file = None
        if enabled:
            path = Path(run_dir) / "metrics.jsonl"
            if path.exists():  # resuming: drop steps logged after the checkpoint, they are about to run again
                kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                        if line.strip() and json.loads(line)["step"] <= start_step]
                path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run, closed in close())
        self._bar = None
        if enabled and progress:
            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(), console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, stats="")
            self._bar.start()

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, markup=False)

    def step(self, record: dict, write: bool) -> None:
        if not self.enabled:
            return
        if write or record.get("skipped"):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if record.get("skipped"):
            self.print(f"step {record['step']}: no target tokens in this step on any rank; optimizer step skipped")
        stats = (
            f"loss {record['loss']:.4f}  " if record["loss"] is not None else "loss -  "
        ) + f"lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s  {record['target_tokens_per_s']:,.0f} tgt/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=record["step"], stats=stats)
        elif write:
            self.print(f"step {record['step']}: {stats}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._file is not None:
            self._file.close()
