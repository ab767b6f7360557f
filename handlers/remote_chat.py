"""Chat answered by an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's server,
Ollama) through the official ``openai`` client, streaming.

It is the chat task with another engine: the same requests, prompts (as chat messages),
validation and results, so quotas, fairness, conversation memory and usage rows work as
with the local model. Each admitted conversation is one streamed HTTP request, up to
``max_concurrent`` at once (the executor admits no more: they are its rows, as with
continuous batching), all on one event loop of their own: cancelling a request's task
closes its connection at once, even while the server is silent. Every failure of the
server becomes one line for the member.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import openai

from handlers.base import BatchContext, BatchStopped, HandlerError, LoadSpec
from handlers.chat import ChatRequest, ChatResult, ChatTask, ChatWindow

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.0
"""For fitting conversations without the server's tokenizer: fewer characters per token
than most text has, so that a fitted conversation is not refused as too long."""
MESSAGE_OVERHEAD_TOKENS = 8
"""Tokens a chat template adds around each message."""
STREAM_EVERY = 8
"""Streamed pieces between two updates of a job's text."""
WATCH_S = 0.05
"""How often open streams are checked for jobs nobody waits for any more."""


class EngineError(HandlerError):
    """The chat server could not answer; ``kind`` names why, for metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a time-out: the client's ``APITimeoutError``, or its transport's
    while a stream is read (``httpx.ReadTimeout`` under openai 1.x and 2.x, ``httpx2``'s under
    3.x). Told by class name, so that no client's exception has to be built or imported."""
    return any("Timeout" in cls.__name__ for cls in type(error).__mro__)


def explain(error: Exception, base_url: str, timeout_s: float) -> EngineError:
    """One line for the member (and the kind, for metrics) from the client's error."""
    # Members see no address (it may name internal hosts): the log does, without credentials.
    log.warning("the chat server at %s: %s: %s", without_credentials(base_url),
                type(error).__name__, error)  # fmt: skip
    if is_timeout(error):
        return EngineError("timeout", f"the chat server did not answer within {timeout_s:g} s")
    if not isinstance(error, openai.OpenAIError):  # the transport broke off mid-stream
        return EngineError("unreachable", "the chat server broke off its answer; try again")
    match error:
        case openai.APIConnectionError():
            return EngineError("unreachable", "the chat server cannot be reached; try again later")
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            return EngineError(
                "unauthorized",
                f"the chat server refused the bot's API key (HTTP {error.status_code}); "
                "check BOT_CHAT__OPENAI__API_KEY",
            )
        case openai.RateLimitError():
            return EngineError(
                "rate_limited", "the chat server is rate-limiting the bot (HTTP 429); try again"
            )
        case openai.NotFoundError():
            return EngineError(
                "not_found",
                "the chat server does not serve the configured model (HTTP 404); "
                "check BOT_CHAT__OPENAI__MODEL",
            )
        case openai.APIStatusError() if error.status_code >= 500:
            return EngineError(
                "server_error", f"the chat server failed (HTTP {error.status_code}); try again"
            )
        case openai.APIStatusError():
            return EngineError(
                "refused", f"the chat server refused the request (HTTP {error.status_code})"
            )
    return EngineError("failed", f"the chat server's answer could not be read ({error})")


@dataclass(frozen=True)
class EstimatedWindow(ChatWindow):
    """A conversation's size in tokens estimated from its characters: the server's
    tokenizer is not here."""

    def prompt_tokens(self, request: ChatRequest) -> int:
        messages = self.task.messages(request)
        chars = sum(len(m["content"]) for m in messages)
        return self.tokens_for(chars) + MESSAGE_OVERHEAD_TOKENS * len(messages)

    def tokens(self, text: str) -> int:
        return self.tokens_for(len(text))

    @staticmethod
    def tokens_for(chars: int) -> int:
        return math.ceil(chars / CHARS_PER_TOKEN)

    def truncate(self, text: str, tokens: int) -> str:
        return text[: max(0, math.floor(tokens * CHARS_PER_TOKEN))]


@dataclass
class RemoteChat:
    """The client, and the event loop (on a thread of its own) its streams run on."""

    client: openai.AsyncOpenAI
    model: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    open: dict[asyncio.Task[ChatResult], tuple[BatchContext, int]] = field(default_factory=dict)
    """Each request being answered, with its job's context and row: read by the watcher."""


