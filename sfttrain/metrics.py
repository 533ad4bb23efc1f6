"""What a run reports: one JSON line per logged step in out/metrics.jsonl; on a terminal a progress bar,
in a file (nohup, Slurm, CI) one plain line per logged step; TensorBoard event files when asked for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

TENSORBOARD_DIR = "tensorboard"


def step_line(record: dict, total_steps: int) -> str:
    """A logged step in one line a person reads: what metrics.jsonl holds, less the bookkeeping."""
    loss = f"{record['loss']:.4f}" if record["loss"] is not None else "-"
    grad = f"{record['grad_norm']:.3f}" if record["grad_norm"] is not None else "-"
    parts = [f"step {record['step']}/{total_steps}", f"loss {loss}", f"lr {record['lr']:.2e}",
             f"tok/s {record['tokens_per_s']:,.0f}", f"tgt/s {record['target_tokens_per_s']:,.0f}",
             f"grad_norm {grad}"]
    if record.get("loss_by_input"):
        parts.append("by input " + ", ".join(f"{name} {value:.4f}" for name, value in _known(record["loss_by_input"])))
    if "eval_loss" in record:
        parts.append(f"eval_loss {record['eval_loss']:.4f}")
        if record.get("eval_loss_by_input"):
            parts.append("eval by input " + ", ".join(f"{name} {value:.4f}"
                                                      for name, value in _known(record["eval_loss_by_input"])))
    return "  ".join(parts)


def _known(by_input: dict) -> list[tuple[str, float]]:
    return [(name, value) for name, value in by_input.items() if value is not None]


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a record as TensorBoard tags: train/loss, train/loss/<input>, eval/loss, ..."""
    out = {f"train/{key}": record[key] for key in ("loss", "lr", "grad_norm", "tokens_per_s", "target_tokens_per_s")
           if record.get(key) is not None}
    for prefix, key in (("train", "loss_by_input"), ("eval", "eval_loss_by_input")):
        out.update({f"{prefix}/loss/{name}": value for name, value in _known(record.get(key) or {})})
    if "eval_loss" in record:
        out["eval/loss"] = record["eval_loss"]
    return out


class MetricsLog:
    """Only rank 0 writes; the others hold a disabled log so the loop needs no rank checks."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, progress: bool,
                 tensorboard: bool = False):
        self.enabled, self.total_steps = enabled, total_steps
        self.console = Console(stderr=True)
        self._file = self._tensorboard = self._bar = None
        if not enabled:
            return
        path = Path(run_dir) / "metrics.jsonl"
        if path.exists():  # resuming: drop steps logged after the checkpoint, they are about to run again
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run, closed in close())
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=start_step + 1)
        if progress and self.console.is_terminal and sys.stdout.isatty():
            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(), console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, stats="")
            self._bar.start()

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def step(self, record: dict, write: bool) -> None:
        if not self.enabled:
            return
        if write or record.get("skipped"):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if self._tensorboard is not None:
                for tag, value in scalars(record).items():
                    self._tensorboard.add_scalar(tag, value, record["step"])
        if record.get("skipped"):
            self.print(f"step {record['step']}: no target tokens in this step on any rank; optimizer step skipped")
        if self._bar is not None:
            line = step_line(record, self.total_steps).split("  ", 1)[1]  # the bar shows the step itself
            self._bar.update(self._task, completed=record["step"], stats=line)
        elif write:
            self.print(step_line(record, self.total_steps))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
