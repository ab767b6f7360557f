"""The executor's scheduling and fault handling, with a scriptable fake task."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from bot.executor import (
    Busy,
    ExecutionTimeout,
    Executor,
    ExecutorConfig,
    JobCancelled,
    JobFailed,
    JobHandle,
    JobState,
    LocalBackend,
    ModelLoadError,
    ModelRegistry,
    OutOfMemory,
    QueueTimeout,
    ShuttingDown,
    UnknownTask,
    WorkerCrashed,
)
from handlers.base import BatchContext, InvalidInput, TaskKind
from tests.fakes import FakeClock, FakeTask, Item, WorkerDeath, limits, make_executor


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


async def resubmitting(executor: Executor, task: str, user: str, item: Item) -> None:
    """A member who sends ``item`` again as soon as each job ends, until cancelled."""
    while True:
        await executor.submit(task, item, user_id=user)


def fake_time_tasks() -> tuple[FakeClock, list[list[str]], FakeTask, FakeTask]:
    """A text and an image task whose batches take their items' seconds on a fake clock."""
    clock = FakeClock()
    batches: list[list[str]] = []
    text = FakeTask(name="text", batches=batches, clock=clock)
    image = FakeTask(name="image", kind=TaskKind.IMAGE, batches=batches, clock=clock)
    return clock, batches, text, image


async def test_cheap_requests_are_not_starved_by_another_members_expensive_ones() -> None:
    """Two members of one image model: one asks for 50-step images (5 s), the other for
    1-step ones (0.1 s). Counting jobs, they would alternate and the quick member would get
    2% of the device; counting GPU time, the quick member's jobs run until both used as
    much."""
    clock, batches, _, image = fake_time_tasks()
    async with make_executor(image, max_batch=1, max_per_user=3, clock=clock) as executor:
        painter = [
            asyncio.create_task(
                resubmitting(executor, "image", "painter", Item("big", cost=50, seconds=5))
            )
            for _ in range(2)
        ]
        while not batches:
            await asyncio.sleep(0)
        sketcher = [
            asyncio.create_task(
                resubmitting(executor, "image", "sketcher", Item("small", cost=1, seconds=0.1))
            )
            for _ in range(3)
        ]
        while batches.count(["small"]) < 20:
            await asyncio.sleep(0.001)
        for task in painter + sketcher:
            task.cancel()
    # The sketcher's first 20 jobs (2 s of device time) ran beside a few big ones, not 20
    # (a few: a big one may start in the instant no small one is waiting).
    assert batches[: batches.index(["small"]) + 20].count(["big"]) <= 5


async def test_an_expensive_request_is_not_starved_by_another_members_cheap_ones() -> None:
    clock, batches, text, image = fake_time_tasks()
    async with make_executor(text, image, max_batch=1, max_per_user=2, clock=clock) as executor:
        flood = [
            asyncio.create_task(resubmitting(executor, "text", "chatty", Item("t", seconds=0.01)))
            for _ in range(2)
        ]
        while len(batches) < 5:
            await asyncio.sleep(0)
        big = executor.submit("image", Item("i", seconds=5), user_id="x")
        await asyncio.wait_for(big, 30)
        for task in flood:
            task.cancel()
    # The image waited at most while the flood used about as much device time as the image
    # is estimated to take (0.5 s before any was measured here), not until the flood ended.
    assert batches.index(["i"]) < 100
    assert big.wait_s is not None and big.wait_s < 1.0


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


def broken_listener(event: Any) -> None:
    raise RuntimeError("a front end's bug")


async def test_a_listener_that_raises_stops_neither_its_job_nor_the_others() -> None:
    task = FakeTask(steps=2)
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        doomed = executor.submit("fake", Item("a"), user_id="a")
        calm = executor.submit("fake", Item("b"), user_id="b")
        seen: list[JobState] = []

        doomed.watch(broken_listener)
        doomed.watch(lambda event: seen.append(event.state))
        calm.watch(broken_listener)
        task.gate.set()
        assert await asyncio.wait_for(asyncio.gather(blocker, doomed, calm), 10) == [
            "HOLD",
            "A",
            "B",
        ]
        assert seen[-1] is JobState.DONE  # the other listener heard every event
        assert await executor.submit("fake", Item("c"), user_id="c") == "C"
        assert executor.metrics.callback_errors["listener"] >= 4
        assert executor.health().ok


