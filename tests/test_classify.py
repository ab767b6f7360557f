from __future__ import annotations

from pathlib import Path

import pytest

from handlers.base import InvalidInput
from handlers.classify import ClassifyRequest, ClassifyTask, NliModel, parse_labels
from tests.handlers_support import RecordingContext, load, one_at_a_time
from tests.tinymodels import build_classifier, build_nli

TASK = ClassifyTask()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> NliModel:
    return load(TASK, build_nli(tmp_path_factory.mktemp("nli")))


def test_single_label_scores_rank_every_label_and_sum_to_one(model: NliModel) -> None:
    request = ClassifyRequest("the exam was great", ("physics", "music", "coffee"))
    (result,) = TASK.run_batch(model, [request], RecordingContext())
    assert sorted(result.labels) == ["coffee", "music", "physics"]
    assert result.scores == sorted(result.scores, reverse=True)
    assert sum(result.scores) == pytest.approx(1.0, abs=1e-5)


def test_multi_label_scores_are_independent(model: NliModel) -> None:
    request = ClassifyRequest("a quiet library", ("quiet", "loud", "city"), multi_label=True)
    (result,) = TASK.run_batch(model, [request], RecordingContext())
    assert all(0 < s < 1 for s in result.scores)
    assert sum(result.scores) != pytest.approx(1.0, abs=1e-3)


def test_batch_equals_one_at_a_time(model: NliModel) -> None:
    requests = [
        ClassifyRequest("great coffee", ("good", "bad")),
        ClassifyRequest("the river is dark and slow today", ("nature", "city", "music", "art")),
        ClassifyRequest("love this lesson", ("happy", "sad"), multi_label=True),
    ]
    batched = TASK.run_batch(model, requests, RecordingContext())
    for got, alone in zip(batched, one_at_a_time(TASK, model, requests), strict=True):
        assert got.labels == alone.labels
        assert got.scores == pytest.approx(alone.scores, abs=1e-5)


def test_a_model_without_entailment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an NLI model"):
        load(TASK, build_classifier(tmp_path / "sst2"))


def test_labels_parse_from_commas() -> None:
    assert parse_labels(" urgent, not urgent ,, spam ") == ("urgent", "not urgent", "spam")


@pytest.mark.parametrize(
    ("request_", "option"),
    [
        (ClassifyRequest("", ("a", "b")), "text"),
        (ClassifyRequest("x", ("a",)), "labels"),
        (ClassifyRequest("x", tuple("abcdefghijk")), "labels"),
        (ClassifyRequest("x", ("a", "A")), "labels"),
        (ClassifyRequest("x", ("a", " ")), "labels"),
        (ClassifyRequest("x", ("a", "b"), template="no placeholder"), "template"),
    ],
)
def test_bad_requests_name_the_option(request_: ClassifyRequest, option: str) -> None:
    with pytest.raises(InvalidInput) as err:
        TASK.validate(request_)
    assert err.value.option == option
