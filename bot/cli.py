"""``python -m bot``: use the bot's tasks from a terminal, and inspect its settings."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import difflib
import getpass
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from huggingface_hub import utils as hub_utils
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_settings.exceptions import SettingsError
from tqdm import tqdm

from bot.documents import is_document
from bot.executor.errors import BackendUnavailable, DeviceUnavailable, ExecutorError
from bot.health import MAX_AGE_S, Heartbeat, report
from bot.invocations import Caller
from bot.models import (
    HubUnreachable,
    explain,
    offline_unless_reachable,
    pull,
    requirements,
    table,
)
from bot.settings import (
    TOKEN_SHAPE,
    Settings,
    host_variables,
    source_problem,
    unknown_variables,
)
from bot.usage import COLUMNS, UsageLog, UsageUnavailable, render_stats
from handlers.errors import HandlerError, InvalidInput, quote
from handlers.presets import LENGTHS

if TYPE_CHECKING:
    # Imported where they are used: torch, transformers and discord.py take seconds to
    # load, which `--help`, `settings`, `usage` and every usage error never need.
    from bot.app import Services
    from bot.client import AssistantBot
    from bot.conversations import Turn
    from bot.executor import JobHandle
    from handlers.chat import ChatRequest
    from handlers.classify import ClassifyResult
    from handlers.describe import DescribeRequest
    from handlers.imagine import ImagineRequest, ImagineResult
    from handlers.speak import SpeakRequest, SpeakResult
    from handlers.summarize import SummarizeRequest
    from handlers.transcribe import TranscribeRequest, TranscribeResult
    from handlers.translate import TranslateResult
    from handlers.upscale import UpscaleRequest, UpscaleResult


@dataclass(frozen=True)
class AskCommand:
    """How ``ask TASK`` turns arguments into a request and a result into output."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    request: Callable[[argparse.Namespace], Any]
    render: Callable[[Any, argparse.Namespace], tuple[str, dict[str, Any]]]
    """Writes any files and returns the text to print and the same as JSON-able data."""


def _text_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text")


def _summarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help="the text (or use --file)")
    parser.add_argument(
        "--file", type=Path, help="read the text from a PDF, DOCX, PPTX, HTML, Markdown or text"
    )
    parser.add_argument("--length", choices=list(LENGTHS), default="medium")
    parser.add_argument("--min-tokens", type=int, help="shortest summary in tokens")
    parser.add_argument("--max-tokens", type=int, help="longest summary in tokens")


MAX_FILE_BYTES = 20 * 2**20
"""Far more than a summary takes; ``--file /dev/zero`` must not read forever."""


def _summarize_request(args: argparse.Namespace) -> SummarizeRequest:
    from handlers.summarize import SummarizeRequest

    if args.file is not None:
        from bot.documents import read_document

        try:
            with args.file.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise InvalidInput("file", f"cannot be read: {exc}") from None
        if len(data) > MAX_FILE_BYTES:
            raise InvalidInput("file", f"is larger than {MAX_FILE_BYTES // 2**20} MiB")
        name = args.file.name if is_document(args.file.name) else f"{args.file.name}.txt"
        text = read_document(name, data)  # a file of another name is read as plain text
    elif args.text is not None:
        text = args.text
    else:
        raise InvalidInput("text", "give the text or --file")
    return SummarizeRequest(text, args.length, args.min_tokens, args.max_tokens)


def _translate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text to translate")
    parser.add_argument("--to", required=True, dest="target", help="language name or code")
    parser.add_argument("--from", default="auto", dest="source", help="default: detect")


def _imagine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("--negative", default="", help="what to avoid")
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--guidance", type=float, help="how closely to follow the prompt")
    parser.add_argument("--seed", type=int, help="reuse a seed to reproduce an image")
    parser.add_argument("--size", help="WIDTHxHEIGHT from the model's allowed sizes")
    parser.add_argument("--count", type=int, default=1, help="images to make (1-4)")
    parser.add_argument(
        "--image-model", help="one of BOT_IMAGINE__MODELS by name (default: BOT_MODELS__IMAGINE)"
    )
    parser.add_argument("--out", type=Path, help="PNG path (default: imagine-SEED.png)")


