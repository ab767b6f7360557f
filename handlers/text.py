"""Text cut to fit a model: one splitter for every task that feeds a model more text than
its window takes (summarize, translate, speak).

``split_to_fit`` cuts at the best boundary available, in this order: a blank line (a
paragraph), a line break, a sentence's end (Western and CJK marks), a clause (commas,
semicolons, colons, dashes, and their CJK forms), a space, a grapheme (what a reader sees as
one character, from the ``regex`` module's ``\\X``: an emoji with its skin tone or a ZWJ
family, a letter with its accents), and last a code point. It never cuts inside a URL or an
inline code span, nor inside a fenced code block anywhere but at its line breaks, unless
that URL or code alone is too long. Each piece is measured with the task's own ``size``
(its tokenizer), and nothing is lost: the pieces joined are the text, whitespace included,
so a caller that strips them loses only whitespace.

Own code rather than semantic-text-splitter (MIT, Rust), measured side by side by
``bench/splitter.py`` on 100,000 characters of mixed text at 256 tokens a piece
(``docs/benchmarks.md``). Both fit every piece and join back into the text, at the same
speed (byte-level BPE: 0.80 s here, 0.98 s the library through a Python callback, 0.50 s
through its Rust tokenizer binding, which slow SentencePiece tokenizers such as Marian's
cannot use; SentencePiece: 0.06 s and 0.07 s). The library fills pieces fuller (mean 83%
of the budget against 74%: 463 pieces against 519), since it merges what is left of a
paragraph with the next; but it has no clause level, and it cut inside a URL or inline code
16 times (UAX #29 word boundaries fall at their slashes and dots) where this cut twice, in
URLs longer than a piece. A summary or a translation of a cut URL is worse than one more
piece, so this is kept.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Iterator

import regex

_URL = r"https?://[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"
_INLINE_CODE = r"`[^`\n]+`"
_FENCE = r"```.*?(?:```|\Z)"
_ATOMS = re.compile(f"{_URL}|{_INLINE_CODE}")
"""What no boundary but a grapheme's may cut: URLs, inline code."""
_FENCES = re.compile(_FENCE, re.DOTALL)
"""Fenced code: cut only at its line breaks."""

PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
LINE = re.compile(r"\n\s*")
# Western end marks and closing quotes or brackets, then a space; CJK full-width end marks
# and closing brackets, with or without one.
SENTENCE = re.compile(
    r"[.!?\u2026]+[\"'\u201d\u2019\u00bb)\]]*\s+|[\u3002\uff01\uff1f\uff61]+[\u300d\u300f\uff09\u201d\u2019]*\s*"
)
# Commas, semicolons, colons and dashes, then a space; their CJK full-width forms.
CLAUSE = re.compile(r"[,;:\u2014\u2013]\s+|[\u3001\uff0c\uff1b\uff1a]\s*")
WORD = re.compile(r"\s+")
LEVELS = (PARAGRAPH, LINE, SENTENCE, CLAUSE, WORD)
"""Boundaries from the best to the worst; graphemes and code points come after."""


def split_to_fit(text: str, size: Callable[[str], int], budget: int) -> list[str]:
    """Pieces of ``text`` whose ``size`` is at most ``budget``, cut at the best boundaries,
    joining back into ``text``. A lone code point bigger than the budget is its own piece."""
    if budget < 1:
        raise ValueError(f"budget must be positive, got {budget}")
    if not text:
        return []
    return list(_split(text, 0, size, budget))


def _split(text: str, level: int, size: Callable[[str], int], budget: int) -> Iterator[str]:
    if size(text) <= budget:
        yield text
        return
    if level < len(LEVELS):
        units = _units(text, LEVELS[level], level != LEVELS.index(LINE))
    elif level == len(LEVELS):
        units = regex.findall(r"\X", text)
    else:
        units = list(text)
    if len(units) == 1:
        if level <= len(LEVELS):
            yield from _split(text, level + 1, size, budget)
        else:  # one code point over the budget: it goes as it is, never dropped
            yield text
        return
    yield from _pack(units, level, size, budget)


def _pack(units: list[str], level: int, size: Callable[[str], int], budget: int) -> Iterator[str]:
    """Consecutive units joined while they fit, measured as they are added (a unit's size
    once; a piece's when it is closed, since tokens can merge across a boundary)."""
    sizes = [size(unit) for unit in units]
    start = 0
    while start < len(units):
        if sizes[start] > budget:
            yield from _split(units[start], level + 1, size, budget)
            start += 1
            continue
        end, used = start + 1, sizes[start]
        while end < len(units) and used + sizes[end] <= budget:
            used += sizes[end]
            end += 1
        while end - start > 1 and size("".join(units[start:end])) > budget:
            end -= 1  # merged tokens made it larger: give back the last unit
        yield "".join(units[start:end])
        start = end


def _units(text: str, boundary: re.Pattern[str], protect_fences: bool) -> list[str]:
    """``text`` cut after each ``boundary`` that falls outside the protected spans."""
    spans = [m.span() for m in _ATOMS.finditer(text)]
    if protect_fences:
        spans = sorted(spans + [m.span() for m in _FENCES.finditer(text)])
    reach = list(itertools.accumulate((b for _, b in spans), max))  # spans may nest
    starts = [a for a, _ in spans]

    def inside(cut: int) -> bool:
        before = bisect.bisect_left(starts, cut)  # the spans that start before the cut
        return before > 0 and reach[before - 1] > cut

    cuts = [m.end() for m in boundary.finditer(text) if 0 < m.end() < len(text)]
    edges = [0, *(cut for cut in cuts if not inside(cut)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges) if b > a]
