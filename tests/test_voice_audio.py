"""Speech as a voice channel plays it: exact 20 ms frames of 48 kHz stereo 16-bit PCM, the
resampling soxr's own, rendered by the speak task where the model runs."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from bot.calls import pcm_source
from handlers.speak import CALL_FRAME_BYTES, SpeakTask, Speech, call_pcm


def tone(seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def frames(pcm: bytes) -> list[bytes]:
    """What discord.py's player reads from the bot's source, a frame every 20 ms."""
    source = pcm_source(pcm)
    return list(iter(source.read, b""))


@pytest.mark.parametrize(
    ("seconds", "expected_frames"),
    [(0.3, 15), (0.31, 16), (1.0, 50)],  # 0.31 s is 15.5 frames: padded with silence
)
def test_frames_are_whole_20ms_of_48khz_stereo(seconds: float, expected_frames: int) -> None:
    pcm = call_pcm(tone(seconds), 16_000)
    pieces = frames(pcm)
    assert len(pieces) == expected_frames
    assert all(len(piece) == CALL_FRAME_BYTES == 3840 for piece in pieces)
    assert b"".join(pieces) == pcm
    stereo = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    assert np.array_equal(stereo[:, 0], stereo[:, 1])  # the same voice on both sides
    expected = (np.clip(soxr.resample(tone(seconds), 16_000, 48_000), -1, 1) * 32767).round()
    left = stereo[:, 0]
    assert np.array_equal(left[: len(expected)], expected.astype("<i2"))
    assert not left[len(expected) :].any()  # the padding is silence


def test_audio_at_48khz_is_not_resampled() -> None:
    samples = tone(0.02, 48_000)
    (frame,) = frames(call_pcm(samples, 48_000))
    left = np.frombuffer(frame, dtype="<i2")[::2]
    assert np.array_equal(left, (samples * 32767).round().astype("<i2"))


def test_speech_for_a_call_is_rendered_for_it_and_for_nothing_else() -> None:
    task = SpeakTask()
    for_call = task.finish(Speech(tone(0.5), 16_000, for_call=True))
    assert for_call.pcm == call_pcm(tone(0.5), 16_000) and len(frames(for_call.pcm)) == 25
    assert for_call.wav == for_call.ogg == b"" and for_call.seconds == 0.5
    as_file = task.finish(Speech(tone(0.5), 16_000))
    assert as_file.pcm == b"" and as_file.wav.startswith(b"RIFF") and as_file.ogg


def test_only_mono_is_taken() -> None:
    with pytest.raises(ValueError, match="mono"):
        call_pcm(np.zeros((10, 2), np.float32), 16_000)
