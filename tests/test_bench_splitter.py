"""bench/splitter.py without the library it compares with: its text has every kind of
content, and its cuts are classified by the boundary they fall at."""

from __future__ import annotations

from bench.splitter import classify_cuts, mixed_text
from handlers.text import split_to_fit


def test_the_splitter_bench_text_is_mixed_and_its_cuts_are_classified() -> None:
    """Ours never cuts inside a URL or code that fits a piece."""
    text = mixed_text(20_000)
    assert len(text) == 20_000 and "https://" in text and "```" in text and "\u3002" in text
    pieces = split_to_fit(text, len, 400)
    ends = [sum(len(p) for p in pieces[: k + 1]) for k in range(len(pieces) - 1)]
    cuts = classify_cuts(text, ends)
    assert "inside a URL or inline code" not in cuts and cuts.get("paragraph", 0) > 0
