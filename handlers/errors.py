"""The errors a handler shows to the member who caused them, and the checks of what members
type. Torch-free: front ends catch and raise these before any model is loaded."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from handlers.portable import PortableError


class HandlerError(PortableError):
    """An error whose message is safe and useful to show to the user who caused it."""


class InvalidInput(HandlerError):
    """The request cannot be served as given; ``option`` names the offending field."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


def check_length(option: str, text: str, limit: int) -> None:
    """Refuse text over ``limit`` characters, saying how long it was."""
    if len(text) > limit:
        raise InvalidInput(option, f"is {len(text)} characters long; the limit is {limit}")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
"""Unicode categories of controls, format marks (zero-width, direction) and spaces."""


def check_text(option: str, text: str, limit: int, *, required: bool = True) -> None:
    """Refuse text a model cannot take: too long, broken, or (when ``required``) blank.

    The length comes first, so a megabyte is refused before anything scans it. Lone
    surrogates (undecodable bytes on a command line, escapes in JSON) make tokenizers
    raise. Text of only spaces, controls, zero-width or direction marks tokenises as
    empty, so it counts as empty.
    """
    check_length(option, text, limit)
    if _LONE_SURROGATE.search(text):
        raise InvalidInput(option, "contains characters that are not valid Unicode")
    if required and all(unicodedata.category(c) in _INVISIBLE for c in text):
        raise InvalidInput(option, "is empty")


def quote(value: str, limit: int = 40) -> str:
    """User input as an error message may show it: short, quoted, controls escaped."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def terms_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    """Whole words or phrases, in any letter case; None when there are none to look for."""
    words = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
