"""Chat on continuous batching, through the real executor and the tiny chat model: a
conversation joins the running batch at the next step, and one that is cancelled or runs
out of time leaves it and frees its row."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import handlers.chat
from bot.app import chat_task
from bot.executor import (
    ExecutionTimeout,
    Executor,
    ExecutorConfig,
    JobCancelled,
    JobHandle,
    LocalBackend,
    ModelRegistry,
)
from bot.executor.job import JobState
from bot.executor.process import ProcessBackend, WorkerSpec
from bot.settings import ChatSettings, Settings
from handlers.chat import ChatRequest, ChatResult, ChatTask
from handlers.continuous import ContinuousGenerator
from handlers.kinds import TaskKind
from tests.fakes import limits
from tests.handlers_support import RecordingContext, load

LONG, SHORT = 160, 8
"""Answer lengths in tokens: the tiny model's stop token never wins, so each runs to it."""


@pytest.fixture(autouse=True)
def quiet_manager() -> None:
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.WARNING)


def executor_for(
    task: ChatTask, model: Path, backend: object = None, exec_timeout_s: float = 60.0
) -> Executor:
    return Executor(
        {"chat": task},
        {"chat": str(model)},
        backend or LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(
            max_per_user=4,
            limits={kind: limits(max_batch=4, exec_timeout_s=exec_timeout_s) for kind in TaskKind},
        ),
    )


async def first_text(handle: JobHandle) -> None:
    """Until the job has streamed some of its answer: it is generating."""
    async for event in handle.events():
        if event.partial:
            return
        assert not event.state.final, event


@pytest.fixture
async def continuous(tiny_chat: Path) -> AsyncIterator[Executor]:
    async with executor_for(ChatTask(continuous="on", max_running=2), tiny_chat) as executor:
        yield executor


def generator_of(executor: Executor, tiny_chat: Path) -> ContinuousGenerator:
    backend = executor.backend
    assert isinstance(backend, LocalBackend)
    generator = backend.registry.get(executor.tasks["chat"], str(tiny_chat)).continuous
    assert generator is not None
    return generator


async def test_a_conversation_arriving_mid_answer_starts_and_ends_before_it(
    continuous: Executor,
) -> None:
    long = continuous.submit("chat", ChatRequest("tell me everything", max_tokens=LONG),
                             user_id="alice")  # fmt: skip
    await first_text(long)
    short = continuous.submit("chat", ChatRequest("hi", max_tokens=SHORT), user_id="bob")
    answer = await short
    assert isinstance(answer, ChatResult) and answer.tokens == SHORT
    assert not long.done(), "the short answer waited for the long one"
    assert (await long).tokens == LONG


async def test_static_batching_makes_the_newcomer_wait(tiny_chat: Path) -> None:
    """The same arrivals without continuous batching: the contrast that the test above
    measures (the long batch holds the device until it ends)."""
    async with executor_for(ChatTask(continuous="off"), tiny_chat) as executor:
        long = executor.submit("chat", ChatRequest("tell me everything", max_tokens=LONG),
                               user_id="alice")  # fmt: skip
        await first_text(long)
        short = executor.submit("chat", ChatRequest("hi", max_tokens=SHORT), user_id="bob")
        await short
        assert long.done()


async def test_a_cancelled_conversation_leaves_the_batch_and_frees_its_row(
    tiny_chat: Path,
) -> None:
    task = ChatTask(continuous="on", max_running=1)  # one row: the next must take its place
    async with executor_for(task, tiny_chat) as executor:
        long = executor.submit("chat", ChatRequest("tell me everything", max_tokens=LONG),
                               user_id="alice")  # fmt: skip
        await first_text(long)
        waiting = executor.submit("chat", ChatRequest("hi", max_tokens=SHORT), user_id="bob")
        now = time.monotonic()  # the executor's clock
        assert executor.scheduler.schedule(now) is None  # no free row
        assert executor.scheduler.next_ready_in(now) is None  # nor a wake-up for it
        assert waiting.state is JobState.QUEUED
        assert long.cancel()
        with pytest.raises(JobCancelled):
            await long
        assert (await waiting).tokens == SHORT
        generator = generator_of(executor, tiny_chat)
        for _ in range(100):  # the manager drops the row at its next step
            if generator.running == 0:
                break
            await asyncio.sleep(0.02)
        assert generator.running == 0
        assert executor.scheduler.outstanding == 0
        assert long.gpu_s is not None and long.gpu_s > 0


async def test_a_row_past_its_execution_limit_times_out_and_leaves(tiny_chat: Path) -> None:
    task = ChatTask(continuous="on", max_running=2)
    async with executor_for(task, tiny_chat, exec_timeout_s=0.1) as executor:
        await executor.preload("chat")  # joining takes milliseconds, the answer far longer
        slow = executor.submit("chat", ChatRequest("go on", max_tokens=LONG), user_id="alice")
        with pytest.raises(ExecutionTimeout):
            await slow
        assert executor.scheduler.outstanding == 0
        quick = executor.submit("chat", ChatRequest("hi", max_tokens=SHORT), user_id="alice")
        assert (await quick).tokens == SHORT


