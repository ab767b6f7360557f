"""Talking to the chat model: /chat, a mention, a reply to an answer, a thread the bot opened,
and direct messages. Discord holds the conversation; this cog reads it back as turns.

Without the Message Content intent Discord still gives the bot the content of messages that
mention it, of direct messages and of its own messages, so mentions, replies that keep their
@mention (the default) and DMs work without it; messages in a thread that do not mention
the bot reach it empty unless the intent is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import answer_to
from bot.commands import Text, caller_of, place_caller, render
from bot.conversations import Answer, Conversations, Memory, Turn, command_word
from bot.delivery import NO_MENTIONS, InteractionPlace, MessagePlace, Place, Reply
from bot.documents import MAX_DOCUMENT_BYTES, is_document
from bot.executor import JobHandle
from bot.guilds import GuildSettings
from bot.hearing import HEARD, heard_heading, is_voice_message, read_sound, sound_of
from bot.invocations import Caller, CommandDisabled
from bot.localization import tr
from bot.markdown import clip, neutralize
from bot.reading import Readable, may_read_history, read_file
from bot.seeing import Picture, check_images, download, hidden, pictures_of
from bot.voice_replies import VoiceReplies
from handlers.base import InvalidInput
from handlers.chat import ChatRequest
from handlers.describe import IN_BRIEF, DescribeRequest, DescribeResult
from handlers.transcribe import TranscribeResult

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.7
THREAD_NAME_CHARS = 90
"""Discord allows 100; the rest is for the ellipsis."""
SPOKEN_TO = (discord.MessageType.default, discord.MessageType.reply)
"""Messages a member wrote (not joins, pins or boosts)."""
UNREADABLE_HERE = "you cannot read the earlier messages here, so I show nothing of them"
UNSEEN = "an image I could not look at"
UNSHOWN = "an image not shown here (marked explicit by Discord, or too large)"
BRIEF_TOKENS = 96
"""The longest line describing an earlier image."""
DESCRIBED_AT_ONCE = 4
"""The most earlier images of a conversation described for one turn (the newest; they are
kept, so a long thread's images are described over its next turns, never all at once)."""
NOTE = "-# "
"""Starts the bot's own lines under an answer (a model's own such line is escaped, or is in
a code block, which ends with its fence)."""


@dataclass(frozen=True)
class Route:
    """Where a member's message belongs."""

    conversation: str
    branch_of: str | None = None
    """The conversation it branches off: it replies to one of that conversation's earlier
    answers, not its latest."""
    at: int = 0
    """The answer it branches off at."""


@dataclass(frozen=True)
class Prepared:
    """A turn read back and fitted to the model."""

    request: ChatRequest
    left_out: bool
    """Earlier messages were left out: the member may not read them."""
    per_turn: list[list[Picture]]
    """The images the vision model is shown, by the turns the request holds (its
    history's, then the newest); none: the chat model answers."""
    spoiler: bool = False
    """An image of those turns, shown or described, is a spoiler: so is the answer."""

    @property
    def shown(self) -> list[Picture]:
        return [picture for turn in self.per_turn for picture in turn]


def seed_of(snowflake: int) -> int:
    return snowflake % 2**31


def thread_name(question: str) -> str:
    name = " ".join(question.split())
    return name if len(name) <= THREAD_NAME_CHARS else name[: THREAD_NAME_CHARS - 1] + "…"


class ConversationsCog(commands.Cog, name="Conversations"):
    conversation = app_commands.Group(
        name="conversation", description="The chat conversation in this thread or DM"
    )

    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self._pending: set[asyncio.Task[None]] = set()
        speak = bot.executor.tasks.get("speak")
        self.voice_replies = VoiceReplies(
            bot.invoker,
            bot.guild_settings,
            bot.conversations.store,
            bot.settings.speak.max_chars,
            lambda: speak.languages() if speak is not None else [],  # type: ignore[attr-defined]
        )

    async def cog_unload(self) -> None:
        await self.voice_replies.settle()

    @property
    def conversations(self) -> Conversations:
        return self.bot.conversations

    # Slash commands

    @app_commands.command(description="Talk to the chat model; reply to its answer to go on")
    @app_commands.describe(
        message="What to say",
        temperature="0 answers the same way each time",
        thread="Open a thread for this conversation (the server may always do so)",
    )
    async def chat(
        self,
        interaction: Interaction,
        message: Text,
        temperature: app_commands.Range[float, 0.0, 2.0] = DEFAULT_TEMPERATURE,
        thread: bool | None = None,
    ) -> None:
        bot = self.bot
        caller = caller_of(interaction)
        policy = bot.reply_policy(interaction)
        try:
            opens_thread = self._opens_thread(interaction, thread)
        except InvalidInput as exc:
            bot.invoker.record_refusal("chat", caller, exc)
            raise
        # A slash command's input is seen by its asker alone, unless a thread shows it.
        private_to = None if opens_thread else caller.user_id
        opening = Turn(interaction.id, "user", message, interaction.user.display_name, private_to)
        base = self._base_request(message, caller, temperature, interaction.id)
        with bot.invoker.admit("chat", caller) as admission:
            await interaction.response.defer(thinking=True, ephemeral=policy.ephemeral)
            if opens_thread:
                room = await self._open_thread(interaction, message)
                conversation = f"thread:{room.id}"
                place: InteractionPlace | MessagePlace = MessagePlace(
                    room, interaction.user, locale=interaction.locale.value
                )
            else:
                conversation = f"slash:{interaction.id}"
                place = InteractionPlace(interaction, policy)
            route = Route(conversation)
            prepared = await self._prepare(route, interaction.guild_id, base, caller, opening)
            handle = admission.submit(prepared.request)
        self._follow(conversation, handle, place, interaction.user.id)

    def _opens_thread(self, interaction: Interaction, asked: bool | None) -> bool:
        """Whether this /chat opens a thread: asked for, or the server's default where a
        thread can be opened; asked for where none can be is refused, naming why."""
        guild = self.bot.settings_for(interaction)
        channel = interaction.channel
        possible = (
            guild is not None
            and not guild.ephemeral
            and isinstance(channel, discord.TextChannel)
            and interaction.app_permissions.create_public_threads
            and interaction.app_permissions.send_messages_in_threads
            and interaction.permissions.send_messages_in_threads
        )
        if asked is None:
            return bool(possible and guild is not None and guild.chat_threads)
        if asked and not possible:
            raise InvalidInput("thread", self._why_no_thread(interaction))
        return asked

    def _why_no_thread(self, interaction: Interaction) -> str:
        guild = self.bot.settings_for(interaction)
        if guild is None:
            return "threads can only be opened in a server"
        if guild.ephemeral:
            return "answers are private in this server, and threads are public"
        if not isinstance(interaction.channel, discord.TextChannel):
            return "threads can only be opened in a text channel"
        if not interaction.permissions.send_messages_in_threads:
            return "you cannot send messages in threads here"
        return "I need the Create Public Threads and Send Messages in Threads permissions here"

    async def _open_thread(self, interaction: Interaction, question: str) -> discord.Thread:
        channel = interaction.channel
        assert isinstance(channel, discord.TextChannel)
        room = await channel.create_thread(
            name=thread_name(question), type=discord.ChannelType.public_thread
        )
        asker = neutralize(interaction.user.display_name)
        shown = neutralize(question)
        whole = [discord.File(io.BytesIO(question.encode()), "question.txt")]  # all is shown
        await room.send(
            f"**{asker}** asked: {clip(shown, 1800)}",
            files=whole if len(shown) > 1800 else [],
            allowed_mentions=NO_MENTIONS,
        )
        with contextlib.suppress(discord.HTTPException):
            await room.add_user(interaction.user)
        await interaction.edit_original_response(
            content=f"🧵 Let's talk in {room.mention}: every message there continues the "
            "conversation.",
            allowed_mentions=NO_MENTIONS,
        )
        return room

    @conversation.command(name="memory", description="What I remember of this conversation")
    async def show_memory(self, interaction: Interaction) -> None:
        conversation = self._place_conversation(interaction)
        await interaction.response.defer(thinking=True, ephemeral=True)  # before the database
        channel = interaction.channel
        if isinstance(channel, discord.Thread) and not await may_read_history(
            interaction.user, channel
        ):
            raise InvalidInput("conversation", UNREADABLE_HERE)
        memory = await self.conversations.store.memory(conversation)
        await interaction.followup.send(
            clip(neutralize(Conversations.describe(memory))),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )
        self.bot.invoker.record_command("chat-memory", caller_of(interaction))

    @conversation.command(name="reset", description="Start this conversation afresh")
    async def reset(self, interaction: Interaction) -> None:
        conversation = self._place_conversation(interaction)
        await interaction.response.defer(thinking=True)
        store = self.conversations.store
        async with self.conversations.lock(conversation):  # not in the middle of a fold
            await store.reset(conversation, interaction.id, interaction.guild_id)
        sent = await interaction.followup.send(reset_notice(interaction.locale.value), wait=True)
        await store.record_answers(conversation, [sent.id], is_turn=False)
        self.bot.invoker.record_command("chat-reset", caller_of(interaction))

    def _place_conversation(self, interaction: Interaction) -> str:
        channel = interaction.channel
        if isinstance(channel, discord.DMChannel):
            return f"dm:{channel.id}"
        me = self.bot.user
        if isinstance(channel, discord.Thread) and me is not None and channel.owner_id == me.id:
            return f"thread:{channel.id}"
        raise InvalidInput(
            "conversation",
            "use this in a thread I opened or in our DM; in a reply chain, reply "
            "`memory` or `reset` to my answer",
        )

    # Messages

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None or message.type not in SPOKEN_TO:
            return
        route = await self._route(message)
        if route is None:
            return
        try:
            await self._converse(message, route)
        except Exception as exc:
            await self._report(message, exc)

    async def _route(self, message: discord.Message) -> Route | None:
        """The conversation a member's message continues or starts; None if not for me."""
        me = self.bot.user
        if me is None:
            return None
        channel = message.channel
        if isinstance(channel, discord.DMChannel):
            return Route(f"dm:{channel.id}")
        if isinstance(channel, discord.Thread) and channel.owner_id == me.id:
            return Route(f"thread:{channel.id}")
        reference = message.reference
        if _is_reply(message):
            assert reference is not None and reference.message_id is not None
            store = self.conversations.store
            answers = await store.answers_among([reference.message_id])
            if reference.message_id in answers and await _parent(message) is not None:
                source = answers[reference.message_id].conversation_id
                latest = await store.latest_answer(source)
                if latest is None or reference.message_id >= latest:
                    return Route(source)
                # A reply to an earlier answer starts a branch: its own memory from there on.
                return Route(f"reply:{message.id}", source, reference.message_id)
        if me.id in message.raw_mentions:
            return Route(f"reply:{message.id}")
        return None

    async def _converse(self, message: discord.Message, route: Route) -> None:
        bot = self.bot
        text = self._own_text(message)
        spoken = not text and is_voice_message(message)
        pictures = self._pictures(message)
        if not text and not spoken and not _text_files(message) and not pictures:
            if bot.user is not None and bot.user.id in message.raw_mentions:
                await self._say(
                    message,
                    tr("👋 Ask me something after the mention, or use /chat.", locale_of(message)),
                )
            return  # without the Message Content intent, other messages arrive empty
        caller = self._caller(message)
        conversation = route.conversation
        store = self.conversations.store
        word = command_word(text)
        if word is not None:
            async with self.conversations.lock(conversation):  # not in the middle of a fold
                await self._begin(route, caller.guild_id)
                if word == "reset":
                    await store.reset(conversation, message.id, caller.guild_id)
                    answer = reset_notice(locale_of(message))
                else:
                    memory = await store.memory(conversation)
                    if not await self._may_read_earlier(message, route, memory):
                        raise InvalidInput("memory", UNREADABLE_HERE)
                    answer = Conversations.describe(memory)
            sent = await self._say(message, clip(neutralize(answer)))
            await store.record_answers(conversation, [sent.id], is_turn=False)
            bot.invoker.record_command(f"chat-{word}", caller)
            return
        guild = self._guild(caller)
        if guild is not None and guild.ephemeral:
            error = CommandDisabled(
                "answers are private in this server, so I answer /chat only, not mentions"
            )
            bot.invoker.record_refusal("chat", caller, error)
            raise error
        if pictures:
            self._check_pictures(pictures, caller)
        heading, language = "", ""
        with bot.invoker.admit("chat", caller) as admission:  # before hearing: chat's quota too
            if spoken:
                text, language = await self._hear(message, caller, conversation)
                heading = heard_heading(text)
            base = self._base_request(text, caller, DEFAULT_TEMPERATURE, message.id)
            async with message.channel.typing():
                prepared = await self._prepare(route, caller.guild_id, base, caller, message)
                seen = await self._seen(prepared)
            if seen is None:
                handle = admission.submit(prepared.request)
            else:  # the vision model answers: the turn is describe's, on its quota
                admission.release()
                with bot.invoker.admit("describe", caller) as seeing:
                    handle = seeing.submit(seen)
        left_out = prepared.left_out
        hide = prepared.spoiler
        place = MessagePlace(
            message.channel,
            message.author,
            message,
            posted=self._answering(conversation),
            locale=locale_of(message),
        )
        note = ""
        if left_out:
            note = NOTE + tr(
                "I read only your message: you cannot read the earlier messages here.",
                locale_of(message),
            )
        posted = self._follow(conversation, handle, place, message.author.id, note, heading, hide)
        if spoken:
            self.voice_replies.answer(message, caller, handle, posted, conversation, language)

    async def _hear(
        self, message: discord.Message, caller: Caller, conversation: str
    ) -> tuple[str, str]:
        """A voice message's words and language, heard as the member's own turn (their
        quota, their queue place) and kept for when the conversation is read back."""
        bot = self.bot
        attachment = sound_of(message)
        assert attachment is not None
        with bot.invoker.admit("transcribe", caller) as admission:
            async with message.channel.typing():
                request = await read_sound(attachment, bot.settings.transcribe.max_bytes)
                handle = admission.submit(request)
                result: TranscribeResult = await handle
        await self.conversations.store.record_transcript(conversation, message.id, result.text)
        return result.text, result.language

    async def _begin(self, route: Route, guild_id: int | None, opening: Turn | None = None) -> None:
        """Make sure the conversation is stored: a branch with what it keeps of the
        conversation it leaves."""
        store = self.conversations.store
        if route.branch_of is not None:
            source = await store.memory(route.branch_of)
            await store.fork(source, route.conversation, route.at, guild_id)
        await store.start(route.conversation, guild_id, opening)

    def _guild(self, caller: Caller) -> GuildSettings | None:
        """The server's rules, or None where no server's rules apply (a DM)."""
        if caller.private or caller.guild_id is None:
            return None
        return self.bot.guild_settings.get(caller.guild_id)

    def _base_request(
        self, text: str, caller: Caller, temperature: float, snowflake: int
    ) -> ChatRequest:
        """A turn's options: the persona of where it is said, and a seed of its own."""
        guild = self._guild(caller)
        persona = guild.persona_for(caller.channel_id, caller.parent_id) if guild else None
        return ChatRequest(text, system=persona, temperature=temperature, seed=seed_of(snowflake))

    def _caller(self, message: discord.Message) -> Caller:
        guild_id = message.guild.id if message.guild is not None else None
        return place_caller(
            message.author, message.channel, message.channel.id, guild_id,
            self.bot.outside_servers(guild_id),
        )  # fmt: skip

    async def _prepare(
        self,
        route: Route,
        guild_id: int | None,
        base: ChatRequest,
        caller: Caller,
        newest: discord.Message | Turn,
    ) -> Prepared:
        """Read the conversation up to ``newest`` (the member's message, or the question
        /chat opens a conversation with), fit it to the model and fold what does not fit;
        one turn at a time per conversation. Earlier messages the member may not read are
        left out: then nothing of them, of their summary or of the conversation's opening
        reaches the model, only the member's own message. The newest images the vision
        model is shown are picked; older ones become their description in their turn."""
        conversations = self.conversations
        conversation = route.conversation
        async with conversations.lock(conversation):
            opening = newest if isinstance(newest, Turn) else None
            await self._begin(route, guild_id, opening)
            memory = await conversations.store.memory(conversation)
            left_out = False
            if isinstance(newest, Turn):
                turns, complete, chain = [newest], True, []
            elif await self._may_read_earlier(newest, route, memory):
                turns, complete, chain = await self._turns(conversation, newest, memory)
            else:
                own = await self._turn(newest, {}, is_newest=True)
                asked = memory.opening  # the member's own /chat question is theirs to keep
                kept = asked if asked and asked.private_to == caller.user_id else None
                memory, turns = Memory(conversation, opening=kept), [own] if own else []
                complete = left_out = True
                chain = [newest]
            pictures = {m.id: self._pictures(m) for m in chain if not self._is_mine(m)}
            turns, shown = await self._picture_turns(turns, pictures, caller, conversation)
            request, kept_turns = await conversations.prepare_turns(
                memory, turns, base, caller.user_id, complete
            )
            keys = {picture.key for picture in shown}
            held = [p for turn in kept_turns for p in pictures.get(turn.id, [])]
            per_turn = [
                [p for p in pictures.get(turn.id, []) if p.key in keys] for turn in kept_turns
            ]
            return Prepared(request, left_out, per_turn, any(p.spoiler for p in held))

    def _pictures(self, message: discord.Message) -> list[Picture]:
        return pictures_of(message, self.bot.http)

    def _is_mine(self, message: discord.Message) -> bool:
        return self.bot.user is not None and message.author.id == self.bot.user.id

    def _sees(self, caller: Caller) -> bool:
        """Whether the vision model may look at images for ``caller`` where they are."""
        return self.bot.invoker.allows("describe", caller)

    def _check_pictures(self, pictures: list[Picture], caller: Caller) -> None:
        """Refuse, before anything is read, images the member's message shows that the vision
        model may not see here: not allowed, too many, too large, or marked explicit."""
        bot = self.bot
        describe = bot.settings.describe
        try:
            error = bot.invoker.why_not("describe", caller)
            if error is not None:
                raise error
            check_images(pictures, describe.max_images, describe.max_bytes, caller.age_restricted)
        except (CommandDisabled, InvalidInput) as exc:
            bot.invoker.record_refusal("describe", caller, exc)
            raise

    async def _picture_turns(
        self,
        turns: list[Turn],
        pictures: dict[int, list[Picture]],
        caller: Caller,
        conversation: str,
    ) -> tuple[list[Turn], list[Picture]]:
        """The turns with each image the model is not shown as a line describing it, and
        the images it is shown: the conversation's newest (all of the newest message's)."""
        describe = self.bot.settings.describe
        visible = [  # the newest message's passed these checks already (_check_pictures)
            picture
            for turn in turns
            for picture in pictures.get(turn.id, [])
            if (not picture.explicit or caller.age_restricted)
            and (picture.size is None or picture.size <= describe.max_bytes)
        ]
        newest = len(pictures.get(turns[-1].id, [])) if turns else 0
        budget = 0
        if self._sees(caller) and describe.conversation_images:
            budget = max(min(describe.conversation_images, describe.max_images), newest)
        shown = visible[len(visible) - budget :] if budget else []
        keys = {p.key for p in shown}
        lines = await self._descriptions(
            [p for p in visible if p.key not in keys], caller, conversation
        )
        rewritten = []
        for turn in turns:
            added = [
                f"[image: {lines.get(p.key, UNSHOWN)}]"
                for p in pictures.get(turn.id, [])
                if p.key not in keys
            ]
            text = "\n".join(filter(None, (turn.text, *added)))
            rewritten.append(dataclasses.replace(turn, text=text) if added else turn)
        return rewritten, shown

    async def _descriptions(
        self, pictures: list[Picture], caller: Caller, conversation: str
    ) -> dict[tuple[int, int], str]:
        """A line describing each picture: stored, or described now and stored; a
        placeholder where it cannot be (kept too for an image that will never be described,
        damaged or refused by the safety filter, so it is not tried again)."""
        store = self.conversations.store
        lines = await store.descriptions(sorted({p.message_id for p in pictures}))
        missing = [p for p in pictures if p.key not in lines]
        if not self._sees(caller):
            return {**lines, **{p.key: UNSEEN for p in missing}}
        lines |= {p.key: UNSEEN for p in missing[:-DESCRIBED_AT_ONCE]}  # the newest first
        missing = missing[-DESCRIBED_AT_ONCE:]
        if not missing:
            return lines
        # As many at once as the member may have jobs queued: the executor batches them.
        slots = asyncio.Semaphore(self.bot.executor.config.max_per_user)

        async def described(picture: Picture) -> str:
            async with slots:
                line, lasting = await self._describe(picture, caller)
            if lasting:
                mid, position = picture.key
                await store.record_description(conversation, mid, position, line)
            return line

        made = await asyncio.gather(*(described(p) for p in missing))
        return lines | {p.key: line for p, line in zip(missing, made, strict=True)}

    async def _describe(self, picture: Picture, caller: Caller) -> tuple[str, bool]:
        """One image in a line, as the member's own describe job (quota, usage row), and
        whether that line is for good: a placeholder is, for an image that cannot be read
        or that the safety filter refuses; not when the bot was only busy."""
        bot = self.bot
        try:
            with bot.invoker.admit("describe", caller) as admission:
                (data,) = await download([picture], bot.settings.describe.max_bytes)
                handle = admission.submit(DescribeRequest((data,), IN_BRIEF, BRIEF_TOKENS))
            result: DescribeResult = await handle
        except InvalidInput as exc:  # damaged, too large, not an image, flagged
            log.info("an earlier image of a conversation cannot be described: %s", exc)
            return UNSEEN, True
        except Exception as exc:  # busy, over quota, turned off meanwhile: another time
            log.info("could not describe an earlier image of a conversation now: %s", exc)
            return UNSEEN, False
        line = " ".join(result.text.split())
        return line or UNSEEN, True

    async def _seen(self, prepared: Prepared) -> DescribeRequest | None:
        """The turn as the vision model's, when the turns it holds show images it may see."""
        if not prepared.shown:
            return None
        request = prepared.request
        max_bytes = self.bot.settings.describe.max_bytes
        *earlier, newest = prepared.per_turn
        images: list[bytes] = []
        counts: list[int] = []
        for turn in earlier:  # an earlier image that cannot be fetched is left out
            fetched: list[bytes] = []
            for picture in turn:
                try:
                    fetched += await download([picture], max_bytes)
                except InvalidInput as exc:
                    log.info("an earlier image of a conversation is left out: %s", exc)
            images += fetched
            counts.append(len(fetched))
        images += await download(newest, max_bytes)  # the member's own: said if it fails
        counts.append(len(newest))
        if not images:
            return None
        return DescribeRequest(
            tuple(images),
            request.message,
            system=request.system or self.bot.settings.chat.system_prompt,
            summary=request.summary,
            history=request.history,
            name=request.name,
            images_per_turn=tuple(counts),
        )

    async def _may_read_earlier(
        self, newest: discord.Message, route: Route, memory: Memory
    ) -> bool:
        """Whether the member who wrote ``newest`` may read what the conversation holds
        before it: the thread's or the reply chain's messages, and what the memory keeps of
        them. Their own DM is theirs to read; a mention that starts afresh reads nothing."""
        channel = newest.channel
        if isinstance(channel, discord.DMChannel):
            return True
        if not (route.conversation.startswith("thread:") or _is_reply(newest)
                or memory.summary or memory.opening):  # fmt: skip
            return True
        return isinstance(channel, Readable) and await may_read_history(newest.author, channel)

    def _answering(self, conversation: str) -> Callable[[discord.Message], None]:
        """Records each message the answer is posted in as soon as it is, so a reply to an
        answer still being written continues the conversation; it becomes a turn once the
        answer is complete."""

        def posted(message: discord.Message) -> None:
            self._spawn(self.conversations.store.record_answers(conversation, [message.id], False))

        return posted

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _follow(
        self, conversation: str, handle: JobHandle, place: Place, requester_id: int,
        note: str = "", heading: str = "", hide: bool = False,
    ) -> asyncio.Future[list[discord.Message]]:  # fmt: skip
        """Show the answer (with the bot's ``note`` under it and ``heading`` above it, behind
        a spoiler when it speaks of a spoiler image), then remember which messages hold it,
        so a reply continues; returns what shows it."""

        def rendered(result: Any) -> Reply:
            reply = hidden(render(result)) if hide else render(result)
            return dataclasses.replace(
                reply,
                note="\n".join(filter(None, (reply.note, note))),
                heading="\n".join(filter(None, (heading, reply.heading))),
            )

        watcher = self.bot.follow(handle, place, rendered, requester_id, spoiler=hide)

        def delivered(finished: asyncio.Future[list[discord.Message]]) -> None:
            if finished.cancelled() or not finished.result():
                return
            ids = [message.id for message in finished.result()]
            self._spawn(self.conversations.store.record_answers(conversation, ids))

        watcher.finished.add_done_callback(delivered)
        return watcher.finished

    # Reading a conversation back from Discord

    async def _turns(
        self, conversation: str, newest: discord.Message, memory: Memory
    ) -> tuple[list[Turn], bool, list[discord.Message]]:
        """The conversation's turns after what the memory already holds, oldest first,
        whether that is all of them (not cut at ``BOT_CHAT__HISTORY_MESSAGES``), and the
        messages read."""
        limit = self.bot.settings.chat.history_messages
        if conversation.startswith(("thread:", "dm:")):
            after = discord.Object(memory.cutoff) if memory.cutoff else None
            earlier = [
                m
                async for m in newest.channel.history(
                    limit=limit - 1, before=newest, after=after, oldest_first=False
                )
            ]
            chain, complete = [*reversed(earlier), newest], len(earlier) < limit - 1
        else:
            chain, complete = await self._reply_chain(newest, limit, memory.cutoff)
        me = self.bot.user
        assert me is not None
        store = self.conversations.store
        answers = await store.answers_among([m.id for m in chain if m.author.id == me.id])
        openings = await store.openings(
            {answer.conversation_id for answer in answers.values()} - {conversation}
        )
        turns: dict[int, Turn] = {
            turn.id: turn for turn in openings.values() if turn.id > memory.cutoff
        }
        for message in chain:
            turn = await self._turn(message, answers, is_newest=message is newest)
            if turn is not None:
                turns[turn.id] = turn
        return sorted(turns.values(), key=lambda turn: turn.id), complete, chain

    async def _reply_chain(
        self, newest: discord.Message, limit: int, cutoff: int
    ) -> tuple[list[discord.Message], bool]:
        """The messages the newest one replies to, up the chain, oldest first, and whether
        the chain was read to its end: its first message, a deleted one, one in another
        channel or one already summarised."""
        chain = [newest]
        current = newest
        while _is_reply(current):
            if len(chain) >= limit:
                return list(reversed(chain)), False
            reference = current.reference
            assert reference is not None and reference.message_id is not None
            parent = await _parent(current) if reference.message_id > cutoff else None
            if parent is None:
                break
            chain.append(parent)
            current = parent
        return list(reversed(chain)), True

    async def _turn(
        self, message: discord.Message, answers: dict[int, Answer], is_newest: bool
    ) -> Turn | None:
        me = self.bot.user
        assert me is not None
        if message.author.id == me.id:
            answer = answers.get(message.id)
            if answer is None or not answer.is_turn:
                return None  # progress, a refusal, a hint: not part of the conversation
            files = await _read_text_files(message, strict=False)
            text = files[0][1] if files else _without_notes(message.content)  # long: in a file
            return Turn(message.id, "assistant", text) if text else None
        if message.author.bot or message.webhook_id is not None or message.type not in SPOKEN_TO:
            return None
        text = self._own_text(message)
        if command_word(text) is not None:
            return None
        if not text and is_voice_message(message):
            text = await self.conversations.store.transcript(message.id) or ""
        for name, content in await _read_text_files(message, strict=is_newest):
            text = f"{text}\n\n[file {name}]\n{content}".strip()
        images = len(self._pictures(message))
        if not text and not images:
            return None
        return Turn(message.id, "user", text, message.author.display_name, images=images)

    def _own_text(self, message: discord.Message) -> str:
        """What a member wrote, without the mention that called the bot."""
        me = self.bot.user
        if me is None:
            return message.content.strip()
        return re.sub(rf"<@!?{me.id}>", "", message.content).strip()

    async def _say(self, message: discord.Message, text: str) -> discord.Message:
        return await message.reply(text, mention_author=False, allowed_mentions=NO_MENTIONS)

    async def _report(self, message: discord.Message, error: BaseException) -> None:
        """A failed turn is answered in a reply, as a failed command is."""
        try:
            await self._say(message, answer_to(error, locale_of(message)))
        except discord.HTTPException as exc:
            log.warning("could not report an error to a member: %s", exc)


def reset_notice(locale: str | None) -> str:
    """What a reset answers, by command or by a reply that says ``reset``."""
    return tr("🧹 Conversation reset: I have forgotten what came before.", locale)


def locale_of(message: discord.Message) -> str | None:
    """The language to answer a message in: a message carries no member's locale (an
    interaction does), so the server's preferred one, set in its Community settings;
    English in a DM."""
    return message.guild.preferred_locale.value if message.guild is not None else None


def _is_reply(message: discord.Message) -> bool:
    reference = message.reference
    return (
        reference is not None
        and reference.message_id is not None
        and reference.type is discord.MessageReferenceType.default
    )


async def _parent(message: discord.Message) -> discord.Message | None:
    """The message ``message`` replies to, if it is one in the same channel or thread: a
    conversation follows no reference out of its place, forged or stale."""
    reference = message.reference
    if reference is None or reference.channel_id != message.channel.id:
        return None
    parent = reference.resolved if isinstance(reference.resolved, discord.Message) else None
    parent = parent or reference.cached_message
    if parent is None and reference.message_id is not None:
        try:
            parent = await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException:
            return None
    if parent is None or parent.id != reference.message_id:
        return None
    return parent if parent.channel.id == message.channel.id else None


def _without_notes(content: str) -> str:
    """An answer as the model wrote it, without the bot's own lines under it, nor the
    transcript of a voice message above it."""
    lines = content.split("\n")
    if lines and lines[0].startswith(HEARD):
        lines = lines[lines.index("") + 1 :] if "" in lines else []
    while lines and lines[-1].startswith(NOTE):
        lines.pop()
    return "\n".join(lines).strip()


def _text_files(message: discord.Message) -> list[discord.Attachment]:
    return [a for a in message.attachments if is_document(a.filename)]


async def _read_text_files(message: discord.Message, strict: bool) -> list[tuple[str, str]]:
    """(name, text) of the message's documents (text, Markdown, HTML, PDF, Word, slides),
    within /summarize's limits. ``strict`` refuses one that cannot be read (the member's
    newest message); otherwise it is left out."""
    read = []
    for attachment in _text_files(message):
        try:
            if attachment.size > MAX_DOCUMENT_BYTES:
                raise InvalidInput("file", f"is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB")
            read.append((attachment.filename, await read_file(attachment)))
        except InvalidInput:
            if strict:
                raise
        except discord.HTTPException as exc:
            log.warning("could not read an attachment of a conversation: %s", exc)
    return read


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(ConversationsCog(bot))
