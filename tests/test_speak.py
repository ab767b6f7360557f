"""Text to speech with tiny SpeechT5, HiFi-GAN and VITS checkpoints built offline."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry
from handlers.base import BatchStopped, InvalidInput, LoadSpec
from handlers.speak import (
    SILENCE_S,
    SpeakRequest,
    SpeakResult,
    SpeakTask,
    Speech,
    SpeechModel,
    call_pcm,
    voice_presets,
)
from tests.tinymodels import (
    build_hifigan,
    build_speecht5,
    build_vits,
    build_voices_npy,
    build_voices_parquet,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Recorder:
    """A batch context that records progress and stops after ``stop_after`` checks."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.checks = 0
        self.steps: list[tuple[int, int]] = []

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_after is not None and self.checks > self.stop_after

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))

    def partial(self, index: int, data: Any) -> None:
        raise AssertionError("speak streams nothing")


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speech")
    build_speecht5(root / "speecht5")
    build_hifigan(root / "hifigan")
    build_voices_parquet(root / "voices.parquet")
    build_voices_npy(root / "voices.npy")
    build_vits(root / "vits")
    build_vits(root / "vits-quiet", noise=False)
    return root


@pytest.fixture(scope="session")
def task(speech_dir: Path) -> SpeakTask:
    return SpeakTask(
        voices=str(speech_dir / "voices.parquet"),
        vocoder=str(speech_dir / "hifigan"),
        language_models={"fr": str(speech_dir / "vits"), "DE": str(speech_dir / "vits-quiet")},
    )


def load(task: SpeakTask, directory: Path) -> SpeechModel:
    return task.load(LoadSpec(str(directory), "cpu", torch.float32))


@pytest.fixture(scope="session")
def speecht5(task: SpeakTask, speech_dir: Path) -> SpeechModel:
    return load(task, speech_dir / "speecht5")


def one_by_one(
    task: SpeakTask, model: SpeechModel, requests: Sequence[SpeakRequest]
) -> list[Speech]:
    return [task.run_batch(model, [request], Recorder())[0] for request in requests]


def assert_same_audio(got: Sequence[Speech], expected: Sequence[Speech]) -> None:
    assert [len(s.samples) for s in got] == [len(s.samples) for s in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.samples, b.samples, atol=1e-5, rtol=0)


def test_wav_and_ogg_decode_at_the_vocoder_rate(task: SpeakTask, speecht5: SpeechModel) -> None:
    (speech,) = task.run_batch(speecht5, [SpeakRequest("Hello world.")], Recorder())
    result = task.finish(speech)

    assert isinstance(result, SpeakResult) and result.sample_rate == 16000
    wav, rate = sf.read(io.BytesIO(result.wav), dtype="float32")
    assert rate == 16000 and len(wav) == len(speech.samples) > 0
    assert result.seconds == pytest.approx(len(wav) / 16000)
    np.testing.assert_allclose(wav, speech.samples, atol=1.5 / 32768)  # PCM16 quantisation
    assert sf.info(io.BytesIO(result.ogg)).subtype == "OPUS"
    ogg, rate = sf.read(io.BytesIO(result.ogg), dtype="float32")
    assert rate == 16000 and len(ogg) > 0 and abs(len(ogg) - len(wav)) < 0.05 * rate


def test_speech_for_a_call_comes_back_as_the_call_plays_it(
    task: SpeakTask, speecht5: SpeechModel
) -> None:
    requests = [SpeakRequest("Hello world.", for_call=True), SpeakRequest("Hello world.")]
    for_call, as_file = task.run_batch(speecht5, requests, Recorder())
    np.testing.assert_array_equal(for_call.samples, as_file.samples)  # the same speech
    result = task.finish(for_call)
    assert result.pcm == call_pcm(np.clip(for_call.samples, -1, 1), 16000)
    assert result.wav == result.ogg == b"" and task.finish(as_file).pcm == b""


def test_a_batch_sounds_like_its_requests_one_at_a_time(
    task: SpeakTask, speecht5: SpeechModel
) -> None:
    requests = [
        SpeakRequest("Hello world. How are you?"),
        SpeakRequest("The quick brown fox jumps over the lazy dog!", voice="bdl"),
        SpeakRequest("ok", voice="ksp"),
        SpeakRequest("Sphinx of black quartz, judge my vow.", voice="clb"),
        SpeakRequest("The quick brown fox jumps over the lazy dog!", voice="rms"),
    ]
    alone = one_by_one(task, speecht5, requests)
    assert len({len(s.samples) for s in alone}) > 2, "pieces must end at different lengths"

    ctx = Recorder()
    batched = task.run_batch(speecht5, requests, ctx)

    assert_same_audio(batched, alone)
    assert not np.array_equal(batched[1].samples, batched[4].samples), "voices must differ"
    assert ctx.steps[-1][0] == ctx.steps[-1][1] > 0


