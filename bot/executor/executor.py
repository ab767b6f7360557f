"""The inference executor: admission, per-model micro-batching and fair scheduling.

Everything here runs on the event loop and never blocks it: model work goes to the
backend (one accelerator thread), result encoding to a small CPU pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from bot.executor.backend import Backend, BatchRun, Outcome
from bot.executor.batcher import ModelQueue
from bot.executor.config import ClassLimits, ExecutorConfig
from bot.executor.errors import (
    Busy,
    ExecutionTimeout,
    JobCancelled,
    JobFailed,
    QueueTimeout,
    ShuttingDown,
    UnknownTask,
    WorkerCrashed,
)
from bot.executor.job import Job, JobEvent, JobHandle, JobState
from bot.executor.metrics import Metrics, MetricsSnapshot, ModelKey
from handlers.base import Task

log = logging.getLogger(__name__)


class Executor:
    """Shared by every front end; ``submit`` never waits, results arrive through handles."""

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        default_models: Mapping[str, str],
        backend: Backend,
        config: ExecutorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        missing = sorted(set(tasks) - set(default_models))
        if missing:
            raise ValueError(f"no default model configured for task(s): {', '.join(missing)}")
        self.tasks = dict(tasks)
        self.default_models = dict(default_models)
        self.backend = backend
        self.config = config or ExecutorConfig()
        self.metrics = Metrics()
        self._clock = clock
        self._queues: OrderedDict[ModelKey, ModelQueue] = OrderedDict()
        self._outstanding: dict[str, int] = {}
        self._outstanding_total = 0
        self._wakeup = asyncio.Event()
        self._cpu_pool = concurrent.futures.ThreadPoolExecutor(
            self.config.cpu_workers, thread_name_prefix="cpu-finish"
        )
        self._scheduler: asyncio.Task[None] | None = None
        self._running: BatchRun | None = None
        self._finishing: set[asyncio.Future[Any]] = set()
        self._stale_positions: set[ModelKey] = set()
        self._closing = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    async def __aenter__(self) -> Executor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        await self.backend.start()
        self._scheduler = asyncio.create_task(self._schedule(), name="executor-scheduler")

    async def preload(self, task: str, model: str | None = None) -> None:
        """Load a model before its first request (the admin's warm-up list)."""
        await self.backend.preload(self._task(task), model or self.default_models[task])

    def _task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(name, list(self.tasks)) from None

    def limits(self, task: Task[Any, Any]) -> ClassLimits:
        return self.config.limits[task.kind]

    # Admission

    def check(self, task: str, request: Any = None, *, user_id: str | int) -> Task[Any, Any]:
        """Raise what ``submit`` would refuse with, without queueing anything; without a
        request (one still to be read), only whether the user and the queue have room."""
        if self._closing:
            raise ShuttingDown
        handler = self._task(task)
        if request is not None:
            handler.validate(request)
        user = str(user_id)
        if self._outstanding.get(user, 0) >= self.config.max_per_user:
            self.metrics.record_refusal("user_limit")
            raise Busy("you already have jobs in progress", self._user_retry_after(user))
        if self._outstanding_total >= self.config.max_queue:
            self.metrics.record_refusal("queue_full")
            raise Busy("the bot is busy", self._queue_retry_after())
        return handler

    def submit(
        self, task: str, request: Any, *, user_id: str | int, model: str | None = None
    ) -> JobHandle:
        """Queue a job, or raise at once: ``InvalidInput``, ``Busy``, ``ShuttingDown``."""
        handler = self.check(task, request, user_id=user_id)
        user = str(user_id)
        model = model or handler.model_for(request, self.default_models[task])
        key = (task, model)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = ModelQueue(self.limits(handler))

        loop = asyncio.get_running_loop()
        now = self._clock()
        job = Job(
            task=handler,
            model=model,
            user_id=user,
            request=request,
            key=handler.batch_key(request),
            cost=handler.cost(request),
            enqueued_at=now,
            future=loop.create_future(),
        )
        self._outstanding[user] = self._outstanding.get(user, 0) + 1
        self._outstanding_total += 1
        queue.push(job, now)
        queue.active += 1
        job.future.add_done_callback(lambda _: self._release(job, queue))
        job.deadline = loop.call_later(queue.limits.queue_deadline_s, self._expire, job, queue)
        self._positions_changed(key)
        self._wakeup.set()
        return JobHandle(job, self._cancel)

    def _release(self, job: Job, queue: ModelQueue) -> None:
        if not job.future.cancelled():
            job.future.exception()  # mark retrieved: a caller may legitimately never await
        count = self._outstanding[job.user_id] - 1
        if count:
            self._outstanding[job.user_id] = count
        else:
            del self._outstanding[job.user_id]
        self._outstanding_total -= 1
        queue.active -= 1

    def _eta(self, key: ModelKey, queue: ModelQueue, position: int) -> float:
        batch_s = self.metrics.batch_seconds(key, queue.limits.default_batch_s)
        return (position // queue.limits.max_batch + 1) * batch_s

    def _user_retry_after(self, user: str) -> float:
        etas = [
            self._eta(key, queue, job.position or 0)
            for key, queue in self._queues.items()
            for job in queue.in_order()
            if job.user_id == user
        ]
        return max(1.0, min(etas, default=self._queue_retry_after()))

    def _queue_retry_after(self) -> float:
        waits = [
            self.metrics.batch_seconds(key, q.limits.default_batch_s)
            for key, q in self._queues.items()
            if q.active
        ]
        return max(1.0, min(waits, default=1.0))

    # Job endings

    def _finish(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        if job.future.done():
            return
        if job.deadline is not None:
            job.deadline.cancel()
        job.abandoned = error is not None
        job.error = error
        job.finished_at = self._clock()
        if error is None:
            job.state = JobState.DONE
            job.future.set_result(result)
        else:
            job.state = JobState.CANCELLED if isinstance(error, JobCancelled) else JobState.FAILED
            job.future.set_exception(error)
        self.metrics.record_outcome(job.queue_key, job.state.value)
        job.emit(JobEvent(job.state, error=error))

    def _expire(self, job: Job, queue: ModelQueue) -> None:
        if job.state is JobState.QUEUED and queue.remove(job):
            self._finish(job, error=QueueTimeout(self._clock() - job.enqueued_at))
            self._positions_changed(job.queue_key)

    def _cancel(self, job: Job, reason: str) -> bool:
        if job.future.done():
            return False
        if job.state is JobState.QUEUED:
            queue = self._queues[job.queue_key]
            queue.remove(job)
            self._finish(job, error=JobCancelled(reason))
            self._positions_changed(job.queue_key)
        else:
            self._finish(job, error=JobCancelled(reason))  # the batch stops once all are abandoned
        return True

    def _positions_changed(self, key: ModelKey) -> None:
        """Recompute positions once per loop turn, however many jobs a burst adds."""
        if not self._stale_positions:
            asyncio.get_running_loop().call_soon(self._refresh_positions)
        self._stale_positions.add(key)

    def _refresh_positions(self) -> None:
        for key in self._stale_positions:
            queue = self._queues[key]
            for position, job in enumerate(queue.in_order()):
                if job.position != position:
                    job.position = position
                    job.eta_s = self._eta(key, queue, position)
                    if job.listening:
                        job.emit(JobEvent(JobState.QUEUED, position, job.eta_s))
        self._stale_positions.clear()

    # Scheduling

    def _next_ready(self) -> tuple[ModelKey, ModelQueue] | None:
        now = self._clock()
        for key, queue in self._queues.items():
            if queue.is_ready(now):
                self._queues.move_to_end(key)  # interleave models: this one goes last
                return key, queue
        return None

    def _seconds_to_next_ready(self) -> float | None:
        waiting = [q.ready_at for q in self._queues.values() if len(q)]
        return max(0.0, min(waiting) - self._clock()) if waiting else None

    async def _schedule(self) -> None:
        while True:
            picked = self._next_ready()
            if picked is None:
                self._wakeup.clear()
                timeout = self._seconds_to_next_ready()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                continue
            key, queue = picked
            jobs = queue.take_batch(self._clock())
            self._positions_changed(key)
            await self._run_batch(key, queue, jobs)

    async def _run_batch(self, key: ModelKey, queue: ModelQueue, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        started = self._clock()
        for job in jobs:
            if job.deadline is not None:
                job.deadline.cancel()
            job.state = JobState.RUNNING
            job.started_at = started
            job.batch_size = len(jobs)
            job.position = job.eta_s = None
            self.metrics.record_wait(key, started - job.enqueued_at)
            job.emit(JobEvent(JobState.RUNNING))
        batch = BatchRun(jobs[0].task, key[1], jobs, loop)
        self._running = batch
        limit = queue.limits.exec_timeout_s
        timer = loop.call_later(limit, self._timeout_batch, batch, limit)
        try:
            outcomes = await self.backend.run(batch)
        except Exception as exc:  # the backend itself failed (e.g. the worker crashed)
            log.error("backend failed on a %s batch: %s", key[0], exc)
            outcomes = [exc if isinstance(exc, WorkerCrashed) else JobFailed(exc)] * len(jobs)
        finally:
            timer.cancel()
            self._running = None
        self.metrics.record_batch(key, len(jobs), self._clock() - started)
        plain = type(batch.task).finish is Task.finish
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._finish(job, error=outcome)
            elif plain:
                self._finish(job, outcome)
            elif not job.future.done():
                self._finish_in_pool(job, outcome)

    def _finish_in_pool(self, job: Job, outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._cpu_pool, job.task.finish, outcome)
        self._finishing.add(pending)

        def done(future: asyncio.Future[Any]) -> None:
            self._finishing.discard(future)
            if future.cancelled():
                self._finish(job, error=JobCancelled("the bot is shutting down"))
            elif (exc := future.exception()) is not None:
                log.error("%s failed to encode its result", job.task.name, exc_info=exc)
                self._finish(job, error=JobFailed(exc))
            else:
                self._finish(job, future.result())

        pending.add_done_callback(done)

    def _timeout_batch(self, batch: BatchRun, limit: float) -> None:
        log.warning("a %s batch ran past its %.0fs limit; stopping it", batch.task.name, limit)
        for job in batch.jobs:
            self._finish(job, error=ExecutionTimeout(limit))

    # Introspection and shutdown

    def snapshot(self) -> MetricsSnapshot:
        keys = list(dict.fromkeys([*self._queues, *self.metrics.known_keys()]))
        return MetricsSnapshot(
            outstanding=self._outstanding_total,
            queued=sum(len(q) for q in self._queues.values()),
            models=[
                self.metrics.model_stats(k, len(self._queues[k]) if k in self._queues else 0)
                for k in keys
            ],
            loaded=self.backend.loaded_models(),
            refused=dict(self.metrics.refused),
        )

    async def shutdown(self, timeout: float | None = None, *, now: bool = False) -> None:
        """Stop admitting, cancel queued jobs, let running work finish, release the accelerator.

        ``now`` stops running work at once, also in a shutdown already under way (a second
        Ctrl-C). Every caller waits for the one shutdown; cancelling a caller leaves it
        running, so a later caller never waits on a shutdown that was abandoned halfway.
        """
        self._closing = True
        if now:
            self._hurry.set()
        if self._shutdown_task is None:
            timeout = self.config.shutdown_timeout_s if timeout is None else timeout
            self._shutdown_task = asyncio.create_task(self._shut_down(timeout), name="shutdown")
        await asyncio.shield(self._shutdown_task)

    async def _shut_down(self, timeout: float) -> None:
        deadline = self._clock() + timeout
        for queue in self._queues.values():
            for job in list(queue.in_order()):
                queue.remove(job)
                self._finish(job, error=JobCancelled("the bot is shutting down"))
        if self._running is not None or self._finishing:
            waiting = {*self._finishing}
            if self._running is not None:
                waiting.update(job.future for job in self._running.jobs)
            late = await self._wait_unless_hurried(waiting, timeout)
            if late:
                log.warning("%d job(s) still running at shutdown; stopping them", len(late))
                for job in self._running.jobs if self._running else []:
                    self._finish(job, error=JobCancelled("stopped: the bot is shutting down"))
                for future in self._finishing:
                    future.cancel()
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        await self.backend.close(max(1.0, deadline - self._clock()))
        self._cpu_pool.shutdown(wait=False, cancel_futures=True)

    async def _wait_unless_hurried(
        self, waiting: set[asyncio.Future[Any]], timeout: float
    ) -> set[asyncio.Future[Any]]:
        """What is still pending after ``timeout``, or as soon as ``now`` is asked for."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        hurry = asyncio.ensure_future(self._hurry.wait())
        pending = set(waiting)
        try:
            while pending and not hurry.done() and (left := end - loop.time()) > 0:
                done, _ = await asyncio.wait(
                    [*pending, hurry], timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
        finally:
            hurry.cancel()
        return {f for f in waiting if not f.done()}
