"""/config: every rule the bot enforces in a server, shown and set by its managers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import NotAnAdmin, caller_of, image_model_choices, is_admin
from bot.delivery import NO_MENTIONS
from bot.guilds import (
    BLOCKED_TERM_MAX_CHARS,
    BLOCKED_TERMS_MAX,
    CLASSROOM_BLOCKED_TERMS,
    CLASSROOM_NEGATIVE_PROMPT,
    NEGATIVE_PROMPT_MAX_CHARS,
    PERSONA_MAX_CHARS,
    GuildSettings,
)
from bot.invocations import COMMANDS_OVER_TASKS
from bot.markdown import clip, neutralize
from bot.quotas import QuotaPolicy
from handlers.base import InvalidInput

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

Rule = Literal[
    "channels", "commands", "quotas", "cooldowns", "exempt_roles", "blocked_terms", "personas",
    "read_aloud", "voice_replies", "auto_transcribe", "image_model", "everything",
]  # fmt: skip
"""What ``/config reset`` puts back to the bot's defaults."""

RESETS: dict[str, tuple[str, ...]] = {
    "channels": ("allowed_channels",),
    "commands": ("enabled_commands",),
    "quotas": ("quotas",),
    "cooldowns": ("cooldowns",),
    "exempt_roles": ("exempt_roles",),
    "blocked_terms": ("blocked_terms",),
    "personas": ("persona", "channel_personas"),
    "read_aloud": ("read_aloud_max_chars",),
    "voice_replies": ("voice_replies",),
    "auto_transcribe": ("auto_transcribe_channels",),
    "image_model": ("image_model",),
    "everything": tuple(GuildSettings.model_fields),
}

SettableChannel = discord.TextChannel | discord.VoiceChannel | discord.ForumChannel


def _short(text: str, limit: int = 80) -> str:
    return neutralize(text if len(text) <= limit else text[: limit - 1] + "…")


def _per_task(mine: dict[str, float], bot_wide: dict[str, float], unit: str) -> str:
    merged = {**bot_wide, **mine}
    if not merged:
        return "none"
    return ", ".join(
        f"/{task} {value:g}{unit}" + ("" if task in mine else " (bot default)")
        for task, value in sorted(merged.items())
    )