async def test_positions_keep_updating_after_a_listener_error() -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        first = executor.submit("fake", Item("x"), user_id="a")
        second = executor.submit("fake", Item("y"), user_id="b")
        third = executor.submit("fake", Item("z"), user_id="c")
        await settle()

        second.watch(broken_listener)  # raises on the next position change
        assert [h.position for h in (first, second, third)] == [0, 1, 2]
        first.cancel()
        await settle()
        assert [second.position, third.position] == [0, 1]
        second.cancel()
        await settle()
        assert third.position == 0
        task.gate.set()
        await blocker
        assert await third == "Z"


async def test_the_engine_restarts_after_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        schedule = executor.scheduler.schedule
        failures = iter([RuntimeError("a bug in the engine")])

        def flaky(now: float) -> Any:
            for error in failures:
                raise error
            return schedule(now)

        monkeypatch.setattr(executor.scheduler, "schedule", flaky)
        assert await asyncio.wait_for(executor.submit("fake", Item("a"), user_id=1), 10) == "A"
        health = executor.health()
        assert health.alive and health.restarts == 1 and health.ok


def ignoring_stop(task: FakeTask) -> Callable[..., list[Any]]:
    """A ``run_batch`` that holds until the task's gate opens, deaf to ``should_stop``."""

    def run_batch(model: Any, requests: Sequence[Item], ctx: BatchContext) -> list[Any]:
        task.entered.set()
        task.gate.wait()
        return [[r.value.upper()] for r in requests]

    return run_batch


async def test_a_batch_stuck_past_its_timeout_lets_other_work_start_within_the_grace() -> None:
    """A handler that never checks ``should_stop`` (one long forward pass)."""
    clock = FakeClock()
    stuck = FakeTask(name="stuck", clock=clock)
    other = FakeTask(name="other")
    stuck.run_batch = ignoring_stop(stuck)  # type: ignore[method-assign]
    stuck.gate.clear()
    async with make_executor(stuck, other, exec_timeout_s=0.1, stop_grace_s=0.2) as executor:
        hung = executor.submit("stuck", Item("forever"), user_id="a")
        await wait_entered(stuck)
        waiting = executor.submit("other", Item("next"), user_id="b")
        with pytest.raises(ExecutionTimeout):
            await asyncio.wait_for(hung, 10)
        # It ran while the stuck call still holds its (abandoned) thread: the gate is shut.
        assert await asyncio.wait_for(waiting, 10) == "NEXT" and not stuck.gate.is_set()
        assert executor.health().ok
        stuck.gate.set()


async def test_a_members_place_is_held_until_the_device_returns() -> None:
    task = FakeTask()
    task.run_batch = ignoring_stop(task)  # type: ignore[method-assign]
    task.gate.clear()
    async with make_executor(task, max_per_user=1) as executor:
        running = executor.submit("fake", Item("slow"), user_id="a")
        await wait_entered(task)
        running.cancel()
        with pytest.raises(JobCancelled):
            await running
        # The member was told at once, but the device still works on it: no second place.
        with pytest.raises(Busy):
            executor.submit("fake", Item("again"), user_id="a")
        task.gate.set()
        for _ in range(500):
            if executor.scheduler.outstanding == 0:
                break
            await asyncio.sleep(0.01)
        assert await executor.submit("fake", Item("again"), user_id="a") == ["AGAIN"]


async def test_a_job_cancelled_as_its_batch_is_chosen_stays_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = FakeTask()
    async with make_executor(task) as executor:
        handles: list[JobHandle] = []
        schedule = executor.scheduler.schedule

        def click_cancel_meanwhile(now: float) -> Any:
            batch = schedule(now)
            if batch is not None and handles:
                asyncio.get_running_loop().call_soon(handles[0].cancel)  # before the runner
            return batch

        monkeypatch.setattr(executor.scheduler, "schedule", click_cancel_meanwhile)
        handles.append(executor.submit("fake", Item("x"), user_id="a"))
        events = [event async for event in handles[0].events()]
        with pytest.raises(JobCancelled):
            await handles[0]
        assert handles[0].state is JobState.CANCELLED and events[-1].state is JobState.CANCELLED
        assert all(event.state is not JobState.RUNNING for event in events)
        assert await executor.submit("fake", Item("y"), user_id="a") == "Y"


