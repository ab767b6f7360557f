"""Transcribe: speech to text with a Whisper-family model, many files in shared batches.

Whisper hears 30 seconds at a time. Each file is decoded where the model runs, cut into
pieces of at most 30 s at its quietest moment near each cut (so words are not split), and
the pieces of every file in the batch go through the model together, a fixed number per
forward: a 15-minute lecture and three voice messages share the same calls. Each piece
costs the same (Whisper pads to 30 s), so pieces batch without waste.

Nothing is invented from silence: a piece quieter than -60 dBFS never reaches the model, and
a piece the model itself judges to hold no speech is left out by Whisper's own rule: its
``<|nospeech|>`` probability at the first decoding step is high and the words it would write
are unsure (their mean log-probability is low), so speech the model hears well is kept.
The same first step gives the language, when the member did not name one: heard in the
file's first piece (as Whisper decides it), so one file is transcribed in one language,
whatever it is batched with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, LogitsProcessor
from transformers.models.whisper.tokenization_whisper import LANGUAGES as WHISPER_LANGUAGES

from handlers.audio import check_whole, clock, decode, over
from handlers.base import (
    BatchContext,
    HandlerError,
    InvalidInput,
    LoadSpec,
    StopWhenAbandoned,
    Task,
    TaskKind,
    from_pretrained,
    quote,
    raise_if_stopped,
)
from handlers.languages import LANGUAGES, UNSPACED, resolve_language

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
"""What every Whisper checkpoint's feature extractor expects."""
PIECE_S = 30.0
CUT_SEARCH_S = 5.0
"""A long file is cut at the quietest tenth of a second in the last 5 s before each 30 s."""
FRAME_S = 0.1
QUIET_RMS = 10 ** (-60 / 20)
"""-60 dBFS: a piece below it is silence, left out without asking the model."""
COST_PER_SECOND = 4
TIME_STEP_S = 0.02
"""What one of Whisper's timestamp tokens counts: <|0.00|>, <|0.02|>, ..."""
OPUS_BYTES_PER_S = 4_000
"""About 32 kbit/s: a voice message's size to seconds, to estimate a file's work up front."""
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")
"""The token whose probability says "no speech" (renamed after Whisper's first release)."""


class MeanLogProb(LogitsProcessor):
    """The mean log-probability of the tokens greedy decoding picks, per row, taken as they
    are picked (the last processor sees the final scores, whose highest is the pick), so no
    step's scores are kept."""

    def __init__(self, eos_token_id: int | list[int] | None) -> None:
        ids = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
        self.eos = [i for i in ids if i is not None]
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.ended: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        best = torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values
        best = torch.nan_to_num(best, neginf=0.0)
        if self.total is None or self.count is None or self.ended is None:
            self.total = torch.zeros_like(best)
            self.count = torch.zeros_like(best)
            self.ended = torch.zeros_like(best, dtype=torch.bool)
        elif self.eos:
            self.ended |= torch.isin(input_ids[:, -1], torch.tensor(self.eos, device=best.device))
        self.total += torch.where(self.ended, 0.0, best)
        self.count += (~self.ended).float()
        return scores

    def mean(self, row: int) -> float:
        if self.total is None or self.count is None or self.count[row] == 0:
            return 0.0
        return float(self.total[row] / self.count[row])


class NoSpeech(HandlerError):
    """The file holds no speech: nothing is made up for it."""


@dataclass(frozen=True)
class TranscribeRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"audio"})
    """The recording is the member's own: kept out of logs whatever the admin chose."""

    audio: bytes
    """The file as the member sent it (Ogg/Opus, WAV, MP3, FLAC, M4A, MP4, WebM...)."""
    language: str | None = None
    """A language name or code; None detects it."""
    timestamps: bool = False
    """Segments with the model's own start and end times, rather than one per piece."""
    expected_seconds: float | None = None
    """The length Discord reported for a voice message: one that decodes much shorter was
    cut off in transit."""


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str

    def line(self) -> str:
        return f"[{clock(self.start)} - {clock(self.end)}] {self.text}"


