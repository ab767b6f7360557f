"""Conversations without Discord: fitting turns to the model's window with its real tokenizer,
folding what does not fit into a stored summary, resets."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.app import TaskUnavailable
from bot.conversations import (
    TRUNCATED,
    Answer,
    Conversations,
    ConversationStore,
    Memory,
    Turn,
    command_word,
    fit,
)
from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry
from bot.usage import UsageLog
from handlers.base import BatchContext, HandlerError, InvalidInput, LoadSpec, Task, TaskKind
from handlers.chat import ChatRequest, ChatTask, ChatWindow
from handlers.summarize import SummarizeRequest, SummarizeResult


@dataclass(eq=False)
class RecordingSummaries(Task[SummarizeRequest, SummarizeResult]):
    """Summarises a transcript as the number of its lines; ``broken`` fails every job."""

    name = "summarize"
    kind = TaskKind.TEXT
    max_chars: int = 100_000
    broken: bool = False
    seen: list[str] = field(default_factory=list)

    def load(self, spec: LoadSpec) -> str:
        return "recording"

    def model_bytes(self, model: Any) -> int:
        return 0

    def run_batch(
        self, model: Any, requests: Sequence[SummarizeRequest], ctx: BatchContext
    ) -> list[Any]:
        outputs: list[Any] = []
        for request in requests:
            self.seen.append(request.text)
            if self.broken:
                outputs.append(HandlerError("the summarizer is broken"))
            else:
                outputs.append(SummarizeResult(f"{len(request.text.splitlines())} lines", 1))
        return outputs


@dataclass
class Setup:
    conversations: Conversations
    store: ConversationStore
    summaries: RecordingSummaries
    window: ChatWindow


@pytest.fixture
async def setup(tmp_path: Path, tiny_chat: Path) -> AsyncIterator[Setup]:
    chat = ChatTask(context_tokens=200, default_new_tokens=32)
    summaries = RecordingSummaries()
    executor = Executor(
        {"chat": chat, "summarize": summaries},
        {"chat": str(tiny_chat), "summarize": "recording"},
        LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(),
    )
    usage = UsageLog(tmp_path / "usage.sqlite3")
    async with usage, executor:
        store = ConversationStore(usage)
        conversations = Conversations(executor, store)
        yield Setup(conversations, store, summaries, chat.window(str(tiny_chat)))


def chain(count: int) -> list[Turn]:
    """Alternating turns of a study session, ending with a member's question."""
    turns = []
    for n in range(1, count + 1):
        if n % 2:
            turns.append(Turn(n, "user", f"question {n} about the river and the city", "alice"))
        else:
            turns.append(Turn(n, "assistant", f"answer {n} about the mountains"))
    return turns


def test_fit_keeps_the_most_recent_turns_that_fit(setup: Setup) -> None:
    window = setup.window
    *history, last = chain(21)
    request = ChatRequest(last.text, name=last.name)
    fitted, dropped = fit(window, request, history)
    budget = window.budget(request)
    assert window.prompt_tokens(fitted) <= budget
    assert 0 < dropped < len(history)
    assert fitted.history == tuple(turn.as_chat() for turn in history[dropped:])
    assert fitted.history[0].role == "user"  # chat templates expect a member's turn first
    earlier = tuple(turn.as_chat() for turn in history[dropped - 2 :])  # the previous start
    assert window.prompt_tokens(dataclasses.replace(fitted, history=earlier)) > budget


def test_a_message_too_long_for_the_window_is_cut_saying_so(setup: Setup) -> None:
    window = setup.window
    notes = "the study group meets every week " * 40
    fitted, dropped = fit(window, ChatRequest(notes), [Turn(1, "user", "hi")])
    assert dropped == 1 and fitted.message.endswith(TRUNCATED)
    assert window.prompt_tokens(fitted) <= window.budget(fitted)


async def test_what_no_longer_fits_is_folded_into_a_stored_summary_once(setup: Setup) -> None:
    store, conversations = setup.store, setup.conversations
    await store.start("c", None)
    turns = chain(21)
    request = await conversations.prepare(
        await store.memory("c"), turns, ChatRequest("", system="be brief"), "alice"
    )
    (transcript,) = setup.summaries.seen
    folded = transcript.splitlines()
    assert folded[0] == "alice: question 1 about the river and the city"
    assert folded[1] == "assistant: answer 2 about the mountains"
    assert request.summary == f"{len(folded)} lines" and request.system == "be brief"
    assert request.message == turns[-1].text and request.name == "alice"
    kept = len(request.history)
    assert request.history == tuple(t.as_chat() for t in turns[-1 - kept : -1])
    assert len(folded) + kept <= 20  # the summary's room may leave a turn for the next fold
    assert setup.window.prompt_tokens(request) <= setup.window.budget(request)
    memory = await store.memory("c")
    assert (memory.summary, memory.summary_through) == (request.summary, len(folded))

    # The next turn reads only what the summary does not cover, and folds only what is new.
    more = [*turns, Turn(22, "assistant", "answer 22"), Turn(23, "user", "and then?", "bob")]
    again = await conversations.prepare(memory, more, ChatRequest(""), "bob")
    assert again.message == "and then?" and again.name == "bob"
    _, refolded = setup.summaries.seen
    lines = refolded.splitlines()
    assert lines[0] == f"Summary so far: {request.summary}"
    assert lines[1].startswith(f"{more[len(folded)].line()}")  # right after the last fold
    assert all(line not in lines for line in folded)