async def test_a_worker_process_streams_rows_and_passes_cancellations_on(
    tiny_chat: Path,
) -> None:
    task = ChatTask(continuous="on", max_running=2)
    backend = ProcessBackend({"chat": task}, WorkerSpec("cpu", log_level=logging.WARNING))
    async with executor_for(task, tiny_chat, backend) as executor:
        long = executor.submit("chat", ChatRequest("tell me everything", max_tokens=LONG),
                               user_id="alice")  # fmt: skip
        await first_text(long)
        short = executor.submit("chat", ChatRequest("hi", max_tokens=SHORT), user_id="bob")
        assert (await short).tokens == SHORT
        assert not long.done()
        long.cancel()
        with pytest.raises(JobCancelled):
            await long
        again = executor.submit("chat", ChatRequest("hi", max_tokens=SHORT), user_id="alice")
        assert (await again).tokens == SHORT
        assert executor.scheduler.outstanding == 0


class NeverAbandoned(RecordingContext):
    def abandoned(self, index: int) -> bool:
        return False


def test_greedy_answers_match_static_batching(tiny_chat: Path) -> None:
    """Temperature 0 stays greedy on the continuous path: the same words as ``generate``."""
    requests = [ChatRequest("hello there", max_tokens=24), ChatRequest("two plus two?")]
    static = ChatTask(continuous="off", default_new_tokens=24)
    expected = static.run_batch(load(static, tiny_chat), requests, NeverAbandoned())
    task = ChatTask(continuous="on", default_new_tokens=24)
    model = load(task, tiny_chat)
    try:
        ctx = NeverAbandoned()
        answers = [f.result(timeout=60) for f in task.run_batch(model, requests, ctx)]
    finally:
        task.unload(model)
    assert [a.text for a in answers] == [e.text for e in expected]
    assert ctx.partials[0][-1] == answers[0].text[: len(ctx.partials[0][-1])]


def test_a_manager_that_died_is_restarted_for_the_next_request(
    tiny_chat: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = ChatTask(continuous="on", default_new_tokens=8)
    model = load(task, tiny_chat)
    try:
        dead = model.continuous
        assert dead is not None and dead.healthy
        dead.manager.stop(block=True, hard_stop=True)  # as a failed step leaves it
        for _ in range(100):
            if dead.broken:
                break
            time.sleep(0.02)
        assert dead.broken and not dead.healthy
        (answer,) = task.run_batch(model, [ChatRequest("hi")], NeverAbandoned())
        assert answer.result(timeout=60).tokens == 8
        assert model.continuous is not dead and model.continuous.healthy
        assert "restarting continuous batching" in caplog.text
    finally:
        task.unload(model)


def test_a_cache_that_cannot_be_made_falls_back_to_static_batching(
    tiny_chat: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers.generation.continuous_batching.continuous_api import (
        ContinuousBatchingManager,
    )

    def no_room(self: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(ContinuousBatchingManager, "_create_batch_processor", no_room)
    task = ChatTask(continuous="on", default_new_tokens=8)
    model = load(task, tiny_chat)
    assert model.continuous is None
    assert "continuous batching is not available" in caplog.text
    (answer,) = task.run_batch(model, [ChatRequest("hi")], NeverAbandoned())
    assert isinstance(answer, ChatResult) and answer.tokens == 8


@pytest.mark.parametrize(
    ("device", "setting", "asked"),
    [("cuda:0", True, True), ("cuda:0", False, False), ("cpu", True, False)],
)
def test_steps_replay_as_cuda_graphs_on_cuda_unless_turned_off(
    tiny_chat: Path, monkeypatch: pytest.MonkeyPatch, device: str, setting: bool, asked: bool
) -> None:
    """On a GPU each step's kernel launches, not its arithmetic, limit a small model."""
    requested: list[bool] = []

    def recording(*args: object, cuda_graphs: bool = False) -> object:
        requested.append(cuda_graphs)
        return ContinuousGenerator(*args)  # graphs exist on CUDA only: build it without

    monkeypatch.setattr(handlers.chat, "ContinuousGenerator", recording)
    task = ChatTask(continuous="off", cuda_graphs=setting)
    loaded = load(task, tiny_chat)
    generator = task._start_continuous(dataclasses.replace(loaded, device=device))
    assert generator is not None
    generator.close()
    assert requested == [asked]


def test_the_setting_reaches_the_chat_task() -> None:
    settings = Settings(_env_file=None, chat=ChatSettings(cuda_graphs=False))
    assert chat_task(settings).cuda_graphs is False
    assert chat_task(Settings(_env_file=None)).cuda_graphs is True
