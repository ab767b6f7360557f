"""Describe: what an image shows, or the answer to a question about it, from a small
vision-language model.

Any model of transformers' image-text-to-text family loads (``AutoModelForImageTextToText``
and ``AutoProcessor``), and every prompt is built by the processor's own chat template, so
SmolVLM, Idefics3, LLaVA or Qwen2.5-VL checkpoints all serve. Images are opened where the
model runs, with Pillow under its decompression-bomb limit; an animated image is described
by its first frame (the result says so); one larger than ``max_pixels`` is scaled down
before the processor applies its own rules. The requests of a batch generate together,
left-padded, each streaming its text so far, as chat does.

A request may also be the newest turn of a conversation (``system`` set): the persona,
summary and earlier turns go through the same template, each image inside the turn that
showed it, cut to the model's window by leaving out the oldest turns that show none. In a
classroom-safe server (``screen``) the safety classifier judges each image first.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from handlers.audio import over
from handlers.base import (
    BatchContext,
    BatchStopped,
    HandlerError,
    InvalidInput,
    LoadSpec,
    StopWhenAbandoned,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
    module_bytes,
)
from handlers.chat import (
    CONTINUING,
    BatchStreamer,
    ChatTurn,
    Rows,
    check_history,
    model_context,
    stop_token_ids,
    with_summary,
)
from handlers.pictures import Opened, open_image
from handlers.safety import SafetyClassifier

log = logging.getLogger(__name__)

COST_PER_IMAGE = 2**20
CONVERSATION_CHARS = 2**16
"""A bound on each text of a conversation turn, checked before anything is tokenised: the
front end has already fitted them to the chat model's window."""

DESCRIBE = "Describe this image in a few sentences. Read out any text it contains."
DESCRIBE_EACH = (
    "Describe each image in turn, in a few sentences, reading out any text it contains. "
    "After each description, write one short line of alt text starting with 'Alt text:'."
)
"""What the Describe image menu asks: a description of each image, and its alt text."""
IN_BRIEF = "Describe this image in one or two sentences, and quote any text it shows."
"""What an image of a conversation is remembered by once the model is no longer shown it."""


@dataclass(frozen=True)
class DescribeRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset(
        {"question", "system", "summary", "history", "name"}
    )
    """What members wrote; the images (bytes) never reach the log at all."""

    images: tuple[bytes, ...]
    """The files as the member sent them (PNG, JPEG, WebP, GIF...)."""
    question: str = ""
    """What to ask about them; empty asks for a description."""
    max_new_tokens: int | None = None
    system: str | None = None
    """Set, the question is the newest turn of a conversation with this system prompt (its
    persona), ``summary`` and ``history`` before it; None asks about the images alone."""
    summary: str = ""
    history: tuple[ChatTurn, ...] = ()
    name: str | None = None
    """Who asked the question, in a conversation."""
    images_per_turn: tuple[int, ...] = ()
    """In a conversation, how many of ``images`` each turn of ``history`` and then the
    question shows, in order; empty: the question shows them all."""
    screen: bool = False
    """Refuse an image the safety classifier flags (a classroom-safe server)."""

    def counts(self) -> list[int]:
        """Images shown by each turn: those of ``history``, then the question's."""
        return list(self.images_per_turn) or [0] * len(self.history) + [len(self.images)]


@dataclass(frozen=True)
class DescribeResult:
    text: str
    tokens: int
    images: int
    first_frames: int = 0
    """How many of the images were animated and described by their first frame."""


@dataclass
class VisionModel:
    processor: Any
    model: torch.nn.Module
    device: str
    dtype: torch.dtype
    stop_ids: frozenset[int]
    context: int
    """Tokens a prompt, its images and the answer may take together."""
    safety: SafetyClassifier | None = None


