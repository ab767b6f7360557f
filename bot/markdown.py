"""Text the bot posts on someone else's behalf (a member's input, a model's output): cut to
Discord's limits, and never rendered as the bot's own links, headings or fine print."""

from __future__ import annotations

import re

MESSAGE_LIMIT = 2000
FENCE = "```"

_HEADING = re.compile(  # a heading or subtext at a line's start, also in quotes and lists
    r"(?:[ \t]*(?:>{1,3}|[-*+]|\d+\.)[ \t]+)*[ \t]*(?=(?:#{1,3}|-#)[ \t])"
)
_FENCE = re.compile(r"```[^`\n]*\n")
"""A code block's first line, at a line's start."""
_LINK_CLOSE = re.compile(r"\]\s*\(")
_SPANS = {"`": "`", "*": "*", "_": "_", "~": "~", "|": "|", "<": ">"}
"""What opens a Discord span that may run over lines (code, emphasis, underline,
strikethrough, spoiler, an autolink), and what may close it: inside a code block, which
leaves the rest of the block as text."""


def neutralize(text: str) -> str:
    """Escape masked links and line-leading headings and subtext outside code blocks.

    ``[Claim Nitro](https://...)`` shows a text other than where it leads, and ``# ``,
    ``-# `` lines pass for the bot's own headings and notes; escaped, Discord shows them
    as typed. Bold, lists and code blocks are left as they are.

    It reads the text as a renderer does, not as characters: a ``[`` already escaped (an
    odd number of backslashes before it) is left, one after an escaped backslash is not.
    Only a code block that every renderer sees as one is skipped (``_code_block_end``);
    elsewhere, inline code included, every ``[`` that may open a link is escaped.
    """
    link_closes = [m.start() for m in _LINK_CLOSE.finditer(text)]
    last_link_close = link_closes[-1] if link_closes else -1
    out: list[str] = []
    closers: set[str] = set()  # what may close a span opened outside code blocks so far
    at, end = 0, len(text)
    while at < end:
        if at == 0 or text[at - 1] == "\n":
            block_end = _code_block_end(text, at, closers)
            if block_end is not None:
                out.append(text[at:block_end])
                at = block_end
                continue
            heading = _HEADING.match(text, at)
            if heading is not None:
                out.append(heading.group() + "\\")
                closers.update(_SPANS[c] for c in heading.group() if c in _SPANS)
                at = heading.end()
        char = text[at]
        if char == "\\" and at + 1 < end and _escapable(text[at + 1]):
            out.append(text[at : at + 2])
            at += 2
            continue
        if char in _SPANS:
            closers.add("```" if text.startswith("```", at) else _SPANS[char])
        out.append("\\[" if char == "[" and at < last_link_close else char)
        at += 1
    return "".join(out)


def _escapable(char: str) -> bool:
    """Whether a backslash before ``char`` escapes it: anything but ASCII letters, digits
    and spaces (Discord); CommonMark escapes only ASCII punctuation, all that matters here."""
    return not (char.isascii() and char.isalnum()) and not char.isspace()


def _code_block_end(text: str, at: int, closers: set[str]) -> int | None:
    """Where the code block starting at ``at`` (a line's start) ends, after its closing
    fence; None unless every renderer sees one there.

    CommonMark's fenced block and Discord's code block agree on a block whose opening
    fence starts its line with exactly three backticks, whose closing fence, the next
    three backticks in the text, is exactly three alone on a line, and with something
    other than line breaks between them (Discord's block needs a character of content, and
    would take the closing fence for it). Discord has no block structure, though: a span
    opened earlier may close inside the block (one of ``closers`` is in it), and the rest
    of it is then text; so may three backticks met earlier. Such a block is not skipped.
    """
    opening = _FENCE.match(text, at)
    if opening is None or text.startswith("````", at) or "```" in closers:
        return None
    close = text.find("```", opening.end())
    if close < 0 or text[close - 1] != "\n" or text.startswith("````", close):
        return None
    if not text[opening.end() : close].strip("\n"):
        return None
    line_end = text.find("\n", close)
    line_end = len(text) if line_end < 0 else line_end
    if text[close + 3 : line_end].strip(" \t"):
        return None
    inside = text[at + 3 : close]
    if any(closer in inside for closer in closers):
        return None
    return line_end


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
