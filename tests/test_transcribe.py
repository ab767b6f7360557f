"""Transcription with a tiny real Whisper built offline, on audio files made in the tests."""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import json
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import WhisperForConditionalGeneration

import handlers.audio
import handlers.transcribe as transcribe_module
from bot.executor import Executor, ExecutorConfig, JobCancelled, LocalBackend, ModelRegistry
from bot.executor.job import JobEvent
from bot.invocations import Admission, Caller, Invoker, describe
from handlers.audio import decode
from handlers.base import BatchStopped, InvalidInput, LoadSpec
from handlers.transcribe import (
    PIECE_S,
    SAMPLE_RATE,
    NoSpeech,
    Segment,
    SpeechModel,
    TranscribeRequest,
    TranscribeResult,
    TranscribeTask,
    cut,
)
from tests.tinymodels import WHISPER_LANGUAGES, build_whisper

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::UserWarning",
        "ignore::FutureWarning",
        "ignore:__array__ implementation:DeprecationWarning",  # the tokenizer reading a tensor
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

RATE = 48_000
"""What Discord records voice messages at."""


# Audio made here


def tone(seconds: float, rate: int = RATE, hertz: float = 220.0) -> np.ndarray:
    """A tone whose loudness rises and falls every 2 s, as speech does (quietest near each
    odd second and a half)."""
    t = np.arange(round(seconds * rate)) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    return (0.5 * np.sin(2 * np.pi * hertz * t) * envelope).astype(np.float32)


def ogg(samples: np.ndarray, rate: int = RATE) -> bytes:
    """An Ogg/Opus file, as Discord's voice messages are."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="OGG", subtype="OPUS")
    return buffer.getvalue()


@functools.cache
def voice_message(seconds: float) -> bytes:
    return ogg(tone(seconds))


def with_av(
    container: str, codec: str | None, seconds: float = 3.0, *, video: bool = False
) -> bytes:
    """A file written with PyAV: ``codec`` sound (none when None), and a few black frames
    of MPEG-4 video when ``video``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        sound = out.add_stream(codec, rate=RATE) if codec is not None else None
        pictures = out.add_stream("mpeg4", rate=10) if video else None
        # Every stream is set up before the first packet is written.
        if pictures is not None:
            pictures.width = pictures.height = 32
            pictures.pix_fmt = "yuv420p"
        if sound is not None:
            sound.layout = "mono"
            samples = tone(seconds)
            size = sound.codec_context.frame_size or 1024
            for begin in range(0, samples.size, size):
                chunk = samples[begin : begin + size]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = RATE, begin
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
        if pictures is not None:
            for index in range(10):
                picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")
                picture.pts = index
                out.mux(pictures.encode(picture))
            out.mux(pictures.encode(None))
    return buffer.getvalue()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    return buffer.getvalue()


# What runs the task


class Context:
    """A batch context that records progress; it stops once ``stop_after`` progress reports
    came, and nobody awaits the jobs at the rows in ``abandoned_rows``."""

    def __init__(self, stop_after: int | None = None, abandoned_rows: Sequence[int] = ()) -> None:
        self.stop_after = stop_after
        self.abandoned_rows = set(abandoned_rows)
        self.steps: list[tuple[int, int]] = []

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))

    def partial(self, index: int, data: Any) -> None:
        raise AssertionError("transcribe streams nothing")

    def abandoned(self, index: int) -> bool:
        return index in self.abandoned_rows


@dataclass
class Spy:
    """What reached the model: pieces per encoder forward and per ``generate`` call."""

    encoded: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="module")
def model(whisper_dir: Path) -> SpeechModel:
    """Loaded once through the task's own loading code, as the executor loads it."""
    return TranscribeTask().load(LoadSpec(str(whisper_dir), "cpu", torch.float32))


