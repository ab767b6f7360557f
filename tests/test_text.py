"""handlers/text.py: one splitter that cuts at the best boundary and never drops text, proven
by properties over generated text with a byte-level BPE and a SentencePiece tokenizer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sentencepiece
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.text import split_to_fit
from tests.tinymodels import byte_level_chat_tokenizer, train_sentencepiece


def chars(piece: str) -> int:
    return len(piece)


def test_the_best_boundary_first_then_clauses_words_and_graphemes() -> None:
    text = "Short one. A clause here, then some more words\n\nsupercalifragilistic!"
    assert split_to_fit(text, chars, 12) == [
        "Short one. ", "A clause ", "here, ", "then some ", "more words\n\n", "supercalifra",
        "gilistic!",
    ]  # fmt: skip
    assert split_to_fit("One two. Three four! Five", chars, 12) == [
        "One two. ", "Three four! ", "Five",
    ]  # fmt: skip
    assert split_to_fit("x" * 30, chars, 12) == ["x" * 12, "x" * 12, "x" * 6]


def test_cjk_sentences_end_at_their_own_marks() -> None:
    assert split_to_fit("你好。今天天气很好。我们去公园吧。", chars, 12) == [
        "你好。今天天气很好。", "我们去公园吧。",
    ]  # fmt: skip
    assert split_to_fit("東京、大阪、京都と名古屋", chars, 6) == ["東京、大阪、", "京都と名古屋"]


def test_urls_and_code_are_cut_only_when_alone_too_long() -> None:
    url = "https://example.com/notes/week-3.pdf"
    text = f"See {url} and `python -m bot ask summarize`, then ask."
    pieces = split_to_fit(text, chars, 40)
    assert f"{url} " in pieces and "and `python -m bot ask summarize`, " in pieces
    fenced = "Run this:\n```\nx = 1. y = 2, z = 3\nprint(x)\n```\nDone."
    assert split_to_fit(fenced, chars, 24) == [  # at the code's line breaks only
        "Run this:\n```\n", "x = 1. y = 2, z = 3\n", "print(x)\n```\nDone.",
    ]  # fmt: skip
    assert "".join(split_to_fit(url, chars, 10)) == url  # alone too long: graphemes


def test_a_grapheme_is_never_cut_while_code_points_are_not_needed() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 7 code points
    keycap = "1\ufe0f\u20e3"
    assert split_to_fit(family * 3 + keycap, chars, 7) == [family, family, family, keycap]
    assert split_to_fit(family, chars, 3) == [
        "\U0001f468\u200d\U0001f469",
        "\u200d\U0001f467\u200d",
        "\U0001f466",
    ]


def test_boundaries_down_to_apart_always_cut_for_speech() -> None:
    text = "One. Two, three.\nFour"
    assert split_to_fit(text, chars, 100) == [text]
    assert split_to_fit(text, chars, 100, apart="sentence") == ["One. ", "Two, three.\n", "Four"]


def test_a_stray_or_unclosed_fence_protects_nothing_and_www_links_are_whole() -> None:
    closed = "```\ncode\n``` After the code comes a long sentence that needs cutting."
    *cut, _ = split_to_fit(closed, chars, 30)
    assert all(piece[-1].isspace() for piece in cut)  # at lines and spaces, never in a word
    assert split_to_fit("``` open fence. Then words go on, and on.", chars, 16) == [
        "``` open fence. ", "Then words go ", "on, ", "and on.",
    ]  # fmt: skip
    code = "Run `make test. Then ship` and www.example.com/week3. Then rest."
    pieces = split_to_fit(code, chars, 24)
    assert pieces == [  # the code span's sentence end is no sentence end
        "Run ", "`make test. Then ship` ", "and ", "www.example.com/week3. ", "Then rest.",
    ]  # fmt: skip


def test_long_runs_cost_a_few_measures_a_piece() -> None:
    """A piece is found by galloping then bisecting, not by measuring every unit."""
    measured: list[int] = []

    def size(piece: str) -> int:
        measured.append(len(piece))
        return len(piece)

    for text in ("." * 50_000, "a" * 50_000, " " * 50_000, "! ?" * 20_000):
        measured.clear()
        pieces = split_to_fit(text, size, 30)
        assert "".join(pieces) == text and len(measured) < 12 * len(pieces)


def test_bad_budgets_and_empty_text() -> None:
    assert split_to_fit("", chars, 5) == []
    with pytest.raises(ValueError, match="budget"):
        split_to_fit("text", chars, 0)


# Properties ---------------------------------------------------------------------------

LATIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéüß'", min_size=1,
                max_size=12)  # fmt: skip
CJK = st.text(alphabet="日本語文章東京大阪今天气很好我们去公园吧あいうえおカタカナ한국어",
              min_size=1, max_size=40)  # fmt: skip
EMOJI = st.sampled_from([
    "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\U0001f44d\U0001f3fd", "\U0001f1eb\U0001f1f7", "1\ufe0f\u20e3", "\u2b50", "\u231b",
    "\u25b6\ufe0f", "\u203c\ufe0f", "\U0001f3f3\ufe0f\u200d\U0001f308",
])  # fmt: skip
MARK = st.sampled_from([
    ". ", "! ", "? ", "\u2026 ", ", ", "; ", ": ", " \u2014 ", "\u3002", "\uff01", "\u3001",
    "\uff0c",
])  # fmt: skip
SPACE = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n \n", "   \n\n\n  ", "\u3000"])
URL = st.builds(
    lambda host, parts: f"https://{host}.example.com/" + "/".join(parts),
    st.text(alphabet="abcdefghij", min_size=1, max_size=8),
    st.lists(st.text(alphabet="abcdefghij0123456789-_?=&", min_size=1, max_size=12), max_size=8),
)
CODE = st.builds(
    lambda body, fenced: f"```\n{body}\n```" if fenced else f"`{body.replace(chr(10), ' ')}`",
    st.text(alphabet="abc xyz=().,;:\n", min_size=1, max_size=60),
    st.booleans(),
)
RUN = st.integers(20, 300).map(lambda n: "x" * n)
"""Latin without spaces: one word longer than most budgets."""
TEXT = st.lists(
    st.one_of(LATIN, LATIN, CJK, EMOJI, MARK, SPACE, SPACE, URL, CODE, RUN), max_size=60
).map("".join)


def bpe_size() -> Callable[[str], int]:
    tokenizer = byte_level_chat_tokenizer()
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def sentencepiece_size() -> Callable[[str], int]:
    processor = sentencepiece.SentencePieceProcessor(model_proto=train_sentencepiece())
    return lambda text: len(processor.encode(text))


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def size(request: pytest.FixtureRequest) -> Callable[[str], int]:
    return bpe_size() if request.param == "bpe" else sentencepiece_size()


@settings(max_examples=150, deadline=None)
@given(text=TEXT, budget=st.integers(4, 64))
def test_every_piece_fits_and_the_pieces_are_the_text(
    size: Callable[[str], int], text: str, budget: int
) -> None:
    pieces = split_to_fit(text, size, budget)
    assert "".join(pieces) == text  # nothing dropped, nothing reordered, whitespace kept
    assert all(piece for piece in pieces)
    assert all(size(piece) <= budget for piece in pieces), [
        (piece, size(piece)) for piece in pieces if size(piece) > budget
    ]


@settings(max_examples=100, deadline=None)
@given(text=TEXT)
def test_text_that_fits_is_one_piece(size: Callable[[str], int], text: str) -> None:
    budget = max(size(text), 1)
    assert split_to_fit(text, size, budget) == ([text] if text else [])
