"""The options of posted images, kept so that their Reroll and Vary buttons work across
restarts (``bot/image_buttons.py``): one row per image in SQLite, by a key the buttons carry."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from typing import Any

from bot.usage import UsageLog
from handlers.base import HandlerError
from handlers.imagine import ImagineRequest


class ImageRequests:
    """The stored options of posted images, by key, for as long as their buttons work."""

    def __init__(self, usage: UsageLog, ttl_s: float) -> None:
        self.usage = usage
        self.ttl_s = ttl_s

    async def save(self, request: ImagineRequest, user_id: int, guild_id: int | None) -> str:
        key = uuid.uuid4().hex
        await self.usage.write_now(
            "INSERT INTO image_requests (id, guild_id, user_id, request, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, guild_id, str(user_id), json.dumps(stored(request)), self.usage.clock()),
        )
        return key

    async def get(self, key: str) -> tuple[ImagineRequest, str]:
        """(request, owner's user id); ``HandlerError`` once the buttons have expired (the
        usage log's retention deletes the row soon after)."""
        rows = await self.usage.query(
            "SELECT request, user_id FROM image_requests WHERE id = ? AND created_at >= ?",
            (key, self.usage.clock() - self.ttl_s),
        )
        if not rows:
            hours = self.ttl_s / 3600
            raise HandlerError(
                f"this image is too old for its buttons (they work for {hours:g} hours)"
            )
        return restored(json.loads(rows[0]["request"])), rows[0]["user_id"]


def stored(request: ImagineRequest) -> dict[str, Any]:
    """A request as JSON can hold it: the picture it starts from, if any, in base64."""
    fields = dataclasses.asdict(request)
    if request.image is not None:
        fields["image"] = base64.b64encode(request.image).decode()
    return fields


def restored(fields: dict[str, Any]) -> ImagineRequest:
    if fields.get("image") is not None:
        fields["image"] = base64.b64decode(fields["image"])
    return ImagineRequest(**fields)
