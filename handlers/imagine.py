"""Text to image: any diffusers text-to-image pipeline, one call for every image of a batch.

Sizes: a model draws well only near its native resolution, so each model offers three sizes
(see ``allowed_sizes``). ``validate`` runs before the model is loaded and only checks the
shape of ``size``, unless ``native_size`` is configured; ``run_batch`` knows the model and
answers a size it does not offer with an ``InvalidInput`` outcome for that request.

Safety: the pipeline's own safety checker (SD 1.x ships one) and an optional image classifier
both vote; a flagged image never leaves ``run_batch``, and ``finish`` draws a notice in its place.

Speed: another scheduler (DPM-Solver++ reaches in about 20 steps what DDIM needs 50 for;
the bot's default, where the model's own scheduler allows the swap), and, each opt-in, the
denoiser's weights in channels-last layout (faster convolutions on recent GPUs),
and ``torch.compile`` of the denoiser, compiled when the model loads for every size it offers.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import random
import re
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from huggingface_hub import try_to_load_from_cache
from PIL import Image, ImageDraw, ImageFont

from handlers.base import (
    BatchContext,
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
from handlers.errors import terms_pattern
from handlers.safety import SafetyClassifier

log = logging.getLogger(__name__)

SchedulerName = Literal["model", "dpm++", "euler-a", "unipc"]
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
"""Diffusers schedulers by the name a setting gives; "model" keeps the pipeline's own."""

MAX_SEED = 2**32 - 1
"""Seeds are 32-bit, as in most Stable Diffusion front ends, so users can share them."""

MAX_GUIDANCE = 30.0
MIN_SIDE, MAX_SIDE = 64, 2048

ASSUMED_NATIVE = 768
"""Budget for a request without ``size`` before the model is known: SD 2.1's native size."""

