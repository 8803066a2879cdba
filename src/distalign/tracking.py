"""Metric logging: the accelerate tracker (TensorBoard by default) plus a JSONL file that the
report and offline tools read, and process-level peak memory."""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch


def peak_memory_gb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """``write(step, metrics)`` -> the tracker and one JSON line in ``path`` (main process)."""

    def __init__(self, path: str | Path, accelerator=None):
        self.path = Path(path)
        self.accelerator = accelerator
        self.main = accelerator is None or accelerator.is_main_process
        if self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        metrics = {k: _plain(v) for k, v in metrics.items()}
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(
                {k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step
            )
        if self.main:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
