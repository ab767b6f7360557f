"""A tiny real classifier, built offline, through the real registry, worker and executor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelLoadError, ModelRegistry
from handlers.base import LoadSpec
from handlers.sentiment import SentimentRequest, SentimentTask
from tests.tinymodels import build_classifier, sentences

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("classifier"))


def make_executor(model: Path) -> Executor:
    return Executor(
        {"sentiment": SentimentTask()},
        {"sentiment": str(model)},
        LocalBackend(ModelRegistry(device="cpu")),
        ExecutorConfig(max_per_user=64),
    )


async def test_concurrent_requests_batch_and_match_one_at_a_time(classifier_dir: Path) -> None:
    texts = sentences(12, 9, seed=3)
    task = SentimentTask()
    model = task.load(LoadSpec(str(classifier_dir), "cpu", torch.float32))
    alone = [task.run_batch(model, [SentimentRequest(t)], None)[0] for t in texts]

    async with make_executor(classifier_dir) as executor:
        handles = [
            executor.submit("sentiment", SentimentRequest(t), user_id=i)
            for i, t in enumerate(texts)
        ]
        results = await asyncio.gather(*handles)
        snapshot = executor.snapshot()
    assert [r.label for r in results] == [r.label for r in alone]
    assert [r.score for r in results] == pytest.approx([r.score for r in alone], abs=1e-5)
    assert all(r.label in {"POSITIVE", "NEGATIVE"} and 0.5 <= r.score <= 1 for r in results)
    (stats,) = snapshot.models
    assert max(stats.batch_sizes) > 1, stats.batch_sizes
    (loaded,) = snapshot.loaded
    assert loaded.model == str(classifier_dir) and loaded.bytes > 0 and loaded.dtype == "float32"


async def test_pickle_only_checkpoint_is_refused(tmp_path: Path) -> None:
    unsafe = build_classifier(tmp_path / "unsafe", safetensors=False)
    assert not list(unsafe.glob("*.safetensors"))
    async with make_executor(unsafe) as executor:
        with pytest.raises(ModelLoadError, match="no safetensors weights"):
            await executor.submit("sentiment", SentimentRequest("good coffee"), user_id=1)
