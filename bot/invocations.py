"""Admission as every front end does it: guild rules, quotas, the executor, and one usage row.

The command line and the Discord cogs call ``Invoker.submit``; it leaves exactly one usage
row per invocation, whether the job is refused, invalid, cancelled, failed or done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.executor import (
    Busy,
    ExecutionTimeout,
    Executor,
    JobCancelled,
    JobHandle,
    QueueTimeout,
    ShuttingDown,
)
from bot.guilds import GuildSettings, GuildSettingsStore
from bot.quotas import CooldownActive, QuotaExceeded, Quotas
from bot.usage import UsageLog
from handlers.base import HandlerError

log = logging.getLogger(__name__)

IMAGE_TASKS = frozenset({"imagine"})
"""Tasks whose output a guild may confine to age-restricted channels."""


class CommandDisabled(Exception):
    """The guild turned this command off, or limits it to other channels."""


@dataclass(frozen=True)
class Caller:
    user_id: str
    source: str = "discord"
    guild_id: int | None = None
    channel_id: int | None = None
    roles: tuple[int, ...] = ()
    age_restricted: bool = False
    """Whether the channel is marked age-restricted (NSFW) in Discord."""
    enforce_quotas: bool = True
    """False for the admin's own command line."""


def status_of(error: BaseException | None) -> str:
    match error:
        case None:
            return "ok"
        case HandlerError():
            return "invalid"
        case Busy() | ShuttingDown():
            return "refused_busy"
        case QuotaExceeded() | CooldownActive():
            return "refused_quota"
        case QueueTimeout() | ExecutionTimeout():
            return "timeout"
        case JobCancelled() | asyncio.CancelledError():
            return "cancelled"
        case _:
            return "error"


def size_of(value: Any) -> int:
    """Characters of text plus bytes of files in a request or result."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(size_of(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(size_of(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


def describe(request: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options, what the member wrote) of a request dataclass.

    A request names its free-text fields in ``USER_TEXT``; without it every string field
    counts as free text, so nothing a member wrote reaches the log by accident.
    """
    values = dataclasses.asdict(request)
    declared = getattr(type(request), "USER_TEXT", None)
    private = (
        declared
        if declared is not None
        else {name for name, value in values.items() if isinstance(value, str | tuple | list)}
    )
    options = {name: value for name, value in values.items() if name not in private}
    text = {name: value for name, value in values.items() if name in private}
    return options, text


class Invoker:
    def __init__(
        self,
        executor: Executor,
        usage: UsageLog,
        quotas: Quotas,
        guilds: GuildSettingsStore,
        log_prompts: bool = False,
    ) -> None:
        self.executor = executor
        self.usage = usage
        self.quotas = quotas
        self.guilds = guilds
        self.log_prompts = log_prompts

    async def submit(
        self,
        task: str,
        request: Any,
        caller: Caller,
        model: str | None = None,
        acknowledge: Callable[[], Awaitable[object]] | None = None,
    ) -> JobHandle:
        """Admit a job or raise the reason it was refused; either way one row is logged.

        ``acknowledge`` runs once every check has passed and before the job is queued, so a
        front end can answer refusals privately and still acknowledge before model work.
        """
        options, text = describe(request)
        row: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "source": caller.source,
            "guild_id": caller.guild_id,
            "channel_id": caller.channel_id,
            "user_id": caller.user_id,
            "task": task,
            "model": model,
            "options": json.dumps(options, default=str),
            "prompt": json.dumps(text, ensure_ascii=False) if self.log_prompts else None,
            "input_size": size_of(request),
        }
        undo: Callable[[], None] | None = None
        try:
            guild = None
            if caller.guild_id is not None:
                guild = await self.guilds.get(caller.guild_id)
                self._check_guild(guild, task, caller)
            if caller.enforce_quotas:
                await self.quotas.check(caller.user_id, task, guild, caller.roles)
            self.executor.check(task, request, user_id=caller.user_id)
            undo = self.quotas.admitted(caller.user_id, task)
            if acknowledge is not None:
                await acknowledge()
            handle = self.executor.submit(task, request, user_id=caller.user_id, model=model)
        except Exception as exc:  # refused, invalid, or the front end failed to acknowledge
            if undo is not None:
                undo()
            status = "invalid" if isinstance(exc, CommandDisabled) else status_of(exc)
            self.usage.record({**row, "status": status, "error_kind": type(exc).__name__})
            raise
        self.usage.begin({**row, "model": handle.model})
        handle.add_done_callback(lambda: self._ended(row["id"], handle))
        return handle

    def record_refusal(self, task: str, caller: Caller, error: BaseException) -> None:
        """An invocation refused before it could be submitted (its input could not be read)."""
        self.usage.record({
            "id": uuid.uuid4().hex, "source": caller.source, "guild_id": caller.guild_id,
            "channel_id": caller.channel_id, "user_id": caller.user_id, "task": task,
            "status": status_of(error), "error_kind": type(error).__name__,
        })  # fmt: skip

    def record_command(self, command: str, caller: Caller) -> None:
        """A command that runs no model (/queue, /stats, ...): one row, like every other."""
        self.usage.record({
            "id": uuid.uuid4().hex, "source": caller.source, "guild_id": caller.guild_id,
            "channel_id": caller.channel_id, "user_id": caller.user_id, "task": command,
            "status": "ok",
        })  # fmt: skip

    @staticmethod
    def _check_guild(guild: GuildSettings, task: str, caller: Caller) -> None:
        if guild.enabled_commands is not None and task not in guild.enabled_commands:
            raise CommandDisabled(f"/{task} is turned off in this server")
        if guild.allowed_channels is not None and caller.channel_id not in guild.allowed_channels:
            raise CommandDisabled(f"/{task} cannot be used in this channel")
        if (
            task in IMAGE_TASKS
            and guild.nsfw == "age_restricted_only"
            and not caller.age_restricted
        ):
            raise CommandDisabled(f"/{task} works only in age-restricted channels in this server")

    def _ended(self, row_id: str, handle: JobHandle) -> None:
        error = handle.error
        log.info(
            "job %d %s user=%s status=%s wait=%.0fms run=%.0fms batch=%s%s",
            handle.id,
            handle.task,
            handle.user_id,
            status_of(error),
            1000 * (handle.wait_s or 0),
            1000 * (handle.run_s or 0),
            handle.batch_size,
            "" if error is None else f" error={type(error).__name__}",
        )
        self.usage.end(
            row_id,
            status_of(error),
            wait_ms=None if handle.wait_s is None else 1000 * handle.wait_s,
            run_ms=None if handle.run_s is None else 1000 * handle.run_s,
            batch_size=handle.batch_size,
            output_size=None if error is not None else size_of(handle.peek_result()),
            error_kind=None if error is None else type(error).__name__,
        )
