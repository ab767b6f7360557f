"""The image safety classifier: one model (``BOT_IMAGINE__SAFETY_MODEL``) that screens the
images /imagine draws and, in classroom-safe servers, the images members show /describe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from handlers.base import LoadSpec, from_pretrained

NSFW_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "explicit", "unsafe"})
"""Classifier labels (lower case) whose probabilities add up to an image's unsafe score."""


@dataclass
class SafetyClassifier:
    processor: Any
    model: torch.nn.Module
    unsafe_labels: list[int]
    threshold: float

    @classmethod
    def load(cls, source: str, spec: LoadSpec, threshold: float) -> SafetyClassifier:
        """The classifier ``source`` on ``spec``'s device; refused when none of its labels
        names unsafe content (a model that could never flag anything)."""
        classifier = from_pretrained(
            AutoModelForImageClassification, LoadSpec(source, spec.device, spec.dtype)
        )
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False)
        labels = classifier.config.id2label
        unsafe = [i for i, label in labels.items() if label.lower() in NSFW_LABELS]
        if not unsafe:
            raise ValueError(
                f"{source} has no label among {sorted(NSFW_LABELS)}: {sorted(labels.values())}"
            )
        return cls(processor, classifier.to(spec.device).eval(), unsafe, threshold)

    def flags(self, images: list[Any]) -> list[bool]:
        """Whether each image (pixels or PIL) scores above the threshold on unsafe labels."""
        inputs = self.processor(images=images, return_tensors="pt")
        values = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            probs = self.model(pixel_values=values).logits.float().softmax(dim=-1)
        scores = probs[:, self.unsafe_labels].sum(dim=-1)
        return (scores > self.threshold).tolist()
