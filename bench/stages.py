"""What the handler benchmarks share: timing a handler's stages on its inference thread,
and reading the executor's batch sizes (bench/transcribe.py, bench/describe.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from bot.executor import Executor


def sync(device: str) -> None:
    """Wait for the GPU's queued work, so that a stage's time is its own."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Stages:
    """Seconds spent in each part of ``run_batch`` and the shape of each ``generate`` call:
    written on the inference thread, read between runs."""

    seconds: Counter[str] = field(default_factory=Counter)
    generate_calls: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def timing(self, stage: str, device: str = "cpu") -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            sync(device)
            self.add(stage, time.perf_counter() - started)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.seconds[stage] += seconds

    def take(self) -> tuple[Counter[str], list[Any]]:
        with self.lock:
            taken = self.seconds, self.generate_calls
            self.seconds, self.generate_calls = Counter(), []
        return taken


class Timed:
    """A callable whose calls are timed; its other attributes pass through."""

    def __init__(self, inner: Any, stages: Stages, stage: str) -> None:
        self._inner, self._stages, self._stage = inner, stages, stage

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._stages.timing(self._stage):
            return self._inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def batch_sizes(executor: Executor, task: str) -> Counter[int]:
    """How many jobs each of ``task``'s batches held so far."""
    stats = {m.task: m for m in executor.snapshot().models}.get(task)
    return Counter(stats.batch_sizes) if stats else Counter()
