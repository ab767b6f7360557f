"""Chat answered by an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's server,
Ollama) through the official ``openai`` client, streaming.

It is the chat task with another engine: the same requests, prompts (as chat messages),
validation and results, so quotas, fairness, conversation memory and usage rows work as
with the local model. Each admitted conversation is one streamed HTTP request, run on a
thread of its own up to ``max_concurrent`` at once (the executor admits no more: they are
its rows, as with continuous batching); Cancel closes the stream, and every failure of the
server becomes one line for the member.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
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


def explain(error: Exception, base_url: str, timeout_s: float) -> EngineError:
    """One line for the member (and the kind, for metrics) from the client's error."""
    if "Timeout" in type(error).__name__:  # the transport's, while a stream is read
        error = openai.APITimeoutError(request=None)  # type: ignore[arg-type]
    elif not isinstance(error, openai.OpenAIError):  # the transport broke off mid-stream
        return EngineError("unreachable", f"the chat server at {base_url} broke off its answer")
    match error:
        case openai.APITimeoutError():
            return EngineError("timeout", f"the chat server did not answer within {timeout_s:g} s")
        case openai.APIConnectionError():
            return EngineError("unreachable", f"the chat server at {base_url} cannot be reached")
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
class _Open:
    ctx: BatchContext
    index: int
    stream: Any = None


@dataclass
class RemoteChat:
    """The client and the threads its streams run on."""

    client: openai.OpenAI
    model: str
    pool: concurrent.futures.ThreadPoolExecutor
    open: dict[int, _Open] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: threading.Event = field(default_factory=threading.Event)


class RemoteChatTask(ChatTask):
    remote: ClassVar[bool] = True
    """Needs no device: the executor runs it beside the devices, not on their threads."""

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
        return f"RemoteChatTask({self.base_url!r})"

    def running_cap(self) -> int:
        return self.max_concurrent

    def load(self, spec: LoadSpec) -> RemoteChat:
        """``spec.source`` is the model's name on the server."""
        client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self._api_key or "none",  # servers without keys still want the header
            max_retries=0,  # a retry is the member's to decide, told at once
            timeout=openai.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
        )
        remote = RemoteChat(
            client,
            spec.source,
            concurrent.futures.ThreadPoolExecutor(self.max_concurrent, "chat-stream"),
        )
        threading.Thread(target=self._watch, args=(remote,), name="chat-watch", daemon=True).start()
        return remote

    def unload(self, model: RemoteChat) -> None:
        model.closed.set()
        with model.lock:
            streams = [entry.stream for entry in model.open.values() if entry.stream]
        for stream in streams:
            stream.close()
        model.pool.shutdown(wait=False, cancel_futures=True)
        model.client.close()

    def busy(self, model: RemoteChat) -> bool:
        with model.lock:
            return bool(model.open)

    def model_bytes(self, model: RemoteChat) -> int:
        return 0

    def window(self, source: str) -> ChatWindow:
        return EstimatedWindow(self, None, self.context_tokens)

    def run_batch(
        self, model: RemoteChat, requests: Sequence[ChatRequest], ctx: BatchContext
    ) -> list[concurrent.futures.Future[ChatResult]]:
        return [
            model.pool.submit(self._answer, model, request, ctx, index)
            for index, request in enumerate(requests)
        ]

    def _answer(
        self, model: RemoteChat, request: ChatRequest, ctx: BatchContext, index: int
    ) -> ChatResult:
        entry = _Open(ctx, index)
        key = id(entry)
        with model.lock:
            model.open[key] = entry
        try:
            if ctx.abandoned(index):
                raise BatchStopped
            stream = model.client.chat.completions.create(
                model=model.model,
                messages=self.messages(request),  # type: ignore[arg-type]
                max_tokens=self.new_tokens(request),
                temperature=request.temperature,
                seed=request.seed,
                stream=True,
            )
            entry.stream = stream
            return self._read(stream, ctx, index)
        except (BatchStopped, EngineError):
            raise
        except Exception as exc:  # the client's errors, or its transport's mid-stream
            if ctx.abandoned(index):  # the stream was closed on purpose
                raise BatchStopped from None
            raise explain(exc, self.base_url, self.timeout_s) from None
        finally:
            with model.lock:
                model.open.pop(key, None)

    def _read(self, stream: Any, ctx: BatchContext, index: int) -> ChatResult:
        pieces: list[str] = []
        finish = None
        with stream:
            for count, chunk in enumerate(stream, 1):
                if ctx.abandoned(index):
                    raise BatchStopped
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
                if count % STREAM_EVERY == 0:
                    ctx.partial(index, "".join(pieces).strip())
        if ctx.abandoned(index):
            raise BatchStopped
        text = "".join(pieces).strip()
        return ChatResult(text, len(pieces), finish == "stop")

    def _watch(self, model: RemoteChat) -> None:
        """Close the streams of jobs nobody waits for: a stalled stream ends at once."""
        while not model.closed.wait(WATCH_S):
            with model.lock:
                stale = [e.stream for e in model.open.values()
                         if e.stream is not None and e.ctx.abandoned(e.index)]  # fmt: skip
            for stream in stale:
                try:
                    stream.close()
                except Exception:  # closing a stream another thread reads may complain
                    log.debug("closing a cancelled chat stream failed", exc_info=True)
