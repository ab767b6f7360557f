"""A Discord message as it is read aloud: what a listener would want said, and nothing a
speech model would spell out letter by letter (links, ids, markup) or should not say at
all (spoilers).

Discord-free: the cog passes the names that mentions stand for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import emoji

_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_SPOILER = re.compile(r"\|\|.+?\|\|", re.DOTALL)
_LINK = re.compile(r"<?https?://\S+>?")
_MASKED_LINK = re.compile(r"\[([^\]]+)\]\(<?https?://[^)\s]+>?\)")
_MENTION = re.compile(r"<(@!?|@&|#)(\d+)>")
_SLASH_COMMAND = re.compile(r"</([\w -]+):\d+>")
_CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_TIMESTAMP = re.compile(r"<t:-?\d+(?::\w)?>")
_PAIRED_MARKUP = re.compile(r"(\*\*\*|\*\*|\*|~~|__|(?<!\w)_)(?=\S)(.{1,300}?)(?<=\S)\1(?!\w)")
"""Bold, italics, underline and strikethrough around at most 300 characters: a bound, so
that a message of unclosed ``*`` costs a linear scan, not a quadratic one."""
_MARKUP_RUN = re.compile(r"([*_~|])\1{3,}")
"""Four or more of one markup character: a divider, not words."""
_MARKUP_DEPTH = 3
"""Nested markup removed, outermost first (``***_x_***``); more is left as it is."""
_LINE_MARKUP = re.compile(r"^[ \t]*(?:>>> |> |#{1,3} |-# |[-*] )", re.MULTILINE)
_SPACE = re.compile(r"\s+")
_AND_SO_ON = ", and so on"


def speakable(text: str, names: Mapping[str, str] | None = None) -> str:
    """``text`` for speech: code blocks, links and spoilers said as such, mentions as the
    names they stand for (``names`` maps ``@123``, ``@&5`` and ``#7`` to them), custom
    emoji by their names, markup and other emoji dropped. Empty when nothing in it has a
    letter or a digit to say."""
    names = names or {}
    text = _CODE_BLOCK.sub(" (code) ", text)
    text = _INLINE_CODE.sub(lambda m: m.group(0).strip("`"), text)
    text = _SPOILER.sub(" (a spoiler) ", text)
    text = _MASKED_LINK.sub(r"\1", text)
    text = _LINK.sub(" (a link) ", text)
    text = _SLASH_COMMAND.sub(r"/\1", text)
    text = _CUSTOM_EMOJI.sub(lambda m: " " + m.group(1).replace("_", " ") + " ", text)
    text = _TIMESTAMP.sub(" (a time) ", text)
    text = _LINE_MARKUP.sub("", text)
    text = _MARKUP_RUN.sub(" ", text)
    for _ in range(_MARKUP_DEPTH):
        unmarked = _PAIRED_MARKUP.sub(r"\2", text)
        if unmarked == text:
            break
        text = unmarked
    # Names after markup, so that markup characters in them are said as they are.
    text = _MENTION.sub(lambda m: names.get(f"{m.group(1).rstrip('!')}{m.group(2)}", ""), text)
    text = _without_emoji(text)
    text = _SPACE.sub(" ", text).strip()
    return text if any(c.isalnum() for c in text) else ""


SAID_SYMBOLS = frozenset({"\u00a9", "\u00ae", "\u2122"})
"""Emoji that are also symbols a speech model can say: ©, ®, ™."""
PUNCTUATION = {"\u203c": "!!", "\u2049": "!?"}
"""‼ and ⁉ written as text (an emoji's ‼️ is dropped like any other)."""
_LEFT_OVER = re.compile(
    "[\ufe0e\ufe0f\u20e3\U0001f1e6-\U0001f1ff\ud800-\udfff]|\u200d(?=\\s|$)|(?:^|(?<=\\s))\u200d"
)
"""What an emoji leaves behind or what is no emoji alone: style selectors, a keycap's
frame, a lone regional indicator, a joiner left beside a space (not the joiners of Indic
scripts, between letters and marks); and lone surrogates (no text at all)."""


def _said_instead(found: str, data: dict[str, object]) -> str:
    """What is said for an emoji: a keycap's digit (``1️⃣`` is "1"), ©, ® and ™ as they
    are, ‼ and ⁉ written as text as punctuation, nothing for the rest."""
    if found.endswith("\u20e3"):
        return found[0]
    if found in PUNCTUATION:
        return PUNCTUATION[found]
    plain = found.replace("\ufe0f", "").replace("\ufe0e", "")
    return plain if plain in SAID_SYMBOLS else ""


def _without_emoji(text: str) -> str:
    """Emoji (every emoji and pictograph the ``emoji`` library knows, with their skin tones,
    joiners and style selectors) dropped: a speech model has no sound for them. Other
    symbols (°, №) and the joiners some scripts spell with stay."""
    return _LEFT_OVER.sub("", emoji.replace_emoji(text, replace=_said_instead))


def spoken_line(
    author: str, text: str, max_chars: int, say_names: bool = True, fits: int | None = None
) -> str:
    """What is said for one message: "name said: ..." (unless ``say_names`` is off), the
    text cut at a word near ``max_chars``, and the whole line at most ``fits`` characters
    (the longest text the speech task takes)."""
    prefix = f"{author} said: " if say_names else ""
    if fits is not None and len(prefix) + len(text) > fits:
        max_chars = min(max_chars, fits - len(prefix) - len(_AND_SO_ON))
    if len(text) > max_chars:
        head = text[: max(max_chars, 1) + 1]  # a word ending right at the limit stays whole
        cut = head.rsplit(" ", 1)[0] if " " in head else text[: max(max_chars, 1)]
        text = f"{cut}{_AND_SO_ON}"
    return prefix + text
