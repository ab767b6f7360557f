"""Running one batch on the device that owns it, the same way in a thread or in a worker
process: load the model, run the batch, split it on out-of-memory, isolate a failing item."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from bot.executor.backend import Outcome
from bot.executor.errors import JobCancelled, JobFailed, ModelLoadError, OutOfMemory
from bot.executor.registry import ModelRegistry
from handlers.base import BatchContext, BatchStopped, HandlerError, Task

log = logging.getLogger(__name__)


class Runnable(BatchContext, Protocol):
    """A batch as the device sees it; a subset is a batch of its own."""

    task: Task[Any, Any]
    model: str

    @property
    def requests(self) -> list[Any]: ...

    def __len__(self) -> int: ...

    def abandoned(self, index: int) -> bool:
        """Nobody waits for this job's result any more."""

    def subset(self, indices: Sequence[int]) -> Runnable: ...


def execute(registry: ModelRegistry, batch: Runnable) -> list[Outcome]:
    """One outcome per job: a raw output, or the error that ended it (never raises)."""
    try:
        model = registry.get(batch.task, batch.model)
    except ModelLoadError as exc:  # already says what to do: no traceback needed
        log.error("%s", exc)
        return [exc] * len(batch)
    except Exception as exc:
        log.exception("loading %s failed", batch.model)
        return [ModelLoadError(batch.model, exc)] * len(batch)
    return _run_split(registry, model, batch, range(len(batch)))


def _run_split(
    registry: ModelRegistry, model: Any, batch: Runnable, indices: Sequence[int]
) -> list[Outcome]:
    """Run ``indices`` together; on out-of-memory halve, on other errors isolate each item."""
    live = [i for i in indices if not batch.abandoned(i)]
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
                "%s batch of %d failed (%s); retrying one by one", batch.task.name, len(live), exc
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
        registry.release_memory()
        if len(live) == 1:
            log.warning("out of memory on a single %s request", batch.task.name)
            outcomes[live[0]] = OutOfMemory()
        else:
            half = len(live) // 2
            log.warning("out of memory on a %s batch of %d; splitting", batch.task.name, len(live))
            for group in (live[:half], live[half:]):
                outcomes.update(zip(group, _run_split(registry, model, batch, group), strict=True))
    elif retry_alone:
        for i in live:
            outcomes[i] = _run_split(registry, model, batch, [i])[0]
    return [outcomes[i] for i in indices]


def cuda_memory() -> dict[str, tuple[int, int]]:
    """(allocated, reserved) bytes per CUDA device of this process, once it uses CUDA (it
    never creates a CUDA context just to answer)."""
    if not torch.cuda.is_initialized():
        return {}
    return {
        f"cuda:{index}": (torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index))
        for index in range(torch.cuda.device_count())
    }


def finish(task: Task[Any, Any], outcome: Outcome) -> Outcome:
    """The job's result from its raw output (its error stays as it is)."""
    if isinstance(outcome, BaseException):
        return outcome
    try:
        return task.finish(outcome)
    except Exception as exc:
        log.error("%s failed to encode its result", task.name, exc_info=exc)
        return JobFailed(exc)


def encodes(task: Task[Any, Any]) -> bool:
    """Whether the task turns raw outputs into results in ``finish`` (CPU work)."""
    return type(task).finish is not Task.finish


def when_done(
    output: concurrent.futures.Future[Any], then: Callable[[Outcome], None], task_name: str
) -> None:
    """Call ``then`` with the raw output of a job still running on the device (continuous
    batching), or with the error that ended it."""

    def done(future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            outcome: Outcome = JobCancelled("stopped")
        elif (error := future.exception()) is None:
            outcome = future.result()
        elif isinstance(error, BatchStopped):
            outcome = JobCancelled("stopped")
        else:
            outcome = error if isinstance(error, HandlerError | JobFailed) else JobFailed(error)
        try:
            then(outcome)
        except Exception:  # a callback's error would be lost in concurrent.futures' log
            log.exception("%s: a row's outcome could not be delivered", task_name)

    output.add_done_callback(done)
