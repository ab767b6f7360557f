"""Chat on an OpenAI-compatible server (BOT_CHAT__ENGINE=openai), against a fake one that
streams server-sent events as vLLM does: the answer streams, Cancel closes the stream, each
failure of the server is one line (and counted), and the key never shows."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.cli import PRIVATE_LOGGERS, keep_private_loggers_above_debug, main
from bot.conversations import Turn, fit
from bot.executor import (
    Executor,
    ExecutorConfig,
    JobCancelled,
    JobHandle,
    LocalBackend,
    ModelRegistry,
)
from bot.executor.metrics import ModelKey
from handlers.chat import ChatRequest, ChatResult, ChatTurn
from handlers.kinds import TaskKind
from handlers.remote_chat import EngineError, RemoteChatTask
from tests.fakes import FakeClock, FakeTask, Item, limits

KEY = "sk-test-7f3a9c1e5b"
WORDS = ["Osmosis", " is", " water", " moving", " through", " a", " membrane", "."]


@dataclass
class FakeServer:
    """POST /v1/chat/completions. ``reply``: "words", "slow" (a word every 50 ms, many),
    "stall" (two words, then silence), "queued" (no answer at all for long: an overloaded
    server), or an HTTP status to fail with."""

    reply: str | int = "words"
    schemas: bool = True
    """Whether it takes ``response_format`` (False: a 400, as engines without it answer)."""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    closed_early: asyncio.Event = field(default_factory=asyncio.Event)
    silent: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a "stall" or "queued" reply stops sending."""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.keys.append(request.headers.get("Authorization"))
        status, said = (self.reply, "no") if isinstance(self.reply, int) else (None, "")
        if not self.schemas and "response_format" in body:
            status, said = 400, "response_format json_schema is not supported"
        if status is not None:
            error = {"error": {"message": said, "type": "error", "code": status}}
            return web.json_response(error, status=status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        words = WORDS * 50 if self.reply == "slow" else WORDS
        try:
            if self.reply == "queued":
                self.silent.set()
                await asyncio.sleep(30)
            await response.prepare(request)
            for index, word in enumerate(words):
                await self._send(response, body["model"], {"content": word}, None)
                if self.reply == "slow":
                    await asyncio.sleep(0.05)
                if self.reply == "stall" and index == 1:
                    self.silent.set()
                    await asyncio.sleep(30)
            await self._send(response, body["model"], {}, "stop")
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed_early.set()
            raise
        return response

    @staticmethod
    async def _send(
        response: web.StreamResponse, model: str, delta: dict[str, str], finish: str | None
    ) -> None:
        chunk = {
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }  # fmt: skip
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeServer, str]]:
    fake = FakeServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.completions)
    async with TestServer(app) as running:
        yield fake, str(running.make_url("/v1"))


