"""A task for the model worker process, driven by its requests' values (the process gets
a pickled copy, so it cannot share events or flags with the test)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.base import BatchContext, InvalidInput, LoadSpec, Task, TaskKind, raise_if_stopped


@dataclass(frozen=True)
class Order:
    """What the worker is to do: see ``RemoteTask.run_batch``."""

    value: str
    arg: str = ""


@dataclass(frozen=True)
class Done:
    value: str
    model_pid: int
    """The process that loaded the model (and ran the batch)."""
    finish_pid: int
    finish_thread: str


class RemoteTask(Task[Order, Done]):
    kind = TaskKind.TEXT

    def __init__(self, name: str = "remote") -> None:
        self.name = name  # type: ignore[misc]

    def load(self, spec: LoadSpec) -> int:
        return os.getpid()

    def model_bytes(self, model: Any) -> int:
        return 10

    def run_batch(self, model: int, requests: Sequence[Order], ctx: BatchContext) -> list[Any]:
        for order in requests:
            if order.value == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if order.value == "hold-once" and not Path(order.arg).exists():
                # The first run says where it runs and waits to be killed; a retry goes on.
                Path(order.arg).write_text(str(os.getpid()))
                while True:
                    time.sleep(0.01)
            if order.value == "hang":  # one long call that never looks at should_stop
                time.sleep(3600)
            if order.value == "bad":
                raise ValueError("cannot process bad")
            if order.value == "invalid":
                raise InvalidInput("value", "is not acceptable")
            if order.value == "touch":
                Path(order.arg).touch()
            if order.value in ("wait", "loop"):  # until a file appears, or until stopped
                while not (order.value == "wait" and Path(order.arg).exists()):
                    raise_if_stopped(ctx)
                    time.sleep(0.01)
        for step in (1, 2):
            ctx.progress(step, 2)
        for index, order in enumerate(requests):
            ctx.partial(index, order.value[:1])
        return [(order.value, model) for order in requests]

    def finish(self, output: tuple[str, int]) -> Any:
        value, model_pid = output
        if value == "unpicklable":
            return threading.Lock()
        return Done(value.upper(), model_pid, os.getpid(), threading.current_thread().name)


class RawRemoteTask(RemoteTask):
    """Its outputs are its results: they go back with the batch, not encoded one by one."""

    finish = Task.finish  # type: ignore[assignment]

    def run_batch(self, model: int, requests: Sequence[Order], ctx: BatchContext) -> list[Any]:
        return [threading.Lock() if o.value == "unpicklable" else o.value for o in requests]