@dataclass(frozen=True)
class TranscribeResult:
    text: str
    language: str
    """The ISO code the file was transcribed in, given or detected."""
    seconds: float
    segments: tuple[Segment, ...]
    timestamps: bool
    skipped: int = 0
    """Pieces left out as silence or without speech."""

    def timed(self) -> str:
        """One line per segment with its times: what /transcribe timestamps:True shows."""
        return "\n".join(segment.line() for segment in self.segments)


@dataclass
class SpeechModel:
    processor: Any
    model: torch.nn.Module
    device: str
    dtype: torch.dtype
    start_id: int
    """``<|startoftranscript|>``: the first decoder step reads language and no-speech."""
    language_ids: dict[str, int]
    """The language tokens of a multilingual model by code; empty for an English-only one."""
    no_speech_id: int | None


@dataclass
class Piece:
    owner: int
    start: float
    samples: np.ndarray
    first: bool = False
    """The first piece of its file that is not silence: the one its language is heard in."""


@dataclass
class Transcript:
    """One file's work in progress inside a batch."""

    seconds: float
    language: str | None
    timestamps: bool
    segments: list[Segment] = field(default_factory=list)
    skipped: int = 0


def whisper_language(name_or_code: str) -> str:
    """The code of a language Whisper hears, from what a member typed."""
    code = resolve_language(name_or_code)
    if code not in WHISPER_LANGUAGES:
        raise InvalidInput("language", f"{LANGUAGES.get(code, code)} is not one Whisper knows")
    return code


def whisper_languages() -> list[str]:
    """The codes of every language Whisper hears that members can name."""
    return sorted(set(WHISPER_LANGUAGES) & set(LANGUAGES))


