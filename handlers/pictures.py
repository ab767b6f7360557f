"""Members' pictures opened safely, where the model runs: Pillow under its
decompression-bomb limit, the first frame of an animation, a phone photo the right way up,
transparency on white, and at most a given number of pixels. /describe and /imagine's
starting pictures both come through here."""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.base import InvalidInput


@dataclass(frozen=True)
class Opened:
    image: Image.Image
    animated: bool


def open_image(data: bytes, max_pixels: int) -> Opened:
    """An RGB image of at most ``max_pixels``; ``InvalidInput("image")`` for what is not an
    image, is damaged, or would expand past Pillow's decompression-bomb limit."""
    too_large = InvalidInput(
        "image", "is too large to open safely (more pixels than the bot's image limit)"
    )
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:  # not a thread-unsafe warning filter
            raise too_large
        animated = bool(getattr(image, "is_animated", False))
        image.seek(0)
        image.load()
    except Image.DecompressionBombError as exc:
        raise too_large from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput("image", "is not an image I can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise InvalidInput("image", "is damaged and cannot be read") from exc  # cut short
    image = ImageOps.exif_transpose(image)  # a phone photo the right way up
    width, height = image.size
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        backdrop = Image.new("RGB", image.size, "white")  # black text on a clear PNG stays legible
        rgba = image.convert("RGBA")
        backdrop.paste(rgba, mask=rgba.getchannel("A"))
        image = backdrop
    image = image.convert("RGB")
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        new_width, new_height = max(1, int(width * scale)), max(1, int(height * scale))
        if new_width * new_height > max_pixels:  # a side rounded up to one pixel
            if new_width >= new_height:
                new_width = max(1, max_pixels // new_height)
            else:
                new_height = max(1, max_pixels // new_width)
        image = image.resize((new_width, new_height))
    return Opened(image, animated)