class RemoteChatTask(ChatTask):
    remote: ClassVar[bool] = True

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        max_concurrent: int = 16,
        timeout_s: float = 60.0,
        **chat: Any,
    ) -> None:
        super().__init__(continuous="off", **chat)
        if max_concurrent < 1 or timeout_s <= 0:
            raise ValueError("max_concurrent and timeout_s must be positive")
        self.base_url = base_url
        self._api_key = api_key
        self.max_concurrent = max_concurrent
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never the key
        return f"RemoteChatTask({without_credentials(self.base_url)!r})"

    def running_cap(self) -> int:
        return self.max_concurrent

    def load(self, spec: LoadSpec) -> RemoteChat:
        """``spec.source`` is the model's name on the server."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="chat-streams", daemon=True)
        thread.start()
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key or "none",  # servers without keys still want the header
            max_retries=0,  # a retry is the member's to decide, told at once
            timeout=openai.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
        )
        remote = RemoteChat(client, spec.source, loop, thread)
        asyncio.run_coroutine_threadsafe(self._watch(remote), loop)
        return remote

    def unload(self, model: RemoteChat) -> None:
        async def close() -> None:
            for task in list(model.open):
                task.cancel()
            await model.client.close()

        try:
            asyncio.run_coroutine_threadsafe(close(), model.loop).result(timeout=5)
        finally:
            model.loop.call_soon_threadsafe(model.loop.stop)
            model.thread.join(timeout=5)

    def busy(self, model: RemoteChat) -> bool:
        return bool(model.open)

    def model_bytes(self, model: RemoteChat) -> int:
        return 0

    def window(self, source: str) -> ChatWindow:
        return EstimatedWindow(self, None, self.context_tokens)

    def run_batch(
        self, model: RemoteChat, requests: Sequence[ChatRequest], ctx: BatchContext
    ) -> list[concurrent.futures.Future[ChatResult]]:
        return [
            asyncio.run_coroutine_threadsafe(self._answer(model, request, ctx, index), model.loop)
            for index, request in enumerate(requests)
        ]

    async def _answer(
        self, model: RemoteChat, request: ChatRequest, ctx: BatchContext, index: int
    ) -> ChatResult:
        task = asyncio.current_task()
        assert task is not None
        model.open[task] = (ctx, index)
        asked = {
            "model": model.model,
            "messages": self.messages(request),
            "max_tokens": self.new_tokens(request),
            "temperature": request.temperature,
            "seed": request.seed,
            "stream": True,
        }
        try:
            try:
                stream = await model.client.chat.completions.create(
                    **asked, **self.response_format(request)
                )
            except openai.BadRequestError as exc:
                said = str(exc).lower()
                if request.json_schema is None or not ("schema" in said or "format" in said):
                    raise
                # An engine without structured output: the caller checks the answer anyway.
                log.warning(
                    "%s refused a JSON Schema; asking without it",
                    without_credentials(self.base_url),
                )
                stream = await model.client.chat.completions.create(**asked)
            async with stream:
                return await self._read(stream, ctx, index)
        except asyncio.CancelledError:  # nobody waits: the connection is closed
            raise BatchStopped from None
        except Exception as exc:  # the client's errors, or its transport's mid-stream
            raise explain(exc, self.base_url, self.timeout_s) from None
        finally:
            model.open.pop(task, None)

    @staticmethod
    def response_format(request: ChatRequest) -> dict[str, Any]:
        """An answer that must follow a schema asks the engine for structured output (vLLM,
        SGLang and llama.cpp's server constrain their sampling to it)."""
        if request.json_schema is None:
            return {}
        schema = json.loads(request.json_schema)
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        }

    @staticmethod
    async def _read(stream: Any, ctx: BatchContext, index: int) -> ChatResult:
        pieces: list[str] = []
        finish = None
        count = 0
        async for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
            count += 1
            if count % STREAM_EVERY == 0:
                ctx.partial(index, "".join(pieces).strip())
        return ChatResult("".join(pieces).strip(), count, finish == "stop")

    @staticmethod
    async def _watch(model: RemoteChat) -> None:
        """Cancel the requests of jobs nobody waits for: a silent server is no excuse."""
        while True:
            await asyncio.sleep(WATCH_S)
            for task, (ctx, index) in list(model.open.items()):
                if ctx.abandoned(index):
                    task.cancel()
