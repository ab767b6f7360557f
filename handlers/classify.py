"""Classify: zero-shot classification with an NLI model (BART-MNLI by default).

Each (text, label) pair becomes a premise/hypothesis pair; every pair of every request
in the batch goes through one padded forward pass. Single-label scores are a softmax of
the entailment logits across labels; multi-label scores weigh entailment against
contradiction for each label on its own, as the transformers zero-shot pipeline does.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.base import (
    BatchContext,
    InvalidInput,
    LoadSpec,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
    quote,
    raise_if_stopped,
)

MIN_LABELS, MAX_LABELS = 2, 10
MAX_LABEL_CHARS = 100
MAX_TEMPLATE_CHARS = 200


@dataclass(frozen=True)
class ClassifyRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"text", "labels", "template"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    text: str
    labels: tuple[str, ...]
    multi_label: bool = False
    template: str = "This example is {}."
    """The hypothesis; ``{}`` is replaced by each label."""


@dataclass(frozen=True)
class ClassifyResult:
    labels: list[str]
    """Every label, most likely first."""
    scores: list[float]


@dataclass
class NliModel:
    tokenizer: Any
    model: torch.nn.Module
    device: str
    entailment: int
    contradiction: int


def parse_labels(text: str) -> tuple[str, ...]:
    """Labels as users type them: comma-separated."""
    return tuple(label.strip() for label in text.split(",") if label.strip())


def one_placeholder(template: str) -> bool:
    """Whether ``template.format(label)`` puts the label in one place and cannot raise.

    ``count("{}")`` alone lets ``"{}{"`` (ValueError) or ``"{} {x}"`` (KeyError) through.
    """
    try:
        fields = [f[1:] for f in string.Formatter().parse(template) if f[1] is not None]
    except ValueError:  # a lone brace
        return False
    return fields == [("", "", None)]


class ClassifyTask(Task[ClassifyRequest, ClassifyResult]):
    name = "classify"
    kind = TaskKind.TEXT

    def __init__(self, max_chars: int = 2000, pairs_per_call: int = 128) -> None:
        self.max_chars = max_chars
        self.pairs_per_call = pairs_per_call

    def validate(self, request: ClassifyRequest) -> None:
        check_text("text", request.text, self.max_chars)
        labels = [label.strip() for label in request.labels]
        if not MIN_LABELS <= len(labels) <= MAX_LABELS:
            raise InvalidInput(
                "labels", f"give between {MIN_LABELS} and {MAX_LABELS} labels, got {len(labels)}"
            )
        for label in labels:
            try:
                check_text("labels", label, MAX_LABEL_CHARS)
            except InvalidInput as exc:
                raise InvalidInput("labels", f"{quote(label)} {exc.message}") from None
        if len({label.casefold() for label in labels}) != len(labels):
            raise InvalidInput("labels", "contain the same label twice")
        check_text("template", request.template, MAX_TEMPLATE_CHARS)
        if not one_placeholder(request.template):
            raise InvalidInput("template", "must contain {} exactly once")

    def cost(self, request: ClassifyRequest) -> int:
        return len(request.labels) * (len(request.text) // 4 + 8)

    def load(self, spec: LoadSpec) -> NliModel:
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
        model = from_pretrained(AutoModelForSequenceClassification, spec).to(spec.device).eval()
        ids = {name.lower(): i for name, i in model.config.label2id.items()}
        entailment = next((i for name, i in ids.items() if name.startswith("entail")), None)
        contradiction = next((i for name, i in ids.items() if name.startswith("contra")), None)
        if entailment is None or contradiction is None:
            raise ValueError(
                f"{spec.source} is not an NLI model: its labels are {sorted(ids)}, "
                "with no entailment and contradiction"
            )
        return NliModel(tokenizer, model, spec.device, entailment, contradiction)

    def model_bytes(self, model: NliModel) -> int:
        return super().model_bytes(model.model)

    def run_batch(
        self, model: NliModel, requests: Sequence[ClassifyRequest], ctx: BatchContext
    ) -> list[ClassifyResult]:
        pairs = [
            (request.text, request.template.format(label.strip()))
            for request in requests
            for label in request.labels
        ]
        logits: list[torch.Tensor] = []
        for start in range(0, len(pairs), self.pairs_per_call):
            raise_if_stopped(ctx)
            chunk = pairs[start : start + self.pairs_per_call]
            encoded = model.tokenizer(
                [premise for premise, _ in chunk],
                [hypothesis for _, hypothesis in chunk],
                padding=True,
                truncation="only_first",
                return_tensors="pt",
            ).to(model.device)
            with torch.inference_mode():
                logits.append(model.model(**encoded).logits.float().cpu())
        scores = torch.cat(logits)
        results = []
        offset = 0
        for request in requests:
            rows = scores[offset : offset + len(request.labels)]
            offset += len(request.labels)
            if request.multi_label:
                pair = rows[:, [model.contradiction, model.entailment]]
                probs = pair.softmax(dim=-1)[:, 1]
            else:
                probs = rows[:, model.entailment].softmax(dim=0)
            ranked = sorted(zip(request.labels, probs.tolist(), strict=True), key=lambda x: -x[1])
            results.append(
                ClassifyResult([label.strip() for label, _ in ranked], [p for _, p in ranked])
            )
        return results
