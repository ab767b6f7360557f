"""The executor's scheduling and fault handling, with a scriptable fake task."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from bot.executor import (
    Busy,
    ExecutionTimeout,
    Executor,
    JobCancelled,
    JobFailed,
    JobHandle,
    JobState,
    ModelLoadError,
    OutOfMemory,
    QueueTimeout,
    ShuttingDown,
    UnknownTask,
    WorkerCrashed,
)
from handlers.base import BatchContext, InvalidInput, TaskKind
from tests.fakes import FakeTask, Item, make_executor


async def wait_entered(task: FakeTask) -> None:
    """Until the worker thread is inside a held batch."""
    await asyncio.wait_for(asyncio.to_thread(task.entered.wait), 10)


async def settle() -> None:
    """Let every ready callback on the loop run (no wall-clock waiting)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def hold(executor: Executor, task: FakeTask, user: str = "holder") -> JobHandle:
    """Occupy the worker with a batch that waits for ``task.gate``."""
    task.hold_values.add("hold")
    task.gate.clear()
    handle = executor.submit(task.name, Item("hold"), user_id=user)
    await wait_entered(task)
    return handle


async def test_single_request_runs_and_returns_result() -> None:
    task = FakeTask()
    async with make_executor(task, window_s=60) as executor:
        # A lone request must not wait for the (long) window.
        result = await asyncio.wait_for(executor.submit("fake", Item("hi"), user_id=1), 10)
    assert result == "HI"


async def test_invalid_input_and_unknown_task_are_refused_at_submit() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        with pytest.raises(InvalidInput) as err:
            executor.submit("fake", Item(""), user_id=1)
        assert err.value.option == "value"
        with pytest.raises(UnknownTask, match="fake"):
            executor.submit("nope", Item("x"), user_id=1)
        assert executor.snapshot().outstanding == 0


async def test_per_user_cap_refuses_with_retry_after() -> None:
    task = FakeTask()
    async with make_executor(task, max_per_user=2, default_batch_s=3.0) as executor:
        blocker = await hold(executor, task, user="u1")
        queued = executor.submit("fake", Item("b"), user_id="u1")
        with pytest.raises(Busy) as err:
            executor.submit("fake", Item("c"), user_id="u1")
        assert err.value.retry_after >= 1
        assert "in progress" in str(err.value)
        # Another user is not affected by u1's cap.
        other = executor.submit("fake", Item("d"), user_id="u2")
        task.gate.set()
        assert await blocker == "HOLD"
        assert await queued == "B"
        assert await other == "D"
        assert executor.snapshot().refused == {"user_limit": 1}
        # Once u1's jobs finished, u1 may submit again.
        assert await executor.submit("fake", Item("e"), user_id="u1") == "E"


async def test_global_cap_refuses_when_queue_full() -> None:
    task = FakeTask()
    async with make_executor(task, max_queue=3, max_per_user=5) as executor:
        blocker = await hold(executor, task)
        queued = [executor.submit("fake", Item(f"j{i}"), user_id=f"u{i}") for i in range(2)]
        with pytest.raises(Busy, match="busy") as err:
            executor.submit("fake", Item("late"), user_id="u9")
        assert err.value.retry_after >= 1
        task.gate.set()
        await blocker
        assert [await h for h in queued] == ["J0", "J1"]


async def test_round_robin_between_users_within_a_batch() -> None:
    task = FakeTask()
    async with make_executor(task, max_batch=2, max_per_user=3) as executor:
        blocker = await hold(executor, task)
        handles = [
            executor.submit("fake", Item(value), user_id=value[0])
            for value in ["a1", "a2", "a3", "b1", "c1", "c2"]
        ]
        await settle()
        # Positions follow round robin order, not arrival order.
        assert [h.position for h in handles] == [0, 3, 5, 1, 2, 4]
        task.gate.set()
        await blocker
        await asyncio.gather(*handles)
    assert task.batches[1:] == [["a1", "b1"], ["c1", "a2"], ["c2", "a3"]]


