"""Sentiment: a sequence classifier over one text, batched as one padded forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.base import (
    BatchContext,
    LoadSpec,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
)


@dataclass(frozen=True)
class SentimentRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"text"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    text: str


@dataclass(frozen=True)
class SentimentResult:
    label: str
    score: float


@dataclass
class SentimentModel:
    tokenizer: Any
    model: torch.nn.Module
    device: str


class SentimentTask(Task[SentimentRequest, SentimentResult]):
    name = "sentiment"
    kind = TaskKind.TEXT

    def __init__(self, max_chars: int = 2000) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        self.max_chars = max_chars

    def validate(self, request: SentimentRequest) -> None:
        check_text("text", request.text, self.max_chars)

    def cost(self, request: SentimentRequest) -> int:
        # A rough token count: the budget only has to be proportional to padding work.
        return len(request.text) // 4 + 2

    def load(self, spec: LoadSpec) -> SentimentModel:
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
        model = from_pretrained(AutoModelForSequenceClassification, spec)
        return SentimentModel(tokenizer, model.to(spec.device).eval(), spec.device)

    def model_bytes(self, model: SentimentModel) -> int:
        return super().model_bytes(model.model)

    def run_batch(
        self, model: SentimentModel, requests: Sequence[SentimentRequest], ctx: BatchContext
    ) -> list[SentimentResult]:
        encoded = model.tokenizer(
            [r.text for r in requests], padding=True, truncation=True, return_tensors="pt"
        ).to(model.device)
        with torch.inference_mode():
            logits = model.model(**encoded).logits
        probs = logits.float().softmax(dim=-1)
        scores, labels = probs.max(dim=-1)
        id2label = model.model.config.id2label
        return [
            SentimentResult(id2label[label], score)
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
        ]
