"""The usage log: one SQLite row per invocation, written without ever blocking a command.

Callers ``begin`` a row when a job is admitted and ``end`` it when the job finishes (or
``record`` a refusal in one go). Both only touch an in-memory buffer; one writer task
upserts the buffer at most every second and on close. While the database is locked or
gone, the buffer keeps the records (up to a bound) and the writer retries, warning the
admin in the log; once the database returns nothing is lost. Rows still ``running`` at
start-up belonged to a process that died, and are marked ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np

log = logging.getLogger(__name__)

STATUSES = (
    "running",
    "ok",
    "invalid",
    "refused_busy",
    "refused_quota",
    "timeout",
    "cancelled",
    "error",
    "interrupted",
)
COLUMNS = (
    "id",
    "started_at",
    "ended_at",
    "source",
    "guild_id",
    "channel_id",
    "user_id",
    "task",
    "model",
    "options",
    "prompt",
    "status",
    "wait_ms",
    "run_ms",
    "batch_size",
    "gpu_ms",
    "input_size",
    "output_size",
    "error_kind",
)
QUICK_BUSY_MS = 250
"""How long ``UsageLog.quick`` waits for another writer's lock before it gives up."""
RETENTION_INTERVAL_S = 600
"""How often old rows are deleted while the bot runs."""
COUNTED = ("running", "ok", "timeout", "cancelled", "error", "interrupted")
"""Statuses that used the service and count toward a quota (refusals and bad input don't)."""


