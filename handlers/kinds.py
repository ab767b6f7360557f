"""Task classes, apart from the handler contract so that settings can name them without
importing torch."""

from __future__ import annotations

import enum


class TaskKind(enum.StrEnum):
    """Task classes share batching windows, caps and deadlines (images are slow, text fast)."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
