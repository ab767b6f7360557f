from __future__ import annotations

import pytest

from handlers.base import InvalidInput
from handlers.summarize import SummarizeModel, SummarizeRequest, SummarizeTask, split_sentences
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
    # The long text, section by section: progress counts its sections, then the whole.
    assert ctx.steps == [(results[0].chunks, results[0].chunks)]


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


def test_sentences_split_on_end_marks_and_newlines() -> None:
    assert split_sentences("One. Two! Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert split_sentences("\u4eca\u65e5\u3002\u660e\u65e5\uff01") == [
        "\u4eca\u65e5\u3002",
        "\u660e\u65e5\uff01",
    ]