class DescribeTask(Task[DescribeRequest, DescribeResult]):
    name = "describe"
    kind = TaskKind.IMAGE

    def __init__(
        self,
        max_images: int = 4,
        max_bytes: int = 10 * 1024 * 1024,
        max_pixels: int = 2048 * 2048,
        max_chars: int = 2000,
        default_new_tokens: int = 256,
        max_new_tokens: int = 1024,
        context_tokens: int = 8192,
        safety_model: str | None = None,
        safety_threshold: float = 0.5,
    ) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_chars = max_chars
        self.default_new_tokens = default_new_tokens
        self.max_new_tokens = max_new_tokens
        self.context_tokens = context_tokens
        """The most a prompt, its images and the answer may take, below the model's own."""
        self.safety_model = safety_model
        """The classifier that screens images in classroom-safe servers (/imagine's)."""
        self.safety_threshold = safety_threshold

    def new_tokens(self, request: DescribeRequest) -> int:
        return request.max_new_tokens or self.default_new_tokens

    def validate(self, request: DescribeRequest) -> None:
        if not request.images:
            raise InvalidInput("image", "attach an image")
        if len(request.images) > self.max_images:
            raise InvalidInput(
                "image", f"{len(request.images)} images; at most {self.max_images} at a time"
            )
        for data in request.images:
            if not data:
                raise InvalidInput("image", "is empty")
            if len(data) > self.max_bytes:
                raise InvalidInput("image", over(len(data), self.max_bytes))
        tokens = request.max_new_tokens
        if tokens is not None and not 1 <= tokens <= self.max_new_tokens:
            raise InvalidInput("max_new_tokens", f"must be between 1 and {self.max_new_tokens}")
        if request.screen and self.safety_model is None:
            raise InvalidInput("image", "cannot be screened: the bot has no image safety filter")
        if request.system is None:
            if request.history or request.summary or request.images_per_turn:
                raise InvalidInput("system", "a conversation needs its system prompt")
            check_text("question", request.question, self.max_chars, required=False)
            return
        for field, text in (("question", request.question), ("system", request.system),
                            ("summary", request.summary)):  # fmt: skip
            check_text(field, text, CONVERSATION_CHARS, required=False)
        check_history(request.history, CONVERSATION_CHARS)
        counts = request.counts()
        if (
            len(counts) != len(request.history) + 1
            or min(counts) < 0
            or sum(counts) != len(request.images)
        ):
            raise InvalidInput(
                "images_per_turn", "must give each turn's number of the images, in order"
            )

    def batch_key(self, request: DescribeRequest) -> Hashable:
        """The answer's length, and the number of images: every image adds hundreds of
        prompt tokens, and a batch is padded to its longest prompt."""
        return self.new_tokens(request), len(request.images)

    def cost(self, request: DescribeRequest) -> int:
        """A megapixel of the image class's budget for each image, so that its default
        (BOT_IMAGE__MAX_COST, 4 Mpx) batches four one-image requests, as its batch cap does."""
        return len(request.images) * COST_PER_IMAGE

    def work(self, request: DescribeRequest) -> float:
        return float(len(request.images) * 1000 + self.new_tokens(request))

    def load(self, spec: LoadSpec) -> VisionModel:
        processor = AutoProcessor.from_pretrained(spec.source, trust_remote_code=False)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row's end
        if tokenizer.pad_token is None:  # a batch must be padded with something
            tokenizer.pad_token = tokenizer.eos_token
        model = from_pretrained(AutoModelForImageTextToText, spec).to(spec.device).eval()
        stops = stop_token_ids(processor.tokenizer, model.generation_config)
        config = getattr(model.config, "text_config", None) or model.config
        context = min(model_context(config) or self.context_tokens, self.context_tokens)
        safety = None
        if self.safety_model is not None:
            safety = SafetyClassifier.load(self.safety_model, spec, self.safety_threshold)
        return VisionModel(processor, model, spec.device, spec.dtype, stops, context, safety)

    def model_bytes(self, model: VisionModel) -> int:
        return module_bytes(model.model, *([model.safety.model] if model.safety else []))

    def messages(self, request: DescribeRequest) -> list[dict[str, Any]]:
        """The chat-template messages: the question after its images, or, in a conversation,
        the persona and summary, then each turn after the images it showed (turns in a row
        from one side joined, as many templates require them to alternate)."""
        question = request.question or DESCRIBE
        if request.system is None:
            parts = [*({"type": "image"} for _ in request.images)]
            return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]
        turns = [*request.history, ChatTurn("user", question, request.name)]
        counts = request.counts()
        if turns[0].role == "assistant":  # cut after a member's turn: templates want one first
            turns.insert(0, ChatTurn("user", CONTINUING))
            counts.insert(0, 0)
        system = with_summary(request.system, request.summary)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": [{"type": "text", "text": system}]}
        ]
        for turn, count in zip(turns, counts, strict=True):
            text = f"{turn.name}: {turn.content}" if turn.name else turn.content
            parts = [*({"type": "image"} for _ in range(count)), {"type": "text", "text": text}]
            if messages[-1]["role"] == turn.role:
                messages[-1]["content"] += [{"type": "text", "text": "\n\n"}, *parts]
            else:
                messages.append({"role": turn.role, "content": parts})
        return messages

    def _prompt(self, processor: Any, request: DescribeRequest) -> str:
        return processor.apply_chat_template(self.messages(request), add_generation_prompt=True)

    def _fit(
        self, model: VisionModel, request: DescribeRequest, images: list[Image.Image]
    ) -> DescribeRequest:
        """A conversation cut to the model's window with its images: the oldest turns go
        first, never one that shows an image; refused when even those do not fit."""
        budget = model.context - self.new_tokens(request)

        def tokens(cut: DescribeRequest) -> int:
            inputs = model.processor(
                text=[self._prompt(model.processor, cut)], images=[images],
                add_special_tokens=False,
            )  # fmt: skip
            return len(inputs["input_ids"][0])

        if request.system is None or tokens(request) <= budget:
            return request
        counts = request.counts()
        first_shown = next(i for i, count in enumerate(counts) if count)
        history = request.history
        starts = [
            i for i in range(1, first_shown + 1) if i == len(history) or history[i].role == "user"
        ]  # cuts just before a member's turn, keeping every turn that shows an image

        def cut(start: int) -> DescribeRequest:
            return replace(
                request,
                history=history[start:],
                images_per_turn=tuple(counts[start:]),
            )

        if not starts or tokens(cut(starts[-1])) > budget:
            raise InvalidInput(
                "image",
                "these images and the conversation around them do not fit the model's "
                f"window of {model.context} tokens; show fewer images, or reply `reset`",
            )
        low, high = 0, len(starts) - 1  # the latest cut fits: find the earliest that does
        while low < high:  # each try runs the processor, images and all: bisect
            middle = (low + high) // 2
            if tokens(cut(starts[middle])) <= budget:
                high = middle
            else:
                low = middle + 1
        return cut(starts[low])

    def run_batch(
        self, model: VisionModel, requests: Sequence[DescribeRequest], ctx: BatchContext
    ) -> list[Any]:
        outputs: list[Any] = [None] * len(requests)
        opened: dict[int, list[Opened]] = {}
        fitted: dict[int, DescribeRequest] = {}
        for row, request in enumerate(requests):
            try:
                request, images = self._open(model, request)
                fitted[row] = self._fit(model, request, [o.image for o in images])
                opened[row] = images
            except HandlerError as exc:
                outputs[row] = exc
            except Exception as exc:  # a decoder's own bug: this request fails, not its batch
                log.warning("could not open an image to describe: %r", exc)
                outputs[row] = InvalidInput("image", "is damaged and cannot be read")
        rows = list(opened)
        if not rows:
            return outputs
        processor = model.processor
        inputs = processor(
            text=[self._prompt(processor, fitted[row]) for row in rows],
            images=[[o.image for o in opened[row]] for row in rows],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,  # the chat template wrote them
        ).to(model.device, dtype=model.dtype)  # pixels cast as they move: half the copy
        subset = Rows(ctx, rows)
        tokenizer = processor.tokenizer
        with torch.inference_mode():
            generated = model.model.generate(
                **inputs,
                max_new_tokens=self.new_tokens(requests[rows[0]]),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(model.stop_ids),
                streamer=BatchStreamer(tokenizer, subset, len(rows), model.stop_ids),
                stopping_criteria=[StopWhenAbandoned(subset)],
            )
        if ctx.should_stop():
            raise BatchStopped
        for row, tokens in zip(rows, generated[:, inputs["input_ids"].shape[1] :].tolist(),
                               strict=True):  # fmt: skip
            end = next((i for i, token in enumerate(tokens) if token in model.stop_ids), None)
            kept = tokens if end is None else tokens[:end]
            outputs[row] = DescribeResult(
                text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                tokens=len(kept),
                images=len(opened[row]),
                first_frames=sum(o.animated for o in opened[row]),
            )
        return outputs

    def _open(
        self, model: VisionModel, request: DescribeRequest
    ) -> tuple[DescribeRequest, list[Opened]]:
        """The request's images opened (and screened): a bad one fails the request, unless
        an earlier turn of a conversation showed it, which then goes on without it."""
        counts = request.counts()
        turn_of = [turn for turn, count in enumerate(counts) for _ in range(count)]
        kept: list[Opened] = []
        data_kept: list[bytes] = []
        for data, turn in zip(request.images, turn_of, strict=True):
            try:
                opened = open_image(data, self.max_pixels)
                if request.screen:
                    self._screen(model, [opened.image])
                kept.append(opened)
                data_kept.append(data)
            except HandlerError:
                if turn == len(counts) - 1:  # the newest message's: the member is told
                    raise
                counts[turn] -= 1
                log.info("an earlier image of a conversation is left out: cannot be seen")
        if len(kept) == len(request.images):
            return request, kept
        if not kept:
            raise InvalidInput("image", "none of the conversation's images can be read")
        return replace(request, images=tuple(data_kept), images_per_turn=tuple(counts)), kept

    @staticmethod
    def _screen(model: VisionModel, images: list[Image.Image]) -> None:
        """Refuse images the safety classifier flags, as /imagine withholds what it draws."""
        if model.safety is None:
            raise InvalidInput("image", "cannot be screened: the bot has no image safety filter")
        flagged = sum(model.safety.flags(images))
        if flagged:
            raise InvalidInput(
                "image",
                f"{flagged} of the images looks unsafe to the safety filter, and this server "
                "is classroom-safe, so I do not describe it",
            )
