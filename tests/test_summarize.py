from __future__ import annotations

import pytest

from handlers.base import InvalidInput
from handlers.summarize import SummarizeModel, SummarizeRequest, SummarizeTask
from tests.handlers_support import RecordingContext, load, one_at_a_time
from tests.tinymodels import build_summarizer, sentences

TASK = SummarizeTask()
LONG = " ".join(s + "." for s in sentences(12, 20, seed=1))  # ~260 tokens; the window is 64


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SummarizeModel:
    return load(TASK, build_summarizer(tmp_path_factory.mktemp("summarizer")))


def test_long_input_is_chunked_to_the_window_and_nothing_is_dropped(
    model: SummarizeModel,
) -> None:
    pieces = TASK.chunks(model, LONG)
    assert len(pieces) > 1
    for piece in pieces:
        assert len(model.tokenizer(piece)["input_ids"]) <= model.window
    assert " ".join(pieces).split() == LONG.split()


def test_a_giant_sentence_is_split_between_words(model: SummarizeModel) -> None:
    sentence = " ".join(sentences(1, 150, seed=2))
    pieces = TASK.chunks(model, sentence)
    assert len(pieces) >= 3
    assert " ".join(pieces).split() == sentence.split()


def test_summaries_are_text_and_report_chunks(model: SummarizeModel) -> None:
    requests = [
        SummarizeRequest(LONG, min_tokens=3, max_tokens=8),
        SummarizeRequest("The study group meets every week.", min_tokens=3, max_tokens=8),
    ]
    ctx = RecordingContext()
    results = TASK.run_batch(model, requests, ctx)
    assert all(r.summary for r in results)
    assert results[0].chunks > 1 and results[1].chunks == 1
    assert ctx.steps == []  # progress goes to every job: sections of one are not the other's
    alone = RecordingContext()
    (result,) = TASK.run_batch(model, requests[:1], alone)
    assert alone.steps == [(result.chunks, result.chunks)]  # its sections, then the whole


def test_batch_equals_one_at_a_time(model: SummarizeModel) -> None:
    requests = [SummarizeRequest(s + ".", max_tokens=6) for s in sentences(4, 12, seed=5)]
    requests.append(SummarizeRequest(LONG, max_tokens=6))
    assert TASK.run_batch(model, requests, RecordingContext()) == one_at_a_time(
        TASK, model, requests
    )


def test_summary_length_is_capped_by_the_decoder_window(model: SummarizeModel) -> None:
    (result,) = TASK.run_batch(
        model, [SummarizeRequest("good coffee.", "long")], RecordingContext()
    )
    assert result.summary
    assert (
        len(model.tokenizer(result.summary, add_special_tokens=False)["input_ids"]) < model.window
    )


def test_length_presets_and_bounds_form_the_batch_key() -> None:
    assert TASK.batch_key(SummarizeRequest("x", length="short")) == (10, 60)
    assert TASK.batch_key(SummarizeRequest("x", max_tokens=20)) == (20, 20)
    assert TASK.batch_key(SummarizeRequest("x", min_tokens=5, max_tokens=40)) == (5, 40)


@pytest.mark.parametrize(
    ("request_", "option"),
    [
        (SummarizeRequest("   "), "text"),
        (SummarizeRequest("x" * 50_001), "text"),
        (SummarizeRequest("x", length="epic"), "length"),
        (SummarizeRequest("x", max_tokens=0), "max_tokens"),
        (SummarizeRequest("x", min_tokens=9999), "min_tokens"),
        (SummarizeRequest("x", min_tokens=50, max_tokens=10), "min_tokens"),
    ],
)
def test_bad_requests_name_the_option(request_: SummarizeRequest, option: str) -> None:
    with pytest.raises(InvalidInput) as err:
        TASK.validate(request_)
    assert err.value.option == option


JAPANESE = "日本語の文章を句読点なしで長く書くと一つの文になってしまう" * 30
"""Japanese without sentence marks: no sentence end, no space."""
URL = "https://example.com/" + "/".join(f"notes{k:03d}" for k in range(120))


@pytest.mark.parametrize("text", [JAPANESE, f"Read this: {URL} before class."], ids=["cjk", "url"])
def test_text_without_sentence_ends_or_spaces_is_still_cut_to_the_window(
    model: SummarizeModel, text: str
) -> None:
    """#34's reproductions: the old splitter fell back to words and no further, so these came
    back as one piece far over the 64-token window, which ``generate`` then truncated."""
    pieces = TASK.chunks(model, text)
    assert len(pieces) > 1
    assert all(len(model.tokenizer(piece)["input_ids"]) <= model.window for piece in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing dropped
