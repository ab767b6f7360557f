"""Following a job on Discord and delivering its result, where its reply policy says."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import discord

from bot.executor import JobCancelled, JobEvent, JobHandle, JobState
from bot.localization import name_in, tr
from bot.markdown import MESSAGE_LIMIT, clip, neutralize, split_text
from bot.models import explain

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
MAX_SPLIT_MESSAGES = 3
"""Longer text than this many messages goes out as a .txt file."""
PREVIEW_CHARS = 300
"""How much of a text sent as a file the message itself shows."""


@dataclass(frozen=True)
class ReplyPolicy:
    """Where one invocation's replies go, decided once and followed by every send:
    progress, the result and its follow-up pieces, failures, and fallbacks."""

    ephemeral: bool = False
    """Only the member who asked sees the reply."""
    fallback: Literal["channel", "dm"] = "channel"
    """Where a result goes when the reply can no longer be edited (its 15-minute token is
    gone, or Discord refuses): a private reply never goes to the channel."""


@dataclass(frozen=True)
class Reply:
    """A finished result as Discord should show it."""

    text: str = ""
    """What a member or a model wrote: neutralized when posted, as typed in a .txt file."""
    note: str = ""
    """The bot's own line under it (``-# seed 7 ...``), posted as it is."""
    files: Sequence[tuple[str, bytes]] = ()
    """(file name, contents)."""
    heading: str = ""
    """The bot's own lines above the text (what a voice message was heard as), posted as
    they are: whatever they quote must be neutralized already."""


class CancelView(discord.ui.View):
    """A Cancel button only the requester may press, labelled in the requester's language;
    it works while the job lives. Whoever presses it is answered in their own."""

    def __init__(self, handle: JobHandle, requester_id: int, locale: str | None = None) -> None:
        super().__init__(timeout=None)
        self.handle = handle
        self.requester_id = requester_id
        button: discord.ui.Button[CancelView] = discord.ui.Button(
            label=tr("Cancel", locale),
            style=discord.ButtonStyle.danger,
            custom_id=f"cancel:{handle.id}",
        )
        button.callback = self._pressed
        self.add_item(button)

    async def _pressed(self, interaction: discord.Interaction) -> None:
        locale = interaction.locale.value
        if interaction.user.id != self.requester_id:
            await interaction.response.send_message(
                tr("Only the member who asked can cancel this.", locale), ephemeral=True
            )
            return
        cancelled = self.handle.cancel("cancelled by the requester")
        text = (
            tr("Cancelled.", locale)
            if cancelled
            else tr("This request has already finished.", locale)
        )
        await interaction.response.send_message(text, ephemeral=True)


def describe_progress(task: str, event: JobEvent, locale: str | None = None) -> str | None:
    """The progress line of a job, in the requester's language (what a model writes stays
    as written)."""
    command = name_in(task, locale)
    if event.state is JobState.QUEUED and event.position is not None:
        position = event.position + 1
        if event.eta_s:
            return tr(
                "⏳ /{command}: number {position} in the queue, about {seconds}s", locale,
                command=command, position=position, seconds=max(1, round(event.eta_s)),
            )  # fmt: skip
        return tr(
            "⏳ /{command}: number {position} in the queue", locale,
            command=command, position=position,
        )  # fmt: skip
    if event.state is JobState.RUNNING:
        if event.step is not None and event.total and task == "summarize":
            return tr(
                "📄 /{command}: section {step} of {total} summarized", locale,
                command=command, step=event.step, total=event.total,
            )  # fmt: skip
        if event.step is not None and event.total:
            filled = round(10 * event.step / event.total)
            bar = "█" * filled + "░" * (10 - filled)
            return f"🎨 /{command}: {bar} {event.step}/{event.total}"
        if isinstance(event.partial, str) and event.partial:
            return clip(neutralize(event.partial))
        return tr("⚙️ /{command}: working…", locale, command=command)
    return None


