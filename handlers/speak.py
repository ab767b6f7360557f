"""Speak: text to speech with SpeechT5 (English, many voices) or VITS/MMS (other languages).

Each request's text is cut into sentences; every sentence of every request in a batch goes
through one batched forward, and each request's sentences are joined with a short pause.

Reproducibility: SpeechT5's decoder prenet applies dropout even in eval mode (Tacotron 2's
trick for varied prosody), with one mask per decoding step shared by the whole batch
(``_consistent_dropout``). Seeding the generator before each batch therefore gives every
sentence the same masks at the same step whether it runs alone or beside others; with each
sentence vocoded on its own, a batch sounds exactly like its requests one at a time.
VITS samples durations and latent noise over the whole padded batch, so a VITS request is
reproducible for a given batch, but its batch mates change the draws: the same words, another
take (its checkpoint's ``noise_scale`` and ``noise_scale_duration`` set how different).

Output: WAV (PCM 16-bit) and OGG/Opus, which Discord plays inline and sends voice messages
as. Opus only exists at 8, 12, 16, 24 and 48 kHz; speech at other rates (22.05 kHz VITS
checkpoints) is resampled to 48 kHz for it.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile as sf
import soxr
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
    SpeechT5Processor,
    VitsModel,
)

from handlers.audio import waveform
from handlers.base import (
    BatchContext,
    HandlerError,
    InvalidInput,
    LoadSpec,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
    module_bytes,
    quote,
    raise_if_stopped,
)
from handlers.text import split_to_fit

ENGLISH = "en"
CMU_ARCTIC_SPEAKERS = ("awb", "bdl", "clb", "jmk", "ksp", "rms", "slt")
PREFERRED_ROWS = {"slt": 7306}
"""The row every SpeechT5 example uses; users expect "slt" to sound like it."""
DEFAULT_VOICE = "slt"
VOICES_SPLIT = "validation"
"""The only split of the CMU ARCTIC x-vector sets (``regisss/cmu-arctic-xvectors``)."""

SEED = 0
SILENCE_S = 0.2
PIECE_CHARS = 200
"""Longest piece sent to a model: both lose their way on long inputs, and short pieces pad less."""
MAX_LEN_RATIO = 20.0
"""SpeechT5's default: a piece that never predicts its end stops after 20 frames per token."""
PROGRESS_EVERY = 16
MAX_LISTED = 25
OPUS_RATES = frozenset({8000, 12000, 16000, 24000, 48000})

CALL_RATE = 48_000
CALL_CHANNELS = 2
CALL_FRAME_SAMPLES = CALL_RATE * 20 // 1000
"""960 samples per channel in each 20 ms frame a voice call sends."""
CALL_FRAME_BYTES = CALL_FRAME_SAMPLES * CALL_CHANNELS * 2
"""3,840 bytes: one frame of 48 kHz stereo 16-bit PCM, what discord.py's audio sources yield."""


@dataclass(frozen=True)
class SpeakRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"text"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    text: str
    voice: str | None = None
    """A preset name from ``SpeakTask.voice_names()``; None is the task's default voice.
    Voices apply to SpeechT5; a VITS model speaks with its own single voice."""
    language: str = ENGLISH
    for_call: bool = False
    """Speech for a voice call: rendered as the call plays it (``SpeakResult.pcm``) where
    the model runs, so the bot's event loop only hands frames over."""


@dataclass(frozen=True)
class SpeakResult:
    wav: bytes
    ogg: bytes
    sample_rate: int
    seconds: float
    waveform: bytes = b""
    """The bars Discord draws for it as a voice message (up to 256 levels, 0-255)."""
    pcm: bytes = b""
    """For a call (``SpeakRequest.for_call``): 48 kHz stereo 16-bit PCM in whole 20 ms
    frames, and no files (``wav`` and ``ogg`` are empty)."""


@dataclass(frozen=True)
class Speech:
    """A request's raw waveform, encoded off the accelerator thread by ``finish``."""

    samples: np.ndarray
    sample_rate: int
    for_call: bool = False


