"""Describe: a tiny real Idefics3 (SmolVLM's architecture) built offline, on images made here
with Pillow."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import handlers.describe as describe_module
from bot.cli import main
from bot.executor import (
    Executor,
    ExecutorConfig,
    JobCancelled,
    JobState,
    LocalBackend,
    ModelRegistry,
)
from bot.executor.job import JobEvent
from bot.invocations import Admission, Caller, Invoker, describe
from handlers.base import BatchStopped, InvalidInput, LoadSpec
from handlers.chat import BatchStreamer, ChatTurn
from handlers.describe import (
    DESCRIBE,
    DescribeRequest,
    DescribeResult,
    DescribeTask,
    VisionModel,
    open_image,
)
from tests.tinymodels import Verdict, build_safety_classifier, build_vision

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::UserWarning",
        "ignore::FutureWarning",
        "ignore::DeprecationWarning",
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

QUESTION = "what is the bright image about?"
"""Words of the tiny tokenizer's vocabulary and letters: it decodes back as written."""


# Images made here


def picture(
    colour: str | tuple[int, int, int], size: tuple[int, int] = (40, 30), format: str = "PNG"
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format)
    return buffer.getvalue()


def noise(format: str = "PNG", size: tuple[int, int] = (48, 32), seed: int = 0) -> bytes:
    """Random pixels: a file of some length, whose middle holds picture data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format)
    return buffer.getvalue()


def animated(
    colours: Sequence[str], format: str = "GIF", size: tuple[int, int] = (48, 32)
) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    buffer = io.BytesIO()
    extra = {"loop": 0} if format == "GIF" else {"lossless": True}
    frames[0].save(buffer, format, save_all=True, append_images=frames[1:], duration=100, **extra)
    return buffer.getvalue()


def overwritten_in_the_middle(data: bytes, value: int = 0) -> bytes:
    damaged = bytearray(data)
    middle = len(damaged) // 2
    damaged[middle : middle + 16] = bytes([value]) * 16
    return bytes(damaged)


RED = (255, 0, 0)


# What runs the task


class Context:
    """A batch context that records the streamed text of each row; ``stop`` says, from what
    was streamed so far, whether every job of the batch was given up."""

    def __init__(self, stop: Callable[[Context], bool] | None = None) -> None:
        self.stop = stop
        self.partials: list[tuple[int, str]] = []
        self.stop_asked = 0

    def should_stop(self) -> bool:
        self.stop_asked += 1
        return self.stop is not None and self.stop(self)

    def progress(self, step: int, total: int) -> None:
        pass

    def partial(self, index: int, data: Any) -> None:
        assert isinstance(data, str)
        self.partials.append((index, data))

    def abandoned(self, index: int) -> bool:
        return False

    def of(self, index: int) -> list[str]:
        return [text for row, text in self.partials if row == index]


@dataclass
class Spy:
    """What reached the processor and the model."""

    images: list[list[list[Image.Image]]] = field(default_factory=list)
    """Per processor call, per row, the images it was given (copies)."""
    prompts: list[list[list[int]]] = field(default_factory=list)
    """Per ``generate`` call, each row's input ids."""
    masks: list[torch.Tensor] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    """Per ``generate`` call, how many tokens it added to the prompts."""

    @property
    def rows(self) -> list[int]:
        return [len(prompts) for prompts in self.prompts]


class RecordingProcessor:
    """The real processor, whose calls are seen."""

    def __init__(self, real: Any, seen: Spy) -> None:
        self._real = real
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._seen.images.append([[image.copy() for image in row] for row in kwargs["images"]])
        return self._real(*args, **kwargs)


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vision(tmp_path_factory.mktemp("tiny-vision"))


@pytest.fixture(scope="module")
def model(vision_dir: Path) -> VisionModel:
    """Loaded once through the task's own loading code, as the executor loads it."""
    return DescribeTask().load(LoadSpec(str(vision_dir), "cpu", torch.float32))