class Place(ABC):
    """Where one job's replies go, decided once: the progress message, the result and its
    follow-up pieces, and where the result goes when the reply cannot take it."""

    policy: ReplyPolicy
    locale: str | None
    """The language of the bot's own words here (Discord's locale; None: English)."""

    @property
    @abstractmethod
    def filesize_limit(self) -> int:
        """Largest upload, in bytes, the reply may carry."""

    @abstractmethod
    async def show(
        self, content: str, view: discord.ui.View, preview: discord.File | None = None
    ) -> None:
        """Put progress in the reply (with a ``preview`` of an image being made, which
        replaces the last one); a failure is logged, never fatal."""

    @abstractmethod
    async def final(self, **fields: Any) -> discord.Message | None:
        """Show the final state in the reply; None when that cannot be done."""

    @abstractmethod
    async def more(self, piece: str) -> discord.Message:
        """Send a further piece of a long result after the reply."""

    @abstractmethod
    async def post_instead(
        self,
        pieces: Sequence[str],
        files: Sequence[tuple[str, bytes]],
        view: discord.ui.View | None,
    ) -> list[discord.Message]:
        """The reply cannot take the result: post it where the policy's fallback says."""


class InteractionPlace(Place):
    """The reply to a slash command, a menu or a button: the deferred response."""

    def __init__(self, interaction: discord.Interaction, policy: ReplyPolicy) -> None:
        self.interaction = interaction
        self.policy = policy
        self.locale = interaction.locale.value
        """The member's Discord client's language."""

    @property
    def filesize_limit(self) -> int:
        return self.interaction.filesize_limit

    async def show(
        self, content: str, view: discord.ui.View, preview: discord.File | None = None
    ) -> None:
        if not self.interaction.is_expired():
            files = {} if preview is None else {"attachments": [preview]}
            await edit(self.interaction, content=content, view=view, **files)

    async def final(self, **fields: Any) -> discord.Message | None:
        if self.interaction.is_expired():
            return None
        try:
            return await self.interaction.edit_original_response(
                allowed_mentions=NO_MENTIONS, **fields
            )
        except discord.HTTPException as exc:
            log.warning("Discord refused the final edit of a reply (%s); posting it instead", exc)
            return None

    async def more(self, piece: str) -> discord.Message:
        return await self.interaction.followup.send(
            piece, allowed_mentions=NO_MENTIONS, ephemeral=self.policy.ephemeral, wait=True
        )

    async def post_instead(
        self,
        pieces: Sequence[str],
        files: Sequence[tuple[str, bytes]],
        view: discord.ui.View | None,
    ) -> list[discord.Message]:
        """Post in the channel with a mention, or by DM."""
        interaction = self.interaction
        name = interaction.command.name if interaction.command else "request"
        command = name_in(name, self.locale)
        target: discord.abc.Messageable | None
        if self.policy.fallback == "dm":
            target = interaction.user
            header = tr("Your /{command} is ready:", self.locale, command=command)
        else:
            target = (
                interaction.channel
                if isinstance(interaction.channel, discord.abc.Messageable)
                else None
            )
            header = tr("{mention} your /{command} is ready:", self.locale,
                        mention=interaction.user.mention, command=command)  # fmt: skip
        if target is None:
            log.warning("a result whose reply cannot be edited has nowhere to go")
            return []
        return await _post(target, header, interaction.user, pieces, files, view)


