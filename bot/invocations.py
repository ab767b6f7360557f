"""Admission as every front end does it: where commands may run, guild rules, quotas, the
executor, and one usage row.

A front end calls ``Invoker.admit`` first: every check runs in memory, so a refusal can be
answered privately before the interaction is acknowledged. The ``Admission`` it returns
holds a quota reservation while the front end acknowledges and reads its input, then
``submit`` queues the job; whatever ends it, exactly one usage row is left, whether the
job is refused, invalid, cancelled, failed or done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from bot.executor.errors import (
    Busy,
    ExecutionTimeout,
    JobCancelled,
    QueueTimeout,
    ShuttingDown,
)
from bot.guilds import GuildSettings, GuildSettingsStore
from bot.quotas import CooldownActive, GpuBudgetExceeded, QuotaExceeded, Quotas, Reservation
from bot.usage import UsageLog
from handlers.errors import HandlerError, InvalidInput, terms_pattern
from handlers.kinds import TaskKind

if TYPE_CHECKING:  # the executor brings torch; a terminal command may not need it
    from bot.executor import Executor, JobHandle

log = logging.getLogger(__name__)

IMAGE_TASKS = frozenset({"imagine", "upscale"})
"""Tasks whose output a guild may confine to age-restricted channels."""
SHOWN_IMAGE_TASKS = frozenset({"describe"})
"""Tasks that look at members' images: in a classroom-safe server the safety classifier
screens every image they are shown, and without one they are off."""
COMMANDS_OVER_TASKS = {"catchup": "summarize", "digest": "summarize", "quiz": "chat"}
"""Commands that run another command's task, each of which a server can turn off alone
(``Caller.command``): they also stop with their task."""

DirectMessages = Literal["off", "text-only", "all"]
"""Which commands work where no server's rules apply (see ``Caller.private``)."""


class CommandDisabled(Exception):
    """The guild, or the bot's direct-message policy, does not allow this command here."""


@dataclass(frozen=True)
class Caller:
    user_id: str
    source: str = "discord"
    guild_id: int | None = None
    channel_id: int | None = None
    parent_id: int | None = None
    """The channel a thread is in: a thread follows its channel's rules."""
    roles: tuple[int, ...] = ()
    age_restricted: bool = False
    """Whether the channel is marked age-restricted (NSFW) in Discord."""
    private: bool = False
    """A direct message (or any place outside the servers the bot is in): the bot-wide
    direct-message policy applies instead of a guild's rules."""
    enforce_quotas: bool = True
    """False for the admin's own command line."""
    command: str | None = None
    """A command built on ``task`` that a server can turn off alone (``COMMANDS_OVER_TASKS``)."""


def status_of(error: BaseException | None) -> str:
    match error:
        case None:
            return "ok"
        case HandlerError() | CommandDisabled():
            return "invalid"
        case Busy() | ShuttingDown():
            return "refused_busy"
        case QuotaExceeded() | CooldownActive() | GpuBudgetExceeded():
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


def _is_file(value: Any) -> bool:
    """Bytes, or a tuple or list of them (a message's images)."""
    if isinstance(value, tuple | list):
        return bool(value) and all(isinstance(item, bytes) for item in value)
    return isinstance(value, bytes)


