"""The seam between the scheduler and whatever runs models (a local thread today, Ray later)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.executor.job import Job, JobEvent, JobState
from handlers.base import Task


@dataclass(frozen=True)
class LoadedModelInfo:
    task: str
    model: str
    device: str
    dtype: str
    bytes: int
    last_used: float


class BatchRun:
    """One batch handed to a backend; its context methods are safe from any thread."""

    def __init__(
        self,
        task: Task[Any, Any],
        model: str,
        jobs: Sequence[Job],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.task = task
        self.model = model
        self.jobs = list(jobs)
        self._loop = loop

    @property
    def requests(self) -> list[Any]:
        return [job.request for job in self.jobs]

    def __len__(self) -> int:
        return len(self.jobs)

    def subset(self, indices: Sequence[int]) -> BatchRun:
        """A view over some of the jobs, for running part of a batch on its own."""
        return BatchRun(self.task, self.model, [self.jobs[i] for i in indices], self._loop)

    def should_stop(self) -> bool:
        return all(job.abandoned for job in self.jobs)

    def progress(self, step: int, total: int) -> None:
        event = JobEvent(JobState.RUNNING, step=step, total=total)
        for job in self.jobs:
            self._loop.call_soon_threadsafe(job.emit, event)

    def partial(self, index: int, data: Any) -> None:
        event = JobEvent(JobState.RUNNING, partial=data)
        self._loop.call_soon_threadsafe(self.jobs[index].emit, event)


Outcome = Any
"""A raw output for one request, or the exception that ended it."""


class Backend(Protocol):
    """Runs batches; the executor awaits one ``run`` at a time per backend slot."""

    async def start(self) -> None: ...

    async def run(self, batch: BatchRun) -> list[Outcome]:
        """One outcome per job, in order; never raises for a single job's failure."""
        ...

    async def preload(self, task: Task[Any, Any], model: str) -> None: ...

    def loaded_models(self) -> list[LoadedModelInfo]: ...

    async def close(self, timeout: float) -> None:
        """Stop, releasing every model and the accelerator's memory."""
        ...
