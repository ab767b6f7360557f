"""The inference executor: a supervised engine that drives the pure ``Scheduler``.

Everything here runs on the event loop and never blocks it. The scheduler decides (who is
admitted, which batch runs next, on which device); the engine acts: it hands batches to
the backends (one per device), enforces deadlines, reports progress, and delivers results.
It isolates every callback it makes, restarts its own loop after an unexpected error, and
says how it is in ``health()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.executor.backend import Backend, BatchRun, Outcome
from bot.executor.config import ClassLimits, ExecutorConfig
from bot.executor.errors import (
    BackendUnavailable,
    Busy,
    ExecutionTimeout,
    ExecutorError,
    JobCancelled,
    JobFailed,
    QueueTimeout,
    ShuttingDown,
    UnknownTask,
    WorkerCrashed,
)
from bot.executor.job import Job, JobEvent, JobHandle, JobState
from bot.executor.metrics import Metrics, MetricsSnapshot, ModelKey
from bot.executor.registry import ModelRegistry
from bot.executor.scheduler import Batch, Scheduler
from bot.executor.worker import LocalBackend
from handlers.base import Task
from handlers.kinds import TaskKind

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.0, 0.01, 0.1, 1.0)
"""Pauses before the engine's loop restarts after consecutive failures."""
RECOVERED_AFTER_S = 60.0
"""A failure this long after the previous one counts as the first again."""


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a job's error as seen: a caller may rightly never await its handle."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class EngineHealth:
    alive: bool
    """The engine's loop is running (or restarting after an error)."""
    restarts: int
    """How often the loop failed and was restarted since the start."""
    oldest_batch_s: float | None
    """How long the longest-running batch has been on its device."""
    stuck: bool
    """A batch has run past its execution limit and the grace to stop it."""

    @property
    def ok(self) -> bool:
        return self.alive and not self.stuck


