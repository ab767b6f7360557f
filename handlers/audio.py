"""Reading members' audio files, and drawing the waveform Discord shows for a voice message.

Decoding runs where the model runs (the worker), never on the bot's event loop. soundfile
(libsndfile) reads what members mostly send: Discord's voice messages (Ogg/Opus), WAV,
FLAC and MP3. PyAV (FFmpeg's decoders) reads the rest that carries sound: M4A, MP4, WebM,
MOV and other video files. Every file is resampled with soxr, mixed to mono.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from handlers.base import InvalidInput

_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
"""libsndfile's note that a file's sound data is shorter than its header says."""
WHOLE_SHARE = 0.9
"""A file that decodes to less than this share of the length it declares is cut off."""
WAVEFORM_POINTS = 256
"""The most amplitude bytes Discord accepts for a voice message's waveform."""


def clock(seconds: float) -> str:
    """12:05 or 1:02:03: how a length reads in a member's reply."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def mib(size: int) -> str:
    """A file size as a reply shows it: 25 MiB, 9.7 MiB, 300 KiB, 100 bytes; rounded down,
    so a file just over a limit never reads as the limit itself."""
    if size < 2**10:
        return f"{size} bytes"
    if size < 2**20:
        return f"{size // 2**10} KiB"
    tenths = size * 10 // 2**20
    return f"{tenths // 10} MiB" if tenths % 10 == 0 else f"{tenths / 10:.1f} MiB"


def over(size: int, limit: int) -> str:
    """Why a file is refused for its size: in bytes when both round to the same figure."""
    shown, most = mib(size), mib(limit)
    if shown == most:
        return f"is {size:,} bytes; the limit is {limit:,} bytes"
    return f"is {shown}; the limit is {most}"


def too_long(seconds: float, max_seconds: float) -> InvalidInput:
    return InvalidInput(
        "file", f"is {clock(seconds)} long; the limit is {clock(max_seconds)} of audio"
    )


def check_whole(seconds: float, expected: float) -> None:
    """Refuse a file that holds clearly less sound than it says it does: cut off in
    transit. (A file that says nothing of its length cannot be checked here.)"""
    if expected > 0 and seconds < expected * WHOLE_SHARE:
        raise InvalidInput(
            "file",
            f"is cut off: it holds {clock(seconds)} of the {clock(expected)} it should; "
            "send it again",
        )


def decode(data: bytes, rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 samples at ``rate``; ``InvalidInput("file")`` for what cannot be heard:
    not audio, damaged, no sound track, or longer than ``max_seconds`` (checked from the
    header, before the samples are decoded)."""
    if not data:
        raise InvalidInput("file", "is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as file:
            native = file.samplerate
            if file.frames / native > max_seconds:
                raise too_long(file.frames / native, max_seconds)
            samples = file.read(dtype="float32", always_2d=True)
            seconds = samples.shape[0] / native
            check_whole(seconds, file.frames / native)
            if short := _SHORT_DATA.search(file.extra_info):  # libsndfile clamps a cut WAV
                check_whole(seconds, seconds * int(short[1]) / max(int(short[2]), 1))
    except sf.LibsndfileError:
        samples, native = _decode_with_av(data, max_seconds)
    except RuntimeError as exc:  # libsndfile gave up part-way: a damaged file
        raise InvalidInput("file", "is damaged and cannot be read") from exc
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if mono.size == 0:
        raise InvalidInput("file", "holds no sound")
    if not np.isfinite(mono).all():
        raise InvalidInput("file", "is damaged and cannot be read (invalid samples)")
    if native != rate:
        mono = soxr.resample(mono, native, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _decode_with_av(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """Samples (frames x channels) of the first sound track of a file soundfile cannot read."""
    import av  # FFmpeg's decoders, only for what libsndfile does not read

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = container.streams.audio
            if not streams:
                raise InvalidInput("file", "has no sound track")
            stream = streams[0]
            declared = _seconds(stream, container)
            if declared is not None and declared > max_seconds:
                raise too_long(declared, max_seconds)
            codec = stream.codec_context  # None for a stream FFmpeg cannot decode
            rate = (codec.sample_rate if codec is not None else 0) or getattr(
                stream, "sample_rate", 0
            )
            if not rate:
                raise InvalidInput("file", "has a sound track of unknown sample rate")
            pieces: list[np.ndarray] = []
            frames = 0
            for frame in container.decode(stream):
                pieces.append(_planar(frame))
                frames += pieces[-1].shape[0]
                if frames / rate > max_seconds:  # a header that understated the length
                    raise too_long(frames / rate, max_seconds)
            if declared is not None:
                check_whole(frames / rate, declared)
    except InvalidInput:
        raise
    except av.error.InvalidDataError as exc:  # a damaged header looks the same to FFmpeg
        raise InvalidInput(
            "file", "is not an audio or video file I can read, or is damaged"
        ) from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise InvalidInput("file", "is damaged and cannot be read") from exc
    if not pieces:
        raise InvalidInput("file", "holds no sound")
    return np.concatenate(pieces), rate


def _seconds(stream: Any, container: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    return None


def _planar(frame: Any) -> np.ndarray:
    """A decoded frame as float32 (samples x channels), whatever FFmpeg's sample format."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    planar = frame.format.is_planar
    array = array.reshape(channels, -1).T if planar else array.reshape(-1, channels)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return array.astype(np.float32, copy=False)


def waveform(samples: np.ndarray, points: int = WAVEFORM_POINTS) -> bytes:
    """The bars Discord draws for a voice message: the peak level of each of ``points`` equal
    stretches of the audio, 0 to 255 (fewer points for a clip shorter than that)."""
    if samples.size == 0:
        return b""
    level = np.abs(samples.astype(np.float32, copy=False))
    count = min(points, level.size)
    peaks = np.array([part.max() for part in np.array_split(level, count)])
    top = float(peaks.max())
    scaled = peaks / top * 255 if top > 0 else peaks
    return bytes(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
