"""Transcription one file at a time against the executor's shared batches, in one run, on
the same files and the same model:

    python bench/transcribe.py --device cpu --json out.json                # tiny Whisper, ~40 s
    python bench/transcribe.py --device cuda --full-size --json out.json   # turbo's architecture
    [--files 10] [--long 2] [--seconds 180] [--tokens 128] [--fixed-tokens] [--repeats 3]
    [--pieces-per-call 16] [--max-batch 8] [--threads N] [--seed 0]

- ``one_at_a_time``: each file is its own executor job, awaited before the next is sent:
  one ``run_batch`` call per file, as Discord bots that call the model per message work.
- ``batched``: every file is sent at once (each by another member); the executor puts up to
  ``--max-batch`` jobs (the audio class's ``max_batch``, ``BOT_AUDIO__MAX_BATCH``) in one
  ``run_batch`` call, and the handler cuts their files into pieces of at most 30 s that go
  through the model ``--pieces-per-call`` at a time (``BOT_TRANSCRIBE__PIECES_PER_CALL``).

Both run through the real ``Executor`` on a ``LocalBackend`` (the model on a thread of this
process, ``ModelRegistry(device)``'s dtype: float16 on CUDA) and the real ``TranscribeTask``,
whose stages are only timed; the model is loaded and warmed up (a lone file, then several at
once) first, and each mode runs ``--repeats`` times, each first in turn (the median is
reported). The files are made up and seeded: ``--files`` voice messages of 5 to 20 s (with
the length Discord reports, as the bot passes it) and ``--long`` uploads of ``--seconds``
each (cut into pieces), shuffled. Their sound is speech-shaped (syllables: a harmonic tone
on a gliding pitch or a noise burst under a raised-cosine envelope, pauses between phrases,
a floor at -70 dBFS), 16 kHz float32, encoded as Ogg/Opus with soundfile (about 26 kbit/s),
so decoding them is part of the cost, as in the bot.

Reported per mode: the wall time, the real-time factor (processing seconds per second of
audio; below 1 is faster than real time) and "x real time" (audio seconds / wall seconds),
the ``run_batch`` and ``generate`` calls with their sizes, the decoder steps, where the time
went (decoding, log-mel features, ``generate``, the rest of the model: encoder, the first
decoding step, detokenising) and when each file's result came, from the moment all had
arrived; then the speedup (one-at-a-time wall / batched wall) and how many files got the
same text in every run.

Random weights never end a piece: the end token is suppressed, and the bench forces it
after ``--tokens`` tokens for a 30 s piece and in proportion for a shorter one (at least
4: a 6 s voice message says about a fifth of what 30 s of speech does), so that a batch's
``generate`` runs as long as its longest piece, as with real speech; ``--fixed-tokens``
gives every piece ``--tokens`` (an upper bound). Default 128, about what 30 s of dense
speech takes (real Whisper stops sooner on sparse speech and allows up to 444): the cost
per piece is an upper bound of real speech's. Compare figures at the same ``--tokens``.

The tiny model is ``tests/tinymodels.py``'s Whisper (one layer each side, 60 tokens a
piece at most), which only shows the script works. ``--full-size`` writes a stand-in for the
default model, ``openai/whisper-large-v3-turbo``, as a checkpoint the handler loads like the
hub's: its architecture (d_model 1280, 32 encoder and 4 decoder layers, 20 heads,
feed-forward 5120, 128 mel bins, 1500 source and 448 target positions, the output layer tied
to the embeddings) with random weights, saved as float16 beside a processor
(``WhisperFeatureExtractor(feature_size=128)`` and ``tests.tinymodels.whisper_tokenizer()``,
as the tiny builder pairs them). That tokenizer has 1,814 tokens, so it is padded with plain
added tokens (``<|fillerN|>``) to the real vocabulary of 51,866, and the output layer costs
what the real one does; its 5 languages stand in for Whisper's 100.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import transformers
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stages import Stages, Timed, batch_sizes, sync  # noqa: E402
from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry  # noqa: E402
from bot.executor.config import default_limits  # noqa: E402
from handlers.base import BatchContext, LoadSpec  # noqa: E402
from handlers.kinds import TaskKind  # noqa: E402
from handlers.transcribe import (  # noqa: E402
    PIECE_S,
    SAMPLE_RATE,
    Piece,
    SpeechModel,
    TranscribeRequest,
    TranscribeTask,
    Transcript,
)
from tests import tinymodels  # noqa: E402

TURBO = dict(
    d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
    decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
    max_source_positions=1500, max_target_positions=448,
)  # fmt: skip
"""openai/whisper-large-v3-turbo's architecture."""
TURBO_VOCAB = 51866
VOICE_SECONDS = (5.0, 20.0)
MIN_TOKENS = 4
"""The fewest tokens a piece generates."""
PROMPT_TOKENS = 4
"""<|startoftranscript|>, the language, <|transcribe|>, <|notimestamps|>."""
MODES = ("one_at_a_time", "batched")


