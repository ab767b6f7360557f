"""Shared helpers for handler tests: a recording batch context and model loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from handlers.base import LoadSpec, Task


class RecordingContext:
    """A ``BatchContext`` that records what a handler reports and can ask it to stop."""

    def __init__(self, stop_after_checks: int | None = None) -> None:
        self.steps: list[tuple[int, int]] = []
        self.partials: dict[int, list[Any]] = {}
        self.checks = 0
        self.stop_after_checks = stop_after_checks

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_after_checks is not None and self.checks > self.stop_after_checks

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))

    def partial(self, index: int, data: Any) -> None:
        self.partials.setdefault(index, []).append(data)

    def abandoned(self, index: int) -> bool:
        return False


def load(task: Task[Any, Any], directory: Path) -> Any:
    return task.load(LoadSpec(str(directory), "cpu", torch.float32))


def one_at_a_time(task: Task[Any, Any], model: Any, requests: list[Any]) -> list[Any]:
    return [task.run_batch(model, [r], RecordingContext())[0] for r in requests]
