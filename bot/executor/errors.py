"""Typed executor errors; each message is fit to show the user whose job it ended."""

from __future__ import annotations

import math

from huggingface_hub.errors import LocalEntryNotFoundError

from handlers.portable import PortableError


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


class ExecutorError(PortableError):
    """Base of every error the executor raises to a caller."""


class Busy(ExecutorError):
    """Admission refused: the queue or the user's share of it is full."""

    def __init__(self, reason: str, retry_after: float, kind: str = "queue_full") -> None:
        self.reason = reason
        self.retry_after = retry_after
        self.kind = kind
        """Which cap refused it: user_limit or queue_full (a metrics label)."""
        super().__init__(f"{reason}; try again in ~{math.ceil(retry_after)}s")


class ShuttingDown(ExecutorError):
    """The executor no longer admits work."""

    def __init__(self) -> None:
        super().__init__("the bot is shutting down; try again in a minute")


class UnknownTask(ExecutorError):
    def __init__(self, task: str, known: list[str]) -> None:
        self.task = task
        super().__init__(f"unknown task {task!r}; known tasks: {', '.join(sorted(known))}")


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


class DeviceUnavailable(ExecutorError):
    """The configured device cannot be used on this machine or with this PyTorch build."""


class BackendUnavailable(ExecutorError):
    """The configured backend cannot run anything: Ray is not installed, its cluster cannot be
    reached, or a task's deployment cannot start there."""


class ModelLoadError(ExecutorError):
    """The model could not be loaded; the next request tries again."""

    def __init__(self, model: str, cause: BaseException) -> None:
        self.model = model
        reason = " ".join(str(cause).split())  # library messages span lines; replies don't
        super().__init__(f"could not load model {model!r}: {type(cause).__name__}: {reason}")


class ModelNotDownloaded(ModelLoadError):
    """Offline (or the hub unreachable), and the model or a file it needs is not cached.

    Front ends add how to fetch it (``bot.models.explain``).
    """

    def __init__(self, task: str, model: str, *, pipeline: bool = False) -> None:
        self.model = model
        self.task = task
        self.pipeline = pipeline
        """Whether the model is a diffusers pipeline (its files are laid out differently)."""
        ExecutorError.__init__(self, f"could not load model {model!r}: it is not downloaded")


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
    """The worker running this job died (it crashed, or was killed); a new one serves the
    next job."""

    def __init__(self, cause: BaseException | str) -> None:
        what = cause if isinstance(cause, str) else type(cause).__name__
        super().__init__(f"the inference worker crashed ({what}); it was restarted")
