"""The bot in its members' languages: every catalog covers every command string and every
reply the bot words itself, names keep Discord's rules, and a German member sees German.

The command strings are read from what the bot syncs to Discord (SimCord records the
request), the replies from the source, as gettext's extraction would find them.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import discord
import pytest
import simcord.interactions
from babel.messages.extract import extract_from_dir

from bot.client import friendly
from bot.commands import NotAnAdmin
from bot.executor import Busy
from bot.localization import NAME, Catalogs, Key, catalogs, name_in, tr
from bot.quotas import CooldownActive
from bot.settings import MessageMenu
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    harness,
    scene,
    simcord_bot,
    stack,
)

ROOT = Path(__file__).resolve().parents[1]
OFFERED = {"de", "fr", "es-ES", "pt-BR", "ja"}
CHAT_INPUT = 1
NAME_MAX, TEXT_MAX = 32, 100


def synced(h: Harness) -> list[dict[str, Any]]:
    """The commands as the bot last registered them with Discord."""
    (*_, put) = (
        entry
        for entry in h.env.http_requests
        if entry.method == "PUT" and entry.path.endswith("/commands")
    )
    return put.json


def options_of(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every option under a command, subcommands and their options included."""
    for option in node.get("options") or []:
        yield option
        yield from options_of(option)


def command_strings(commands: list[dict[str, Any]]) -> set[Key]:
    """What the translator is asked for: names in the name context, the rest without, and
    every message menu an owner may choose (BOT_MESSAGE_MENUS), synced or not."""
    keys: set[Key] = {(None, menu) for menu in get_args(MessageMenu)}
    for command in commands:
        if command.get("type", CHAT_INPUT) != CHAT_INPUT:  # a context menu's name is free text
            keys.add((None, command["name"]))
            continue
        for node in [command, *options_of(command)]:
            keys |= {(NAME, node["name"]), (None, node["description"])}
            keys |= {(None, choice["name"]) for choice in node.get("choices") or []}
    return keys


def reply_strings() -> set[Key]:
    """Every ``tr("...")`` in the bot, and the reasons the bot gives when it refuses a
    member a command (a check failure's text is looked up as it is)."""
    found = extract_from_dir(ROOT / "bot", keywords={"tr": None})
    return {(None, message) for _, _, message, _, _ in found} | {(None, str(NotAnAdmin()))}


def describe(key: Key) -> str:
    context, text = key
    return f"{context}: {text}" if context else text


def test_every_catalog_translates_every_command_string_and_reply(harness: Harness) -> None:
    wanted = command_strings(synced(harness)) | reply_strings()
    shipped = catalogs()
    assert set(shipped.locales) >= OFFERED
    assert set(shipped.locales) <= {locale.value for locale in discord.Locale}  # folder names
    missing = {
        locale: sorted(describe(key) for key in wanted if key not in shipped.messages[locale])
        for locale in shipped.locales
    }
    assert missing == {locale: [] for locale in shipped.locales}


def test_catalogs_keep_no_string_the_bot_no_longer_uses(harness: Harness) -> None:
    wanted = command_strings(synced(harness)) | reply_strings()
    shipped = catalogs()
    stale = {
        locale: sorted(describe(key) for key in shipped.messages[locale] if key not in wanted)
        for locale in shipped.locales
    }
    assert stale == {locale: [] for locale in shipped.locales}


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_translations_keep_every_placeholder_and_no_other() -> None:
    shipped = catalogs()
    wrong = {
        (locale, describe(key)): translation
        for locale in shipped.locales
        for key, translation in shipped.messages[locale].items()
        if fields(translation) != fields(key[1])
    }
    assert wrong == {}


def name_breaks_rules(name: str) -> bool:
    """Discord's rule for command and option names: 1-32 letters, digits, - or _ in any
    script, lowercase where the script has case."""
    return (
        not 1 <= len(name) <= NAME_MAX
        or name != name.lower()
        or not all(c.isalnum() or c in "-_" for c in name)
    )


def localized(node: dict[str, Any], locale: str, field: str = "name") -> str:
    return node.get(f"{field}_localizations", {}).get(locale, "")


def broken_in(command: dict[str, Any], locale: str) -> list[str]:
    """What Discord would refuse in one command's ``locale`` strings, by English name."""
    if command.get("type", CHAT_INPUT) != CHAT_INPUT:  # a context menu: free text
        name = localized(command, locale)
        return [] if 1 <= len(name) <= NAME_MAX else [f"menu {command['name']!r}: {name!r}"]
    broken = []
    for node in [command, *options_of(command)]:
        name, text = localized(node, locale), localized(node, locale, "description")
        if name_breaks_rules(name) or not 1 <= len(text) <= TEXT_MAX:
            broken.append(f"{node['name']!r}: {name!r}, {text!r}")
        for choice in node.get("choices") or []:
            if not 1 <= len(localized(choice, locale)) <= TEXT_MAX:
                broken.append(f"{node['name']!r} choice {choice['name']!r}")
        siblings = [localized(option, locale) for option in node.get("options") or []]
        if len(set(siblings)) != len(siblings):
            broken.append(f"{node['name']!r}: options share a name in {siblings}")
    return broken


