"""Reading Discord on a member's behalf: what /summarize takes from a file, a message link
or the channel's history. The bot may see more than the member; everything read for a
member passes ``check_read_access`` with the member's own permissions, as they are at the
moment of reading; a conversation reads nothing of a channel's history for a member whom
``may_read_history`` refuses."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import discord

from bot.documents import (
    KINDS,
    MAX_DOCUMENT_BYTES,
    TEXT_SUFFIXES,
    is_document,
    read_document_soon,
)
from handlers.base import InvalidInput

# Snowflakes have at most 20 digits; int() raises ValueError past 4,300 of them.
MESSAGE_LINK = re.compile(
    r"https://(?:\w+\.)?discord(?:app)?\.com/channels/(\d{1,20})/(\d{1,20})/(\d{1,20})"
)

Readable = discord.abc.GuildChannel | discord.Thread


UNREADABLE = "points to messages you cannot read"
"""One line for every link or history a member may not read: a hidden channel, a missing
one and a missing message alike, so that the answer tells nothing of what exists."""


async def may_read_history(member: discord.abc.User, place: Readable) -> bool:
    """Whether ``member`` may read ``place``'s earlier messages now: View Channel and Read
    Message History from the channel's current overwrites and the member's current roles
    (not an interaction's snapshot, which a moderator may have just made stale), and for a
    private thread, membership of it (or Manage Threads), which discord.py's thread
    permissions leave out."""
    current = place.guild.get_member(member.id) or member
    if not isinstance(current, discord.Member):
        return False
    try:
        allowed = place.permissions_for(current)
    except discord.ClientException:  # a thread whose channel is not in the cache
        return False
    if not (allowed.view_channel and allowed.read_message_history):
        return False
    if isinstance(place, discord.Thread) and place.is_private() and not allowed.manage_threads:
        try:
            await place.fetch_member(member.id)
        except discord.HTTPException:
            return False
    return True


async def check_read_access(member: discord.abc.User, place: Readable, option: str) -> None:
    """Refuse, naming ``option``, unless ``member`` may read ``place``'s history."""
    if not isinstance(member, discord.Member):
        raise InvalidInput(option, "points to a server channel; use it from that server")
    if not await may_read_history(member, place):
        raise InvalidInput(option, UNREADABLE)


async def check_here(interaction: discord.Interaction, option: str) -> None:
    """Refuse, naming ``option``, unless the member may read the history of the place the
    interaction came from: their own DM, or a server place they may read. One the bot
    cannot see (not in its cache) is refused rather than taken as readable."""
    place = interaction.channel
    if isinstance(place, Readable):
        await check_read_access(interaction.user, place, option)
    elif interaction.guild_id is not None or not isinstance(place, discord.DMChannel):
        raise InvalidInput(option, UNREADABLE)


def summarize_source(
    interaction: discord.Interaction,
    text: str | None,
    messages: int | None,
    link: str | None,
    file: discord.Attachment | None,
    can_read: bool,
    max_chars: int | None = None,
) -> Callable[[], Awaitable[str]]:
    """Check what can be checked at once (exactly one source, its form, whether reading is
    on) and return the reader that fetches the text after the interaction is deferred;
    both raise ``InvalidInput`` naming the option to fix."""
    given = [name for name, value in (("text", text), ("messages", messages), ("link", link),
             ("file", file)) if value]  # fmt: skip
    if len(given) != 1:
        raise InvalidInput("text", "give exactly one of text, messages, link or file")
    if text:
        return _as_given(text)
    if file is not None:
        if not is_document(file.filename):
            raise InvalidInput("file", f"attach {KINDS}")
        if file.size > MAX_DOCUMENT_BYTES:
            raise InvalidInput("file", f"is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB")
        return lambda: read_file(file, max_chars)
    option = "messages" if messages else "link"
    if not can_read:
        raise InvalidInput(
            option, "reading messages is off on this bot (its admin can enable BOT_READ_MESSAGES)"
        )
    if link:
        match = MESSAGE_LINK.fullmatch(link.strip())
        if match is None or int(match[1]) != interaction.guild_id:
            raise InvalidInput("link", "must be a link to a message in this server")
        return lambda: read_link(interaction, int(match[2]), int(match[3]), max_chars)
    assert messages is not None
    return lambda: read_history(interaction, messages)


def material_source(
    interaction: discord.Interaction,
    source: str | None,
    file: discord.Attachment | None,
    can_read: bool,
    max_chars: int,
) -> Callable[[], Awaitable[str]]:
    """``summarize_source`` for commands that take one ``source`` (a text, or a link to a
    message) or a ``file``: each refusal names the option the member filled in."""
    if (source is None) == (file is None):
        raise InvalidInput("source", "give a text or a message link, or attach a file")
    option = "file" if file is not None else "source"
    link = source if source is not None and MESSAGE_LINK.fullmatch(source.strip()) else None
    text = None if link is not None else source
    try:
        read = summarize_source(interaction, text, None, link, file, can_read, max_chars)
    except InvalidInput as exc:
        raise InvalidInput(option, exc.message) from None
    if text is not None and len(text) > max_chars:
        raise InvalidInput("source", f"is over {max_chars:,} characters; send a part of it")

    async def read_material() -> str:
        try:
            material = await read()
        except InvalidInput as exc:
            raise InvalidInput(option, exc.message) from None
        if len(material) > max_chars:
            raise InvalidInput(option, f"holds over {max_chars:,} characters; send a part of it")
        return material

    return read_material


async def message_text(
    message: discord.Message, max_chars: int | None = None, option: str = "message"
) -> str:
    """What a message says, with the text of the documents attached to it: what the
    Summarize and Translate menus take (the member has the message in front of them)."""
    parts = [message.content] if message.content.strip() else []
    for file in message.attachments:
        if is_document(file.filename):
            if file.size > MAX_DOCUMENT_BYTES:
                said = f"has a document larger than {MAX_DOCUMENT_BYTES // 2**20} MiB"
                raise InvalidInput(option, said)
            try:
                parts.append(await read_file(file, max_chars))
            except InvalidInput as exc:
                raise InvalidInput(option, f"{file.filename}: {exc.message}") from None
    text = "\n\n".join(parts)
    if max_chars is not None and len(text) > max_chars:
        raise InvalidInput(option, f"is over {max_chars:,} characters; send a part of it")
    return text


def _as_given(text: str) -> Callable[[], Awaitable[str]]:
    async def read() -> str:
        return text

    return read


_READ: dict[tuple[int, str, int, int | None], str] = {}
"""The text of recently read documents, by attachment (and the most read): a conversation
reads the documents of its reply chain again at every turn, each in a process of its own."""
_READ_KEPT = 64


async def read_file(file: discord.Attachment, max_chars: int | None = None) -> str:
    """The text of an attached document (PDF, Word, slides, Markdown, HTML, plain text),
    read in a process of its own (bot/documents.py), at most ``max_chars`` of it."""
    if file.filename.lower().endswith(TEXT_SUFFIXES):  # read at once, in this process
        return await read_document_soon(file.filename, await file.read(), max_chars)
    key = (file.id, file.filename, file.size, max_chars)
    if key not in _READ:
        text = await read_document_soon(file.filename, await file.read(), max_chars)
        if len(_READ) >= _READ_KEPT:
            _READ.pop(next(iter(_READ)))
        _READ[key] = text
    return _READ[key]


async def read_link(
    interaction: discord.Interaction, channel_id: int, message_id: int, max_chars: int | None = None
) -> str:
    """The linked message, with its documents, once the member's read access is checked."""
    guild = interaction.guild
    place = guild.get_channel_or_thread(channel_id) if guild is not None else None
    if not isinstance(place, Readable) or not isinstance(place, discord.abc.Messageable):
        raise InvalidInput("link", UNREADABLE)
    await check_read_access(interaction.user, place, "link")
    try:
        message = await place.fetch_message(message_id)
    except discord.HTTPException:
        raise InvalidInput("link", UNREADABLE) from None
    return await message_text(message, max_chars, "link")


async def read_history(interaction: discord.Interaction, limit: int) -> str:
    """The ``limit`` messages before the command, oldest first, with their authors' names."""
    channel = interaction.channel
    if isinstance(channel, Readable):
        await check_read_access(interaction.user, channel, "messages")
    elif not isinstance(channel, discord.DMChannel):  # a DM is the member's own to read
        raise InvalidInput("messages", "this channel has no history I can read")
    before = discord.Object(interaction.id)  # not the reply this command just deferred
    lines = [f"{m.author.display_name}: {m.content}"
             async for m in channel.history(limit=limit, before=before) if m.content]  # fmt: skip
    return "\n".join(reversed(lines))
