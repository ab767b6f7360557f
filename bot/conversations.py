"""Conversations with the chat model, as every front end holds them: turns in, a request that
fits the model's window out, with older turns folded into a running summary.

Discord keeps the messages (a reply chain, a thread, a DM); the front end reads them back
as ``Turn``s each time. What Discord cannot give back is kept per conversation in SQLite
(``ConversationStore``): the summary of the turns folded out of the window and the newest
turn it covers, where a reset starts, and the question that opened a conversation begun by
/chat. Nothing here knows Discord; the terminal's ``chat`` uses it the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.app import TaskUnavailable
from bot.executor import Executor, ExecutorError
from bot.quotas import Quotas
from bot.usage import UsageLog
from handlers.base import HandlerError, InvalidInput
from handlers.chat import MAX_TURNS, ChatRequest, ChatTurn, ChatWindow, Role
from handlers.summarize import SummarizeRequest

log = logging.getLogger(__name__)

RESET_WORDS = frozenset({"reset", "forget", "start over"})
"""A turn of only one of these words starts the conversation afresh."""
MEMORY_WORDS = frozenset({"memory"})
"""A turn of only this word shows what the bot remembers."""
TRUNCATED = " […cut to fit the model's context]"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    id: int
    """The message's id (a Discord snowflake, or a counter): turns sort by it."""
    role: Role
    text: str
    name: str | None = None
    """A member's display name; None for the bot's answers and the terminal's user."""
    private_to: str | None = None
    """The only member whose prompts may hold this turn (a slash command's input, which
    only its asker saw); None for what everyone in the conversation saw."""
    images: int = 0
    """How many images the message showed."""

    def may_reach(self, user_id: str) -> bool:
        return self.private_to is None or self.private_to == user_id

    def as_chat(self) -> ChatTurn:
        return ChatTurn(self.role, self.text, self.name)

    def line(self) -> str:
        """The turn as a line of a transcript to summarise."""
        who = self.name or ("assistant" if self.role == "assistant" else "user")
        shown = f" [showed {self.images} image(s)]" if self.images else ""
        return f"{who}: {self.text}{shown}"


@dataclass(frozen=True)
class Memory:
    """What the bot keeps of one conversation."""

    id: str
    summary: str = ""
    summary_through: int = 0
    """The newest turn the summary covers; it and older turns are not read again."""
    reset_after: int = 0
    """Turns up to this id were forgotten by a reset."""
    opening: Turn | None = None
    """The question that opened a conversation begun by /chat."""

    @property
    def cutoff(self) -> int:
        """Turns up to this id are in the summary or forgotten."""
        return max(self.summary_through, self.reset_after)


@dataclass(frozen=True)
class Answer:
    """A message the bot posted in a conversation."""

    conversation_id: str
    is_turn: bool
    """False for what a reset or a memory request answers: it continues the conversation
    when replied to, but is not part of it."""


class MemoryUnavailable(HandlerError):
    """The database that holds conversations' memory cannot be written right now."""


