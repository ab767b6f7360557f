"""Models in their own process: one worker per device loads models and runs batches, and
sends progress, partial text and encoded results back over a pipe.

The bot's event loop never shares a GIL with the models; a batch that hangs past its limit
is ended by killing its worker; a worker that dies (SIGKILL, a CUDA fatal error) fails its
batch with a clear message and a new one starts for the next batch. vLLM's engine core
process and TGI's model servers are the models for this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import torch

from bot.executor.backend import BatchRun, LoadedModelInfo, Outcome
from bot.executor.errors import JobFailed, WorkerCrashed
from bot.executor.registry import ModelRegistry
from bot.executor.running import cuda_memory, encodes, execute, finish, when_done
from bot.executor.worker import default_torch_threads
from handlers.base import Task

log = logging.getLogger(__name__)

SPAWN = multiprocessing.get_context("spawn")
"""A fresh interpreter: CUDA cannot be used in a forked child of a process that touched it."""
EXIT_WAIT_S = 5.0
"""How long a worker told to exit waits for its device thread to leave torch code."""

Memory = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker sets up its device."""

    device: str
    dtype: str = "auto"
    budget_bytes: int | None = None
    torch_threads: int | None = None
    encoders: int = 2
    """Threads that encode results (PNG, audio) while the device runs the next batch."""
    log_level: int = logging.INFO
    name: str = ""
    """The class of tasks it serves, when each device has a worker per class."""

    @property
    def label(self) -> str:
        """What the logs call the worker: its device, and its class if it has one."""
        return f"{self.device} ({self.name})" if self.name else self.device


@dataclass
class _Pending:
    batch: BatchRun
    ran: asyncio.Future[list[Any]]
    encoding: dict[int, asyncio.Future[Any]] = field(default_factory=dict)


