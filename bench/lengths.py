"""Answers that end where real ones do, for the capacity benchmark only: random weights never
choose their end token, so without this every summary and translation runs to its cap.

Each ``generate`` call of the wrapped models gets a logits processor that forces the end
token once a row has its target number of new tokens, drawn per row from a stated
distribution (``LENGTHS``) by a seeded generator in the worker. The handlers are untouched:
the benchmark swaps the class of its own task objects (``honest``) to ones whose ``load``
wraps the loaded model's ``generate``.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from handlers.base import LoadSpec, Task
from handlers.summarize import SummarizeTask
from handlers.translate import TranslateTask

LENGTHS = {
    "summarize": "uniform 40 to 120 new tokens",
    "translate": "the source's token count times uniform 0.8 to 1.2",
    "chat": "log-uniform 16 to 256 new tokens (the request's own max_tokens)",
    "speak": "about the text's length: SpeechT5's own stop at up to 20 frames a token",
    "imagine": "1 image for 80% of the commands, 4 for the rest",
    "transcribe": "Whisper's own end of each 30 s piece (random weights: the piece's cap)",
    "describe": "log-uniform 32 to 160 new tokens (the request's own max_new_tokens)",
}
"""What the benchmark's answers look like, recorded in its JSON."""


class EndAt(LogitsProcessor):
    """Forces the end token in each row once it has ``targets[row]`` new tokens."""

    def __init__(self, targets: list[int], end: int, start: int) -> None:
        self.targets = targets
        self.end = end
        self.start = start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        made = input_ids.shape[1] - self.start
        rows = scores.shape[0]
        per_request = max(1, rows // len(self.targets))  # beams of one request follow each other
        for row in range(rows):
            if made >= self.targets[min(row // per_request, len(self.targets) - 1)]:
                scores[row, :] = -torch.inf
                scores[row, self.end] = 0.0
        return scores


def _wrap(model: Any, draw: Any, rng: random.Random) -> None:
    """Give ``model.generate`` an ``EndAt`` with a target per row drawn by ``draw``."""
    inner = model.generate
    end = model.generation_config.eos_token_id
    end = end[0] if isinstance(end, list) else end

    def generate(*args: Any, **kwargs: Any) -> Any:
        mask = kwargs["attention_mask"]
        targets = [draw(rng, int(n)) for n in mask.sum(dim=1).tolist()]
        # An encoder-decoder's new tokens follow its decoder start (and a forced language).
        start = 1 if model.config.is_encoder_decoder else mask.shape[1]
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(EndAt(targets, end, start))
        return inner(*args, logits_processor=processors, **kwargs)

    model.generate = generate


class HonestSummarize(SummarizeTask):
    def load(self, spec: LoadSpec) -> Any:
        loaded = super().load(spec)
        _wrap(loaded.model, lambda rng, source: rng.randint(40, 120), random.Random(1))
        return loaded


class HonestTranslate(TranslateTask):
    def load(self, spec: LoadSpec) -> Any:
        loaded = super().load(spec)
        draw = lambda rng, source: max(2, round(source * rng.uniform(0.8, 1.2)))  # noqa: E731
        _wrap(loaded.model, draw, random.Random(2))
        return loaded


HONEST = {SummarizeTask: HonestSummarize, TranslateTask: HonestTranslate}


def honest(tasks: dict[str, Task[Any, Any]]) -> dict[str, Task[Any, Any]]:
    """The same tasks, summarize and translate ending their answers at drawn lengths."""
    swapped: dict[str, Task[Any, Any]] = {}
    for name, task in tasks.items():
        kind = HONEST.get(type(task))
        if kind is not None:
            task = copy.copy(task)
            task.__class__ = kind
        swapped[name] = task
    return swapped