@dataclass(frozen=True)
class VoiceTable:
    vectors: np.ndarray
    """Speaker x-vectors, shape (rows, dim), float32."""
    presets: dict[str, int]
    """Voice name -> row."""


@dataclass
class SpeechModel:
    tokenizer: Any
    model: torch.nn.Module
    sample_rate: int
    device: str
    max_tokens: int | None
    """The model's hard limit on input tokens, if it has one."""
    vocoder: torch.nn.Module | None = None
    """Set for SpeechT5 (with ``voices``); VITS produces waveforms itself."""
    voices: torch.Tensor | None = None


def voice_presets(rows: int, filenames: Sequence[str] | None) -> dict[str, int]:
    """Named voices: one per CMU ARCTIC speaker when rows carry file names, else by row."""
    presets: dict[str, int] = {}
    if filenames is not None:
        for code in CMU_ARCTIC_SPEAKERS:
            tag = f"_{code}_"
            preferred = PREFERRED_ROWS.get(code)
            if preferred is not None and preferred < rows and tag in filenames[preferred]:
                presets[code] = preferred
                continue
            row = next((i for i, name in enumerate(filenames) if tag in name), None)
            if row is not None:
                presets[code] = row
    if presets:
        return presets
    if rows > PREFERRED_ROWS[DEFAULT_VOICE]:
        return {DEFAULT_VOICE: PREFERRED_ROWS[DEFAULT_VOICE]}
    return {f"voice{row}": row for row in range(rows)}


def read_voices(source: str) -> VoiceTable:
    """Read speaker x-vectors from a .npy array, a .parquet file, or a dataset: hub or folder."""
    path = Path(source)
    if path.suffix == ".npy":
        vectors = np.load(path, allow_pickle=False).astype(np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"{source}: expected shape (voices, dim), got {vectors.shape}")
        return VoiceTable(vectors, voice_presets(len(vectors), None))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        import datasets
        from huggingface_hub import snapshot_download

        # A hub dataset is read through the hub cache, which HF_HUB_OFFLINE=1 can use:
        # datasets' own offline fallback finds only copies it prepared itself.
        folder = source if path.is_dir() else snapshot_download(source, repo_type="dataset")
        table = datasets.load_dataset(folder, split=VOICES_SPLIT).with_format("arrow")[:]
    if "xvector" not in table.column_names:
        raise ValueError(f"{source}: no 'xvector' column (found {table.column_names})")
    cells = table.column("xvector").to_numpy(zero_copy_only=False)
    vectors = np.stack([np.asarray(cell, dtype=np.float32) for cell in cells])
    filenames = (
        [str(name) for name in table.column("filename").to_pylist()]
        if "filename" in table.column_names
        else None
    )
    return VoiceTable(vectors, voice_presets(len(vectors), filenames))


@contextmanager
def seeded(device: str) -> Iterator[None]:
    """The same random draws at the same step for every batch; the global RNG is restored."""
    dev = torch.device(device)
    devices = [] if dev.type == "cpu" else [dev]
    with torch.random.fork_rng(devices=devices, device_type=dev.type):
        torch.manual_seed(SEED)
        yield


