"""Describing images one at a time against the executor's shared batches, in one run, on
the same images and the same model:

    python bench/describe.py --device cpu --threads 1 --json out.json    # tiny Idefics3, ~15 s
    python bench/describe.py --device cuda --full-size --json out.json   # SmolVLM-500M's shape
    [--images 16] [--tokens 64] [--repeats 3] [--max-batch 8] [--threads N] [--seed 0]

On a small or shared CPU, ``--threads 1`` gives steady figures: with torch's default (every
core) the tiny model's steps took 1 ms or 20 ms by turns on a 2-core machine running other
work, as its threads waited for one another.

- ``one_at_a_time``: each image is its own executor job, awaited before the next is sent:
  one ``run_batch`` call and one ``generate`` call per image, as Discord bots that call the
  model per message work.
- ``batched``: every image is sent at once (each by another member); the executor puts as
  many jobs in one ``run_batch`` call as the image class allows by default (``max_batch``
  4; ``max_cost`` 4 Mpx, at the handler's flat cost of a megapixel an image, also allows
  4), and the handler generates them together, left-padded, in one ``generate`` call.
- ``batched_wide`` (unless ``--max-batch`` is at most the default): the same with up to
  ``--max-batch`` jobs a batch: ``BOT_IMAGE__MAX_BATCH`` and ``BOT_IMAGE__MAX_COST`` (raised
  to ``--max-batch`` megapixels: without it the cost cap holds a batch at 4 whatever
  ``max_batch`` says). The image class is shared with /imagine, whose batches those limits
  widen too.

All go through the real ``Executor`` on a ``LocalBackend`` (the model on a thread of this
process, ``ModelRegistry(device)``'s dtype: float16 on CUDA) and the real ``DescribeTask``,
whose stages are only timed; the two batched modes use two executors on one backend, so the
model is loaded once. It is loaded and warmed up (a lone image, then ``--max-batch`` at once)
first, and each mode runs ``--repeats`` times, in a rotating order (the median is reported).
The images are made up and seeded, ``--images`` of them, from 320x240 to 1920x1080
(landscape, and a phone's portrait screenshot): screenshot-like (a window with a title bar,
a sidebar, lines of drawn text, buttons and avatars) saved as PNG, and photo-like (smooth
colour gradients under grain) saved as JPEG at quality 85, so that opening them is part of
the cost, as in the bot. Each is asked its own question (or none: the default "Describe this
image"), so prompts differ in length as members' do.

Reported per mode: the wall time, seconds per image, images per second, the tokens
generated, the ``run_batch`` and ``generate`` calls with their sizes (rows), the prompt
tokens each ``generate`` saw (with left padding, and without), where the time went
(opening the images, the processor: tiling, normalising, tokenising; the first token:
vision encoder and prompt; the later decoding steps; the rest of ``run_batch``; outside it)
and when each image's result came, from the moment all were sent; then the speedups
(one-at-a-time wall / batched wall) and how many images got the same text in every run (a
batched row should read what it reads alone).

Random weights never stop: the bench suppresses every end token, and each image's request
asks for ``--tokens`` new tokens (``DescribeRequest.max_new_tokens``; default 64 full size, 16
tiny), so every row generates exactly that many, a batch as long as its rows. A real model
stops when its description is done (the bot allows 256 by default) and a batch runs as long
as its longest row, so compare figures only at the same ``--tokens``.

The tiny model is ``tests/tinymodels.py``'s Idefics3 (a one-layer vision tower over 32-px
tiles, a two-layer Llama, 5 tiles of 4 tokens an image), which only shows the script works:
its cost is mostly opening the images. ``--full-size`` writes a stand-in for
``HuggingFaceTB/SmolVLM-500M-Instruct`` as a checkpoint the handler loads like the hub's: its
architecture with random weights, saved as float16: Idefics3, the vision tower SigLIP-base at
512 px (hidden 768, 12 layers, 12 heads, feed-forward 3072, patch 16), pixel shuffle by
``scale_factor`` 4 (64 tokens a tile), the text model a Llama (SmolLM2-360M: hidden 960, 32
layers, 15 heads, 5 key-value heads, feed-forward 2560, vocabulary 49,280, 8,192 positions),
beside an ``Idefics3Processor`` built as the tiny one is but at SmolVLM's sizes: images scaled
so their longest edge is 2,048 px (``size={"longest_edge": 2048}``; smaller images are scaled
up), cut into 512-px tiles (``max_image_size={"longest_edge": 512}``) plus the whole image at
512 px, ``image_seq_len`` 64: a 4:3 or 16:9 picture is 12 tiles and the whole, 832 image
tokens, whatever its size. Its tokenizer is the tiny one's (the test vocabulary and
Idefics3's special tokens), padded with plain added tokens (``<|fillerN|>``) to 49,280 so the
output layer costs what the real one does. Numbers taken from copies of the checkpoint's
configs, not checked against the hub here: ``rope_theta`` 100,000 and untied output layer
(``tie_word_embeddings`` false) (neither changes the cost), RMS-norm epsilon 1e-5, the vision
layer-norm epsilon 1e-6, gelu-tanh; the processor's resampling filter is the library's
default, not necessarily the checkpoint's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import logging
import random
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw, ImageFont
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LogitsProcessor,
    LogitsProcessorList,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import handlers.describe as describe_handler  # noqa: E402
from bench.stages import Stages, Timed, batch_sizes, sync  # noqa: E402
from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry  # noqa: E402
from bot.executor.config import default_limits  # noqa: E402
from handlers.base import BatchContext, LoadSpec  # noqa: E402
from handlers.describe import (  # noqa: E402
    COST_PER_IMAGE,
    DescribeRequest,
    DescribeTask,
    Opened,
    VisionModel,
)
from handlers.kinds import TaskKind  # noqa: E402
from tests import tinymodels  # noqa: E402

SMOLVLM_TEXT = dict(
    model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
    num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip
"""SmolVLM-500M-Instruct's text model (SmolLM2-360M's shape)."""
SMOLVLM_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    image_size=512, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
)  # fmt: skip
"""SmolVLM-500M-Instruct's vision tower (SigLIP base, patch 16, 512 px)."""
SMOLVLM_VOCAB = 49280
SMOLVLM_SCALE = 4
SMOLVLM_SEQ_LEN = 64
"""(512 / 16)^2 patches / 4^2: tokens a tile."""
SMOLVLM_LONGEST_EDGE = 2048
SMOLVLM_TILE = 512
SIZES = (
    (320, 240), (1920, 1080), (800, 600), (1280, 720), (640, 480), (1366, 768),
    (720, 1280), (1024, 768),
)  # fmt: skip
"""Image sizes, cycled: 320x240 to 1920x1080, and a phone's portrait screenshot."""
QUESTIONS = (
    "",
    "What does the text in this image say?",
    "What is going on here?",
    "Which colours stand out?",
    "Is there anything in this picture I should worry about, and why?",
    "Summarise this screenshot for someone who cannot see it.",
    "",
    "What is this?",
)
"""Asked in turn; empty asks for the default description."""
MODES = ("one_at_a_time", "batched", "batched_wide")