async def test_batches_group_compatible_jobs_only() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        handles = [
            executor.submit("fake", Item(f"{key}{i}", key=key), user_id=f"user{i}")
            for i, key in enumerate(["x", "y", "x", "y", "x"])
        ]
        task.gate.set()
        await blocker
        assert await asyncio.gather(*handles) == ["X0", "Y1", "X2", "Y3", "X4"]
    assert sorted(task.batches[1:]) == [["x0", "x2", "x4"], ["y1", "y3"]]


async def test_batch_respects_cost_budget() -> None:
    task = FakeTask()
    async with make_executor(task, max_cost=10) as executor:
        blocker = await hold(executor, task)
        handles = [
            executor.submit("fake", Item(f"v{i}", cost=4), user_id=f"user{i}") for i in range(5)
        ]
        # One request over the budget still runs, alone.
        big = executor.submit("fake", Item("big", cost=50), user_id="big")
        task.gate.set()
        await blocker
        await asyncio.gather(big, *handles)
    assert task.batches[1:] == [["v0", "v1"], ["v2", "v3"], ["v4"], ["big"]]


async def test_window_holds_a_burst_until_full_or_expired() -> None:
    task = FakeTask()
    async with make_executor(task, window_s=60, max_batch=3) as executor:
        first = await hold(executor, task)  # lone: dispatched at once
        second = executor.submit("fake", Item("s"), user_id="u2")
        third = executor.submit("fake", Item("t"), user_id="u3")
        task.gate.set()
        assert await first == "HOLD"
        await settle()
        # Traffic is concurrent, so the pair waits for the window to fill the batch.
        assert second.state is JobState.QUEUED and third.state is JobState.QUEUED
        fourth = executor.submit("fake", Item("f"), user_id="u4")
        assert await asyncio.wait_for(asyncio.gather(second, third, fourth), 10) == [
            "S",
            "T",
            "F",
        ]
    assert task.batches == [["hold"], ["s", "t", "f"]]


async def test_window_expiry_dispatches_partial_batch() -> None:
    task = FakeTask()
    async with make_executor(task, window_s=0.05, max_batch=8) as executor:
        blocker = await hold(executor, task)
        task.gate.set()
        queued = executor.submit("fake", Item("w"), user_id="u2")
        assert await asyncio.wait_for(queued, 10) == "W"
        await blocker
    assert task.batches[-1] == ["w"]


async def test_model_queues_interleave_so_text_is_not_starved() -> None:
    run_order: list[list[str]] = []
    text = FakeTask(name="text", batches=run_order)
    image = FakeTask(name="image", kind=TaskKind.IMAGE, batches=run_order)
    async with make_executor(text, image, max_batch=1) as executor:
        blocker = await hold(executor, image)
        images = [executor.submit("image", Item(f"i{n}"), user_id=f"u{n}") for n in range(4)]
        quick = executor.submit("text", Item("t"), user_id="t")
        image.gate.set()
        await blocker
        await asyncio.gather(quick, *images)
    # The text job waits for one image batch, not for the whole image backlog.
    assert run_order == [["hold"], ["i0"], ["t"], ["i1"], ["i2"], ["i3"]]


async def test_queue_deadline_refuses_jobs_that_waited_too_long() -> None:
    task = FakeTask()
    async with make_executor(task, queue_deadline_s=0.05) as executor:
        blocker = await hold(executor, task)
        late = executor.submit("fake", Item("late"), user_id="u2")
        with pytest.raises(QueueTimeout):
            await asyncio.wait_for(late, 10)
        task.gate.set()
        await blocker
    assert ["late"] not in task.batches


async def test_execution_timeout_stops_the_batch_cooperatively() -> None:
    task = FakeTask()
    async with make_executor(task, exec_timeout_s=0.05) as executor:
        task.hold_values.add("slow")
        task.gate.clear()
        with pytest.raises(ExecutionTimeout):
            await asyncio.wait_for(executor.submit("fake", Item("slow"), user_id=1), 10)
        assert await asyncio.to_thread(task.saw_stop.wait, 10)
        task.gate.set()
        # The worker is free again.
        assert await executor.submit("fake", Item("next"), user_id=1) == "NEXT"


