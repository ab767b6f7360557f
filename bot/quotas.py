"""Daily per-member quotas and cooldowns per task, with per-guild overrides and exemptions.

Admission checks and reserves in one synchronous step, so no burst of clicks can slip
between a check and its count. The counts live in memory: the day's usage is read from
the usage log once, when the bot starts, and every later admission of the day happens in
this process (a new UTC day starts from zero).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bot.guilds import GuildSettings
from bot.localization import name_in, tr
from bot.usage import UsageLog, UsageUnavailable

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
        super().__init__(self.message(None))

    def message(self, locale: str | None) -> str:
        """What the member is told, in their language (English for logs and the terminal)."""
        return tr(
            "you have used all {limit} {task} requests for today; "
            "the quota resets in {duration} (00:00 UTC)",
            locale,
            limit=self.limit,
            task=name_in(self.task, locale),
            duration=duration(self.resets_in),
        )


class GpuBudgetExceeded(Exception):
    def __init__(self, budget_s: float, resets_in: float) -> None:
        self.budget_s = budget_s
        self.resets_in = resets_in
        super().__init__(self.message(None))

    def message(self, locale: str | None) -> str:
        """What the member is told, in their language (English for logs and the terminal)."""
        return tr(
            "you have used your {seconds} seconds of GPU time for today; "
            "it resets in {duration} (00:00 UTC)",
            locale,
            seconds=format(self.budget_s, "g"),
            duration=duration(self.resets_in),
        )


class CooldownActive(Exception):
    def __init__(self, task: str, retry_after: float) -> None:
        self.task = task
        self.retry_after = retry_after
        super().__init__(self.message(None))

    def message(self, locale: str | None) -> str:
        """What the member is told, in their language (English for logs and the terminal)."""
        return tr(
            "{task} is cooling down; try again in {seconds}s",
            locale,
            task=name_in(self.task, locale),
            seconds=math.ceil(self.retry_after),
        )


@dataclass(frozen=True)
class QuotaPolicy:
    daily: Mapping[str, int] = field(default_factory=dict)
    """Task -> requests per member per UTC day."""
    cooldowns: Mapping[str, float] = field(default_factory=dict)
    """Task -> seconds between a member's requests."""
    exempt_users: frozenset[str] = frozenset()
    gpu_seconds_per_day: float | None = None
    """Device seconds a member's jobs may use per UTC day, whatever the tasks; None: no
    such limit."""


@dataclass
class Reservation:
    """One admission counted against a member's quota and cooldown until it is released.

    Releasing takes back exactly what was taken, once: a second release, or one after the
    day has turned, changes nothing.
    """

    quotas: Quotas | None
    """None once released, or when nothing was counted (an exempt member)."""
    key: tuple[str, str, float]
    """(user id, task, UTC day)."""
    stamp: float
    """When it was admitted: the cooldown's new start."""
    previous: float | None
    """The cooldown's start before this admission."""

    def release(self) -> None:
        quotas, self.quotas = self.quotas, None
        if quotas is not None:
            quotas._take_back(self)


class Quotas:
    def __init__(
        self, policy: QuotaPolicy, usage: UsageLog, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self.usage = usage
        self.clock = clock
        self._day = self._day_of(clock())
        self._counts: dict[tuple[str, str, float], int] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._gpu: dict[str, float] = {}
        """Member -> device seconds used today."""
        self._loaded = False

    @staticmethod
    def _day_of(now: float) -> float:
        return math.floor(now / DAY) * DAY

    async def load(self) -> None:
        """Seed today's counts and last admissions from the usage log, once, before the
        first admission (a second seeding would overwrite the admissions since)."""
        if self._loaded:
            raise RuntimeError("quota counts are seeded once, at start-up")
        self._loaded = True
        self._day = self._day_of(self.clock())
        try:
            used = await self.usage.used_since(self._day)
            self._gpu = await self.usage.gpu_seconds_since(self._day)
        except sqlite3.Error as exc:
            raise UsageUnavailable(f"cannot read today's quota counts: {exc}") from exc
        self._counts = {(user, task, self._day): n for user, task, n, _ in used}
        self._last = {(user, task): last for user, task, _, last in used}

    def _today(self, now: float) -> float:
        """The current UTC day; when it turns, yesterday's counts are dropped."""
        day = self._day_of(now)
        if day != self._day:
            self._day = day
            self._counts.clear()
            self._gpu.clear()
            self._last = {k: t for k, t in self._last.items() if now - t < DAY}
        return day

    def _exempt(self, user_id: str, guild: GuildSettings | None, roles: Iterable[int]) -> bool:
        return user_id in self.policy.exempt_users or (
            guild is not None and not set(guild.exempt_roles).isdisjoint(roles)
        )

    def reserve(
        self,
        user_id: str,
        task: str,
        guild: GuildSettings | None = None,
        roles: Iterable[int] = (),
    ) -> Reservation:
        """Count an admission, or raise ``CooldownActive`` or ``QuotaExceeded`` if the member
        may not run ``task`` now. Release the reservation if the job is not queued after all."""
        now = self.clock()
        if self._exempt(user_id, guild, roles):
            return Reservation(None, (user_id, task, self._today(now)), now, None)
        day = self._today(now)
        overrides = guild or GuildSettings()
        cooldown = overrides.cooldowns.get(task, self.policy.cooldowns.get(task))
        previous = self._last.get((user_id, task))
        if cooldown and previous is not None and now - previous < cooldown:
            raise CooldownActive(task, cooldown - (now - previous))
        budget = self.policy.gpu_seconds_per_day
        if budget is not None and self._gpu.get(user_id, 0.0) >= budget:
            raise GpuBudgetExceeded(budget, day + DAY - now)
        limit = overrides.quotas.get(task, self.policy.daily.get(task))
        key = (user_id, task, day)
        if limit is not None and self._counts.get(key, 0) >= limit:
            raise QuotaExceeded(task, limit, day + DAY - now)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._last[(user_id, task)] = now
        return Reservation(self, key, now, previous)

    def charge_gpu(self, user_id: str, seconds: float) -> None:
        """A member's job used ``seconds`` of device time (exempt members too: it shows)."""
        self._today(self.clock())
        self._gpu[user_id] = self._gpu.get(user_id, 0.0) + seconds

    def gpu_used(self, user_id: str) -> float:
        self._today(self.clock())
        return self._gpu.get(user_id, 0.0)

    def _take_back(self, reservation: Reservation) -> None:
        user_id, task, _ = reservation.key
        if reservation.key in self._counts:
            self._counts[reservation.key] -= 1
        if self._last.get((user_id, task)) == reservation.stamp:  # not replaced by a later one
            if reservation.previous is None:
                del self._last[(user_id, task)]
            else:
                self._last[(user_id, task)] = reservation.previous

    def summary(
        self, user_id: str, guild: GuildSettings | None = None
    ) -> list[tuple[str, int, int, float]]:
        """(task, used, limit, seconds until reset) for every task with a daily limit."""
        now = self.clock()
        day = self._today(now)
        limits = {**self.policy.daily, **(guild.quotas if guild else {})}
        return [
            (task, self._counts.get((user_id, task, day), 0), limit, day + DAY - now)
            for task, limit in sorted(limits.items())
        ]