# --- the models ---------------------------------------------------------------------------


def smolvlm_stand_in(directory: Path) -> Path:
    """SmolVLM-500M-Instruct's architecture with random weights, saved as float16 with a
    processor (see the module's docstring)."""
    tokenizer = tinymodels.idefics3_tokenizer(SMOLVLM_TEXT["max_position_embeddings"])
    tokenizer.add_tokens([f"<|filler{i}|>" for i in range(SMOLVLM_VOCAB - len(tokenizer))])
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    config = Idefics3Config(
        text_config={**SMOLVLM_TEXT, "vocab_size": len(tokenizer),
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": end},
        vision_config=SMOLVLM_VISION,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=SMOLVLM_SCALE,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = end
    model.half().save_pretrained(directory)
    Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={"longest_edge": SMOLVLM_LONGEST_EDGE},
            max_image_size={"longest_edge": SMOLVLM_TILE},
        ),
        tokenizer=tokenizer,
        chat_template=tinymodels.IDEFICS3_TEMPLATE,
        image_seq_len=SMOLVLM_SEQ_LEN,
    ).save_pretrained(directory)
    return directory


def build_model(directory: Path, full_size: bool) -> Path:
    """The checkpoint every mode loads: the tiny Idefics3, or the SmolVLM-500M stand-in."""
    return smolvlm_stand_in(directory) if full_size else tinymodels.build_vision(directory)


