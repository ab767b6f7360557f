"""The Prometheus endpoint: what a scrape shows after real executor traffic."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from bot.app import running
from bot.executor import Busy, Executor
from bot.prometheus import MetricsServer
from bot.settings import Settings
from tests.fakes import FakeTask, Item, make_executor


class Scrape:
    """One scrape, parsed: family types and sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.samples if sample == name]


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


async def scrape(port: int) -> Scrape:
    """Off the event loop, like Prometheus: the exporter reads the executor on the loop."""
    return Scrape(await asyncio.to_thread(get, port))


async def hold(executor: Executor, task: FakeTask) -> asyncio.Future[str]:
    task.hold_values.add("hold")
    task.gate.clear()
    handle = executor.submit("fake", Item("hold"), user_id="u0")
    await asyncio.wait_for(asyncio.to_thread(task.entered.wait), 10)
    return asyncio.ensure_future(handle.result())


async def test_a_scrape_shows_queue_waits_batches_outcomes_and_refusals() -> None:
    task = FakeTask()
    async with make_executor(task, max_queue=6, max_per_user=1) as executor:
        server = MetricsServer(executor, "127.0.0.1", 0)
        try:
            blocker = await hold(executor, task)
            queued = [
                executor.submit("fake", Item(value), user_id=user)
                for value, user in [("a", "u1"), ("b", "u2"), ("c", "u3"), ("bad", "u4")]
            ]
            executor.submit("fake", Item("x"), user_id="u5").cancel()
            await asyncio.sleep(0)  # its slot is released by a done callback
            with pytest.raises(Busy):
                executor.submit("fake", Item("again"), user_id="u1")  # u1's one job waits
            queued.append(executor.submit("fake", Item("d"), user_id="u6"))
            with pytest.raises(Busy):
                executor.submit("fake", Item("e"), user_id="u7")  # six outstanding: full

            busy = await scrape(server.port)
            assert busy("assistant_queue_depth", task="fake", model="fake-model") == 5
            assert busy("assistant_jobs_outstanding") == 6
            assert busy("assistant_refusals_total", reason="user_limit") == 1
            assert busy("assistant_refusals_total", reason="queue_full") == 1
            assert busy("assistant_jobs_total", task="fake", outcome="cancelled") == 1
            assert busy("assistant_wait_seconds_count", task="fake") == 1  # only the held job
            assert busy("assistant_run_seconds_count", task="fake") == 0  # still running
            assert busy("assistant_model_memory_bytes", task="fake", model="fake-model",
                        device="cpu") == 1000  # fmt: skip
            assert busy("assistant_oldest_batch_seconds") > 0  # the held batch

            task.gate.set()
            await blocker
            results = await asyncio.gather(*(h.result() for h in queued), return_exceptions=True)
            assert [r for r in results if isinstance(r, str)] == ["A", "B", "C", "D"]

            done = await scrape(server.port)
        finally:
            task.gate.set()
            await asyncio.to_thread(server.close)

    assert done.types == {
        "assistant_wait_seconds": "histogram",
        "assistant_run_seconds": "histogram",
        "assistant_batch_size": "histogram",
        "assistant_jobs": "counter",
        "assistant_failures": "counter",
        "assistant_refusals": "counter",
        "assistant_queue_depth": "gauge",
        "assistant_jobs_outstanding": "gauge",
        "assistant_model_memory_bytes": "gauge",
        "assistant_engine_up": "gauge",
        "assistant_engine_restarts": "counter",
        "assistant_oldest_batch_seconds": "gauge",
        "assistant_callback_errors": "counter",
    }
    assert done("assistant_engine_up") == 1 and done("assistant_engine_restarts_total") == 0
    assert "assistant_gpu_memory_bytes" not in done.text  # CUDA never initialised here
    assert done("assistant_queue_depth", task="fake", model="fake-model") == 0
    assert done("assistant_jobs_outstanding") == 0
    # The held job ran alone, then the five queued ones as one batch.
    assert done("assistant_wait_seconds_count", task="fake") == 6
    assert done("assistant_run_seconds_count", task="fake") == 2
    assert done("assistant_batch_size_count", task="fake") == 2
    assert done("assistant_batch_size_sum", task="fake") == 6
    assert done("assistant_batch_size_bucket", task="fake", le="1.0") == 1
    assert done("assistant_batch_size_bucket", task="fake", le="4.0") == 1
    assert done("assistant_batch_size_bucket", task="fake", le="8.0") == 2
    assert done("assistant_jobs_total", task="fake", outcome="done") == 5
    assert done("assistant_jobs_total", task="fake", outcome="failed") == 1
    assert done("assistant_failures_total", task="fake", error="JobFailed") == 1
    assert done("assistant_jobs_total", task="fake", outcome="cancelled") == 1
    assert done("assistant_refusals_total", reason="queue_full") == 1
    assert done("assistant_wait_seconds_sum", task="fake") > 0