@pytest.fixture
def spy(model: VisionModel, monkeypatch: pytest.MonkeyPatch) -> Spy:
    seen = Spy()
    generate = model.model.generate

    def counted_generate(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        seen.prompts.append(ids.tolist())
        seen.masks.append(kwargs["attention_mask"].clone())
        seen.pixels.append(kwargs["pixel_values"].clone())
        out = generate(*args, **kwargs)
        seen.new_tokens.append(int(out.shape[1] - ids.shape[1]))
        return out

    monkeypatch.setattr(model.model, "generate", counted_generate)
    monkeypatch.setattr(model, "processor", RecordingProcessor(model.processor, seen))
    return seen


def describe_batch(
    model: VisionModel,
    requests: Sequence[DescribeRequest],
    task: DescribeTask | None = None,
    ctx: Context | None = None,
) -> list[Any]:
    task = task or DescribeTask()
    return [task.finish(o) for o in task.run_batch(model, requests, ctx or Context())]


def one(model: VisionModel, request: DescribeRequest, task: DescribeTask | None = None) -> Any:
    (output,) = describe_batch(model, [request], task)
    return output


def assert_clear_refusal(output: Any, option: str, *words: str) -> None:
    assert isinstance(output, InvalidInput), output
    assert output.option == option, output
    message = str(output)
    assert "\n" not in message and message.strip() == message, message
    for word in words:
        assert word in message, message


def refusal(task: DescribeTask, request: DescribeRequest) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        task.validate(request)
    return refused.value


def as_said(model: VisionModel, text: str) -> str:
    """``text`` as the tiny tokenizer writes it back (lower case, its spacing)."""
    tokenizer = model.processor.tokenizer
    return tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids)


# 1. An image and a question through the real loading code and the chat template


def test_an_image_is_described_by_the_model_as_loaded(model: VisionModel, spy: Spy) -> None:
    tokenizer = model.processor.tokenizer
    assert model.device == "cpu" and model.dtype == torch.float32
    assert tokenizer.padding_side == "left"
    assert tokenizer.convert_tokens_to_ids("<end_of_utterance>") in model.stop_ids

    result = one(model, DescribeRequest((picture("red"),), QUESTION, max_new_tokens=12))

    assert isinstance(result, DescribeResult)
    assert result.text.strip() and result.images == 1 and result.first_frames == 0
    assert 1 <= result.tokens <= 12 and spy.new_tokens[0] <= 12
    assert spy.rows == [1]
    (ids,) = spy.prompts[0]
    prompt = tokenizer.decode(ids)
    tiles = spy.pixels[0].shape[1]  # the image split in 32-px tiles, plus the whole of it
    assert tiles == 5, spy.pixels[0].shape  # 40x30 at a 64-px longest edge: 2x2 tiles
    assert prompt.count("<image>") == model.processor.image_seq_len * tiles
    assert prompt.count("<fake_token_around_image>") == tiles + 1
    assert "<row_2_col_2>" in prompt and "<global-img>" in prompt
    question = as_said(model, QUESTION)
    assert question in prompt
    # The chat template's order: the member's turn holds the image, then the question,
    # and the assistant's turn is left open for the answer.
    user, image, asked = (prompt.index(s) for s in ("user", "<fake_token_around_image>", question))
    assert user < image < asked < prompt.index("<end_of_utterance>") < prompt.rindex("assistant")


def test_without_a_question_the_model_is_asked_for_a_description(
    model: VisionModel, spy: Spy
) -> None:
    result = one(model, DescribeRequest((picture("blue"),), max_new_tokens=4))

    assert isinstance(result, DescribeResult) and result.text
    prompt = model.processor.tokenizer.decode(spy.prompts[0][0])
    assert as_said(model, DESCRIBE) in prompt


