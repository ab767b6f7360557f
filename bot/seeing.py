"""Seeing members' images: the pictures a message carries, turned into a describe request.

/describe and the Describe image menu take their images here, so that both refuse the same
files with the same line and download no more than ``BOT_DESCRIBE__MAX_BYTES`` each.
Images are opened in the worker, never on the event loop.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePath

import discord

from bot.delivery import Reply
from handlers.audio import over
from handlers.base import InvalidInput
from handlers.describe import DescribeRequest, DescribeResult

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
"""What a file with no content type is taken to be an image by."""


def is_image(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        return content_type.startswith("image/")
    return PurePath(attachment.filename).suffix.lower() in IMAGE_SUFFIXES


def images_of(message: discord.Message) -> list[discord.Attachment]:
    return [a for a in message.attachments if is_image(a)]


def check_images(
    attachments: list[discord.Attachment], max_images: int, max_bytes: int, age_restricted: bool
) -> None:
    """Refuse, before downloading, what is not an image, too many, too large to fetch, or
    marked explicit by Discord outside an age-restricted channel."""
    if len(attachments) > max_images:
        raise InvalidInput("image", f"{len(attachments)} images; at most {max_images} at a time")
    for attachment in attachments:
        if not is_image(attachment):
            raise InvalidInput("image", "is not an image")
        if attachment.size > max_bytes:
            raise InvalidInput("image", over(attachment.size, max_bytes))
        if attachment.flags.contains_explicit_media and not age_restricted:
            raise InvalidInput(
                "image", "is marked explicit by Discord; ask in an age-restricted channel"
            )


async def read_images(
    attachments: list[discord.Attachment], question: str = "", max_new_tokens: int | None = None
) -> DescribeRequest:
    """The request for some images, checked already: downloaded (never opened here)."""
    try:
        images = tuple([await attachment.read() for attachment in attachments])
    except discord.HTTPException as exc:
        raise InvalidInput("image", "could not be downloaded from Discord; try again") from exc
    return DescribeRequest(images, question, max_new_tokens)


def hidden(reply: Reply) -> Reply:
    """A description of a spoiler image, behind a spoiler too."""
    return dataclasses.replace(reply, text=f"||{reply.text}||") if reply.text else reply


def render_description(result: DescribeResult) -> Reply:
    """What the model saw, and, for an animated image, that only its first frame was seen."""
    note = ""
    if result.first_frames:
        note = f"-# 👁️ {result.first_frames} animated image(s): described from the first frame"
    return Reply(result.text, note) if result.text else Reply(note=note or "*(no description)*")
