from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

import handlers.chat
from bot.executor import Executor, ExecutorConfig, JobState, LocalBackend, ModelRegistry
from handlers.base import BatchStopped, InvalidInput
from handlers.chat import ChatModel, ChatRequest, ChatResult, ChatTask, ChatTurn, end_of_turn_ids
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
        TASK.run_batch(model, [ChatRequest("hello", max_tokens=150)], ctx)
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
        (ChatRequest("x" * 40_000), "message"),
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


def test_a_conversation_reaches_the_template_in_order_with_roles_and_names(
    model: ChatModel,
) -> None:
    request = ChatRequest(
        "and diffusion",
        system="be brief",
        history=(
            ChatTurn("user", "what is osmosis", "alice"),
            ChatTurn("assistant", "water moving"),
            ChatTurn("user", "thanks", "alice"),
        ),
        summary="they study biology",
        name="bob",
    )
    assert TASK.prompt(model.tokenizer, request) == (
        "<|system|> be brief\n\nEarlier in this conversation: they study biology <|end|> "
        "<|user|> alice: what is osmosis <|end|> <|assistant|> water moving <|end|> "
        # two members' turns in a row become one, as templates expect turns to alternate
        "<|user|> alice: thanks\n\nbob: and diffusion <|end|> <|assistant|>"
    )


def test_the_templates_end_of_turn_is_found(model: ChatModel) -> None:
    assert end_of_turn_ids(model.tokenizer) == {model.tokenizer.convert_tokens_to_ids("<|end|>")}


def test_the_stop_tokens_of_the_generation_config_end_generation(
    chat_dir: Path, tmp_path: Path
) -> None:
    """A model whose generation config lists a second end token (as Qwen's and Llama 3's
    do): generation ends there, and the token is not part of the answer."""
    plain = load(TASK, chat_dir)
    (free,) = TASK.run_batch(plain, [ChatRequest("hello", max_tokens=8)], RecordingContext())
    assert not free.complete and free.tokens == 8  # the tiny model never ends on its own
    prompt = TASK.prompt_ids(plain.tokenizer, ChatRequest("hello"))
    with torch.inference_mode():
        ids = plain.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[
            0, len(prompt) :
        ].tolist()
    third = ids[2]
    assert third not in ids[:2]  # the tiny model's greedy answer: three different tokens
    shutil.copytree(chat_dir, tmp_path / "chat")
    config = GenerationConfig.from_pretrained(tmp_path / "chat")
    config.eos_token_id = [plain.tokenizer.eos_token_id, third]
    config.save_pretrained(tmp_path / "chat")
    stopping = load(TASK, tmp_path / "chat")
    assert third in stopping.stop_ids
    ctx = RecordingContext()
    (result,) = TASK.run_batch(stopping, [ChatRequest("hello", max_tokens=8)], ctx)
    assert result.complete and result.tokens == 2
    assert result.text == plain.tokenizer.decode(ids[:2], skip_special_tokens=True).strip()
    assert ctx.partials[0][-1] == result.text


def test_each_job_samples_with_its_own_seed_whatever_shares_its_batch(model: ChatModel) -> None:
    mine = ChatRequest("hello", max_tokens=12, temperature=1.0, seed=7)
    others = [
        ChatRequest("the river", max_tokens=12, temperature=1.5, seed=1),
        ChatRequest("coffee", max_tokens=12),  # greedy, beside sampled rows
    ]
    (alone,) = TASK.run_batch(model, [mine], RecordingContext())
    together = TASK.run_batch(model, [*others, mine], RecordingContext())
    assert together[2] == alone
    assert together[1] == TASK.run_batch(model, [others[1]], RecordingContext())[0]
    reseeded = TASK.run_batch(model, [replace(mine, seed=8)], RecordingContext())[0]
    assert reseeded != alone


def test_a_conversation_longer_than_the_context_is_refused_alone(model: ChatModel) -> None:
    history = tuple(ChatTurn("user", "the study group meets every week " * 3) for _ in range(12))
    results = TASK.run_batch(
        model,
        [ChatRequest("hello", max_tokens=10, history=history), ChatRequest("hi", max_tokens=10)],
        RecordingContext(),
    )
    refused, answered = results
    assert isinstance(refused, InvalidInput) and "model's 256" in refused.message
    assert isinstance(answered, ChatResult) and answered.text


def test_history_turns_are_checked() -> None:
    with pytest.raises(InvalidInput) as err:
        TASK.validate(ChatRequest("x", history=(ChatTurn("system", "obey"),)))  # type: ignore[arg-type]
    assert err.value.option == "history"
    with pytest.raises(InvalidInput) as err:
        TASK.validate(ChatRequest("x", history=(ChatTurn("user", "y" * 40_000),)))
    assert err.value.option == "history"


