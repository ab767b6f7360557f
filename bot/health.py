"""Liveness for health checks: the running bot touches a heartbeat file while it is
connected to Discord, and the check passes while that file is fresh.

A beat proves more than a live process: the event loop got to run (a blocked loop stops
beating), the gateway connection is open, and the inference engine runs with no batch stuck
on a device. ``python -m bot.health FILE`` imports only
the standard library, because Docker runs it every 30 seconds; ``python -m bot health``
finds the file from the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

BEAT_S = 10.0
MAX_AGE_S = 60.0
"""Six missed beats: a gateway reconnect or a slow disk does not fail the check."""


class Heartbeat:
    """Touches ``path`` every ``interval_s`` while ``alive()`` holds.

    The file is removed on entry and exit, so a restarted bot is never judged healthy by
    the previous run's file.
    """

    def __init__(self, path: Path, alive: Callable[[], bool], interval_s: float = BEAT_S) -> None:
        self.path = path
        self._alive = alive
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        await asyncio.to_thread(self._reset)
        self._task = asyncio.create_task(self._beat(), name="heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.path.unlink, missing_ok=True)

    def _reset(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)

    async def _beat(self) -> None:
        warned = False
        while True:
            if self._alive():
                try:
                    await asyncio.to_thread(self.path.touch)
                    warned = False
                except OSError as exc:
                    if not warned:  # once per failure streak, not every beat
                        log.warning("cannot write the heartbeat file %s: %s", self.path, exc)
                    warned = True
            await asyncio.sleep(self._interval_s)


def problem(path: Path, max_age_s: float = MAX_AGE_S) -> str | None:
    """Why the bot is not healthy, or None when its last beat is recent enough."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return f"no heartbeat at {path}: the bot is not running or not connected to Discord yet"
    if age > max_age_s:
        return (
            f"last heartbeat {age:.0f}s ago (limit {max_age_s:.0f}s): the bot is disconnected "
            "from Discord, or its event loop or inference engine is stuck"
        )
    return None


def report(path: Path, max_age_s: float = MAX_AGE_S) -> int:
    """Print the verdict; 0 when healthy, 1 when not (what health checks expect)."""
    found = problem(path, max_age_s)
    if found is None:
        print(f"healthy: heartbeat at {path} is fresh")
        return 0
    print(f"unhealthy: {found}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot.health",
        description="Exit 0 while the bot's heartbeat file is fresh, 1 otherwise.",
    )
    parser.add_argument("file", type=Path, help="the heartbeat file (BOT_DATA_DIR/heartbeat)")
    parser.add_argument(
        "--max-age", type=float, default=MAX_AGE_S, help=f"seconds (default {MAX_AGE_S:.0f})"
    )
    args = parser.parse_args(argv)
    return report(args.file, args.max_age)


if __name__ == "__main__":
    raise SystemExit(main())
