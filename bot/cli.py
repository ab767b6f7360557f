"""``python -m bot``: use the bot's tasks from a terminal, and inspect its settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from bot.executor import ExecutorError
from bot.settings import Settings
from handlers.base import HandlerError
from handlers.sentiment import SentimentRequest, SentimentResult


@dataclass(frozen=True)
class AskCommand:
    """How ``ask TASK`` turns arguments into a request and a result into text."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    request: Callable[[argparse.Namespace], Any]
    render: Callable[[Any], str]


def _sentiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text to rate")


def _render_sentiment(result: SentimentResult) -> str:
    return f"{result.label} ({result.score:.3f})"


ASK_COMMANDS: dict[str, AskCommand] = {
    "sentiment": AskCommand(
        "rate a text as positive or negative",
        _sentiment_arguments,
        lambda args: SentimentRequest(args.text),
        _render_sentiment,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="A self-hosted multimodal Discord assistant running Hugging Face models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser("ask", help="run one task from the terminal, without Discord")
    tasks = ask.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, command in ASK_COMMANDS.items():
        task = tasks.add_parser(name, help=command.help)
        command.add_arguments(task)
        task.add_argument("--model", help="hub id or local directory (default: configured)")
        task.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: configured)")
        task.add_argument("--json", action="store_true", help="print the result as JSON")

    show = commands.add_parser("settings", help="show every setting, its env name and value")
    show.add_argument(
        "--env-example", action="store_true", help="print a commented .env template instead"
    )
    return parser


async def _ask(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import start_executor  # imports torch and transformers: only when needed

    command = ASK_COMMANDS[args.task]
    executor = await start_executor(settings)
    try:
        handle = executor.submit(args.task, command.request(args), user_id="cli", model=args.model)
        result = await handle
    finally:
        await executor.shutdown()
    print(json.dumps(asdict(result)) if args.json else command.render(result))
    return 0


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
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    if hasattr(value, "get_secret_value"):
        return ""
    return str(value)


def _show_settings(settings: Settings, env_example: bool) -> int:
    if env_example:
        for env, default, doc in _settings_rows(Settings, Settings.model_construct(), "BOT_"):
            print("# " + " ".join(doc.split()))
            print(f"{env}={_env_value(default)}\n")
        return 0
    for env, value, _ in _settings_rows(Settings, settings, "BOT_"):
        shown = "(set)" if hasattr(value, "get_secret_value") else value
        print(f"{env}={'' if shown is None else shown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        print(f"error: invalid setting {where}: {first['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "settings":
        return _show_settings(settings, args.env_example)
    if args.device:
        settings.device = args.device
    try:
        return asyncio.run(_ask(settings, args))
    except (HandlerError, ExecutorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, HandlerError) else 1
