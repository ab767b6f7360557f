"""The shared inference executor; see ``Executor``.

Names load on first use, so that ``bot.executor.config`` (which settings import) does not
pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Backend": "backend",
    "BatchRun": "backend",
    "LoadedModelInfo": "backend",
    "ClassLimits": "config",
    "ExecutorConfig": "config",
    "BackendUnavailable": "errors",
    "Busy": "errors",
    "DeviceUnavailable": "errors",
    "ExecutionTimeout": "errors",
    "ExecutorError": "errors",
    "JobCancelled": "errors",
    "JobFailed": "errors",
    "ModelLoadError": "errors",
    "ModelNotDownloaded": "errors",
    "OutOfMemory": "errors",
    "QueueTimeout": "errors",
    "ShuttingDown": "errors",
    "UnknownTask": "errors",
    "WorkerCrashed": "errors",
    "Executor": "executor",
    "EngineHealth": "executor",
    "JobEvent": "job",
    "JobHandle": "job",
    "JobState": "job",
    "MetricsSnapshot": "metrics",
    "ModelRegistry": "registry",
    "LocalBackend": "worker",
}

__all__ = [
    "Backend",
    "BackendUnavailable",
    "BatchRun",
    "Busy",
    "ClassLimits",
    "DeviceUnavailable",
    "EngineHealth",
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
    "UnknownTask",
    "WorkerCrashed",
]

if TYPE_CHECKING:
    from bot.executor.backend import Backend, BatchRun, LoadedModelInfo
    from bot.executor.config import ClassLimits, ExecutorConfig
    from bot.executor.errors import (
        BackendUnavailable,
        Busy,
        DeviceUnavailable,
        ExecutionTimeout,
        ExecutorError,
        JobCancelled,
        JobFailed,
        ModelLoadError,
        ModelNotDownloaded,
        OutOfMemory,
        QueueTimeout,
        ShuttingDown,
        UnknownTask,
        WorkerCrashed,
    )
    from bot.executor.executor import EngineHealth, Executor
    from bot.executor.job import JobEvent, JobHandle, JobState
    from bot.executor.metrics import MetricsSnapshot
    from bot.executor.registry import ModelRegistry
    from bot.executor.worker import LocalBackend


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