async def test_cancel_queued_job_removes_it_and_updates_positions() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        first = executor.submit("fake", Item("x"), user_id="a")
        second = executor.submit("fake", Item("y"), user_id="b")
        await settle()
        events = second.events()
        assert (await anext(events)).position == 1
        assert first.cancel()
        moved = await anext(events)
        assert moved.state is JobState.QUEUED and moved.position == 0
        with pytest.raises(JobCancelled):
            await first
        assert not first.cancel()  # already ended
        task.gate.set()
        await blocker
        assert await second == "Y"
    assert all("x" not in batch for batch in task.batches)


async def test_cancel_running_job_stops_the_batch() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        running = await hold(executor, task)
        assert running.state is JobState.RUNNING
        assert running.cancel("stopped by test")
        with pytest.raises(JobCancelled, match="stopped by test"):
            await running
        assert await asyncio.to_thread(task.saw_stop.wait, 10)
        task.gate.set()
        assert await executor.submit("fake", Item("after"), user_id=2) == "AFTER"


async def test_events_report_queue_running_progress_partial_and_done() -> None:
    task = FakeTask(steps=2)
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        handle = executor.submit("fake", Item("ev"), user_id="u2")
        seen = []

        async def follow() -> None:
            async for event in handle.events():
                seen.append(event)

        follower = asyncio.create_task(follow())
        await settle()
        task.gate.set()
        await blocker
        assert await handle == "EV"
        await follower
    assert seen[0].state is JobState.QUEUED and seen[0].position == 0
    assert seen[0].eta_s is not None and seen[0].eta_s > 0
    assert [(e.step, e.total) for e in seen if e.step] == [(1, 2), (2, 2)]
    assert [e.partial for e in seen if e.partial] == ["e"]
    assert seen[-1].state is JobState.DONE
    assert JobState.RUNNING in [e.state for e in seen]


async def test_out_of_memory_splits_the_batch_and_retries() -> None:
    task = FakeTask(oom_above=2)
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        handles = [executor.submit("fake", Item(f"m{i}"), user_id=f"u{i}") for i in range(6)]
        task.gate.set()
        await blocker
        assert await asyncio.gather(*handles) == [f"M{i}" for i in range(6)]
    assert task.batches[1:] == [
        ["m0", "m1", "m2", "m3", "m4", "m5"],
        ["m0", "m1", "m2"],
        ["m0"],
        ["m1", "m2"],
        ["m3", "m4", "m5"],
        ["m3"],
        ["m4", "m5"],
    ]


async def test_out_of_memory_alone_fails_only_that_job() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        ok = executor.submit("fake", Item("ok"), user_id="a")
        huge = executor.submit("fake", Item("huge"), user_id="b")
        task.gate.set()
        await blocker
        assert await ok == "OK"
        with pytest.raises(OutOfMemory, match="smaller"):
            await huge


async def test_a_failing_item_fails_only_its_job() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        values = ["p", "bad-one", "q", "invalid", "r"]
        handles = [executor.submit("fake", Item(v), user_id=v) for v in values]
        task.gate.set()
        await blocker
        results = await asyncio.gather(*handles, return_exceptions=True)
    assert results[0] == "P" and results[2] == "Q" and results[4] == "R"
    assert isinstance(results[1], JobFailed) and "bad-one" in str(results[1])
    assert isinstance(results[3], InvalidInput)  # handler errors reach the user as they are
    assert task.batches[1] == values  # tried together first


async def test_model_load_failure_fails_jobs_and_is_retried() -> None:
    task = FakeTask(load_failures=1)
    async with make_executor(task) as executor:
        with pytest.raises(ModelLoadError, match="fake-model"):
            await executor.submit("fake", Item("one"), user_id=1)
        assert await executor.submit("fake", Item("two"), user_id=1) == "TWO"
    assert task.loads == ["fake-model", "fake-model"]


async def test_worker_crash_fails_its_jobs_and_worker_restarts() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        with pytest.raises(WorkerCrashed):
            await executor.submit("fake", Item("die"), user_id=1)
        assert await executor.submit("fake", Item("alive"), user_id=1) == "ALIVE"


