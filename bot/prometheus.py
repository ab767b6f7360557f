"""Prometheus metrics for the executor, served over HTTP when ``BOT_METRICS_PORT`` is set.

Waits, batches, outcomes and refusals are observed as they happen, so histograms and
counters see every event rather than the recent samples ``/stats`` uses. Queue depth and
memory are gauges read when Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.executor import EngineHealth, Executor, JobState, MetricsSnapshot
from bot.executor.metrics import ModelKey

log = logging.getLogger(__name__)

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""From a sentiment call in a few ms to an image batch or a long queue in minutes."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
REFUSAL_REASONS = ("queue_full", "user_limit")
"""Reasons the executor refuses with, created at zero so ``rate()`` sees the first one."""
SNAPSHOT_TIMEOUT_S = 5.0


class ExecutorMetrics:
    """The executor's metric families in one registry, kept current as events happen."""

    def __init__(
        self, executor: Executor, registry: CollectorRegistry, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._executor = executor
        # No `*_created` series beside every counter and histogram: Prometheus does not need
        # them, and they double the output. The flag is process-wide; the bot is the only
        # user of prometheus_client in its process.
        disable_created_metrics()
        self.wait = Histogram(
            "assistant_wait_seconds",
            "Time a job waited in its queue before its batch started.",
            ["task"],
            registry=registry,
            buckets=SECONDS_BUCKETS,
        )
        self.run = Histogram(
            "assistant_run_seconds",
            "Time one batch took on the accelerator (one observation per batch).",
            ["task"],
            registry=registry,
            buckets=SECONDS_BUCKETS,
        )
        self.batch_size = Histogram(
            "assistant_batch_size",
            "Jobs per batch.",
            ["task"],
            registry=registry,
            buckets=BATCH_BUCKETS,
        )
        self.jobs = Counter(
            "assistant_jobs",
            "Admitted jobs that ended, by outcome (done, failed, cancelled).",
            ["task", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "assistant_failures",
            "Jobs that failed, by why: an error's kind (a chat server's timeout, unreachable, "
            "unauthorized, rate_limited, server_error...) or its class.",
            ["task", "error"],
            registry=registry,
        )
        self.refusals = Counter(
            "assistant_refusals",
            "Submissions refused at once because the queue or the member's cap was full.",
            ["reason"],
            registry=registry,
        )
        for task in executor.tasks:
            self.wait.labels(task)
            self.run.labels(task)
            self.batch_size.labels(task)
            for state in JobState:
                if state.final:
                    self.jobs.labels(task, state.value)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        registry.register(_ExecutorState(executor, loop))
        executor.metrics.observers.append(self)

    def detach(self) -> None:
        self._executor.metrics.observers.remove(self)

    def on_wait(self, key: ModelKey, seconds: float) -> None:
        self.wait.labels(key[0]).observe(seconds)

    def on_batch(self, key: ModelKey, size: int, seconds: float) -> None:
        self.run.labels(key[0]).observe(seconds)
        self.batch_size.labels(key[0]).observe(size)

    def on_outcome(self, key: ModelKey, outcome: str) -> None:
        self.jobs.labels(key[0], outcome).inc()

    def on_refusal(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def on_failure(self, key: ModelKey, error: str) -> None:
        self.failures.labels(key[0], error).inc()


class _ExecutorState(Collector):
    """Gauges read at scrape time. The executor belongs to the event loop, so the snapshot
    is taken there; a loop stuck for seconds fails the scrape, which Prometheus shows as
    ``up == 0``."""

    def __init__(self, executor: Executor, loop: asyncio.AbstractEventLoop) -> None:
        self._executor = executor
        self._loop = loop

    async def _snapshot(
        self,
    ) -> tuple[MetricsSnapshot, EngineHealth, dict[str, int], dict[str, tuple[int, int]]]:
        executor = self._executor
        memory: dict[str, tuple[int, int]] = {}
        for backend in executor.backends:  # a worker per class of task: several per device
            for device, (allocated, reserved) in backend.device_memory().items():
                before = memory.get(device, (0, 0))
                memory[device] = (before[0] + allocated, before[1] + reserved)
        return (
            executor.snapshot(),
            executor.health(),
            dict(executor.metrics.callback_errors),
            memory,
        )

    def collect(self) -> Iterator[Metric]:
        snapshot, health, errors, device_memory = asyncio.run_coroutine_threadsafe(
            self._snapshot(), self._loop
        ).result(SNAPSHOT_TIMEOUT_S)
        yield GaugeMetricFamily(
            "assistant_engine_up",
            "1 while the executor's engine runs with no batch stuck past its limit and grace.",
            value=int(health.ok),
        )
        yield CounterMetricFamily(
            "assistant_engine_restarts",
            "Times the executor's engine failed unexpectedly and restarted itself.",
            value=health.restarts,
        )
        yield GaugeMetricFamily(
            "assistant_oldest_batch_seconds",
            "How long the longest-running batch has been on its device (0 when none runs).",
            value=health.oldest_batch_s or 0.0,
        )
        caught = CounterMetricFamily(
            "assistant_callback_errors",
            "Errors the engine caught in a callback (a job listener, a metrics observer...).",
            labels=["where"],
        )
        for where, count in sorted(errors.items()):
            caught.add_metric([where], count)
        yield caught
        depth = GaugeMetricFamily(
            "assistant_queue_depth",
            "Jobs waiting in a model's queue, not yet running.",
            labels=["task", "model"],
        )
        for stats in snapshot.models:
            depth.add_metric([stats.task, stats.model], stats.queued)
        yield depth
        yield GaugeMetricFamily(
            "assistant_jobs_outstanding",
            "Jobs admitted and not yet ended (queued or running); BOT_MAX_QUEUE caps it.",
            value=snapshot.outstanding,
        )
        memory = GaugeMetricFamily(
            "assistant_model_memory_bytes",
            "Memory held by each loaded model, on the device it sits on.",
            labels=["task", "model", "device"],
        )
        for info in snapshot.loaded:
            memory.add_metric([info.task, info.model, info.device], info.bytes)
        yield memory
        # Only once a worker has used CUDA: its allocator's counters, as it last reported them.
        if device_memory:
            gpu = GaugeMetricFamily(
                "assistant_gpu_memory_bytes",
                "GPU memory of the model workers: allocated by tensors, reserved by the allocator.",
                labels=["device", "kind"],
            )
            for device, (allocated, reserved) in sorted(device_memory.items()):
                gpu.add_metric([device, "allocated"], allocated)
                gpu.add_metric([device, "reserved"], reserved)
            yield gpu


class MetricsServer:
    """``/metrics`` on its own thread and registry (several can run in one process)."""

    def __init__(self, executor: Executor, host: str, port: int) -> None:
        registry = CollectorRegistry()
        self._metrics = ExecutorMetrics(executor, registry, asyncio.get_running_loop())
        try:
            self._httpd: WSGIServer
            self._thread: threading.Thread
            self._httpd, self._thread = start_http_server(port, host, registry)
        except BaseException:
            self._metrics.detach()
            raise
        self.host = host

    @property
    def port(self) -> int:
        """The bound port (the one picked when the setting is 0)."""
        return self._httpd.server_port

    def close(self) -> None:
        """Stop serving; blocks up to half a second while the server loop notices."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._metrics.detach()