def _check_folder(out: Path | None) -> None:
    """Refuse an output path in a missing folder before the model runs, not after."""
    if out is not None and not out.parent.is_dir():
        raise InvalidInput("out", f"the folder {quote(str(out.parent))} does not exist")


def _imagine_request(args: argparse.Namespace) -> ImagineRequest:
    from handlers.imagine import ImagineRequest

    if args.out is not None and args.out.suffix.lower() != ".png":
        raise InvalidInput("out", "must end in .png")
    _check_folder(args.out)
    return ImagineRequest(
        args.prompt, args.negative, args.steps, args.guidance, args.seed, args.size, args.count,
        model=args.image_model,
    )  # fmt: skip


def _render_imagine(result: ImagineResult, args: argparse.Namespace) -> tuple[str, dict]:
    base = args.out or Path(f"imagine-{result.seed}.png")
    paths = (
        [base]
        if len(result.images) == 1
        else [
            base.with_name(f"{base.stem}-{k + 1}{base.suffix}") for k in range(len(result.images))
        ]
    )
    for path, png in zip(paths, result.images, strict=True):
        path.write_bytes(png)
    data = {
        "files": [str(p) for p in paths],
        "seed": result.seed,
        "size": f"{result.width}x{result.height}",
        "steps": result.steps,
        "guidance": result.guidance,
        "flagged": result.flagged,
    }
    text = "\n".join(f"wrote {p}" for p in paths)
    text += f"\nseed {result.seed}, {data['size']}, {result.steps} steps"
    if result.flagged:
        text += f"\n{result.flagged} image(s) withheld by the safety filter"
    return text, data


def _speak_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="what to say")
    parser.add_argument("--voice", help="voice preset name")
    parser.add_argument("--language", default="en", help="language code (default: en)")
    parser.add_argument("--out", type=Path, help="a .ogg or .wav path (default: speak.ogg)")


def _speak_request(args: argparse.Namespace) -> SpeakRequest:
    from handlers.speak import SpeakRequest

    if args.out is not None and args.out.suffix.lower() not in (".ogg", ".wav"):
        raise InvalidInput("out", "must end in .ogg or .wav")
    _check_folder(args.out)
    options = {"voice": args.voice} if args.voice else {}
    return SpeakRequest(args.text, language=args.language, **options)


def _render_speak(result: SpeakResult, args: argparse.Namespace) -> tuple[str, dict]:
    path = args.out or Path("speak.ogg")
    path.write_bytes(result.wav if path.suffix.lower() == ".wav" else result.ogg)
    data = {"file": str(path), "seconds": round(result.seconds, 2), "rate": result.sample_rate}
    return f"wrote {path} ({result.seconds:.1f} s at {result.sample_rate} Hz)", data


def _classify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text to classify")
    parser.add_argument("--labels", required=True, help="2-10 comma-separated labels")
    parser.add_argument("--multi-label", action="store_true", help="labels may all apply")


def _render_classify(result: ClassifyResult, args: argparse.Namespace) -> tuple[str, dict]:
    rows = zip(result.labels, result.scores, strict=True)
    return "\n".join(f"{score:6.3f}  {label}" for label, score in rows), asdict(result)


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("message", help="what to say to the model")
    parser.add_argument("--system", help="replace the configured system prompt")
    parser.add_argument("--max-tokens", type=int, help="longest answer in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def _translate_request(args: argparse.Namespace) -> Any:
    from handlers.translate import TranslateRequest

    return TranslateRequest(args.text, args.target, args.source)


def _sentiment_request(args: argparse.Namespace) -> Any:
    from handlers.sentiment import SentimentRequest

    return SentimentRequest(args.text)


def _classify_request(args: argparse.Namespace) -> Any:
    from handlers.classify import ClassifyRequest, parse_labels

    return ClassifyRequest(args.text, parse_labels(args.labels), args.multi_label)


def _transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="audio or video: ogg, wav, mp3, m4a, mp4...")
    parser.add_argument("--language", help="the language spoken (default: detected)")
    parser.add_argument("--timestamps", action="store_true", help="a line per segment with times")