class ConversationStore:
    """Conversations' memory in the usage database; every write is waited for, so a summary
    is never computed twice because a write was still buffered.

    While the database is unavailable (locked, read-only, a full disk) conversations go on
    with what Discord holds: reads find nothing, writes are logged and skipped. Only a
    reset, which the member asked for, fails and says so.
    """

    def __init__(self, usage: UsageLog) -> None:
        self.usage = usage

    async def _read(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        try:
            return await self.usage.quick(sql, params)
        except sqlite3.Error as exc:
            log.warning("conversation memory is unavailable, reading none: %s", exc)
            return []

    async def _write(self, sql: str, params: Sequence[Any]) -> None:
        try:
            await self.usage.quick(sql, params, write=True)
        except sqlite3.Error as exc:
            log.warning("conversation memory is unavailable, not storing: %s", exc)

    async def memory(self, conversation_id: str) -> Memory:
        rows = await self._read(
            "SELECT summary, summary_through, reset_after, opening FROM conversations WHERE id = ?",
            (conversation_id,),
        )
        if not rows:
            return Memory(conversation_id)
        row = rows[0]
        return Memory(
            conversation_id,
            row["summary"],
            row["summary_through"],
            row["reset_after"],
            _opening(row["opening"]),
        )

    async def start(
        self, conversation_id: str, guild_id: int | None, opening: Turn | None = None
    ) -> None:
        """Remember a new conversation (and its opening question); an existing one is only
        marked as used now."""
        await self._write(
            "INSERT INTO conversations (id, guild_id, opening, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at",
            (
                conversation_id,
                guild_id,
                None if opening is None else json.dumps(dataclasses.asdict(opening)),
                self.usage.clock(),
            ),
        )

    async def fork(
        self, source: Memory, conversation_id: str, at: int, guild_id: int | None
    ) -> None:
        """A new conversation branching off ``source`` at message ``at`` (a reply to one of
        its earlier answers): it keeps what ``source`` remembers of the turns before ``at``,
        and nothing of the branch it left."""
        kept = source.summary_through <= at
        opening = source.opening if source.opening and source.opening.id < at else None
        await self._write(
            "INSERT INTO conversations (id, guild_id, summary, summary_through, reset_after, "
            "opening, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                conversation_id,
                guild_id,
                source.summary if kept else "",
                source.summary_through if kept else 0,
                source.reset_after if source.reset_after <= at else 0,
                None if opening is None else json.dumps(dataclasses.asdict(opening)),
                self.usage.clock(),
            ),
        )

    async def fold(self, memory: Memory, summary: str, through: int) -> None:
        """Store a new summary, unless the conversation changed since ``memory`` was read
        (a reset, another fold): a summary of forgotten turns must not come back."""
        await self._write(
            "UPDATE conversations SET summary = ?, summary_through = ?, updated_at = ? "
            "WHERE id = ? AND summary_through = ? AND reset_after = ?",
            (summary, through, self.usage.clock(), memory.id, memory.summary_through,
             memory.reset_after),
        )  # fmt: skip

    async def reset(self, conversation_id: str, after: int, guild_id: int | None = None) -> None:
        """Forget every turn up to ``after`` and the summary."""
        try:
            await self.usage.quick(
                "INSERT INTO conversations (id, guild_id, reset_after, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET summary = '', "
                "summary_through = 0, reset_after = excluded.reset_after, opening = NULL, "
                "updated_at = excluded.updated_at",
                (conversation_id, guild_id, after, self.usage.clock()),
                write=True,
            )
        except sqlite3.Error as exc:
            log.warning("could not reset %s: %s", conversation_id, exc)
            raise MemoryUnavailable(
                "I cannot reach my memory right now, so nothing was reset; try again soon"
            ) from None

    async def latest_answer(self, conversation_id: str) -> int | None:
        rows = await self._read(
            "SELECT MAX(message_id) AS latest FROM chat_answers WHERE conversation_id = ?",
            (conversation_id,),
        )
        return rows[0]["latest"] if rows else None

    async def record_answers(
        self, conversation_id: str, message_ids: Iterable[int], is_turn: bool = True
    ) -> None:
        """The bot's messages in this conversation: a reply to one continues it. Those that
        are not turns (what a reset or a memory request answers) are not read back."""
        for message_id in message_ids:
            await self._write(
                "INSERT OR REPLACE INTO chat_answers "
                "(message_id, conversation_id, is_turn, created_at) VALUES (?, ?, ?, ?)",
                (message_id, conversation_id, int(is_turn), self.usage.clock()),
            )

    async def record_transcript(self, conversation_id: str, message_id: int, text: str) -> None:
        """What a member's voice message was heard as, for when the conversation is read back."""
        await self._write(
            "INSERT OR REPLACE INTO transcripts (message_id, conversation_id, text, created_at) "
            "VALUES (?, ?, ?, ?)",
            (message_id, conversation_id, text, self.usage.clock()),
        )

    async def transcript(self, message_id: int) -> str | None:
        rows = await self._read("SELECT text FROM transcripts WHERE message_id = ?", (message_id,))
        return rows[0]["text"] if rows else None

    async def record_description(
        self, conversation_id: str, message_id: int, position: int, text: str
    ) -> None:
        """What an image of a member's message shows, for when the model is no longer shown
        the image itself."""
        await self._write(
            "INSERT OR REPLACE INTO image_descriptions "
            "(message_id, position, conversation_id, text, created_at) VALUES (?, ?, ?, ?, ?)",
            (message_id, position, conversation_id, text, self.usage.clock()),
        )

    async def descriptions(self, message_ids: Sequence[int]) -> dict[tuple[int, int], str]:
        """The stored descriptions of these messages' images, by (message, position)."""
        if not message_ids:
            return {}
        marks = ", ".join("?" * len(message_ids))
        rows = await self._read(
            "SELECT message_id, position, text FROM image_descriptions "
            f"WHERE message_id IN ({marks})",
            message_ids,
        )
        return {(row["message_id"], row["position"]): row["text"] for row in rows}

    async def answers_among(self, message_ids: Sequence[int]) -> dict[int, Answer]:
        """Which of these messages the bot posted in a conversation, and in which."""
        if not message_ids:
            return {}
        marks = ", ".join("?" * len(message_ids))
        rows = await self._read(
            "SELECT message_id, conversation_id, is_turn FROM chat_answers "
            f"WHERE message_id IN ({marks})",
            message_ids,
        )
        return {
            row["message_id"]: Answer(row["conversation_id"], bool(row["is_turn"])) for row in rows
        }

    async def openings(self, conversation_ids: Iterable[str]) -> dict[str, Turn]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = await self._read(
            f"SELECT id, opening FROM conversations WHERE id IN ({marks}) AND opening IS NOT NULL",
            ids,
        )
        return {row["id"]: turn for row in rows if (turn := _opening(row["opening"]))}