def test_the_prompt_is_the_chat_template_s_own_tokens(model: VisionModel, spy: Spy) -> None:
    """The template writes every special token a prompt needs; a tokenizer adding its own
    (a second BOS where the template writes one, as Gemma 3's and Llama 3.2 Vision's do;
    here BERT's ``[CLS]`` and ``[SEP]``) gives the model a prompt it was never trained on."""
    one(model, DescribeRequest((picture("red"),), QUESTION, max_new_tokens=2))

    tokenizer = model.processor.tokenizer
    template = model.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True,
    )
    written = tokenizer.tokenize(template)
    sent = tokenizer.convert_ids_to_tokens(spy.prompts[0][0])
    assert (sent[0], sent[-1]) == (written[0], written[-1]), (
        f"BUG handlers/describe.py run_batch: the prompt is {sent[0]!r} ... {sent[-1]!r}, "
        f"the chat template wrote {written[0]!r} ... {written[-1]!r}: the processor adds the "
        "tokenizer's special tokens around the template's text (a second BOS for templates "
        "that write theirs); call the processor with add_special_tokens=False, as "
        "handlers/chat.py tokenizes its templates"
    )


# 2. Batching


def test_a_batch_generates_once_and_each_row_as_it_would_alone(
    model: VisionModel, spy: Spy
) -> None:
    requests = [
        DescribeRequest((picture("red"),), QUESTION, 24),
        DescribeRequest((picture("blue", (100, 50), "JPEG"), picture("green", (20, 20), "WEBP")),
                        "", 24),
        DescribeRequest((picture((200, 180, 20), (64, 64)),),
                        "and this one, with the river and the mountain, what is the city?", 24),
    ]  # fmt: skip
    together = describe_batch(model, requests)

    assert spy.rows == [3]
    lengths = spy.masks[0].sum(dim=1).tolist()
    assert len(set(lengths)) == 3  # prompts of three lengths, padded to the longest
    assert bool(spy.masks[0][:, -1].all())  # on the left: every row ends where it generates
    assert [r.images for r in together] == [1, 2, 1]

    alone = [one(model, request) for request in requests]
    assert spy.rows == [3, 1, 1, 1]
    for result in together:
        assert isinstance(result, DescribeResult) and result.text and result.tokens <= 24
    assert together == alone  # batching changes nothing: same text, tokens and images


# 3. Streaming and stopping


def test_each_row_streams_prefixes_of_its_text(model: VisionModel) -> None:
    requests = [
        DescribeRequest((b"not an image at all " * 20,)),  # never reaches the model
        DescribeRequest((picture("red"),), QUESTION, 24),
        DescribeRequest((picture("blue"), picture("yellow", (30, 60))), "", 24),
    ]
    ctx = Context()
    refused, first, second = describe_batch(model, requests, ctx=ctx)

    assert isinstance(refused, InvalidInput) and ctx.of(0) == []
    assert {row for row, _ in ctx.partials} == {1, 2}  # the rows of the batch, not renumbered
    for index, result in ((1, first), (2, second)):
        assert isinstance(result, DescribeResult)
        texts = ctx.of(index)
        assert len(texts) >= 3, texts  # every 8 tokens of 24, and at the end
        assert all(result.text.startswith(text) for text in texts), (texts, result.text)
        assert texts[-1] == result.text
        assert all(len(a) <= len(b) for a, b in itertools.pairwise(texts))


def test_a_stop_mid_generation_ends_the_batch(model: VisionModel, spy: Spy) -> None:
    requests = [
        DescribeRequest((picture("red"),), QUESTION, 200),
        DescribeRequest((picture("blue"),), "", 200),
    ]
    ctx = Context(stop=lambda ctx: bool(ctx.partials))  # given up once the text shows

    with pytest.raises(BatchStopped):
        describe_batch(model, requests, ctx=ctx)
    assert spy.rows == [2]
    assert spy.new_tokens[0] <= 10, spy.new_tokens  # stopped after the first 8, not at 200


