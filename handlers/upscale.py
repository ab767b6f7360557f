"""Upscaling: a picture made 2x or 4x larger by a diffusers super-resolution pipeline
(Stable Diffusion's x4 upscaler by default), every picture of a batch in one call.

Why this model: measured on an H200 (docs/benchmarks.md), Real-ESRGAN through spandrel
upscales about forty times faster in a third of the memory, but spandrel imports
torchvision, and PyPI's torchvision does not load beside the CPU build of torch the tests
install, so its loading code could not be tested. The x4 upscaler loads through diffusers,
which the bot already has, from safetensors. It is a diffusion model: it redraws detail
guided by a prompt (the one that drew the image, when the bot knows it), at the cost of
``steps`` denoiser passes over the picture's own pixel count: 2.1 s per 768-px image made
1536 px, batched by four on an H200.

2x: the picture is halved, then upscaled 4x, a quarter of the work of 4x; the halving loses
fine detail that the model redraws.

Memory: the model works at the picture's own size; its autoencoder decodes the large result
in tiles. Four 2x upscales of 768-px images peaked at 13.1 GiB on an H200, one alone at
6.4 GiB (a smaller card wants a lower BOT_IMAGE__MAX_BATCH).

Output: a PNG, or, when that would be larger than ``max_output_bytes``, a WebP (lossy,
quality 90, lower only as far as needed), which Discord shows inline as it does a PNG.
"""

from __future__ import annotations

import io
import logging
import math
import random
import struct
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from handlers.audio import over
from handlers.base import (
    BatchContext,
    InvalidInput,
    LoadSpec,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
    module_bytes,
    raise_if_stopped,
)
from handlers.imagine import MAX_SEED, encode_png, notice_png
from handlers.pictures import open_image
from handlers.safety import SafetyClassifier

log = logging.getLogger(__name__)

FACTORS = (2, 4)
MODEL_SCALE = 4
"""How many times larger the model makes a picture: 2x halves the picture first."""

WEBP_QUALITIES = (90, 80, 70, 60, 50, 40)
NOTICE_SIDE = 512


@dataclass(frozen=True)
class UpscaleRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"prompt"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    image: bytes
    factor: int = 2
    prompt: str = ""
    """What the picture shows (the prompt that drew it): guides the detail redrawn."""
    seed: int | None = None


@dataclass(frozen=True)
class UpscaleResult:
    image: bytes
    format: Literal["png", "webp"]
    width: int
    height: int
    factor: int
    seed: int
    withheld: bool
    """The image is a notice: the safety filter withheld the upscaled picture."""


@dataclass
class UpscaleModel:
    pipe: Any
    """A diffusers super-resolution pipeline (``StableDiffusionUpscalePipeline``)."""
    safety: SafetyClassifier | None


@dataclass(frozen=True)
class UpscaleOutput:
    pixels: np.ndarray | None
    """None when the safety filter withheld the picture."""
    factor: int
    seed: int


ROTATED = {5, 6, 7, 8}
"""EXIF orientations that turn a picture a quarter: ``open_image`` swaps its sides."""


def picture_size(data: bytes) -> tuple[int, int]:
    """A picture's width and height as it will be opened (a phone photo the right way up),
    from its header alone: cheap, nothing is decoded."""
    too_large = InvalidInput(
        "image", "is too large to open safely (more pixels than the bot's image limit)"
    )
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
                raise too_large
            raw = image.info.get("exif")  # in the header (JPEG, WebP): no pixels decoded
            exif = Image.Exif()
            if isinstance(raw, bytes):
                exif.load(raw)
            turned = exif.get(0x0112) in ROTATED  # the Orientation tag
    except Image.DecompressionBombError as exc:
        raise too_large from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput("image", "is not an image I can read") from exc
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise InvalidInput("image", "is damaged and cannot be read") from exc
    return (height, width) if turned else (width, height)


def encode_under(pixels: np.ndarray, max_bytes: int) -> tuple[bytes, Literal["png", "webp"]]:
    """A PNG when it fits in ``max_bytes``, else the best-quality WebP that does."""
    png = encode_png(pixels)
    if len(png) <= max_bytes:
        return png, "png"
    image = Image.fromarray(pixels)
    webp = b""
    for quality in WEBP_QUALITIES:
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", quality=quality, method=4)
        webp = buffer.getvalue()
        if len(webp) <= max_bytes:
            break
    return webp, "webp"  # past the lowest quality the upload itself says it is too large