# --- the models ---------------------------------------------------------------------------


def turbo_stand_in(directory: Path, tokens: int) -> Path:
    """large-v3-turbo's architecture with random weights, saved as float16 with a processor
    (see the module's docstring); a piece generates at most ``tokens`` tokens."""
    tokenizer = tinymodels.whisper_tokenizer()
    tokenizer.add_tokens([f"<|filler{i}|>" for i in range(TURBO_VOCAB - len(tokenizer))])
    ids = tokenizer.convert_tokens_to_ids
    end, start = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer), **TURBO, pad_token_id=end, bos_token_id=end,
        eos_token_id=end, decoder_start_token_id=start, suppress_tokens=[],
        begin_suppress_tokens=[], tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    languages = tinymodels.WHISPER_LANGUAGES
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, bos_token_id=end,
        is_multilingual=True, max_length=TURBO["max_target_positions"],
        max_new_tokens=tokens,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in languages},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, begin_suppress_tokens=[],
        suppress_tokens=[ids(token) for token in tinymodels.WHISPER_SPECIALS],
    )  # fmt: skip
    model.half().save_pretrained(directory)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=TURBO["num_mel_bins"]),
        tokenizer=tokenizer,
    ).save_pretrained(directory)
    return directory


def build_model(directory: Path, full_size: bool, tokens: int) -> Path:
    """The checkpoint both modes load: the tiny Whisper, or the turbo stand-in; a piece
    generates at most ``tokens`` tokens."""
    if full_size:
        limit = int(TURBO["max_target_positions"]) - PROMPT_TOKENS
        if tokens > limit:
            raise SystemExit(f"error: --tokens: whisper-large-v3-turbo generates at most {limit}")
        return turbo_stand_in(directory, tokens)
    path = tinymodels.build_whisper(directory)
    limit = WhisperConfig.from_pretrained(path).max_target_positions - PROMPT_TOKENS
    if tokens > limit:
        raise SystemExit(f"error: --tokens: the tiny Whisper generates at most {limit}")
    generation = GenerationConfig.from_pretrained(path)
    generation.max_new_tokens = tokens
    generation.save_pretrained(path)
    return path