def test_long_text_is_spoken_sentence_by_sentence(task: SpeakTask, speecht5: SpeechModel) -> None:
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Pack my box with five dozen liquor jugs!",
        "How vexingly quick daft zebras jump?",
    ]
    text = " ".join(sentences)
    limit = speecht5.max_tokens
    assert limit is not None and len(speecht5.tokenizer(text).input_ids) > limit  # too long at once

    (whole,) = task.run_batch(speecht5, [SpeakRequest(text)], Recorder())
    parts = one_by_one(task, speecht5, [SpeakRequest(s) for s in sentences])

    pause = np.zeros(int(16000 * SILENCE_S), dtype=np.float32)
    joined = np.concatenate([parts[0].samples, pause, parts[1].samples, pause, parts[2].samples])
    assert len(whole.samples) == len(joined)
    np.testing.assert_allclose(whole.samples, joined, atol=1e-5, rtol=0)


def test_a_piece_that_never_stops_keeps_its_own_length_in_a_batch(
    task: SpeakTask, speech_dir: Path
) -> None:
    model = load(task, speech_dir / "speecht5")
    with torch.no_grad():
        model.model.speech_decoder_postnet.prob_out.bias.fill_(-1e4)  # never predicts the end
    short, longer = SpeakRequest("ok"), SpeakRequest("How are you?")
    (alone,) = task.run_batch(model, [short], Recorder())
    batched, _ = task.run_batch(model, [short, longer], Recorder())

    tokens = len(model.tokenizer("ok").input_ids)
    assert len(alone.samples) == tokens * 20 * 64  # 20 frames per token, 64 samples per frame
    assert len(batched.samples) == len(alone.samples)


def test_a_stopped_batch_ends_between_decoder_steps(task: SpeakTask, speech_dir: Path) -> None:
    model = load(task, speech_dir / "speecht5")
    with torch.no_grad():
        model.model.speech_decoder_postnet.prob_out.bias.fill_(-1e4)
    ctx = Recorder(stop_after=1)  # passes the check before decoding, then stops

    with pytest.raises(BatchStopped):
        task.run_batch(model, [SpeakRequest("How are you?")], ctx)
    assert ctx.checks == 2 and ctx.steps == []