class MessagePlace(Place):
    """A message in a channel, replying to a member's message where there is one (a
    mention, a reply, a DM) or opening a thread's conversation: posted on the first
    progress, then edited. Pieces of a long answer reply to the piece before, so a reply to
    any of them continues the chain."""

    policy = ReplyPolicy()

    def __init__(
        self,
        channel: discord.abc.Messageable,
        requester: discord.abc.User,
        reply_to: discord.Message | None = None,
        posted: Callable[[discord.Message], None] | None = None,
        locale: str | None = None,
    ) -> None:
        self.channel = channel
        self.requester = requester
        self.reply_to = reply_to
        self.locale = locale
        self.posted = posted
        """Told of each message posted, as soon as it is (before the answer is complete)."""
        self.reply: discord.Message | None = None

    @property
    def filesize_limit(self) -> int:
        guild = getattr(self.channel, "guild", None)
        if isinstance(guild, discord.Guild):
            return guild.filesize_limit
        return discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def _send(self, content: str, **fields: Any) -> discord.Message:
        """A new message: replying to the previous piece, or else to the member's message."""
        previous = self.reply or self.reply_to
        if previous is not None:
            sent = await previous.reply(
                content, mention_author=False, allowed_mentions=NO_MENTIONS, **fields
            )
        else:
            sent = await self.channel.send(content, allowed_mentions=NO_MENTIONS, **fields)
        if self.posted is not None:
            self.posted(sent)
        return sent

    async def show(
        self, content: str, view: discord.ui.View, preview: discord.File | None = None
    ) -> None:
        try:
            if self.reply is None:
                files = {} if preview is None else {"files": [preview]}
                self.reply = await self._send(content, view=view, **files)
            else:
                files = {} if preview is None else {"attachments": [preview]}
                await self.reply.edit(
                    content=content, view=view, allowed_mentions=NO_MENTIONS, **files
                )
        except discord.HTTPException as exc:
            log.warning("could not show progress in a reply: %s", exc)

    async def final(self, **fields: Any) -> discord.Message | None:
        content, view = fields.get("content", ""), fields.get("view")
        files = fields.get("attachments", [])
        try:
            if self.reply is None:
                self.reply = await self._send(
                    content, files=files, view=view or discord.utils.MISSING
                )
            else:
                self.reply = await self.reply.edit(
                    content=content, attachments=files, view=view, allowed_mentions=NO_MENTIONS
                )
        except discord.HTTPException as exc:
            log.warning("could not reply with a result (%s); posting it instead", exc)
            return None
        return self.reply

    async def more(self, piece: str) -> discord.Message:
        self.reply = await self._send(piece)
        return self.reply

    async def post_instead(
        self,
        pieces: Sequence[str],
        files: Sequence[tuple[str, bytes]],
        view: discord.ui.View | None,
    ) -> list[discord.Message]:
        """The member's message is gone (or the reply refused): post in the channel."""
        header = tr("{mention} here is my answer:", self.locale, mention=self.requester.mention)
        return await _post(self.channel, header, self.requester, pieces, files, view)


async def _post(
    target: discord.abc.Messageable,
    header: str,
    user: discord.abc.User,
    pieces: Sequence[str],
    files: Sequence[tuple[str, bytes]],
    view: discord.ui.View | None,
) -> list[discord.Message]:
    """Post a result with a header that mentions ``user`` (and nobody else)."""
    first, rest = pieces[0] if pieces else "", list(pieces[1:])
    if len(header) + 1 + len(first) > MESSAGE_LIMIT:  # never cut: the piece goes on its own
        first, rest = "", [first, *rest]
    try:
        sent = [
            await target.send(
                f"{header}\n{first}".rstrip(),
                files=_files(files),
                allowed_mentions=discord.AllowedMentions(users=[user]),
                view=view or discord.utils.MISSING,
            )
        ]
        for piece in rest:
            sent.append(await target.send(piece, allowed_mentions=NO_MENTIONS))
    except discord.Forbidden as exc:  # DMs closed, or no longer allowed in the channel
        log.warning("could not post a result whose reply cannot be edited: %s", exc)
        return []
    return sent