def render_settings(
    guild: GuildSettings,
    policy: QuotaPolicy,
    tasks: list[str],
    screened: bool,
    read_aloud_max_chars: int,
    image_models: list[str],
) -> str:
    """Every rule in force here, saying which are the server's own and which the bot's."""
    on = sorted(tasks) if guild.enabled_commands is None else sorted(guild.enabled_commands)
    off = sorted(set(tasks) - set(on))
    for command, task in COMMANDS_OVER_TASKS.items():
        if task in tasks:
            (off if command in guild.disabled_commands or task in off else on).append(command)
    on, off = sorted(on), sorted(off)
    images = {
        "age_restricted_only": "only in age-restricted channels",
        "allow": "in any channel",
    }[guild.images_where]
    classroom = "off"
    if guild.classroom_safe:
        classroom = (
            "**on**: images only in age-restricted channels, each screened by the safety "
            f"filter, the classroom list of {len(CLASSROOM_BLOCKED_TERMS)} refused words and "
            "negative prompt added"
        )
        if not screened:
            classroom += " (⚠️ the bot has no safety filter, so /imagine and /describe are refused)"
    image_model = f"{image_models[0]} (bot default)" if image_models else "none (no /imagine)"
    if guild.image_model in image_models:
        image_model = guild.image_model
    elif guild.image_model is not None:
        image_model = f"{guild.image_model} is not installed any more, so {image_model}"
    personas = [
        f"<#{channel}>: “{_short(text)}”" for channel, text in guild.channel_personas.items()
    ]
    lines = [
        "**This server's settings**",
        f"- Replies: {'private to the member who asked' if guild.ephemeral else 'public'}",
        f"- Images: {images}",
        f"- Image model when a member picks none: {image_model}",
        f"- Classroom-safe: {classroom}",
        f"- Commands on: {', '.join(f'/{t}' for t in on) or 'none'}"
        + (f"; off: {', '.join(f'/{t}' for t in off)}" if off else ""),
        "- Channels: "
        + (
            "every channel"
            if guild.allowed_channels is None
            else ", ".join(f"<#{c}>" for c in guild.allowed_channels) + " (and their threads)"
        ),
        f"- Daily limits per member: {_per_task(dict(guild.quotas), dict(policy.daily), '')}",
        "- Cooldowns: " + _per_task(guild.cooldowns, dict(policy.cooldowns), " s"),
        "- Free of limits and cooldowns: "
        + (", ".join(f"<@&{r}>" for r in guild.exempt_roles) or "no role"),
        "- Words refused in /imagine prompts: "
        + (", ".join(f"`{_short(t, 50)}`" for t in guild.blocked_terms) or "none")
        + (" (and the classroom list)" if guild.classroom_safe else ""),
        "- Negative prompt added to images: "
        + (f"“{_short(guild.negative_prompt)}”" if guild.negative_prompt else "none")
        + (f" (and “{CLASSROOM_NEGATIVE_PROMPT}”)" if guild.classroom_safe else ""),
        "- Chat persona: "
        + (f"“{_short(guild.persona)}”" if guild.persona else "the bot's default")
        + (f"; {'; '.join(personas)}" if personas else ""),
        f"- A thread for every /chat: {'yes' if guild.chat_threads else 'no'}",
        "- Read aloud in calls: up to "
        + (
            f"{guild.read_aloud_max_chars} characters of a message"
            if guild.read_aloud_max_chars is not None
            else f"{read_aloud_max_chars} characters of a message (bot default)"
        ),
        "- Voice messages answered with a voice message: "
        + ("yes, for members who ask (/voice replies)" if guild.voice_replies else "no"),
        "- Voice messages transcribed in: "
        + (", ".join(f"<#{c}>" for c in guild.auto_transcribe_channels) or "no channel"),
    ]
    return "\n".join(lines)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ServerConfig(commands.GroupCog, group_name="config", group_description="This server's rules"):
    """Each subcommand changes one rule through ``GuildSettingsStore.update``, the one way
    settings change, and answers privately with what changed."""

    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:
        """Checked when each subcommand runs, since a server can let anyone see /config."""
        if not is_admin(interaction):
            raise NotAnAdmin
        return True

    def _settings(self, interaction: Interaction) -> GuildSettings:
        assert interaction.guild_id is not None
        return self.bot.guild_settings.get(interaction.guild_id)

    def _task(self, option: str, name: str) -> str:
        name = name.strip().removeprefix("/")
        tasks = self.bot.executor.tasks
        if name not in tasks:
            raise InvalidInput(option, f"choose one of {', '.join(sorted(tasks))}")
        return name

    def _per_task(
        self, interaction: Interaction, rule: str, task: str, value: float | None
    ) -> dict[str, float]:
        """A per-task rule with ``task`` set to ``value``, or back to the bot's with None."""
        table = dict(getattr(self._settings(interaction), rule))
        table.pop(task, None)
        if value is not None:
            table[task] = value
        return table

    def _installed_models(self) -> list[str]:
        drawing = self.bot.executor.tasks.get("imagine")
        return drawing.model_names() if drawing is not None else []  # type: ignore[attr-defined]

    def _screened(self) -> bool:
        imagine = self.bot.executor.tasks.get("imagine")
        return getattr(imagine, "safety_model", None) is not None

    async def _change(self, interaction: Interaction, done: str, **changes: object) -> None:
        """Write the change (a disk write, so the reply is deferred) and say what it did."""
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.bot.guild_settings.update(interaction.guild_id, **changes)
        await interaction.followup.send(
            clip(f"✅ {done}"), ephemeral=True, allowed_mentions=NO_MENTIONS
        )
        self.bot.invoker.record_command("config", caller_of(interaction))

    async def _task_names(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=f"/{task}", value=task)
            for task in sorted(self.bot.executor.tasks)
            if current.strip().removeprefix("/") in task
        ][:25]

    @app_commands.command(description="Every rule in force in this server")
    async def show(self, interaction: Interaction) -> None:
        text = render_settings(
            self._settings(interaction),
            self.bot.invoker.quotas.policy,
            list(self.bot.executor.tasks),
            self._screened(),
            self.bot.settings.voice.max_chars,
            self._installed_models(),
        )
        await interaction.response.send_message(
            clip(text), ephemeral=True, allowed_mentions=NO_MENTIONS
        )
        self.bot.invoker.record_command("config", caller_of(interaction))

    @app_commands.command(description="Whether answers are public or only for the asker")
    @app_commands.describe(visibility="private: only the member who asked sees the answer")
    async def replies(
        self, interaction: Interaction, visibility: Literal["public", "private"]
    ) -> None:
        await self._change(
            interaction, f"Replies are now {visibility}.", ephemeral=visibility == "private"
        )

    @app_commands.command(description="Where /imagine may post images")
    @app_commands.describe(where="Only in age-restricted channels, or in any channel")
    async def images(
        self, interaction: Interaction, where: Literal["age_restricted_only", "allow"]
    ) -> None:
        done = "Images may now be posted " + (
            "in any channel." if where == "allow" else "only in age-restricted channels."
        )
        if where == "allow" and self._settings(interaction).classroom_safe:
            done += " Classroom-safe is on: they stay in age-restricted channels until it is off."
        await self._change(interaction, done, nsfw=where)

    @app_commands.command(description="The image model /imagine draws with here by default")
    @app_commands.describe(name="One of the installed models (empty: the bot's default)")
    async def image_model(self, interaction: Interaction, name: str | None = None) -> None:
        installed = self._installed_models()
        if name is not None and name.strip().lower() not in installed:
            raise InvalidInput("name", f"choose one of {', '.join(installed) or 'none'}")
        chosen = None if name is None else name.strip().lower()
        shown = chosen or f"the bot's default ({installed[0] if installed else 'none'})"
        await self._change(
            interaction, f"/imagine now draws with {shown} here.", image_model=chosen
        )

    @image_model.autocomplete("name")
    async def _image_models(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return image_model_choices(self.bot, current)

    @app_commands.command(name="command", description="Turn a command on or off here")
    @app_commands.describe(name="The command", enabled="On or off")
    async def command_switch(self, interaction: Interaction, name: str, enabled: bool) -> None:
        name = name.strip().removeprefix("/")
        if name not in self._command_names():
            raise InvalidInput("name", f"choose one of {', '.join(self._command_names())}")
        settings = self._settings(interaction)
        done = f"/{name} is now {'on' if enabled else 'off'} in this server."
        if name in COMMANDS_OVER_TASKS:  # a command over another's task: off alone
            task = COMMANDS_OVER_TASKS[name]
            tasks_on = settings.enabled_commands
            if enabled and tasks_on is not None and task not in tasks_on:
                done += f" It runs on /{task}, which is off here: turn that on too."
            disabled = set(settings.disabled_commands)
            disabled = disabled - {name} if enabled else disabled | {name}
            await self._change(interaction, done, disabled_commands=sorted(disabled))
            return
        everything = set(self.bot.executor.tasks)
        on = set(everything if settings.enabled_commands is None else settings.enabled_commands)
        on = on | {name} if enabled else on - {name}
        await self._change(
            interaction, done, enabled_commands=None if on >= everything else sorted(on)
        )

    def _command_names(self) -> list[str]:
        """Every command a server can turn off: each task's, and those built on a task."""
        tasks = self.bot.executor.tasks
        over = [command for command, task in COMMANDS_OVER_TASKS.items() if task in tasks]
        return sorted([*tasks, *over])

    @command_switch.autocomplete("name")
    async def _commands(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        wanted = current.strip().removeprefix("/")
        return [
            app_commands.Choice(name=f"/{command}", value=command)
            for command in self._command_names()
            if wanted in command
        ][:25]

    @app_commands.command(description="Allow commands in a channel, or stop allowing them")
    @app_commands.describe(
        channel="The channel (its threads follow it)",
        allowed="Allowed: once one channel is allowed, commands work only in allowed ones",
    )
    async def channel(
        self, interaction: Interaction, channel: SettableChannel, allowed: bool
    ) -> None:
        current = self._settings(interaction).allowed_channels
        if not allowed and current is None:
            raise InvalidInput(
                "allowed", "commands work in every channel; allow some to restrict them to those"
            )
        chosen = set(current or ())
        chosen = chosen | {channel.id} if allowed else chosen - {channel.id}
        if not chosen:
            raise InvalidInput(
                "allowed",
                "that is the last allowed channel; use `/config reset rule:channels` to allow "
                "every channel again",
            )
        await self._change(
            interaction,
            f"Commands now work in {', '.join(f'<#{c}>' for c in sorted(chosen))} only.",
            allowed_channels=sorted(chosen),
        )

    @app_commands.command(description="How many times a day each member may use a command")
    @app_commands.describe(
        task="The command", per_day="Requests per member per UTC day (empty: the bot's default)"
    )
    async def quota(
        self,
        interaction: Interaction,
        task: str,
        per_day: app_commands.Range[int, 0, 10_000] | None = None,
    ) -> None:
        name = self._task("task", task)
        quotas = self._per_task(interaction, "quotas", name, per_day)
        done = (
            f"/{name}: {per_day} a day per member."
            if per_day is not None
            else f"/{name} follows the bot's daily limit again."
        )
        await self._change(interaction, done, quotas=quotas)

    quota.autocomplete("task")(_task_names)

    @app_commands.command(description="Seconds a member waits between two uses of a command")
    @app_commands.describe(task="The command", seconds="Seconds (empty: the bot's default)")
    async def cooldown(
        self,
        interaction: Interaction,
        task: str,
        seconds: app_commands.Range[float, 0.0, 86_400.0] | None = None,
    ) -> None:
        name = self._task("task", task)
        cooldowns = self._per_task(interaction, "cooldowns", name, seconds)
        done = (
            f"/{name}: {seconds:g} s between a member's requests."
            if seconds is not None
            else f"/{name} follows the bot's cooldown again."
        )
        await self._change(interaction, done, cooldowns=cooldowns)

    cooldown.autocomplete("task")(_task_names)

    @app_commands.command(description="Free a role of daily limits and cooldowns, or not")
    @app_commands.describe(role="The role", exempt="Free of limits and cooldowns")
    async def exempt_role(self, interaction: Interaction, role: discord.Role, exempt: bool) -> None:
        roles = set(self._settings(interaction).exempt_roles)
        roles = roles | {role.id} if exempt else roles - {role.id}
        done = f"<@&{role.id}> is {'now free of' if exempt else 'subject to'} limits and cooldowns."
        await self._change(interaction, done, exempt_roles=sorted(roles))

    @app_commands.command(description="Refuse a word or phrase in /imagine prompts, or allow it")
    @app_commands.describe(term="A word or phrase (any letter case)", blocked="Refused")
    async def blocked_term(
        self,
        interaction: Interaction,
        term: app_commands.Range[str, 1, BLOCKED_TERM_MAX_CHARS],
        blocked: bool = True,
    ) -> None:
        term = term.strip()
        if not term:
            raise InvalidInput("term", "is empty")
        terms = [
            t for t in self._settings(interaction).blocked_terms if t.casefold() != term.casefold()
        ]
        if blocked:
            if len(terms) >= BLOCKED_TERMS_MAX:
                raise InvalidInput("term", f"a server may refuse at most {BLOCKED_TERMS_MAX} terms")
            terms.append(term)
        done = f"`{_short(term, 50)}` is {'refused' if blocked else 'allowed'} in prompts."
        await self._change(interaction, done, blocked_terms=terms)

    @app_commands.command(description="What every image here should avoid")
    @app_commands.describe(text="Added to each /imagine's negative prompt (empty: none)")
    async def negative_prompt(
        self,
        interaction: Interaction,
        text: app_commands.Range[str, 1, NEGATIVE_PROMPT_MAX_CHARS] | None = None,
    ) -> None:
        done = "Images here now avoid that." if text else "No negative prompt is added any more."
        await self._change(interaction, done, negative_prompt=text)

    @app_commands.command(description="One switch for a school: safe images only")
    @app_commands.describe(
        on="Images only in age-restricted channels, screened, with refused words and a "
        "negative prompt"
    )
    async def classroom_safe(self, interaction: Interaction, on: bool) -> None:
        done = "Classroom-safe is " + ("on." if on else "off; the other settings apply again.")
        if on and not self._screened():
            done += (
                " ⚠️ The bot has no image safety filter, so /imagine is refused here until its "
                "owner sets BOT_IMAGINE__SAFETY_MODEL."
            )
        await self._change(interaction, done, classroom_safe=on)

    @app_commands.command(description="What the chat model is told before every conversation")
    @app_commands.describe(
        text="A system prompt, e.g. You are a patient chemistry tutor.",
        channel="Only this channel and its threads (default: the whole server)",
        clear="Go back to the bot's default (for the channel, if given)",
    )
    async def persona(
        self,
        interaction: Interaction,
        text: app_commands.Range[str, 1, PERSONA_MAX_CHARS] | None = None,
        channel: SettableChannel | None = None,
        clear: bool = False,
    ) -> None:
        if (text is None) == (not clear):
            raise InvalidInput("text", "give a persona, or clear:true, not both or neither")
        where = "this server" if channel is None else f"<#{channel.id}>"
        done = f"The persona of {where} is {'set' if text else 'cleared'}."
        if channel is None:
            await self._change(interaction, done, persona=text)
            return
        personas = dict(self._settings(interaction).channel_personas)
        personas.pop(channel.id, None)
        if text is not None:
            personas[channel.id] = text
        await self._change(interaction, done, channel_personas=personas)

    @app_commands.command(description="Open a thread for every /chat conversation")
    @app_commands.describe(on="A thread for every /chat")
    async def chat_threads(self, interaction: Interaction, on: bool) -> None:
        done = "Every /chat now opens a thread." if on else "/chat answers in the channel."
        await self._change(interaction, done, chat_threads=on)

    @app_commands.command(description="Answer voice messages with a voice message too")
    @app_commands.describe(on="For members who ask for it with /voice replies")
    async def voice_replies(self, interaction: Interaction, on: bool) -> None:
        done = (
            "Members who ask for it (/voice replies) now hear the answers to their voice messages."
            if on
            else "Voice messages are answered in text only."
        )
        await self._change(interaction, done, voice_replies=on)

    @app_commands.command(description="Transcribe every voice message in a channel, or stop")
    @app_commands.describe(channel="The channel (its threads follow it)", on="Transcribe there")
    async def auto_transcribe(
        self, interaction: Interaction, channel: SettableChannel, on: bool
    ) -> None:
        chosen = set(self._settings(interaction).auto_transcribe_channels)
        chosen = chosen | {channel.id} if on else chosen - {channel.id}
        done = f"Voice messages in <#{channel.id}> are {'now' if on else 'no longer'} transcribed."
        if on and self._settings(interaction).ephemeral:
            done += (
                " ⚠️ Replies are private in this server, so no transcript is posted until "
                "they are public again (/config replies)."
            )
        if on and not self.bot.settings.read_messages:
            done += (
                " ⚠️ This bot does not read messages, so Discord does not show it voice messages "
                "that are not said to it; its owner can set BOT_READ_MESSAGES=true."
            )
        await self._change(interaction, done, auto_transcribe_channels=sorted(chosen))

    @app_commands.command(description="Put a rule back to the bot's defaults")
    @app_commands.describe(rule="The rule; everything resets every setting of this server")
    async def reset(self, interaction: Interaction, rule: Rule) -> None:
        defaults = GuildSettings()
        changes = {field: getattr(defaults, field) for field in RESETS[rule]}
        done = f"{rule.replace('_', ' ').capitalize()}: back to the defaults."
        await self._change(interaction, done, **changes)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(ServerConfig(bot))
