"""The bot's own words in the member's language: gettext catalogs read once with Babel.

A catalog per language lives in ``locales/<language>/LC_MESSAGES/bot.po``; its folder is
named as gettext names it (``pt_BR``), and a member's Discord locale (``pt-BR``) finds it,
or else one of the same language (``es-419`` finds ``es_ES``). Message ids are the English
text, so English needs no catalog and anything a catalog lacks stays English.

Command and option names are looked up in the ``name`` context (msgctxt): Discord wants them
lowercase, without spaces, and at most 32 characters, unlike the rest. Nothing here imports
discord.py: terminal commands build the same error messages without it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

LOCALES_DIR = Path(__file__).with_name("locales")
DOMAIN = "bot"
NAME = "name"
"""The msgctxt of command, group and option names."""

Key = tuple[str | None, str]
"""(msgctxt, msgid)."""


class Catalogs:
    """Every shipped translation, by Discord locale (``de``, ``pt-BR``)."""

    def __init__(self, messages: Mapping[str, Mapping[Key, str]]) -> None:
        self.messages = messages

    @classmethod
    def load(cls, folder: Path = LOCALES_DIR) -> Catalogs:
        """Read every ``<language>/LC_MESSAGES/bot.po`` under ``folder``: translated entries
        only (an empty or fuzzy one is not a translation, as for gettext's msgfmt)."""
        from babel.messages.pofile import read_po  # only members with a catalog need it

        messages: dict[str, dict[Key, str]] = {}
        for path in sorted(folder.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
            with path.open("rb") as po:
                catalog = read_po(po)
            locale = path.parents[1].name.replace("_", "-")
            messages[locale] = {
                (message.context, message.id): message.string
                for message in catalog
                if message.id and isinstance(message.id, str)
                if isinstance(message.string, str) and message.string and not message.fuzzy
            }
        return cls(messages)

    @property
    def locales(self) -> list[str]:
        return sorted(self.messages)

    def catalog_for(self, locale: str | None) -> Mapping[Key, str] | None:
        """The catalog for ``locale``, else one of its language; None for English or a
        language without one."""
        if not locale:
            return None
        if locale in self.messages:
            return self.messages[locale]
        language = locale.split("-")[0]
        return next(
            (found for name, found in self.messages.items() if name.split("-")[0] == language),
            None,
        )

    def lookup(self, text: str, locale: str | None, context: str | None = None) -> str | None:
        """The translation of ``text``, or None where there is none."""
        catalog = self.catalog_for(locale)
        return catalog.get((context, text)) if catalog is not None else None

    def translate(self, text: str, locale: str | None, context: str | None = None) -> str:
        """``text`` in ``locale``'s language, or as it is (English)."""
        return self.lookup(text, locale, context) or text


@functools.cache
def catalogs() -> Catalogs:
    """The shipped catalogs, read once: when the bot syncs its commands, or for the first
    reply in another language than English (a terminal command never reads them)."""
    return Catalogs.load()


def tr(text: str, locale: str | None, /, **fields: object) -> str:
    """A reply of the bot's in the member's language, with its ``{fields}`` filled in.

    ``text`` is the English message, written out at the call so that extraction (and the
    catalog test) finds it; ``locale`` is Discord's (``interaction.locale.value``), or None
    for the terminal and logs.
    """
    translated = text if english(locale) else catalogs().translate(text, locale)
    return translated.format(**fields)


def name_in(name: str, locale: str | None) -> str:
    """A command or option name as the member's client shows it (``/zusammenfassen``)."""
    return name if english(locale) else catalogs().translate(name, locale, NAME)


def english(locale: str | None) -> bool:
    """No locale (the terminal, logs) or an English one: the text as written."""
    return not locale or locale.split("-")[0] == "en"
