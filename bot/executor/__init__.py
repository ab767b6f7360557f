"""The shared inference executor; see ``Executor``."""

from bot.executor.backend import Backend, BatchRun, LoadedModelInfo
from bot.executor.config import ClassLimits, ExecutorConfig
from bot.executor.errors import (
    Busy,
    ExecutionTimeout,
    ExecutorError,
    JobCancelled,
    JobFailed,
    ModelLoadError,
    ModelNotDownloaded,
    OutOfMemory,
    QueueTimeout,
    ShuttingDown,
    TaskUnavailable,
    UnknownTask,
    WorkerCrashed,
)
from bot.executor.executor import Executor
from bot.executor.job import JobEvent, JobHandle, JobState
from bot.executor.metrics import MetricsSnapshot
from bot.executor.registry import ModelRegistry
from bot.executor.worker import LocalBackend

__all__ = [
    "Backend",
    "BatchRun",
    "Busy",
    "ClassLimits",
    "ExecutionTimeout",
    "Executor",
    "ExecutorConfig",
    "ExecutorError",
    "JobCancelled",
    "JobEvent",
    "JobFailed",
    "JobHandle",
    "JobState",
    "LoadedModelInfo",
    "LocalBackend",
    "MetricsSnapshot",
    "ModelLoadError",
    "ModelNotDownloaded",
    "ModelRegistry",
    "OutOfMemory",
    "QueueTimeout",
    "ShuttingDown",
    "TaskUnavailable",
    "UnknownTask",
    "WorkerCrashed",
]