# --- the files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFile:
    name: str
    seconds: float
    data: bytes
    voice: bool
    """A voice message, whose length Discord reports; otherwise an upload."""

    def request(self) -> TranscribeRequest:
        return TranscribeRequest(self.data, expected_seconds=self.seconds if self.voice else None)


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Phrases of syllables (a harmonic tone on a gliding pitch, or a noise burst, under a
    raised-cosine envelope) with pauses between them, over a floor at -70 dBFS."""
    total = int(seconds * SAMPLE_RATE)
    samples = rng.normal(0.0, 10 ** (-70 / 20), total)
    at = rng.uniform(0.05, 0.3)
    while at < seconds - 0.35:
        phrase_end = min(seconds - 0.35, at + rng.uniform(1.0, 4.0))
        pitch = rng.uniform(100.0, 250.0)
        while at < phrase_end:
            length = rng.uniform(0.12, 0.3)
            first = int(at * SAMPLE_RATE)
            count = min(int(length * SAMPLE_RATE), total - first)
            moment = np.arange(count) / SAMPLE_RATE
            if rng.random() < 0.25:  # a fricative
                sound = rng.normal(0.0, 0.6, count)
            else:
                glide = 1 + rng.uniform(-0.15, 0.15) * moment / length
                f0 = pitch * rng.uniform(0.85, 1.15) * glide
                phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
                sound = sum(np.sin(k * phase) / k for k in range(1, 7))
            envelope = np.sin(np.pi * np.arange(count) / count) ** 2
            samples[first : first + count] += rng.uniform(0.1, 0.3) * envelope * sound
            at += length + rng.uniform(0.0, 0.06)
        at += rng.uniform(0.2, 0.8)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def opus(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="OGG", subtype="OPUS")
    return buffer.getvalue()


def make_files(voice: int, long: int, long_seconds: float, seed: int) -> list[AudioFile]:
    rng = np.random.default_rng(seed)
    lengths = [(f"voice-{i + 1}", round(float(rng.uniform(*VOICE_SECONDS)), 2), True)
               for i in range(voice)]  # fmt: skip
    lengths += [(f"long-{i + 1}", long_seconds, False) for i in range(long)]
    chosen = [lengths[i] for i in rng.permutation(len(lengths))]
    sounds = [speech_like(seconds, rng) for _, seconds, _ in chosen]
    # libopus encodes at about 30x real time on one core: every core at once.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        encoded = list(pool.map(opus, sounds))
    return [
        AudioFile(name, seconds, data, is_voice)
        for (name, seconds, is_voice), data in zip(chosen, encoded, strict=True)
    ]


# --- the handler, timed -------------------------------------------------------------------


class EndAfter(LogitsProcessor):
    """Ends each row after its own number of new tokens (the end token, suppressed till
    then, is forced): what a random-weight model, which never ends by itself, says."""

    def __init__(self, lengths: list[int], end: int) -> None:
        self.lengths = torch.tensor(lengths)
        self.end = end
        self.begin = 0

    def set_begin_index(self, begin: int) -> None:
        """Whisper's ``generate`` says here how long the prompt is."""
        self.begin = begin

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self.lengths.device != scores.device:
            self.lengths = self.lengths.to(scores.device)
        done = (self.lengths <= input_ids.shape[1] - self.begin)[:, None]
        ended = torch.full_like(scores, float("-inf"))
        ended[:, self.end] = 0.0
        return torch.where(done, ended, scores)  # no sync with the device


