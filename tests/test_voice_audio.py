"""Speech as a voice channel plays it: exact 20 ms frames of 48 kHz stereo 16-bit PCM, the
resampling soxr's own."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import soxr

from bot.voice_audio import FRAME_BYTES, frames, voice_pcm, wav_to_voice


def tone(seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("seconds", "expected_frames"),
    [(0.3, 15), (0.31, 16), (1.0, 50)],  # 0.31 s is 15.5 frames: padded with silence
)
def test_frames_are_whole_20ms_of_48khz_stereo(seconds: float, expected_frames: int) -> None:
    pcm = voice_pcm(tone(seconds), 16_000)
    pieces = frames(pcm)
    assert len(pieces) == expected_frames
    assert all(len(piece) == FRAME_BYTES == 3840 for piece in pieces)
    stereo = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    assert np.array_equal(stereo[:, 0], stereo[:, 1])  # the same voice on both sides
    expected = (np.clip(soxr.resample(tone(seconds), 16_000, 48_000), -1, 1) * 32767).round()
    left = stereo[:, 0]
    assert np.array_equal(left[: len(expected)], expected.astype("<i2"))
    assert not left[len(expected) :].any()  # the padding is silence


def test_audio_at_48khz_is_not_resampled() -> None:
    samples = tone(0.02, 48_000)
    (frame,) = frames(voice_pcm(samples, 48_000))
    left = np.frombuffer(frame, dtype="<i2")[::2]
    assert np.array_equal(left, (samples * 32767).round().astype("<i2"))


def test_a_speak_result_wav_becomes_voice_pcm() -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(0.5), 16_000, format="WAV", subtype="PCM_16")
    pcm = wav_to_voice(buffer.getvalue())
    assert len(frames(pcm)) == 25
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() > 10_000  # the tone survived


def test_only_mono_and_whole_frames_are_taken() -> None:
    with pytest.raises(ValueError, match="mono"):
        voice_pcm(np.zeros((10, 2), np.float32), 16_000)
    with pytest.raises(ValueError, match="whole 20 ms frames"):
        frames(b"\0" * (FRAME_BYTES + 2))
