"""Summarize: an encoder-decoder summariser (BART-CNN by default), batched with ``generate``.

Transformers 5 has no summarization pipeline, so this calls the model directly. Text
longer than the model's window is never cut: it is split at the best boundaries
(``handlers/text.py``: paragraphs, sentences, clauses, words...) into chunks that fit,
each chunk (a section of a long document) is summarised, the batch's progress counting
sections done when the text is alone in it, and the joined partial summaries are
summarised again until one window holds them (map-reduce).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from handlers.base import (
    BatchContext,
    InvalidInput,
    LoadSpec,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
    raise_if_stopped,
)
from handlers.presets import LENGTHS as LENGTHS  # re-exported: where summaries are defined
from handlers.text import split_to_fit

MAX_ROUNDS = 8


@dataclass(frozen=True)
class SummarizeRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"text"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    text: str
    length: str = "medium"
    min_tokens: int | None = None
    """Overrides the preset's lower bound on the summary's length in tokens."""
    max_tokens: int | None = None
    """Overrides the preset's upper bound."""


@dataclass(frozen=True)
class SummarizeResult:
    summary: str
    chunks: int
    """How many pieces the input was split into (1 when it fit the model's window)."""


@dataclass
class SummarizeModel:
    tokenizer: Any
    model: torch.nn.Module
    device: str
    window: int
    """Most input tokens per piece, special tokens included."""


class SummarizeTask(Task[SummarizeRequest, SummarizeResult]):
    name = "summarize"
    kind = TaskKind.TEXT

    def __init__(
        self, max_chars: int = 50_000, max_summary_tokens: int = 512, pieces_per_call: int = 16
    ) -> None:
        self.max_chars = max_chars
        self.max_summary_tokens = max_summary_tokens
        self.pieces_per_call = pieces_per_call

    def bounds(self, request: SummarizeRequest) -> tuple[int, int]:
        low, high = LENGTHS.get(request.length, LENGTHS["medium"])
        low = request.min_tokens if request.min_tokens is not None else low
        high = request.max_tokens if request.max_tokens is not None else high
        return min(low, high), high

    def validate(self, request: SummarizeRequest) -> None:
        check_text("text", request.text, self.max_chars)
        if request.length not in LENGTHS:
            raise InvalidInput("length", f"must be one of {', '.join(LENGTHS)}")
        for option in ("min_tokens", "max_tokens"):
            value = getattr(request, option)
            if value is not None and not 1 <= value <= self.max_summary_tokens:
                raise InvalidInput(option, f"must be between 1 and {self.max_summary_tokens}")
        if (
            request.min_tokens is not None
            and request.max_tokens is not None
            and request.min_tokens > request.max_tokens
        ):
            raise InvalidInput("min_tokens", "must not exceed max_tokens")

    def batch_key(self, request: SummarizeRequest) -> Hashable:
        return self.bounds(request)

    def cost(self, request: SummarizeRequest) -> int:
        return len(request.text) // 4 + 2

    def load(self, spec: LoadSpec) -> SummarizeModel:
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
        model = from_pretrained(AutoModelForSeq2SeqLM, spec).to(spec.device).eval()
        window = min(tokenizer.model_max_length, model.config.max_position_embeddings)
        return SummarizeModel(tokenizer, model, spec.device, window)

    def model_bytes(self, model: SummarizeModel) -> int:
        return super().model_bytes(model.model)

    def chunks(self, model: SummarizeModel, text: str) -> list[str]:
        """Pieces of ``text`` that fit the window, cut at the best boundaries (handlers/text)."""
        budget = model.window - model.tokenizer.num_special_tokens_to_add()

        def size(piece: str) -> int:
            return len(model.tokenizer(piece, add_special_tokens=False)["input_ids"])

        pieces = [" ".join(piece.split()) for piece in split_to_fit(text, size, budget)]
        return [piece for piece in pieces if piece] or [text.strip()]

    def _generate(
        self,
        model: SummarizeModel,
        texts: list[str],
        bounds: tuple[int, int],
        ctx: BatchContext,
        sections: bool = False,
    ) -> list[str]:
        """Summaries of ``texts``; with ``sections``, the batch's progress counts them done."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: dict[int, str] = {}
        # The decoder cannot outgrow its position table, whatever the user asked for.
        high = min(bounds[1], model.window - 1)
        low = min(bounds[0], high)
        for start in range(0, len(order), self.pieces_per_call):
            raise_if_stopped(ctx)
            group = order[start : start + self.pieces_per_call]
            encoded = model.tokenizer(
                [texts[i] for i in group],
                padding=True,
                truncation=True,
                max_length=model.window,
                return_tensors="pt",
            ).to(model.device)
            with torch.inference_mode():
                generated = model.model.generate(**encoded, min_new_tokens=low, max_new_tokens=high)
            decoded = model.tokenizer.batch_decode(generated, skip_special_tokens=True)
            out.update(zip(group, (d.strip() for d in decoded), strict=True))
            if sections:
                ctx.progress(len(out), len(texts))
        return [out[i] for i in range(len(texts))]

    def run_batch(
        self, model: SummarizeModel, requests: Sequence[SummarizeRequest], ctx: BatchContext
    ) -> list[SummarizeResult]:
        final = self.bounds(requests[0])
        # Partial summaries are at most half a window, so every round halves the text.
        half = max(1, (model.window - model.tokenizer.num_special_tokens_to_add()) // 2)
        partial = (min(final[0], half), min(final[1], half))
        pending = {i: r.text for i, r in enumerate(requests)}
        first_split: dict[int, int] = {}
        summaries: dict[int, str] = {}
        for round_number in range(MAX_ROUNDS):
            if not pending:
                break
            whole: dict[int, str] = {}
            owners: list[int] = []
            pieces: list[str] = []
            for owner, text in pending.items():
                parts = self.chunks(model, text)
                first_split.setdefault(owner, len(parts))
                if len(parts) == 1:
                    whole[owner] = parts[0]
                else:
                    owners.extend([owner] * len(parts))
                    pieces.extend(parts)
            if whole:
                outputs = self._generate(model, list(whole.values()), final, ctx)
                summaries.update(zip(whole, outputs, strict=True))
            joined: dict[int, list[str]] = {}
            # The first round summarizes a long text section by section, with progress,
            # which goes to every job of the batch: counted only for a text alone in it.
            counted = round_number == 0 and len(requests) == 1
            outputs = self._generate(model, pieces, partial, ctx, sections=counted)
            for owner, output in zip(owners, outputs, strict=True):
                joined.setdefault(owner, []).append(output)
            pending = {owner: " ".join(parts) for owner, parts in joined.items()}
        if pending:
            raise RuntimeError("the summary did not converge; the text may be too long")
        return [SummarizeResult(summaries[i], first_split[i]) for i in range(len(requests))]
