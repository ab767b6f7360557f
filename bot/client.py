"""The Discord client: loads the cogs, syncs commands, and answers every error one way."""

from __future__ import annotations

import asyncio
import logging
import math
import pkgutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import Services
from bot.calls import Calls
from bot.conversations import Conversations, ConversationStore
from bot.delivery import CancelView, JobWatcher, Place, Reply, ReplyPolicy
from bot.executor import Busy, ExecutorError, JobHandle, ShuttingDown
from bot.guilds import GuildSettings, GuildSettingsStore
from bot.image_requests import ImageRequests
from bot.invocations import CommandDisabled
from bot.localization import NAME, Catalogs, catalogs, name_in, tr
from bot.markdown import neutralize
from bot.models import explain
from bot.quotas import CooldownActive, GpuBudgetExceeded, QuotaExceeded
from bot.settings import Settings
from handlers.base import HandlerError, InvalidInput, TaskKind

log = logging.getLogger(__name__)


def extensions() -> list[str]:
    """Every module in ``bot/cogs``, by name: the client imports none of them (they import
    what they share from below, ``bot/commands.py``), and a new one is loaded as it is."""
    folder = Path(__file__).with_name("cogs")
    return [f"bot.cogs.{module.name}" for module in pkgutil.iter_modules([str(folder)])]


def friendly(error: BaseException, locale: str | None = None) -> str | None:
    """The reply for an error a member can act on, in their language where it is the bot's
    own words (a handler's explanation stays English); None for a bug."""
    match error:
        case InvalidInput():
            return f"**{name_in(error.option, locale)}**: {error.message}"
        case Busy(kind="user_limit"):
            return tr(
                "You already have jobs in progress; try again in ~{seconds}s. Nothing was queued.",
                locale, seconds=math.ceil(error.retry_after),
            )  # fmt: skip
        case Busy():
            return tr(
                "The bot is busy; try again in ~{seconds}s. Nothing was queued.",
                locale, seconds=math.ceil(error.retry_after),
            )  # fmt: skip
        case ShuttingDown():
            return tr("the bot is shutting down; try again in a minute", locale)
        case QuotaExceeded() | CooldownActive() | GpuBudgetExceeded():
            return error.message(locale)
        case CommandDisabled() | HandlerError():
            return str(error)
        case ExecutorError():
            return explain(error)
        case app_commands.CheckFailure():
            if not str(error):
                return tr("You can't use this here.", locale)
            # The reasons the bot gives itself (``NotAnAdmin``) are in the catalogs.
            reason = catalogs().translate(str(error), locale) if locale else str(error)
            return tr("You can't use this: {reason}", locale, reason=reason)
    return None


def answer_to(error: BaseException, locale: str | None = None) -> str:
    """What a member is told about an error: what they can act on, or an id to quote for a
    bug (logged with its traceback)."""
    text = friendly(error, locale)
    if text is None:
        error_id = uuid.uuid4().hex[:8]
        log.error("command failed (error id %s)", error_id, exc_info=error)
        text = tr("Something went wrong on our side (error id `{error_id}`).", locale,
                  error_id=error_id)  # fmt: skip
    return neutralize(text)


class CommandTranslator(app_commands.Translator):
    """Command, option and choice names and descriptions from the catalogs, for every
    Discord locale that has one (of its language, at least)."""

    NAMES = frozenset({
        app_commands.TranslationContextLocation.command_name,
        app_commands.TranslationContextLocation.group_name,
        app_commands.TranslationContextLocation.parameter_name,
    })  # fmt: skip
    """Where Discord's name rules apply (not to a context menu's name, which is free text)."""

    def __init__(self, catalogs: Catalogs) -> None:
        self.catalogs = catalogs

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        is_name = context.location in self.NAMES and not isinstance(
            context.data, app_commands.ContextMenu
        )
        return self.catalogs.lookup(string.message, locale.value, NAME if is_name else None)


