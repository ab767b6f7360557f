"""Speech for a voice channel: what the speech models make (16 kHz mono, or another rate) as
Discord plays it, 48 kHz stereo 16-bit PCM in 20 ms frames.

Resampling is soxr's (a well-kept library, high quality, fast): no hand-written DSP. The
conversion runs once per utterance, off the event loop; playing hands over ready frames.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import soundfile
import soxr

VOICE_RATE = 48_000
CHANNELS = 2
FRAME_MS = 20
FRAME_SAMPLES = VOICE_RATE * FRAME_MS // 1000
"""960 samples per channel in each frame."""
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * 2
"""3,840 bytes: what ``discord.AudioSource.read`` must return for PCM."""


def voice_pcm(samples: np.ndarray, rate: int) -> bytes:
    """Mono samples (float in [-1, 1]) at ``rate`` as 48 kHz interleaved stereo 16-bit PCM,
    padded with silence to whole 20 ms frames."""
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {samples.shape}")
    resampled = (
        soxr.resample(samples.astype(np.float32), rate, VOICE_RATE)
        if rate != VOICE_RATE
        else samples
    )
    pcm = (np.clip(resampled, -1.0, 1.0) * 32767).round().astype("<i2")
    whole = -(-len(pcm) // FRAME_SAMPLES) * FRAME_SAMPLES
    padded = np.zeros(whole, dtype="<i2")
    padded[: len(pcm)] = pcm
    return np.repeat(padded, CHANNELS).tobytes()


def wav_to_voice(wav: bytes) -> bytes:
    """A WAV file (what /speak makes) as voice PCM."""
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=False)
    if samples.ndim == 2:  # keep one channel: speech is mono
        samples = samples.mean(axis=1)
    return voice_pcm(samples, rate)


def frames(pcm: bytes) -> list[bytes]:
    """Voice PCM cut into the 20 ms frames Discord sends."""
    if len(pcm) % FRAME_BYTES:
        raise ValueError(f"{len(pcm)} bytes are not whole 20 ms frames")
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


VOICE_LIBRARIES = ("nacl", "davey")
"""What discord.py's voice needs beside libopus: encryption, and Discord's end-to-end (DAVE)."""


def missing_voice_support() -> str | None:
    """What this machine lacks for voice, in one line, or None when it has everything."""
    missing = [name for name in VOICE_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        return f"voice needs the Python packages {', '.join(missing)}: `pip install -e .`"
    import discord

    if not discord.opus.is_loaded():
        with contextlib.suppress(Exception):  # a broken library: as good as a missing one
            discord.opus._load_default()
        if not discord.opus.is_loaded():
            return "voice needs libopus: `apt install libopus0` (or your system's package)"
    return None