class TimedGenerate:
    """The model's ``generate``, timed, each piece ending after its share of the tokens."""

    def __init__(self, task: TimedTranscribe, model: SpeechModel) -> None:
        self.task, self.inner, self.device = task, model.model.generate, model.device
        self.end = model.model.generation_config.eos_token_id

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task = self.task
        rows = int(kwargs["encoder_outputs"].last_hidden_state.shape[0])
        seconds = task.group_seconds
        if len(seconds) != rows:  # not the group this bench saw: count full pieces
            seconds = [PIECE_S] * rows
        lengths = [task.tokens_for(s) for s in seconds]
        # The handler's own processors (its confidence measure) stay last, as it puts them.
        own = list(kwargs.pop("logits_processor", None) or [])
        processors = LogitsProcessorList([EndAfter(lengths, self.end), *own])
        with task.stages.timing("generate", self.device):
            out = self.inner(*args, logits_processor=processors, **kwargs)
        with task.stages.lock:
            task.stages.generate_calls.append((rows, int(out.shape[-1]), sum(lengths)))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedTranscribe(TranscribeTask):
    """The bot's transcribe handler, unchanged, with its stages timed and its stand-in
    model's pieces ending as real speech would (see ``tokens_for``)."""

    def __init__(self, tokens: int, fixed_tokens: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokens, self.fixed_tokens = tokens, fixed_tokens
        self.stages = Stages()
        self.loaded: SpeechModel | None = None
        self.group_seconds: list[float] = []

    def tokens_for(self, seconds: float) -> int:
        """``tokens`` for 30 s, in proportion for a shorter piece (or ``tokens`` each)."""
        if self.fixed_tokens:
            return self.tokens
        return max(MIN_TOKENS, min(self.tokens, round(self.tokens * seconds / PIECE_S)))

    def load(self, spec: LoadSpec) -> SpeechModel:
        model = super().load(spec)
        model.processor.feature_extractor = Timed(model.processor.feature_extractor,
                                                   self.stages, "features")  # fmt: skip
        model.model.generate = TimedGenerate(self, model)
        self.loaded = model
        return model

    def run_batch(
        self, model: SpeechModel, requests: Sequence[TranscribeRequest], ctx: BatchContext
    ) -> list[Any]:
        with self.stages.timing("run_batch", model.device):
            return super().run_batch(model, requests, ctx)

    def _pieces(
        self, model: SpeechModel, owner: int, request: TranscribeRequest
    ) -> tuple[Transcript, list[Piece]]:
        with self.stages.timing("decode"):
            return super()._pieces(model, owner, request)

    def _hear(
        self,
        model: SpeechModel,
        group: list[Piece],
        transcripts: dict[int, Transcript],
        ctx: BatchContext,
    ) -> None:
        self.group_seconds = [piece.samples.size / SAMPLE_RATE for piece in group]
        with self.stages.timing("hear", model.device):
            super()._hear(model, group, transcripts, ctx)


# --- the two modes ------------------------------------------------------------------------


@dataclass
class Outcome:
    text: str | None
    """None when the file got an error instead."""
    error: str | None
    skipped: int
    done_s: float
    """When its result came, from the moment every file had arrived."""


def outcome(result: Any, started: float) -> Outcome:
    done = time.perf_counter() - started
    if isinstance(result, BaseException):
        return Outcome(None, f"{type(result).__name__}: {result}", 0, done)
    return Outcome(result.text, None, result.skipped, done)


async def one_at_a_time(executor: Executor, files: list[AudioFile]) -> list[Outcome]:
    outcomes = []
    started = time.perf_counter()
    for index, file in enumerate(files):
        try:
            result = await executor.submit("transcribe", file.request(), user_id=index)
        except Exception as exc:
            result = exc
        outcomes.append(outcome(result, started))
    return outcomes


async def batched(executor: Executor, files: list[AudioFile]) -> list[Outcome]:
    started = time.perf_counter()
    handles = [executor.submit("transcribe", file.request(), user_id=index)
               for index, file in enumerate(files)]  # fmt: skip

    async def wait(handle: Any) -> Outcome:
        try:
            result = await handle
        except Exception as exc:
            result = exc
        return outcome(result, started)

    return list(await asyncio.gather(*(wait(handle) for handle in handles)))


RUNS = {"one_at_a_time": one_at_a_time, "batched": batched}


async def measure(
    name: str, executor: Executor, task: TimedTranscribe, files: list[AudioFile], device: str
) -> tuple[dict[str, Any], list[Outcome]]:
    """One run of one mode: its figures, and each file's outcome."""
    before = batch_sizes(executor, "transcribe")
    task.stages.take()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.perf_counter()
    outcomes = await RUNS[name](executor, files)
    sync(device)
    wall = time.perf_counter() - started
    seconds, calls = task.stages.take()
    sizes = batch_sizes(executor, "transcribe") - before
    audio = sum(f.seconds for f in files)
    voice = [o.done_s for f, o in zip(files, outcomes, strict=True) if f.voice]
    long = [o.done_s for f, o in zip(files, outcomes, strict=True) if not f.voice]
    model_other = seconds["hear"] - seconds["features"] - seconds["generate"]
    row: dict[str, Any] = {
        "wall_s": round(wall, 3),
        "rtf": round(wall / audio, 5),
        "x_real_time": round(audio / wall, 2),
        "run_batch_calls": sum(sizes.values()),
        "jobs_per_run_batch": dict(sorted(sizes.items())),
        "generate_calls": len(calls),
        "pieces_per_generate": dict(sorted(Counter(rows for rows, _, _ in calls).items())),
        "pieces": sum(rows for rows, _, _ in calls),
        "tokens": sum(tokens for _, _, tokens in calls),
        "decoder_steps": sum(steps for _, steps, _ in calls),
        "stages_s": {
            "decode": round(seconds["decode"], 3),
            "features": round(seconds["features"], 3),
            "generate": round(seconds["generate"], 3),
            "encoder_and_rest": round(model_other, 3),
            "run_batch": round(seconds["run_batch"], 3),
            "outside_run_batch": round(wall - seconds["run_batch"], 3),
        },
        "voice_done_p50_s": round(statistics.median(voice), 3) if voice else None,
        "voice_done_max_s": round(max(voice), 3) if voice else None,
        "long_done_max_s": round(max(long), 3) if long else None,
        "skipped_pieces": sum(o.skipped for o in outcomes),
        "errors": [f"{f.name}: {o.error}" for f, o in zip(files, outcomes, strict=True) if o.error],
    }
    if device.startswith("cuda"):
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row, outcomes


async def warm_up(executor: Executor, files: list[AudioFile]) -> None:
    """Load the model, then run a lone file and several at once: first-call costs (and, on
    CUDA, kernel choices for one piece and for a full group) stay out of the figures."""
    await executor.preload("transcribe")
    voice = [f for f in files if f.voice] or files
    await executor.submit("transcribe", voice[0].request(), user_id="warm-up")
    await asyncio.gather(*(executor.submit("transcribe", f.request(), user_id=f"warm-up-{i}")
                           for i, f in enumerate(voice[:8])))  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    tokens = args.tokens or (128 if args.full_size else 60)
    limits = default_limits()
    # Deadlines far off: a slow device must not turn the benchmark into refusals.
    limits[TaskKind.AUDIO] = dataclasses.replace(
        limits[TaskKind.AUDIO], max_batch=args.max_batch, queue_deadline_s=3600.0,
        exec_timeout_s=3600.0,
    )  # fmt: skip
    queue = max(64, 2 * (args.files + args.long))
    config = ExecutorConfig(max_queue=queue, max_per_user=2, limits=limits)
    task = TimedTranscribe(tokens, args.fixed_tokens, pieces_per_call=args.pieces_per_call)
    registry = ModelRegistry(device=device)
    backend = LocalBackend(registry, torch_threads=args.threads)
    runs: dict[str, list[tuple[dict[str, Any], list[Outcome]]]] = {name: [] for name in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-transcribe-") as directory:
        started = time.perf_counter()
        source = str(build_model(Path(directory) / "transcribe", args.full_size, tokens))
        print(f"model written in {time.perf_counter() - started:.1f} s", file=sys.stderr,
              flush=True)  # fmt: skip
        started = time.perf_counter()
        files = make_files(args.files, args.long, args.seconds, args.seed)
        audio = sum(f.seconds for f in files)
        print(f"{len(files)} files, {audio:.1f} s of audio, made in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        executor = Executor({"transcribe": task}, {"transcribe": source}, backend, config)
        async with executor:
            started = time.perf_counter()
            await warm_up(executor, files)
            print(f"loaded and warmed up in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            for repeat in range(args.repeats):  # each mode first in turn: drift weighs on both
                for name in MODES if repeat % 2 == 0 else MODES[::-1]:
                    runs[name].append(await measure(name, executor, task, files, device))
                    row = runs[name][-1][0]
                    print(f"{name}: {row['wall_s']:.2f} s, {row['stages_s']}", file=sys.stderr,
                          flush=True)  # fmt: skip
    modes: dict[str, dict[str, Any]] = {}
    for name, done in runs.items():
        walls = [row["wall_s"] for row, _ in done]
        median = sorted(done, key=lambda r: r[0]["wall_s"])[len(done) // 2][0]
        modes[name] = median | {"wall_s_runs": walls}
    assert task.loaded is not None
    model = task.loaded.model
    texts = [[o.text for o in outcomes] for done in runs.values() for _, outcomes in done]
    same = sum(t[0] is not None and len(set(t)) == 1 for t in zip(*texts, strict=True))
    result: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "full_size": args.full_size,
        "dtype": str(registry.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "model": {
            "architecture": "whisper-large-v3-turbo" if args.full_size else "tiny whisper",
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "vocab": model.config.vocab_size,
            "tokens_per_30s_piece": tokens,
            "tokens_in_proportion": not args.fixed_tokens,
            "threads": torch.get_num_threads(),
        },
        "audio": {
            "files": len(files),
            "seconds": round(audio, 2),
            "voice_messages": [f.seconds for f in files if f.voice],
            "long_files": [f.seconds for f in files if not f.voice],
            "order": [f.name for f in files],
            "opus_bytes": sum(len(f.data) for f in files),
        },
        "modes": modes,
        "speedup": round(modes["one_at_a_time"]["wall_s"] / modes["batched"]["wall_s"], 2),
        "same_text": same,
    }
    if not device.startswith("cuda"):
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(result: dict[str, Any]) -> str:
    audio, model = result["audio"], result["model"]
    voice, long = audio["voice_messages"], audio["long_files"]
    tokens = model["tokens_per_30s_piece"]
    share = "in proportion for shorter ones" if model["tokens_in_proportion"] else "every piece"
    kinds = [f"{len(voice)} voice messages ({min(voice):.0f}-{max(voice):.0f} s)"] if voice else []
    kinds += [f"{len(long)} of {max(long):.0f} s"] if long else []
    lines = [
        f"{audio['files']} files, {audio['seconds']:.1f} s of audio: {', '.join(kinds)}; "
        f"{result['modes']['batched']['pieces']} pieces, {tokens} tokens per 30 s piece "
        f"({share}), {result['modes']['batched']['tokens']} tokens in all",
        f"{model['architecture']} ({model['parameters_m']}M parameters, vocab {model['vocab']}) "
        f"on {result['device_name']}, {result['dtype']}; median of "
        f"{result['args']['repeats']} runs each",
        "",
        "| mode | wall s | RTF | x real time | run_batch calls (jobs) | generate calls (pieces) "
        "| decoder steps | voice msgs done p50 / max s | long files done s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["modes"].items():
        jobs = ", ".join(f"{n}x{size}" for size, n in m["jobs_per_run_batch"].items())
        pieces = ", ".join(f"{n}x{size}" for size, n in m["pieces_per_generate"].items())
        lines.append(
            f"| {name.replace('_', ' ')} | {m['wall_s']:.2f} | {m['rtf']:.4f} | "
            f"{m['x_real_time']:.1f}x | {m['run_batch_calls']} ({jobs}) | "
            f"{m['generate_calls']} ({pieces}) | {m['decoder_steps']} | "
            f"{seconds(m['voice_done_p50_s'])} / {seconds(m['voice_done_max_s'])} | "
            f"{seconds(m['long_done_max_s'])} |"
        )
    lines.append("")
    lines.append(
        f"speedup (one-at-a-time wall / batched wall): {result['speedup']:.2f}x; "
        f"same text every run: {result['same_text']}/{audio['files']} files"
    )
    lines.append("where the time went, s (decode / features / generate / encoder+rest / "
                 "outside run_batch):")  # fmt: skip
    for name, m in result["modes"].items():
        s = m["stages_s"]
        lines.append(
            f"  {name.replace('_', ' ')}: {s['decode']:.2f} / {s['features']:.2f} / "
            f"{s['generate']:.2f} / {s['encoder_and_rest']:.2f} / {s['outside_run_batch']:.2f}"
            f"   (runs: {', '.join(f'{w:.2f}' for w in m['wall_s_runs'])} s)"
        )
        if m["errors"]:
            lines.append(f"  errors: {m['errors']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--full-size", action="store_true", help="whisper-large-v3-turbo's architecture"
    )
    parser.add_argument("--files", type=int, default=10, help="voice messages of 5-20 s")
    parser.add_argument("--long", type=int, default=2, help="long uploads, cut into pieces")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of each long file")
    parser.add_argument(
        "--tokens", type=int, help="tokens a 30 s piece generates (default: 128 full size, 60 tiny)"
    )
    parser.add_argument(
        "--fixed-tokens", action="store_true", help="every piece --tokens, however short"
    )
    parser.add_argument("--pieces-per-call", type=int, default=16, help="pieces per forward")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=default_limits()[TaskKind.AUDIO].max_batch,
        help="jobs per run_batch (the audio class's max_batch)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode (median)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the backend's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.files + args.long < 1:
        parser.error("no files: --files and --long are both 0")
    if args.repeats < 1 or (args.tokens is not None and args.tokens < MIN_TOKENS):
        parser.error(f"--repeats must be >= 1 and --tokens >= {MIN_TOKENS}")
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