class UsageUnavailable(Exception):
    """The usage database cannot be opened; the message says where and why."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every ``migrations/NNNN_name.sql``, in order."""
    found = []
    for entry in resources.files("bot").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append((int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found)


async def migrate(db: aiosqlite.Connection, target: int | None = None) -> int:
    """Apply migrations above ``PRAGMA user_version`` (up to ``target``); returns the version."""
    async with db.execute("PRAGMA user_version") as cursor:
        (version,) = await cursor.fetchone()
    for number, name, sql in migrations():
        if number <= version or (target is not None and number > target):
            continue
        log.info("migrating the usage database to %04d_%s", number, name)
        await db.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
        version = number
    return version


@dataclass
class _Pending:
    row: dict[str, Any]
    inserted: bool
    """True when the row already exists in the database, so only an update is needed."""


@dataclass
class UsageLog:
    path: Path
    flush_interval_s: float = 1.0
    max_buffer: int = 100_000
    """Most unwritten rows kept while the database is unavailable; beyond it rows are dropped
    (and counted in ``dropped``)."""
    retention_days: int | None = 90
    image_requests_ttl_s: float = 86400.0
    """How long the options behind an image's Reroll button (its prompt) are kept."""
    conversations_ttl_s: float = 30 * 86400.0
    """How long a conversation's memory (its summary, opening, answer ids) outlives its
    last turn."""
    busy_timeout_ms: int = 5000
    clock: Callable[[], float] = time.time
    dropped: int = 0
    _db: aiosqlite.Connection | None = None
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _writer: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _failing: bool = False
    _stopping: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One connection, one statement stream: a second transaction must wait, not nest."""
    _last_retention: float = 0.0
    _quick_db: aiosqlite.Connection | None = None
    _closed: bool = False
    _quick_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def open(self) -> None:
        """Connect, migrate, mark crashed jobs ``interrupted`` and start the writer."""
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await self._connect()
            await migrate(self._db)
            await self._db.execute(
                "UPDATE invocations SET status = 'interrupted', ended_at = ? "
                "WHERE status = 'running'",
                (self.clock(),),
            )
            await self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            if self._db is not None:
                await self._db.close()
                self._db = None
            raise UsageUnavailable(
                f"cannot open the usage database at {self.path}: {exc}; "
                "set BOT_DATA_DIR or BOT_USAGE__PATH to a writable place"
            ) from exc
        await self.apply_retention()
        self._writer = asyncio.create_task(self._write_forever(), name="usage-writer")

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path)
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        return db

    async def close(self) -> None:
        """Stop the writer after a last flush; records that still cannot be written are
        reported in the log."""
        if self._writer is not None:
            self._stopping = True
            self._wake.set()
            await self._writer  # it finishes the flush in progress, never cut mid-write
            self._writer = None
        await self.flush()
        if self._pending:
            log.error("%d usage records could not be written at shutdown", len(self._pending))
        if self._db is not None:
            await self._db.close()
            self._db = None
        self._closed = True  # a late ``quick`` must not open a connection nobody closes
        if self._quick_db is not None:
            await self._quick_db.close()
            self._quick_db = None

    async def __aenter__(self) -> UsageLog:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Recording: synchronous and in memory, so a command never waits for the disk.

    def begin(self, row: dict[str, Any]) -> None:
        """A job was admitted: ``row`` holds at least id, source, user_id and task."""
        self._put(row["id"], {"started_at": self.clock(), **row, "status": "running"})

    def end(self, row_id: str, status: str, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self._put(row_id, {"id": row_id, "ended_at": self.clock(), **fields, "status": status})

    def record(self, row: dict[str, Any]) -> None:
        """An invocation that ended at once (refused or invalid)."""
        if row.get("status") not in STATUSES:
            raise ValueError(f"unknown status {row.get('status')!r}")
        now = self.clock()
        self._put(row["id"], {"started_at": now, "ended_at": now, **row})

    def _put(self, row_id: str, values: dict[str, Any]) -> None:
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown usage columns: {', '.join(sorted(unknown))}")
        pending = self._pending.get(row_id)
        if pending is not None:
            pending.row.update(values)
        elif len(self._pending) >= self.max_buffer:
            self.dropped += 1
            log.error("usage buffer full (%d rows); dropping a record", self.max_buffer)
            return
        else:
            # An end without a pending begin means the begin row is already written.
            self._pending[row_id] = _Pending(dict(values), inserted="started_at" not in values)
        if len(self._pending) >= 1000:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # Writing

    async def _write_forever(self) -> None:
        delay = self.flush_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if self._stopping:
                return
            ok = await self.flush()
            delay = self.flush_interval_s if ok else min(30.0, max(delay * 2, 1.0))
            if ok and self.clock() - self._last_retention >= RETENTION_INTERVAL_S:
                await self.apply_retention()

    async def flush(self) -> bool:
        """Write every buffered record; on failure keep them for the next try."""
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        try:
            if self._db is None:
                self._db = await self._connect()
            await self._write(self._db, batch)
        except BaseException as exc:
            self._restore(batch)  # upserts make a retry of a half-known write harmless
            if not isinstance(exc, sqlite3.Error | OSError | ValueError):
                raise
            if not self._failing:
                log.warning(
                    "usage database unavailable (%s); keeping %d records in memory and retrying",
                    exc,
                    len(self._pending),
                )
            self._failing = True
            await self._reconnect()
            return False
        if self._failing:
            log.warning("usage database is back; buffered records written")
            self._failing = False
        return True

    async def _write(self, db: aiosqlite.Connection, batch: dict[str, _Pending]) -> None:
        inserts = [p.row for p in batch.values() if not p.inserted]
        updates = [p.row for p in batch.values() if p.inserted]
        try:
            await db.execute("BEGIN IMMEDIATE")
            if inserts:
                names = ", ".join(COLUMNS)
                marks = ", ".join(f":{c}" for c in COLUMNS)
                changes = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id")
                await db.executemany(
                    f"INSERT INTO invocations ({names}) VALUES ({marks}) "
                    f"ON CONFLICT (id) DO UPDATE SET {changes}",
                    [{c: row.get(c) for c in COLUMNS} for row in inserts],
                )
            for row in updates:
                sets = ", ".join(f"{c} = :{c}" for c in row if c != "id")
                await db.execute(f"UPDATE invocations SET {sets} WHERE id = :id", row)
            await db.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.rollback()
            raise

    def _restore(self, batch: dict[str, _Pending]) -> None:
        """Put a failed batch back under anything recorded since (newer values win)."""
        for row_id, old in batch.items():
            newer = self._pending.get(row_id)
            if newer is not None:
                old.row.update(newer.row)
            self._pending[row_id] = old

    async def _reconnect(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._db.close()
            self._db = None

    async def apply_retention(self) -> None:
        """Delete usage rows (and quizzes with their answers) older than ``retention_days``,
        image requests older than
        ``image_requests_ttl_s`` and conversations idle longer than ``conversations_ttl_s``
        (what members wrote is kept no longer than that)."""
        now = self._last_retention = self.clock()
        if self._db is None:
            return
        try:
            async with self._lock:
                if self.retention_days is not None:
                    cursor = await self._db.execute(
                        "DELETE FROM invocations WHERE started_at < ? AND status != 'running'",
                        (now - self.retention_days * 86400,),
                    )
                    if cursor.rowcount:
                        log.info(
                            "deleted %d usage rows older than %d days",
                            cursor.rowcount,
                            self.retention_days,
                        )
                    # Quizzes hold what was made of members' material; their answers go
                    # with them, so the scores cover the same days as the usage log.
                    await self._db.execute(
                        "DELETE FROM quizzes WHERE created_at < ?",
                        (now - self.retention_days * 86400,),
                    )
                    await self._db.execute(
                        "DELETE FROM quiz_answers WHERE quiz_id NOT IN (SELECT id FROM quizzes)"
                    )
                await self._db.execute(
                    "DELETE FROM image_requests WHERE created_at < ?",
                    (now - self.image_requests_ttl_s,),
                )
                idle = now - self.conversations_ttl_s
                await self._db.execute("DELETE FROM conversations WHERE updated_at < ?", (idle,))
                await self._db.execute(
                    "DELETE FROM chat_answers WHERE conversation_id NOT IN "
                    "(SELECT id FROM conversations)"
                )
                await self._db.execute(
                    "DELETE FROM transcripts WHERE conversation_id NOT IN "
                    "(SELECT id FROM conversations)"
                )
                await self._db.execute(
                    "DELETE FROM image_descriptions WHERE conversation_id NOT IN "
                    "(SELECT id FROM conversations)"
                )
                await self._db.commit()
        except (sqlite3.Error, ValueError) as exc:
            log.warning("could not apply usage retention: %s", exc)

    # Reading

    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Read after writing what is buffered; raises ``sqlite3.Error`` if unavailable."""
        await self.flush()
        async with self._lock:
            try:
                if self._db is None:
                    self._db = await self._connect()
                async with self._db.execute(sql, tuple(params)) as cursor:
                    return list(await cursor.fetchall())
            except ValueError as exc:  # the connection was closed under us
                raise sqlite3.OperationalError(str(exc)) from exc

    async def quick(
        self, sql: str, params: Iterable[Any] = (), *, write: bool = False
    ) -> list[sqlite3.Row]:
        """One statement on a connection of its own, which waits neither for buffered usage
        rows nor more than ``QUICK_BUSY_MS`` for another writer's lock: for what a member's
        answer waits on (a conversation's memory). Raises ``sqlite3.Error``."""
        async with self._quick_lock:
            if self._closed:
                raise sqlite3.OperationalError("the usage log is closed")
            try:
                if self._quick_db is None:
                    db = await aiosqlite.connect(self.path)
                    db.row_factory = sqlite3.Row
                    await db.execute(f"PRAGMA busy_timeout = {QUICK_BUSY_MS}")
                    self._quick_db = db
                try:
                    async with self._quick_db.execute(sql, tuple(params)) as cursor:
                        rows = list(await cursor.fetchall())
                    if write:
                        await self._quick_db.commit()
                except sqlite3.Error:
                    await self._quick_db.rollback()
                    raise
                return rows
            except ValueError as exc:  # the connection was closed under us
                self._quick_db = None
                raise sqlite3.OperationalError(str(exc)) from exc

    async def write_now(self, sql: str, params: Iterable[Any] = ()) -> None:
        """A rare write that the caller waits for (an admin changing settings)."""
        async with self._lock:
            if self._db is None:
                self._db = await self._connect()
            await self._db.execute(sql, tuple(params))
            await self._db.commit()

    async def gpu_seconds_since(self, since: float) -> dict[str, float]:
        """Member -> device seconds their jobs used from ``since`` on."""
        rows = await self.query(
            "SELECT user_id, SUM(gpu_ms) AS ms FROM invocations "
            "WHERE started_at >= ? AND gpu_ms IS NOT NULL GROUP BY user_id",
            (since,),
        )
        return {row["user_id"]: row["ms"] / 1000 for row in rows}

    async def used_since(self, since: float) -> list[tuple[str, str, int, float]]:
        """(user id, task, invocations, the latest start) of what counts toward quotas."""
        marks = ", ".join("?" for _ in COUNTED)
        rows = await self.query(
            "SELECT user_id, task, COUNT(*) AS n, MAX(started_at) AS last FROM invocations "
            f"WHERE started_at >= ? AND status IN ({marks}) GROUP BY user_id, task",
            (since, *COUNTED),
        )
        return [(row["user_id"], row["task"], row["n"], row["last"]) for row in rows]

    async def since(self, since: float, guild_id: int | None = None) -> list[sqlite3.Row]:
        """Rows from ``since`` on, of one guild when ``guild_id`` is given."""
        where = "started_at >= ?" + (" AND guild_id = ?" if guild_id is not None else "")
        params = (since,) if guild_id is None else (since, guild_id)
        return await self.query(
            f"SELECT {', '.join(COLUMNS)} FROM invocations WHERE {where} ORDER BY started_at",
            params,
        )

    async def stats(self, since: float, top: int = 10, guild_id: int | None = None) -> UsageStats:
        rows = await self.since(since, guild_id)
        per_day: dict[tuple[str, str], int] = {}
        waits: dict[str, list[float]] = {}
        runs: dict[str, list[float]] = {}
        errors: dict[tuple[str, str], int] = {}
        users: dict[str, int] = {}
        for row in rows:
            day = time.strftime("%Y-%m-%d", time.gmtime(row["started_at"]))
            per_day[(day, row["task"])] = per_day.get((day, row["task"]), 0) + 1
            if row["wait_ms"] is not None:
                waits.setdefault(row["task"], []).append(row["wait_ms"])
            if row["run_ms"] is not None:
                runs.setdefault(row["task"], []).append(row["run_ms"])
            if row["status"] not in ("ok", "running"):
                key = (row["task"], row["status"])
                errors[key] = errors.get(key, 0) + 1
            users[row["user_id"]] = users.get(row["user_id"], 0) + 1
        return UsageStats(
            per_day=dict(sorted(per_day.items())),
            wait_ms={task: quantiles(v) for task, v in sorted(waits.items())},
            run_ms={task: quantiles(v) for task, v in sorted(runs.items())},
            errors=dict(sorted(errors.items())),
            top_users=sorted(users.items(), key=lambda item: -item[1])[:top],
        )


def quantiles(values: list[float]) -> tuple[float, float]:
    """(p50, p95) by the nearest rank, numpy's ``inverted_cdf``, as /queue computes its own
    (``bot.executor.metrics.percentile``, which this module cannot import without torch)."""
    p50, p95 = np.percentile(values, [50, 95], method="inverted_cdf")
    return float(p50), float(p95)


@dataclass(frozen=True)
class UsageStats:
    per_day: dict[tuple[str, str], int]
    """(day, task) -> invocations."""
    wait_ms: dict[str, tuple[float, float]]
    """task -> (p50, p95)."""
    run_ms: dict[str, tuple[float, float]]
    errors: dict[tuple[str, str], int]
    """(task, status) -> count, for every status but ok."""
    top_users: list[tuple[str, int]]


def render_stats(stats: UsageStats) -> str:
    """Plain-text tables for a terminal."""
    lines = ["invocations per day", f"{'day':<12}{'task':<11}{'count':>7}"]
    lines += [f"{day:<12}{task:<11}{n:>7}" for (day, task), n in stats.per_day.items()]
    lines += ["", "latency (ms)", f"{'task':<11}{'wait p50':>10}{'wait p95':>10}{'run p50':>10}"
              f"{'run p95':>10}"]  # fmt: skip
    for task in sorted({*stats.wait_ms, *stats.run_ms}):
        wait = stats.wait_ms.get(task, (math.nan, math.nan))
        run = stats.run_ms.get(task, (math.nan, math.nan))
        lines.append(f"{task:<11}{wait[0]:>10.1f}{wait[1]:>10.1f}{run[0]:>10.1f}{run[1]:>10.1f}")
    lines += ["", "not ok", f"{'task':<11}{'status':<15}{'count':>7}"]
    lines += [f"{task:<11}{status:<15}{n:>7}" for (task, status), n in stats.errors.items()]
    lines += ["", "top users", f"{'user id':<24}{'count':>7}"]
    lines += [f"{user:<24}{n:>7}" for user, n in stats.top_users]
    return "\n".join(lines)