async def test_model_work_on_one_thread_and_encoding_in_cpu_pool() -> None:
    task = FakeTask(encode=True)
    async with make_executor(task) as executor:
        handles = [executor.submit("fake", Item(f"z{i}"), user_id=i) for i in range(8)]
        assert await asyncio.gather(*handles) == [f"<Z{i}>" for i in range(8)]
    assert task.threads == {"inference-worker"}
    assert task.finish_threads and all(n.startswith("cpu-finish") for n in task.finish_threads)
    assert threading.current_thread().name not in task.finish_threads


async def test_shutdown_cancels_queued_finishes_running_and_releases_models() -> None:
    task = FakeTask()
    executor = make_executor(task)
    await executor.start()
    running = await hold(executor, task)
    queued = executor.submit("fake", Item("q"), user_id="other")
    closing = asyncio.create_task(executor.shutdown(timeout=10))
    with pytest.raises(JobCancelled, match="shutting down"):
        await queued
    with pytest.raises(ShuttingDown):
        executor.submit("fake", Item("new"), user_id="x")
    assert executor.snapshot().loaded  # still loaded while running work finishes
    task.gate.set()
    assert await running == "HOLD"
    await closing
    assert executor.snapshot().loaded == []
    assert ["q"] not in task.batches


async def test_shutdown_timeout_stops_running_work_with_a_reason() -> None:
    task = FakeTask()
    executor = make_executor(task)
    await executor.start()
    running = await hold(executor, task)
    await executor.shutdown(timeout=0.05)
    with pytest.raises(JobCancelled, match="shutting down"):
        await running
    assert await asyncio.to_thread(task.saw_stop.wait, 10)


async def test_shutdown_now_stops_running_work_and_survives_a_cancelled_caller() -> None:
    """A second Ctrl-C: the first caller was cancelled mid-wait, the next one hurries."""
    task = FakeTask()
    executor = make_executor(task)
    await executor.start()
    running = await hold(executor, task)
    first = asyncio.create_task(executor.shutdown(timeout=3600))
    await settle()
    first.cancel()
    await asyncio.wait_for(executor.shutdown(now=True), 10)
    with pytest.raises(JobCancelled, match="stopped: the bot is shutting down"):
        await running
    assert await asyncio.to_thread(task.saw_stop.wait, 10)
    assert executor.snapshot().loaded == []


async def test_metrics_snapshot_reports_queues_latency_batches_and_models() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        handles = [executor.submit("fake", Item(f"k{i}"), user_id=i) for i in range(3)]
        snapshot = executor.snapshot()
        assert snapshot.queued == 3 and snapshot.outstanding == 4
        task.gate.set()
        await blocker
        await asyncio.gather(*handles)
        snapshot = executor.snapshot()
    (stats,) = snapshot.models
    assert (stats.task, stats.model) == ("fake", "fake-model")
    assert stats.batch_sizes == {1: 1, 3: 1}
    assert stats.wait.count == 4 and stats.run.count == 2
    assert stats.outcomes == {"done": 4}
    assert [(m.task, m.model, m.bytes) for m in snapshot.loaded] == [("fake", "fake-model", 1000)]


class _Tensorish:
    """Stands for activations a failed batch allocated."""


@dataclass(eq=False)
class RemembersOom(FakeTask):
    """Runs out of memory on batches of two or more; records whether the failed batch's
    objects were still alive when the smaller retry began."""

    refs: list[weakref.ref[_Tensorish]] = field(default_factory=list)
    alive_at_retry: list[bool] = field(default_factory=list)

    def run_batch(self, model: Any, requests: Sequence[Item], ctx: BatchContext) -> list[Any]:
        self.alive_at_retry.append(any(ref() is not None for ref in self.refs))
        activations = _Tensorish()
        self.refs.append(weakref.ref(activations))
        if len(requests) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return [r.value for r in requests]


async def test_out_of_memory_retries_start_after_the_failed_batch_is_freed() -> None:
    task = RemembersOom()
    async with make_executor(task) as executor:
        # Submitted in one loop turn, the two share a batch.
        handles = [executor.submit("fake", Item(f"m{i}"), user_id=f"u{i}") for i in range(2)]
        assert await asyncio.wait_for(asyncio.gather(*handles), 10) == ["m0", "m1"]
    assert len(task.alive_at_retry) == 3 and not any(task.alive_at_retry[1:])