async def test_series_exist_at_zero_before_any_traffic() -> None:
    """So that rate() and histogram_quantile() work from the first event on."""
    tasks = FakeTask(), FakeTask(name="other")
    async with make_executor(*tasks) as executor:
        server = MetricsServer(executor, "127.0.0.1", 0)
        try:
            fresh = await scrape(server.port)
        finally:
            await asyncio.to_thread(server.close)
    for name in ("fake", "other"):
        assert fresh("assistant_wait_seconds_count", task=name) == 0
        assert fresh("assistant_batch_size_bucket", task=name, le="+Inf") == 0
        for outcome in ("done", "failed", "cancelled"):
            assert fresh("assistant_jobs_total", task=name, outcome=outcome) == 0
    assert fresh("assistant_refusals_total", reason="user_limit") == 0
    assert fresh.labels_of("assistant_queue_depth") == []  # no queue until a first job


async def test_gpu_memory_is_reported_once_cuda_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 1000 + index)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 2000 + index)
    async with make_executor(FakeTask()) as executor:
        server = MetricsServer(executor, "127.0.0.1", 0)
        try:
            result = await scrape(server.port)
        finally:
            await asyncio.to_thread(server.close)
    assert result.types["assistant_gpu_memory_bytes"] == "gauge"
    assert result("assistant_gpu_memory_bytes", device="cuda:0", kind="allocated") == 1000
    assert result("assistant_gpu_memory_bytes", device="cuda:1", kind="reserved") == 2001


def closed(port: int) -> bool:
    try:
        get(port)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    return False


def bot_settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, device="cpu", data_dir=tmp_path, **values)


async def test_the_bot_serves_metrics_while_running_and_stops_after(tmp_path: Path) -> None:
    async with running(bot_settings(tmp_path, metrics_port=0), metrics=True) as services:
        assert services.metrics is not None
        port = services.metrics.port
        served = await scrape(port)
        # Every task of the bot has its series, with no traffic yet.
        tasks = {labels["task"] for labels in served.labels_of("assistant_run_seconds_count")}
        assert tasks == set(services.executor.tasks) and "summarize" in tasks
        services.executor.metrics.record_refusal("queue_full")  # reaches the exporter
        assert (await scrape(port))("assistant_refusals_total", reason="queue_full") == 1
    assert await asyncio.to_thread(closed, port)
    assert services.executor.metrics.observers == []


async def test_one_off_commands_and_unset_ports_serve_nothing(tmp_path: Path) -> None:
    async with running(bot_settings(tmp_path, metrics_port=0), ["sentiment"]) as services:
        assert services.metrics is None
    async with running(bot_settings(tmp_path), metrics=True) as services:
        assert services.metrics is None


async def test_a_busy_port_leaves_the_bot_running_without_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = bot_settings(tmp_path, metrics_port=port)
        async with running(settings, metrics=True) as services:
            assert services.metrics is None
            assert services.executor.metrics.observers == []
    assert f"metrics are off: cannot listen on 127.0.0.1:{port}" in caplog.text