# 4. Bad inputs


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"these are words, not a picture\n" * 10, ("not an image",)),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), ("not an image",)),
        (overwritten_in_the_middle(noise("PNG")), ("damaged",)),
        (noise("PNG")[: len(noise("PNG")) // 2], ("damaged",)),
        (overwritten_in_the_middle(noise("JPEG"), 0xFF), ("damaged",)),
        (noise("JPEG")[: len(noise("JPEG")) // 2], ("damaged",)),
        (noise("WEBP")[: len(noise("WEBP")) // 2], ("damaged",)),
        (animated(["red", "blue"])[:100], ("damaged",)),
    ],
    ids=["text", "png-header-only", "png-overwritten", "png-cut-off", "jpeg-overwritten",
         "jpeg-cut-off", "webp-cut-off", "gif-cut-off"],
)  # fmt: skip
def test_what_is_not_a_readable_image_is_refused_in_one_line(
    model: VisionModel, spy: Spy, data: bytes, words: tuple[str, ...]
) -> None:
    assert_clear_refusal(one(model, DescribeRequest((data,))), "image", *words)
    assert spy.images == spy.prompts == []  # nothing reached the processor or the model


def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    model: VisionModel, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    bombs = {size: picture("red", size) for size in ((100, 100), (40, 40))}
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    decoded: list[tuple[int, int]] = []
    load = Image.Image.load

    def counted_load(self: Image.Image) -> Any:
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(Image.Image, "load", counted_load)

    for size, bomb in bombs.items():  # past twice the limit (Pillow's error); past it (a warning)
        output = one(model, DescribeRequest((bomb,)))
        assert_clear_refusal(output, "image", "too large to open safely")
        assert size not in decoded
    assert spy.prompts == []
    small = one(model, DescribeRequest((picture("red", (30, 30)),), max_new_tokens=2))
    assert isinstance(small, DescribeResult)  # 900 pixels: under the limit


def test_validate_refuses_before_any_download_or_model() -> None:
    task = DescribeTask(max_images=4, max_bytes=2**20, max_chars=50, max_new_tokens=1024)
    image = picture("red")
    for fine in (
        DescribeRequest((image,) * 4, "x" * 50, 1),
        DescribeRequest((bytes(2**20),), "", 1024),
        DescribeRequest((image,)),
    ):
        task.validate(fine)

    assert_clear_refusal(refusal(task, DescribeRequest(())), "image", "attach an image")
    assert_clear_refusal(
        refusal(task, DescribeRequest((image,) * 5)), "image", "5 images", "at most 4"
    )
    assert_clear_refusal(refusal(task, DescribeRequest((image, b""))), "image", "is empty")
    assert_clear_refusal(
        refusal(task, DescribeRequest((image, bytes(2**21)))), "image", "is 2 MiB",
        "the limit is 1 MiB",
    )  # fmt: skip
    assert_clear_refusal(
        refusal(task, DescribeRequest((image,), "x" * 51)), "question",
        "is 51 characters long", "the limit is 50",
    )  # fmt: skip
    assert_clear_refusal(
        refusal(task, DescribeRequest((image,), "what is \ud800 this?")), "question", "Unicode"
    )
    for tokens in (0, -3, 1025):
        assert_clear_refusal(
            refusal(task, DescribeRequest((image,), max_new_tokens=tokens)), "max_new_tokens",
            "must be between 1 and 1024",
        )  # fmt: skip


def test_a_bad_image_does_not_spoil_the_batch_it_shares(model: VisionModel, spy: Spy) -> None:
    requests = [
        DescribeRequest((picture("red"),), QUESTION, 8),
        DescribeRequest((b"plain text " * 30,), "", 8),
        DescribeRequest((picture("green"), noise("PNG")[:300]), "", 8),  # one of two is cut off
        DescribeRequest((picture("blue", (50, 20)),), "", 8),
    ]
    red, text, half, blue = describe_batch(model, requests)

    assert isinstance(red, DescribeResult) and isinstance(blue, DescribeResult)
    assert red == one(model, requests[0]) and blue == one(model, requests[3])
    assert_clear_refusal(text, "image", "not an image")
    assert_clear_refusal(half, "image", "damaged")
    assert spy.rows == [2, 1, 1]  # the two good requests generated together


def test_every_cut_of_an_animated_gif_is_read_or_refused_as_damaged() -> None:
    """A GIF cut off in transit (a broken upload, a download's limit) anywhere: its first
    frame is read, or it is refused with the image's line."""
    data = animated(["red", "blue"])
    escaped: dict[str, int] = {}
    for end in range(1, len(data)):
        try:
            open_image(data[:end], 4096)
        except InvalidInput as exc:
            assert exc.option == "image"
        except Exception as exc:  # what escapes is the finding
            escaped.setdefault(f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:90], end)
    assert not escaped, (
        "BUG handlers/describe.py open_image: a GIF cut off in its second frame's header "
        f"raises {escaped} from Image.is_animated (Pillow's GIF plugin reads past the end), "
        "which is not caught: run_batch raises and every request of the batch fails. Also "
        "catch IndexError and struct.error as 'is damaged and cannot be read'"
    )


def test_a_decoder_bug_fails_its_image_not_the_batch(
    model: VisionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = picture("red", (41, 31))
    real = describe_module.open_image

    def flaky(data: bytes, max_pixels: int) -> Any:
        if data == broken:
            raise AttributeError("a decoder's own bug")
        return real(data, max_pixels)

    monkeypatch.setattr(describe_module, "open_image", flaky)
    requests = [DescribeRequest((broken,), "", 4), DescribeRequest((picture("blue"),), "", 4)]
    try:
        bad, good = describe_batch(model, requests)
    except AttributeError as exc:
        pytest.fail(
            f"BUG handlers/describe.py run_batch: an image decoder's own error ({exc}) fails "
            "the whole batch; catch Exception per request as 'image: is damaged and cannot "
            "be read', as handlers/transcribe.py does for its decoder"
        )
    assert_clear_refusal(bad, "image", "damaged")
    assert isinstance(good, DescribeResult) and good.text


DAMAGEABLE = {
    "png": noise("PNG"),
    "jpeg": noise("JPEG"),
    "webp": noise("WEBP"),
    "gif": animated(["red", "blue", "green"]),
}


@settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    base=st.sampled_from(sorted(DAMAGEABLE)),
    changes=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=20),
)
def test_images_with_bytes_overwritten_are_read_or_refused_in_one_line(
    base: str, changes: list[tuple[float, int]]
) -> None:
    data = bytearray(DAMAGEABLE[base])
    for where, value in changes:
        data[int(where * (len(data) - 1))] = value
    try:
        opened = open_image(bytes(data), 4096)
    except InvalidInput as exc:
        assert exc.option == "image" and "\n" not in str(exc)
    else:
        assert opened.image.mode == "RGB"
        assert opened.image.width * opened.image.height <= 4096


# 5. Animated images


@pytest.mark.parametrize("format", ["GIF", "WEBP"])
def test_an_animated_image_is_described_by_its_first_frame(
    model: VisionModel, spy: Spy, format: str
) -> None:
    moving = animated(["red", "blue", "green"], format)
    with Image.open(io.BytesIO(moving)) as check:
        assert check.n_frames == 3  # a real animation

    result = one(model, DescribeRequest((moving,), QUESTION, 4))
    assert isinstance(result, DescribeResult)
    assert (result.images, result.first_frames) == (1, 1)
    ((image,),) = spy.images[0]
    assert image.mode == "RGB" and image.size == (48, 32)
    colours = image.getcolors()
    assert colours == [(48 * 32, RED)], colours  # the first frame, every pixel of it

    mixed = one(model, DescribeRequest((picture("green"), moving), "", 4))
    assert isinstance(mixed, DescribeResult) and (mixed.images, mixed.first_frames) == (2, 1)


# 6. Large images


@pytest.mark.parametrize(
    "size",
    [(300, 100), (100, 300), (257, 263), (64, 65), (5000, 1), (1, 9000)],
    ids=["wide", "tall", "square", "just-over", "strip", "column"],
)
def test_a_large_image_is_scaled_down_to_max_pixels_keeping_its_shape(
    model: VisionModel, spy: Spy, size: tuple[int, int]
) -> None:
    task = DescribeTask(max_pixels=4096)
    result = one(model, DescribeRequest((picture("red", size),), "", 2), task)

    assert isinstance(result, DescribeResult)
    ((image,),) = spy.images[0]
    width, height = image.size
    (w0, h0) = size
    assert width <= w0 and height <= h0
    assert width * height <= 4096, (
        f"BUG handlers/describe.py open_image: {w0}x{h0} was scaled to {width}x{height}, "
        f"{width * height} pixels over max_pixels=4096: a side clamped to 1 pixel leaves the "
        "other one too long; make the long side at most max_pixels // the short side"
    )
    # Its shape within a pixel: one scale puts each side less than a pixel from its own.
    assert max((width - 1) / w0, (height - 1) / h0) <= min((width + 1) / w0, (height + 1) / h0)
    assert (width + 1) * (height + 1) > 4096  # no smaller than it had to be


def test_an_image_within_max_pixels_is_left_as_it_is(model: VisionModel, spy: Spy) -> None:
    one(model, DescribeRequest((picture("red", (64, 64)),), "", 2), DescribeTask(max_pixels=4096))
    assert spy.images[0][0][0].size == (64, 64)


# 7. Images stay out of logs


def test_describe_keeps_the_images_out_of_the_logged_options() -> None:
    request = DescribeRequest((picture("red"), b"\x89PNG-secret-picture" * 8), QUESTION, 40)

    for admitted in (True, False):
        options, private = describe(request, admitted)
        stored = json.dumps([options, private], default=str)
        assert "images" not in options and "images" not in private, (
            f"BUG bot/invocations.py describe: {sorted(options)} (admitted={admitted}) keeps "
            "DescribeRequest.images, a tuple of bytes: only a bytes value is left out, so the "
            "images reach the usage row's options (as Python bytes reprs); leave out tuples and "
            "lists of bytes as well"
        )
        assert "secret-picture" not in stored and len(stored) < 200
        assert private["question"] == QUESTION and private["history"] == ()
    assert describe(request)[0] == {"max_new_tokens": 40, "images_per_turn": (), "screen": False}


@pytest.mark.parametrize("log_prompts", [False, True], ids=["prompts-off", "prompts-logged"])
def test_a_usage_row_never_holds_the_images(log_prompts: bool) -> None:
    request = DescribeRequest((b"\x89PNG" + b"secret-picture" * 64,), QUESTION)
    invoker = Invoker(None, None, None, None, log_prompts)  # type: ignore[arg-type]
    admission = Admission(invoker, "describe", Caller("u1"), request)
    row = invoker._row(admission, "smolvlm")

    stored = json.dumps(row, default=repr)
    assert "secret-picture" not in stored and "7365637265742d" not in stored, (
        f"BUG bot/invocations.py describe: the usage row's options hold the image bytes "
        f"({row['options'][:60]}...); see test_describe_keeps_the_images_out_of_the_logged_options"
    )
    assert row["input_size"] == len(request.images[0]) + len(QUESTION)
    assert (row["prompt"] is not None) == log_prompts


# 8. Through the executor


def executor_for(vision_dir: Path, task: DescribeTask | None = None) -> Executor:
    return Executor(
        {"describe": task or DescribeTask()},
        {"describe": str(vision_dir)},
        LocalBackend(ModelRegistry("cpu"), torch_threads=1),
        ExecutorConfig(max_per_user=64),
    )


async def test_images_are_described_through_the_executor(vision_dir: Path) -> None:
    events: list[JobEvent] = []
    async with executor_for(vision_dir) as executor:
        good = executor.submit(
            "describe", DescribeRequest((picture("red"),), QUESTION, 24), user_id=1
        )
        good.watch(events.append)
        bad = executor.submit("describe", DescribeRequest((b"not a picture" * 9,)), user_id=2)
        with pytest.raises(InvalidInput) as refused:
            executor.submit("describe", DescribeRequest((picture("red"),) * 5), user_id=3)
        result = await good
        with pytest.raises(InvalidInput, match="not an image I can read"):
            await bad

    assert refused.value.option == "image"  # refused at submit, by validate
    assert isinstance(result, DescribeResult) and result.text and result.images == 1
    streamed = [e.partial for e in events if e.partial is not None]
    assert streamed and all(result.text.startswith(text) for text in streamed)
    assert events[-1].state is JobState.DONE


async def test_cancelling_a_running_description_ends_it_cancelled(
    vision_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generation waits after its first streamed text until the test cancelled the job:
    it then stops at its next token, not at its 1024th."""
    streamed, go = threading.Event(), threading.Event()
    streamers: list[BatchStreamer] = []

    class Paced(BatchStreamer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            streamers.append(self)

        def put(self, value: torch.Tensor) -> None:
            super().put(value)
            if self.steps == self.every and not streamed.is_set():
                streamed.set()
                assert go.wait(30)

    monkeypatch.setattr(describe_module, "BatchStreamer", Paced)
    async with executor_for(vision_dir) as executor:
        running = executor.submit(
            "describe", DescribeRequest((picture("red"),), QUESTION, 1024), user_id=1
        )
        assert await asyncio.to_thread(streamed.wait, 30)
        assert running.state is JobState.RUNNING
        assert running.cancel("stopped by test")
        go.set()
        with pytest.raises(JobCancelled, match="stopped by test"):
            await running
        after = executor.submit("describe", DescribeRequest((picture("blue"),), "", 4), user_id=2)
        assert isinstance(await asyncio.wait_for(after.result(), 30), DescribeResult)

    assert running.state is JobState.CANCELLED
    assert streamers[0].steps <= streamers[0].every + 2, streamers[0].steps  # it stopped


# 9. The command line


@pytest.fixture
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ask(vision_dir: Path, *args: str) -> int:
    return main(["ask", "describe", *args, "--model", str(vision_dir), "--device", "cpu"])


def test_the_cli_describes_an_image_or_says_what_is_wrong_in_one_line(
    vision_dir: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_tmp / "x.png").write_bytes(picture("red"))
    capsys.readouterr()
    assert ask(vision_dir, "x.png", "what colour is it?", "--max-tokens", "8", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] and result["images"] == 1 and 1 <= result["tokens"] <= 8
    assert result["first_frames"] == 0

    assert ask(vision_dir, "nope.png") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "error: image: 'nope.png' is not a file\n"

    (in_tmp / "notes.txt").write_text("not a picture")  # found out where it is opened
    assert ask(vision_dir, "notes.txt", "what is it?") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == "error: image: is not an image I can read"


def test_the_cli_s_usage_row_holds_the_question_but_no_image(
    vision_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_LOG_PROMPTS", "true")
    secret = b"\x89PNG" + b"secret-picture"  # read as a file, refused where it is opened
    (in_tmp / "y.png").write_bytes(picture("red"))
    (in_tmp / "z.png").write_bytes(secret)
    assert ask(vision_dir, "y.png", QUESTION, "--max-tokens", "2") == 0
    assert ask(vision_dir, "z.png") == 2

    with sqlite3.connect(in_tmp / "data" / "usage.sqlite3") as db:
        rows = db.execute(
            "SELECT status, options, prompt, input_size FROM invocations "
            "WHERE task = 'describe' ORDER BY started_at"
        ).fetchall()
    assert [status for status, *_ in rows] == ["ok", "invalid"], rows
    (_, options, prompt, size), (_, refused_options, _, refused_size) = rows
    assert json.loads(prompt)["question"] == QUESTION
    assert (size, refused_size) == (len(picture("red")) + len(QUESTION), len(secret))
    for stored in (options, refused_options):
        assert "secret-picture" not in stored and "PNG" not in stored, (
            f"BUG bot/invocations.py describe: the usage database's options hold the image "
            f"bytes: {stored[:80]}..."
        )


# 8. A turn of a conversation, with its persona, memory and earlier images

PERSONA = "You are the biology study group's tutor."


def conversation(**changes: Any) -> DescribeRequest:
    """Alice showed a red image, the bot answered, and now Bob shows a blue one."""
    request = DescribeRequest(
        (picture("red"), picture("blue")),
        "which one is brighter?",
        max_new_tokens=4,
        system=PERSONA,
        summary="they revise cell biology",
        history=(
            ChatTurn("user", "hello everyone", "carol"),
            ChatTurn("assistant", "hello carol"),
            ChatTurn("user", "look at this slide", "alice"),
            ChatTurn("assistant", "a red slide"),
        ),
        name="bob",
        images_per_turn=(0, 0, 1, 0, 1),
    )
    return dataclasses.replace(request, **changes)


def test_a_turn_reaches_the_model_with_each_image_in_the_turn_that_showed_it(
    model: VisionModel, spy: Spy
) -> None:
    result = one(model, conversation())

    assert isinstance(result, DescribeResult) and result.images == 2
    prompt = model.processor.tokenizer.decode(spy.prompts[0][0])
    said = [as_said(model, text) for text in (
        PERSONA, "they revise cell biology", "carol: hello everyone", "hello carol",
        "alice: look at this slide", "a red slide", "bob: which one is brighter?",
    )]  # fmt: skip
    places = [prompt.index(text) for text in said]
    assert places == sorted(places), prompt
    images = [i for i in range(len(prompt)) if prompt.startswith("<global-img>", i)]
    assert len(images) == 2
    # Alice's image inside her turn, before her words; Bob's inside his.
    assert places[3] < images[0] < places[4] < places[5] < images[1] < places[6]
    assert [len(row) for row in spy.images[-1]] == [2]


def test_a_conversation_is_refused_when_its_images_are_not_counted_right() -> None:
    task = DescribeTask()
    assert refusal(task, conversation(images_per_turn=(0, 0, 1, 0, 0))).option == (
        "images_per_turn"
    )
    assert refusal(task, conversation(images_per_turn=(1, 1))).option == "images_per_turn"
    assert refusal(task, conversation(system=None)).option == "system"
    task.validate(conversation())


def test_older_turns_are_left_out_to_fit_the_window_never_one_with_an_image(
    vision_dir: Path, model: VisionModel, spy: Spy
) -> None:
    whole = one(model, conversation())
    assert isinstance(whole, DescribeResult)
    length = len(spy.prompts[-1][0])
    small = DescribeTask(context_tokens=length)  # 4 new tokens over: carol's turns go
    cut_model = dataclasses.replace(model, context=length)
    result = one(cut_model, conversation(), small)
    assert isinstance(result, DescribeResult)
    prompt = model.processor.tokenizer.decode(spy.prompts[-1][0])
    assert as_said(model, "carol: hello everyone") not in prompt
    assert as_said(model, "alice: look at this slide") in prompt
    assert prompt.count("<global-img>") == 2

    tiny = dataclasses.replace(model, context=60)
    refused = one(tiny, conversation(), DescribeTask(context_tokens=60))
    assert_clear_refusal(refused, "image", "do not fit", "reset")


def test_a_classroom_safe_request_is_screened_by_the_safety_classifier(
    vision_dir: Path, tmp_path: Path, model: VisionModel
) -> None:
    flagged_dir = build_safety_classifier(tmp_path / "always", Verdict.ALWAYS)
    spec = LoadSpec(str(vision_dir), "cpu", torch.float32)
    screened = DescribeTask(safety_model=str(flagged_dir))
    loaded = screened.load(spec)
    assert loaded.safety is not None
    request = DescribeRequest((picture("red"),), QUESTION, 2, screen=True)
    assert_clear_refusal(one(loaded, request, screened), "image", "safety filter", "classroom")
    unscreened = dataclasses.replace(request, screen=False)
    assert isinstance(one(loaded, unscreened, screened), DescribeResult)
    passing = DescribeTask(safety_model=str(build_safety_classifier(tmp_path / "n", Verdict.NEVER)))
    assert isinstance(one(passing.load(spec), request, passing), DescribeResult)
    assert refusal(DescribeTask(), request).option == "image"  # no filter: never unscreened


def test_an_earlier_image_that_cannot_be_read_is_left_out_not_the_newest(
    model: VisionModel, spy: Spy
) -> None:
    broken = conversation(images=(b"not a picture", picture("blue")))
    result = one(model, broken)
    assert isinstance(result, DescribeResult) and result.images == 1
    prompt = model.processor.tokenizer.decode(spy.prompts[-1][0])
    assert prompt.count("<global-img>") == 1
    assert as_said(model, "alice: look at this slide") in prompt  # her words stay
    refused = one(model, conversation(images=(picture("red"), b"not a picture")))
    assert_clear_refusal(refused, "image", "not an image")