# --- the images ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchImage:
    name: str
    kind: str
    """screenshot (PNG) or photo (JPEG)."""
    width: int
    height: int
    data: bytes
    question: str

    def request(self, tokens: int) -> DescribeRequest:
        return DescribeRequest((self.data,), self.question, max_new_tokens=tokens)


def screenshot(width: int, height: int, rng: random.Random) -> Image.Image:
    """A window: a title bar, a sidebar of entries, lines of text, buttons and avatars."""
    dark = rng.random() < 0.5
    background, ink = ((30, 31, 34), (220, 221, 222)) if dark else ((250, 250, 250), (32, 34, 37))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    scale = max(1.0, height / 720)
    size = round(14 * scale)
    font = ImageFont.load_default(size=size)
    bar = round(32 * scale)
    accent = tuple(rng.randrange(40, 220) for _ in range(3))
    draw.rectangle((0, 0, width, bar), fill=accent)
    draw.text((12, bar // 4), " ".join(rng.choices(tinymodels.WORDS, k=4)), fill="white",
              font=font)  # fmt: skip
    side = width // 5 if width > height else 0
    if side:
        draw.rectangle((0, bar, side, height), fill=tuple(max(0, c - 12) for c in background))
        for row, top in enumerate(range(bar + 10, height - size, round(size * 2.2))):
            draw.text((12, top), f"# {rng.choice(tinymodels.WORDS)}-{row}", fill=ink, font=font)
    top, left = bar + 12, side + 16
    while top < height - 3 * size:
        avatar = round(size * 2.2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((left, top, left + avatar, top + avatar), fill=colour)
        words = " ".join(rng.choices(tinymodels.WORDS, k=rng.randint(4, 14)))
        draw.text((left + avatar + 10, top), words.capitalize() + ".", fill=ink, font=font)
        if rng.random() < 0.2:
            button = (left + avatar + 10, top + size + 8, left + avatar + 10 + 7 * size,
                      top + 2 * size + 16)  # fmt: skip
            draw.rounded_rectangle(button, radius=size // 3, fill=accent)
            draw.text((button[0] + size // 2, button[1] + 4), rng.choice(("Open", "Reply", "Join")),
                      fill="white", font=font)  # fmt: skip
            top += size + 12
        top += avatar + round(size * 0.8)
    return image


def photo(width: int, height: int, np_rng: np.random.Generator) -> Image.Image:
    """Smooth colour gradients (a few random colours stretched over the frame) under grain."""
    coarse = np_rng.integers(0, 256, (np_rng.integers(2, 6), np_rng.integers(2, 6), 3))
    smooth = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    grain = np_rng.normal(0.0, 9.0, (height, width, 3))
    pixels = np.clip(np.asarray(smooth, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_images(count: int, seed: int) -> list[BenchImage]:
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        buffer = io.BytesIO()
        if index % 2 == 0 or height > width:
            kind = "screenshot"
            screenshot(width, height, rng).save(buffer, format="PNG")
        else:
            kind = "photo"
            photo(width, height, np_rng).save(buffer, format="JPEG", quality=85)
        question = QUESTIONS[index % len(QUESTIONS)]
        images.append(BenchImage(f"{kind}-{index + 1}", kind, width, height, buffer.getvalue(),
                                 question))  # fmt: skip
    return images


# --- the handler, timed -------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateCall:
    rows: int
    prompt_tokens: int
    """Every row's prompt as ``generate`` saw it: rows x the longest (left padding)."""
    real_prompt_tokens: int
    """Without the padding."""
    tiles: int
    """Images the vision tower encodes (tiles and whole images; padding tiles left out)."""
    new_tokens: int
    """Of all rows."""


class NoEnd(LogitsProcessor):
    """Suppresses every end token: a random-weight model's rows all run to the cap, as the
    module's docstring says."""

    def __init__(self, stops: frozenset[int]) -> None:
        self.stops = sorted(stops)
        self.index: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self.index is None or self.index.device != scores.device:
            self.index = torch.tensor(self.stops, device=scores.device)
        return scores.index_fill(1, self.index, float("-inf"))


class FirstToken:
    """The handler's streamer, noting when the first new token came (the end of the vision
    tower and the prompt's forward pass): its ``put`` syncs with the device already."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.inner.put(value)
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        self.inner.end()


class TimedGenerate:
    """The model's ``generate``, timed in two parts (to the first token, and the rest), no
    row ever ending before ``max_new_tokens``."""

    def __init__(self, stages: Stages, model: VisionModel) -> None:
        self.stages, self.inner, self.device = stages, model.model.generate, model.device
        self.no_end = NoEnd(model.stop_ids)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        pixels = kwargs.get("pixel_values")
        tiles = 0
        if pixels is not None:  # rows x images x 3 x H x W; the processor pads with zeros
            tiles = int((pixels.flatten(2) != 0).any(dim=-1).sum())
        streamer = FirstToken(kwargs.pop("streamer"))
        sync(self.device)
        started = time.perf_counter()
        out = self.inner(*args, streamer=streamer,
                         logits_processor=LogitsProcessorList([self.no_end]), **kwargs)  # fmt: skip
        sync(self.device)
        ended = time.perf_counter()
        first = streamer.at or ended
        self.stages.add("first_token", first - started)
        self.stages.add("later_tokens", ended - first)
        rows, length = int(ids.shape[0]), int(ids.shape[1])
        call = GenerateCall(rows, rows * length, int(mask.sum()), tiles,
                            rows * (int(out.shape[1]) - length))  # fmt: skip
        with self.stages.lock:
            self.stages.generate_calls.append(call)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedDescribe(DescribeTask):
    """The bot's describe handler, unchanged, with its stages timed and its stand-in model's
    rows running to ``max_new_tokens`` (see ``NoEnd``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stages = Stages()
        self.loaded: VisionModel | None = None

    def load(self, spec: LoadSpec) -> VisionModel:
        model = super().load(spec)
        model.processor = Timed(model.processor, self.stages, "processor")
        model.model.generate = TimedGenerate(self.stages, model)
        self.loaded = model
        return model

    def run_batch(
        self, model: VisionModel, requests: Sequence[DescribeRequest], ctx: BatchContext
    ) -> list[Any]:
        with self.stages.timing("run_batch", model.device):
            return super().run_batch(model, requests, ctx)


_open_image = describe_handler.open_image


def timed_open_image(stages: Stages) -> Any:
    """``handlers.describe.open_image``, timed (the handler calls it by its module's name)."""

    def open_image(data: bytes, max_pixels: int) -> Opened:
        with stages.timing("open_images"):
            return _open_image(data, max_pixels)

    return open_image


# --- the modes ----------------------------------------------------------------------------


@dataclass
class Outcome:
    text: str | None
    """None when the image got an error instead."""
    error: str | None
    tokens: int
    done_s: float
    """When its result came, from the moment every image was sent."""


def outcome(result: Any, started: float) -> Outcome:
    done = time.perf_counter() - started
    if isinstance(result, BaseException):
        return Outcome(None, f"{type(result).__name__}: {result}", 0, done)
    return Outcome(result.text, None, result.tokens, done)


async def one_at_a_time(executor: Executor, images: list[BenchImage], tokens: int) -> list[Outcome]:
    outcomes = []
    started = time.perf_counter()
    for index, image in enumerate(images):
        try:
            result = await executor.submit("describe", image.request(tokens), user_id=index)
        except Exception as exc:
            result = exc
        outcomes.append(outcome(result, started))
    return outcomes


async def batched(executor: Executor, images: list[BenchImage], tokens: int) -> list[Outcome]:
    started = time.perf_counter()
    handles = [executor.submit("describe", image.request(tokens), user_id=index)
               for index, image in enumerate(images)]  # fmt: skip

    async def wait(handle: Any) -> Outcome:
        try:
            result = await handle
        except Exception as exc:
            result = exc
        return outcome(result, started)

    return list(await asyncio.gather(*(wait(handle) for handle in handles)))


async def measure(
    name: str,
    executor: Executor,
    task: TimedDescribe,
    images: list[BenchImage],
    tokens: int,
    device: str,
) -> tuple[dict[str, Any], list[Outcome]]:
    """One run of one mode: its figures, and each image's outcome."""
    before = batch_sizes(executor, "describe")
    task.stages.take()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.perf_counter()
    run = one_at_a_time if name == "one_at_a_time" else batched
    outcomes = await run(executor, images, tokens)
    sync(device)
    wall = time.perf_counter() - started
    seconds, calls = task.stages.take()
    sizes = batch_sizes(executor, "describe") - before
    done = [o.done_s for o in outcomes]
    generated = sum(o.tokens for o in outcomes)
    known = seconds["open_images"] + seconds["processor"]
    known += seconds["first_token"] + seconds["later_tokens"]
    row: dict[str, Any] = {
        "wall_s": round(wall, 3),
        "s_per_image": round(wall / len(images), 4),
        "images_per_s": round(len(images) / wall, 3),
        "tokens": generated,
        "tokens_per_s": round(generated / wall, 1),
        "run_batch_calls": sum(sizes.values()),
        "jobs_per_run_batch": dict(sorted(sizes.items())),
        "generate_calls": len(calls),
        "rows_per_generate": dict(sorted(Counter(c.rows for c in calls).items())),
        "prompt_tokens": sum(c.prompt_tokens for c in calls),
        "real_prompt_tokens": sum(c.real_prompt_tokens for c in calls),
        "tiles": sum(c.tiles for c in calls),
        "generated_by_generate": sum(c.new_tokens for c in calls),
        "stages_s": {
            "open_images": round(seconds["open_images"], 3),
            "processor": round(seconds["processor"], 3),
            "first_token": round(seconds["first_token"], 3),
            "later_tokens": round(seconds["later_tokens"], 3),
            "rest_of_run_batch": round(seconds["run_batch"] - known, 3),
            "run_batch": round(seconds["run_batch"], 3),
            "outside_run_batch": round(wall - seconds["run_batch"], 3),
        },
        "done_p50_s": round(statistics.median(done), 3),
        "done_max_s": round(max(done), 3),
        "errors": [
            f"{i.name}: {o.error}" for i, o in zip(images, outcomes, strict=True) if o.error
        ],
    }
    if device.startswith("cuda"):
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row, outcomes


async def warm_up(
    executor: Executor, widest: Executor, images: list[BenchImage], tokens: int, most: int
) -> None:
    """Load the model, then describe a lone image and ``most`` at once (on the executor with
    the widest batches): first-call costs (and, on CUDA, kernel choices for one row and for
    a full batch) stay out of the figures."""
    await executor.preload("describe")
    await executor.submit("describe", images[0].request(tokens), user_id="warm-up")
    await asyncio.gather(*(widest.submit("describe", image.request(tokens), user_id=f"warm-{i}")
                           for i, image in enumerate(images[:most])))  # fmt: skip


def class_limits(max_batch: int, max_cost: int) -> dict[TaskKind, Any]:
    limits = default_limits()
    # Deadlines far off: a slow device must not turn the benchmark into refusals.
    limits[TaskKind.IMAGE] = dataclasses.replace(
        limits[TaskKind.IMAGE], max_batch=max_batch, max_cost=max_cost, queue_deadline_s=3600.0,
        exec_timeout_s=3600.0,
    )  # fmt: skip
    return limits


async def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    tokens = args.tokens or (64 if args.full_size else 16)
    task = TimedDescribe()
    if tokens > task.max_new_tokens:
        raise SystemExit(f"error: --tokens: the handler allows at most {task.max_new_tokens}")
    image_class = default_limits()[TaskKind.IMAGE]
    wide = args.max_batch > image_class.max_batch
    modes = [m for m in MODES if wide or m != "batched_wide"]
    queue = max(64, 2 * args.images)
    configs = {
        "batched": ExecutorConfig(max_queue=queue, max_per_user=2, limits=class_limits(
            image_class.max_batch, image_class.max_cost)),
        "batched_wide": ExecutorConfig(max_queue=queue, max_per_user=2, limits=class_limits(
            args.max_batch, max(image_class.max_cost, args.max_batch * COST_PER_IMAGE))),
    }  # fmt: skip
    registry = ModelRegistry(device=device)
    backend = LocalBackend(registry, torch_threads=args.threads)
    runs: dict[str, list[tuple[dict[str, Any], list[Outcome]]]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory(prefix="bench-describe-") as directory:
        started = time.perf_counter()
        source = str(build_model(Path(directory) / "describe", args.full_size))
        print(f"model written in {time.perf_counter() - started:.1f} s", file=sys.stderr,
              flush=True)  # fmt: skip
        started = time.perf_counter()
        images = make_images(args.images, args.seed)
        print(f"{len(images)} images, {sum(len(i.data) for i in images) / 2**20:.1f} MiB, made "
              f"in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        async with AsyncExitStack() as stack:
            describe_handler.open_image = timed_open_image(task.stages)  # type: ignore[assignment]
            stack.callback(setattr, describe_handler, "open_image", _open_image)
            executors = {}  # one backend (one model, one thread), each its batching limits
            for name in ("batched", "batched_wide") if wide else ("batched",):
                executor = Executor({"describe": task}, {"describe": source}, backend,
                                    configs[name])  # fmt: skip
                executors[name] = await stack.enter_async_context(executor)
            executors["one_at_a_time"] = executors["batched"]
            started = time.perf_counter()
            widest = executors["batched_wide" if wide else "batched"]
            most = max(args.max_batch, image_class.max_batch)
            await warm_up(executors["batched"], widest, images, tokens, most)
            print(f"loaded and warmed up in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            for repeat in range(args.repeats):  # a rotating order: drift weighs on all
                shift = repeat % len(modes)
                for name in modes[shift:] + modes[:shift]:
                    runs[name].append(
                        await measure(name, executors[name], task, images, tokens, device)
                    )
                    row = runs[name][-1][0]
                    print(f"{name}: {row['wall_s']:.2f} s, {row['stages_s']}", file=sys.stderr,
                          flush=True)  # fmt: skip
    figures: dict[str, dict[str, Any]] = {}
    for name, done in runs.items():
        walls = [row["wall_s"] for row, _ in done]
        median = sorted(done, key=lambda r: r[0]["wall_s"])[len(done) // 2][0]
        figures[name] = median | {"wall_s_runs": walls}
    assert task.loaded is not None
    model = task.loaded.model
    texts = [[o.text for o in outcomes] for done in runs.values() for _, outcomes in done]
    same = sum(t[0] is not None and len(set(t)) == 1 for t in zip(*texts, strict=True))
    processor = task.loaded.processor
    alone = figures["one_at_a_time"]
    result: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "full_size": args.full_size,
        "dtype": str(registry.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "model": {
            "architecture": "SmolVLM-500M-Instruct's architecture" if args.full_size
            else "tiny Idefics3",
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "vocab": model.config.text_config.vocab_size,
            "image_seq_len": processor.image_seq_len,
            "longest_edge": processor.image_processor.size["longest_edge"],
            "tile": processor.image_processor.max_image_size["longest_edge"],
            "image_processor": type(processor.image_processor).__name__,
            "tokens_per_image": tokens,
            "threads": torch.get_num_threads(),
        },
        "images": {
            "count": len(images),
            "sizes": [f"{i.width}x{i.height}" for i in images],
            "kinds": dict(Counter(i.kind for i in images)),
            "order": [i.name for i in images],
            "bytes": sum(len(i.data) for i in images),
            "megapixels": round(sum(i.width * i.height for i in images) / 1e6, 2),
            "tiles_per_image": round(alone["tiles"] / len(images), 2),
        },
        "limits": {
            "default_max_batch": image_class.max_batch,
            "default_max_cost": image_class.max_cost,
            "wide_max_batch": args.max_batch if wide else None,
            "wide_max_cost": configs["batched_wide"].limits[TaskKind.IMAGE].max_cost
            if wide else None,
            "cost_per_image": task.max_pixels,
        },
        "modes": figures,
        "speedup": round(alone["wall_s"] / figures["batched"]["wall_s"], 2),
        "speedup_wide": round(alone["wall_s"] / figures["batched_wide"]["wall_s"], 2)
        if wide else None,
        "same_text": same,
    }  # fmt: skip
    if not device.startswith("cuda"):
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def table(result: dict[str, Any]) -> str:
    images, model, limits = result["images"], result["model"], result["limits"]
    sizes = Counter(images["sizes"])
    kinds = ", ".join(f"{n} {kind}{'s' * (n != 1)}" for kind, n in images["kinds"].items())
    lines = [
        f"{images['count']} images ({kinds}; {', '.join(sizes)}), "
        f"{images['bytes'] / 2**20:.1f} MiB, {images['megapixels']} Mpx; "
        f"{model['tokens_per_image']} tokens each (compare only at the same --tokens)",
        f"{model['architecture']} ({model['parameters_m']}M parameters, vocab {model['vocab']}; "
        f"{images['tiles_per_image']:g} tiles of {model['image_seq_len']} tokens an image) on "
        f"{result['device_name']}, {result['dtype']}, {model['image_processor']}; median of "
        f"{result['args']['repeats']} runs each",
        "",
        "| mode | images | wall s | s / image | images / s | tokens | run_batch calls (jobs) "
        "| generate calls (rows) | prompt tokens (unpadded) | done p50 / max s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["modes"].items():
        jobs = ", ".join(f"{n}x{size}" for size, n in m["jobs_per_run_batch"].items())
        rows = ", ".join(f"{n}x{size}" for size, n in m["rows_per_generate"].items())
        label = name.replace("_", " ")
        if name == "batched":
            label += f" (max {limits['default_max_batch']})"
        elif name == "batched_wide":
            label = f"batched (max {limits['wide_max_batch']})"
        lines.append(
            f"| {label} | {images['count']} | {m['wall_s']:.2f} | {m['s_per_image']:.3f} | "
            f"{m['images_per_s']:.2f} | {m['tokens']} | {m['run_batch_calls']} ({jobs}) | "
            f"{m['generate_calls']} ({rows}) | {m['prompt_tokens']} ({m['real_prompt_tokens']}) "
            f"| {m['done_p50_s']:.2f} / {m['done_max_s']:.2f} |"
        )
    lines.append("")
    speedup = f"speedup (one-at-a-time wall / batched wall): {result['speedup']:.2f}x"
    if result["speedup_wide"] is not None:
        speedup += f", {result['speedup_wide']:.2f}x at max {limits['wide_max_batch']}"
    lines.append(f"{speedup}; same text every run: {result['same_text']}/{images['count']} images")
    lines.append("where the time went, s (open images / processor / first token / later tokens "
                 "/ rest of run_batch / outside run_batch):")  # fmt: skip
    for name, m in result["modes"].items():
        s = m["stages_s"]
        runs = ", ".join(f"{w:.2f}" for w in m["wall_s_runs"])
        lines.append(
            f"  {name.replace('_', ' ')}: {s['open_images']:.2f} / {s['processor']:.2f} / "
            f"{s['first_token']:.2f} / {s['later_tokens']:.2f} / {s['rest_of_run_batch']:.2f} / "
            f"{s['outside_run_batch']:.2f}   (runs: {runs} s)"
        )
        if m["errors"]:
            lines.append(f"  errors: {m['errors']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--full-size", action="store_true", help="SmolVLM-500M-Instruct's architecture"
    )
    parser.add_argument("--images", type=int, default=16, help="images, each its own request")
    parser.add_argument(
        "--tokens",
        type=int,
        help="tokens each description generates (default: 64 full size, 16 tiny)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="jobs per run_batch of the batched_wide mode (BOT_IMAGE__MAX_BATCH, with "
        "BOT_IMAGE__MAX_COST to match); at most the class default (4) leaves that mode out",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode (median)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the backend's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1 or args.max_batch < 1:
        parser.error("--images, --repeats and --max-batch must be >= 1")
    if args.tokens is not None and args.tokens < 1:
        parser.error("--tokens must be >= 1")
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