async def test_when_summarising_fails_the_answer_still_comes(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.summaries.broken = True
    await setup.store.start("c", None)
    memory = await setup.store.memory("c")
    request = await setup.conversations.prepare(memory, chain(21), ChatRequest(""), "alice")
    assert request.summary == "" and request.history  # the newest turns, without the oldest
    assert setup.window.prompt_tokens(request) <= setup.window.budget(request)
    assert (await setup.store.memory("c")).summary_through == 0  # folded next time
    assert "could not fold" in caplog.text


async def test_a_reset_forgets_what_came_before(setup: Setup) -> None:
    store = setup.store
    opening = Turn(1, "user", "what is osmosis?", "alice")
    await store.start("c", 5, opening)
    assert (await store.memory("c")).opening == opening
    await store.reset("c", after=3)
    memory = await store.memory("c")
    assert memory.opening is None and memory.cutoff == 3
    turns = [opening, Turn(2, "assistant", "water"), Turn(4, "user", "hello again", "alice")]
    request = await setup.conversations.prepare(memory, turns, ChatRequest(""), "alice")
    assert request.history == () and request.message == "hello again"


async def test_answers_are_found_by_message_and_openings_by_conversation(setup: Setup) -> None:
    store = setup.store
    await store.start("slash:9", 5, Turn(9, "user", "hi", "alice"))
    await store.record_answers("slash:9", [11, 12])
    await store.record_answers("slash:9", [13], is_turn=False)
    assert await store.answers_among([10, 11, 12, 13]) == {
        11: Answer("slash:9", True),
        12: Answer("slash:9", True),
        13: Answer("slash:9", False),
    }
    assert await store.openings(["slash:9", "other"]) == {"slash:9": Turn(9, "user", "hi", "alice")}


@pytest.mark.parametrize(
    ("text", "word"),
    [("reset", "reset"), (" Reset. ", "reset"), ("start over", "reset"), ("memory", "memory"),
     ("reset the timer please", None), ("what is memory?", None)],
)  # fmt: skip
def test_command_words_are_whole_messages(text: str, word: str | None) -> None:
    assert command_word(text) == word


async def test_a_chat_model_that_cannot_be_read_is_reported_as_unavailable(
    tmp_path: Path,
) -> None:
    executor = Executor(
        {"chat": ChatTask()},
        {"chat": str(tmp_path / "missing")},
        LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(),
    )
    usage = UsageLog(tmp_path / "usage.sqlite3")
    async with usage:
        conversations = Conversations(executor, ConversationStore(usage))
        with pytest.raises(TaskUnavailable, match="chat is unavailable"):
            await conversations.prepare(
                Memory("c"), [Turn(1, "user", "hi")], ChatRequest(""), "alice"
            )


async def test_a_fold_computed_before_a_reset_is_not_stored(setup: Setup) -> None:
    store = setup.store
    await store.start("c", None)
    before = await store.memory("c")
    await store.reset("c", after=30)
    await store.fold(before, "what came before the reset", through=20)
    after = await store.memory("c")
    assert (after.summary, after.summary_through, after.reset_after) == ("", 0, 30)


async def test_turns_the_front_end_could_not_all_read_are_folded_early(
    setup: Setup, tiny_chat: Path
) -> None:
    """A front end reads a bounded number of messages back: when it could not read them
    all, the older half of what it read is folded even though it fits, so that nothing
    falls out of reach unsummarised."""
    roomy = ChatTask(context_tokens=256, default_new_tokens=8).window(str(tiny_chat))

    async def window() -> ChatWindow:
        return roomy

    conversations = Conversations(setup.conversations.executor, setup.store, window=window)
    await setup.store.start("c", None)
    turns = chain(5)
    request = await conversations.prepare(
        await setup.store.memory("c"), turns, ChatRequest(""), "alice", complete=False
    )
    (transcript,) = setup.summaries.seen
    assert transcript.splitlines() == [turn.line() for turn in turns[:2]]
    assert request.history == tuple(turn.as_chat() for turn in turns[2:4])
    assert (await setup.store.memory("c")).summary_through == 2


async def test_a_branch_keeps_only_what_its_own_chain_remembers(setup: Setup) -> None:
    store = setup.store
    await store.start("main", None, Turn(1, "user", "hi", "alice"))
    await store.fold(await store.memory("main"), "turns up to 10", through=10)
    main = await store.memory("main")
    await store.fork(main, "late", at=12, guild_id=None)  # after the summarised turns
    await store.fork(main, "early", at=5, guild_id=None)  # inside them: nothing carries over
    late, early = await store.memory("late"), await store.memory("early")
    assert (late.summary, late.summary_through) == ("turns up to 10", 10)
    assert (early.summary, early.summary_through) == ("", 0)
    assert early.opening == Turn(1, "user", "hi", "alice")


def test_an_answer_that_fills_the_window_is_refused_naming_its_length(setup: Setup) -> None:
    window = setup.window
    whole = ChatRequest("what is osmosis?", max_tokens=window.context)
    with pytest.raises(InvalidInput) as refused:
        fit(window, whole, [])
    assert refused.value.option == "max_tokens"
    assert f"an answer of {window.context} tokens leaves no room" in refused.value.message