@pytest.fixture
def spy(model: SpeechModel, monkeypatch: pytest.MonkeyPatch) -> Spy:
    seen = Spy()
    encoder = model.model.get_encoder()
    encode, generate = encoder.forward, model.model.generate

    def counted_encode(features: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.encoded.append(int(features.shape[0]))
        return encode(features, *args, **kwargs)

    def counted_generate(*args: Any, **kwargs: Any) -> Any:
        seen.generated.append(int(kwargs["encoder_outputs"].last_hidden_state.shape[0]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(encoder, "forward", counted_encode)
    monkeypatch.setattr(model.model, "generate", counted_generate)
    return seen


def transcribe(
    model: SpeechModel,
    requests: Sequence[TranscribeRequest],
    task: TranscribeTask | None = None,
    ctx: Context | None = None,
) -> list[Any]:
    task = task or TranscribeTask()
    return [task.finish(o) for o in task.run_batch(model, requests, ctx or Context())]


def one(model: SpeechModel, request: TranscribeRequest, task: TranscribeTask | None = None) -> Any:
    (output,) = transcribe(model, [request], task)
    return output


def spans_in_seconds(audio: bytes) -> list[tuple[float, float]]:
    """Where the task cuts a file: the pieces' (start, end) in seconds."""
    samples = decode(audio, SAMPLE_RATE, 3600)
    return [(begin / SAMPLE_RATE, end / SAMPLE_RATE) for begin, end in cut(samples)]


def assert_times(segments: Sequence[Segment], spans: Sequence[tuple[float, float]]) -> None:
    assert len(segments) == len(spans), (segments, spans)
    np.testing.assert_allclose([(s.start, s.end) for s in segments], spans, atol=1e-6)


def assert_clear_refusal(
    output: Any, kind: type[Exception], option: str | None, *words: str
) -> None:
    assert isinstance(output, kind), output
    if option is not None:
        assert isinstance(output, InvalidInput) and output.option == option, output
    message = str(output)
    assert "\n" not in message and message.strip() == message, message
    for word in words:
        assert word in message, message


# 1. Real files through the real loading code


def test_a_voice_message_is_transcribed_by_the_model_as_loaded(
    model: SpeechModel, spy: Spy
) -> None:
    assert set(model.language_ids) == set(WHISPER_LANGUAGES)
    assert model.no_speech_id is not None and model.device == "cpu"

    result = one(model, TranscribeRequest(voice_message(4.0), expected_seconds=4.0))

    assert isinstance(result, TranscribeResult)
    assert result.text.strip() and result.language in WHISPER_LANGUAGES
    assert result.seconds == pytest.approx(4.0, abs=0.05)
    assert result.segments == (Segment(0.0, result.seconds, result.text),)
    assert result.skipped == 0 and not result.timestamps
    assert spy.encoded == spy.generated == [1]


async def test_voice_messages_are_transcribed_through_the_executor(whisper_dir: Path) -> None:
    task = TranscribeTask(pieces_per_call=1)
    executor = Executor(
        {"transcribe": task},
        {"transcribe": str(whisper_dir)},
        LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(max_per_user=64),
    )
    events: list[JobEvent] = []
    async with executor:
        good = executor.submit("transcribe", TranscribeRequest(voice_message(40.0)), user_id=1)
        good.watch(events.append)
        bad = executor.submit("transcribe", TranscribeRequest(b"\x00not sound" * 50), user_id=2)
        result = await good
        with pytest.raises(InvalidInput, match="not an audio or video file"):
            await bad

    assert isinstance(result, TranscribeResult) and result.text.strip()
    assert result.language in WHISPER_LANGUAGES
    assert result.seconds == pytest.approx(40.0, abs=0.05)
    assert_times(result.segments, spans_in_seconds(voice_message(40.0)))
    assert [(e.step, e.total) for e in events if e.step] == [(1, 2), (2, 2)]  # one per piece


# 2. Long files cut into pieces that share forwards


def test_long_files_share_forwards_and_transcribe_as_they_would_alone(
    model: SpeechModel, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    long, medium = voice_message(70.0), voice_message(40.0)
    task = TranscribeTask(pieces_per_call=4)
    alone = [one(model, TranscribeRequest(audio), task) for audio in (long, medium)]
    assert spy.generated == [3, 2]

    owners: list[list[int]] = []
    hear = TranscribeTask._hear

    def heard(self: TranscribeTask, model: SpeechModel, group: list[Any], *rest: Any) -> None:
        owners.append([piece.owner for piece in group])
        hear(self, model, group, *rest)

    monkeypatch.setattr(TranscribeTask, "_hear", heard)
    ctx = Context()
    together = transcribe(model, [TranscribeRequest(long), TranscribeRequest(medium)], task, ctx)

    assert [len(group) for group in owners] == [4, 1]
    assert sorted(itertools.chain(*owners)) == [0, 0, 0, 1, 1]  # every piece heard once
    assert {0, 1} in [set(group) for group in owners]  # a forward held pieces of both files
    assert spy.generated[2:] == [4, 1]
    assert ctx.steps == [(4, 5), (5, 5)]  # progress per forward, up to every piece
    for result, audio, seconds in zip(together, (long, medium), (70.0, 40.0), strict=True):
        assert isinstance(result, TranscribeResult)
        spans = spans_in_seconds(audio)
        assert len(result.segments) == len(spans) == math.ceil(seconds / PIECE_S)
        assert_times(result.segments, spans)
        starts = [s.start for s in result.segments]
        assert starts[0] == 0.0 and all(0 < b - a <= PIECE_S for a, b in itertools.pairwise(starts))
        assert result.segments[-1].end == pytest.approx(seconds, abs=0.05) == result.seconds
    assert together == alone  # batching changes nothing: same text, segments and language


# 3. Where long audio is cut


def loud_noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = round(seconds * SAMPLE_RATE)
    return (rng.uniform(0.3, 0.8, size) * rng.choice([-1.0, 1.0], size)).astype(np.float32)


def silence_between(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    samples = samples.copy()
    samples[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)] = 0.0
    return samples


@pytest.mark.parametrize("seconds", [0.0, 0.5, 29.9, 30.0, 30.05, 61.0, 95.3])
def test_cut_covers_every_sample_once_in_pieces_of_at_most_30_seconds(seconds: float) -> None:
    samples = loud_noise(seconds, seed=int(seconds))
    spans = cut(samples)

    if samples.size == 0:
        assert spans == [(0, 0)]
        return
    assert spans[0][0] == 0 and spans[-1][1] == samples.size
    contiguous = all(end == start for (_, end), (start, _) in itertools.pairwise(spans))
    assert contiguous  # no gap, no overlap
    assert all(0 < end - start <= PIECE_S * SAMPLE_RATE for start, end in spans)
    # Each cut but the last lands in the 5 s before its 30 s limit.
    assert math.ceil(seconds / PIECE_S) <= len(spans) <= math.ceil(seconds / (PIECE_S - 5.0))
    assert all(end - start >= (PIECE_S - 5.0) * SAMPLE_RATE for start, end in spans[:-1])


def test_a_cut_falls_in_the_quiet_moment_before_30_seconds() -> None:
    samples = loud_noise(70.0)
    samples = silence_between(samples, 10.0, 10.4)  # too early: a piece would be short
    samples = silence_between(samples, 26.9, 27.1)
    samples = silence_between(samples, 53.8, 54.2)

    (first, second, third) = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in cut(samples)]

    assert first[0] == 0.0 and 26.9 <= first[1] <= 27.1
    assert second[0] == first[1] and 53.8 <= second[1] <= 54.2
    assert third == (second[1], 70.0)


def test_without_a_quiet_moment_a_cut_still_lands_within_30_seconds() -> None:
    spans = cut(np.full(65 * SAMPLE_RATE, 0.5, dtype=np.float32))
    assert [b - a <= PIECE_S * SAMPLE_RATE for a, b in spans] == [True] * 3
    assert spans[0][1] >= (PIECE_S - 5.0) * SAMPLE_RATE  # in the last 5 s before the limit


# 4. Cancelling, and progress


def test_a_cancelled_batch_stops_between_pieces(model: SpeechModel, spy: Spy) -> None:
    task = TranscribeTask(pieces_per_call=1)
    ctx = Context(stop_after=1)  # nobody waits once the first piece is heard

    with pytest.raises(BatchStopped):
        task.run_batch(model, [TranscribeRequest(voice_message(70.0))], ctx)

    assert ctx.steps == [(1, 3)]
    assert spy.generated == [1]  # one forward of the three


def test_pieces_of_an_abandoned_job_are_not_heard(model: SpeechModel, spy: Spy) -> None:
    requests = [TranscribeRequest(voice_message(3.0)), TranscribeRequest(voice_message(4.0))]
    gone, kept = TranscribeTask().run_batch(model, requests, Context(abandoned_rows=[0]))

    assert spy.encoded == spy.generated == [1]
    assert isinstance(kept, TranscribeResult) and kept.seconds == pytest.approx(4.0, abs=0.05)
    assert not isinstance(gone, TranscribeResult)


class WatchedTask(TranscribeTask):
    """Tells the test when its batch ended, and how."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.ended = threading.Event()
        self.raised: BaseException | None = None

    def run_batch(
        self, model: SpeechModel, requests: Sequence[TranscribeRequest], ctx: Any
    ) -> list[Any]:
        try:
            return super().run_batch(model, requests, ctx)
        except BaseException as exc:
            self.raised = exc
            raise
        finally:
            self.ended.set()


async def test_cancelling_through_the_executor_stops_between_pieces(
    whisper_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    cancelled = threading.Event()
    generate = WhisperForConditionalGeneration.generate

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if calls:  # a later piece: it starts once the member has cancelled, however slow
            cancelled.wait(30)
        calls.append(1)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", counted)
    task = WatchedTask(pieces_per_call=1)
    executor = Executor(
        {"transcribe": task},
        {"transcribe": str(whisper_dir)},
        LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(),
    )
    steps: list[tuple[int, int]] = []
    async with executor:
        handle = executor.submit("transcribe", TranscribeRequest(voice_message(70.0)), user_id=1)

        def on_event(event: JobEvent) -> None:
            if event.step:
                steps.append((event.step, event.total or 0))
                handle.cancel("stopped by test")
                cancelled.set()

        handle.watch(on_event)
        with pytest.raises(JobCancelled, match="stopped by test"):
            await handle
        assert await asyncio.to_thread(task.ended.wait, 30)

    assert isinstance(task.raised, BatchStopped)
    assert steps[0] == (1, 3) and 1 <= len(calls) < 3, (steps, calls)  # not every piece ran


# 5. Bad input: one clear line each


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (np.random.default_rng(3).integers(0, 256, 8000, dtype=np.uint8).tobytes(), "not an audio"),
        (b"Hello, this is a text file.\n" * 40, "not an audio"),
        (png(), "has no sound track"),  # FFmpeg reads a picture as a video without sound
    ],
    ids=["random-bytes", "text", "png"],
)
def test_what_is_not_audio_is_refused(
    model: SpeechModel, spy: Spy, data: bytes, words: str
) -> None:
    assert_clear_refusal(one(model, TranscribeRequest(data)), InvalidInput, "file", words)
    assert spy.encoded == []


def test_a_voice_message_damaged_in_transit_is_cut_off(model: SpeechModel, spy: Spy) -> None:
    audio = voice_message(6.0)
    overwritten = bytearray(audio)
    middle = len(audio) // 2
    overwritten[middle : middle + 2000] = np.random.default_rng(1).bytes(2000)
    requests = [
        TranscribeRequest(bytes(overwritten), expected_seconds=6.0),
        TranscribeRequest(audio[: len(audio) // 3], expected_seconds=6.0),
    ]

    for output in transcribe(model, requests):
        assert_clear_refusal(output, InvalidInput, "file", "cut off", "of the 0:06", "again")
    assert spy.encoded == []
    assert_clear_refusal(
        one(model, TranscribeRequest(audio[:200])), InvalidInput, "file", "damaged"
    )


def test_silence_is_no_speech_and_never_reaches_the_model(model: SpeechModel, spy: Spy) -> None:
    output = one(model, TranscribeRequest(ogg(np.zeros(3 * RATE, np.float32))))
    assert_clear_refusal(output, NoSpeech, None, "no speech", "0:03")
    assert spy.encoded == spy.generated == []


def test_a_quiet_piece_is_skipped_and_the_rest_is_heard(model: SpeechModel, spy: Spy) -> None:
    samples = np.concatenate([np.zeros(30 * RATE, np.float32), tone(8.0)])
    audio = ogg(samples)
    result = one(model, TranscribeRequest(audio))

    _, heard = spans_in_seconds(audio)  # the first piece is silent
    assert isinstance(result, TranscribeResult) and result.skipped == 1
    assert_times(result.segments, [heard])
    assert spy.encoded == spy.generated == [1]  # only the piece with sound


def test_pieces_the_model_hears_no_speech_in_are_left_out(model: SpeechModel, spy: Spy) -> None:
    """Whisper's rule: left out when likely silence *and* unsure of its words. The tiny
    model writes its words with confidence, so only both thresholds at their loosest
    leave its pieces out; either alone keeps them."""
    request = TranscribeRequest(voice_message(40.0))
    either = (
        TranscribeTask(no_speech_threshold=0.0),  # any no-speech chance, but sure words
        TranscribeTask(log_prob_threshold=0.0),  # unsure words, but no likely silence
    )
    for task in either:
        result = one(model, request, task)
        assert isinstance(result, TranscribeResult) and result.skipped == 0
    output = one(model, request, TranscribeTask(no_speech_threshold=0.0, log_prob_threshold=0.0))

    assert_clear_refusal(output, NoSpeech, None, "no speech", "0:40")
    assert spy.encoded[-1] == 2  # heard, then nothing of it kept


def test_audio_over_the_limit_is_refused_from_its_header(
    model: SpeechModel, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = TranscribeTask(max_seconds=10.0)
    twelve = TranscribeRequest(voice_message(12.0))
    m4a = TranscribeRequest(with_av("ipod", "aac", 12.0))

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a file over the limit is decoded")

    monkeypatch.setattr(sf.SoundFile, "read", never)
    for output in transcribe(model, [twelve, m4a], task):
        assert_clear_refusal(output, InvalidInput, "file", "is 0:12 long", "the limit is 0:10")
    with pytest.raises(InvalidInput, match="the limit is 0:10") as refused:
        task.validate(TranscribeRequest(b"ogg", expected_seconds=12.0))  # before any download
    assert refused.value.option == "file"
    assert spy.encoded == []


def test_validate_refuses_big_files_and_unknown_languages() -> None:
    task = TranscribeTask(max_bytes=2**20)
    task.validate(TranscribeRequest(bytes(2**20), language="German"))
    task.validate(TranscribeRequest(b"x", language="it"))  # Whisper hears Italian

    with pytest.raises(InvalidInput) as big:
        task.validate(TranscribeRequest(bytes(2**21)))
    assert_clear_refusal(big.value, InvalidInput, "file", "is 2 MiB", "the limit is 1 MiB")
    with pytest.raises(InvalidInput) as empty:
        task.validate(TranscribeRequest(b""))
    assert_clear_refusal(empty.value, InvalidInput, "file", "empty")
    with pytest.raises(InvalidInput) as klingon:
        task.validate(TranscribeRequest(b"x", language="klingon"))
    assert_clear_refusal(klingon.value, InvalidInput, "language", "unknown language", "klingon")


def test_a_size_refusal_never_names_a_limit_above_the_file() -> None:
    task = TranscribeTask(max_bytes=10_000_000)  # 9.5 MiB
    with pytest.raises(InvalidInput) as big:
        task.validate(TranscribeRequest(bytes(10_200_000)))  # 9.7 MiB
    size, limit = map(float, re.findall(r"([\d.]+) MiB", big.value.message))
    assert size > limit, (
        f"BUG handlers/transcribe.py validate: {big.value.message!r} rounds the limit up past "
        "the file's size; show the limit with one decimal as the size is"
    )


def test_a_language_the_model_lacks_is_refused(model: SpeechModel, spy: Spy) -> None:
    output = one(model, TranscribeRequest(voice_message(3.0), language="Italian"))
    assert_clear_refusal(output, InvalidInput, "language", "it", "not a language this model")
    assert spy.encoded == []

    german = one(model, TranscribeRequest(voice_message(3.0), language="German"))
    assert isinstance(german, TranscribeResult) and german.language == "de"


def test_a_bad_file_does_not_spoil_the_batch_it_shares(model: SpeechModel, spy: Spy) -> None:
    requests = [
        TranscribeRequest(voice_message(3.0)),
        TranscribeRequest(png()),
        TranscribeRequest(ogg(np.zeros(RATE, np.float32))),
        TranscribeRequest(voice_message(4.0), language="it"),
        TranscribeRequest(voice_message(4.0), language="fr"),
    ]
    first, picture, silent, italian, french = transcribe(model, requests)

    assert isinstance(first, TranscribeResult) and first.seconds == pytest.approx(3.0, abs=0.05)
    assert isinstance(french, TranscribeResult) and french.language == "fr"
    assert isinstance(picture, InvalidInput) and picture.option == "file"
    assert isinstance(silent, NoSpeech)
    assert isinstance(italian, InvalidInput) and italian.option == "language"
    assert spy.generated == [2]


# 6. Other containers, read with PyAV


@pytest.fixture
def through_pyav(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    read = handlers.audio._decode_with_av

    def counted(data: bytes, max_seconds: float) -> Any:
        calls.append(len(data))
        return read(data, max_seconds)

    monkeypatch.setattr(handlers.audio, "_decode_with_av", counted)
    return calls


def test_m4a_webm_and_video_files_are_heard_through_pyav(
    model: SpeechModel, spy: Spy, through_pyav: list[int]
) -> None:
    files = [
        with_av("ipod", "aac"),  # .m4a
        with_av("webm", "libopus"),
        with_av("mp4", "aac", video=True),  # a video with its sound
    ]
    results = transcribe(model, [TranscribeRequest(f) for f in files])

    assert through_pyav == [len(f) for f in files]
    for result in results:
        assert isinstance(result, TranscribeResult) and result.text.strip()
        assert result.seconds == pytest.approx(3.0, abs=0.05)
        assert result.segments == (Segment(0.0, result.seconds, result.text),)
    assert spy.generated == [3]


def test_a_video_without_a_sound_track_is_refused(
    model: SpeechModel, spy: Spy, through_pyav: list[int]
) -> None:
    output = one(model, TranscribeRequest(with_av("mp4", None, video=True)))
    assert_clear_refusal(output, InvalidInput, "file", "has no sound track")
    assert len(through_pyav) == 1 and spy.encoded == []


# 7. Recordings stay out of logs


def test_describe_keeps_the_recording_out_of_the_logged_options() -> None:
    request = TranscribeRequest(voice_message(3.0), "de", True, 3.0)

    for admitted in (True, False):
        options, private = describe(request, admitted)
        assert "audio" not in options and private == {}  # the recording is in neither
        assert not any(isinstance(v, bytes | bytearray) for v in options.values())
        assert len(json.dumps(options, default=repr)) < 100
    assert describe(request)[0] == {"language": "de", "timestamps": True, "expected_seconds": 3.0}
    assert describe(request, admitted=False)[0] == {"timestamps": True, "expected_seconds": 3.0}


@pytest.mark.parametrize("log_prompts", [False, True], ids=["prompts-off", "prompts-logged"])
def test_a_usage_row_never_holds_the_recording(log_prompts: bool) -> None:
    """The request says the recording stays out of logs whatever the admin chose: also
    when the admin logs what members write (``BOT_LOG_PROMPTS``)."""
    request = TranscribeRequest(b"OggS" + b"\x01secret-recording" * 64, "de")
    invoker = Invoker(None, None, None, None, log_prompts)  # type: ignore[arg-type]
    admission = Admission(invoker, "transcribe", Caller("u1"), request)
    try:
        row = invoker._row(admission, "whisper")
    except TypeError as exc:
        pytest.fail(
            f"BUG bot/invocations.py Invoker._row: logging prompts fails on a recording ({exc}); "
            "the row is not written and the member gets an error for a queued job"
        )
    stored = json.dumps(row, default=repr)
    assert "secret-recording" not in stored and "736563726574" not in stored
    assert row["input_size"] == len(request.audio) + len("de")


# 8. Timestamps


def test_timestamped_segments_lie_within_the_file_in_order(model: SpeechModel) -> None:
    result = one(model, TranscribeRequest(voice_message(40.0), timestamps=True))

    assert isinstance(result, TranscribeResult) and result.timestamps
    assert result.segments and result.text.strip()
    assert all(0.0 <= s.start <= s.end <= result.seconds for s in result.segments)
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    lines = result.timed().splitlines()
    assert len(lines) == len(result.segments)
    for line, segment in zip(lines, result.segments, strict=True):
        assert re.fullmatch(r"\[\d+:\d\d - \d+:\d\d\] \S.*", line), line
        assert line.endswith(segment.text)


@pytest.fixture
def scripted(model: SpeechModel, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], None]:
    """Make ``generate`` write the given tokens (words and ``<|1.00|>`` timestamps) for
    every piece, as a real Whisper that marks its own times would."""
    tokenizer = model.processor.tokenizer

    def script(tokens: list[str]) -> None:
        ids: list[int] = []
        for token in tokens:
            if token.startswith("<|"):
                ids.append(tokenizer.convert_tokens_to_ids(token))
            else:
                ids.extend(tokenizer(token, add_special_tokens=False).input_ids)

        def generate(*args: Any, **kwargs: Any) -> torch.Tensor:
            assert kwargs["return_timestamps"] is True
            rows = kwargs["encoder_outputs"].last_hidden_state.shape[0]
            return torch.tensor([ids] * rows)

        monkeypatch.setattr(model.model, "generate", generate)

    return script


def test_the_model_s_own_times_become_segments_within_their_piece(
    model: SpeechModel, scripted: Callable[[list[str]], None]
) -> None:
    scripted(["<|0.00|>", " study", "<|1.00|>", "<|1.50|>", " group", "<|29.00|>"])
    audio = voice_message(40.0)
    (first, _), (second, end) = spans_in_seconds(audio)
    result = one(model, TranscribeRequest(audio, timestamps=True))

    assert isinstance(result, TranscribeResult)
    assert [(s.start, s.end, s.text) for s in result.segments] == [
        (first, pytest.approx(1.0), "study"),
        (pytest.approx(1.5), pytest.approx(second), "group"),  # 29 s: past the piece's end
        (pytest.approx(second), pytest.approx(second + 1.0), "study"),
        (pytest.approx(second + 1.5), pytest.approx(end), "group"),
    ]
    assert result.text == "study group study group"
    assert result.timed().splitlines()[1] == "[0:02 - 0:27] group"


def test_words_after_the_last_timestamp_are_kept(
    model: SpeechModel, scripted: Callable[[list[str]], None]
) -> None:
    """Generation that ends at its length limit leaves the last segment without its closing
    timestamp: its words were heard and belong in the transcript."""
    scripted(["<|0.00|>", " study", "<|1.00|>", "<|1.50|>", " group", " meets"])
    result = one(model, TranscribeRequest(voice_message(4.0), timestamps=True))

    assert isinstance(result, TranscribeResult)
    assert result.segments[0] == Segment(0.0, 1.0, "study")
    assert "group meets" in result.text, (
        f"BUG handlers/transcribe.py _hear: {result.text!r} lost the words after the last "
        "timestamp (tokenizer offsets end at the last timestamp token); keep the rest of the "
        "piece as a segment from the last timestamp to the piece's end"
    )


@pytest.mark.parametrize(("format", "subtype"), [("WAV", "PCM_16"), ("MP3", "MPEG_LAYER_III")])
def test_an_upload_cut_off_in_transit_is_refused(
    model: SpeechModel, spy: Spy, format: str, subtype: str
) -> None:
    """An upload says how long it is in its header; half of one is refused, not half heard."""
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(np.arange(20 * RATE) * 0.05).astype(np.float32)
    sf.write(buffer, tone, RATE, format=format, subtype=subtype)
    whole = buffer.getvalue()
    output = one(model, TranscribeRequest(whole[: len(whole) // 2]))
    assert_clear_refusal(output, InvalidInput, "file", "cut off", "of the 0:20", "again")
    assert spy.encoded == []


def encoded(format: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, tone(3.0, rate=16_000), 16_000, format=format, subtype=subtype)
    return buffer.getvalue()


DAMAGEABLE = {
    "ogg": encoded("OGG", "OPUS"),
    "wav": encoded("WAV", "PCM_16"),
    "flac": encoded("FLAC", "PCM_16"),
    "mp3": encoded("MP3", "MPEG_LAYER_III"),
    "m4a": with_av("ipod", "aac"),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(["ogg", "wav", "flac", "mp3", "m4a"]),
    changes=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=20),
    keep=st.floats(0.05, 1.0),
)
def test_damaged_files_of_every_kind_are_refused_in_one_line(
    base: str, changes: list[tuple[float, int]], keep: float
) -> None:
    """Bytes overwritten and files cut short: decoding either hears them or refuses them
    with the file's line, never with a decoder's own exception."""
    data = bytearray(DAMAGEABLE[base])
    for where, value in changes:
        data[int(where * (len(data) - 1))] = value
    try:
        decode(bytes(data[: max(1, int(len(data) * keep))]), 16_000, 900.0)
    except InvalidInput as exc:
        assert exc.option == "file"


def test_a_decoder_bug_fails_its_file_not_the_batch(
    model: SpeechModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = voice_message(2.0)
    real = transcribe_module.decode

    def flaky(data: bytes, rate: int, max_seconds: float) -> np.ndarray:
        if data == broken:
            raise AttributeError("a decoder's own bug")
        return real(data, rate, max_seconds)

    monkeypatch.setattr(transcribe_module, "decode", flaky)
    bad, good = transcribe(
        model, [TranscribeRequest(broken), TranscribeRequest(voice_message(3.0))]
    )
    assert_clear_refusal(bad, InvalidInput, "file", "damaged")
    assert isinstance(good, TranscribeResult) and good.text