def encode_ogg(samples: np.ndarray, sample_rate: int) -> bytes:
    """OGG/Opus, what Discord plays inline and sends voice messages as; a rate Opus lacks
    (22.05 kHz VITS checkpoints) is resampled to 48 kHz first."""
    if sample_rate not in OPUS_RATES:
        samples = soxr.resample(samples, sample_rate, CALL_RATE)
        sample_rate = CALL_RATE
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="OGG", subtype="OPUS")
    return buffer.getvalue()


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def call_pcm(samples: np.ndarray, rate: int) -> bytes:
    """Mono samples (float in [-1, 1]) at ``rate`` as a voice call plays them: 48 kHz
    interleaved stereo 16-bit PCM, padded with silence to whole 20 ms frames. Resampling is
    soxr's (high quality, fast): no hand-written DSP."""
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {samples.shape}")
    resampled = (
        soxr.resample(samples.astype(np.float32), rate, CALL_RATE) if rate != CALL_RATE else samples
    )
    pcm = (np.clip(resampled, -1.0, 1.0) * 32767).round().astype("<i2")
    whole = -(-len(pcm) // CALL_FRAME_SAMPLES) * CALL_FRAME_SAMPLES
    padded = np.zeros(whole, dtype="<i2")
    padded[: len(pcm)] = pcm
    return np.repeat(padded, CALL_CHANNELS).tobytes()


class SpeakTask(Task[SpeakRequest, SpeakResult]):
    """Text to speech; the default model is SpeechT5, ``language_models`` add VITS voices.

    The voice table is read on first use of ``voice_names`` (or ``validate``): call it once at
    start-up, off the event loop, when ``voices`` is a hub dataset that has to download.
    """

    name = "speak"
    kind = TaskKind.AUDIO

    def __init__(
        self,
        max_chars: int = 600,
        voices: str = "regisss/cmu-arctic-xvectors",
        language_models: Mapping[str, str] | None = None,
        vocoder: str = "microsoft/speecht5_hifigan",
    ) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        self.max_chars = max_chars
        self.voices = voices
        self.language_models = {
            code.strip().lower(): model for code, model in (language_models or {}).items()
        }
        self.vocoder = vocoder
        self._voice_table: VoiceTable | None = None
        self._voice_error: HandlerError | None = None
        self._voice_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """What a model worker process receives: everything but the lock."""
        state = dict(self.__dict__)
        del state["_voice_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._voice_lock = threading.Lock()

    # Options

    def prepare(self) -> None:
        self.voice_table()

    def voice_table(self) -> VoiceTable:
        """The speaker embeddings, read once and shared by validation and every load.

        A failure is remembered rather than retried, so a missing table (say, no network at
        start-up) costs one attempt, not a download on every request or keystroke.
        """
        with self._voice_lock:
            if self._voice_error is not None:
                raise self._voice_error
            if self._voice_table is None:
                try:
                    self._voice_table = read_voices(self.voices)
                except Exception as exc:
                    self._voice_error = HandlerError(
                        f"the voices at {self.voices} could not be loaded ({exc}); "
                        "the bot's admin must fix BOT_SPEAK__VOICES and restart it"
                    )
                    raise self._voice_error from exc
            return self._voice_table

    def voice_names(self) -> list[str]:
        """Preset names, for autocomplete."""
        return list(self.voice_table().presets)

    def default_voice(self) -> str:
        names = self.voice_names()
        return DEFAULT_VOICE if DEFAULT_VOICE in names else names[0]

    def languages(self) -> list[str]:
        """Language codes with a model, for autocomplete."""
        return sorted({ENGLISH, *self.language_models})

    # Contract

    def validate(self, request: SpeakRequest) -> None:
        check_text("text", request.text, self.max_chars)
        language = _language(request)
        if language != ENGLISH and language not in self.language_models:
            raise InvalidInput(
                "language",
                f"no voice for {quote(language)}; choose one of: {_listed(self.languages())}",
            )
        if request.voice is not None and request.voice not in self.voice_table().presets:
            raise InvalidInput(
                "voice",
                f"unknown voice {quote(request.voice)}; "
                f"choose one of: {_listed(self.voice_names())}",
            )

    def model_for(self, request: SpeakRequest, default: str) -> str:
        return self.language_models.get(_language(request), default)

    def batch_key(self, request: SpeakRequest) -> str:
        # Text normalisation is per language, and one model serves each language.
        return _language(request)

    def cost(self, request: SpeakRequest) -> int:
        return len(request.text) + 1  # about one token per character

    def load(self, spec: LoadSpec) -> SpeechModel:
        config = AutoConfig.from_pretrained(spec.source, trust_remote_code=False)
        if config.model_type == "speecht5":
            return self._load_speecht5(spec, config)
        if config.model_type == "vits":
            tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
            model = from_pretrained(VitsModel, spec).to(spec.device).eval()
            return SpeechModel(tokenizer, model, config.sampling_rate, spec.device, None)
        raise ValueError(
            f"{spec.source} is a {config.model_type!r} model; speak runs speecht5 or vits models"
        )

    def _load_speecht5(self, spec: LoadSpec, config: Any) -> SpeechModel:
        table = self.voice_table()
        if table.vectors.shape[1] != config.speaker_embedding_dim:
            raise ValueError(
                f"{self.voices} holds {table.vectors.shape[1]}-float voices; "
                f"{spec.source} needs {config.speaker_embedding_dim}"
            )
        processor = SpeechT5Processor.from_pretrained(spec.source, trust_remote_code=False)
        model = from_pretrained(SpeechT5ForTextToSpeech, spec).to(spec.device).eval()
        vocoder_spec = LoadSpec(self.vocoder, spec.device, spec.dtype)
        vocoder = from_pretrained(SpeechT5HifiGan, vocoder_spec).to(spec.device).eval()
        voices = torch.from_numpy(table.vectors).to(spec.device, spec.dtype)
        return SpeechModel(
            processor.tokenizer,
            model,
            vocoder.config.sampling_rate,
            spec.device,
            config.max_text_positions,
            vocoder,
            voices,
        )

    def model_bytes(self, model: SpeechModel) -> int:
        voices = model.voices
        extra = 0 if voices is None else voices.numel() * voices.element_size()
        return module_bytes(model.model, model.vocoder) + extra

    def run_batch(
        self, model: SpeechModel, requests: Sequence[SpeakRequest], ctx: BatchContext
    ) -> list[Speech | InvalidInput]:
        pieces: list[list[int]] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            encoded = self._pieces(model, request)
            pieces.extend(encoded)
            owners.extend([index] * len(encoded))
        raise_if_stopped(ctx)
        if not pieces:
            waves = []
        elif model.vocoder is None or model.voices is None:
            waves = self._run_vits(model, pieces, ctx)
        else:
            rows = [self._voice_row(requests[owner]) for owner in owners]
            speakers = model.voices[rows]
            waves = self._run_speecht5(model, model.vocoder, speakers, pieces, ctx)

        pause = np.zeros(int(model.sample_rate * SILENCE_S), dtype=np.float32)
        parts: list[list[np.ndarray]] = [[] for _ in requests]
        for owner, wave in zip(owners, waves, strict=True):
            if parts[owner]:
                parts[owner].append(pause)
            parts[owner].append(wave)
        return [
            Speech(np.concatenate(p), model.sample_rate, request.for_call)
            if p
            else InvalidInput("text", "has nothing this language's voice can pronounce")
            for p, request in zip(parts, requests, strict=True)
        ]

    def finish(self, output: Speech) -> SpeakResult:
        samples = np.clip(output.samples, -1.0, 1.0)
        seconds = len(samples) / output.sample_rate
        if output.for_call:
            pcm = call_pcm(samples, output.sample_rate)
            return SpeakResult(b"", b"", output.sample_rate, seconds, pcm=pcm)
        return SpeakResult(
            wav=encode_wav(samples, output.sample_rate),
            ogg=encode_ogg(samples, output.sample_rate),
            sample_rate=output.sample_rate,
            seconds=seconds,
            waveform=waveform(samples),
        )

    # Models

    def _voice_row(self, request: SpeakRequest) -> int:
        return self.voice_table().presets[request.voice or self.default_voice()]

    def _pieces(self, model: SpeechModel, request: SpeakRequest) -> list[list[int]]:
        """The request's text as token ids, one list per piece the model can take at once.

        Pieces that encode to nothing are left out: VITS drops what its alphabet lacks
        ("123", "你好" for French), and an empty piece would crash the model.
        """
        normalize = _language(request) == ENGLISH

        def size(text: str) -> int:
            """Characters, or the model's tokens scaled so that its limit reads as
            ``PIECE_CHARS``: a piece fits when both do."""
            limit = model.max_tokens
            if limit is None:
                return len(text)
            tokens = len(_encode(model, text, normalize))
            return max(len(text), math.ceil(tokens * PIECE_CHARS / limit))

        # Each sentence and line on its own, as a reader pauses between them.
        cut = split_to_fit(request.text, size, PIECE_CHARS, apart="sentence")
        pieces = [" ".join(piece.split()) for piece in cut]
        encoded = [_encode(model, piece, normalize) for piece in pieces if piece]
        return [ids for ids in encoded if ids]

    def _run_speecht5(
        self,
        model: SpeechModel,
        vocoder: torch.nn.Module,
        speakers: torch.Tensor,
        pieces: list[list[int]],
        ctx: BatchContext,
    ) -> list[np.ndarray]:
        input_ids, attention_mask = _padded(pieces, model)
        config = model.model.config
        # Progress counts decoder steps against the batch's limit; most pieces end sooner.
        steps = int(input_ids.shape[1] * MAX_LEN_RATIO / config.reduction_factor)
        step = 0

        def each_step(module: torch.nn.Module, args: Any) -> None:
            nonlocal step
            step += 1
            if step % PROGRESS_EVERY == 0:
                raise_if_stopped(ctx)
                ctx.progress(step, steps)

        hook = model.model.speecht5.decoder.prenet.register_forward_pre_hook(each_step)
        try:
            with torch.inference_mode(), seeded(model.device):
                spectrograms, lengths = model.model.generate_speech(
                    input_ids,
                    speakers,
                    attention_mask=attention_mask,
                    maxlenratio=MAX_LEN_RATIO,
                    return_output_lengths=True,
                )
        finally:
            hook.remove()
        raise_if_stopped(ctx)
        ctx.progress(steps, steps)

        waves = []
        with torch.inference_mode():
            for spectrogram, length, piece in zip(spectrograms, lengths, pieces, strict=True):
                # A piece that never predicts its end would run on to the longest piece's
                # limit; cut it where it would have stopped alone.
                limit = int(len(piece) * MAX_LEN_RATIO / config.reduction_factor)
                frames = min(length, limit * config.reduction_factor)
                # One vocoder call per piece: zero-padded frames would change each tail.
                waves.append(vocoder(spectrogram[:frames]).float().cpu().numpy())
        return waves

    def _run_vits(
        self, model: SpeechModel, pieces: list[list[int]], ctx: BatchContext
    ) -> list[np.ndarray]:
        input_ids, attention_mask = _padded(pieces, model)
        with torch.inference_mode(), seeded(model.device):
            output = model.model(input_ids=input_ids, attention_mask=attention_mask)
        raise_if_stopped(ctx)
        ctx.progress(1, 1)
        waveforms = output.waveform.float().cpu().numpy()
        lengths = output.sequence_lengths.tolist()
        return [wave[:length] for wave, length in zip(waveforms, lengths, strict=True)]


def _language(request: SpeakRequest) -> str:
    return request.language.strip().lower()


def _encode(model: SpeechModel, text: str, normalize: bool) -> list[int]:
    """Token ids; SpeechT5 spells English numbers out ("5" -> "five"), VITS has no option."""
    if model.vocoder is None:
        return model.tokenizer(text).input_ids
    return model.tokenizer(text, normalize=normalize).input_ids


def _padded(pieces: list[list[int]], model: SpeechModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their mask; the mask alone tells the model where pieces end."""
    pad = model.tokenizer.pad_token_id or 0
    width = max(len(piece) for piece in pieces)
    input_ids = torch.full((len(pieces), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(pieces), width), dtype=torch.long)
    for row, piece in enumerate(pieces):
        input_ids[row, : len(piece)] = torch.tensor(piece)
        attention_mask[row, : len(piece)] = 1
    return input_ids.to(model.device), attention_mask.to(model.device)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown if len(names) <= MAX_LISTED else f"{shown}, ... ({len(names)} in all)"