async def test_a_thread_given_up_on_never_restarts_a_second_worker() -> None:
    task = FakeTask()

    def stuck_then_dead(model: Any, requests: Sequence[Item], ctx: BatchContext) -> list[Any]:
        task.entered.set()
        task.gate.wait()
        raise WorkerDeath  # the abandoned thread ends badly, long after it was replaced

    task.run_batch = stuck_then_dead  # type: ignore[method-assign]
    task.gate.clear()
    async with make_executor(task, exec_timeout_s=0.1, stop_grace_s=0.1) as executor:
        with pytest.raises(ExecutionTimeout):
            await asyncio.wait_for(executor.submit("fake", Item("x"), user_id="a"), 10)
        task.gate.set()
        for _ in range(100):
            workers = [t for t in threading.enumerate() if t.name == "inference-worker"]
            if len(workers) == 1:
                break
            await asyncio.sleep(0.01)
        assert len([t for t in threading.enumerate() if t.name == "inference-worker"]) == 1


@dataclass
class Streaming(FakeTask):
    """Streams each value letter by letter before the batch's fate is known."""

    def run_batch(self, model: Any, requests: Sequence[Item], ctx: BatchContext) -> list[Any]:
        for index, request in enumerate(requests):
            for end in range(1, len(request.value) + 1):
                ctx.partial(index, request.value[:end])
        return super().run_batch(model, requests, ctx)


async def test_a_retried_batch_does_not_stream_again_what_was_shown() -> None:
    task = Streaming(oom_above=1)  # the pair runs out of memory; each runs again alone
    async with make_executor(task) as executor:
        blocker = await hold(executor, task)
        first = executor.submit("fake", Item("abc"), user_id="a")
        second = executor.submit("fake", Item("xyz"), user_id="b")
        streams: dict[str, list[str]] = {"abc": [], "xyz": []}
        for name, handle in (("abc", first), ("xyz", second)):
            handle.watch(lambda e, name=name: e.partial and streams[name].append(e.partial))
        task.gate.set()
        await blocker
        assert await asyncio.gather(first, second) == ["ABC", "XYZ"]
    assert task.batches[1:] == [["abc", "xyz"], ["abc"], ["xyz"]]
    assert streams == {"abc": ["a", "ab", "abc"], "xyz": ["x", "xy", "xyz"]}


class Growing(LocalBackend):
    """A task's deployment as the engine sees it: one replica, then two once one starts."""

    def __init__(self) -> None:
        super().__init__(ModelRegistry("cpu"))
        self.replicas = 1
        self.changed: Callable[[], None] | None = None

    def capacity(self) -> int:
        return self.replicas

    def watch_capacity(self, changed: Callable[[], None]) -> None:
        self.changed = changed


async def test_a_batch_waiting_for_room_starts_when_the_backend_grows() -> None:
    task = FakeTask()
    backend = Growing()
    config = ExecutorConfig(limits={kind: limits() for kind in TaskKind})
    async with Executor({"fake": task}, {"fake": "fake-model"}, {"fake": backend}, config) as ex:
        blocker = await hold(ex, task)
        waiting = ex.submit("fake", Item("next", key="other"), user_id="b")  # not in its batch
        await settle()
        assert waiting.state is JobState.QUEUED  # the one replica is busy
        backend.replicas = 2
        assert backend.changed is not None
        backend.changed()  # nothing else happens that would wake the engine
        await settle()
        assert waiting.state is JobState.RUNNING
        task.gate.set()
        assert await asyncio.wait_for(asyncio.gather(blocker, waiting), 10) == ["HOLD", "NEXT"]


async def test_a_backend_serving_several_tasks_is_one_slot_and_others_run_beside_it() -> None:
    """A worker per class: the image worker busy with a batch holds up neither text task,
    and the two text tasks, sharing a worker, take turns on it."""
    image = FakeTask(name="draw", kind=TaskKind.IMAGE)
    words, more = FakeTask(name="words"), FakeTask(name="more")
    drawing = LocalBackend(ModelRegistry("cpu"))
    text = LocalBackend(ModelRegistry("cpu"))
    config = ExecutorConfig(limits={kind: limits() for kind in TaskKind})
    tasks = {"draw": image, "words": words, "more": more}
    models = {name: f"{name}-model" for name in tasks}
    async with Executor(
        tasks, models, {"draw": drawing, "words": text, "more": text}, config
    ) as ex:
        assert ex.backends == [drawing, text]
        blocker = await hold(ex, image)
        words.hold_values.add("hold")
        words.gate.clear()
        first = ex.submit("words", Item("hold"), user_id="a")
        await wait_entered(words)
        second = ex.submit("more", Item("next"), user_id="b")
        await settle()
        assert second.state is JobState.QUEUED  # the text worker is busy: one batch at a time
        words.gate.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == ["HOLD", "NEXT"]
        assert blocker.state is JobState.RUNNING  # the image batch still holds its own worker
        image.gate.set()
        assert await asyncio.wait_for(blocker, 10) == "HOLD"