class UpscaleTask(Task[UpscaleRequest, UpscaleResult]):
    name = "upscale"
    kind = TaskKind.IMAGE
    pipeline = True

    def __init__(
        self,
        steps: int = 20,
        guidance: float = 9.0,
        noise_level: int = 20,
        max_side: int = 2048,
        max_image_bytes: int = 10 * 1024 * 1024,
        max_output_bytes: int = 10 * 1024 * 1024,
        max_prompt_chars: int = 1000,
        safety_model: str | None = None,
        safety_threshold: float = 0.5,
    ) -> None:
        if steps < 1 or max_side < MODEL_SCALE or max_image_bytes < 1 or max_output_bytes < 1:
            raise ValueError("steps, max_side and the byte limits must be positive")
        if not 0 <= noise_level <= 350:  # the x4 upscaler's max_noise_level
            raise ValueError(f"noise_level must be in 0..350, got {noise_level}")
        self.steps = steps
        self.guidance = guidance
        self.noise_level = noise_level
        """Noise added to the picture before it is redrawn: more lets the model invent more."""
        self.max_side = max_side
        """The longest side of an upscaled picture: it bounds the model's memory and time."""
        self.max_image_bytes = max_image_bytes
        self.max_output_bytes = max_output_bytes
        self.max_prompt_chars = max_prompt_chars
        self.safety_model = safety_model
        self.safety_threshold = safety_threshold

    def validate(self, request: UpscaleRequest) -> None:
        if request.factor not in FACTORS:
            raise InvalidInput("factor", f"must be {' or '.join(map(str, FACTORS))}")
        check_text("prompt", request.prompt, self.max_prompt_chars, required=False)
        if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
            raise InvalidInput("seed", f"must be from 0 to {MAX_SEED}")
        if not request.image:
            raise InvalidInput("image", "is empty")
        if len(request.image) > self.max_image_bytes:
            raise InvalidInput("image", over(len(request.image), self.max_image_bytes))
        width, height = picture_size(request.image)
        longest = max(width, height) * request.factor
        if longest > self.max_side:
            smaller = [f for f in FACTORS if max(width, height) * f <= self.max_side]
            hint = f"; {smaller[-1]}x fits" if smaller else ""
            raise InvalidInput(
                "factor",
                f"{request.factor}x would make a {width * request.factor}x"
                f"{height * request.factor} image, over the {self.max_side} pixels a side "
                f"this bot makes{hint}",
            )

    def _input_size(self, request: UpscaleRequest) -> tuple[int, int]:
        """The size the model works at: the picture's own for 4x, half of it for 2x."""
        width, height = picture_size(request.image)
        shrink = MODEL_SCALE // request.factor
        return max(1, width // shrink), max(1, height // shrink)

    def batch_key(self, request: UpscaleRequest) -> Hashable:
        return (*self._input_size(request), request.factor)

    def cost(self, request: UpscaleRequest) -> int:
        """A quarter of the output's pixels (the model's input pixels times 4): a 2x of a
        768-px image weighs what one 768-px image drawn does, so the image class's budget
        batches four, as measured (13.1 GiB at peak on an H200, bench/imagine.py)."""
        width, height = self._input_size(request)
        return width * height * MODEL_SCALE

    def work(self, request: UpscaleRequest) -> float:
        """The denoiser runs ``steps`` times over the model's input pixels."""
        width, height = self._input_size(request)
        return float(width * height * self.steps)

    def load(self, spec: LoadSpec) -> UpscaleModel:
        from diffusers import StableDiffusionUpscalePipeline

        pipe = from_pretrained(StableDiffusionUpscalePipeline, spec).to(spec.device)
        pipe.set_progress_bar_config(disable=True)
        pipe.vae.enable_tiling()  # a 2048-pixel decode in tiles, not one 10 GB activation
        safety = None
        if self.safety_model is not None:
            safety = SafetyClassifier.load(self.safety_model, spec, self.safety_threshold)
        return UpscaleModel(pipe, safety)

    def model_bytes(self, model: UpscaleModel) -> int:
        return module_bytes(model.pipe, *([model.safety.model] if model.safety else []))

    def run_batch(
        self, model: UpscaleModel, requests: Sequence[UpscaleRequest], ctx: BatchContext
    ) -> list[UpscaleOutput | InvalidInput]:
        if len({self.batch_key(r) for r in requests}) != 1:
            raise ValueError("run_batch needs requests with one batch key")
        outputs: list[UpscaleOutput | InvalidInput | None] = [None] * len(requests)
        pictures: dict[int, Image.Image] = {}
        for row, request in enumerate(requests):
            try:
                pictures[row] = self._picture(request)
            except InvalidInput as exc:
                outputs[row] = exc
        rows = list(pictures)
        if not rows:
            return outputs  # type: ignore[return-value]
        seeds = {
            row: random.randint(0, MAX_SEED) if requests[row].seed is None else requests[row].seed
            for row in rows
        }

        def on_step(step: int, timestep: Any, latents: torch.Tensor) -> None:
            ctx.progress(step + 1, self.steps)
            raise_if_stopped(ctx)

        with torch.inference_mode():
            output = model.pipe(
                prompt=[requests[row].prompt for row in rows],
                image=[pictures[row] for row in rows],
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                noise_level=self.noise_level,
                generator=[torch.Generator(device="cpu").manual_seed(seeds[r]) for r in rows],
                output_type="pt",
                callback=on_step,
            )
            images = (output.images * 255).round().clamp(0, 255).to(torch.uint8)
            pixels = list(images.permute(0, 2, 3, 1).cpu().numpy())
            flagged = [False] * len(pixels)
            if model.safety is not None:
                flagged = model.safety.flags(pixels)
        for row, image, flag in zip(rows, pixels, flagged, strict=True):
            request = requests[row]
            outputs[row] = UpscaleOutput(None if flag else image, request.factor, seeds[row])
        return outputs  # type: ignore[return-value]

    def _picture(self, request: UpscaleRequest) -> Image.Image:
        """The picture opened safely and brought to the size the model works at."""
        size = self._input_size(request)
        try:
            opened = open_image(request.image, max(math.prod(size) * 4, self.max_side**2))
        except InvalidInput:
            raise
        except Exception as exc:  # a decoder's own bug: this request fails, not its batch
            log.warning("could not open a picture to upscale: %r", exc)
            raise InvalidInput("image", "is damaged and cannot be read") from exc
        image = opened.image
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

    def finish(self, output: UpscaleOutput) -> UpscaleResult:
        if output.pixels is None:  # a notice in its place: the member sees why
            side = NOTICE_SIDE
            notice = notice_png(side, side)
            return UpscaleResult(notice, "png", side, side, output.factor, output.seed, True)
        height, width = output.pixels.shape[:2]
        data, kind = encode_under(output.pixels, self.max_output_bytes)
        return UpscaleResult(data, kind, width, height, output.factor, output.seed, False)