class JobWatcher:
    """Shows a job's queue position and progress in its reply, then delivers the result.

    It reacts to job events instead of awaiting the job, so no coroutine sits waiting on
    the accelerator. Progress edits are at most one per ``interval``; the last state is
    shown when the interval ends. ``finished`` resolves once the reply is final, with the
    messages that show the result (none when it failed).
    """

    def __init__(
        self,
        place: Place,
        handle: JobHandle,
        view: CancelView,
        interval: float,
        render: Callable[[Any], Reply],
        final_view: discord.ui.View | None = None,
        spoiler: bool = False,
    ) -> None:
        self.place = place
        self.spoiler = spoiler
        """The text streamed so far is shown behind a spoiler (an answer about one)."""
        self.handle = handle
        self.view = view
        self.interval = interval
        self.render = render
        self.final_view = final_view
        self.finished: asyncio.Future[list[discord.Message]] = (
            asyncio.get_running_loop().create_future()
        )
        self._loop = asyncio.get_running_loop()
        self._last_edit = -float("inf")
        self._shown: str | None = None
        self._pending: str | None = None
        self._preview: bytes | None = None
        """The newest preview of an image being made, not shown yet."""
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # Events arrive from the executor; replies run in the command's own context.
        self._context = contextvars.copy_context()
        handle.watch(self._on_event)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, context=self._context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_event(self, event: JobEvent) -> None:
        if event.state.final:
            if self._timer is not None:
                self._timer.cancel()
            self._spawn(self._finish())
            return
        if isinstance(event.partial, bytes):  # a preview: the progress line stays
            self._preview = event.partial
            text = self._pending or self._shown
        else:
            text = describe_progress(self.handle.task, event, self.place.locale)
            if self.spoiler and text is not None and isinstance(event.partial, str):
                text = f"||{clip(text, 1990)}||"
        if text is None or (text == self._shown and self._preview is None):
            return
        self._pending = text
        wait = self._last_edit + self.interval - self._loop.time()
        if wait <= 0:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(wait, self._flush, context=self._context)

    def _flush(self) -> None:
        self._timer = None
        if self._pending is None or self.finished.done():
            return
        text, self._pending = self._pending, None
        preview, self._preview = self._preview, None
        self._shown, self._last_edit = text, self._loop.time()
        self._spawn(self._edit_progress(text, preview))

    async def _edit_progress(self, text: str, preview: bytes | None) -> None:
        name = "SPOILER_preview.jpg" if self.spoiler else "preview.jpg"
        file = None if preview is None else discord.File(io.BytesIO(preview), filename=name)
        async with self._lock:
            if not self.finished.done():
                await self.place.show(text, self.view, file)

    async def _finish(self) -> None:
        async with self._lock:
            self.view.stop()
            shown: list[discord.Message] = []
            try:
                error = self.handle.error
                if error is None:
                    reply = self.render(self.handle.peek_result())
                    shown = await deliver(self.place, reply, self.final_view)
                else:
                    await show_failure(self.place, error)
            except Exception:
                log.exception("could not deliver the result of job %d", self.handle.id)
                with contextlib.suppress(discord.HTTPException):
                    await show_failure(self.place, RuntimeError("the result could not be shown"))
            finally:
                if not self.finished.done():
                    self.finished.set_result(shown)


async def edit(interaction: discord.Interaction, **fields: object) -> None:
    """Edit the original response; a failed progress edit is logged, never fatal."""
    try:
        await interaction.edit_original_response(allowed_mentions=NO_MENTIONS, **fields)
    except discord.HTTPException as exc:
        log.warning("could not edit an interaction response: %s", exc)


async def deliver(
    place: Place, reply: Reply, view: discord.ui.View | None = None
) -> list[discord.Message]:
    """Put the result where the member will see it, within Discord's limits; returns the
    messages that show it.

    Long text is split over a few messages or attached as a .txt file. When the reply
    can't take it (discord.py has retried rate limits and server errors by then), the
    result goes where the place's fallback says.
    """
    files = list(reply.files)
    limit = place.filesize_limit
    if sum(len(data) for _, data in files) > limit:
        note = tr("The result is larger than this server's {mebibytes} MiB upload limit.",
                  place.locale, mebibytes=limit // 2**20)  # fmt: skip
        reply, files = Reply(note=note), []
    text = neutralize(reply.text)
    content = "\n".join(part for part in (reply.heading, text, reply.note) if part)
    pieces = split_text(content) if content else [""]
    if len(pieces) > MAX_SPLIT_MESSAGES:
        files.append(("result.txt", reply.text.encode()))
        preview = clip(text, PREVIEW_CHARS) + "\n" + tr("*(full text attached)*", place.locale)
        pieces = ["\n".join(part for part in (reply.heading, preview) if part)]
    first = await place.final(content=pieces[0], attachments=_files(files), view=view)
    if first is None:
        return await place.post_instead(pieces, files, view)
    return [first, *[await place.more(piece) for piece in pieces[1:]]]


def _files(files: Sequence[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in files]


async def show_failure(place: Place, error: BaseException) -> None:
    """A job that ended without a result: say why in place of its progress message."""
    prefix = "🛑" if isinstance(error, JobCancelled) else "⚠️"
    text = clip(f"{prefix} {neutralize(explain(error))}")
    if await place.final(content=text, view=None, attachments=[]) is None:  # no preview left
        await place.post_instead([text], [], None)
