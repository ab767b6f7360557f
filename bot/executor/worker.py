"""The local backend: one thread owns the accelerator and runs every batch and model load."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bot.executor.backend import BatchRun, LoadedModelInfo, Outcome
from bot.executor.errors import (
    JobCancelled,
    JobFailed,
    ModelLoadError,
    OutOfMemory,
    WorkerCrashed,
)
from bot.executor.registry import ModelRegistry
from handlers.base import BatchStopped, HandlerError, Task

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
    def __init__(self, registry: ModelRegistry, torch_threads: int | None = None) -> None:
        self.registry = registry
        self.torch_threads = torch_threads or default_torch_threads(registry.device)
        self._inbox: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def start(self) -> None:
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="inference-worker", daemon=True)
        self._thread.start()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        if self._closed:
            raise RuntimeError("the backend is closed")
        self._ensure_thread()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put((fn, future))
        return await asyncio.wrap_future(future)

    def _serve(self) -> None:
        while (work := self._inbox.get()) is not None:
            fn, future = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:
                # Not an ordinary error: this thread ends and hands its inbox to a new one.
                log.critical("inference worker crashed; starting a new one", exc_info=exc)
                self._start_thread()
                future.set_exception(WorkerCrashed(exc))
                return

    async def run(self, batch: BatchRun) -> list[Outcome]:
        return await self._call(lambda: self._execute(batch))

    async def preload(self, task: Task[Any, Any], model: str) -> None:
        await self._call(lambda: self.registry.get(task, model))

    def loaded_models(self) -> list[LoadedModelInfo]:
        return self.registry.snapshot()

    async def close(self, timeout: float) -> None:
        if self._closed:
            return
        try:
            await asyncio.wait_for(self._call(self.registry.unload_all), timeout)
        except (TimeoutError, WorkerCrashed):
            log.warning("the inference worker did not release its models within %.0fs", timeout)
        self._closed = True
        self._inbox.put(None)

    # Everything below runs on the worker thread.

    def _execute(self, batch: BatchRun) -> list[Outcome]:
        try:
            model = self.registry.get(batch.task, batch.model)
        except ModelLoadError as exc:  # already says what to do: no traceback needed
            log.error("%s", exc)
            return [exc] * len(batch)
        except Exception as exc:
            log.exception("loading %s failed", batch.model)
            return [ModelLoadError(batch.model, exc)] * len(batch)
        return self._run_split(model, batch, range(len(batch)))

    def _run_split(self, model: Any, batch: BatchRun, indices: Sequence[int]) -> list[Outcome]:
        """Run ``indices`` together; on out-of-memory halve, on other errors isolate each item."""
        live = [i for i in indices if not batch.jobs[i].abandoned]
        outcomes: dict[int, Outcome] = {i: JobCancelled("stopped") for i in indices}
        if not live:
            return [outcomes[i] for i in indices]
        part = batch.subset(live)
        # Recovery runs after the except blocks: inside them the traceback still holds the
        # failed batch's frames and tensors, so nothing could be freed for the retries.
        out_of_memory = retry_alone = False
        try:
            outputs = batch.task.run_batch(model, part.requests, part)
            if len(outputs) != len(live):
                raise RuntimeError(
                    f"{batch.task.name}.run_batch returned {len(outputs)} outputs "
                    f"for {len(live)} requests"
                )
            outcomes.update(zip(live, outputs, strict=True))
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        except BatchStopped:
            pass
        except Exception as exc:
            if len(live) > 1:
                log.warning(
                    "%s batch of %d failed (%s); retrying one by one",
                    batch.task.name,
                    len(live),
                    exc,
                )
                retry_alone = True
            elif isinstance(exc, HandlerError):
                outcomes[live[0]] = exc.with_traceback(None)
            else:
                log.exception("%s failed on one request", batch.task.name)
                failure = JobFailed(exc)
                failure.__cause__ = exc.with_traceback(None)
                outcomes[live[0]] = failure
        if out_of_memory:
            self.registry.release_memory()
            if len(live) == 1:
                log.warning("out of memory on a single %s request", batch.task.name)
                outcomes[live[0]] = OutOfMemory()
            else:
                half = len(live) // 2
                log.warning(
                    "out of memory on a %s batch of %d; splitting", batch.task.name, len(live)
                )
                for group in (live[:half], live[half:]):
                    outcomes.update(zip(group, self._run_split(model, batch, group), strict=True))
        elif retry_alone:
            for i in live:
                outcomes[i] = self._run_split(model, batch, [i])[0]
        return [outcomes[i] for i in indices]