def _transcribe_request(args: argparse.Namespace) -> TranscribeRequest:
    from handlers.transcribe import TranscribeRequest

    path: Path = args.file
    if not path.is_file():
        raise InvalidInput("file", f"{quote(str(path))} is not a file")
    return TranscribeRequest(path.read_bytes(), args.language, args.timestamps)


def _render_transcribe(result: TranscribeResult, args: argparse.Namespace) -> tuple[str, dict]:
    data = asdict(result)
    text = result.timed() if result.timestamps else result.text
    return text, data


def _describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="an image file: png, jpg, webp, gif...")
    parser.add_argument("question", nargs="?", default="", help="what to ask (default: describe)")
    parser.add_argument("--max-tokens", type=int, help="longest answer in tokens")


def _describe_request(args: argparse.Namespace) -> DescribeRequest:
    from handlers.describe import DescribeRequest

    path: Path = args.image
    if not path.is_file():
        raise InvalidInput("image", f"{quote(str(path))} is not a file")
    return DescribeRequest((path.read_bytes(),), args.question, args.max_tokens)


def _render_translation(result: TranslateResult, args: argparse.Namespace) -> tuple[str, dict]:
    if result.guessed:  # said beside the text, not in it: stdout stays the translation
        print(f"from {result.source}, guessed: pass --from if wrong", file=sys.stderr)
    return result.text, asdict(result)


def _upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="a picture file")
    parser.add_argument("--factor", type=int, default=2, help="2 or 4 times larger (default 2)")
    parser.add_argument("--prompt", default="", help="what the picture shows: guides the detail")
    parser.add_argument("--seed", type=int, help="reuse a seed to reproduce an upscale")
    parser.add_argument(
        "--out", type=Path, help="where to write it; the suffix becomes .png or .webp, as sent"
    )


def _upscale_request(args: argparse.Namespace) -> UpscaleRequest:
    from handlers.upscale import UpscaleRequest

    path: Path = args.image
    if not path.is_file():
        raise InvalidInput("image", f"{quote(str(path))} is not a file")
    _check_folder(args.out)
    return UpscaleRequest(path.read_bytes(), args.factor, args.prompt, args.seed)


def _render_upscale(result: UpscaleResult, args: argparse.Namespace) -> tuple[str, dict]:
    base = args.out or Path(f"upscale-{result.seed}-{result.factor}x")
    path = base.with_suffix(f".{result.format}")
    path.write_bytes(result.image)
    data = {"file": str(path), "size": f"{result.width}x{result.height}", "seed": result.seed,
            "withheld": result.withheld}  # fmt: skip
    if result.withheld:
        return f"wrote {path}: the upscaled image was withheld by the safety filter", data
    return f"wrote {path} ({data['size']}, seed {result.seed})", data


def _chat_request(args: argparse.Namespace) -> ChatRequest:
    from handlers.chat import ChatRequest

    return ChatRequest(args.message, args.system, args.max_tokens, args.temperature, args.seed)