class Executor:
    """Shared by every front end; ``submit`` never waits, results arrive through handles."""

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        default_models: Mapping[str, str],
        backend: Backend | Sequence[Backend] | Mapping[str, Backend],
        config: ExecutorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``backend``: one per device, whose models are placed on the one with the fewest;
        or one per task (``{task: backend}``: a Ray Serve deployment each, or a worker
        process per class of task, the same backend named for each task of its class)."""
        missing = sorted(set(tasks) - set(default_models))
        if missing:
            raise ValueError(f"no default model configured for task(s): {', '.join(missing)}")
        self.tasks = dict(tasks)
        self.default_models = dict(default_models)
        own: dict[str, int] = {}
        if isinstance(backend, Mapping):
            unserved = sorted(n for n, t in self.tasks.items() if not t.remote and n not in backend)
            if unserved:
                raise ValueError(f"no backend for task(s): {', '.join(unserved)}")
            self.backends: list[Backend] = []
            for each in backend.values():  # one slot per backend, however many tasks it serves
                if not any(each is known for known in self.backends):
                    self.backends.append(each)
            own = {
                name: next(i for i, known in enumerate(self.backends) if known is each)
                for name, each in backend.items()
            }
        else:
            self.backends = list(backend) if isinstance(backend, Sequence) else [backend]
        devices = len(self.backends)
        if any(task.remote for task in self.tasks.values()):
            # Tasks answered by another server get a thread of their own: their requests
            # never wait behind a batch on a device.
            self.backends.append(LocalBackend(ModelRegistry("cpu")))
        self._wakeup = asyncio.Event()
        for each in self.backends:
            each.watch_capacity(self._wakeup.set)
        self.config = config or ExecutorConfig()
        self.metrics = Metrics()
        self._clock = clock
        self.scheduler: Scheduler[Job] = Scheduler(
            self.config.max_queue,
            self.config.max_per_user,
            limits_of=lambda key: self.limits(self.tasks[key[0]]),
            padded_of=lambda key: self.tasks[key[0]].kind is not TaskKind.IMAGE,
            cap_of=lambda key: self.tasks[key[0]].running_cap(),
            pinned_of=lambda key: devices if self.tasks[key[0]].remote else own.get(key[0]),
            capacity_of=lambda slot: self.backends[slot].capacity(),
            slots=devices,
            half_life_s=self.config.fair_half_life_s,
            starvation_s=self.config.starvation_s,
        )
        self._engine: asyncio.Task[None] | None = None
        self._runners: dict[Batch[Job], asyncio.Task[None]] = {}
        """The task following each running batch."""
        self._on_device_since: dict[Batch[Job], float] = {}
        """When each running batch reached its device (after any worker start)."""
        self._finishing: set[asyncio.Future[Any]] = set()
        self._stale_positions: set[ModelKey] = set()
        self._restarts = 0
        self._closing = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    @property
    def backend(self) -> Backend:
        """The first device's backend (the only one on a one-device machine)."""
        return self.backends[0]

    async def __aenter__(self) -> Executor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Start every backend at once (a worker per device, a deployment per task)."""
        started = await asyncio.gather(
            *(backend.start() for backend in self.backends), return_exceptions=True
        )
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        self._engine = asyncio.create_task(self._supervise(), name="executor-engine")

    async def preload(self, task: str, model: str | None = None) -> None:
        """Load a model before its first request (the admin's warm-up list), on the device
        its requests will run on."""
        model = model or self.default_models[task]
        slot = self.scheduler.place((task, model))
        await self.backends[slot].preload(self._task(task), model)

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
        try:
            self.scheduler.check(str(user_id), self._clock())
        except Busy as busy:
            self.metrics.record_refusal(busy.kind)
            raise
        return handler

    def submit(
        self, task: str, request: Any, *, user_id: str | int, model: str | None = None
    ) -> JobHandle:
        """Queue a job, or raise at once: ``InvalidInput``, ``Busy``, ``ShuttingDown``."""
        handler = self.check(task, request, user_id=user_id)
        model = model or handler.model_for(request, self.default_models[task])
        loop = asyncio.get_running_loop()
        now = self._clock()
        job = Job(
            task=handler,
            model=model,
            user_id=str(user_id),
            request=request,
            key=handler.batch_key(request),
            cost=handler.cost(request),
            work=handler.work(request),
            enqueued_at=now,
            future=loop.create_future(),
            report=self._listener_failed,
        )
        self.scheduler.add(job, now)
        job.future.add_done_callback(_retrieved)
        limit = self.limits(handler).queue_deadline_s
        job.deadline = loop.call_later(limit, self._expire, job)
        self._positions_changed(job.queue_key)
        self._wakeup.set()
        return JobHandle(job, self._cancel)

    # Job endings

    def _finish(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        if job.future.done():
            return
        if job.deadline is not None:
            job.deadline.cancel()
        job.error = error
        job.finished_at = self._clock()
        if error is None:
            job.state = JobState.DONE
            job.future.set_result(result)
        else:
            job.state = JobState.CANCELLED if isinstance(error, JobCancelled) else JobState.FAILED
            job.future.set_exception(error)
            job.abandon()
        self.metrics.record_outcome(job.queue_key, job.state.value)
        if job.state is JobState.FAILED:
            kind = getattr(error, "kind", None)
            self.metrics.record_failure(
                job.queue_key, kind if isinstance(kind, str) else type(error).__name__
            )
        job.emit(JobEvent(job.state, error=error))

    def _expire(self, job: Job) -> None:
        if job.state is JobState.QUEUED and self.scheduler.remove(job):
            self._finish(job, error=QueueTimeout(self._clock() - job.enqueued_at))
            self._positions_changed(job.queue_key)

    def _cancel(self, job: Job, reason: str) -> bool:
        if job.future.done():
            return False
        if job.state is JobState.QUEUED and self.scheduler.remove(job):
            self._positions_changed(job.queue_key)
        # A running job's place stays taken until its batch leaves the device.
        self._finish(job, error=JobCancelled(reason))
        return True

    def _listener_failed(self, job: Job, error: BaseException) -> None:
        self.metrics.record_callback_error("listener")
        log.error("a listener of job %d (%s) failed", job.id, job.task.name, exc_info=error)

    def _positions_changed(self, key: ModelKey) -> None:
        """Recompute positions once per loop turn, however many jobs a burst adds."""
        if not self._stale_positions:
            asyncio.get_running_loop().call_soon(self._refresh_positions)
        self._stale_positions.add(key)

    def _refresh_positions(self) -> None:
        keys, self._stale_positions = self._stale_positions, set()
        now = self._clock()
        for key in keys:
            try:
                for position, job in enumerate(self.scheduler.order(key, now)):
                    if job.position != position:
                        job.position = position
                        job.eta_s = self.scheduler.eta(key, position)
                        if job.listening:
                            job.emit(JobEvent(JobState.QUEUED, position, job.eta_s))
            except Exception:  # a bug here must not freeze every later position
                self.metrics.record_callback_error("positions")
                log.exception("could not update the queue positions of %s", key[0])

    # The engine

    async def _supervise(self) -> None:
        """Run the engine's loop; after an unexpected error, answer what it left hanging and
        run it again (pausing longer while it keeps failing)."""
        failures, last_failure = 0, -float("inf")
        while True:
            try:
                await self._dispatch_forever()
            except Exception:
                self._restarts += 1
                self.metrics.record_callback_error("engine")
                log.exception("the executor's engine failed; restarting it")
                self._recover()
                now = self._clock()
                failures = failures + 1 if now - last_failure < RECOVERED_AFTER_S else 0
                last_failure = now
                await asyncio.sleep(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)])
            else:
                return

    async def _dispatch_forever(self) -> None:
        while True:
            now = self._clock()
            batch = self.scheduler.schedule(now)
            if batch is None:
                self._wakeup.clear()
                timeout = self.scheduler.next_ready_in(now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                continue
            self._runners[batch] = asyncio.create_task(
                self._follow_batch(batch), name=f"batch-{batch.queue_key[0]}"
            )

    def _recover(self) -> None:
        """A batch the scheduler counts as running with no task following it would hold its
        device and its members' places for good: fail its jobs and free them."""
        for batch in self.scheduler.running():
            runner = self._runners.get(batch)
            if runner is None or runner.done():
                for job in batch.jobs:
                    self._finish(job, error=JobFailed(RuntimeError("the engine restarted")))
                self.scheduler.finish(batch, self._clock())
        self._wakeup.set()

    async def _follow_batch(self, batch: Batch[Job]) -> None:
        """Run one batch to its end; whatever happens, every job is answered and the device
        and the members' places are freed."""
        try:
            await self._run_batch(batch)
        except asyncio.CancelledError:  # a shutdown that could not wait any longer
            for job in batch.jobs:
                self._finish(job, error=JobCancelled("stopped: the bot is shutting down"))
            raise
        except Exception as exc:
            self.metrics.record_callback_error("batch")
            log.exception("the executor failed while running a %s batch", batch.queue_key[0])
            for job in batch.jobs:
                self._finish(job, error=JobFailed(exc))
        finally:
            if batch in self.scheduler.running():
                self.scheduler.finish(batch, self._clock())
            if self._runners.get(batch) is asyncio.current_task():
                del self._runners[batch]
            self._wakeup.set()

    async def _run_batch(self, batch: Batch[Job]) -> None:
        key = batch.queue_key
        task = self.tasks[key[0]]
        started = self._clock()
        run = BatchRun(task, key[1], batch.jobs, asyncio.get_running_loop())
        for job in batch.jobs:
            job.on_abandon = run.abandoned_changed
            if job.future.done():  # cancelled since the batch was chosen: the device skips it
                continue
            if job.deadline is not None:
                job.deadline.cancel()
            job.state = JobState.RUNNING
            job.started_at = started
            job.batch_size = len(batch.jobs)
            job.position = job.eta_s = None
            self.metrics.record_wait(key, started - job.enqueued_at)
            job.emit(JobEvent(JobState.RUNNING))
        self._positions_changed(key)
        limit = self.limits(task).exec_timeout_s
        outcomes = await self._on_device(batch, run, limit)
        seconds = self._clock() - started
        # With continuous batching, an answer still to come means the job runs on as a row
        # of the running batch, after its batch left the device.
        rows = (
            {i for i, o in enumerate(outcomes) if isinstance(o, asyncio.Future)}
            if task.running_cap() is not None
            else set()
        )
        shares = self.scheduler.finish(batch, self._clock(), rows)  # the device is free
        for job, share in zip(batch.jobs, shares, strict=True):
            job.gpu_s = share
        self._wakeup.set()
        self.metrics.record_batch(key, len(batch.jobs), seconds)
        for index, (job, outcome) in enumerate(zip(batch.jobs, outcomes, strict=True)):
            if index in rows:
                self._run_on_as_row(job, outcome, started + limit)
            elif isinstance(outcome, asyncio.Future):
                self._finish_when_encoded(job, outcome)
            elif isinstance(outcome, BaseException):
                self._finish(job, error=outcome)
            else:
                self._finish(job, outcome)

    def _run_on_as_row(self, job: Job, answer: asyncio.Future[Any], deadline: float) -> None:
        """A job generating as a row of a continuous batch: it keeps its place until it
        ends, however it ends, and its execution limit still holds (a cancellation or
        timeout reaches the device through the job's batch, which drops the row)."""

        def release(_: asyncio.Future[Any]) -> None:
            share = self.scheduler.release(job, self._clock())
            if not job.task.remote:  # another server's time is not ours
                job.gpu_s = (job.gpu_s or 0.0) + share
            self._wakeup.set()

        job.future.add_done_callback(release)
        if not job.future.done():
            limit = self.limits(job.task).exec_timeout_s
            job.deadline = asyncio.get_running_loop().call_later(
                max(0.0, deadline - self._clock()),
                lambda: self._finish(job, error=ExecutionTimeout(limit)),
            )
        self._finish_when_encoded(job, answer)

    async def _on_device(
        self, batch: Batch[Job], run: BatchRun, limit: float
    ) -> list[Outcome | asyncio.Future[Any]]:
        """The backend's outcomes; past ``limit`` the jobs fail and the batch is asked to stop,
        and past the grace after it the worker is replaced."""
        backend = self.backends[batch.slot]
        try:
            await backend.start()  # a worker being replaced starts before the batch's clock
        except Exception as exc:
            log.error("no worker for a %s batch: %s", run.task.name, exc)
            if isinstance(exc, BackendUnavailable):  # e.g. its Ray deployment cannot start
                return [exc] * len(run)
            return [WorkerCrashed(f"no worker could start: {exc}")] * len(run)
        self._on_device_since[batch] = self._clock()
        try:
            return await self._run_on(backend, run, limit)
        finally:
            del self._on_device_since[batch]

    async def _run_on(
        self, backend: Backend, run: BatchRun, limit: float
    ) -> list[Outcome | asyncio.Future[Any]]:
        work = asyncio.ensure_future(backend.run(run))
        try:
            done, _ = await asyncio.wait({work}, timeout=limit)
            if not done:
                log.warning(
                    "a %s batch ran past its %.0fs limit; stopping it", run.task.name, limit
                )
                for job in run.jobs:
                    self._finish(job, error=ExecutionTimeout(limit))
                done, _ = await asyncio.wait({work}, timeout=self.config.stop_grace_s)
            if not done:
                log.error(
                    "a %s batch did not stop within %.0fs of its limit; replacing its worker",
                    run.task.name,
                    self.config.stop_grace_s,
                )
                work.cancel()
                await backend.abort(run)
                return [ExecutionTimeout(limit)] * len(run)
            return work.result()
        except asyncio.CancelledError:
            work.cancel()
            raise
        except Exception as exc:  # the backend itself failed (e.g. its worker died)
            log.error("backend failed on a %s batch: %s", run.task.name, exc)
            return [exc if isinstance(exc, WorkerCrashed) else JobFailed(exc)] * len(run)

    def _finish_when_encoded(self, job: Job, encoding: asyncio.Future[Any]) -> None:
        self._finishing.add(encoding)

        def done(future: asyncio.Future[Any]) -> None:
            self._finishing.discard(future)
            if future.cancelled():
                self._finish(job, error=JobCancelled("the bot is shutting down"))
            elif (exc := future.exception()) is not None:
                self._finish(job, error=exc if isinstance(exc, ExecutorError) else JobFailed(exc))
            elif isinstance(result := future.result(), BaseException):  # ended on the device
                self._finish(job, error=result)
            else:
                self._finish(job, result)

        encoding.add_done_callback(done)

    # Introspection and shutdown

    def health(self) -> EngineHealth:
        now = self._clock()
        running = self.scheduler.running()
        oldest = max((now - batch.started_at for batch in running), default=None)
        stuck = any(
            now - self._on_device_since[batch]
            > self.limits(self.tasks[batch.queue_key[0]]).exec_timeout_s
            + self.config.stop_grace_s
            + 5.0  # killing a worker takes a moment
            for batch in running
            if batch in self._on_device_since
        )
        alive = self._engine is not None and not self._engine.done()
        return EngineHealth(alive, self._restarts, oldest, stuck)

    def snapshot(self) -> MetricsSnapshot:
        keys = list(dict.fromkeys([*self.scheduler.models(), *self.metrics.known_keys()]))
        return MetricsSnapshot(
            outstanding=self.scheduler.outstanding,
            queued=self.scheduler.queued,
            models=[self.metrics.model_stats(k, self.scheduler.waiting(k)) for k in keys],
            loaded=[info for backend in self.backends for info in backend.loaded_models()],
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
        for key in self.scheduler.models():
            for job in self.scheduler.order(key, self._clock()):
                self.scheduler.remove(job)
                self._finish(job, error=JobCancelled("the bot is shutting down"))
        running = [job for batch in self.scheduler.running() for job in batch.jobs]
        if running or self._finishing:
            waiting = {*self._finishing, *(job.future for job in running)}
            late = await self._wait_unless_hurried(waiting, timeout)
            if late:
                log.warning("%d job(s) still running at shutdown; stopping them", len(late))
                for job in running:
                    self._finish(job, error=JobCancelled("stopped: the bot is shutting down"))
                for future in self._finishing:
                    future.cancel()
        if self._engine is not None:
            self._engine.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine
        if self._runners:  # batches still on a device: they stop between steps, or are cut
            await asyncio.wait(self._runners.values(), timeout=max(0.0, deadline - self._clock()))
            for runner in self._runners.values():
                runner.cancel()
        for backend in self.backends:
            await backend.close(max(1.0, deadline - self._clock()))

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
