"""Daily per-member quotas and cooldowns per task, with per-guild overrides and exemptions."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bot.guilds import GuildSettings
from bot.usage import UsageLog

log = logging.getLogger(__name__)
DAY = 86400


def duration(seconds: float) -> str:
    """Like 3h05m or 12m, for people."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


class QuotaExceeded(Exception):
    def __init__(self, task: str, limit: int, resets_in: float) -> None:
        self.task = task
        self.limit = limit
        self.resets_in = resets_in
        super().__init__(
            f"you have used all {limit} {task} requests for today; "
            f"the quota resets in {duration(resets_in)} (00:00 UTC)"
        )


class CooldownActive(Exception):
    def __init__(self, task: str, retry_after: float) -> None:
        self.task = task
        self.retry_after = retry_after
        super().__init__(f"{task} is cooling down; try again in {math.ceil(retry_after)}s")


@dataclass(frozen=True)
class QuotaPolicy:
    daily: Mapping[str, int] = field(default_factory=dict)
    """Task -> requests per member per UTC day."""
    cooldowns: Mapping[str, float] = field(default_factory=dict)
    """Task -> seconds between a member's requests."""
    exempt_users: frozenset[str] = frozenset()


class Quotas:
    """Counts admissions in memory, seeded from the usage log on each member's first request
    of the day, so a check costs one query per member and day at most."""

    def __init__(
        self, policy: QuotaPolicy, usage: UsageLog, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self.usage = usage
        self.clock = clock
        self._counts: dict[tuple[str, str, float], int] = {}
        self._last: dict[tuple[str, str], float] = {}

    def _exempt(self, user_id: str, guild: GuildSettings | None, roles: Iterable[int]) -> bool:
        return user_id in self.policy.exempt_users or (
            guild is not None and not set(guild.exempt_roles).isdisjoint(roles)
        )

    async def check(
        self,
        user_id: str,
        task: str,
        guild: GuildSettings | None = None,
        roles: Iterable[int] = (),
    ) -> None:
        """Raise ``CooldownActive`` or ``QuotaExceeded`` if the member may not run ``task`` now."""
        if self._exempt(user_id, guild, roles):
            return
        now = self.clock()
        overrides = guild or GuildSettings()
        cooldown = overrides.cooldowns.get(task, self.policy.cooldowns.get(task))
        last = self._last.get((user_id, task))
        if cooldown and last is not None and now - last < cooldown:
            raise CooldownActive(task, cooldown - (now - last))
        limit = overrides.quotas.get(task, self.policy.daily.get(task))
        if limit is None:
            return
        day = math.floor(now / DAY) * DAY
        used = await self._used(user_id, task, day)
        if used >= limit:
            raise QuotaExceeded(task, limit, day + DAY - now)

    async def _used(self, user_id: str, task: str, day: float) -> int:
        key = (user_id, task, day)
        if key not in self._counts:
            try:
                self._counts[key] = await self.usage.count_today(user_id, task, day)
            except sqlite3.Error as exc:
                log.warning("quota count unavailable (%s); allowing the request", exc)
                return 0
            for stale in [k for k in self._counts if k[2] < day]:
                del self._counts[stale]
        return self._counts[key]

    async def summary(
        self, user_id: str, guild: GuildSettings | None = None
    ) -> list[tuple[str, int, int, float]]:
        """(task, used, limit, seconds until reset) for every task with a daily limit."""
        now = self.clock()
        day = math.floor(now / DAY) * DAY
        limits = {**self.policy.daily, **(guild.quotas if guild else {})}
        return [
            (task, await self._used(user_id, task, day), limit, day + DAY - now)
            for task, limit in sorted(limits.items())
        ]

    def admitted(self, user_id: str, task: str) -> Callable[[], None]:
        """Count an admission now (before any await, so a quick second request sees it);
        returns a function that takes it back if the job is not queued after all."""
        now = self.clock()
        stamp = (user_id, task)
        previous = self._last.get(stamp)
        self._last[stamp] = now
        key = (user_id, task, math.floor(now / DAY) * DAY)
        counted = key in self._counts
        if counted:
            self._counts[key] += 1

        def undo() -> None:
            if previous is None:
                self._last.pop(stamp, None)
            else:
                self._last[stamp] = previous
            if counted and key in self._counts:
                self._counts[key] -= 1

        return undo
