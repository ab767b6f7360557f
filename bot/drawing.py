"""Drawing from a member's picture: /imagine image: and the Imagine from this menu take
their starting picture here, so both refuse the same files with the same line, download
no more than ``BOT_IMAGINE__MAX_IMAGE_BYTES`` and pick the size the picture's shape
suggests. The picture is opened in the worker, never on the event loop."""

from __future__ import annotations

import dataclasses

import discord

from bot.seeing import Picture, attached, check_images, download, is_image
from handlers.base import InvalidInput
from handlers.imagine import ImagineRequest, nearest_size


def start_picture(
    attachment: discord.Attachment, message_id: int, max_bytes: int, age_restricted: bool
) -> Picture:
    """An attached file to start from, refused before download if it cannot be one."""
    if not is_image(attachment):
        raise InvalidInput("image", "is not an image")
    picture = attached(message_id, attachment)
    check_images([picture], 1, max_bytes, age_restricted)
    return picture


async def from_picture(
    request: ImagineRequest, picture: Picture, native: int | None, max_bytes: int
) -> ImagineRequest:
    """``request`` drawn from ``picture``: downloaded, and at the offered size nearest its
    shape (as Discord gives it) unless the member chose one."""
    (data,) = await download([picture], max_bytes)
    size = request.size
    width, height = picture.width, picture.height
    if size is None and native is not None and width and height:
        size = nearest_size(native, width, height)
    return dataclasses.replace(request, image=data, size=size)
