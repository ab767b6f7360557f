"""The upscale handler on a tiny SD x4 upscaler built offline, and its tiny safety classifiers."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry
from bot.executor.config import default_limits
from handlers.base import BatchStopped, InvalidInput, LoadSpec, TaskKind
from handlers.upscale import (
    NOTICE_SIDE,
    UpscaleModel,
    UpscaleOutput,
    UpscaleRequest,
    UpscaleResult,
    UpscaleTask,
    encode_under,
)
from tests.test_imagine import Context
from tests.tinymodels import Verdict, build_safety_classifier, build_upscaler

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

STEPS = 2


@pytest.fixture(scope="session")
def upscaler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_upscaler(tmp_path_factory.mktemp("upscaler"))


def make_task(**kwargs: Any) -> UpscaleTask:
    return UpscaleTask(steps=STEPS, **kwargs)


def load(task: UpscaleTask, source: Path) -> UpscaleModel:
    return task.load(LoadSpec(str(source), "cpu", torch.float32))


def picture(size: tuple[int, int] = (48, 32), seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def upscale(
    task: UpscaleTask, model: UpscaleModel, *requests: UpscaleRequest, ctx: Context | None = None
) -> list[UpscaleResult]:
    """What the executor does: validate each request, run them as one batch, finish each."""
    for request in requests:
        task.validate(request)
    outputs = task.run_batch(model, requests, ctx or Context())
    assert all(isinstance(o, UpscaleOutput) for o in outputs), outputs
    return [task.finish(o) for o in outputs]


def opened(result: UpscaleResult) -> np.ndarray:
    image = Image.open(io.BytesIO(result.image))
    assert image.format == result.format.upper() and image.mode == "RGB"
    assert image.size == (result.width, result.height)
    return np.asarray(image)


def test_two_and_four_times_larger_as_png(upscaler_dir: Path) -> None:
    task = make_task()
    model = load(task, upscaler_dir)
    (twice,) = upscale(task, model, UpscaleRequest(picture(), 2, "a fox"))
    (four,) = upscale(task, model, UpscaleRequest(picture(), 4))
    assert (twice.width, twice.height, twice.factor, twice.format) == (96, 64, 2, "png")
    assert (four.width, four.height, four.factor) == (192, 128, 4)
    assert opened(twice).shape == (64, 96, 3) and opened(four).shape == (128, 192, 3)
    assert not twice.withheld and not four.withheld


def test_a_batch_upscales_as_one_at_a_time_and_the_seed_reproduces(upscaler_dir: Path) -> None:
    task = make_task()
    model = load(task, upscaler_dir)
    requests = [UpscaleRequest(picture(seed=k), 2, "a kite", seed=k) for k in range(3)]
    together = upscale(task, model, *requests)
    alone = [upscale(task, model, request)[0] for request in requests]
    for a, b in zip(together, alone, strict=True):
        diff = np.abs(opened(a).astype(int) - opened(b))
        assert diff.max() <= 1 and np.count_nonzero(diff) < diff.size / 100
    assert [r.seed for r in together] == [0, 1, 2]
    assert not np.array_equal(opened(together[0]), opened(together[1]))


def test_progress_at_every_step_and_a_stop_between_steps(upscaler_dir: Path) -> None:
    task = make_task()
    model = load(task, upscaler_dir)
    ctx = Context()
    upscale(task, model, UpscaleRequest(picture()), ctx=ctx)
    assert ctx.steps == [(1, STEPS), (2, STEPS)]
    with pytest.raises(BatchStopped):
        task.run_batch(model, [UpscaleRequest(picture())], Context(stop_after=1))


@pytest.mark.parametrize(
    ("request_", "option", "says"),
    [
        (UpscaleRequest(picture(), 3), "factor", "2 or 4"),
        (UpscaleRequest(picture((600, 400)), 4), "factor", "2400x1600 image, over the 2048"),
        (UpscaleRequest(b""), "image", "empty"),
        (UpscaleRequest(b"%PDF-1.4 not a picture"), "image", "not an image"),
        (UpscaleRequest(picture(), seed=-1), "seed", "from 0"),
        (UpscaleRequest(picture(), prompt="x" * 1001), "prompt", "1000"),
    ],
)
def test_bad_requests_name_the_option(request_: UpscaleRequest, option: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        make_task().validate(request_)
    assert caught.value.option == option and says in str(caught.value)


def test_a_factor_that_does_not_fit_names_the_one_that_does() -> None:
    task = make_task(max_side=256)
    with pytest.raises(InvalidInput, match="over the 256 pixels a side this bot makes; 2x fits"):
        task.validate(UpscaleRequest(picture((100, 80)), 4))
    with pytest.raises(InvalidInput, match=r"pixels a side this bot makes$"):
        task.validate(UpscaleRequest(picture((200, 80)), 2))


def test_a_file_larger_than_the_limit_is_refused_before_it_is_opened() -> None:
    data = picture()
    with pytest.raises(InvalidInput, match="image: is 4 KiB; the limit is 100 bytes"):
        make_task(max_image_bytes=100).validate(UpscaleRequest(data))
    make_task(max_image_bytes=len(data)).validate(UpscaleRequest(data))


def test_a_damaged_picture_fails_its_own_request_not_the_batch(upscaler_dir: Path) -> None:
    task = make_task()
    model = load(task, upscaler_dir)
    whole = picture(fmt="PNG")
    cut = whole[: len(whole) // 2]  # the header is whole, so validate lets it through
    task.validate(UpscaleRequest(cut))
    broken, good = task.run_batch(model, [UpscaleRequest(cut), UpscaleRequest(whole)], Context())
    assert isinstance(broken, InvalidInput) and "damaged" in str(broken)
    assert isinstance(good, UpscaleOutput) and good.pixels is not None


def test_an_upscale_the_safety_classifier_flags_is_withheld(
    upscaler_dir: Path, tmp_path: Path
) -> None:
    classifier = build_safety_classifier(tmp_path / "always", Verdict.ALWAYS)
    task = make_task(safety_model=str(classifier))
    (result,) = upscale(task, load(task, upscaler_dir), UpscaleRequest(picture(), 2))
    assert result.withheld and result.format == "png"
    assert Image.open(io.BytesIO(result.image)).size == (NOTICE_SIDE, NOTICE_SIDE)


def test_a_result_too_large_as_png_is_sent_as_the_best_webp_that_fits() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    png, kind = encode_under(noise, 10**6)
    assert kind == "png" and Image.open(io.BytesIO(png)).format == "PNG"
    limit = len(png) // 2
    webp, kind = encode_under(noise, limit)
    assert kind == "webp" and len(webp) <= limit
    image = Image.open(io.BytesIO(webp))
    assert image.format == "WEBP" and image.size == (256, 256)


async def test_the_executor_batches_pictures_of_one_size_and_keeps_others_apart(
    upscaler_dir: Path,
) -> None:
    executor = Executor(
        {"upscale": make_task()},
        {"upscale": str(upscaler_dir)},
        LocalBackend(ModelRegistry(device="cpu")),
        ExecutorConfig(max_per_user=64),
    )
    requests = [UpscaleRequest(picture(seed=k), 2, seed=k) for k in range(3)]
    async with executor:
        handles = [executor.submit("upscale", r, user_id=i) for i, r in enumerate(requests)]
        other = executor.submit("upscale", UpscaleRequest(picture((32, 32)), 4), user_id=8)
        results = await asyncio.gather(*handles, other)
        snapshot = executor.snapshot()
    assert [(r.width, r.height) for r in results] == [(96, 64)] * 3 + [(128, 128)]
    (stats,) = snapshot.models
    assert sorted(stats.batch_sizes) == [1, 3], stats.batch_sizes


def test_a_phone_photo_is_upscaled_the_right_way_up(upscaler_dir: Path) -> None:
    """A 48x32 photo whose EXIF says "turned a quarter" opens as 32x48, and stays so."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to view
    Image.new("RGB", (48, 32), "teal").save(buffer, format="JPEG", exif=exif)
    task = make_task()
    (result,) = upscale(task, load(task, upscaler_dir), UpscaleRequest(buffer.getvalue(), 2))
    assert (result.width, result.height) == (64, 96)


def test_a_picture_claiming_too_many_pixels_is_refused_before_it_is_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InvalidInput, match="too large to open safely"):
        make_task().validate(UpscaleRequest(picture((48, 32))))


def test_four_2x_upscales_of_768_pixel_images_batch_within_the_default_budget() -> None:
    """As bench/imagine.py measured them; a 4x of the same image runs alone."""
    image = default_limits()[TaskKind.IMAGE]
    task = UpscaleTask()
    twice = UpscaleRequest(picture((768, 768)), 2)
    assert 4 * task.cost(twice) <= image.max_cost and image.max_batch == 4
    assert task.cost(UpscaleRequest(picture((768, 768)), 4)) * 2 > image.max_cost
