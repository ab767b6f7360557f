"""A scriptable task for executor tests, driven by threading events rather than sleeps."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bot.executor import ClassLimits, Executor, ExecutorConfig, LocalBackend, ModelRegistry
from handlers.base import (
    BatchContext,
    InvalidInput,
    LoadSpec,
    Task,
    TaskKind,
    raise_if_stopped,
)


@dataclass(frozen=True)
class Item:
    value: str
    key: Hashable = None
    cost: int = 1
    seconds: float = 0.0
    """Device time the item takes on a ``FakeClock`` (a batch takes its longest item's)."""


class FakeClock:
    """The executor's clock in tests that need exact device times: batches advance it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class WorkerDeath(BaseException):
    """Not an Exception: escapes every ordinary handler and kills the worker thread."""


@dataclass
class FakeTask(Task[Item, str]):
    """Echoes its inputs upper-cased; every behaviour a test needs is a switch here.

    ``gate`` holds a batch inside ``run_batch`` until the test opens it; ``entered`` tells
    the test a batch is being held. Values starting with ``bad`` fail the whole batch,
    ``invalid`` raises a handler error, ``huge`` runs out of memory even alone, and
    batches larger than ``oom_above`` run out of memory.
    """

    name: str = "fake"
    kind: TaskKind = TaskKind.TEXT
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    hold_values: set[str] = field(default_factory=set)
    load_failures: int = 0
    oom_above: int | None = None
    steps: int = 0
    batches: list[list[str]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    finish_threads: set[str] = field(default_factory=set)
    saw_stop: threading.Event = field(default_factory=threading.Event)
    encode: bool = False
    clock: FakeClock | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    def validate(self, request: Item) -> None:
        if not request.value:
            raise InvalidInput("value", "is empty")

    def batch_key(self, request: Item) -> Hashable:
        return request.key

    def cost(self, request: Item) -> int:
        return request.cost

    def load(self, spec: LoadSpec) -> Any:
        self.threads.add(threading.current_thread().name)
        self.loads.append(spec.source)
        if self.load_failures:
            self.load_failures -= 1
            raise OSError(f"{spec.source} is not a model directory")
        return f"model:{spec.source}"

    def model_bytes(self, model: Any) -> int:
        return 1000

    def run_batch(self, model: Any, requests: Sequence[Item], ctx: BatchContext) -> list[Any]:
        values = [r.value for r in requests]
        self.threads.add(threading.current_thread().name)
        self.batches.append(values)
        if self.clock is not None:
            self.clock.now += max(r.seconds for r in requests)
        if self.hold_values & set(values):
            self.entered.set()
            while not self.gate.wait(0.005):
                if ctx.should_stop():
                    self.saw_stop.set()
                    raise_if_stopped(ctx)
        for step in range(1, self.steps + 1):
            raise_if_stopped(ctx)
            ctx.progress(step, self.steps)
        if any(v == "die" for v in values):
            raise WorkerDeath
        if any(v == "huge" for v in values) or (
            self.oom_above is not None and len(values) > self.oom_above
        ):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if any(v.startswith("bad") for v in values):
            raise ValueError(
                "cannot process " + ", ".join(v for v in values if v.startswith("bad"))
            )
        if len(values) == 1 and values[0] == "invalid":
            raise InvalidInput("value", "is not acceptable")
        for index, value in enumerate(values):
            ctx.partial(index, value[:1])
        return [v.upper() for v in values]

    def finish(self, output: Any) -> str:
        self.finish_threads.add(threading.current_thread().name)
        return f"<{output}>" if self.encode else output


def limits(**overrides: Any) -> ClassLimits:
    base = dict(
        window_s=0.0,
        max_batch=64,
        max_cost=10_000,
        queue_deadline_s=60.0,
        exec_timeout_s=60.0,
        default_batch_s=0.5,
    )
    base.update(overrides)
    return ClassLimits(**base)


def make_executor(
    *tasks: FakeTask,
    max_queue: int = 64,
    max_per_user: int = 4,
    budget_bytes: int | None = None,
    clock: FakeClock | None = None,
    stop_grace_s: float = 10.0,
    **limit_overrides: Any,
) -> Executor:
    class_limits = limits(**limit_overrides)
    config = ExecutorConfig(
        max_queue=max_queue,
        max_per_user=max_per_user,
        limits={kind: class_limits for kind in TaskKind},
        shutdown_timeout_s=5,
        stop_grace_s=stop_grace_s,
    )
    registry = ModelRegistry(device="cpu", budget_bytes=budget_bytes)
    return Executor(
        {t.name: t for t in tasks},
        {t.name: f"{t.name}-model" for t in tasks},
        LocalBackend(registry),
        config,
        **({} if clock is None else {"clock": clock}),
    )
