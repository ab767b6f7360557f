"""The in-process backend: one thread owns the device and runs every batch and model load.

Fast to start, so tests and one-off commands use it; the bot serves from a worker process
(``bot.executor.process``), which the event loop never shares a GIL with and which can be
killed when a batch hangs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

from bot.executor.backend import BatchRun, LoadedModelInfo, Outcome
from bot.executor.errors import JobCancelled, WorkerCrashed
from bot.executor.registry import ModelRegistry
from bot.executor.running import cuda_memory, encodes, execute, finish, when_done
from handlers.base import Task

log = logging.getLogger(__name__)

_Work = tuple[Callable[[], Any], concurrent.futures.Future[Any]]


def default_torch_threads(device: str) -> int | None:
    """Threads for torch's CPU ops: all cores when the CPU runs the models, else a few.

    With a GPU doing the model work, a full-width CPU thread pool only competes with the
    event loop and the encoders (measured on an H200 host: the loop's lag p99 halved
    with 4 threads instead of 16 while images were generated).
    """
    if device == "cpu":
        return None
    return min(4, os.cpu_count() or 1)


class LocalBackend:
    def __init__(
        self, registry: ModelRegistry, torch_threads: int | None = None, cpu_workers: int = 2
    ) -> None:
        self.registry = registry
        self.torch_threads = torch_threads or default_torch_threads(registry.device)
        self._inbox: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._encoders = concurrent.futures.ThreadPoolExecutor(
            cpu_workers, thread_name_prefix="cpu-finish"
        )
        self._closed = False

    async def start(self) -> None:
        if self.torch_threads is not None and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._serve, args=(self._inbox,), name="inference-worker", daemon=True
        )
        self._thread.start()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        if self._closed:
            raise RuntimeError("the backend is closed")
        self._ensure_thread()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put((fn, future))
        return await asyncio.wrap_future(future)

    def _serve(self, inbox: queue.SimpleQueue[_Work | None]) -> None:
        while (work := inbox.get()) is not None:
            fn, future = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:
                # Not an ordinary error: this thread ends and hands its inbox to a new one
                # (unless it had been given up on already, and another serves).
                log.critical("inference worker crashed; starting a new one", exc_info=exc)
                if inbox is self._inbox:
                    self._start_thread()
                future.set_exception(WorkerCrashed(exc))
                return

    async def run(self, batch: BatchRun) -> list[Outcome | asyncio.Future[Any]]:
        """Raw outcomes from the device thread; results a task encodes (``finish``), and
        rows still generating (continuous batching), come as futures, so the device moves
        on to the next batch at once."""
        outcomes = await self._call(lambda: execute(self.registry, batch))
        loop = asyncio.get_running_loop()
        return [self._later(loop, batch.task, outcome) for outcome in outcomes]

    def _later(
        self, loop: asyncio.AbstractEventLoop, task: Task[Any, Any], outcome: Outcome
    ) -> Outcome | asyncio.Future[Any]:
        if isinstance(outcome, concurrent.futures.Future):
            result: asyncio.Future[Any] = loop.create_future()

            def settle(value: Outcome) -> None:
                if not result.done():
                    result.set_result(value)

            def then(raw: Outcome) -> None:
                value = finish(task, raw) if encodes(task) else raw
                with contextlib.suppress(RuntimeError):  # the bot's loop has closed
                    loop.call_soon_threadsafe(settle, value)

            def encode(raw: Outcome) -> None:
                try:
                    self._encoders.submit(then, raw)
                except RuntimeError:  # the backend closed: the job ends with the bot
                    then(JobCancelled("the bot is shutting down"))

            when_done(outcome, encode, task.name)
            return result
        if isinstance(outcome, BaseException) or not encodes(task):
            return outcome
        return loop.run_in_executor(self._encoders, finish, task, outcome)

    def capacity(self) -> int:
        return 1  # one device: its batches run one after another

    def watch_capacity(self, changed: Callable[[], None]) -> None:
        """Never needed: a device's capacity does not change."""

    async def abort(self, batch: BatchRun) -> None:
        """A thread cannot be stopped: the stuck one is left to end on its own (it exits when
        its call returns) and a new thread serves from now on."""
        stuck, self._inbox = self._inbox, queue.SimpleQueue()
        stuck.put(None)
        self._start_thread()

    async def preload(self, task: Task[Any, Any], model: str) -> None:
        await self._call(lambda: self.registry.get(task, model))

    def loaded_models(self) -> list[LoadedModelInfo]:
        return self.registry.snapshot()

    def device_memory(self) -> dict[str, tuple[int, int]]:
        return cuda_memory()

    async def close(self, timeout: float) -> None:
        if self._closed:
            return
        try:
            await asyncio.wait_for(self._call(self.registry.unload_all), timeout)
        except (TimeoutError, WorkerCrashed):
            log.warning("the inference worker did not release its models within %.0fs", timeout)
        self._closed = True
        self._inbox.put(None)
        self._encoders.shutdown(wait=False, cancel_futures=True)
