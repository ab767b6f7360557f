"""``python -m bot ask`` end to end, through the real executor, on tiny models."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image

from bot.cli import main
from tests import tinymodels

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Builds each tiny model once per module, on first use."""
    cache: dict[str, Path] = {}
    builders = {
        "summarize": tinymodels.build_summarizer,
        "sentiment": tinymodels.build_classifier,
        "classify": tinymodels.build_nli,
        "chat": tinymodels.build_chat,
        "translate": tinymodels.build_m2m100,
        "imagine": tinymodels.build_pipeline,
        "speak": tinymodels.build_speecht5,
        "vocoder": tinymodels.build_hifigan,
        "transcribe": tinymodels.build_whisper,
        "describe": tinymodels.build_vision,
        "upscale": tinymodels.build_upscaler,
    }

    def get(task: str) -> Path:
        if task not in cache:
            cache[task] = builders[task](tmp_path_factory.mktemp(task))
        return cache[task]

    return get


def ask(task: str, model: Path, *args: str) -> int:
    return main(["ask", task, *args, "--model", str(model), "--device", "cpu"])


def test_summarize_text_and_file(
    built: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ask("summarize", built("summarize"), "The group met today.", "--max-tokens", "6") == 0
    assert capsys.readouterr().out.strip()
    article = tmp_path / "notes.txt"
    article.write_text(" ".join(s + "." for s in tinymodels.sentences(10, 20)), encoding="utf-8")
    assert ask("summarize", built("summarize"), "--file", str(article), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["summary"] and result["chunks"] > 1


def test_sentiment_prints_label_and_score(
    built: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert ask("sentiment", built("sentiment"), "great coffee") == 0
    label, score = capsys.readouterr().out.split()
    assert label in {"POSITIVE", "NEGATIVE"} and score.startswith("(0.")


def test_classify_prints_every_label(
    built: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert ask("classify", built("classify"), "loud city", "--labels", "music,art,river") == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[1] for line in lines) == ["art", "music", "river"]


def test_chat_streams_the_answer(
    built: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert ask("chat", built("chat"), "hello", "--max-tokens", "20") == 0
    streamed = capsys.readouterr().out
    assert ask("chat", built("chat"), "hello", "--max-tokens", "20", "--json") == 0
    assert streamed.strip() == json.loads(capsys.readouterr().out)["text"]


def test_chat_in_the_terminal_remembers_and_folds(
    built: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m bot chat``: each line a turn, the earlier ones reaching the model until
    they no longer fit its window (256 tokens here, 20 of them for the answer); then they
    are folded into a summary by the summarize model."""
    monkeypatch.setenv("BOT_MODELS__SUMMARIZE", str(built("summarize")))
    monkeypatch.setenv("BOT_LOG_PROMPTS", "true")  # to see what reached the model
    lines = [f"we read about the river and the old city, part {n}" for n in range(8)]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([*lines, "memory", ""])))
    args = ["chat", "--model", str(built("chat")), "--device", "cpu", "--max-tokens", "20",
            "--system", "be brief"]  # fmt: skip
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if line.strip()]) == len(lines), err
    assert "Summary of the earlier conversation: " in err
    with sqlite3.connect(tmp_path / "data" / "usage.sqlite3") as db:
        prompts = [json.loads(p) for (p,) in db.execute(
            "SELECT prompt FROM invocations WHERE task = 'chat' ORDER BY started_at"
        )]  # fmt: skip
        summary, through = db.execute(
            "SELECT summary, summary_through FROM conversations"
        ).fetchone()
    assert [p["message"] for p in prompts] == lines
    assert {p["system"] for p in prompts} == {"be brief"}
    second = prompts[1]["history"]
    assert (second[0]["role"], second[0]["content"]) == ("user", lines[0])
    assert second[1]["role"] == "assistant"
    assert summary and through and prompts[-1]["summary"]
    assert all(t["content"] != lines[0] for t in prompts[-1]["history"])


def test_translate_names_languages(
    built: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = built("translate")
    assert ask("translate", model, "good morning", "--to", "French", "--from", "en", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["source"], result["target"]) == ("en", "fr") and result["text"]
    assert ask("translate", model, "Der Hund schläft im Garten.", "--to", "english") == 0
    assert capsys.readouterr().out.strip()
    # The first thing everyone types: detection alone leaves it unclear; English is guessed.
    assert ask("translate", model, "Hello world", "--to", "fr") == 0
    captured = capsys.readouterr()
    assert "from en, guessed: pass --from if wrong" in captured.err


def test_imagine_writes_pngs_with_the_seed(
    built: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["a red cat", "--steps", "2", "--seed", "42", "--count", "2", "--json"]
    assert ask("imagine", built("imagine"), *args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seed"] == 42
    assert result["files"] == ["imagine-42-1.png", "imagine-42-2.png"]
    for name in result["files"]:
        with Image.open(tmp_path / name) as image:
            assert image.size == (tinymodels.NATIVE_SIZE, tinymodels.NATIVE_SIZE)
    assert ask("imagine", built("imagine"), "cat", "--steps", "2", "--out", "cat.png") == 0
    assert "wrote cat.png" in capsys.readouterr().out
    assert (tmp_path / "cat.png").stat().st_size > 0


def test_upscale_writes_the_picture_larger(
    built: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (48, 32), "teal").save(tmp_path / "sketch.png")
    args = ["sketch.png", "--factor", "4", "--seed", "3", "--out", "big.png", "--json"]
    assert ask("upscale", built("upscale"), *args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"file": "big.png", "size": "192x128", "seed": 3, "withheld": False}
    assert Image.open(tmp_path / "big.png").size == (192, 128)
    assert ask("upscale", built("upscale"), "sketch.png", "--factor", "3") == 2
    assert "error: factor: must be 2 or 4" in capsys.readouterr().err


def test_speak_writes_ogg_or_wav(
    built: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BOT_SPEAK__VOCODER", str(built("vocoder")))
    monkeypatch.setenv("BOT_SPEAK__VOICES", str(tinymodels.build_voices_npy(tmp_path / "v.npy")))
    assert ask("speak", built("speak"), "Hello there. See you soon.") == 0
    assert capsys.readouterr().out.startswith("wrote speak.ogg")
    audio, rate = soundfile.read(tmp_path / "speak.ogg")
    assert rate == 16000 and len(audio) > 0
    assert ask("speak", built("speak"), "Hello.", "--voice", "voice1", "--out", "hi.wav") == 0
    assert soundfile.info(tmp_path / "hi.wav").format == "WAV"
    assert ask("speak", built("speak"), "Hello.", "--voice", "nobody") == 2
    assert "error: voice: unknown voice 'nobody'" in capsys.readouterr().err


def test_transcribe_prints_the_words_or_a_timed_line_per_part(
    built: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tone = 0.3 * np.sin(np.arange(16_000 * 35) * 0.1).astype(np.float32)
    soundfile.write(tmp_path / "lecture.ogg", tone, 16_000, format="OGG", subtype="OPUS")
    assert ask("transcribe", built("transcribe"), "lecture.ogg", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] and result["language"] in tinymodels.WHISPER_LANGUAGES
    assert len(result["segments"]) == 2 and round(result["seconds"]) == 35
    assert ask("transcribe", built("transcribe"), "lecture.ogg", "--timestamps") == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("[0:00 - 0:2") and second.split("]")[0].endswith(" - 0:35")
    (tmp_path / "notes.txt").write_text("not a recording")  # found out where it is decoded
    assert ask("transcribe", built("transcribe"), "notes.txt") == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == "error: file: is not an audio or video file I can read, or is damaged"


@pytest.mark.parametrize(
    ("task", "args", "message"),
    [
        ("summarize", [], "error: text: give the text or --file\n"),
        ("summarize", ["x", "--file", "/nonexistent.txt"], "error: file: cannot be read"),
        ("classify", ["text", "--labels", "only-one"], "error: labels: give between 2 and 10"),
        ("chat", ["hi", "--temperature", "9"], "error: temperature: must be between 0 and 2\n"),
        ("translate", ["hello", "--to", "Frnch"], "error: target: unknown language 'Frnch'"),
        ("imagine", ["cat", "--steps", "0"], "error: steps: "),
        ("imagine", ["cat", "--out", "cat.jpg"], "error: out: must end in .png\n"),
        ("speak", ["hi", "--out", "hi.mp3"], "error: out: must end in .ogg or .wav\n"),
        ("transcribe", ["/nonexistent.ogg"], "error: file: '/nonexistent.ogg' is not a file\n"),
        ("transcribe", ["voice.ogg", "--language", "klingon"], "error: language: unknown"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    built: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    task: str,
    args: list[str],
    message: str,
) -> None:
    tone = np.zeros(1600, np.float32)
    soundfile.write(tmp_path / "voice.ogg", tone, 16_000, format="OGG", subtype="OPUS")
    assert ask(task, built(task), *args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message) and captured.err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "summarize", "x", "--length", "epic"], "error: argument --length: invalid choice"),
        (
            ["ask", "chat", "hi", "--max-tokens", "lots"],
            "error: argument --max-tokens: invalid int",
        ),
        (["ask", "paint"], "error: argument TASK: invalid choice: 'paint'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_hub_id_loads_from_the_cache_offline(
    built: Callable[[str], Path], tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    tinymodels.place_in_hub_cache(built("sentiment"), cache, "tiny-org/tiny-sst2")
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "BOT_MODELS__SENTIMENT": "tiny-org/tiny-sst2",
        "BOT_DEVICE": "cpu",
        "BOT_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "sentiment", "good exam", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] in {"POSITIVE", "NEGATIVE"}
    missing = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "sentiment", "good", "--model", "tiny-org/absent"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: could not load model")


@pytest.mark.parametrize("model", ["tiny/sentimnt", "./sentiment", "/no/such/model"])
def test_a_model_folder_that_is_not_there_is_one_line_at_once(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not looked up on the hub (which would advise `models pull` after a minute offline)."""
    (tmp_path / "tiny").mkdir()
    assert main(["ask", "sentiment", "hi", "--model", model, "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"error: model: {model!r} is not a folder here\n"


def test_a_device_this_machine_cannot_use_is_one_line_before_any_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    device = "cuda" if torch.version.cuda is None else "cuda:99"
    assert main(["ask", "sentiment", "hi", "--device", device]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    if torch.version.cuda is None:
        assert line.startswith("error: device 'cuda': this PyTorch is a CPU-only build")
    else:
        assert "is not available: this machine shows" in line
    assert main(["ask", "sentiment", "hi", "--device", "tpu"]) == 2
    assert capsys.readouterr().err == "error: device 'tpu': use auto, cpu, cuda, cuda:N or mps\n"


def test_a_size_the_model_does_not_offer_is_refused_before_it_loads(
    built: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sizes come from the pipeline's config files, read without loading its weights."""
    from handlers.imagine import ImagineTask, configured_native_size, format_sizes

    model = built("imagine")
    native = configured_native_size(str(model))
    assert native is not None
    capsys.readouterr()  # building the model printed its own progress

    def never(self: ImagineTask, spec: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ImagineTask, "load", never)
    assert ask("imagine", model, "a red cat", "--size", "1024x1024") == 2
    sizes = ", ".join(format_sizes(native))
    assert capsys.readouterr().err == f"error: size: must be one of {sizes}\n"


def test_the_native_size_from_config_files_is_the_loaded_pipelines(
    built: Callable[[str], Path],
) -> None:
    import torch

    from handlers.base import LoadSpec
    from handlers.imagine import ImagineTask, configured_native_size, native_size

    model = built("imagine")
    pipe = ImagineTask().load(LoadSpec(str(model), "cpu", torch.float32))
    assert configured_native_size(str(model)) == native_size(pipe.pipe)


def test_output_sent_to_a_file_has_no_progress_bars(
    built: Callable[[str], Path], tmp_path: Path
) -> None:
    """`ask imagine ... > log 2>&1`: plain lines, no \\r, no block characters, no colours,
    although the step bar and diffusers' loading bar draw on a terminal."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BOT_DEVICE": "cpu", "BOT_LOG_LEVEL": "INFO",
           "BOT_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    log = tmp_path / "log"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "bot", "ask", "imagine", "a cat", "--steps", "2",
             "--model", str(built("imagine"))],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, timeout=300,
        )  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text
    assert "wrote imagine-" in text
    assert "\r" not in text and "\x1b[" not in text and "\u2588" not in text, text