ASK_COMMANDS: dict[str, AskCommand] = {
    "summarize": AskCommand(
        "summarize a text, however long",
        _summarize_arguments,
        _summarize_request,
        lambda r, a: (r.summary, asdict(r)),
    ),
    "translate": AskCommand(
        "translate a text",
        _translate_arguments,
        _translate_request,
        _render_translation,
    ),
    "imagine": AskCommand(
        "generate images from a prompt", _imagine_arguments, _imagine_request, _render_imagine
    ),
    "upscale": AskCommand(
        "make a picture 2 or 4 times larger",
        _upscale_arguments,
        _upscale_request,
        _render_upscale,
    ),
    "speak": AskCommand("read a text aloud", _speak_arguments, _speak_request, _render_speak),
    "sentiment": AskCommand(
        "rate a text as positive or negative",
        _text_arguments,
        _sentiment_request,
        lambda r, a: (f"{r.label} ({r.score:.3f})", asdict(r)),
    ),
    "classify": AskCommand(
        "sort a text into your own labels (zero-shot)",
        _classify_arguments,
        _classify_request,
        _render_classify,
    ),
    "chat": AskCommand(
        "talk to the chat model", _chat_arguments, _chat_request, lambda r, a: (r.text, asdict(r))
    ),
    "describe": AskCommand(
        "describe images, or answer a question about them",
        _describe_arguments,
        _describe_request,
        lambda r, a: (r.text, asdict(r)),
    ),
    "transcribe": AskCommand(
        "write down what is said in an audio or video file",
        _transcribe_arguments,
        _transcribe_request,
        _render_transcribe,
    ),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit 2, like every other bad input; an option
    the command does not have is named with the closest one it has, and the command's own
    help is pointed at."""

    given: ClassVar[list[str]] = []
    """The words being parsed, for every (sub)command's error to look at."""

    def error(self, message: str) -> NoReturn:
        options = [o for action in self._actions for o in action.option_strings]
        for word in self.given:
            name = word.split("=")[0]
            if name.startswith("--") and name not in options:
                close = difflib.get_close_matches(name, options, n=1)
                if close:
                    message += f"; {name} is not an option here: did you mean {close[0]}?"
                    break
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        OneLineParser.given = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # the command's own parser says it, pointing at its own help
            self._chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The (sub)command that took the arguments: ``ask translate``'s parser, say."""
        parser: argparse.ArgumentParser = self
        while True:
            commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            name = getattr(parsed, commands[0].dest, None) if commands else None
            if name is None or name not in commands[0].choices:
                return parser
            parser = commands[0].choices[name]


def build_parser() -> argparse.ArgumentParser:
    script = Path(sys.argv[0]).name
    parser = OneLineParser(
        prog=script if script == "assistant-bot" else "python -m bot",
        description="A self-hosted multimodal Discord assistant running Hugging Face models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("run", help="connect to Discord and serve the slash commands")
    commands.add_parser("sync", help="register the slash commands with Discord, then exit")
    health = commands.add_parser(
        "health", help="exit 0 while the running bot is connected (for health checks)"
    )
    health.add_argument(
        "--max-age", type=float, default=MAX_AGE_S, help="seconds a heartbeat stays fresh"
    )

    ask = commands.add_parser("ask", help="run one task from the terminal, without Discord")
    tasks = ask.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, command in ASK_COMMANDS.items():
        task = tasks.add_parser(name, help=command.help)
        command.add_arguments(task)
        task.add_argument("--model", help="hub id or local directory (default: configured)")
        task.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: configured)")
        task.add_argument("--json", action="store_true", help="print the result as JSON")

    chat = commands.add_parser(
        "chat", help="a conversation with the chat model in the terminal, without Discord"
    )
    chat.add_argument("--system", help="the persona (default: BOT_CHAT__SYSTEM_PROMPT)")
    chat.add_argument("--max-tokens", type=int, help="longest answer in tokens")
    chat.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    chat.add_argument("--seed", type=int, default=0, help="sampling seed of the first answer")
    chat.add_argument("--model", help="hub id or local directory (default: configured)")
    chat.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: configured)")

    usage = commands.add_parser("usage", help="usage statistics and export from the usage log")
    reports = usage.add_subparsers(dest="report", required=True, metavar="REPORT")
    for name, help_text in (("stats", "print usage tables"), ("export", "write rows as CSV")):
        report = reports.add_parser(name, help=help_text)
        report.add_argument(
            "--since",
            type=_date,
            help="first UTC day to include, YYYY-MM-DD (default: 30 days ago)",
        )

    show = commands.add_parser("settings", help="show every setting, its env name and value")
    show.add_argument(
        "--env-example", action="store_true", help="print a commented .env template instead"
    )

    models = commands.add_parser("models", help="download the configured models, or list them")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (
        ("pull", "download what TASKs (default: all) need into the Hugging Face cache"),
        ("list", "show what TASKs need, whether it is here, its size and licence"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("tasks", nargs="*", metavar="TASK", help="default: every task")

    check = commands.add_parser("doctor", help="check this machine and the configuration")
    check.add_argument("--online", action="store_true", help="also log in to Discord")
    return parser


async def _ask(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import running

    command = ASK_COMMANDS[args.task]
    request = command.request(args)
    remote = args.task == "chat" and settings.chat.engine == "openai"  # the server's name
    if args.model and not remote:
        await asyncio.to_thread(offline_unless_reachable, [args.model])
    stream = args.task == "chat" and not args.json
    settings.imagine.previews = False  # a terminal shows none: nothing to load for them
    caller = Caller(f"cli:{getpass.getuser()}", source="cli", enforce_quotas=False)
    async with running(settings, [args.task], worker="thread") as services:
        handle = services.invoker.submit(args.task, request, caller, model=args.model)
        result = await _follow(handle, stream)
    try:
        text, data = command.render(result, args)
    except OSError as exc:  # --out in a read-only folder, a full disk
        raise HandlerError(f"cannot write the result: {exc}") from None
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
    elif not stream:
        print(text)
    return 0


CHAT_HELP = (
    "Chatting with {model}. Each line is a turn; `reset` starts afresh, `memory` shows "
    "the summary of older turns, Ctrl-D leaves."
)


async def _chat(settings: Settings, args: argparse.Namespace) -> int:
    """A conversation as Discord holds one: history, summary folding and persona alike."""
    from bot.app import running
    from handlers.chat import ChatRequest

    base = ChatRequest("", args.system, args.max_tokens, args.temperature, args.seed)
    async with running(settings, ["chat"], worker="thread") as services:
        chat = TerminalChat(services, base)
        await chat.conversations.store.start(chat.id, None)
        print(CHAT_HELP.format(model=settings.default_models()["chat"]), file=sys.stderr)
        while (line := await asyncio.to_thread(_read_turn)) is not None:
            try:
                await chat.say(line)
            except (HandlerError, ExecutorError) as exc:  # this turn failed; the next may not
                print(f"error: {explain(exc)}", file=sys.stderr)
    return 0


class TerminalChat:
    """The terminal's conversation: the turns so far, kept here as Discord keeps them."""

    def __init__(self, services: Services, base: ChatRequest) -> None:
        from bot.conversations import Conversations, ConversationStore

        self.services = services
        self.base = base
        self.caller = Caller(f"cli:{getpass.getuser()}", source="cli", enforce_quotas=False)
        self.conversations = Conversations(services.executor, ConversationStore(services.usage))
        self.id = f"cli:{time.time_ns()}"
        self.turns: list[Turn] = []

    async def say(self, line: str) -> None:
        """Answer a line (streamed to stdout), or carry out ``reset`` or ``memory``."""
        from bot.conversations import Conversations, Turn, command_word
        from handlers.chat import MAX_SEED

        store = self.conversations.store
        turn = Turn(time.time_ns(), "user", line)
        match command_word(line):
            case "reset":
                await store.reset(self.id, turn.id)
                print("(conversation reset)", file=sys.stderr)
                return
            case "memory":
                print(Conversations.describe(await store.memory(self.id)), file=sys.stderr)
                return
        seed = (self.base.seed + len(self.turns)) % (MAX_SEED + 1)  # each answer its own
        memory = await store.memory(self.id)
        request = await self.conversations.prepare(
            memory, [*self.turns, turn], replace(self.base, seed=seed), self.caller.user_id
        )
        handle = self.services.invoker.submit("chat", request, self.caller)
        result = await _follow(handle, stream=True)
        self.turns += [turn, Turn(time.time_ns(), "assistant", result.text)]


def _check_model_path(model: str | None) -> None:
    """A ``--model`` that is meant as a folder and is not one is refused at once, not
    looked up on the hub: it starts like a path (``/``, ``.``, ``~``), or its first part
    is a folder here (``tiny/sentimnt`` beside ``tiny/``)."""
    problem = None if model is None else source_problem(model)
    if problem is not None:
        raise InvalidInput("model", problem)


def _read_turn() -> str | None:
    """The member's next line (blank lines skipped); None at the end of input."""
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "")
        except EOFError:
            return None
        if line.strip():
            return line.strip()


def _unseen(shown: str, text: str) -> str:
    """What to print so the terminal shows ``text`` (streamed text only ever grows)."""
    return text[len(shown) :] if text.startswith(shown) else f"\n{text}"


async def _follow(handle: JobHandle, stream: bool) -> Any:
    """Await the result, drawing step progress on stderr and streaming text to stdout."""
    bar: tqdm | None = None
    shown = ""
    try:
        async for event in handle.events():
            if event.step is not None and event.total:
                if bar is None:
                    bar = tqdm(
                        total=event.total, desc=handle.task, unit="step", file=sys.stderr,
                        disable=not sys.stderr.isatty(),  # a log file gets no \r-joined bars
                    )  # fmt: skip
                bar.update(event.step - bar.n)
            if stream and isinstance(event.partial, str):
                print(_unseen(shown, event.partial), end="", flush=True)
                shown = event.partial
        result = await handle
    finally:
        if bar is not None:
            bar.close()
    if stream:
        print(_unseen(shown, result.text), flush=True)
    return result


async def _discord(settings: Settings, sync_only: bool) -> int:
    """Run the bot (or only sync its commands); token problems are one line and exit 2."""
    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    if not token:
        print(
            "error: DISCORD_TOKEN is not set; put your bot's token in .env (README: Discord setup)",
            file=sys.stderr,
        )
        return 2
    if not TOKEN_SHAPE.match(token):
        print("error: DISCORD_TOKEN does not look like a bot token; copy it again from the "
              "Bot page of your application", file=sys.stderr)  # fmt: skip
        return 2
    import aiohttp  # the token is checked before discord.py and the models load
    import discord

    from bot.serve import serve

    async def connect(bot: AssistantBot) -> None:
        async with bot:
            if sync_only:
                await bot.login(token)  # login runs setup_hook, which syncs
            else:
                async with Heartbeat(settings.heartbeat_path(), bot.is_healthy):
                    await bot.start(token)

    try:
        # Registering commands runs no model: a thread is enough, and starts at once.
        await serve(
            settings, connect, metrics=not sync_only, worker="thread" if sync_only else None
        )
    except discord.LoginFailure:
        print("error: Discord rejected DISCORD_TOKEN; reset it on the Bot page of "
              "your application and update .env", file=sys.stderr)  # fmt: skip
        return 2
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: cannot reach Discord: {exc}", file=sys.stderr)
        return 1
    return 0


def _date(text: str) -> float:
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()


async def _usage(settings: Settings, args: argparse.Namespace) -> int:
    since = args.since if args.since is not None else time.time() - 30 * 86400
    reroll_s = settings.imagine.reroll_hours * 3600
    async with UsageLog(
        settings.usage_path(), retention_days=None, image_requests_ttl_s=reroll_s
    ) as usage:
        if args.report == "export":
            writer = csv.writer(sys.stdout)
            writer.writerow(COLUMNS)
            for row in await usage.since(since):
                writer.writerow([_iso(row[c]) if c in TIMES else row[c] for c in COLUMNS])
        else:
            print(render_stats(await usage.stats(since)))
    return 0


TIMES = ("started_at", "ended_at")
"""Columns stored as Unix seconds, exported as ISO 8601 (UTC) for spreadsheets and people."""


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def _settings_rows(model: type[BaseModel], value: BaseModel, prefix: str) -> list[tuple]:
    rows = []
    for name, field in model.model_fields.items():
        env = "DISCORD_TOKEN" if name == "discord_token" else f"{prefix}{name.upper()}"
        current = getattr(value, name)
        if isinstance(current, BaseModel):
            rows.extend(_settings_rows(type(current), current, f"{env}__"))
        else:
            rows.append((env, current, field.description or ""))
    return rows


def _env_value(value: object) -> str:
    """A setting as a .env line's value: JSON for lists and maps, quoted where a .env
    reader would otherwise cut or change it."""
    if value is None or hasattr(value, "get_secret_value"):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 24 and 24.0 read back alike
    text = str(value)
    if isinstance(value, list | dict):
        text = json.dumps(TypeAdapter(Any).dump_python(value, mode="json", exclude_none=True))
    if text and (text != text.strip() or any(c in text for c in " #'\"\\$\n")):
        if not any(c in text for c in "'\\\n"):
            return f"'{text}'"  # single quotes: taken as they are
        # Double quotes, as python-dotenv reads them: \\, \" and \n are its escapes.
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


LIBRARY_VARIABLES = """\
# Read by the libraries the bot uses, not by its settings: uncomment what you need.
# A Hugging Face access token, for gated or private models (models pull and loading).
# HF_TOKEN=
# Load only downloaded models and never reach the hub (after `python -m bot models pull`).
# HF_HUB_OFFLINE=1
# Where downloaded models are kept (default ~/.cache/huggingface).
# HF_HOME=
# A hub mirror, where huggingface.co cannot be reached.
# HF_ENDPOINT=
# The Ray cluster's token, when BOT_BACKEND=ray joins a cluster that asks for one.
# RAY_AUTH_TOKEN=
"""
"""The end of ``settings --env-example``: variables other libraries read."""


def _show_settings(settings: Settings, env_example: bool) -> int:
    """Every setting as a .env line (the output, used as a .env, reads back the same);
    secrets are not shown, only whether they are set."""
    if env_example:
        for env, default, doc in _settings_rows(Settings, Settings.model_construct(), "BOT_"):
            print("# " + " ".join(doc.split()))
            print(f"{env}={_env_value(default)}\n")
        print(LIBRARY_VARIABLES, end="")
        return 0
    for env, value, _ in _settings_rows(Settings, settings, "BOT_"):
        if hasattr(value, "get_secret_value"):
            print(f"# {env} is set (not shown)")
        elif isinstance(value, str) and CREDENTIALS.search(value):
            print(f"# {env} is set, with a password in it (not shown)")
        elif "${" in str(value):  # .env readers would expand it
            print(f"# {env} holds ${{...}}, which a .env cannot keep: set it by hand")
        else:
            print(f"{env}={_env_value(value)}")
    return 0


CREDENTIALS = re.compile(r"://[^/@\s]*:[^/@\s]*@")
"""A URL with a user and password in it: a secret too."""


def _models(settings: Settings, action: str, tasks: list[str]) -> int:
    try:
        wanted = requirements(settings, tasks)
    except ValueError as exc:
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2
    if action == "list":
        print(table(wanted))
        return 0
    try:
        failures = pull(wanted)
    except HubUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if failures:
        print(f"error: {failures} of {len(wanted)} could not be pulled", file=sys.stderr)
        return 1
    print("all present: the bot can now start with HF_HUB_OFFLINE=1", file=sys.stderr)
    return 0


def configure_logging(settings: Settings, serving: bool) -> None:
    """discord.py's log setup for the bot; terminal commands stay quiet (results, progress
    bars, one-line errors) unless BOT_LOG_LEVEL is set.

    Loggers that record what members wrote stay above DEBUG: discord.py's gateway and HTTP
    loggers log message contents and interaction tokens (``BOT_DISCORD_LOG_LEVEL``), and
    those in ``PRIVATE_LOGGERS`` more.
    """
    if serving:
        import discord

        discord.utils.setup_logging(level=logging.getLevelName(settings.log_level), root=True)
    else:
        explicit = "log_level" in settings.model_fields_set
        logging.basicConfig(
            level=settings.log_level if explicit else "WARNING",
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # A terminal command prints a failed job's error itself: once, not also in the log.
    quiet = not serving and "log_level" not in settings.model_fields_set
    logging.getLogger("bot.executor").setLevel(logging.CRITICAL if quiet else logging.NOTSET)
    root = logging.getLogger().level
    logging.getLogger("discord").setLevel(
        max(root, logging.getLevelName(settings.discord_log_level))
    )
    keep_private_loggers_above_debug()


PRIVATE_LOGGERS = ("aiosqlite", "openai", "httpx", "httpx2")
"""Libraries whose DEBUG lines carry what members wrote or a secret: aiosqlite every row's
values; the openai client (1.x and 2.x) each chat request and the server's URL with any
credentials in it, as its transport (httpx, httpx2 under openai 3.x) may."""


def keep_private_loggers_above_debug() -> None:
    root = logging.getLogger().level
    for name in PRIVATE_LOGGERS:
        logging.getLogger(name).setLevel(max(root, logging.INFO))


QUIET = {
    "TRANSFORMERS_VERBOSITY": "error",  # "requires torchvision; falling back..."
    "DIFFUSERS_VERBOSITY": "error",  # "install accelerate for faster loading"
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights" bars for every model
}
"""What libraries print that a terminal user cannot act on; BOT_LOG_LEVEL shows it again."""


def quiet_libraries() -> None:
    """For ``ask`` and ``chat``: set before the libraries load, and inherited by a worker."""
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":  # read when the hub was imported
        hub_utils.disable_progress_bars()


def env_name(loc: Sequence[str | int]) -> tuple[str, list[str]]:
    """The variable a host set for a setting's error location, and the keys within it:
    ``("quotas", "chat")`` is BOT_QUOTAS at chat."""
    model: type[BaseModel] = Settings
    parts: list[str] = []
    rest = [str(part) for part in loc]
    while rest and rest[0] in model.model_fields:
        name = rest.pop(0)
        parts.append(name)
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    if parts == ["discord_token"]:
        return "DISCORD_TOKEN", rest
    return "BOT_" + "__".join(part.upper() for part in parts), rest


def setting_error(exc: ValidationError | SettingsError) -> str:
    """One line naming the variable, what is wrong, and the value given."""
    if isinstance(exc, SettingsError):
        field = re.search(r'field "([^"]+)"', str(exc))
        name = env_name([field[1]])[0] if field else "a setting"
        return f"{name}: {exc.__cause__ or exc}"
    first = exc.errors()[0]
    if not first["loc"]:  # a rule across settings: its message names the variables
        return first["msg"].removeprefix("Value error, ")
    name, keys = env_name(first["loc"])
    where = f" (at {'.'.join(keys)})" if keys else ""
    message = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    shown = ""
    if isinstance(given, str | int | float) and repr(given) not in message:
        shown = f"; got {given!r}"
    return f"{name}{where}: {message}{shown}"


def no_bars_unless_a_terminal() -> None:
    """Progress bars (the hub's, and through it transformers' and diffusers') only on a
    terminal: a log file or a pipe gets plain lines, no \r and no block characters. Set in
    the environment too, so that model workers inherit it."""
    if not sys.stderr.isatty():
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        hub_utils.disable_progress_bars()
        if "transformers" in sys.modules:  # it read the hub's switch when it was imported
            sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    no_bars_unless_a_terminal()
    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        print(f"error: {setting_error(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings, serving=args.command in ("run", "sync"))
    if args.command in ("run", "sync"):
        for name, close in unknown_variables(host_variables()):
            hint = f"; did you mean {close}?" if close else ""
            logging.getLogger("bot").warning("%s sets nothing%s", name, hint)
    if args.command == "settings":
        return _show_settings(settings, args.env_example)
    if args.command == "models":
        return _models(settings, args.action, args.tasks)
    if args.command == "doctor":
        from bot.doctor import doctor

        return doctor(settings, args.online)
    if args.command == "health":
        return report(settings.heartbeat_path(), args.max_age)
    if args.command in ("run", "sync"):
        try:
            return asyncio.run(_discord(settings, sync_only=args.command == "sync"))
        except (ExecutorError, UsageUnavailable) as exc:
            print(f"error: {explain(exc)}", file=sys.stderr)
            return 2 if isinstance(exc, BackendUnavailable) else 1
    if args.command == "usage":
        try:
            return asyncio.run(_usage(settings, args))
        except UsageUnavailable as exc:
            print(f"error: {explain(exc)}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # e.g. `usage export | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if args.device:
        settings.device = args.device
    if "log_level" not in settings.model_fields_set:
        quiet_libraries()
    if args.model and (args.command == "chat" or args.task == "imagine"):
        # chat fits conversations to this model; /imagine checks sizes by its config
        setattr(settings.models, "chat" if args.command == "chat" else "imagine", args.model)
    try:
        _check_model_path(args.model)
        command = _chat if args.command == "chat" else _ask
        return asyncio.run(command(settings, args))
    except (HandlerError, ExecutorError, UsageUnavailable) as exc:
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, HandlerError | DeviceUnavailable | BackendUnavailable) else 1