def _opening(stored: str | None) -> Turn | None:
    if not stored:
        return None
    return Turn(**json.loads(stored))


def command_word(text: str) -> str | None:
    """``reset`` or ``memory`` when a turn is only that word (any case, trailing dot)."""
    word = " ".join(text.split()).strip(" .!").casefold()
    if word in RESET_WORDS:
        return "reset"
    if word in MEMORY_WORDS:
        return "memory"
    return None


def fit(
    window: ChatWindow, request: ChatRequest, history: Sequence[Turn]
) -> tuple[ChatRequest, int]:
    """``request`` with as many of the newest ``history`` turns as fit the window with the
    answer's tokens, and how many of the oldest turns did not fit.

    When the persona, the summary and the new message alone do not fit (a small model, a
    long attached file), the summary is shortened first, then the message, each saying so.
    Tokens are counted on the rendered chat template, so its markup counts too.
    """
    budget = window.budget(request)
    excess = window.prompt_tokens(request) - budget
    if excess > 0:
        for field in ("summary", "message"):
            text = getattr(request, field)
            if excess <= 0 or not text:
                continue
            keep = window.tokens(text) - excess - window.tokens(TRUNCATED)
            if keep <= 0 and field == "message":  # nothing of it would be left to answer
                raise InvalidInput(
                    "max_tokens",
                    f"an answer of {window.task.new_tokens(request)} tokens leaves no room "
                    f"for the conversation in the model's {window.context}; ask for a "
                    "shorter answer (or lower BOT_CHAT__DEFAULT_NEW_TOKENS)",
                )
            cut = window.truncate(text, keep) + TRUNCATED if keep > 0 else ""
            request = dataclasses.replace(request, **{field: cut})
            excess = window.prompt_tokens(request) - budget
        return request, len(history)  # if the persona alone is too long, the model says so
    turns = [turn.as_chat() for turn in history]
    # Kept history starts with a member's turn, as chat templates expect; fewer turns fit
    # more easily, so the first start that fits is found by bisection.
    starts = [i for i, turn in enumerate(turns) if turn.role == "user"] + [len(turns)]

    def fits(start: int) -> bool:
        kept = tuple(turns[start:])
        return window.prompt_tokens(dataclasses.replace(request, history=kept)) <= budget

    low, high = 0, len(starts) - 1  # fits(starts[high]) holds: nothing kept
    while low < high:
        middle = (low + high) // 2
        if fits(starts[middle]):
            high = middle
        else:
            low = middle + 1
    start = starts[low]
    return dataclasses.replace(request, history=tuple(turns[start:])), start