def test_the_window_counts_what_the_model_would_see(chat_dir: Path) -> None:
    window = ChatTask(context_tokens=100, default_new_tokens=30).window(str(chat_dir))
    request = ChatRequest("hello", history=(ChatTurn("assistant", "water moving"),))
    model = load(TASK, chat_dir)
    assert window.prompt_tokens(request) == len(TASK.prompt_ids(model.tokenizer, request))
    assert (window.context, window.budget(request)) == (100, 70)


def test_a_history_that_starts_with_an_answer_still_opens_with_a_members_turn(
    model: ChatModel,
) -> None:
    request = ChatRequest("and then?", history=(ChatTurn("assistant", "water moving"),))
    roles = [m["role"] for m in TASK.messages(request)]
    assert roles == ["system", "user", "assistant", "user"]


ANSWER_SCHEMA = json.dumps({
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 3},
        "why": {"type": "string", "minLength": 1, "maxLength": 12},
    },
    "required": ["answer", "why"],
    "additionalProperties": False,
})  # fmt: skip


@pytest.fixture(scope="module")
def byte_level_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model over a byte-level vocabulary (as Qwen2.5's is), which can spell JSON."""
    return build_chat(tmp_path_factory.mktemp("bytes"), byte_level=True)


@pytest.fixture(scope="module")
def byte_level(byte_level_dir: Path) -> ChatModel:
    return load(TASK, byte_level_dir)


def test_an_answer_that_follows_a_schema_is_json_of_its_shape_even_from_random_weights(
    byte_level: ChatModel,
) -> None:
    free = ChatRequest("Which one?", max_tokens=48)
    requests = [
        replace(free, json_schema=ANSWER_SCHEMA),
        free,  # a row without a schema in the same batch is not constrained
        replace(free, json_schema=ANSWER_SCHEMA, temperature=1.0, seed=3),
    ]
    constrained, unconstrained, sampled = TASK.run_batch(byte_level, requests, RecordingContext())
    for result in (constrained, sampled):
        assert result.complete, result.text  # ended by the model once the JSON closed
        answer = json.loads(result.text)
        assert set(answer) == {"answer", "why"} and 0 <= answer["answer"] <= 3
        assert 1 <= len(answer["why"]) <= 12
    with pytest.raises(json.JSONDecodeError):
        json.loads(unconstrained.text)
    assert TASK.run_batch(byte_level, requests[:1], RecordingContext()) == [constrained]


@pytest.mark.parametrize(
    ("schema", "said"),
    [("{not json", "is not JSON"), ('{"type": "nope"}', "cannot be followed")],
)
def test_a_schema_that_cannot_be_followed_is_refused(schema: str, said: str) -> None:
    with pytest.raises(InvalidInput, match=said) as err:
        TASK.validate(ChatRequest("x", json_schema=schema))
    assert err.value.option == "json_schema"


def test_with_continuous_batching_an_answer_that_follows_a_schema_is_made_beside_it(
    byte_level_dir: Path,
) -> None:
    """The running batch cannot mask tokens row by row: a constrained row is generated in
    the worker's own call, the others join the running batch."""
    task = ChatTask(continuous="on", max_running=2)
    model = load(task, byte_level_dir)
    try:
        free = ChatRequest("Which one?", max_tokens=48)  # a batch shares its limit
        constrained, joined = task.run_batch(
            model, [replace(free, json_schema=ANSWER_SCHEMA), free], RecordingContext()
        )
        assert isinstance(constrained, ChatResult) and isinstance(joined, Future)
        assert set(json.loads(constrained.text)) == {"answer", "why"}
        assert isinstance(joined.result(timeout=60), ChatResult)
    finally:
        task.unload(model)


def test_a_tokenizer_llguidance_cannot_read_answers_unconstrained(
    byte_level_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow tokenizer, which llguidance refuses: a schema is then a request like any other
    (its caller checks the answer); answers without one never build its vocabulary."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("Only fast tokenizers are supported")

    monkeypatch.setattr(handlers.chat.llguidance.hf, "from_tokenizer", refuse)
    model = load(TASK, byte_level_dir)
    plain = ChatRequest("hi", max_tokens=4)
    (unshaped,) = TASK.run_batch(model, [plain], RecordingContext())
    assert model.grammar_tokenizer is None
    (answer,) = TASK.run_batch(
        model, [replace(plain, json_schema=ANSWER_SCHEMA)], RecordingContext()
    )
    assert answer == unshaped and model.grammar_tokenizer is False
    assert "answers cannot follow a schema here" in caplog.text


def test_with_cuda_graphs_a_schema_waits_for_an_idle_running_batch_or_goes_unconstrained() -> None:
    @dataclass
    class Generator:
        cuda_graphs: bool
        running: int

    rows = [ChatRequest("a", json_schema=ANSWER_SCHEMA), ChatRequest("b")]
    assert ChatTask._beside(Generator(False, 3), rows, [0, 1]) == [0]  # a thread beside
    assert ChatTask._beside(Generator(True, 0), rows, [0, 1]) == [0]  # nothing to disturb
    assert ChatTask._beside(Generator(True, 2), rows, [0, 1]) == []  # graphs: no thread beside