class AssistantBot(commands.Bot):
    def __init__(self, services: Services, settings: Settings) -> None:
        intents = discord.Intents.default()
        intents.message_content = settings.read_messages
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.settings = settings
        self.executor = services.executor
        self.usage = services.usage
        self.invoker = services.invoker
        self.guild_settings: GuildSettingsStore = services.invoker.guilds
        self.edit_interval = settings.edit_interval_s
        self.image_requests = ImageRequests(services.usage, settings.imagine.reroll_hours * 3600)
        self.calls = Calls()
        """Each server's voice call: /speak and reading aloud say speech there."""
        self.conversations = Conversations(
            services.executor, ConversationStore(services.usage), services.invoker.quotas
        )
        self.watchers: dict[int, JobWatcher] = {}
        """Jobs being followed on Discord, by job id."""
        self.voice_protocol: Callable[[discord.Client, Any], discord.VoiceProtocol] = (
            discord.VoiceClient
        )
        """What a voice connection is made with (``channel.connect(cls=...)``): the tests'
        recording protocol stands in for discord.py's VoiceClient here."""
        self.tree.on_error = self.on_app_command_error

    def is_connected(self) -> bool:
        """Ready and holding an open gateway connection.

        ``is_ready()`` alone stays true while discord.py reconnects.
        """
        return self.is_ready() and not self.is_closed() and self.ws is not None and self.ws.open

    def is_healthy(self) -> bool:
        """Connected, and the executor's engine runs with no batch stuck on a device: what
        the heartbeat reports."""
        return self.is_connected() and self.executor.health().ok

    async def stop_gracefully(self, replies_timeout_s: float = 15.0) -> None:
        """Refuse new work, let running jobs finish (queued ones end with a reason), wait for
        their replies to go out, then disconnect."""
        await self.executor.shutdown()
        replies = [watcher.finished for watcher in self.watchers.values()]
        if replies:
            await asyncio.wait(replies, timeout=replies_timeout_s)
        await self.usage.flush()  # before anything else can stall the way out
        await self.close()

    def is_private(self, interaction: discord.Interaction) -> bool:
        """A DM, or anywhere outside the servers the bot is in: no server's rules apply
        there, only the bot-wide direct-message policy."""
        return self.outside_servers(interaction.guild_id)

    def outside_servers(self, guild_id: int | None) -> bool:
        return guild_id is None or self.get_guild(guild_id) is None

    def add_menu(self, menu: app_commands.ContextMenu) -> None:
        """A message menu entry, if the owner chose it (``BOT_MESSAGE_MENUS``: Discord
        allows five)."""
        if menu.name in self.settings.message_menus:
            self.tree.add_command(menu)

    def remove_menu(self, menu: app_commands.ContextMenu) -> None:
        self.tree.remove_command(menu.name, type=menu.type)

    def follow(
        self,
        handle: JobHandle,
        place: Place,
        render: Callable[[Any], Reply],
        requester_id: int,
        final_view: discord.ui.View | None = None,
        spoiler: bool = False,
    ) -> JobWatcher:
        """Show a job's progress and result at ``place`` (with a Cancel button only its
        requester may press; text streamed so far behind a ``spoiler`` when asked), and keep
        track of it until the reply is final; both in the place's language."""
        view = CancelView(handle, requester_id, place.locale)
        watcher = JobWatcher(place, handle, view, self.edit_interval, render, final_view, spoiler)
        self.watchers[handle.id] = watcher
        watcher.finished.add_done_callback(lambda _: self.watchers.pop(handle.id, None))
        return watcher

    def settings_for(self, interaction: discord.Interaction) -> GuildSettings | None:
        """The guild's settings, or None where no guild's rules apply."""
        if self.is_private(interaction):
            return None
        assert interaction.guild_id is not None
        return self.guild_settings.get(interaction.guild_id)

    def reply_policy(self, interaction: discord.Interaction) -> ReplyPolicy:
        """Private where the server asks for it; a fallback by DM where replies are private
        or there is no server channel to post in."""
        guild = self.settings_for(interaction)
        ephemeral = guild is not None and guild.ephemeral
        return ReplyPolicy(ephemeral, "channel" if guild is not None and not ephemeral else "dm")

    def declare_places(self) -> None:
        """Declare where each command can be used, so that Discord offers it only there:
        servers (where the bot is installed), and direct messages as BOT_DIRECT_MESSAGES
        allows. Never user installs, which would reach servers without the bot."""
        policy = self.settings.direct_messages
        for command in self.tree.get_commands():
            task = self.executor.tasks.get(command.extras.get("task", command.name.lower()))
            if command.guild_only or policy == "off":
                dms = False
            elif task is not None:
                dms = policy == "all" or task.kind is TaskKind.TEXT
            else:  # /queue, /stats, /usage
                dms = True
            command.allowed_contexts = app_commands.AppCommandContext(
                guild=True, dm_channel=dms, private_channel=False
            )
            command.allowed_installs = app_commands.AppInstallationType(guild=True, user=False)

    async def setup_hook(self) -> None:
        for extension in extensions():
            await self.load_extension(extension)
        self.declare_places()
        await self.tree.set_translator(CommandTranslator(catalogs()))
        if self.settings.dev_guild is not None:
            guild = discord.Object(self.settings.dev_guild)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        await self.report_error(interaction, cause)

    async def report_error(self, interaction: discord.Interaction, error: BaseException) -> None:
        """The one answer to a failed command or button: what the member can act on, or an
        id to quote for a bug. Before the reply is deferred it is private; after, it takes
        the deferred reply's place, as private as that is; in the member's language."""
        text = answer_to(error, interaction.locale.value)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as exc:
            log.warning("could not report an error to the member: %s", exc)