class Failures:
    """A metrics observer that keeps the failures it is told of."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_failure(self, key: ModelKey, error: str) -> None:
        self.seen.append((key[0], error))

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


def executor_for(
    url: str, *extra: FakeTask, timeout_s: float = 5.0, clock: FakeClock | None = None
) -> Executor:
    task = RemoteChatTask(url, KEY, max_concurrent=2, timeout_s=timeout_s, default_new_tokens=64)
    return Executor(
        {"chat": task, **{t.name: t for t in extra}},
        {"chat": "served-model", **{t.name: "fake-model" for t in extra}},
        LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(limits={kind: limits(max_batch=4) for kind in TaskKind}),
        **({"clock": clock} if clock is not None else {}),
    )


async def first_text(handle: JobHandle) -> None:
    async for event in handle.events():
        if event.partial:
            return
        assert not event.state.final, event


async def test_the_answer_streams_from_the_server(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    request = ChatRequest(
        "and osmosis?", system="You are a tutor.", temperature=0.3, seed=9,
        history=(ChatTurn("user", "what is diffusion?", "alice"), ChatTurn("assistant", "...")),
    )  # fmt: skip
    async with executor_for(url) as executor:
        handle = executor.submit("chat", request, user_id="alice")
        partials = [e.partial async for e in handle.events() if e.partial]
        answer = await handle
    assert answer == ChatResult("Osmosis is water moving through a membrane.", 9, True)
    assert partials == ["Osmosis is water moving through a membrane."]
    (body,) = fake.bodies
    assert body["model"] == "served-model" and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (64, 0.3, 9)
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][1]["content"] == "alice: what is diffusion?"
    assert fake.keys == [f"Bearer {KEY}"]


async def test_an_answer_that_follows_a_schema_asks_for_structured_output(
    server: tuple[FakeServer, str],
) -> None:
    fake, url = server
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    async with executor_for(url) as executor:
        plain = executor.submit("chat", ChatRequest("hi"), user_id="alice")
        await plain
        shaped = ChatRequest("quiz me", json_schema=json.dumps(schema))
        await executor.submit("chat", shaped, user_id="alice")
    assert "response_format" not in fake.bodies[0]
    assert fake.bodies[1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    fake.schemas = False  # an engine without structured output: asked again without
    async with executor_for(url) as executor:
        answer = await executor.submit("chat", shaped, user_id="alice")
    assert answer.text.startswith("Osmosis") and len(fake.bodies) == 4
    assert "response_format" in fake.bodies[2] and "response_format" not in fake.bodies[3]


async def test_cancel_closes_the_stream_and_frees_the_row(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    fake.reply = "slow"
    async with executor_for(url) as executor:
        handle = executor.submit("chat", ChatRequest("tell me all"), user_id="alice")
        await first_text(handle)
        handle.cancel()
        with pytest.raises(JobCancelled):
            await handle
        await asyncio.wait_for(fake.closed_early.wait(), 5)
        assert executor.scheduler.outstanding == 0


@pytest.mark.parametrize("reply", ["stall", "queued"])
async def test_cancel_reaches_a_silent_server_at_once(
    server: tuple[FakeServer, str], reply: str
) -> None:
    """Nothing arrives to notice the cancellation by: the connection itself is closed."""
    fake, url = server
    fake.reply = reply
    async with executor_for(url, timeout_s=30) as executor:
        handle = executor.submit("chat", ChatRequest("hi"), user_id="alice")
        await asyncio.wait_for(fake.silent.wait(), 10)
        handle.cancel()
        await asyncio.wait_for(fake.closed_early.wait(), 2)
        remote = executor.backends[-1]  # the backend of tasks that need no device
        assert isinstance(remote, LocalBackend)
        model = remote.registry.get(executor.tasks["chat"], "served-model")
        for _ in range(100):
            if not model.open:
                break
            await asyncio.sleep(0.01)
        assert not model.open and executor.scheduler.outstanding == 0


async def test_a_device_batch_does_not_hold_up_the_servers_answers(
    server: tuple[FakeServer, str],
) -> None:
    """The chat server's requests run beside the devices, not behind their batches."""
    _, url = server
    device = FakeTask(name="sentiment", hold_values={"slow"})
    device.gate.clear()  # its batch holds the device until the test lets it go
    async with executor_for(url, device) as executor:
        held = executor.submit("sentiment", Item("slow"), user_id="bob")
        await asyncio.to_thread(device.entered.wait, 5)
        chat = executor.submit("chat", ChatRequest("hi"), user_id="alice")
        answer = await asyncio.wait_for(chat.result(), 5)
        assert answer.complete and not held.done()
        device.gate.set()
        await held


