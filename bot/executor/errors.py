"""Typed executor errors; each message is fit to show the user whose job it ended."""

from __future__ import annotations

import math

from huggingface_hub.errors import LocalEntryNotFoundError

from bot.models import PULL_COMMAND


def not_downloaded(exc: BaseException) -> bool:
    """True when ``exc`` comes from a file that is neither in the hub cache nor reachable.

    Libraries wrap huggingface_hub's error in their own (transformers in an OSError,
    diffusers in another), so the whole cause and context chain is searched.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, LocalEntryNotFoundError):
            return True
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


class ExecutorError(Exception):
    """Base of every error the executor raises to a caller."""


class Busy(ExecutorError):
    """Admission refused: the queue or the user's share of it is full."""

    def __init__(self, reason: str, retry_after: float) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{reason}; try again in ~{math.ceil(retry_after)}s")


class ShuttingDown(ExecutorError):
    """The executor no longer admits work."""

    def __init__(self) -> None:
        super().__init__("the bot is shutting down; try again in a minute")


class UnknownTask(ExecutorError):
    def __init__(self, task: str, known: list[str]) -> None:
        self.task = task
        super().__init__(f"unknown task {task!r}; known tasks: {', '.join(sorted(known))}")


class TaskUnavailable(ExecutorError):
    """A task could not get ready (e.g. its voice table or language detector failed to load)."""

    def __init__(self, task: str, cause: BaseException) -> None:
        self.task = task
        if not_downloaded(cause):
            super().__init__(
                f"{task} is unavailable: files it needs are not downloaded; "
                f"run `{PULL_COMMAND} {task}`"
            )
            return
        reason = " ".join(str(cause).split())
        super().__init__(f"{task} is unavailable: {type(cause).__name__}: {reason}")


class QueueTimeout(ExecutorError):
    """The job waited longer than its task class's queue deadline and was not run."""

    def __init__(self, waited: float) -> None:
        self.waited = waited
        super().__init__(f"the job waited {waited:.0f}s in the queue and was dropped; try again")


class ExecutionTimeout(ExecutorError):
    def __init__(self, limit: float) -> None:
        self.limit = limit
        super().__init__(f"the job ran longer than its {limit:.0f}s limit and was stopped")


class JobCancelled(ExecutorError):
    def __init__(self, reason: str = "cancelled") -> None:
        self.reason = reason
        super().__init__(reason)


class ModelLoadError(ExecutorError):
    """The model could not be loaded; the next request tries again."""

    def __init__(self, model: str, cause: BaseException) -> None:
        self.model = model
        reason = " ".join(str(cause).split())  # library messages span lines; replies don't
        super().__init__(f"could not load model {model!r}: {type(cause).__name__}: {reason}")


class ModelNotDownloaded(ModelLoadError):
    """Offline (or the hub unreachable), and the model or a file it needs is not cached."""

    def __init__(self, task: str, model: str, *, partly: bool) -> None:
        self.model = model
        self.task = task
        what = "some files it needs are not downloaded" if partly else "it is not downloaded"
        ExecutorError.__init__(
            self, f"could not load model {model!r}: {what}; run `{PULL_COMMAND} {task}`"
        )


class OutOfMemory(ExecutorError):
    def __init__(self) -> None:
        super().__init__(
            "the accelerator ran out of memory for this request even when run alone; "
            "try a smaller input"
        )


class JobFailed(ExecutorError):
    """The handler raised an unexpected error for this job alone."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the model failed on this request ({type(cause).__name__}: {cause})")


class WorkerCrashed(ExecutorError):
    """The accelerator thread died while running this job; it has been restarted."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the inference worker crashed ({type(cause).__name__}); it was restarted")
