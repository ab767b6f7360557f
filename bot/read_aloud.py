"""A Discord message as it is read aloud: what a listener would want said, and nothing a
speech model would spell out letter by letter (links, ids, markup).

Discord-free: the cog passes the names that mentions stand for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_LINK = re.compile(r"<?https?://\S+>?")
_MASKED_LINK = re.compile(r"\[([^\]]+)\]\(<?https?://[^)\s]+>?\)")
_MENTION = re.compile(r"<(@!?|@&|#)(\d+)>")
_CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_TIMESTAMP = re.compile(r"<t:\d+(?::\w)?>")
_MARKUP = re.compile(r"(\*\*|__|~~|\|\||[*_>#])")
_SPACE = re.compile(r"\s+")


def speakable(text: str, names: Mapping[str, str] | None = None) -> str:
    """``text`` for speech: code blocks and links said as such, mentions as the names they
    stand for (``names`` maps ``@123``, ``@&5`` and ``#7`` to them), custom emoji by
    their names, markup dropped."""
    names = names or {}
    text = _CODE_BLOCK.sub(" (code) ", text)
    text = _INLINE_CODE.sub(lambda m: m.group(0).strip("`"), text)
    text = _MASKED_LINK.sub(r"\1", text)
    text = _LINK.sub(" (a link) ", text)
    text = _MENTION.sub(lambda m: names.get(f"{m.group(1).rstrip('!')}{m.group(2)}", ""), text)
    text = _CUSTOM_EMOJI.sub(lambda m: m.group(1).replace("_", " "), text)
    text = _TIMESTAMP.sub(" (a time) ", text)
    text = _MARKUP.sub("", text)
    return _SPACE.sub(" ", text).strip()


def spoken_line(author: str, text: str, max_chars: int, say_names: bool = True) -> str:
    """What is said for one message: "name said: ..." (unless ``say_names`` is off), the
    text cut at a word near ``max_chars``."""
    if len(text) > max_chars:
        head = text[: max_chars + 1]  # a word ending right at the limit stays whole
        cut = head.rsplit(" ", 1)[0] if " " in head else text[:max_chars]
        text = f"{cut}, and so on"
    return f"{author} said: {text}" if say_names else text