def describe(request: Any, admitted: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options, what the member wrote) of a request dataclass.

    A request names its free-text fields in ``USER_TEXT``; without it every string field
    counts as free text, so nothing a member wrote reaches the log by accident. Other
    string options (a language, a voice, a size) are kept only for admitted requests,
    which passed validation and so hold known names; a refused one keeps its numbers.
    Files (bytes: a recording, a message's images) are never kept, whatever
    ``BOT_LOG_PROMPTS`` says; their size is the row's ``input_size``.
    """
    values = {
        name: value for name, value in dataclasses.asdict(request).items() if not _is_file(value)
    }
    declared = getattr(type(request), "USER_TEXT", None)
    private = (
        declared
        if declared is not None
        else {name for name, value in values.items() if isinstance(value, str | tuple | list)}
    )
    options = {
        name: value
        for name, value in values.items()
        if name not in private and (admitted or not isinstance(value, str | tuple | list))
    }
    text = {name: value for name, value in values.items() if name in private}
    return options, text


class Admission:
    """A member's invocation that passed every check and holds its quota reservation until
    it is submitted or refused. As a context manager, leaving it unsubmitted (an exception,
    most often) refuses it."""

    def __init__(
        self,
        invoker: Invoker,
        task: str,
        caller: Caller,
        request: Any = None,
    ) -> None:
        self.invoker = invoker
        self.task = task
        self.caller = caller
        self.request = request
        """What the row describes: the request once it is known."""
        self.reservation: Reservation | None = None
        self.guild: GuildSettings | None = None
        """The server's rules, which may change the request before it is queued."""
        self.row_id = uuid.uuid4().hex
        self.settled = False

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.settled:  # a front end that returns without submitting still leaves a row
            self.refuse(error or RuntimeError("admitted, then never submitted"))

    def submit(self, request: Any, model: str | None = None) -> JobHandle:
        """Validate and queue the job, or raise (and record) why it cannot run."""
        invoker = self.invoker
        self.request = request
        try:
            if self.guild is not None:
                request = invoker.apply_guild_rules(self.guild, self.task, request)
            handle = invoker.executor.submit(
                self.task, request, user_id=self.caller.user_id, model=model
            )
        except BaseException as exc:
            self.refuse(exc)
            raise
        self.settled = True
        invoker.usage.begin(invoker._row(self, handle.model))
        handle.add_done_callback(lambda: invoker._ended(self.row_id, handle))
        return handle

    def release(self) -> None:
        """The invocation goes on as another task's (a conversation turn the vision model
        answers is describe's): its reservation is released and it leaves no row."""
        if not self.settled:
            self.settled = True
            if self.reservation is not None:
                self.reservation.release()

    def refuse(self, error: BaseException) -> None:
        """The invocation ends without a job: release the reservation, record one row."""
        if self.settled:
            return
        self.settled = True
        if self.reservation is not None:
            self.reservation.release()
        row = self.invoker._row(self, admitted=False)
        self.invoker.usage.record(
            {**row, "status": status_of(error), "error_kind": type(error).__name__}
        )


class Invoker:
    def __init__(
        self,
        executor: Executor,
        usage: UsageLog,
        quotas: Quotas,
        guilds: GuildSettingsStore,
        log_prompts: bool = False,
        direct_messages: DirectMessages = "text-only",
    ) -> None:
        self.executor = executor
        self.usage = usage
        self.quotas = quotas
        self.guilds = guilds
        self.log_prompts = log_prompts
        self.direct_messages: DirectMessages = direct_messages

    def allows(self, task: str, caller: Caller) -> bool:
        """Whether ``caller`` may use ``task`` where they are (the direct-message policy and
        the server's rules), recording nothing: to offer only buttons that can work."""
        return self.why_not(task, caller) is None

    def why_not(self, task: str, caller: Caller) -> CommandDisabled | None:
        """What keeps ``caller`` from ``task`` where they are, if anything; records nothing."""
        try:
            if task not in self.executor.tasks:
                raise CommandDisabled(f"/{task} is not served by this bot")
            if caller.private:
                self._check_private(task)
            elif caller.guild_id is not None:
                self._check_guild(self.guilds.get(caller.guild_id), task, caller)
        except CommandDisabled as exc:
            return exc
        return None

    def admit(self, task: str, caller: Caller, request: Any = None) -> Admission:
        """Check everything that needs no I/O, in one synchronous step, and reserve the
        member's quota; a refusal is recorded and raised.

        ``request``, when known already, is validated too; a front end that must read its
        input first (after acknowledging) passes it to ``Admission.submit`` only.
        """
        admission = Admission(self, task, caller, request)
        try:
            guild = None
            if caller.private:
                self._check_private(task)
            elif caller.guild_id is not None:
                guild = admission.guild = self.guilds.get(caller.guild_id)
                self._check_guild(guild, task, caller)
                if request is not None:
                    request = self.apply_guild_rules(guild, task, request)
            self.executor.check(task, request, user_id=caller.user_id)
            if caller.enforce_quotas:
                admission.reservation = self.quotas.reserve(
                    caller.user_id, task, guild, caller.roles
                )
        except BaseException as exc:
            admission.refuse(exc)
            raise
        return admission

    def submit(
        self, task: str, request: Any, caller: Caller, model: str | None = None
    ) -> JobHandle:
        """Admit and queue in one go, for front ends with nothing to do in between."""
        with self.admit(task, caller, request) as admission:
            return admission.submit(request, model)

    def record_refusal(self, task: str, caller: Caller, error: BaseException) -> None:
        """An invocation whose input was refused before it could be admitted."""
        Admission(self, task, caller).refuse(error)

    def record_command(self, command: str, caller: Caller) -> None:
        """A command that runs no model (/queue, /stats, ...): one row, like every other."""
        self.usage.record({
            "id": uuid.uuid4().hex, "source": caller.source, "guild_id": caller.guild_id,
            "channel_id": caller.channel_id, "user_id": caller.user_id, "task": command,
            "status": "ok",
        })  # fmt: skip

    def _row(
        self, admission: Admission, model: str | None = None, admitted: bool = True
    ) -> dict[str, Any]:
        caller, request = admission.caller, admission.request
        row: dict[str, Any] = {
            "id": admission.row_id,
            "source": caller.source,
            "guild_id": caller.guild_id,
            "channel_id": caller.channel_id,
            "user_id": caller.user_id,
            "task": admission.task,
            "model": model,
        }
        options: dict[str, Any] = {} if caller.command is None else {"command": caller.command}
        if request is not None:
            described, text = describe(request, admitted)
            options.update(described)
            row["prompt"] = json.dumps(text, ensure_ascii=False) if self.log_prompts else None
            row["input_size"] = size_of(request)
        if request is not None or options:
            row["options"] = json.dumps(options, default=str)
        return row

    def _check_private(self, task: str) -> None:
        policy = self.direct_messages
        if policy == "off":
            raise CommandDisabled("this bot's commands work in servers only, not here")
        if policy == "text-only" and self.executor.tasks[task].kind is not TaskKind.TEXT:
            raise CommandDisabled(
                f"/{task} works in servers only; in direct messages this bot answers text commands"
            )

    def _check_guild(self, guild: GuildSettings, task: str, caller: Caller) -> None:
        if caller.command in guild.disabled_commands:
            raise CommandDisabled(f"/{caller.command} is turned off in this server")
        if guild.enabled_commands is not None and task not in guild.enabled_commands:
            raise CommandDisabled(f"/{task} is turned off in this server")
        allowed = guild.allowed_channels
        if allowed is not None and not {caller.channel_id, caller.parent_id} & set(allowed):
            raise CommandDisabled(f"/{task} cannot be used in this channel")
        screens = getattr(self.executor.tasks[task], "safety_model", None) is not None
        if task in SHOWN_IMAGE_TASKS and guild.classroom_safe and not screens:
            raise CommandDisabled(
                f"/{task} is off in this classroom-safe server until the bot's owner sets an "
                "image safety filter (BOT_IMAGINE__SAFETY_MODEL) to screen the images it is shown"
            )
        if (
            task in IMAGE_TASKS
            and guild.images_where == "age_restricted_only"
            and not caller.age_restricted
        ):
            raise CommandDisabled(f"/{task} works only in age-restricted channels in this server")

    def image_model(self, guild_id: int | None, chosen: str | None) -> str | None:
        """The image model a request draws with: the member's pick, else the server's
        default while it is installed, else None (the bot's default)."""
        handler = self.executor.tasks.get("imagine")
        if chosen is not None or guild_id is None or handler is None:
            return chosen
        default = self.guilds.get(guild_id).image_model
        return default if default in handler.model_names() else None  # type: ignore[attr-defined]

    def apply_guild_rules(self, guild: GuildSettings, task: str, request: Any) -> Any:
        """What a server adds to a request: its image model, refused words and negative
        prompt for images, and, when classroom-safe, a safety filter that must be there."""
        if task in SHOWN_IMAGE_TASKS:
            return dataclasses.replace(request, screen=True) if guild.classroom_safe else request
        if task not in IMAGE_TASKS:
            return request
        handler = self.executor.tasks[task]
        if guild.classroom_safe and getattr(handler, "safety_model", None) is None:
            raise CommandDisabled(
                f"/{task} is off in this classroom-safe server until the bot's owner sets an "
                "image safety filter (BOT_IMAGINE__SAFETY_MODEL)"
            )
        if not hasattr(request, "negative_prompt"):  # an upscale: its prompt drew the image
            return request
        if request.model is None and guild.image_model in handler.model_names():
            request = dataclasses.replace(request, model=guild.image_model)
        refused = terms_pattern(guild.refused_terms())
        if refused is not None and refused.search(request.prompt):
            raise InvalidInput("prompt", "contains a term this server does not draw")
        negative = guild.negative_prompt_with(request.negative_prompt)
        room = handler.max_prompt_chars
        if len(negative) > room:
            added = len(negative) - len(request.negative_prompt.strip())
            raise InvalidInput(
                "negative",
                f"this server adds {added} characters of its own; keep yours under {room - added}",
            )
        return dataclasses.replace(request, negative_prompt=negative)

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
        if handle.gpu_s is not None:
            self.quotas.charge_gpu(handle.user_id, handle.gpu_s)
        self.usage.end(
            row_id,
            status_of(error),
            wait_ms=None if handle.wait_s is None else 1000 * handle.wait_s,
            run_ms=None if handle.run_s is None else 1000 * handle.run_s,
            batch_size=handle.batch_size,
            gpu_ms=None if handle.gpu_s is None else 1000 * handle.gpu_s,
            output_size=None if error is not None else size_of(handle.peek_result()),
            error_kind=None if error is None else type(error).__name__,
        )
