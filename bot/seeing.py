"""Seeing members' images: the pictures a message carries, turned into a describe request.

/describe and the Describe image menu take their images here, so that both refuse the same
files with the same line and download no more than ``BOT_DESCRIBE__MAX_BYTES`` each.
Images are opened in the worker, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import urlsplit

import discord
from discord.http import HTTPClient

from bot.delivery import Reply
from handlers.audio import over
from handlers.base import InvalidInput
from handlers.describe import DescribeRequest, DescribeResult

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
"""What a file with no content type is taken to be an image by."""
DISCORD_MEDIA_HOSTS = ("media.discordapp.net", "cdn.discordapp.com")
"""Where Discord serves the images it unfurled from links: nothing else is fetched, so a
message cannot make the bot request an address of its choosing."""


@dataclass(frozen=True)
class Picture:
    """An image a message shows: an attached file, an image Discord unfurled from a link in
    it, or either of a message it forwards."""

    message_id: int
    position: int
    """Its place among the message's pictures: with the message, what its description is
    kept under."""
    size: int | None
    """Bytes, where Discord says before the download (not for an unfurled link)."""
    spoiler: bool
    explicit: bool
    """Discord's own explicit-content flag."""
    fetch: Callable[[], Awaitable[bytes]]
    width: int | None = None
    """Its size in pixels, where Discord says."""
    height: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.message_id, self.position


def is_image(attachment: discord.Attachment) -> bool:
    """A picture the models can read: any image type but a vector drawing (SVG)."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        return content_type.startswith("image/") and content_type != "image/svg+xml"
    return PurePath(attachment.filename).suffix.lower() in IMAGE_SUFFIXES


def _unfurled(
    embed: discord.Embed,
) -> tuple[str, discord.AttachmentFlags, int | None, int | None] | None:
    """The proxied address, flags and size of the image a link to an image unfurled into,
    if Discord serves it (a web page's preview picture is not what the member shows)."""
    if embed.type != "image":
        return None
    for media in (embed.image, embed.thumbnail):
        url = getattr(media, "proxy_url", None) if media else None
        if url:
            parts = urlsplit(url)
            if parts.scheme == "https" and parts.hostname in DISCORD_MEDIA_HOSTS:
                return url, media.flags, media.width, media.height  # type: ignore[union-attr]
    return None


def pictures_of(message: discord.Message, http: HTTPClient) -> list[Picture]:
    """Every image ``message`` shows, its attachments first, then its forwards'."""
    sources: list[tuple[list[discord.Attachment], list[discord.Embed]]] = [
        (message.attachments, message.embeds),
        *((snapshot.attachments, snapshot.embeds) for snapshot in message.message_snapshots),
    ]
    found: list[Picture] = []
    for attachments, embeds in sources:
        for attachment in attachments:
            if is_image(attachment):
                found.append(attached(message.id, attachment, len(found)))
        for embed in embeds:
            unfurled = _unfurled(embed)
            if unfurled is not None:
                url, flags, width, height = unfurled
                found.append(Picture(
                    message.id, len(found), None, False, flags.contains_explicit_media,
                    functools.partial(http.get_from_cdn, url), width, height,
                ))  # fmt: skip
    return found


def attached(message_id: int, attachment: discord.Attachment, position: int = 0) -> Picture:
    """An attached file as a picture (of a message, or a command's option)."""
    return Picture(
        message_id, position, attachment.size, attachment.is_spoiler(),
        attachment.flags.contains_explicit_media, attachment.read,
        attachment.width, attachment.height,
    )  # fmt: skip


def check_images(
    pictures: Sequence[Picture], max_images: int, max_bytes: int, age_restricted: bool
) -> None:
    """Refuse, before downloading, too many images, one too large to fetch, or one marked
    explicit by Discord outside an age-restricted channel."""
    if len(pictures) > max_images:
        raise InvalidInput("image", f"{len(pictures)} images; at most {max_images} at a time")
    for picture in pictures:
        if picture.size is not None and picture.size > max_bytes:
            raise InvalidInput("image", over(picture.size, max_bytes))
        if picture.explicit and not age_restricted:
            raise InvalidInput(
                "image", "is marked explicit by Discord; ask in an age-restricted channel"
            )


async def download(pictures: Sequence[Picture], max_bytes: int) -> tuple[bytes, ...]:
    """The images' files (checked already, never opened here), none over ``max_bytes``."""
    try:
        images = tuple([await picture.fetch() for picture in pictures])
    except discord.HTTPException as exc:
        raise InvalidInput("image", "could not be downloaded from Discord; try again") from exc
    for data in images:
        if len(data) > max_bytes:  # an unfurled image, whose size nobody said before
            raise InvalidInput("image", over(len(data), max_bytes))
    return images


async def read_images(
    pictures: Sequence[Picture],
    max_bytes: int,
    question: str = "",
    max_new_tokens: int | None = None,
) -> DescribeRequest:
    """The request for some images, checked already: downloaded (never opened here)."""
    return DescribeRequest(await download(pictures, max_bytes), question, max_new_tokens)


def hidden(reply: Reply) -> Reply:
    """What was made from a spoiler image, behind a spoiler too: its text, and its files
    (Discord blurs a file whose name starts with SPOILER_)."""
    files = [(name if name.startswith("SPOILER_") else f"SPOILER_{name}", data)
             for name, data in reply.files]  # fmt: skip
    text = f"||{reply.text}||" if reply.text else ""
    return dataclasses.replace(reply, text=text, files=files)


def render_description(result: DescribeResult) -> Reply:
    """What the model saw, and, for an animated image, that only its first frame was seen."""
    note = ""
    if result.first_frames:
        note = f"-# 👁️ {result.first_frames} animated image(s): described from the first frame"
    return Reply(result.text, note) if result.text else Reply(note=note or "*(no description)*")