@pytest.fixture
def private_loggers() -> Iterator[None]:
    """The bot's logging policy (openai 1.x and 2.x log the server's URL at DEBUG)."""
    levels = {name: logging.getLogger(name).level for name in PRIVATE_LOGGERS}
    keep_private_loggers_above_debug()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "kind", "line"),
    [
        (401, "unauthorized", "the chat server refused the bot's API key (HTTP 401)"),
        (429, "rate_limited", "the chat server is rate-limiting the bot (HTTP 429)"),
        (503, "server_error", "the chat server failed (HTTP 503)"),
        (404, "not_found", "the chat server does not serve the configured model"),
        ("unreachable", "unreachable", "the chat server cannot be reached; try again later"),
        ("stall", "timeout", "the chat server did not answer within 0.5 s"),  # mid-stream
        ("queued", "timeout", "the chat server did not answer within 0.5 s"),  # no headers
    ],
)
async def test_each_failure_of_the_server_is_one_line_and_counted(
    server: tuple[FakeServer, str], reply: str | int, kind: str, line: str,
    caplog: pytest.LogCaptureFixture, private_loggers: None,
) -> None:  # fmt: skip
    fake, url = server
    fake.reply = reply
    if reply == "unreachable":
        url = f"http://bot:hunter2@127.0.0.1:{closed_port()}/v1"  # credentials in the URL
    caplog.set_level(logging.DEBUG)
    failures = Failures()
    async with executor_for(url, timeout_s=0.5) as executor:
        executor.metrics.observers.append(failures)
        handle = executor.submit("chat", ChatRequest("hi"), user_id="alice")
        with pytest.raises(EngineError) as failed:
            await asyncio.wait_for(handle.result(), 10)
    assert line in str(failed.value) and "\n" not in str(failed.value)
    assert "127.0.0.1" not in str(failed.value)  # no address for members; the log has it
    assert failures.seen == [("chat", kind)]
    assert executor.scheduler.outstanding == 0
    assert KEY not in caplog.text and "hunter2" not in caplog.text


def test_the_key_never_shows_in_settings_or_doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_CHAT__ENGINE", "openai")
    monkeypatch.setenv("BOT_CHAT__OPENAI__API_KEY", KEY)
    monkeypatch.setenv("BOT_CHAT__OPENAI__MODEL", "Qwen/Qwen2.5-7B-Instruct")
    monkeypatch.setenv("BOT_DEVICE", "cpu")
    assert main(["settings"]) == 0
    main(["doctor"])
    output = capsys.readouterr()
    assert KEY not in output.out + output.err
    assert "BOT_CHAT__OPENAI__API_KEY" in output.out
    assert "model chat " not in output.out  # another server has it: nothing to download
    assert (
        "chat engine          OpenAI-compatible server at http://localhost:8000/v1, "
        "model Qwen/Qwen2.5-7B-Instruct" in output.out
    )
    assert repr(RemoteChatTask("http://x/v1", KEY)) == "RemoteChatTask('http://x/v1')"


async def test_ask_chat_answers_from_the_server(
    server: tuple[FakeServer, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, url = server
    for name, value in {
        "BOT_CHAT__ENGINE": "openai", "BOT_CHAT__OPENAI__BASE_URL": url,
        "BOT_CHAT__OPENAI__MODEL": "served-model", "BOT_DATA_DIR": str(tmp_path),
        "BOT_DEVICE": "cpu",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["ask", "chat", "what is osmosis?"]) == 0
    assert capsys.readouterr().out.strip() == "Osmosis is water moving through a membrane."
    assert fake.bodies[0]["messages"][-1]["content"] == "what is osmosis?"


def test_conversations_are_fitted_to_the_servers_context_by_estimate() -> None:
    task = RemoteChatTask("http://x/v1", context_tokens=256, default_new_tokens=64)
    window = task.window("served-model")
    history = [Turn(n, "user" if n % 2 else "assistant", "a line of the lesson " * 5, "alice")
               for n in range(1, 41)]  # fmt: skip
    request = ChatRequest("and now?")
    fitted, dropped = fit(window, request, history)
    assert 0 < dropped < len(history)
    assert window.prompt_tokens(fitted) <= window.budget(request) == 256 - 64
    assert len(json.dumps(task.messages(fitted))) < 3 * (256 - 64)  # about 3 chars a token


async def test_the_servers_time_is_not_charged_as_gpu_time(server: tuple[FakeServer, str]) -> None:
    """BOT_GPU_SECONDS_PER_DAY budgets this machine's devices, not another server's."""
    fake, url = server
    fake.reply = "slow"
    clock = FakeClock()
    async with executor_for(url, clock=clock) as executor:
        handle = executor.submit("chat", ChatRequest("tell me all"), user_id="alice")
        await first_text(handle)
        clock.now += 100.0  # the answer streams for 100 s on the executor's clock
        handle.cancel()
        with pytest.raises(JobCancelled):
            await handle
    assert handle.run_s == 100.0
    assert handle.gpu_s == 0.0  # joining took no time; the answer is not charged