@pytest.mark.parametrize(
    ("request_", "option", "hint"),
    [
        (SpeakRequest(""), "text", "empty"),
        (SpeakRequest(" \n "), "text", "empty"),
        (SpeakRequest("a" * 601), "text", "limit is 600"),
        (SpeakRequest("hallo", language="nl"), "language", "choose one of: de, en, fr"),
        (SpeakRequest("hi", voice="nobody"), "voice", "awb, bdl, clb, jmk, ksp, rms, slt"),
    ],
)
def test_invalid_requests_name_the_option(
    task: SpeakTask, request_: SpeakRequest, option: str, hint: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        task.validate(request_)
    assert raised.value.option == option and hint in raised.value.message


def test_requests_at_the_limits_pass(task: SpeakTask) -> None:
    for request in (
        SpeakRequest("a" * 600, voice="slt"),
        SpeakRequest("Bonjour", language="fr"),
        SpeakRequest("Hallo", language=" De "),
    ):
        task.validate(request)


def test_languages_route_to_their_models(task: SpeakTask, speech_dir: Path) -> None:
    default = "speecht5-default"
    assert task.model_for(SpeakRequest("hi"), default) == default
    assert task.model_for(SpeakRequest("salut", language="FR"), default) == str(speech_dir / "vits")
    assert task.model_for(SpeakRequest("hallo", language="de"), default) == str(
        speech_dir / "vits-quiet"
    )
    keys = {task.batch_key(SpeakRequest("x", language=code)) for code in ("en", "fr", "Fr")}
    assert keys == {"en", "fr"}
    assert task.languages() == ["de", "en", "fr"]
    english = SpeakTask(language_models={"en": "facebook/mms-tts-eng"})
    assert english.model_for(SpeakRequest("hi"), default) == "facebook/mms-tts-eng"


def test_vits_speaks_a_configured_language(task: SpeakTask, speech_dir: Path) -> None:
    model = load(task, speech_dir / "vits")
    requests = [
        SpeakRequest("Bonjour le monde. Ça va très bien!", language="fr"),
        SpeakRequest("oui", language="fr", voice="bdl"),  # voices are SpeechT5's; ignored
    ]
    first = task.run_batch(model, requests, Recorder())
    again = task.run_batch(model, requests, Recorder())

    assert_same_audio(again, first)  # seeded: the same batch gives the same audio
    assert len(first[0].samples) > len(first[1].samples) > 0
    result = task.finish(first[0])
    wav, rate = sf.read(io.BytesIO(result.wav), dtype="float32")
    assert rate == model.sample_rate == 16000 and len(wav) == len(first[0].samples)
    ogg, rate = sf.read(io.BytesIO(result.ogg), dtype="float32")
    assert rate == 16000 and len(ogg) > 0


def test_vits_without_noise_batches_like_one_at_a_time(task: SpeakTask, speech_dir: Path) -> None:
    model = load(task, speech_dir / "vits-quiet")
    requests = [
        SpeakRequest("Guten Tag, wie geht es dir heute?", language="de"),
        SpeakRequest("ja", language="de"),
        SpeakRequest("Danke schön!", language="de"),
    ]  # one sentence each: every piece's last frames see the padding
    alone = one_by_one(task, model, requests)
    batched = task.run_batch(model, requests, Recorder())

    assert [len(s.samples) for s in batched] == [len(s.samples) for s in alone]
    tail = 4 * 16  # the vocoder's last frames see the batch's padding
    for a, b in zip(batched, alone, strict=True):
        np.testing.assert_allclose(a.samples[:-tail], b.samples[:-tail], atol=1e-5, rtol=0)


def test_voice_presets() -> None:
    names = [
        f"cmu_us_{code}_arctic-wav-arctic_a{i:04d}" for code in ("bdl", "slt") for i in range(4)
    ]
    assert voice_presets(len(names), names) == {"bdl": 0, "slt": 4}
    many = ["cmu_us_bdl_arctic-x"] * 7000 + ["cmu_us_slt_arctic-x"] * 400
    assert voice_presets(len(many), many) == {"bdl": 0, "slt": 7306}  # the classic example row
    assert voice_presets(7931, None) == {"slt": 7306}
    assert voice_presets(2, ["a.wav", "b.wav"]) == {"voice0": 0, "voice1": 1}


def test_a_numpy_voice_table_names_voices_by_row(speech_dir: Path) -> None:
    task = SpeakTask(voices=str(speech_dir / "voices.npy"), vocoder=str(speech_dir / "hifigan"))
    assert task.voice_names() == ["voice0", "voice1", "voice2"]
    assert task.default_voice() == "voice0"
    task.validate(SpeakRequest("hi"))  # no voice: the table's first
    model = load(task, speech_dir / "speecht5")
    default, chosen = task.run_batch(
        model, [SpeakRequest("hi"), SpeakRequest("hi", voice="voice2")], Recorder()
    )
    assert len(default.samples) > 0 and not np.array_equal(default.samples, chosen.samples)


async def test_concurrent_requests_share_a_batch_through_the_executor(
    task: SpeakTask, speech_dir: Path, speecht5: SpeechModel
) -> None:
    requests = [SpeakRequest(t) for t in ("Hello world.", "How are you?", "ok", "Pack my box.")]
    alone = [task.finish(s) for s in one_by_one(task, speecht5, requests)]
    executor = Executor(
        {"speak": task},
        {"speak": str(speech_dir / "speecht5")},
        LocalBackend(ModelRegistry(device="cpu")),
        ExecutorConfig(max_per_user=64),
    )
    async with executor:
        handles = [executor.submit("speak", r, user_id=i) for i, r in enumerate(requests)]
        results = await asyncio.gather(*handles)
        snapshot = executor.snapshot()

    (stats,) = snapshot.models
    assert max(stats.batch_sizes) > 1, stats.batch_sizes
    for got, expected in zip(results, alone, strict=True):
        assert isinstance(got, SpeakResult)
        a, _ = sf.read(io.BytesIO(got.wav), dtype="float32")
        b, _ = sf.read(io.BytesIO(expected.wav), dtype="float32")
        np.testing.assert_allclose(a, b, atol=1.5 / 32768)