class Conversations:
    """Turns into a chat request that fits, folding what does not fit into the summary by
    the summarize task (queued like any job, batched with other summaries)."""

    def __init__(
        self,
        executor: Executor,
        store: ConversationStore,
        quotas: Quotas | None = None,
        window: Callable[[], Awaitable[ChatWindow]] | None = None,
    ) -> None:
        self.executor = executor
        self.store = store
        self.quotas = quotas
        self._window = window or self._default_window
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def _default_window(self) -> ChatWindow:
        task = self.executor.tasks["chat"]
        source = self.executor.default_models["chat"]
        try:
            return await asyncio.to_thread(task.window, source)  # type: ignore[attr-defined]
        except Exception as exc:  # not downloaded, not a chat model: say what to do
            raise TaskUnavailable("chat", exc) from exc

    def lock(self, conversation_id: str) -> asyncio.Lock:
        """Held while a turn of the conversation is prepared, so that two turns arriving
        together do not fold the same turns twice."""
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = self._locks[conversation_id] = asyncio.Lock()
        return lock

    async def prepare(
        self,
        memory: Memory,
        turns: Sequence[Turn],
        base: ChatRequest,
        user_id: str,
        complete: bool = True,
    ) -> ChatRequest:
        """``prepare_turns``' request alone."""
        request, _ = await self.prepare_turns(memory, turns, base, user_id, complete)
        return request

    async def prepare_turns(
        self,
        memory: Memory,
        turns: Sequence[Turn],
        base: ChatRequest,
        user_id: str,
        complete: bool = True,
    ) -> tuple[ChatRequest, list[Turn]]:
        """The request for the newest of ``turns`` (oldest first), with the earlier ones as
        its history and the summary of what came before.

        ``base`` carries the options (persona, temperature, seed); its message is replaced.
        Turns already in the summary or before a reset are left out, and so are turns private
        to another member than ``user_id``; the summary is shared, so a private turn is
        never folded into it (a private opening stays until a reset). ``complete`` is False
        when the front end could not read back every turn since the summary (it reads a
        bounded number of messages): the older half of what it read is then folded even if
        it fits, so that no turn ever slips past unsummarised. Also returns the turns the
        request holds, its history's and then the newest.
        """

        def kept(fitted: ChatRequest, offered: Sequence[Turn]) -> list[Turn]:
            return [*offered[len(offered) - len(fitted.history) :], last]

        live = [turn for turn in turns if turn.id > memory.cutoff and turn.may_reach(user_id)]
        opening = memory.opening
        # A private opening is in no summary: it stays its asker's until a reset.
        kept_after = memory.reset_after if opening and opening.private_to else memory.cutoff
        if opening is not None and opening.id > kept_after and opening.may_reach(user_id):
            live = sorted({*live, opening}, key=lambda turn: turn.id)
        if not live or live[-1].role != "user":
            raise ValueError("a conversation turn must end with a member's message")
        *history, last = live
        request = dataclasses.replace(
            base, message=last.text, name=last.name, summary=memory.summary, history=()
        )
        window = await self._window()
        fitted, overflow = await asyncio.to_thread(fit, window, request, history)
        forced = max(len(history) - MAX_TURNS, 0 if complete else len(history) // 2)
        overflow = max(overflow, forced)
        if not overflow:
            return fitted, kept(fitted, history)
        summary = await self._fold(memory, history[:overflow], user_id)
        if summary is None:
            return fitted, kept(fitted, history)
        # A longer summary may leave room for fewer turns; those are folded next time.
        request = dataclasses.replace(request, summary=summary)
        fitted, _ = await asyncio.to_thread(fit, window, request, history[overflow:])
        return fitted, kept(fitted, history[overflow:])

    async def _fold(self, memory: Memory, turns: Sequence[Turn], user_id: str) -> str | None:
        """The summary with ``turns`` folded in, stored; None (and the turns left out of this
        answer, to be folded next time) when summarising fails."""
        public = [turn.line() for turn in turns if turn.private_to is None]
        if not public:  # nothing everyone may read: nothing to add to the shared summary
            return memory.summary
        lines = [f"Summary so far: {memory.summary}"] if memory.summary else []
        lines += public
        summarize = self.executor.tasks.get("summarize")
        limit = getattr(summarize, "max_chars", None)
        text = "\n".join(lines)
        if limit is not None and len(text) > limit:
            text = text[-limit:]  # the most recent part; the summary so far is older still
        try:
            handle = self.executor.submit(
                "summarize", SummarizeRequest(text, "short"), user_id=user_id
            )
            result = await handle
        except (ExecutorError, HandlerError) as exc:
            log.warning("could not fold %d turns of %s into its summary: %s",
                        len(turns), memory.id, exc)  # fmt: skip
            return None
        if self.quotas is not None and handle.gpu_s is not None:
            self.quotas.charge_gpu(user_id, handle.gpu_s)
        await self.store.fold(memory, result.summary, turns[-1].id)
        return result.summary

    @staticmethod
    def describe(memory: Memory) -> str:
        """What the bot remembers of a conversation, as a member may read it."""
        if memory.summary:
            return f"Summary of the earlier conversation: {memory.summary}"
        if memory.reset_after:
            return "Nothing from before the reset; the recent messages are read as they are."
        return "No summary yet: the whole conversation still fits the model's window."
