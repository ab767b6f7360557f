"""Text the bot posts on someone else's behalf (a member's input, a model's output): cut to
Discord's limits, and never rendered as the bot's own links, headings or fine print."""

from __future__ import annotations

import re

MESSAGE_LIMIT = 2000
FENCE = "```"

_CODE = r"```[\s\S]*?```|``[^\n]+?``|`[^`\n]+`"
_MARKUP = re.compile(
    rf"(?P<code>{_CODE})"
    # where a heading or subtext begins a line, also inside quotes and list items
    r"|(?P<line>^(?:[ \t]*(?:>{1,3}|[-*+]|\d+\.)[ \t]+)*[ \t]*(?=(?:#{1,3}|-#)[ \t]))"
    r"|(?P<open>\[)",
    re.MULTILINE,
)
_LINK_CLOSE = re.compile(r"\]\s*\(")


def neutralize(text: str) -> str:
    """Escape masked links and line-leading headings and subtext outside code.

    ``[Claim Nitro](https://...)`` shows a text other than where it leads, and ``# ``,
    ``-# `` lines pass for the bot's own headings and notes; escaped, Discord shows them
    as typed. Bold, lists and code are left as they are.
    """
    closers = [m.start() for m in _LINK_CLOSE.finditer(text)]
    last_closer = closers[-1] if closers else -1

    def escape(match: re.Match[str]) -> str:
        if match["code"] is not None:
            return match["code"]
        if match["line"] is not None:
            return match["line"] + "\\"
        return "\\[" if match.start() < last_closer else "["

    return _MARKUP.sub(escape, text)


def split_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at paragraph, line or word boundaries
    where possible. A code block cut in two is closed and reopened, so that each piece
    shows (and escapes) the same code as the whole."""
    pieces: list[str] = []
    rest = text
    room = limit - len(FENCE) - 1  # for closing a code block the cut leaves open
    while len(rest) > limit:
        cut = max(rest.rfind(sep, 0, room) for sep in ("\n\n", "\n", " "))
        if cut <= room // 2:
            cut = room - 1 if rest[room - 1] == "\\" else room  # never split an escape
        piece, rest = rest[:cut], rest[cut:]
        if piece.count(FENCE) % 2:
            pieces.append(piece.rstrip("\n") + "\n" + FENCE)
            rest = FENCE + "\n" + rest.removeprefix("\n")
        else:
            pieces.append(piece.rstrip())
            rest = rest.lstrip()
    pieces.append(rest)
    return [p for p in pieces if p]


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` in one message: its first piece and an ellipsis when it is longer."""
    if len(text) <= limit:
        return text
    first = split_text(text, limit - 2)[0]
    return first + ("\n…" if first.endswith(FENCE) else "…")
