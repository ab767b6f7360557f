"""A submitted job, and the handle callers use to follow, cancel and await it."""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Generator, Hashable
from dataclasses import dataclass, field
from typing import Any

from handlers.base import Task, TaskKind

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobEvent:
    """One change in a job's life; ``position`` 0 means next to run."""

    state: JobState
    position: int | None = None
    eta_s: float | None = None
    step: int | None = None
    total: int | None = None
    partial: Any = None
    error: BaseException | None = None


_job_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """Executor-internal record of one request; only the event loop thread mutates it."""

    task: Task[Any, Any]
    model: str
    user_id: str
    request: Any
    key: Hashable
    cost: int
    enqueued_at: float
    future: asyncio.Future[Any]
    work: float = 1.0
    """Relative compute, to split its batch's GPU time between the jobs in it."""
    report: Callable[[Job, BaseException], None] | None = None
    """Told when one of the job's listeners raises; the others still hear the event."""
    id: int = field(default_factory=lambda: next(_job_ids))
    state: JobState = JobState.QUEUED
    position: int | None = None
    """Jobs ahead in the model's queue; set by the executor within the loop turn of submit."""
    eta_s: float | None = None
    error: BaseException | None = None
    started_at: float | None = None
    finished_at: float | None = None
    batch_size: int | None = None
    gpu_s: float | None = None
    """Its share of its batch's device time, once the batch is done."""
    abandoned: bool = False
    """Set when nobody awaits the result any more (cancelled, timed out); read by the worker."""
    on_abandon: Callable[[], None] | None = None
    """Set by the batch it runs in, once it runs: told when the job is abandoned."""
    deadline: asyncio.TimerHandle | None = None
    streamed: Any = None
    """The last partial output its listeners were sent."""
    _listeners: list[Callable[[JobEvent], None]] = field(default_factory=list)

    @property
    def kind(self) -> TaskKind:
        return self.task.kind

    @property
    def queue_key(self) -> tuple[str, str]:
        return (self.task.name, self.model)

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    def abandon(self) -> None:
        """Nobody wants the result any more: a batch stops once all its jobs are abandoned."""
        self.abandoned = True
        if self.on_abandon is not None:
            self.on_abandon()

    def emit(self, event: JobEvent) -> None:
        """Tell every listener; one that raises is reported, never stops the others."""
        for listener in list(self._listeners):
            self._tell(listener, event)
        if event.state.final:
            self._listeners.clear()

    def stream(self, partial: Any) -> None:
        """Send a partial output on; text a retried batch produces again, which the member
        has already seen, is not sent twice."""
        seen = self.streamed
        if isinstance(partial, str) and isinstance(seen, str) and seen.startswith(partial):
            return
        self.streamed = partial
        self.emit(JobEvent(JobState.RUNNING, partial=partial))

    def _tell(self, listener: Callable[[JobEvent], None], event: JobEvent) -> None:
        try:
            listener(event)
        except Exception as exc:
            if self.report is None:
                log.exception("a listener of job %d failed", self.id)
            else:
                self.report(self, exc)

    def watch(self, callback: Callable[[JobEvent], None]) -> None:
        """Call ``callback`` with the current state now and with every later event."""
        self._tell(callback, JobEvent(self.state, self.position, self.eta_s, error=self.error))
        if not self.state.final:
            self._listeners.append(callback)

    def subscribe(self) -> asyncio.Queue[JobEvent]:
        """A queue that starts with the job's current state and receives every later event."""
        listener: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.watch(listener.put_nowait)
        return listener


class JobHandle:
    """What ``Executor.submit`` returns: await it for the result, or follow its events."""

    def __init__(self, job: Job, cancel: Callable[[Job, str], bool]) -> None:
        self._job = job
        self._cancel = cancel

    @property
    def id(self) -> int:
        return self._job.id

    @property
    def task(self) -> str:
        return self._job.task.name

    @property
    def model(self) -> str:
        return self._job.model

    @property
    def user_id(self) -> str:
        return self._job.user_id

    @property
    def state(self) -> JobState:
        return self._job.state

    @property
    def position(self) -> int | None:
        """Jobs ahead of this one in its model's queue; None once it runs."""
        return self._job.position if self._job.state is JobState.QUEUED else None

    def done(self) -> bool:
        return self._job.future.done()

    @property
    def wait_s(self) -> float | None:
        """Time from admission to the start of its batch (None if it never ran)."""
        job = self._job
        return None if job.started_at is None else job.started_at - job.enqueued_at

    @property
    def run_s(self) -> float | None:
        """Time from the start of its batch to its end (None until both happened)."""
        job = self._job
        if job.started_at is None or job.finished_at is None:
            return None
        return job.finished_at - job.started_at

    @property
    def batch_size(self) -> int | None:
        return self._job.batch_size

    @property
    def gpu_s(self) -> float | None:
        """Its share of its batch's device time (None if it never reached the device)."""
        return self._job.gpu_s

    @property
    def error(self) -> BaseException | None:
        """Why the job ended without a result, once it has ended."""
        return self._job.error

    def peek_result(self) -> Any:
        """The result of a job that has ended well, without awaiting."""
        return self._job.future.result()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop once the job has ended, however it ended."""
        self._job.future.add_done_callback(lambda _: callback())

    def cancel(self, reason: str = "cancelled by the requester") -> bool:
        """Drop a queued job or ask a running one to stop; False if it already ended."""
        return self._cancel(self._job, reason)

    async def result(self) -> Any:
        return await asyncio.shield(self._job.future)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    def watch(self, callback: Callable[[JobEvent], None]) -> None:
        """Call ``callback`` on the event loop with the current state and every later event,
        for front ends that react to events instead of awaiting them."""
        self._job.watch(callback)

    async def events(self) -> AsyncIterator[JobEvent]:
        """The current state, then every change, ending with the final one."""
        listener = self._job.subscribe()
        while True:
            event = await listener.get()
            yield event
            if event.state.final:
                return
