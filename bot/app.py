"""Wires settings to handlers and the executor; the one place that knows every task."""

from __future__ import annotations

from typing import Any

from bot.executor import Executor, LocalBackend, ModelRegistry
from bot.settings import Settings
from handlers.base import Task
from handlers.sentiment import SentimentTask


def build_tasks(settings: Settings) -> dict[str, Task[Any, Any]]:
    return {"sentiment": SentimentTask(max_chars=settings.max_text_chars)}


def build_executor(settings: Settings) -> Executor:
    registry = ModelRegistry(settings.device, settings.dtype, settings.memory_budget_bytes())
    return Executor(
        build_tasks(settings),
        settings.models.model_dump(),
        LocalBackend(registry, settings.torch_threads),
        settings.executor_config(),
    )


async def start_executor(settings: Settings) -> Executor:
    """A started executor with the admin's preload list already loaded."""
    executor = build_executor(settings)
    await executor.start()
    for task in settings.preload:
        await executor.preload(task)
    return executor
