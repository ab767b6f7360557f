from __future__ import annotations

import math
from pathlib import Path

import pytest

from bot.executor import Executor, ExecutorConfig, JobState, LocalBackend, ModelRegistry
from handlers.base import BatchStopped, InvalidInput
from handlers.chat import ChatModel, ChatRequest, ChatTask
from tests.handlers_support import RecordingContext, load, one_at_a_time
from tests.tinymodels import build_chat, build_classifier

TASK = ChatTask()


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chat(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def model(chat_dir: Path) -> ChatModel:
    return load(TASK, chat_dir)


def test_prompts_use_the_chat_template_with_a_system_prompt(model: ChatModel) -> None:
    prompt = TASK.prompt(model.tokenizer, ChatRequest("hello", system="be brief"))
    assert prompt == "<|system|> be brief <|end|> <|user|> hello <|end|> <|assistant|>"
    assert TASK.system_prompt in TASK.prompt(model.tokenizer, ChatRequest("hello"))


def test_answers_are_bounded_and_batches_match_one_at_a_time(model: ChatModel) -> None:
    requests = [
        ChatRequest("hello teacher", max_tokens=10),
        ChatRequest("what is the exam about physics and the river today", max_tokens=10),
        ChatRequest("coffee", max_tokens=10),
    ]
    results = TASK.run_batch(model, requests, RecordingContext())
    assert all(r.text and 0 < r.tokens <= 10 for r in results)
    assert results == one_at_a_time(TASK, model, requests)


def test_text_streams_to_each_job(model: ChatModel) -> None:
    ctx = RecordingContext()
    requests = [ChatRequest("hello", max_tokens=20), ChatRequest("bye", max_tokens=20)]
    results = TASK.run_batch(model, requests, ctx)
    for index, result in enumerate(results):
        streamed = ctx.partials[index]
        assert len(streamed) >= 2  # every 8 tokens, then at the end
        assert streamed[-1] == result.text


def test_generation_stops_between_tokens_when_abandoned(model: ChatModel) -> None:
    ctx = RecordingContext(stop_after_checks=3)
    with pytest.raises(BatchStopped):
        TASK.run_batch(model, [ChatRequest("hello", max_tokens=200)], ctx)
    assert ctx.checks < 20


def test_sampling_is_reproducible_with_a_seed(model: ChatModel) -> None:
    request = ChatRequest("hello", max_tokens=12, temperature=1.0, seed=7)
    first = TASK.run_batch(model, [request], RecordingContext())
    assert first == TASK.run_batch(model, [request], RecordingContext())


async def test_streamed_text_reaches_job_events(chat_dir: Path) -> None:
    executor = Executor(
        {"chat": TASK},
        {"chat": str(chat_dir)},
        LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(),
    )
    async with executor:
        handle = executor.submit("chat", ChatRequest("hello", max_tokens=20), user_id=1)
        partials = [e.partial async for e in handle.events() if e.partial is not None]
        result = await handle
    assert handle.state is JobState.DONE
    assert partials and partials[-1] == result.text


def test_a_model_without_chat_template_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chat template"):
        load(TASK, build_classifier(tmp_path / "plain"))


@pytest.mark.parametrize(
    ("request_", "option"),
    [
        (ChatRequest(" "), "message"),
        (ChatRequest("x" * 5000), "message"),
        (ChatRequest("x", max_tokens=0), "max_tokens"),
        (ChatRequest("x", max_tokens=10_000), "max_tokens"),
        (ChatRequest("x", temperature=math.nan), "temperature"),
        (ChatRequest("x", temperature=-1), "temperature"),
    ],
)
def test_bad_requests_name_the_option(request_: ChatRequest, option: str) -> None:
    with pytest.raises(InvalidInput) as err:
        TASK.validate(request_)
    assert err.value.option == option


def test_jobs_with_different_limits_do_not_share_a_batch() -> None:
    assert TASK.batch_key(ChatRequest("a", max_tokens=5)) != TASK.batch_key(ChatRequest("a"))