def test_synced_localizations_follow_discords_rules(harness: Harness) -> None:
    commands = synced(harness)
    broken = {
        locale: [problem for command in commands for problem in broken_in(command, locale)]
        for locale in OFFERED
    }
    for locale in OFFERED:
        for kind in {command.get("type", CHAT_INPUT) for command in commands}:
            names = [localized(c, locale) for c in commands if c.get("type", CHAT_INPUT) == kind]
            if len(set(names)) != len(names):
                broken[locale].append(f"commands share a name in {sorted(names)}")
    assert broken == {locale: [] for locale in OFFERED}


def test_an_unknown_locale_falls_back_to_english() -> None:
    busy = Busy("the bot is busy", 3.2)
    english = "The bot is busy; try again in ~4s. Nothing was queued."
    assert friendly(busy) == friendly(busy, "ko") == friendly(busy, "en-GB") == english
    assert tr("Cancelled.", "zh-CN") == "Cancelled."
    assert name_in("summarize", "ko") == "summarize"
    empty = Catalogs({})
    assert empty.translate("Cancelled.", "de") == "Cancelled."


def test_a_regional_locale_takes_its_languages_catalog() -> None:
    """Latin American Spanish reads the Spanish of Spain rather than English."""
    assert tr("Cancelled.", "es-419") == tr("Cancelled.", "es-ES") != "Cancelled."


def test_quota_refusals_keep_english_for_logs_and_translate_for_members() -> None:
    cooling = CooldownActive("imagine", 4.5)
    assert str(cooling) == "imagine is cooling down; try again in 5s"
    assert cooling.message("de") == friendly(cooling, "de")
    assert "5" in cooling.message("de") and cooling.message("de") != str(cooling)


@pytest.fixture
def speaks(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any, str], None]:
    """Set a member's Discord client language. SimCord sends every interaction with locale
    en-US and has no setting for it, so its payload builder (the one place both slash
    commands and buttons are built) is wrapped to put the member's locale in."""
    locales: dict[int, str] = {}
    build = simcord.interactions.base_payload

    def base_payload(backend: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        record, payload = build(backend, **kwargs)
        payload["locale"] = locales.get(kwargs["user_id"], payload["locale"])
        return record, payload

    monkeypatch.setattr(simcord.interactions, "base_payload", base_payload)
    return lambda member, locale: locales.__setitem__(member.id, locale)


@pytest.mark.parametrize("stack", [{"max_queue": 1}], indirect=True)
async def test_a_german_member_sees_german_commands_and_a_german_busy_reply(
    harness: Harness, speaks: Callable[[Any, str], None]
) -> None:
    s = await scene(harness)
    speaks(s.alice, discord.Locale.german.value)
    german = {
        c["name"]: c["name_localizations"]["de"]
        for c in synced(harness)
        if c["name"] in s.alice.available_commands(s.channel)
    }
    assert {german[name] for name in ("summarize", "translate", "chat")} == {
        "zusammenfassen",
        "übersetzen",
        "chat",
    }
    task = harness.tasks["chat"]
    task.hold = True
    await s.bob.slash(s.channel, "chat", message="first")
    await asyncio.to_thread(task.entered.wait, 10)
    refused = await s.alice.slash(s.channel, "chat", message="second")
    assert refused.ephemeral
    assert refused.response.content.startswith("Der Bot ist gerade ausgelastet")
    task.gate.set()
    await harness.finish()


async def test_a_german_member_waits_in_german_and_cancels_in_german(
    harness: Harness, speaks: Callable[[Any, str], None]
) -> None:
    s = await scene(harness)
    speaks(s.alice, discord.Locale.german.value)
    task = harness.tasks["chat"]
    task.hold = True
    await s.bob.slash(s.channel, "chat", message="first")
    await asyncio.to_thread(task.entered.wait, 10)
    waiting = await s.alice.slash(s.channel, "chat", message="second")
    assert "⏳ /chat: Platz 1 in der Warteschlange" in waiting.response.content
    pressed = await s.alice.click(waiting.response, label="Abbrechen")
    assert pressed.ephemeral and pressed.response.content == "Abgebrochen."
    task.gate.set()
    await harness.finish()
