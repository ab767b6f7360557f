"""The seam between the engine and whatever runs models: a thread (tests), a worker process
per device (the default), or a Ray Serve deployment per task (``bot.executor.ray_backend``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
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
        self.on_abandon: Callable[[], None] | None = None
        """Set by a backend that must pass cancellations on (to another process)."""

    def abandoned_changed(self) -> None:
        """A job of the batch was abandoned (on the event loop)."""
        if self.on_abandon is not None:
            self.on_abandon()

    @property
    def requests(self) -> list[Any]:
        return [job.request for job in self.jobs]

    def __len__(self) -> int:
        return len(self.jobs)

    def abandoned(self, index: int) -> bool:
        return self.jobs[index].abandoned

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
        self._loop.call_soon_threadsafe(self.jobs[index].stream, data)


Outcome = Any
"""A raw output or a result for one request, or the exception that ended it."""


class Backend(Protocol):
    """Runs batches on one device (or one task's deployment); the engine awaits at most
    ``capacity()`` runs at a time per backend."""

    async def start(self) -> None:
        """Get the worker ready (again, after it was replaced); cheap when it is."""
        ...

    async def run(self, batch: BatchRun) -> list[Outcome | asyncio.Future[Any]]:
        """One outcome per job, in order, once the device is done with the batch: the
        job's result, the error that ended it, or a future of the result while it is
        encoded. Never raises for a single job's failure."""
        ...

    def capacity(self) -> int:
        """Batches it runs at once: 1 for a device; a deployment's replicas (times the
        requests each takes). Read before every choice of a batch, so it may change."""
        ...

    def watch_capacity(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` (on the event loop) whenever ``capacity()`` changes on its own,
        e.g. a replica started: batches waiting for room start then, not at the next
        submission or batch end."""
        ...

    async def abort(self, batch: BatchRun) -> None:
        """Give up on ``batch``, which ignored every request to stop: replace the worker
        that runs it."""
        ...

    async def preload(self, task: Task[Any, Any], model: str) -> None: ...

    def loaded_models(self) -> list[LoadedModelInfo]: ...

    def device_memory(self) -> dict[str, tuple[int, int]]:
        """(allocated, reserved) bytes per CUDA device the backend uses."""
        ...

    async def close(self, timeout: float) -> None:
        """Stop, releasing every model and the accelerator's memory."""
        ...
