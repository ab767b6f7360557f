"""The imagine handler on a tiny Stable Diffusion pipeline and tiny safety classifiers, offline."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry
from handlers.base import BatchStopped, InvalidInput, LoadSpec, UnsafeModelError
from handlers.imagine import (
    PREVIEW_SIDE,
    ImageModelChoice,
    ImagineModel,
    ImagineOutput,
    ImagineRequest,
    ImagineResult,
    ImagineTask,
    allowed_sizes,
    format_sizes,
    nearest_size,
    notice_png,
    parse_size,
)
from tests.tinymodels import (
    NATIVE_SIZE,
    Verdict,
    build_pipeline,
    build_safety_classifier,
    build_taesd,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

STEPS = 3


@dataclass
class Context:
    """A BatchContext that records progress and asks to stop once ``stop_after`` steps ran."""

    stop_after: int | None = None
    steps: list[tuple[int, int]] = field(default_factory=list)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))

    def partial(self, index: int, data: object) -> None:
        raise AssertionError("images are not streamed")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pipeline(tmp_path_factory.mktemp("sd-tiny"))


@pytest.fixture(scope="session")
def checked_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pipeline(tmp_path_factory.mktemp("sd-checked"), safety_checker=True)


@pytest.fixture(scope="session")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[Verdict, Path]:
    return {
        verdict: build_safety_classifier(tmp_path_factory.mktemp(f"safety-{verdict}"), verdict)
        for verdict in Verdict
    }


def make_task(**kwargs: Any) -> ImagineTask:
    return ImagineTask(default_steps=STEPS, **kwargs)


def load(task: ImagineTask, source: Path) -> ImagineModel:
    return task.load(LoadSpec(str(source), "cpu", torch.float32))


def generate(
    task: ImagineTask, model: ImagineModel, *requests: ImagineRequest, ctx: Context | None = None
) -> list[ImagineResult]:
    """What the executor does: validate each request, run them as one batch, finish each."""
    for request in requests:
        task.validate(request)
    outputs = task.run_batch(model, requests, ctx or Context())
    assert all(isinstance(o, ImagineOutput) for o in outputs), outputs
    return [task.finish(o) for o in outputs]


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def assert_same_image(a: bytes, b: bytes) -> None:
    """Equal up to batching numerics.

    CPU matmul kernels block differently by batch size, so a few float results differ in the
    last bits and round to the next uint8 level: at most one level, in a few pixels. A wrong
    seed or prompt would change almost every pixel.
    """
    diff = np.abs(decode(a).astype(int) - decode(b))
    assert diff.max() <= 1 and np.count_nonzero(diff) < diff.size / 100


def test_allowed_sizes_keep_the_native_pixel_count() -> None:
    assert allowed_sizes(768) == [(768, 768), (960, 640), (640, 960)]
    assert allowed_sizes(512) == [(512, 512), (640, 448), (448, 640)]
    assert allowed_sizes(1024) == [(1024, 1024), (1280, 832), (832, 1280)]
    for native in (512, 768, 1024):
        for width, height in allowed_sizes(native):
            assert width % 64 == 0 and height % 64 == 0
            assert abs(width * height / native**2 - 1) < 0.1


def test_images_decode_at_the_requested_size_and_count(tiny_dir: Path) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    assert model.native_size == NATIVE_SIZE
    wide, tall = allowed_sizes(NATIVE_SIZE)[1:]
    (default,) = generate(task, model, ImagineRequest("a red fox"))
    (landscape,) = generate(task, model, ImagineRequest("a fox", size="120x80", count=3))
    assert (landscape.width, landscape.height) == wide
    assert [decode(png).shape for png in landscape.images] == [(80, 120, 3)] * 3
    assert len({*landscape.images}) == 3, "each image of a request has its own seed"
    assert (default.width, default.height, default.steps, default.guidance, default.flagged) == (
        NATIVE_SIZE, NATIVE_SIZE, STEPS, 7.5, 0,
    )  # fmt: skip
    assert [decode(png).shape for png in default.images] == [(NATIVE_SIZE, NATIVE_SIZE, 3)]
    (portrait,) = generate(task, model, ImagineRequest("a fox", size="80x120", steps=2))
    assert (portrait.width, portrait.height) == tall and portrait.steps == 2
    assert decode(portrait.images[0]).shape == (120, 80, 3)


def test_the_seed_is_returned_and_reproduces_the_images(tiny_dir: Path) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    (first,) = generate(task, model, ImagineRequest("a boat", count=2))
    (again,) = generate(task, model, ImagineRequest("a boat", count=2, seed=first.seed))
    (other,) = generate(task, model, ImagineRequest("a boat", count=2, seed=first.seed ^ 2))
    assert again.seed == first.seed and again.images == first.images
    assert other.seed != first.seed and not {*other.images} & {*first.images}


def test_image_k_of_a_request_uses_seed_plus_k(tiny_dir: Path) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    (three,) = generate(task, model, ImagineRequest("a boat", seed=100, count=3))
    for k, png in enumerate(three.images):
        (one,) = generate(task, model, ImagineRequest("a boat", seed=100 + k))
        assert one.seed == 100 + k
        assert_same_image(png, one.images[0])


def test_a_batch_gives_the_images_of_its_requests_one_at_a_time(tiny_dir: Path) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    plain = [
        ImagineRequest("a cat on a wall", seed=11, count=2),
        ImagineRequest("mountains", seed=5),
        ImagineRequest("a lighthouse at night", seed=11, count=3),
    ]
    negative = [
        ImagineRequest("a dog", negative_prompt="blurry", seed=3),
        ImagineRequest("a dog", negative_prompt="dark", seed=3),
    ]
    for group in (plain, negative):
        batched = generate(task, model, *group)
        alone = [generate(task, model, request)[0] for request in group]
        assert [r.seed for r in batched] == [r.seed for r in alone]
        for together, single in zip(batched, alone, strict=True):
            assert len(together.images) == len(single.images)
            for a, b in zip(together.images, single.images, strict=True):
                assert_same_image(a, b)
        if group is negative:  # the negative prompt is used: changing it changes the image
            assert batched[0].images != batched[1].images


def test_progress_reaches_the_context_at_every_step(tiny_dir: Path) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    ctx = Context()
    generate(task, model, ImagineRequest("rain", steps=4), ImagineRequest("snow", steps=4), ctx=ctx)
    assert ctx.steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_stop_request_ends_the_batch_between_steps(tiny_dir: Path) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    calls: list[int] = []
    hooks = [
        model.pipe.unet.register_forward_hook(lambda *_: calls.append(1)),
        model.pipe.vae.decoder.register_forward_hook(lambda *_: calls.append(2)),
    ]
    try:
        generate(task, model, ImagineRequest("sun", steps=4))
        assert calls == [1, 1, 1, 1, 2]
        calls.clear()
        ctx = Context(stop_after=1)
        with pytest.raises(BatchStopped):
            task.run_batch(model, [ImagineRequest("sun", steps=4)], ctx)
    finally:
        for hook in hooks:
            hook.remove()
    assert ctx.steps == [(1, 4)]
    assert calls == [1], "one denoising step ran and no latents were decoded"


def test_flagged_images_are_replaced_by_a_notice(
    tiny_dir: Path, classifiers: dict[Verdict, Path]
) -> None:
    request = ImagineRequest("a forest", seed=7, count=2, size="80x120")
    safe_task = make_task(safety_model=str(classifiers[Verdict.NEVER]))
    (safe,) = generate(safe_task, load(safe_task, tiny_dir), request)
    task = make_task(safety_model=str(classifiers[Verdict.ALWAYS]))
    (flagged,) = generate(task, load(task, tiny_dir), request)

    assert safe.flagged == 0 and flagged.flagged == 2 and flagged.seed == 7
    assert safe.withheld == () and flagged.withheld == (0, 1)
    assert flagged.images == [notice_png(80, 120)] * 2
    notice = decode(flagged.images[0])
    assert notice.shape == (120, 80, 3) and len(np.unique(notice.reshape(-1, 3), axis=0)) > 1
    for png in safe.images:
        assert not np.array_equal(decode(png), notice)


def test_only_the_images_the_classifier_flags_are_withheld(
    tiny_dir: Path, classifiers: dict[Verdict, Path]
) -> None:
    requests = [ImagineRequest("a hat", seed=1, count=3), ImagineRequest("a shoe", seed=40)]
    plain_task = make_task()
    plain = generate(plain_task, load(plain_task, tiny_dir), *requests)
    pngs = [png for result in plain for png in result.images]

    # An independent judge: the transformers pipeline on the decoded PNGs.
    judge = pipeline("image-classification", model=str(classifiers[Verdict.VARIED]))
    verdicts = judge([Image.open(io.BytesIO(png)) for png in pngs], top_k=2)
    scores = [next(v["score"] for v in verdict if v["label"] == "nsfw") for verdict in verdicts]
    # Set the threshold in the widest gap between scores, so both groups are non-empty.
    ranked = sorted(scores)
    low, high = max(itertools.pairwise(ranked), key=lambda pair: pair[1] - pair[0])
    expected = [score > (low + high) / 2 for score in scores]
    assert any(expected) and not all(expected)

    task = make_task(
        safety_model=str(classifiers[Verdict.VARIED]), safety_threshold=(low + high) / 2
    )
    results = generate(task, load(task, tiny_dir), *requests)
    got = [png for result in results for png in result.images]
    assert [r.flagged for r in results] == [sum(expected[:3]), sum(expected[3:])]
    for png, original, withheld in zip(got, pngs, expected, strict=True):
        assert png == (notice_png(NATIVE_SIZE, NATIVE_SIZE) if withheld else original)


def test_the_pipelines_own_safety_checker_counts_as_flagged(checked_dir: Path) -> None:
    task = make_task()
    model = load(task, checked_dir)
    assert model.pipe.safety_checker is not None
    (result,) = generate(task, model, ImagineRequest("a bird", count=2))
    assert result.flagged == 2
    assert result.images == [notice_png(NATIVE_SIZE, NATIVE_SIZE)] * 2


@pytest.mark.parametrize(
    ("request_", "option"),
    [
        (ImagineRequest(""), "prompt"),
        (ImagineRequest("   "), "prompt"),
        (ImagineRequest("a" * 101), "prompt"),
        (ImagineRequest("a", negative_prompt="b" * 101), "negative_prompt"),
        (ImagineRequest("a", steps=0), "steps"),
        (ImagineRequest("a", steps=11), "steps"),
        (ImagineRequest("a", guidance=-0.5), "guidance"),
        (ImagineRequest("a", guidance=30.5), "guidance"),
        (ImagineRequest("a", guidance=math.nan), "guidance"),
        (ImagineRequest("a", guidance=math.inf), "guidance"),
        (ImagineRequest("a", count=0), "count"),
        (ImagineRequest("a", count=3), "count"),
        (ImagineRequest("a", seed=-1), "seed"),
        (ImagineRequest("a", seed=2**32), "seed"),
        (ImagineRequest("a", size="big"), "size"),
        (ImagineRequest("a", size="64x"), "size"),
        (ImagineRequest("a", size="60x64"), "size"),
        (ImagineRequest("a", size="32x32"), "size"),
        (ImagineRequest("a", size="4096x64"), "size"),
    ],
)
def test_bad_options_name_the_option(request_: ImagineRequest, option: str) -> None:
    task = ImagineTask(max_prompt_chars=100, max_steps=10, default_steps=5, max_count=2)
    with pytest.raises(InvalidInput) as caught:
        task.validate(request_)
    assert caught.value.option == option


def test_good_options_pass_validation() -> None:
    task = ImagineTask(max_prompt_chars=100, max_steps=10, default_steps=5, max_count=2)
    for request in (
        ImagineRequest("a" * 100, negative_prompt="b" * 100, steps=10, guidance=0, count=2),
        ImagineRequest("a", steps=1, guidance=30, seed=0, size="2048x64"),
        ImagineRequest("a", seed=2**32 - 1, size=" 960 X 640 "),
    ):
        task.validate(request)


def test_a_size_the_model_does_not_offer_is_refused_with_its_choices(tiny_dir: Path) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    task.validate(ImagineRequest("a", size="64x128"))  # the model is unknown until loaded
    outputs = task.run_batch(model, [ImagineRequest("a", size="64x128")] * 2, Context())
    assert [type(o) for o in outputs] == [InvalidInput] * 2
    assert all(o.option == "size" and "96x96, 120x80, 80x120" in o.message for o in outputs)
    with pytest.raises(ValueError, match="one batch key"):
        task.run_batch(model, [ImagineRequest("a"), ImagineRequest("a", steps=1)], Context())

    known = make_task(native_size=NATIVE_SIZE)
    assert known.size_choices() == ["96x96", "120x80", "80x120"]
    with pytest.raises(InvalidInput, match="must be one of 96x96, 120x80, 80x120"):
        known.validate(ImagineRequest("a", size="64x128"))


def test_batch_key_and_cost() -> None:
    task = make_task(native_size=NATIVE_SIZE)
    assert task.batch_key(ImagineRequest("a")) == task.batch_key(
        ImagineRequest("b", size="96x96", steps=STEPS, guidance=7.5, seed=3, count=2)
    )
    keys = {
        task.batch_key(r)
        for r in (
            ImagineRequest("a"),
            ImagineRequest("a", size="120x80"),
            ImagineRequest("a", steps=STEPS + 1),
            ImagineRequest("a", guidance=3),
            ImagineRequest("a", negative_prompt="dark"),
        )
    }
    assert len(keys) == 5
    assert task.cost(ImagineRequest("a", size="120x80", count=3)) == 3 * 120 * 80
    assert task.cost(ImagineRequest("a")) == NATIVE_SIZE**2
    assert make_task().cost(ImagineRequest("a", count=2)) == 2 * 768 * 768


def test_a_pickle_only_pipeline_is_refused(tmp_path: Path) -> None:
    unsafe = build_pipeline(tmp_path / "unsafe", safetensors=False)
    assert list(unsafe.glob("unet/*.bin")) and not list(unsafe.glob("unet/*.safetensors"))
    with pytest.raises(UnsafeModelError, match="no safetensors weights"):
        load(make_task(), unsafe)


def test_a_safety_model_without_an_unsafe_label_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    animals = build_safety_classifier(tmp_path / "animals", Verdict.NEVER, ("cat", "dog"))
    with pytest.raises(ValueError, match="no label among"):
        load(make_task(safety_model=str(animals)), tiny_dir)


async def test_the_executor_batches_requests_and_encodes_results(tiny_dir: Path) -> None:
    task = make_task()
    executor = Executor(
        {"imagine": task},
        {"imagine": str(tiny_dir)},
        LocalBackend(ModelRegistry(device="cpu")),
        ExecutorConfig(max_per_user=64),
    )
    requests = [ImagineRequest("a kite", seed=i, count=2) for i in range(3)]
    async with executor:
        handles = [executor.submit("imagine", r, user_id=i) for i, r in enumerate(requests)]
        wrong = executor.submit("imagine", ImagineRequest("a", size="64x128"), user_id=9)
        results = await asyncio.gather(*handles)
        with pytest.raises(InvalidInput, match="size"):
            await wrong
        snapshot = executor.snapshot()
    assert [r.seed for r in results] == [0, 1, 2]
    assert all(isinstance(r, ImagineResult) and len(r.images) == 2 for r in results)
    assert_same_image(results[0].images[1], results[1].images[0])  # seed 0 + 1 is seed 1
    (stats,) = snapshot.models
    assert max(stats.batch_sizes) == 3, stats.batch_sizes


def test_blocked_terms_refuse_whole_words_in_any_case() -> None:
    task = ImagineTask(blocked_terms=["gore", "red fox"])
    for prompt in ("GORE everywhere", "a Red Fox", "a red fox at dawn"):
        with pytest.raises(InvalidInput) as err:
            task.validate(ImagineRequest(prompt))
        assert err.value.option == "prompt"
    for prompt in ("a gorgeous fox", "a red  fox"):  # not a whole word; another phrase
        task.validate(ImagineRequest(prompt))


def test_another_scheduler_and_channels_last_still_draw_every_image(tiny_dir: Path) -> None:
    task = make_task(scheduler="dpm++", channels_last=True)
    model = load(task, tiny_dir)
    scheduler = model.pipe.scheduler
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "dpmsolver++"
    weight = model.pipe.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    (result,) = generate(task, model, ImagineRequest("a boat", count=2, seed=3))
    assert len({*result.images}) == 2
    baseline = make_task()
    (plain,) = generate(baseline, load(baseline, tiny_dir), ImagineRequest("a boat", seed=3))
    assert plain.images[0] != result.images[0]  # the scheduler changed the sampling


def test_a_model_whose_sampler_cannot_be_swapped_keeps_its_own(
    tmp_path: Path, tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    distilled = tmp_path / "lcm"
    shutil.copytree(tiny_dir, distilled)
    index = distilled / "model_index.json"  # where the pipeline reads its scheduler's class
    config = json.loads(index.read_text()) | {"scheduler": ["diffusers", "LCMScheduler"]}
    index.write_text(json.dumps(config))
    task = make_task(scheduler="dpm++")
    with caplog.at_level(logging.WARNING, logger="handlers.imagine"):
        model = load(task, distilled)
    assert type(model.pipe.scheduler).__name__ == "LCMScheduler"
    assert "cannot be replaced by DPMSolverMultistepScheduler" in caplog.text
    (result,) = generate(task, model, ImagineRequest("a boat", seed=3))
    assert len(result.images) == 1


def test_compiling_warms_up_every_offered_size_when_the_model_loads(
    tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = make_task(compile=True)
    task.compile_backend = "eager"  # the same tracing, without minutes of code generation
    caplog.set_level(logging.INFO, logger="handlers.imagine")
    model = load(task, tiny_dir)
    assert type(model.pipe.unet).__name__ == "OptimizedModule"
    compiled = [r.getMessage() for r in caplog.records if "compiled for" in r.getMessage()]
    assert [m.split("compiled for ")[1].split(" in ")[0] for m in compiled] == [
        f"{w}x{h}" for w, h in allowed_sizes(NATIVE_SIZE)
    ]
    (result,) = generate(task, model, ImagineRequest("a boat", count=3))
    assert len(result.images) == 3


# Starting from a picture (image to image)


def photo(color: str = "orange", size: tuple[int, int] = (150, 100)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_picture_is_redrawn_at_the_size_asked_sharing_the_pipelines_weights(
    tiny_dir: Path,
) -> None:
    task = make_task()
    model = load(task, tiny_dir)
    landscape = nearest_size(NATIVE_SIZE, 150, 100)
    assert landscape == format_sizes(NATIVE_SIZE)[1]
    ctx = Context()
    request = ImagineRequest("a fox", seed=3, image=photo(), size=landscape, strength=0.67)
    (result,) = generate(task, model, request, ctx=ctx)
    assert (result.width, result.height) == parse_size(landscape)
    assert decode(result.images[0]).shape == (result.height, result.width, 3)
    assert ctx.steps[-1] == (2, 2)  # two of the three steps: strength 0.67
    assert model.image_pipe is not None and model.image_pipe.unet is model.pipe.unet
    again = generate(task, model, request)[0]
    assert_same_image(result.images[0], again.images[0])
    other = generate(task, model, dataclasses.replace(request, image=photo("navy")))[0]
    assert np.abs(decode(other.images[0]).astype(int) - decode(result.images[0])).max() > 1


def test_pictures_batch_by_strength_and_apart_from_text_only_requests(tiny_dir: Path) -> None:
    task = make_task()
    text = ImagineRequest("a fox")
    subtle = ImagineRequest("a fox", image=photo(), strength=0.35)
    strong = ImagineRequest("a fox", image=photo(), strength=0.75)
    default = ImagineRequest("a fox", image=photo())
    keys = {task.batch_key(r) for r in (text, subtle, strong, default)}
    assert len(keys) == 4 and task.batch_key(default)[-1] == task.default_strength
    assert task.work(subtle) < task.work(strong) < task.work(text)


def test_a_bad_picture_or_strength_is_refused_in_one_line(tiny_dir: Path) -> None:
    task = make_task(max_image_bytes=2000)
    for request, option, words in (
        (ImagineRequest("a fox", strength=0.5), "strength", "starting from an image"),
        (ImagineRequest("a fox", image=b""), "image", "empty"),
        (ImagineRequest("a fox", image=b"x" * 2001), "image", "the limit is 2,000 bytes"),
        (ImagineRequest("a fox", image=b"x", strength=1.5), "strength", "at most 1"),
        (ImagineRequest("a fox", image=b"x", steps=3, strength=0.1), "strength", "single step"),
    ):
        with pytest.raises(InvalidInput) as refused:
            task.validate(request)
        assert refused.value.option == option and words in str(refused.value), refused.value
    model = load(make_task(), tiny_dir)
    good = ImagineRequest("a fox", image=photo(), strength=0.7)
    outputs = make_task().run_batch(
        model, [ImagineRequest("a fox", image=b"not a picture", strength=0.7), good], Context()
    )
    assert isinstance(outputs[0], InvalidInput) and "not an image" in str(outputs[0])
    assert isinstance(outputs[1], ImagineOutput)


def test_a_picture_the_safety_classifier_flags_is_not_drawn_from(
    tiny_dir: Path, classifiers: dict[Verdict, Path]
) -> None:
    task = make_task(safety_model=str(classifiers[Verdict.ALWAYS]))
    model = load(task, tiny_dir)
    (output,) = task.run_batch(model, [ImagineRequest("a fox", image=photo())], Context())
    assert isinstance(output, InvalidInput) and "safety filter" in str(output)


# Live previews


@dataclass
class Previews(Context):
    """A context that keeps the previews sent for each request."""

    sent: list[tuple[int, bytes]] = field(default_factory=list)

    def partial(self, index: int, data: object) -> None:
        assert isinstance(data, bytes)
        self.sent.append((index, data))


@pytest.fixture(scope="session")
def taesd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_taesd(tmp_path_factory.mktemp("taesd"))


def test_previews_are_small_jpegs_of_each_requests_first_image_while_it_forms(
    tiny_dir: Path, taesd_dir: Path
) -> None:
    task = make_task(preview_model=str(taesd_dir), preview_every_s=0)
    model = load(task, tiny_dir)
    assert model.preview is not None
    ctx = Previews()
    generate(task, model, ImagineRequest("a fox", seed=1, count=2),
             ImagineRequest("a hen", seed=2), ctx=ctx)  # fmt: skip
    assert sorted({row for row, _ in ctx.sent}) == [0, 1]
    assert len(ctx.sent) == 2 * (STEPS - 1)  # every step but the last, which is the result
    for _, jpeg in ctx.sent:
        with Image.open(io.BytesIO(jpeg)) as preview:
            assert preview.format == "JPEG" and max(preview.size) <= PREVIEW_SIDE
    throttled = Previews()
    slow = make_task(preview_model=str(taesd_dir), preview_every_s=3600)
    generate(slow, load(slow, tiny_dir), ImagineRequest("a fox"), ctx=throttled)
    assert throttled.sent == []  # never more often than Discord's edit rate


def test_no_previews_when_off_or_unscreened(
    tiny_dir: Path, checked_dir: Path, taesd_dir: Path, classifiers: dict[Verdict, Path]
) -> None:
    off = make_task()
    ctx = Previews()
    generate(off, load(off, tiny_dir), ImagineRequest("a fox"), ctx=ctx)
    assert ctx.sent == []
    own_checker = make_task(preview_model=str(taesd_dir), preview_every_s=0)
    assert load(own_checker, checked_dir).preview is None  # it judges only finished images
    missing = make_task(preview_model=str(tiny_dir / "no-such-autoencoder"))
    assert load(missing, tiny_dir).preview is None  # images still come, without previews
    flagged = make_task(
        preview_model=str(taesd_dir), preview_every_s=0,
        safety_model=str(classifiers[Verdict.ALWAYS]),
    )  # fmt: skip
    ctx = Previews()
    task_model = load(flagged, tiny_dir)
    flagged.run_batch(task_model, [ImagineRequest("a fox")], ctx)
    assert ctx.sent == []  # an unsafe glimpse is never shown


# Several models


def test_a_model_is_picked_by_name_with_its_own_steps_guidance_and_sizes() -> None:
    turbo = ImageModelChoice("turbo-dir", default_steps=1, default_guidance=0.0, native_size=64)
    task = make_task(native_size=128, models={"turbo": turbo}, default_name="sd")
    assert task.model_names() == ["sd", "turbo"]
    fast, default = ImagineRequest("a fox", model="turbo"), ImagineRequest("a fox")
    assert task.model_for(fast, "sd-dir") == "turbo-dir"
    assert task.model_for(default, "sd-dir") == task.model_for(
        ImagineRequest("a fox", model="sd"), "sd-dir"
    ) == "sd-dir"  # fmt: skip
    assert task.batch_key(fast) == (64, 64, 1, 0.0, False, None)
    assert task.batch_key(default) == (128, 128, STEPS, 7.5, False, None)
    assert task.size_choices("turbo") == format_sizes(64) != task.size_choices()
    task.validate(dataclasses.replace(fast, size="64x64"))
    with pytest.raises(InvalidInput, match="must be one of 64x64"):
        task.validate(dataclasses.replace(fast, size="128x128"))
    with pytest.raises(InvalidInput) as unknown:
        task.validate(ImagineRequest("a fox", model="flux"))
    assert str(unknown.value) == "model: 'flux' is not installed here; choose from sd, turbo"
    assert task.cost(fast) * 4 == task.cost(default)


def test_a_few_step_model_takes_enough_steps_to_vary_an_image() -> None:
    turbo = ImageModelChoice("turbo-dir", default_steps=1, default_guidance=0.0)
    task = make_task(models={"turbo": turbo}, native_size=64)
    subtle = ImagineRequest("a fox", image=photo(), strength=0.35, model="turbo")
    task.validate(subtle)
    assert task.batch_key(subtle)[2] == 3  # ceil(1 / 0.35): one step runs, not none
    with pytest.raises(InvalidInput, match="single step"):
        task.validate(dataclasses.replace(subtle, steps=1))  # asked for: refused, not changed
    capped = make_task(models={"turbo": turbo}, native_size=64, max_steps=10)
    with pytest.raises(InvalidInput, match="single step of 10"):  # never past max_steps
        capped.validate(dataclasses.replace(subtle, strength=0.05))


def test_a_name_for_two_models_or_a_bad_default_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="names the default model and another one"):
        make_task(models={"sd": ImageModelChoice("x")}, default_name="sd")
    with pytest.raises(ValueError, match=r"default_steps must be in 1\.\.max_steps"):
        make_task(models={"turbo": ImageModelChoice("x", default_steps=99)})


async def test_the_executor_loads_each_model_picked_within_the_memory_budget(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Two pipelines on disk, one budget that holds one: each request is drawn by the model
    it names, with that model's defaults, and the other model is unloaded to make room."""
    second = shutil.copytree(tiny_dir, tmp_path / "turbo")
    turbo = ImageModelChoice(str(second), default_steps=1, default_guidance=0.0, scheduler="model")
    task = make_task(models={"turbo": turbo}, default_name="sd", scheduler="dpm++")
    one_model = task.model_bytes(load(make_task(), tiny_dir))
    registry = ModelRegistry(device="cpu", budget_bytes=int(one_model * 1.5))
    executor = Executor(
        {"imagine": task}, {"imagine": str(tiny_dir)}, LocalBackend(registry),
        ExecutorConfig(max_per_user=64),
    )  # fmt: skip
    async with executor:
        fast = await executor.submit("imagine", ImagineRequest("a", model="turbo"), user_id=1)
        assert [m.model for m in executor.snapshot().loaded] == [str(second)]
        slow = await executor.submit("imagine", ImagineRequest("a"), user_id=1)
        assert [m.model for m in executor.snapshot().loaded] == [str(tiny_dir)]
    assert (fast.steps, fast.guidance, slow.steps, slow.guidance) == (1, 0.0, STEPS, 7.5)
