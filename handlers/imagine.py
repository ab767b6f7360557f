"""Text to image: any diffusers text-to-image pipeline, one call for every image of a batch.

Sizes: a model draws well only near its native resolution, so each model offers three sizes
(see ``allowed_sizes``). ``validate`` runs before the model is loaded and only checks the
shape of ``size``, unless ``native_size`` is configured; ``run_batch`` knows the model and
answers a size it does not offer with an ``InvalidInput`` outcome for that request.

Safety: the pipeline's own safety checker (SD 1.x ships one) and an optional image classifier
both vote; a flagged image never leaves ``run_batch``, and ``finish`` draws a notice in its place.

From a picture: a request with ``image`` runs the image-to-image pipeline made from the loaded
one (``from_pipe``, the same weights), the picture opened in the worker, screened by the
classifier and cropped to the size's shape; requests batch by strength.

Previews: with a tiny autoencoder (TAESD) loaded beside the pipeline, each request's first
image is decoded into a small JPEG every ``preview_every_s`` while it forms and sent as the
job's partial output, screened by the classifier; a pipeline whose own checker would judge
only the finished images gets none without a classifier.

Models: beside the default, a task may offer other pipelines by name (``models``), e.g. a
few-step distilled one, each with its own default steps, guidance and sampler; a request
names one in ``model``, and the executor loads it as it loads any model (its memory budget
decides what stays loaded).

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
from PIL import Image, ImageDraw, ImageFont, ImageOps

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
    quote,
    raise_if_stopped,
)
from handlers.errors import terms_pattern
from handlers.pictures import open_image
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

PREVIEW_SIDE = 256
"""Previews are at most this many pixels a side: a glimpse, quick to send."""

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
    image: bytes | None = None
    """A picture to start from (image to image): it is cropped to the size's shape, and
    the prompt redraws it, as far as ``strength`` says."""
    strength: float | None = None
    """How far to move from ``image``: near 0 keeps it, 1 all but ignores it; None is the
    configured default."""
    model: str | None = None
    """The name of the image model to draw with; None is the task's default."""


@dataclass(frozen=True)
class ImageModelChoice:
    """An image model offered beside the default, with its own defaults."""

    source: str
    """A hub repository id or a local directory."""
    default_steps: int | None = None
    """None: the task's default steps."""
    default_guidance: float | None = None
    """None: the task's default guidance (distilled models want 0)."""
    scheduler: SchedulerName | None = None
    """None: the task's sampler (a distilled model samples only its own way: "model")."""
    native_size: int | None = None
    """Known from its config files before it loads; None: learnt when it loads."""


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
    withheld: tuple[int, ...] = ()
    """Which of ``images`` are those notices."""
    model: str | None = None
    """The model picked by name; None: the default."""


@dataclass
class ImagineModel:
    pipe: Any
    """A diffusers text-to-image pipeline."""
    native_size: int
    safety: SafetyClassifier | None
    image_pipe: Any = None
    """The same weights as an image-to-image pipeline (``from_pipe``: no second copy),
    made when a request first starts from a picture."""
    preview: Any = None
    """A tiny autoencoder (TAESD) that decodes glimpses of the images being made."""

    def from_picture(self) -> Any:
        if self.image_pipe is None:
            from diffusers import AutoPipelineForImage2Image

            self.image_pipe = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self.image_pipe.set_progress_bar_config(disable=True)
        return self.image_pipe


@dataclass(frozen=True)
class ImagineOutput:
    """What ``run_batch`` hands to ``finish``: pixels, or None for each withheld image."""

    pixels: list[np.ndarray | None]
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    model: str | None = None


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


def nearest_size(native: int, width: int, height: int) -> str:
    """The offered size whose shape is closest to a ``width`` x ``height`` picture's."""
    shape = math.log(width / height)
    w, h = min(allowed_sizes(native), key=lambda size: abs(math.log(size[0] / size[1]) - shape))
    return f"{w}x{h}"


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


