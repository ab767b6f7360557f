"""bench/lengths.py: the capacity benchmark's answers end at their drawn lengths, through the
real handlers' models (tiny ones), and without it they run to their caps."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from bench.lengths import HonestSummarize, HonestTranslate, honest
from handlers.base import LoadSpec
from handlers.sentiment import SentimentTask
from handlers.summarize import SummarizeTask
from handlers.translate import TranslateTask
from tests import tinymodels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def new_tokens(loaded: object, texts: list[str], **kwargs: object) -> list[int]:
    """New tokens in each row of a ``generate`` call (its end token included)."""
    model, tokenizer = loaded.model, loaded.tokenizer  # type: ignore[attr-defined]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**encoded, **kwargs)
    pad = model.generation_config.pad_token_id
    return [int((row[1:] != pad).sum()) for row in output]


def test_summaries_end_at_40_to_120_tokens_where_random_weights_run_to_the_cap(
    tmp_path: Path,
) -> None:
    source = str(tinymodels.build_summarizer(tmp_path / "bart"))
    sentiment = SentimentTask()
    tasks = honest({"summarize": SummarizeTask(), "sentiment": sentiment})
    assert type(tasks["summarize"]) is HonestSummarize and tasks["sentiment"] is sentiment
    spec = LoadSpec(source, "cpu", torch.float32)
    texts = ["the group met today", "we read about rivers and mountains and the old city"] * 2
    cap = 60  # the tiny model has 64 positions
    plain = new_tokens(SummarizeTask().load(spec), texts, max_new_tokens=cap, min_new_tokens=1)
    ended = new_tokens(tasks["summarize"].load(spec), texts, max_new_tokens=cap, min_new_tokens=1)
    draws = random.Random(1)
    targets = [draws.randint(40, 120) for _ in texts]
    assert set(plain) == {cap}  # random weights never end an answer themselves
    assert ended == [min(target + 1, cap) for target in targets]  # then the end token
    assert min(ended) < cap


def test_translations_end_near_the_sources_length(tmp_path: Path) -> None:
    source = str(tinymodels.build_m2m100(tmp_path / "m2m"))
    task = honest({"translate": TranslateTask()})["translate"]
    assert isinstance(task, HonestTranslate)
    loaded = task.load(LoadSpec(source, "cpu", torch.float32))
    texts = ["the study group meets every week to review notes", "hello"]
    sizes = loaded.tokenizer(texts, padding=True, return_tensors="pt").attention_mask.sum(dim=1)
    made = new_tokens(loaded, texts, max_new_tokens=100)
    for count, size in zip(made, sizes.tolist(), strict=True):
        assert max(2, round(0.8 * size)) <= count <= round(1.2 * size) + 1