def cut(samples: np.ndarray, rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """(start, end) sample indices of pieces of at most 30 s, each cut at the quietest
    tenth of a second of the 5 s before its limit."""
    limit, search, frame = int(PIECE_S * rate), int(CUT_SEARCH_S * rate), int(FRAME_S * rate)
    spans: list[tuple[int, int]] = []
    start = 0
    while samples.size - start > limit:
        window = samples[start + limit - search : start + limit]
        frames = window[: window.size // frame * frame].reshape(-1, frame)
        quietest = int(np.argmin(np.sqrt((frames**2).mean(axis=1))))
        end = start + limit - search + quietest * frame + frame // 2
        spans.append((start, end))
        start = end
    spans.append((start, samples.size))
    return spans


def is_quiet(samples: np.ndarray) -> bool:
    return samples.size == 0 or float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < QUIET_RMS


class TranscribeTask(Task[TranscribeRequest, TranscribeResult]):
    name = "transcribe"
    kind = TaskKind.AUDIO

    def __init__(
        self,
        max_seconds: float = 900.0,
        max_bytes: int = 25 * 1024 * 1024,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
        pieces_per_call: int = 16,
    ) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self.pieces_per_call = pieces_per_call

    def validate(self, request: TranscribeRequest) -> None:
        if not request.audio:
            raise InvalidInput("file", "is empty")
        if len(request.audio) > self.max_bytes:
            raise InvalidInput("file", over(len(request.audio), self.max_bytes))
        if request.expected_seconds is not None and request.expected_seconds > self.max_seconds:
            raise InvalidInput(
                "file",
                f"is {clock(request.expected_seconds)} long; the limit is "
                f"{clock(self.max_seconds)} of audio",
            )
        if request.language is not None:
            whisper_language(request.language)

    def batch_key(self, request: TranscribeRequest) -> Hashable:
        """Timed or not; and a file of one piece apart from longer ones, since every file
        of a batch gets its result when the batch ends: a voice message never waits for
        a lecture."""
        return request.timestamps, self.seconds_of(request) > PIECE_S

    def seconds_of(self, request: TranscribeRequest) -> float:
        """The file's length as far as is known before it is decoded."""
        if request.expected_seconds is not None:
            return request.expected_seconds
        return min(len(request.audio) / OPUS_BYTES_PER_S, self.max_seconds)

    def cost(self, request: TranscribeRequest) -> int:
        """Four units a second of audio: the audio class's budget (BOT_AUDIO__MAX_COST, 4000)
        then holds at most 1,000 s of audio in one batch, which must end within its limit."""
        return max(1, math.ceil(self.seconds_of(request) * COST_PER_SECOND))

    def work(self, request: TranscribeRequest) -> float:
        return max(1.0, self.seconds_of(request))

    def load(self, spec: LoadSpec) -> SpeechModel:
        processor = AutoProcessor.from_pretrained(spec.source, trust_remote_code=False)
        model = from_pretrained(AutoModelForSpeechSeq2Seq, spec).to(spec.device).eval()
        generation = model.generation_config
        tokenizer = processor.tokenizer
        languages: dict[str, int] = {}
        if getattr(generation, "is_multilingual", False):
            for token, token_id in (getattr(generation, "lang_to_id", None) or {}).items():
                languages[token.strip("<|>")] = token_id
        no_speech = None
        for token in NO_SPEECH_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                no_speech = token_id
                break
        return SpeechModel(
            processor, model, spec.device, spec.dtype, generation.decoder_start_token_id,
            languages, no_speech,
        )  # fmt: skip

    def model_bytes(self, model: SpeechModel) -> int:
        return super().model_bytes(model.model)

    def run_batch(
        self, model: SpeechModel, requests: Sequence[TranscribeRequest], ctx: BatchContext
    ) -> list[Any]:
        outputs: list[Any] = [None] * len(requests)
        transcripts: dict[int, Transcript] = {}
        pieces: list[Piece] = []
        for owner, request in enumerate(requests):
            try:
                transcript, own = self._pieces(model, owner, request)
            except HandlerError as exc:
                outputs[owner] = exc
                continue
            except Exception as exc:  # a decoder's own bug: this file fails, not its batch
                log.warning("could not decode a file to transcribe: %r", exc)
                outputs[owner] = InvalidInput("file", "is damaged and cannot be read")
                continue
            transcripts[owner] = transcript
            pieces.extend(own)
        # Each file's first piece in the first forwards (its language is heard there), then
        # longest first: pieces of alike length end their generation together.
        pieces.sort(key=lambda p: (not p.first, -p.samples.size))
        done = 0
        for start in range(0, len(pieces), self.pieces_per_call):
            raise_if_stopped(ctx)
            group = [p for p in pieces[start : start + self.pieces_per_call]
                     if not ctx.abandoned(p.owner)]  # fmt: skip
            if group:
                self._hear(model, group, transcripts, ctx)
            done += min(self.pieces_per_call, len(pieces) - start)
            ctx.progress(done, len(pieces))
        for owner, transcript in transcripts.items():
            outputs[owner] = self._result(transcript)
        return outputs

    def _pieces(
        self, model: SpeechModel, owner: int, request: TranscribeRequest
    ) -> tuple[Transcript, list[Piece]]:
        samples = decode(request.audio, SAMPLE_RATE, self.max_seconds)
        seconds = samples.size / SAMPLE_RATE
        if request.expected_seconds is not None:
            check_whole(seconds, request.expected_seconds)
        language = whisper_language(request.language) if request.language else None
        if language is not None and model.language_ids and language not in model.language_ids:
            raise InvalidInput("language", f"{quote(language)} is not a language this model hears")
        transcript = Transcript(seconds, language, request.timestamps)
        own: list[Piece] = []
        for begin, end in cut(samples):
            piece = samples[begin:end]
            if is_quiet(piece):
                transcript.skipped += 1
            else:
                own.append(Piece(owner, begin / SAMPLE_RATE, piece, first=not own))
        return transcript, own

    def _hear(
        self,
        model: SpeechModel,
        group: list[Piece],
        transcripts: dict[int, Transcript],
        ctx: BatchContext,
    ) -> None:
        """Run one forward's worth of pieces: language, no-speech, then the words."""
        features = model.processor.feature_extractor(
            [p.samples for p in group],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            device=model.device,  # spectrograms on the GPU, not on a CPU in series with it
        ).input_features.to(model.device, model.dtype)
        with torch.inference_mode():
            encoded = model.model.get_encoder()(features)
            first = torch.full((len(group), 1), model.start_id, device=features.device)
            logits = model.model(encoder_outputs=encoded, decoder_input_ids=first).logits[:, -1]
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
        self._detect(model, group, transcripts, log_probs)
        timestamps = transcripts[group[0].owner].timestamps
        options: dict[str, Any] = {"return_timestamps": timestamps}
        if model.language_ids:
            options["language"] = [transcripts[p.owner].language for p in group]
            options["task"] = "transcribe"
        confidence = MeanLogProb(model.model.generation_config.eos_token_id)
        with torch.inference_mode():
            tokens = model.model.generate(
                encoder_outputs=encoded,
                stopping_criteria=[StopWhenAbandoned(ctx)],
                logits_processor=[confidence],
                **options,
            )
        raise_if_stopped(ctx)
        tokenizer = model.processor.tokenizer
        for row, piece in enumerate(group):
            transcript = transcripts[piece.owner]
            no_speech = (
                math.exp(float(log_probs[row, model.no_speech_id]))
                if model.no_speech_id is not None
                else 0.0
            )
            if (
                no_speech > self.no_speech_threshold
                and confidence.mean(row) < self.log_prob_threshold
            ):
                transcript.skipped += 1  # Whisper's own rule: likely silence, and unsure words
                continue
            end = piece.start + piece.samples.size / SAMPLE_RATE
            decoded = tokenizer.decode(
                tokens[row], skip_special_tokens=True, output_offsets=timestamps
            )
            if timestamps:
                spans = [
                    Segment(
                        min(piece.start + o["timestamp"][0], end),
                        end
                        if o["timestamp"][1] is None
                        else min(piece.start + o["timestamp"][1], end),
                        o["text"].strip(),
                    )
                    for o in decoded["offsets"]
                    if o["text"].strip()
                ]
                spans.extend(self._unclosed(model, tokens[row], piece.start, end, spans))
            else:
                text = decoded.strip()
                spans = [Segment(piece.start, end, text)] if text else []
            if spans:
                transcript.segments.extend(spans)
            else:
                transcript.skipped += 1

    @staticmethod
    def _unclosed(
        model: SpeechModel, row: torch.Tensor, start: float, end: float, closed: list[Segment]
    ) -> list[Segment]:
        """The words after a piece's last timestamp (its generation stopped mid-segment),
        which the tokenizer's offsets leave out; all of the piece's words if it has none."""
        tokenizer = model.processor.tokenizer
        first_time = tokenizer.convert_tokens_to_ids("<|0.00|>")
        ids = row.tolist()
        times = [i for i, token in enumerate(ids) if token >= first_time]
        last = times[-1] if times else -1
        rest = tokenizer.decode(ids[last + 1 :], skip_special_tokens=True).strip()
        if not rest:
            return []
        since = start + (ids[last] - first_time) * TIME_STEP_S if closed and times else start
        return [Segment(min(since, end), end, rest)]

    @staticmethod
    def _detect(
        model: SpeechModel,
        group: list[Piece],
        transcripts: dict[int, Transcript],
        log_probs: torch.Tensor,
    ) -> None:
        """Each file without a language gets the one heard in its first piece, as Whisper
        itself decides, so that its batch mates cannot change it."""
        if not model.language_ids:
            for piece in group:
                transcripts[piece.owner].language = transcripts[piece.owner].language or "en"
            return
        codes = list(model.language_ids)
        ids = torch.tensor([model.language_ids[c] for c in codes])
        votes: dict[int, torch.Tensor] = {}
        for index, piece in enumerate(group):
            if piece.first and transcripts[piece.owner].language is None:
                scores = log_probs[index, ids]
                votes[piece.owner] = votes.get(piece.owner, 0) + scores
        for owner, total in votes.items():
            transcripts[owner].language = codes[int(torch.argmax(total))]

    @staticmethod
    def _result(transcript: Transcript) -> TranscribeResult | NoSpeech:
        segments = sorted(transcript.segments, key=lambda s: s.start)
        if not segments:
            return NoSpeech(f"I heard no speech in these {clock(transcript.seconds)} of audio")
        language = transcript.language or "en"
        return TranscribeResult(
            text=("" if language in UNSPACED else " ").join(s.text for s in segments),
            language=language,
            seconds=transcript.seconds,
            segments=tuple(segments),
            timestamps=transcript.timestamps,
            skipped=transcript.skipped,
        )