def encode_jpeg(pixels: np.ndarray, side: int) -> bytes:
    """A small JPEG of ``pixels``, at most ``side`` pixels a side: a preview to glance at."""
    image = Image.fromarray(pixels)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


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
        default_strength: float = 0.6,
        max_image_bytes: int = 10 * 1024 * 1024,
        preview_model: str | None = None,
        preview_every_s: float = 2.0,
        models: dict[str, ImageModelChoice] | None = None,
        default_name: str = "default",
    ) -> None:
        if not 0 < default_strength <= 1:
            raise ValueError(f"default_strength must be in (0, 1], got {default_strength}")
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
        """Whole words or phrases an admin refuses in prompts, in any letter case."""
        self.default_strength = default_strength
        self.max_image_bytes = max_image_bytes
        """The largest picture to start from, as downloaded."""
        self.preview_model = preview_model
        """The tiny autoencoder of the model's latent space that draws previews; None: none."""
        self.preview_every_s = preview_every_s
        """Least time between two previews of a batch (Discord's edit rate)."""
        if scheduler != "model" and scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be model or one of {sorted(SCHEDULERS)}")
        self.scheduler = scheduler
        self.models = dict(models or {})
        """The models offered beside the default, by the name members pick."""
        self.default_name = default_name
        """What members see the default model called."""
        if default_name in self.models:
            raise ValueError(f"{default_name!r} names the default model and another one")
        for name, choice in self.models.items():
            steps = choice.default_steps
            if steps is not None and not 1 <= steps <= max_steps:
                raise ValueError(f"{name}: default_steps must be in 1..max_steps, got {steps}")
            if choice.scheduler not in (None, "model", *SCHEDULERS):
                raise ValueError(f"{name}: scheduler must be model or one of {sorted(SCHEDULERS)}")
        self.channels_last = channels_last
        self.compile = compile
        self.compile_backend = "inductor"
        """torch.compile's backend (tests use "eager", which compiles in moments)."""

    def model_names(self) -> list[str]:
        """Every model a member may pick, the default first."""
        return [self.default_name, *self.models]

    def _choice(self, model: str | None) -> ImageModelChoice | None:
        """The chosen model's entry; None for the default (and for a name no longer
        installed, which ``validate`` refuses)."""
        return None if model is None else self.models.get(model)

    def native_for(self, model: str | None) -> int | None:
        """A model's native size, when its config files told it before it loaded; None for
        a name not installed."""
        if model is not None and model not in self.model_names():
            return None
        choice = self._choice(model)
        return self.native_size if choice is None else choice.native_size

    def size_choices(self, model: str | None = None) -> list[str] | None:
        """The sizes to offer users for a model, when its native size is known (else None)."""
        native = self.native_for(model)
        return None if native is None else format_sizes(native)

    def model_for(self, request: ImagineRequest, default: str) -> str:
        choice = self._choice(request.model)
        return default if choice is None else choice.source

    def validate(self, request: ImagineRequest) -> None:
        if request.model is not None and request.model not in self.model_names():
            raise InvalidInput(
                "model",
                f"{quote(request.model)} is not installed here; choose from "
                f"{', '.join(self.model_names())}",
            )
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
            native = self.native_for(request.model)
            if native is not None and size not in allowed_sizes(native):
                raise size_error(native)
        self._check_picture(request)

    def _check_picture(self, request: ImagineRequest) -> None:
        strength = request.strength
        if request.image is None:
            if strength is not None:
                raise InvalidInput("strength", "applies only when starting from an image")
            return
        if not request.image:
            raise InvalidInput("image", "is empty")
        if len(request.image) > self.max_image_bytes:
            raise InvalidInput("image", over(len(request.image), self.max_image_bytes))
        if strength is not None and not (math.isfinite(strength) and 0 < strength <= 1):
            raise InvalidInput("strength", "must be more than 0 and at most 1")
        # Without steps asked for, enough are taken for one to run, up to max_steps.
        steps = self._settings(request, ASSUMED_NATIVE)[2]
        if int(steps * self._strength(request)) < 1:
            raise InvalidInput(
                "strength",
                f"is too small to take a single step of {steps}: raise the strength or the steps",
            )

    def _settings(self, request: ImagineRequest, native: int | None) -> tuple[Any, ...]:
        """(width, height, steps, guidance, negative?, strength): what one pipeline call must
        share; strength is None for a request that starts from no picture.

        ``negative?`` is there because SDXL encodes "no negative prompt" as zeros but an empty
        one in a list as text, so mixing both in one call would change the images.
        """
        size = parse_size(request.size) if request.size else (native, native)
        choice = self._choice(request.model)
        steps = request.steps or (choice and choice.default_steps) or self.default_steps
        guidance = request.guidance
        if guidance is None and choice is not None:
            guidance = choice.default_guidance
        guidance = self.default_guidance if guidance is None else guidance
        strength = None
        if request.image is not None:
            strength = self._strength(request)
            if request.steps is None:  # a few-step model's default may be too few to vary
                steps = min(self.max_steps, max(steps, math.ceil(1 / strength)))
        return (*size, steps, float(guidance), bool(request.negative_prompt), strength)

    def _strength(self, request: ImagineRequest) -> float:
        return self.default_strength if request.strength is None else request.strength

    def batch_key(self, request: ImagineRequest) -> Hashable:
        return self._settings(request, self.native_for(request.model))

    def cost(self, request: ImagineRequest) -> int:
        native = self.native_for(request.model) or ASSUMED_NATIVE
        width, height, *_ = self._settings(request, native)
        return request.count * width * height

    def work(self, request: ImagineRequest) -> float:
        """Pixels times the steps taken: from a picture, only ``strength`` of them run."""
        native = self.native_for(request.model) or ASSUMED_NATIVE
        width, height, steps, *_, strength = self._settings(request, native)
        return float(request.count * width * height * steps * (strength or 1))

    def load(self, spec: LoadSpec) -> ImagineModel:
        # Imported here: diffusers takes seconds to import, and only image models need it.
        from diffusers import AutoPipelineForText2Image

        # The spec's kwargs (dtype, use_safetensors, no remote code) are diffusers 0.42's names.
        pipe = from_pretrained(AutoPipelineForText2Image, spec).to(spec.device)
        pipe.set_progress_bar_config(disable=True)
        choice = next((c for c in self.models.values() if c.source == spec.source), None)
        configured = self.native_size if choice is None else choice.native_size
        native = configured or native_size(pipe)
        scheduler = self.scheduler if choice is None else choice.scheduler or self.scheduler
        self._speed_up(pipe, native, spec.source, scheduler)
        safety = None
        if self.safety_model is not None:
            safety = SafetyClassifier.load(self.safety_model, spec, self.safety_threshold)
        preview = None
        if self.preview_model is not None:
            if safety is None and getattr(pipe, "safety_checker", None) is not None:
                # A preview would show what the pipeline's own checker only judges at the end.
                log.info("%s: no previews, its safety checker judges only finished images; "
                         "set BOT_IMAGINE__SAFETY_MODEL to screen them", spec.source)  # fmt: skip
            else:
                preview = self._load_preview(spec)
        return ImagineModel(pipe, native, safety, preview=preview)

    def _load_preview(self, spec: LoadSpec) -> Any:
        """The previews' tiny autoencoder; None (and a line in the log) when it cannot be
        loaded: images are still made, only without previews."""
        from diffusers import AutoencoderTiny

        assert self.preview_model is not None
        try:
            preview_spec = LoadSpec(self.preview_model, spec.device, spec.dtype)
            return from_pretrained(AutoencoderTiny, preview_spec).to(spec.device).eval()
        except Exception as exc:  # not downloaded (offline), not an autoencoder
            log.warning("no previews: %s could not be loaded (%s); `python -m bot models pull "
                        "imagine` fetches it", self.preview_model, exc)  # fmt: skip
            return None

    def _speed_up(self, pipe: Any, native: int, source: str, scheduler: SchedulerName) -> None:
        """The opt-in speed-ups, each said in the log: compiling takes minutes."""
        if scheduler != "model":
            import diffusers

            name, options = SCHEDULERS[scheduler]
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
        extra = [m for m in (model.safety.model if model.safety else None, model.preview) if m]
        return module_bytes(model.pipe, *extra)

    def run_batch(
        self, model: ImagineModel, requests: Sequence[ImagineRequest], ctx: BatchContext
    ) -> list[ImagineOutput | InvalidInput]:
        settings = {self._settings(r, model.native_size) for r in requests}
        if len(settings) != 1:
            raise ValueError("run_batch needs requests with one batch key")
        width, height, steps, guidance, negative, strength = settings.pop()
        if (width, height) not in allowed_sizes(model.native_size):
            return [size_error(model.native_size) for _ in requests]
        outputs: list[ImagineOutput | InvalidInput | None] = [None] * len(requests)
        starts: dict[int, Image.Image] = {}
        if strength is not None:
            for row, request in enumerate(requests):
                try:
                    starts[row] = self._start(model, request, width, height)
                except InvalidInput as exc:
                    outputs[row] = exc
        rows = [row for row in range(len(requests)) if outputs[row] is None]
        if not rows:
            return outputs  # type: ignore[return-value]

        seeds = {
            row: random.randint(0, MAX_SEED) if requests[row].seed is None else requests[row].seed
            for row in rows
        }
        prompts, negatives, generators, pictures = [], [], [], []
        for row in rows:
            request, seed = requests[row], seeds[row]
            for k in range(request.count):
                prompts.append(request.prompt)
                negatives.append(request.negative_prompt)
                # CPU generators: the same seed gives the same image on any device.
                generators.append(torch.Generator(device="cpu").manual_seed(seed + k))
                if row in starts:
                    pictures.append(starts[row])

        firsts: dict[int, int] = {}  # each request's first image, in the pipeline's batch
        for row in rows:
            firsts[row] = sum(requests[r].count for r in rows[: rows.index(row)])
        last_preview = time.monotonic()

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict:
            nonlocal last_preview
            total = getattr(pipe, "num_timesteps", None) or steps
            ctx.progress(step + 1, total)
            # Raising here, rather than setting pipe._interrupt, also skips decoding latents
            # that nobody wants any more.
            raise_if_stopped(ctx)
            due = time.monotonic() - last_preview >= self.preview_every_s
            if model.preview is not None and step + 1 < total and due:
                self._preview(model, tensors["latents"], firsts, ctx)
                last_preview = time.monotonic()
            return tensors

        shape: dict[str, Any] = {"width": width, "height": height}
        pipe = model.pipe
        if strength is not None:  # the picture gives the size
            pipe, shape = model.from_picture(), {"image": pictures, "strength": strength}
        with torch.inference_mode():
            output = pipe(
                prompt=prompts,
                negative_prompt=negatives if negative else None,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="pt",
                callback_on_step_end=on_step,
                **shape,
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

        start = 0
        for row in rows:
            count = requests[row].count
            mine = kept[start : start + count]
            start += count
            # Named in the result only when it is not the default.
            named = requests[row].model if self._choice(requests[row].model) else None
            outputs[row] = ImagineOutput(mine, seeds[row], width, height, steps, guidance, named)
        return outputs  # type: ignore[return-value]

    @staticmethod
    def _preview(
        model: ImagineModel, latents: torch.Tensor, firsts: dict[int, int], ctx: BatchContext
    ) -> None:
        """A small JPEG of each request's first image as it is now, decoded by the tiny
        autoencoder and screened by the safety classifier where there is one; a model whose
        latents it cannot decode (another family) simply gets no more previews."""
        try:
            with torch.inference_mode():
                picked = latents[list(firsts.values())].to(model.preview.dtype)
                images = model.preview.decode(picked).sample
                images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            pixels = list(images.permute(0, 2, 3, 1).cpu().numpy())
        except Exception as exc:  # e.g. FLUX's packed latents: not this autoencoder's
            log.warning("previews are off for this model: %r", exc)
            model.preview = None
            return
        flagged = model.safety.flags(pixels) if model.safety is not None else [False] * len(pixels)
        for row, image, flag in zip(firsts, pixels, flagged, strict=True):
            if not flag:  # an unsafe glimpse is never shown
                ctx.partial(row, encode_jpeg(image, PREVIEW_SIDE))

    def _start(
        self, model: ImagineModel, request: ImagineRequest, width: int, height: int
    ) -> Image.Image:
        """The picture to start from, opened safely, screened by the safety classifier
        where there is one, and cropped to the size's shape."""
        assert request.image is not None
        try:
            opened = open_image(request.image, max(width * height * 4, MAX_SIDE**2))
        except InvalidInput:
            raise
        except Exception as exc:  # a decoder's own bug: this request fails, not its batch
            log.warning("could not open a picture to draw from: %r", exc)
            raise InvalidInput("image", "is damaged and cannot be read") from exc
        if model.safety is not None and any(model.safety.flags([opened.image])):
            raise InvalidInput(
                "image", "looks unsafe to the safety filter, so I do not draw from it"
            )
        return ImageOps.fit(opened.image, (width, height))

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
            withheld=tuple(k for k, p in enumerate(output.pixels) if p is None),
            model=output.model,
        )