_SIZE = re.compile(r"\s*(\d+)\s*[x\u00d7]\s*(\d+)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ImagineRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"prompt", "negative_prompt"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    """Image ``k`` of the request uses ``seed + k``; None draws a random seed."""
    size: str | None = None
    """``WIDTHxHEIGHT``; None is the model's native square."""
    count: int = 1


@dataclass(frozen=True)
class ImagineResult:
    images: list[bytes]
    """PNG files; a withheld image is a notice of the same size."""
    seed: int
    """The seed actually used: the same request with this seed gives the same images."""
    width: int
    height: int
    steps: int
    guidance: float
    flagged: int
    """How many of ``images`` are notices because the safety filter withheld them."""


@dataclass
class ImagineModel:
    pipe: Any
    """A diffusers text-to-image pipeline."""
    native_size: int
    safety: SafetyClassifier | None


@dataclass(frozen=True)
class ImagineOutput:
    """What ``run_batch`` hands to ``finish``: pixels, or None for each withheld image."""

    pixels: list[np.ndarray | None]
    seed: int
    width: int
    height: int
    steps: int
    guidance: float


def parse_size(size: str) -> tuple[int, int]:
    """``"960x640"`` as (width, height); InvalidInput unless both sides suit a diffusion model."""
    match = _SIZE.fullmatch(size)
    if match is None:
        raise InvalidInput("size", f"{quote(size)} is not WIDTHxHEIGHT, e.g. 768x768")
    # Four digits hold every allowed side, and int() raises ValueError past 4,300 of them.
    width, height = (int(side) if len(side) <= 4 else 0 for side in match.groups())
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise InvalidInput(
                "size",
                f"sides must be multiples of 8 from {MIN_SIDE} to {MAX_SIDE}, got {quote(size)}",
            )
    return width, height


def allowed_sizes(native: int) -> list[tuple[int, int]]:
    """The native square, then a 3:2 landscape and portrait of about the same pixel count.

    Sides snap to multiples of 64 (of 8 to 56 for natives under 512, as tiny test models have),
    so 768 gives 768x768, 960x640 and 640x960; 512 gives 640x448; 1024 gives 1280x832.
    """
    grain = max(8, min(64, native // 64 * 8))
    ratio = math.sqrt(1.5)
    long = max(grain, round(native * ratio / grain) * grain)
    short = max(grain, round(native / ratio / grain) * grain)
    return [(native, native), (long, short), (short, long)]


def format_sizes(native: int) -> list[str]:
    return [f"{w}x{h}" for w, h in allowed_sizes(native)]


def size_error(native: int) -> InvalidInput:
    return InvalidInput("size", f"must be one of {', '.join(format_sizes(native))}")


def configured_native_size(source: str) -> int | None:
    """The native size a pipeline's config files give (its denoiser's ``sample_size`` times
    the VAE's scale), read from a local folder or the download cache without loading any
    weights; None when they are not on disk or do not say."""

    def read(name: str) -> Any:
        folder = Path(source).expanduser()
        if folder.is_dir():
            path = folder / name
            return json.loads(path.read_text()) if path.is_file() else None
        cached = try_to_load_from_cache(source, name)
        return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None

    try:
        denoiser = read("unet/config.json") or read("transformer/config.json")
        vae = read("vae/config.json")
    except (OSError, ValueError):  # unreadable or not JSON: the loaded model will tell
        return None
    sample = (denoiser or {}).get("sample_size")
    if isinstance(sample, list):
        sample = max(sample)
    blocks = (vae or {}).get("block_out_channels")
    if not isinstance(sample, int) or not isinstance(blocks, list) or not blocks:
        return None
    native = sample * 2 ** (len(blocks) - 1)
    return native if MIN_SIDE <= native <= MAX_SIDE else None


def native_size(pipe: Any) -> int:
    """The side a pipeline was trained at: its denoiser's latent size times the VAE's scale."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    sample = sample or getattr(pipe, "default_sample_size", None)  # FLUX keeps it on the pipeline
    if isinstance(sample, list | tuple):
        sample = max(sample)
    scale = getattr(pipe, "vae_scale_factor", None)
    if not isinstance(sample, int) or not isinstance(scale, int):
        raise ValueError(f"cannot tell {type(pipe).__name__}'s native size; set native_size")
    return sample * scale


@functools.lru_cache(maxsize=16)
def notice_png(width: int, height: int) -> bytes:
    """A grey PNG saying the image was withheld: the user sees why, never the pixels."""
    image = Image.new("RGB", (width, height), (64, 64, 64))
    font = ImageFont.load_default(size=max(8, width // 14))
    ImageDraw.Draw(image).multiline_text(
        (width / 2, height / 2),
        "Image withheld\nby the safety filter",
        fill=(235, 235, 235),
        font=font,
        anchor="mm",
        align="center",
    )
    return encode_png(np.asarray(image))


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class ImagineTask(Task[ImagineRequest, ImagineResult]):
    name = "imagine"
    kind = TaskKind.IMAGE
    pipeline = True

    def __init__(
        self,
        max_prompt_chars: int = 1000,
        max_steps: int = 50,
        default_steps: int = 25,
        default_guidance: float = 7.5,
        max_count: int = 4,
        safety_model: str | None = None,
        safety_threshold: float = 0.5,
        native_size: int | None = None,
        blocked_terms: Sequence[str] = (),
        scheduler: SchedulerName = "model",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        if max_prompt_chars < 1 or max_count < 1:
            raise ValueError("max_prompt_chars and max_count must be positive")
        if not 1 <= default_steps <= max_steps:
            raise ValueError(f"default_steps must be in 1..max_steps, got {default_steps}")
        if not 0 <= default_guidance <= MAX_GUIDANCE:
            raise ValueError(f"default_guidance must be in 0..{MAX_GUIDANCE}")
        if not 0 <= safety_threshold <= 1:
            raise ValueError(f"safety_threshold must be in 0..1, got {safety_threshold}")
        if native_size is not None and not MIN_SIDE <= native_size <= MAX_SIDE:
            raise ValueError(f"native_size must be in {MIN_SIDE}..{MAX_SIDE}, got {native_size}")
        self.max_prompt_chars = max_prompt_chars
        self.max_steps = max_steps
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.max_count = max_count
        self.safety_model = safety_model
        self.safety_threshold = safety_threshold
        self.native_size = native_size
        self.blocked = terms_pattern(blocked_terms)
        if scheduler != "model" and scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be model or one of {sorted(SCHEDULERS)}")
        self.scheduler = scheduler
        self.channels_last = channels_last
        self.compile = compile
        self.compile_backend = "inductor"
        """torch.compile's backend (tests use "eager", which compiles in moments)."""
        """Whole words or phrases an admin refuses in prompts, in any letter case."""

    def size_choices(self) -> list[str] | None:
        """The sizes to offer users, when ``native_size`` is configured (else unknown yet)."""
        return None if self.native_size is None else format_sizes(self.native_size)

    def validate(self, request: ImagineRequest) -> None:
        check_text("prompt", request.prompt, self.max_prompt_chars)
        negative = request.negative_prompt
        check_text("negative_prompt", negative, self.max_prompt_chars, required=False)
        if self.blocked is not None and self.blocked.search(request.prompt):
            raise InvalidInput("prompt", "contains a term this server's bot does not draw")
        if request.steps is not None and not 1 <= request.steps <= self.max_steps:
            raise InvalidInput("steps", f"must be from 1 to {self.max_steps}")
        guidance = request.guidance
        if guidance is not None and not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
            raise InvalidInput("guidance", f"must be from 0 to {MAX_GUIDANCE:g}")
        if not 1 <= request.count <= self.max_count:
            raise InvalidInput("count", f"must be from 1 to {self.max_count}")
        if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
            raise InvalidInput("seed", f"must be from 0 to {MAX_SEED}")
        if request.size is not None:
            size = parse_size(request.size)
            if self.native_size is not None and size not in allowed_sizes(self.native_size):
                raise size_error(self.native_size)

    def _settings(self, request: ImagineRequest, native: int | None) -> tuple[Any, ...]:
        """(width, height, steps, guidance, negative?): what one pipeline call must share.

        ``negative?`` is there because SDXL encodes "no negative prompt" as zeros but an empty
        one in a list as text, so mixing both in one call would change the images.
        """
        size = parse_size(request.size) if request.size else (native, native)
        steps = request.steps or self.default_steps
        guidance = self.default_guidance if request.guidance is None else request.guidance
        return (*size, steps, float(guidance), bool(request.negative_prompt))

    def batch_key(self, request: ImagineRequest) -> Hashable:
        return self._settings(request, self.native_size)

    def cost(self, request: ImagineRequest) -> int:
        width, height, *_ = self._settings(request, self.native_size or ASSUMED_NATIVE)
        return request.count * width * height

    def work(self, request: ImagineRequest) -> float:
        width, height, steps, *_ = self._settings(request, self.native_size or ASSUMED_NATIVE)
        return float(request.count * width * height * steps)

    def load(self, spec: LoadSpec) -> ImagineModel:
        # Imported here: diffusers takes seconds to import, and only image models need it.
        from diffusers import AutoPipelineForText2Image

        # The spec's kwargs (dtype, use_safetensors, no remote code) are diffusers 0.42's names.
        pipe = from_pretrained(AutoPipelineForText2Image, spec).to(spec.device)
        pipe.set_progress_bar_config(disable=True)
        native = self.native_size or native_size(pipe)
        self._speed_up(pipe, native, spec.source)
        safety = None
        if self.safety_model is not None:
            safety = SafetyClassifier.load(self.safety_model, spec, self.safety_threshold)
        return ImagineModel(pipe, native, safety)

    def _speed_up(self, pipe: Any, native: int, source: str) -> None:
        """The opt-in speed-ups, each said in the log: compiling takes minutes."""
        if self.scheduler != "model":
            import diffusers

            name, options = SCHEDULERS[self.scheduler]
            wanted = getattr(diffusers, name)
            if wanted in pipe.scheduler.compatibles:
                pipe.scheduler = wanted.from_config(pipe.scheduler.config, **options)
                log.info("%s: %s scheduler", source, name)
            else:  # a flow-matching or distilled (LCM, turbo) model samples only its own way
                log.warning("%s: its %s cannot be replaced by %s; keeping it",
                            source, type(pipe.scheduler).__name__, name)  # fmt: skip
        attribute = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        denoiser = getattr(pipe, attribute)
        if self.channels_last:
            denoiser.to(memory_format=torch.channels_last)
        if not self.compile:
            return
        setattr(pipe, attribute, torch.compile(denoiser, backend=self.compile_backend))
        for width, height in allowed_sizes(native):
            # Two batch sizes: after the second, the batch dimension compiles as dynamic,
            # so that no later batch waits for a compilation.
            log.info("%s: compiling the denoiser for %dx%d (a minute or two on a GPU)",
                     source, width, height)  # fmt: skip
            started = time.monotonic()
            for images in (1, 2):
                with torch.inference_mode():
                    pipe(
                        prompt=["warm-up"] * images, width=width, height=height,
                        num_inference_steps=2, output_type="latent",
                    )  # fmt: skip
            log.info("%s: compiled for %dx%d in %.0f s",
                     source, width, height, time.monotonic() - started)  # fmt: skip

    def model_bytes(self, model: ImagineModel) -> int:
        return module_bytes(model.pipe, *([model.safety.model] if model.safety else []))

    def run_batch(
        self, model: ImagineModel, requests: Sequence[ImagineRequest], ctx: BatchContext
    ) -> list[ImagineOutput | InvalidInput]:
        settings = {self._settings(r, model.native_size) for r in requests}
        if len(settings) != 1:
            raise ValueError("run_batch needs requests with one batch key")
        width, height, steps, guidance, negative = settings.pop()
        if (width, height) not in allowed_sizes(model.native_size):
            return [size_error(model.native_size) for _ in requests]

        seeds = [random.randint(0, MAX_SEED) if r.seed is None else r.seed for r in requests]
        prompts, negatives, generators = [], [], []
        for request, seed in zip(requests, seeds, strict=True):
            for k in range(request.count):
                prompts.append(request.prompt)
                negatives.append(request.negative_prompt)
                # CPU generators: the same seed gives the same image on any device.
                generators.append(torch.Generator(device="cpu").manual_seed(seed + k))

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict:
            ctx.progress(step + 1, getattr(pipe, "num_timesteps", None) or steps)
            # Raising here, rather than setting pipe._interrupt, also skips decoding latents
            # that nobody wants any more.
            raise_if_stopped(ctx)
            return tensors

        with torch.inference_mode():
            output = model.pipe(
                prompt=prompts,
                negative_prompt=negatives if negative else None,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="pt",
                callback_on_step_end=on_step,
            )
            # Quantise on the device: a quarter of the bytes to copy, no big CPU float work.
            images = (output.images * 255).round().clamp(0, 255).to(torch.uint8)
            pixels = list(images.permute(0, 2, 3, 1).cpu().numpy())
            # The pipeline's own safety checker, where it has one, has already voted.
            flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(pixels)
            if model.safety is not None:
                unsafe = model.safety.flags(pixels)
                flagged = [a or b for a, b in zip(flagged, unsafe, strict=True)]
        kept = [None if flag else image for image, flag in zip(pixels, flagged, strict=True)]

        outputs: list[ImagineOutput | InvalidInput] = []
        start = 0
        for request, seed in zip(requests, seeds, strict=True):
            mine = kept[start : start + request.count]
            start += request.count
            outputs.append(ImagineOutput(mine, seed, width, height, steps, guidance))
        return outputs

    def finish(self, output: ImagineOutput) -> ImagineResult:
        images = [
            notice_png(output.width, output.height) if p is None else encode_png(p)
            for p in output.pixels
        ]
        return ImagineResult(
            images=images,
            seed=output.seed,
            width=output.width,
            height=output.height,
            steps=output.steps,
            guidance=output.guidance,
            flagged=sum(p is None for p in output.pixels),
        )