class _Worker:
    """The bot's side of one worker process: it sends work and routes every answer."""

    def __init__(self, process: Any, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.process = process
        self.conn = conn
        self.loop = loop
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[str] = loop.create_future()
        """Why the worker is gone, once it is."""
        self.batches: dict[int, _Pending] = {}
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.loaded: list[LoadedModelInfo] = []
        self.memory: Memory = {}
        self._reader = threading.Thread(target=self._read, name="model-worker-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.alive:
            raise WorkerCrashed(self.exited.result())
        try:
            self.conn.send(message)
        except (OSError, ValueError) as exc:  # the pipe broke: the worker is dying
            raise WorkerCrashed(f"its pipe broke: {exc}") from exc

    def _read(self) -> None:
        why = ""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an answer that cannot be unpickled here is lost, so the
                # worker is ended and everything it owed fails at once
                log.exception("an answer of model worker %d was unreadable", self.process.pid)
                why = f"its answer could not be read ({type(exc).__name__})"
                self.process.kill()
                continue
            if not self._tell(self._route, message):
                return
        self.process.join(10)
        self._tell(self._gone, why or _ending(self.process.exitcode))

    def _tell(self, callback: Any, argument: Any) -> bool:
        """Run ``callback`` on the event loop; False once the loop is closed."""
        try:
            self.loop.call_soon_threadsafe(callback, argument)
        except RuntimeError:  # the bot's loop has ended: nobody is waiting any more
            return False
        return True

    def _route(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "progress":
            _, batch_id, step, total = message
            if (pending := self.batches.get(batch_id)) is not None:
                pending.batch.progress(step, total)
        elif kind == "partial":
            _, batch_id, index, data = message
            if (pending := self.batches.get(batch_id)) is not None:
                pending.batch.partial(index, data)
        elif kind == "ran":
            _, batch_id, outcomes, self.loaded, self.memory = message
            if (pending := self.batches.get(batch_id)) is not None:
                _settle(pending.ran, True, self._outcomes(pending, outcomes))
                if not pending.encoding:
                    del self.batches[batch_id]
        elif kind == "encoded":
            _, batch_id, index, ok, value = message
            if (pending := self.batches.get(batch_id)) is not None:
                _settle(pending.encoding.pop(index, None), ok, value)
                if not pending.encoding:
                    del self.batches[batch_id]
                    pending.batch.on_abandon = None
        elif kind == "reply":
            _, call_id, ok, value, self.loaded, self.memory = message
            _settle(self.calls.pop(call_id, None), ok, value)

    def _outcomes(self, pending: _Pending, wire: Sequence[tuple[str, Any]]) -> list[Any]:
        outcomes: list[Outcome | asyncio.Future[Any]] = []
        for index, (kind, value) in enumerate(wire):
            if kind == "encoding":
                future = pending.encoding[index] = self.loop.create_future()
                outcomes.append(future)
            else:
                outcomes.append(value)
        return outcomes

    def _gone(self, why: str) -> None:
        if self.exited.done():
            return
        self.exited.set_result(why)
        self.loaded, self.memory = [], {}
        error = WorkerCrashed(why)
        for pending in self.batches.values():
            for future in (pending.ran, *pending.encoding.values()):
                if not future.done():
                    future.set_exception(error)
        for future in self.calls.values():
            if not future.done():
                future.set_exception(error)
        self.batches.clear()
        self.calls.clear()
        if not self.ready.done():
            self.ready.set_exception(error)


def _ending(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _settle(future: asyncio.Future[Any] | None, ok: bool, value: Any) -> None:
    if future is None or future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ProcessBackend:
    """One worker process owns one device."""

    def __init__(
        self, tasks: Mapping[str, Task[Any, Any]], spec: WorkerSpec, start_timeout_s: float = 300
    ) -> None:
        self.tasks = dict(tasks)
        self.spec = spec
        self.start_timeout_s = start_timeout_s
        self._worker: _Worker | None = None
        self._starting: asyncio.Future[_Worker] | None = None
        self._ids = itertools.count(1)
        self._closed = False

    async def start(self) -> None:
        await self._ready_worker()

    async def _ready_worker(self) -> _Worker:
        """The running worker, or a new one (started once however many callers ask)."""
        if self._closed:
            raise RuntimeError("the backend is closed")
        if self._worker is not None and self._worker.alive:
            return self._worker
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> _Worker:
        parent, child = SPAWN.Pipe()
        process = SPAWN.Process(
            target=serve,
            args=(child, self.tasks, self.spec),
            name=f"model-worker {self.spec.label}",
            daemon=True,
        )
        # Pickling the tasks and starting an interpreter: off the event loop, and to the end
        # even if the caller gives up, so that the process can then be killed.
        starting = asyncio.ensure_future(asyncio.to_thread(process.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            await starting
            process.kill()
            raise
        child.close()
        worker = _Worker(process, parent, asyncio.get_running_loop())
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), self.start_timeout_s)
            if self._closed:
                raise RuntimeError("the backend closed while its worker started")
        except BaseException:
            process.kill()  # its reader reaps it
            raise
        log.info("model worker %d serves %s", process.pid, self.spec.label)
        self._worker = worker
        return worker

    async def run(self, batch: BatchRun) -> list[Outcome | asyncio.Future[Any]]:
        worker = await self._ready_worker()
        batch_id = next(self._ids)
        pending = _Pending(batch, asyncio.get_running_loop().create_future())
        worker.batches[batch_id] = pending

        def pass_cancellations_on() -> None:
            stopped = [i for i in range(len(batch)) if batch.abandoned(i)]
            if stopped:
                with contextlib.suppress(WorkerCrashed):
                    worker.send(("stop", batch_id, stopped))

        batch.on_abandon = pass_cancellations_on
        try:
            worker.send(("run", batch_id, batch.task.name, batch.model, batch.requests))
            pass_cancellations_on()  # jobs cancelled while the batch was being handed over
            outcomes = await pending.ran
        except BaseException:
            worker.batches.pop(batch_id, None)
            batch.on_abandon = None
            raise
        if not pending.encoding:
            batch.on_abandon = None
        # else rows still run (continuous batching): cancellations go on until they end
        return outcomes

    def capacity(self) -> int:
        return 1  # one device: its batches run one after another

    def watch_capacity(self, changed: Callable[[], None]) -> None:
        """Never needed: a device's capacity does not change."""

    async def abort(self, batch: BatchRun) -> None:
        """Kill the worker whose batch would not stop; the next batch starts a new one."""
        worker = self._worker
        if worker is not None and worker.alive:
            log.error("killing model worker %d (%s)", worker.process.pid, self.spec.label)
            worker.process.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker.exited), 15)

    async def _call(self, action: str, *args: Any) -> Any:
        worker = await self._ready_worker()
        call_id = next(self._ids)
        future = worker.calls[call_id] = asyncio.get_running_loop().create_future()
        worker.send(("call", call_id, action, *args))
        return await future

    async def preload(self, task: Task[Any, Any], model: str) -> None:
        await self._call("preload", task.name, model)

    def loaded_models(self) -> list[LoadedModelInfo]:
        worker = self._worker
        return list(worker.loaded) if worker is not None else []

    def device_memory(self) -> Memory:
        worker = self._worker
        return dict(worker.memory) if worker is not None else {}

    async def close(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # the worker it was starting is killed
            with contextlib.suppress(BaseException):
                await self._starting
        worker = self._worker
        if worker is None or not worker.alive:
            return
        with contextlib.suppress(WorkerCrashed):
            worker.send(("exit",))
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), timeout)
        except TimeoutError:
            log.warning("model worker %d did not exit within %.0fs; killing it",
                        worker.process.pid, timeout)  # fmt: skip
            worker.process.kill()


# Everything below runs in the worker process (and, for ``RemoteBatch`` and the helpers of
# results, in a Ray Serve replica too).


class Outbox(Protocol):
    """Where a remote batch's messages go back to the bot; safe from any thread."""

    def send(self, message: tuple[Any, ...]) -> None: ...


class RemoteBatch:
    """A batch as the worker runs it: cancellations arrive from the bot, progress and
    partial outputs go back to it."""

    def __init__(
        self,
        batch_id: int,
        task: Task[Any, Any],
        model: str,
        requests: Sequence[Any],
        outbox: Outbox,
        indices: Sequence[int] | None = None,
        stopped: list[bool] | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.task = task
        self.model = model
        self._all = list(requests)
        self._outbox = outbox
        self._indices = list(range(len(requests)) if indices is None else indices)
        self._stopped = [False] * len(requests) if stopped is None else stopped

    @property
    def requests(self) -> list[Any]:
        return [self._all[i] for i in self._indices]

    def __len__(self) -> int:
        return len(self._indices)

    def abandoned(self, index: int) -> bool:
        return self._stopped[self._indices[index]]

    def subset(self, indices: Sequence[int]) -> RemoteBatch:
        return RemoteBatch(
            self.batch_id, self.task, self.model, self._all, self._outbox,
            [self._indices[i] for i in indices], self._stopped,
        )  # fmt: skip

    def stop(self, indices: Sequence[int]) -> None:
        for index in indices:
            self._stopped[index] = True

    def should_stop(self) -> bool:
        return all(self._stopped[i] for i in self._indices)

    def progress(self, step: int, total: int) -> None:
        self._outbox.send(("progress", self.batch_id, step, total))

    def partial(self, index: int, data: Any) -> None:
        self._outbox.send(("partial", self.batch_id, self._indices[index], data))


class _Outbox:
    """The worker's end of the pipe; its threads take turns."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)


@contextlib.contextmanager
def dies_on_error() -> Iterator[None]:
    """Around the worker's own code: an error it cannot answer for would leave the bot
    waiting, so the process ends instead, and the bot fails what it waited for."""
    try:
        yield
    except Exception:
        log.exception("the model worker failed; stopping it")
        os._exit(1)


def unsendable(value: Any, error: Exception) -> BaseException:
    return JobFailed(RuntimeError(f"its {type(value).__name__} result cannot be sent: {error}"))


def sendable(entry: tuple[str, Any]) -> tuple[str, Any]:
    """A wire entry as it can cross the pipe: a result that cannot becomes its error."""
    kind, value = entry
    if kind != "result":
        return entry
    try:
        pickle.dumps(value)
    except Exception as exc:
        return ("error", unsendable(value, exc))
    return entry


def portable(error: BaseException) -> BaseException:
    """``error``, or a ``JobFailed`` with its message if it cannot cross the pipe."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return JobFailed(RuntimeError(f"{type(error).__name__}: {error}"))
    return error


def serve(conn: Connection, tasks: Mapping[str, Task[Any, Any]], spec: WorkerSpec) -> None:
    """The worker process: batches and model loads in order on one device thread, each
    result encoded in a small pool while the device runs the next batch."""
    # The bot decides when its worker stops: a Ctrl-C or SIGTERM to the whole process
    # group must not end running batches before the bot's own graceful stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=spec.log_level,
        format="%(asctime)s %(levelname)s %(name)s (model worker %(process)d): %(message)s",
    )
    registry = ModelRegistry(spec.device, spec.dtype, spec.budget_bytes)
    threads = spec.torch_threads or default_torch_threads(registry.device)
    if threads is not None:
        torch.set_num_threads(threads)
    outbox = _Outbox(conn)
    encoders = concurrent.futures.ThreadPoolExecutor(spec.encoders, "worker-finish")
    work: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
    batches: dict[int, RemoteBatch] = {}

    def encode(batch_id: int, index: int, task: Task[Any, Any], output: Any) -> None:
        with dies_on_error():
            result = finish(task, output) if encodes(task) else output
            if isinstance(result, BaseException):
                outbox.send(("encoded", batch_id, index, False, portable(result)))
                return
            try:
                outbox.send(("encoded", batch_id, index, True, result))
            except Exception as exc:  # a result that cannot be pickled fails its job alone
                outbox.send(("encoded", batch_id, index, False, unsendable(result, exc)))

    def run(batch: RemoteBatch) -> None:
        outcomes = execute(registry, batch)
        encoded = encodes(batch.task)
        wire = [
            ("error", portable(o)) if isinstance(o, BaseException)
            else ("encoding", None) if encoded or isinstance(o, concurrent.futures.Future)
            else ("result", o)
            for o in outcomes
        ]  # fmt: skip
        running = [i for i, o in enumerate(outcomes) if isinstance(o, concurrent.futures.Future)]
        if not running:
            batches.pop(batch.batch_id, None)
        try:
            outbox.send(("ran", batch.batch_id, wire, registry.snapshot(), cuda_memory()))
        except Exception as exc:  # a result that cannot be pickled fails its job alone
            log.warning("a result cannot be sent back (%s); failing its job", exc)
            wire = [sendable(entry) for entry in wire]
            outbox.send(("ran", batch.batch_id, wire, registry.snapshot(), cuda_memory()))
        # Rows still generating keep their batch here, so that cancellations reach them.
        left = set(running)
        lock = threading.Lock()

        def ended(index: int, output: Any) -> None:
            with lock:
                left.discard(index)
                if not left:
                    batches.pop(batch.batch_id, None)
            encode(batch.batch_id, index, batch.task, output)

        def hand_over(index: int, output: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the worker is exiting: nobody waits
                encoders.submit(ended, index, output)

        for index, (kind, output) in enumerate(zip((w[0] for w in wire), outcomes, strict=True)):
            if kind != "encoding":
                continue
            if isinstance(output, concurrent.futures.Future):
                when_done(output, functools.partial(hand_over, index), batch.task.name)
            else:
                encoders.submit(encode, batch.batch_id, index, batch.task, output)

    def call(call_id: int, action: str, *args: Any) -> None:
        try:
            if action == "preload":
                registry.get(tasks[args[0]], args[1])
            else:
                raise ValueError(f"unknown call {action!r}")
        except Exception as exc:
            outbox.send(
                ("reply", call_id, False, portable(exc), registry.snapshot(), cuda_memory())
            )
        else:
            outbox.send(("reply", call_id, True, None, registry.snapshot(), cuda_memory()))

    def device() -> None:
        while (item := work.get()) is not None:
            with dies_on_error():
                if item[0] == "run":
                    run(item[1])
                else:
                    call(*item[1:])
        registry.unload_all()  # stops the threads some models run (continuous batching)

    device_thread = threading.Thread(target=device, name="device", daemon=True)
    device_thread.start()
    outbox.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the bot is gone
            break
        kind = message[0]
        if kind == "run":
            _, batch_id, task_name, model, requests = message
            batch = RemoteBatch(batch_id, tasks[task_name], model, requests, outbox)
            batches[batch_id] = batch
            work.put(("run", batch))
        elif kind == "stop":
            _, batch_id, indices = message
            if (running := batches.get(batch_id)) is not None:
                running.stop(indices)
        elif kind == "call":
            work.put(message)
        elif kind == "exit":
            break
    work.put(None)  # the process ends with this function, its models and memory with it
    # Ending while the device thread is still in torch code aborts the process ("terminate
    # called without an active exception"); a batch still running is cut short by the exit.
    device_thread.join(timeout=EXIT_WAIT_S)
    encoders.shutdown(wait=False, cancel_futures=True)
