"""Option presets that front ends offer before any model is loaded (torch-free)."""

from __future__ import annotations

LENGTHS: dict[str, tuple[int, int]] = {"short": (10, 60), "medium": (30, 142), "long": (60, 256)}
"""Summary lengths as (min, max) new tokens."""
