"""Text cut to fit a model: one splitter for every task that feeds a model more text than
its window takes (summarize, translate, speak).

``split_to_fit`` cuts at the best boundary available, in this order: a blank line (a
paragraph), a line break, a sentence's end (Western and CJK marks), a clause (commas,
semicolons, colons, dashes, and their CJK forms), a space, a grapheme (what a reader sees as
one character, from the ``regex`` module's ``\\X``: an emoji with its skin tone or a ZWJ
family, a letter with its accents), and last a code point. It never cuts inside a URL or an
inline code span, nor inside a fenced code block anywhere but at its line breaks, unless
that URL or code alone is too long. At each level it joins as many units as fit, measuring
the joined text itself with the task's own ``size`` (its tokenizer: tokens merge across a
boundary, and special tokens count once), found by galloping then bisecting, so a piece
costs a few measurements whatever its units. Nothing is lost: the pieces joined are the
text, whitespace included, so a caller that normalizes whitespace loses only that.

Own code rather than semantic-text-splitter (MIT, Rust), measured side by side by
``bench/splitter.py`` on 100,000 characters of mixed text at 256 tokens a piece
(``docs/benchmarks.md``). Both fit every piece and join back into the text, at speeds of
one order (byte-level BPE: 0.79 s here, 1.49 s the library through a Python callback, 0.59 s
through its Rust tokenizer binding, which slow SentencePiece tokenizers such as Marian's
cannot use; SentencePiece: 0.05 s and 0.08 s). The library fills pieces fuller (mean 83%
of the budget against 74%: 463 pieces against 518), since it merges what is left of a
paragraph with the next; but it has no clause level, and it cut inside a URL or code 17
times (UAX #29 word boundaries fall at their slashes and dots) where this cut twice, in
URLs longer than a piece. A summary or a translation of a cut URL is worse than one more
piece, so this is kept.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Literal

import regex

_URL = r"(?:https?://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"
_INLINE_CODE = r"`[^`\n]+`"
_ATOMS = re.compile(f"{_URL}|{_INLINE_CODE}")
"""What no boundary but a grapheme's may cut: URLs, inline code."""
_FENCES = re.compile(r"```.*?```", re.DOTALL)
"""Fenced code, closed (an unclosed fence protects nothing): cut only at its line breaks."""

PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
LINE = re.compile(r"\n\s*")
# Western end marks and closing quotes or brackets, then a space; CJK full-width end marks
# and closing brackets, with or without one. A run of marks is one end (possessive, and
# only from its first mark: a long run costs one pass).
SENTENCE = re.compile(
    r"(?<![.!?\u2026])[.!?\u2026]++[\"'\u201d\u2019\u00bb)\]]*+\s+"
    r"|(?<![\u3002\uff01\uff1f\uff61\uff0e])[\u3002\uff01\uff1f\uff61\uff0e]++"
    r"[\u300d\u300f\uff09\u3011\u300b\u3009\u201d\u2019]*+\s*"
)
# Commas, semicolons, colons and dashes, then a space; their CJK full-width forms.
CLAUSE = re.compile(r"[,;:\u2014\u2013]\s+|[\u3001\uff0c\uff1b\uff1a]\s*")
WORD = re.compile(r"\s+")
LEVELS = {"paragraph": PARAGRAPH, "line": LINE, "sentence": SENTENCE, "clause": CLAUSE,
          "word": WORD}  # fmt: skip
"""Boundaries from the best to the worst; graphemes and code points come after."""
GRAPHEME, CODE_POINT = len(LEVELS), len(LEVELS) + 1
Level = Literal["paragraph", "line", "sentence", "clause", "word"]


def split_to_fit(
    text: str, size: Callable[[str], int], budget: int, apart: Level | None = None
) -> list[str]:
    """Pieces of ``text`` whose ``size`` is at most ``budget``, cut at the best boundaries,
    joining back into ``text``. Boundaries down to ``apart`` always cut, even where the
    text would fit (speech says each sentence on its own). A lone code point bigger than
    the budget is its own piece."""
    if budget < 1:
        raise ValueError(f"budget must be positive, got {budget}")
    if not text:
        return []
    split = _Splitter(text, size, budget, -1 if apart is None else list(LEVELS).index(apart))
    return [text[a:b] for a, b in split.pieces(0, len(text), 0)]


class _Splitter:
    def __init__(self, text: str, size: Callable[[str], int], budget: int, apart: int) -> None:
        self.text, self.size, self.budget, self.apart = text, size, budget, apart
        atoms = [m.span() for m in _ATOMS.finditer(text)]
        fences = [m.span() for m in _FENCES.finditer(text)]
        self.guarded = {"line": _covered(atoms), "other": _covered(atoms + fences)}

    def fits(self, a: int, b: int) -> bool:
        return self.size(self.text[a:b]) <= self.budget

    def pieces(self, a: int, b: int, level: int) -> Iterator[tuple[int, int]]:
        if level > self.apart and self.fits(a, b):
            yield a, b
            return
        edges = self._edges(a, b, level)
        if len(edges) == 2:  # no boundary of this kind here
            if level < CODE_POINT:
                yield from self.pieces(a, b, level + 1)
            else:  # one code point over the budget: it goes as it is, never dropped
                yield a, b
            return
        if level <= self.apart:
            for start, end in itertools.pairwise(edges):
                yield from self.pieces(start, end, level + 1)
            return
        yield from self._pack(edges, level)

    def _pack(self, edges: list[int], level: int) -> Iterator[tuple[int, int]]:
        """As many consecutive units as fit in each piece: the longest fitting run found by
        galloping, then bisecting, over the number of units (a longer text never takes
        fewer tokens, near enough; only measured fits are kept)."""
        i, last = 0, len(edges) - 1
        while i < last:
            start = edges[i]
            if not self.fits(start, edges[i + 1]):
                yield from self.pieces(start, edges[i + 1], level + 1)
                i += 1
                continue
            good, bad, step = i + 1, None, 1
            while good < last:
                probe = min(good + step, last)
                if self.fits(start, edges[probe]):
                    good, step = probe, step * 2
                else:
                    bad = probe
                    break
            while bad is not None and bad - good > 1:
                middle = (good + bad) // 2
                good, bad = (middle, bad) if self.fits(start, edges[middle]) else (good, middle)
            yield start, edges[good]
            i = good

    def _edges(self, a: int, b: int, level: int) -> list[int]:
        """``a``, the cuts of this level's kind strictly between ``a`` and ``b`` that fall
        outside the guarded spans, and ``b``."""
        if level == GRAPHEME:
            cuts = [a + m.end() for m in regex.finditer(r"\X", self.text[a:b])][:-1]
        elif level == CODE_POINT:
            cuts = list(range(a + 1, b))
        else:
            name, pattern = list(LEVELS.items())[level]
            guarded = self.guarded["line" if name == "line" else "other"]
            cuts = [m.end() for m in pattern.finditer(self.text, a, b) if a < m.end() < b]
            cuts = [cut for cut in cuts if not guarded(cut)]
        return [a, *cuts, b]


def _covered(spans: list[tuple[int, int]]) -> Callable[[int], bool]:
    """Whether a cut falls strictly inside one of ``spans``."""
    inside = bytearray(max((b for _, b in spans), default=0) + 1)
    for a, b in spans:
        inside[a + 1 : b] = b"\x01" * max(b - a - 1, 0)
    return lambda cut: cut < len(inside) and bool(inside[cut])
