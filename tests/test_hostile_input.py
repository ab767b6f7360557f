"""Hostile input for every handler, every slash command and the command line (issue 6).

Random Unicode, zero-width and direction marks, control characters, megabyte strings,
Discord markup, NaN and infinite numbers, out-of-range counts, unknown languages and voices
must end in a typed refusal (``InvalidInput``: a private reply on Discord, exit 2 and one line
on the command line) or a valid result: never a crash, a hang or an unbounded allocation.
Every property is derandomized, so CI explores the same examples on every run.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import sys
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import discord
import pytest
import simcord
import soundfile
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.cli import MAX_FILE_BYTES, main
from bot.client import friendly
from bot.cogs.tasks import language_choices
from bot.markdown import MESSAGE_LIMIT
from handlers.base import InvalidInput, LoadSpec, Task
from handlers.chat import MAX_SEED as MAX_CHAT_SEED
from handlers.chat import ChatRequest, ChatResult, ChatTask
from handlers.classify import ClassifyRequest, ClassifyResult, ClassifyTask, parse_labels
from handlers.imagine import MAX_SEED, ImagineRequest, ImagineResult, ImagineTask
from handlers.sentiment import SentimentRequest, SentimentResult, SentimentTask
from handlers.speak import SpeakRequest, SpeakResult, SpeakTask
from handlers.summarize import LENGTHS, SummarizeRequest, SummarizeResult, SummarizeTask
from handlers.translate import TranslateRequest, TranslateResult, TranslateTask
from tests import tinymodels
from tests.handlers_support import RecordingContext
from tests.test_discord import (  # noqa: F401 - fixtures, found by name
    Harness,
    Stack,
    harness,
    scene,
    simcord_bot,
    stack,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

BASE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    # The module's models, the SimCord bot and log capture are meant to serve every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QUICK = settings(BASE, deadline=timedelta(seconds=10))
"""For validation alone: a thousand times its real cost, far below a hang."""

VALIDATION_OVERHEAD = 2**20
"""Memory validation may allocate beyond a few copies of its input, whatever the numbers say."""

# Text

INVISIBLE = (
    "\u200b\u200c\u200d\u2060\ufeff"  # zero-width space, non-joiner, joiner, word joiner, BOM
    "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # direction marks
    "\u00ad\x00\x07\x1b\x7f\x1c\x1f"  # soft hyphen and control characters
    " \t\n\r\x0b\x0c\u00a0\u2028\u2029\u3000"  # spaces and line breaks
)

MARKUP = (
    "@everyone",
    "@here",
    "<@MEMBER>",
    "<@!MEMBER>",
    "<@&ROLE>",
    "<#1>",
    "```",
    "```py\nprint(1)\n```",
    "||spoiler||",
    "**bold**",
    "__",
    "~~",
    "> quote",
    "# title",
    "-# small",
    "[link](https://example.com)",
    "<:emoji:123>",
    "<t:0:R>",
    "https://discord.com/channels/1/2/3",
    "{}",
    "{",
    "}",
    "%s",
    "\\",
)
"""Discord syntax; the SimCord tests put real member and role ids in place of the capitals."""
WORDS = (
    "hello",
    "The study group meets every week.",
    "Die Gruppe trifft sich jede Woche.",
    "Привет, мир",
    "مرحبا بالعالم",
    "שלום",
    "你好\uff0c世界。",
    "こんにちは",
    "😀",
    "👨‍👩‍👧",
    "🏳️‍🌈",
    "e\u0301",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚o̘",
    "ﷺ",
    "123456789012345678901234567890",
)
"""Words with something to read: real scripts, emoji sequences, combining marks, digits."""
LONE_SURROGATES = ("\ud800", "\udcff", "\udfff")
"""What undecodable bytes become in a command line (surrogateescape) or escapes in JSON."""
SIZES = (4001, 6000, 50_001, 2**20)
"""Over Discord's option limits, over the summarizer's limit, and a megabyte."""


def sized(fragment: str, length: int) -> str:
    """``length`` characters by repeating ``fragment``: a megabyte from one small draw."""
    return (fragment * (length // len(fragment) + 1))[:length]


fragment = st.one_of(
    st.sampled_from(INVISIBLE),
    st.sampled_from(MARKUP),
    st.sampled_from(WORDS),
    st.text(max_size=12),  # any code point but surrogates
)
short_text = st.lists(fragment, max_size=8).map("".join)
huge_text = st.builds(sized, fragment.filter(bool), st.sampled_from(SIZES))
broken_text = st.tuples(short_text, st.sampled_from(LONE_SURROGATES), short_text).map("".join)
hostile_text = st.one_of(short_text, huge_text, broken_text)
blank_text = st.text(alphabet=INVISIBLE, max_size=40)

noise = st.lists(st.sampled_from(INVISIBLE) | st.sampled_from(MARKUP), max_size=3).map("".join)
readable = st.tuples(noise, st.sampled_from(WORDS), noise).map("".join)
"""Text a member might send: real words among zero-width, direction and markup noise."""
label = st.tuples(
    st.sampled_from(("", "\u200b", "\u202e", "@everyone ")), st.sampled_from(WORDS)
).map("".join)

# Numbers and names

EDGE_INTS = (0, -1, -5, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, 10**18, -(10**18))
integers = st.one_of(st.integers(-3, 80), st.sampled_from(EDGE_INTS), st.integers())
floats = st.one_of(
    st.floats(),  # NaN and infinities included
    st.sampled_from((math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e-300, 30.000001, 1e308)),
    st.integers(-5, 40).map(float),
)
KNOWN_LANGUAGES = (
    "fr",
    "French",
    " fr ",
    "FR",
    "fr-CA",
    "pt_BR",
    "zh_Hant_TW",
    "French (fr)",
    "deutsch",
    "Español",
    "日本語",
    "en",
    "auto",
    "AUTO",
)
UNKNOWN_LANGUAGES = (
    "",
    " ",
    "xx",
    "klingon",
    "Frnch",
    "en-",
    "-fr",
    "fr--CA",
    "auto-detect",
    "fr\u200b",
    "\u202efr",
    "q" * 5000,
)
languages = st.one_of(
    st.sampled_from(KNOWN_LANGUAGES), st.sampled_from(UNKNOWN_LANGUAGES), hostile_text
)
VOICES = ("voice0", "voice2", "VOICE1", " voice1", "slt", "nobody", "")
SIZE_TEXTS = (
    "96x96",
    "120x80",
    "768x768",
    "960x640",
    "64x64",
    "0x0",
    "-64x64",
    "64X64",
    "64\u00d764",
    " 96 x 96 ",
    "96x",
    "x96",
    "1e3x1e3",
    "nanxnan",
    "inf x inf",
    "\u0661\u0662\u0660x\u0668\u0660",
    "96x96x96",
    "",
    "9" * 5000 + "x64",
    "64x" + "0" * 100 + "64",
)
sizes = st.one_of(st.none(), st.sampled_from(SIZE_TEXTS), hostile_text)
TEMPLATES = (
    "This example is {}.",
    "{}",
    "{}{",
    "}{}",
    "{0}",
    "{} {x}",
    "{:d}",
    "{!r}",
    "{{}}",
    "{}{}",
    "{{{}}}",
    "{:>5}",
    "{:{}}",
    "no placeholder",
)
labels = st.one_of(
    st.lists(hostile_text, max_size=12).map(tuple),
    hostile_text.map(parse_labels),  # how /classify and the CLI split what members type
)

HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "summarize": st.builds(
        SummarizeRequest,
        hostile_text,
        st.sampled_from(sorted(LENGTHS)) | hostile_text,
        st.none() | integers,
        st.none() | integers,
    ),
    "translate": st.builds(TranslateRequest, hostile_text, languages, languages),
    "imagine": st.builds(
        ImagineRequest,
        hostile_text,
        hostile_text,
        st.none() | integers,
        st.none() | floats,
        st.none() | integers,
        sizes,
        integers,
    ),
    "speak": st.builds(
        SpeakRequest,
        hostile_text,
        st.none() | st.sampled_from(VOICES) | hostile_text,
        st.sampled_from(("en", " EN ", "fr", "de", "nl", "")) | hostile_text,
    ),
    "sentiment": st.builds(SentimentRequest, hostile_text),
    "classify": st.builds(
        ClassifyRequest, hostile_text, labels, st.booleans(), st.sampled_from(TEMPLATES)
    ),
    "chat": st.builds(
        ChatRequest, hostile_text, st.none() | hostile_text, st.none() | integers, floats, integers
    ),
}
"""Anything a front end can put in a request, and worse."""

PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "summarize": st.builds(
        SummarizeRequest, readable, st.sampled_from(sorted(LENGTHS)), st.none(), st.integers(1, 6)
    ),
    "translate": st.builds(
        TranslateRequest,
        readable,
        st.sampled_from(("fr", "German", "es-ES", "日本語", "pt_BR")),
        st.sampled_from(("en", "English", " EN ")),
    ),
    "imagine": st.builds(
        ImagineRequest,
        readable,
        noise,
        st.integers(1, 2),
        st.floats(0, 30),
        st.integers(0, MAX_SEED),
        st.sampled_from((None, "96x96", "120x80", "80x120", " 96 \u00d7 96 ", "768x768")),
        st.integers(1, 2),
    ),
    "speak": st.builds(
        SpeakRequest,
        readable,
        st.sampled_from((None, "voice0", "voice2")),
        st.sampled_from(("en", " EN ", "fr")),
    ),
    "sentiment": st.builds(SentimentRequest, readable),
    "classify": st.builds(
        ClassifyRequest,
        readable,
        st.lists(label, min_size=2, max_size=10, unique_by=lambda s: s.strip().casefold()).map(
            tuple
        ),
        st.booleans(),
    ),
    "chat": st.builds(
        ChatRequest,
        readable,
        st.none() | noise,
        st.integers(1, 8),
        st.floats(0, 2),
        st.integers(0, MAX_CHAT_SEED),
    ),
}
"""Requests with something to read and every option in range, however odd the text."""

VALID = {
    "summarize": SummarizeRequest("The group met. They reviewed notes."),
    "translate": TranslateRequest("Good morning", "fr", "en"),
    "imagine": ImagineRequest("a red fox", steps=2),
    "speak": SpeakRequest("Welcome to the group."),
    "sentiment": SentimentRequest("I love this"),
    "classify": ClassifyRequest("exam moved", ("school", "music")),
    "chat": ChatRequest("hello", max_tokens=8),
}
TEXT_FIELDS = {
    "summarize": ("text",),
    "translate": ("text",),
    "imagine": ("prompt", "negative_prompt"),
    "speak": ("text",),
    "sentiment": ("text",),
    "classify": ("text", "template"),
    "chat": ("message", "system"),
}
"""Fields the model reads as text; the first of each task must not be blank."""
TASK_OF = {type(request): name for name, request in VALID.items()}


def odd_text_in(request: Any, fields: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """``request`` with short hostile text in one of ``fields``."""
    return st.builds(
        lambda field, text: dataclasses.replace(request, **{field: text}),
        st.sampled_from(fields),
        short_text | broken_text,
    )


ODD_TEXT: dict[str, st.SearchStrategy[Any]] = {
    name: odd_text_in(VALID[name], TEXT_FIELDS[name]) for name in VALID
} | {
    "speak": odd_text_in(VALID["speak"], ("text",))
    | odd_text_in(SpeakRequest("x", language="fr"), ("text",)),  # VITS has its own alphabet
    "translate": odd_text_in(VALID["translate"], ("text",))
    | odd_text_in(TranslateRequest("x", "fr"), ("text",)),  # the source is detected
    "classify": odd_text_in(VALID["classify"], TEXT_FIELDS["classify"])
    | st.builds(
        lambda label, template: ClassifyRequest("exam moved", ("school", label), template=template),
        short_text | broken_text,
        st.sampled_from(TEMPLATES),
    ),
}
"""Valid requests but for short hostile text in one field or label."""


# Fixtures


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-models")
    return tinymodels.build_every_task(root) | {
        "vits": tinymodels.build_vits(root / "vits"),
        "empty": tmp_path_factory.mktemp("no-model"),
    }


@pytest.fixture(scope="module")
def tasks(model_dirs: dict[str, Path]) -> dict[str, Task[Any, Any]]:
    """Each task with the bot's default limits, prepared as at start-up."""
    built: dict[str, Task[Any, Any]] = {
        "summarize": SummarizeTask(),
        "translate": TranslateTask(),
        "imagine": ImagineTask(),
        "speak": SpeakTask(
            voices=str(model_dirs["voices"]),
            vocoder=str(model_dirs["vocoder"]),
            language_models={"fr": str(model_dirs["vits"])},
        ),
        "sentiment": SentimentTask(),
        "classify": ClassifyTask(),
        "chat": ChatTask(),
    }
    for task in built.values():
        task.prepare()
    return built


@pytest.fixture(scope="module")
def load_model(model_dirs: dict[str, Path]) -> Callable[[Task[Any, Any], Any], Any]:
    """The tiny model that serves a request, loaded once per module."""
    loaded: dict[str, Any] = {}

    def get(task: Task[Any, Any], request: Any) -> Any:
        source = task.model_for(request, str(model_dirs[task.name]))
        if source not in loaded:
            loaded[source] = task.load(LoadSpec(source, "cpu", torch.float32))
        return loaded[source]

    return get


# Checks


def input_bytes(request: Any) -> int:
    """Memory held by the request's text: what validation may copy a few times."""
    values = [getattr(request, field.name) for field in dataclasses.fields(request)]
    texts = [v for value in values for v in (value if isinstance(value, tuple) else [value])]
    return sum(sys.getsizeof(text) for text in texts if isinstance(text, str))


def validate(task: Task[Any, Any], request: Any) -> InvalidInput | None:
    """``task.validate(request)``'s refusal, or None; it must allocate little either way."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        task.validate(request)
        refusal = None
    except InvalidInput as exc:
        refusal = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1] - before
        if not tracing:
            tracemalloc.stop()
    assert peak < 8 * input_bytes(request) + VALIDATION_OVERHEAD, f"validation allocated {peak}"
    return refusal


def assert_readable(refusal: InvalidInput, request: Any) -> None:
    """A refusal names a field of the request and fits one Discord message or terminal line."""
    assert refusal.option in {field.name for field in dataclasses.fields(request)}
    reply = friendly(refusal)
    assert reply is not None and len(reply) <= MESSAGE_LIMIT
    assert str(refusal).isprintable(), "user input must be echoed escaped, on one line"


def assert_valid(task: Task[Any, Any], request: Any, outcome: Any) -> None:
    """What a run may end in: a refusal naming the request's field, or a well-formed result."""
    match outcome:
        case InvalidInput():
            assert_readable(outcome, request)
        case SummarizeResult():
            assert isinstance(outcome.summary, str) and outcome.chunks >= 1
        case TranslateResult():
            assert (outcome.source, outcome.target) == task.languages(request)
            assert isinstance(outcome.text, str)
        case ImagineResult():
            assert len(outcome.images) == request.count and 0 <= outcome.flagged <= request.count
            for png in outcome.images:
                with Image.open(io.BytesIO(png)) as image:
                    assert image.size == (outcome.width, outcome.height)
        case SpeakResult():
            samples, rate = soundfile.read(io.BytesIO(outcome.wav))
            assert rate == outcome.sample_rate and len(samples) > 0 and outcome.seconds > 0
        case SentimentResult():
            assert 0 <= outcome.score <= 1
        case ClassifyResult():
            assert sorted(outcome.labels) == sorted(label.strip() for label in request.labels)
            assert all(0 <= score <= 1 for score in outcome.scores)
            if not request.multi_label:
                assert math.isclose(sum(outcome.scores), 1, rel_tol=1e-4)
        case ChatResult():
            assert isinstance(outcome.text, str) and outcome.tokens <= request.max_tokens
        case _:
            raise AssertionError(f"{task.name} gave {outcome!r}")


# Handlers


def with_examples(test: Callable[..., None], regressions: tuple[Any, ...]) -> Callable[..., None]:
    """``test`` that also always tries ``regressions``: inputs that once broke the handler."""
    for request in regressions:
        test = example(request=request)(test)
    return test


def refused_or_accepted(name: str, *regressions: Any) -> Callable[..., None]:
    """One task's validation: a readable refusal, or a request the executor can queue."""

    @settings(QUICK, max_examples=100)
    @given(request=HOSTILE[name])
    def test(tasks: dict[str, Task[Any, Any]], request: Any) -> None:
        task = tasks[name]
        refusal = validate(task, request)
        if refusal is not None:
            assert_readable(refusal, request)
            return
        # The executor asks all of this of every request it admits.
        hash(task.batch_key(request))
        assert task.cost(request) > 0
        assert isinstance(task.model_for(request, "default"), str)

    return with_examples(test, regressions)


test_summarize_validation = refused_or_accepted("summarize")
test_translate_validation = refused_or_accepted(
    "translate",
    TranslateRequest("hello", "q" * 5000),  # echoed whole: no Discord reply fits
)
test_imagine_validation = refused_or_accepted(
    "imagine",
    ImagineRequest("a cat", size="9" * 5000 + "x64"),  # int() raised ValueError
)
test_speak_validation = refused_or_accepted(
    "speak",
    SpeakRequest("hello", voice="@everyone " * 500),  # echoed whole
    SpeakRequest("hello", language="\u202e" * 3000),  # echoed whole
)
test_sentiment_validation = refused_or_accepted("sentiment")
test_classify_validation = refused_or_accepted("classify")
test_chat_validation = refused_or_accepted("chat")


@pytest.mark.parametrize("name", sorted(VALID))
@settings(QUICK, max_examples=60)
@given(data=st.data())
def test_readable_requests_with_options_in_range_are_accepted(
    tasks: dict[str, Task[Any, Any]], name: str, data: st.DataObject
) -> None:
    request = data.draw(PLAUSIBLE[name], label="request")
    assert validate(tasks[name], request) is None


def accepted_requests_run(name: str, *regressions: Any) -> Callable[..., None]:
    """One task on its tiny model: whatever validation lets through runs to a valid result."""

    @settings(BASE, max_examples=25)
    @given(request=PLAUSIBLE[name] | ODD_TEXT[name])
    def test(
        tasks: dict[str, Task[Any, Any]],
        load_model: Callable[[Task[Any, Any], Any], Any],
        request: Any,
    ) -> None:
        task = tasks[name]
        refusal = validate(task, request)
        event("refused" if refusal else "ran")  # see --hypothesis-show-statistics
        if refusal is not None:  # odd text may be refused; readable text never is
            assert_readable(refusal, request)
            return
        (output,) = task.run_batch(load_model(task, request), [request], RecordingContext())
        outcome = output if isinstance(output, BaseException) else task.finish(output)
        assert_valid(task, request, outcome)

    return with_examples(test, regressions)


test_summarize_runs = accepted_requests_run("summarize")
test_translate_runs = accepted_requests_run("translate")
test_imagine_runs = accepted_requests_run("imagine")
test_speak_runs = accepted_requests_run(
    "speak",
    SpeakRequest("你好 123", language="fr"),  # VITS got no tokens and crashed
)
test_sentiment_runs = accepted_requests_run(
    "sentiment",
    SentimentRequest("good \udcff"),  # the tokenizer raised TypeError
)
test_classify_runs = accepted_requests_run(
    "classify",
    ClassifyRequest("hello", ("a", "b"), template="{}{"),  # format() raised ValueError
    ClassifyRequest("hello", ("a", "b"), template="{} {x}"),  # and KeyError
)
test_chat_runs = accepted_requests_run(
    "chat",
    ChatRequest("hello", max_tokens=4, temperature=1.0, seed=2**64),  # seeding raised
    ChatRequest("hello", max_tokens=4, temperature=1e-300),  # sampling from inf logits raised
)


MEGABYTE_FIELDS = [
    (name, field)
    for name, fields in {
        "summarize": ("text", "length"),
        "translate": ("text", "target", "source"),
        "imagine": ("prompt", "negative_prompt", "size"),
        "speak": ("text", "voice", "language"),
        "sentiment": ("text",),
        "classify": ("text", "template"),
        "chat": ("message", "system"),
    }.items()
    for field in fields
]


@pytest.mark.parametrize(("name", "field"), MEGABYTE_FIELDS)
def test_a_megabyte_in_any_text_option_is_refused_naming_it(
    tasks: dict[str, Task[Any, Any]], name: str, field: str
) -> None:
    for piece in ("a", "\u200b", "@everyone ", "😀", "\u202e", "9"):
        request = dataclasses.replace(VALID[name], **{field: sized(piece, 2**20)})
        refusal = validate(tasks[name], request)
        assert refusal is not None and refusal.option == field
        assert_readable(refusal, request)


@settings(QUICK, max_examples=150)
@given(name=st.sampled_from(sorted(VALID)), blank=blank_text)
@example(name="sentiment", blank="\u200b\u200d\ufeff")  # was accepted: empty to the model
@example(name="summarize", blank="\u202e\u200f\x00")
def test_text_with_nothing_visible_is_empty(
    tasks: dict[str, Task[Any, Any]], name: str, blank: str
) -> None:
    field = TEXT_FIELDS[name][0]
    refusal = validate(tasks[name], dataclasses.replace(VALID[name], **{field: blank}))
    assert refusal is not None and (refusal.option, refusal.message) == (field, "is empty")


@settings(QUICK, max_examples=150)
@given(
    name=st.sampled_from(sorted(VALID)),
    data=st.data(),
    broken=st.sampled_from(LONE_SURROGATES),
    where=st.integers(0, 3),
)
def test_lone_surrogates_are_refused_before_a_tokenizer_sees_them(
    tasks: dict[str, Task[Any, Any]], name: str, data: st.DataObject, broken: str, where: int
) -> None:
    field = data.draw(st.sampled_from(TEXT_FIELDS[name]), label="field")
    text = getattr(VALID[name], field) or "text"
    text = text[:where] + broken + text[where:]
    refusal = validate(tasks[name], dataclasses.replace(VALID[name], **{field: text}))
    assert refusal is not None and refusal.option == field


@settings(QUICK, max_examples=200)
@given(current=hostile_text, detect=st.booleans())
def test_language_autocomplete_offers_what_discord_accepts(current: str, detect: bool) -> None:
    choices = language_choices(current, detect)
    assert len(choices) <= 25
    assert all(1 <= len(c.name) <= 100 and 1 <= len(c.value) <= 100 for c in choices)


# Discord


def discord_string(longest: int, shortest: int = 1) -> st.SearchStrategy[str]:
    """Hostile text within an option's length limits, which Discord enforces (as SimCord does)."""
    return st.one_of(
        st.lists(fragment.filter(bool), min_size=1, max_size=8)
        .map("".join)
        .filter(lambda text: shortest <= len(text) <= longest),
        st.builds(sized, fragment.filter(bool), st.just(longest)),
    )


FREE_TEXT = discord_string(6000)
"""An option without a declared length: Discord still stops at 6,000 characters."""
LINKS = (
    "https://discord.com/channels/" + "1" * 5000 + "/2/3",
    "https://discord.com/channels/GUILD/CHANNEL/1",
    "https://discord.com/channels/1/2/3",
    "https://discordapp.com/channels/@me/1/2",
    "not a link",
)
"""Message links; the SimCord test puts this server's ids in place of the capitals."""
text_files = st.tuples(
    st.sampled_from(("notes.txt", "NOTES.TXT", "notes.txt.png", "notes")),
    st.one_of(
        hostile_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.sampled_from((b"\xff\xfe", b"", b"\0" * 10, b"a" * (2**20 + 1))),
    ),
)
DISCORD_OPTIONS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "summarize": st.fixed_dictionaries(
        {},
        optional={
            "text": discord_string(4000),
            "messages": st.integers(1, 100),
            "link": st.sampled_from(LINKS) | FREE_TEXT,
            "file": text_files,
            "length": st.sampled_from(("short", "medium", "long")),
        },
    ),
    "translate": st.fixed_dictionaries(
        {"text": discord_string(4000), "to": st.sampled_from(KNOWN_LANGUAGES) | FREE_TEXT},
        optional={"from": st.sampled_from(KNOWN_LANGUAGES) | FREE_TEXT},
    ),
    "imagine": st.fixed_dictionaries(
        {"prompt": discord_string(1000)},
        optional={
            "negative": discord_string(1000, 0),
            "steps": st.integers(1, 150),
            "guidance": st.floats(0, 30),
            "seed": st.integers(0, 2**32 - 1),
            "size": st.sampled_from(SIZE_TEXTS) | FREE_TEXT,
            "count": st.integers(1, 4),
        },
    ),
    "speak": st.fixed_dictionaries(
        {"text": discord_string(2000)},
        optional={
            "voice": st.sampled_from(VOICES) | FREE_TEXT,
            "language": st.sampled_from(("en", "fr", "xx")) | FREE_TEXT,
        },
    ),
    "sentiment": st.fixed_dictionaries({"text": discord_string(4000)}),
    "classify": st.fixed_dictionaries(
        {"text": discord_string(4000), "labels": discord_string(1000, 3)}
    ),
    "chat": st.fixed_dictionaries(
        {"message": discord_string(4000)}, optional={"temperature": st.floats(0, 2)}
    ),
}
"""Every option of every task command, hostile within what Discord lets through."""


@pytest.fixture
def local_voices(stack: Stack, tasks: dict[str, Task[Any, Any]]) -> None:
    """/speak checks voices against the module's voice table, not one on the hub."""
    stack.tasks["speak"].real = tasks["speak"]


def pings(h: Harness, reply: Any) -> tuple[list[int], list[int], bool]:
    """Whom a reply notified (users, roles, everyone), as Discord decides it from the
    message's allowed mentions; its ``mentions`` list every mention written, ping or not."""
    stored = h.env.backend.get_message(reply.message.channel.id, reply.id)
    return stored.ping_user_ids, stored.ping_role_ids, stored.mention_everyone


def fill_in(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with the placeholders of ``MARKUP`` and ``LINKS`` replaced by real ids.

    Text built up to an option's length limit (1,000 characters or more) keeps its length.
    """
    if not isinstance(value, str):
        return value
    filled = value
    for placeholder, real in ids.items():
        filled = filled.replace(placeholder, real)
    return filled if len(value) < 1000 else filled[: len(value)]


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
@pytest.mark.usefixtures("local_voices")
@settings(BASE, max_examples=80)
@given(
    command=st.sampled_from(sorted(DISCORD_OPTIONS)).flatmap(
        lambda name: st.tuples(st.just(name), DISCORD_OPTIONS[name])
    )
)
@example(command=("summarize", {"link": LINKS[0]}))  # int() raised ValueError: "error id"
@example(command=("speak", {"text": "hi", "voice": "<@MEMBER> " * 600}))  # a refusal too long
@example(command=("imagine", {"prompt": "a fox", "size": "9" * 5000 + "x64"}))  # to send
async def test_hostile_options_get_a_result_or_a_private_refusal_and_ping_nobody(
    harness: Harness, command: tuple[str, dict[str, Any]]
) -> None:
    name, options = command
    event(name)  # see --hypothesis-show-statistics
    s = await scene(harness)  # new members each time: quotas never decide the outcome
    role = s.guild.create_role("mods")
    ids = {"<@MEMBER>": s.bob.mention, "<@!MEMBER>": s.bob.mention, "<@&ROLE>": role.mention,
           "GUILD": str(s.guild.id), "CHANNEL": str(s.channel.id)}  # fmt: skip
    result = await s.alice.slash(
        s.channel, name, **{k: fill_in(v, ids) for k, v in options.items()}
    )
    await harness.finish()
    assert result.acknowledged, "the member saw nothing"
    replies = [reply for reply in (result.response, *result.followups) if reply is not None]
    assert replies
    for reply in replies:
        assert reply.content or reply.attachments
        assert "error id" not in reply.content, reply.content
        assert pings(harness, reply) == ([], [], False), "echoed text must notify nobody"


OUT_OF_RANGE = [
    ("imagine", {"prompt": "a fox", "steps": -5}),
    ("imagine", {"prompt": "a fox", "steps": 0}),
    ("imagine", {"prompt": "a fox", "steps": 151}),
    ("imagine", {"prompt": "a fox", "count": 0}),
    ("imagine", {"prompt": "a fox", "count": 10**18}),
    ("imagine", {"prompt": "a fox", "seed": -1}),
    ("imagine", {"prompt": "a fox", "seed": 2**32}),
    ("imagine", {"prompt": "a fox", "guidance": math.nan}),
    ("imagine", {"prompt": "a fox", "guidance": math.inf}),
    ("imagine", {"prompt": "a fox", "guidance": -0.5}),
    ("imagine", {"prompt": ""}),
    ("imagine", {"prompt": "a" * 1001}),
    ("imagine", {"prompt": "a fox", "negative": "a" * 1001}),
    ("chat", {"message": "hi", "temperature": math.nan}),
    ("chat", {"message": "hi", "temperature": -math.inf}),
    ("chat", {"message": "hi", "temperature": 2.5}),
    ("chat", {"message": "a" * 4001}),
    ("summarize", {"messages": 0}),
    ("summarize", {"messages": 101}),
    ("summarize", {"text": "x", "length": "epic"}),
    ("classify", {"text": "x", "labels": "ab"}),
    ("classify", {"text": "x", "labels": "a," * 501}),
    ("speak", {"text": "a" * 2001}),
    ("sentiment", {"text": ""}),
    ("translate", {"text": "a" * 4001, "to": "fr"}),
]


async def test_options_outside_their_declared_ranges_never_reach_the_bot(harness: Harness) -> None:
    """Discord (here SimCord) enforces each option's declared range, type and choices."""
    s = await scene(harness)
    for name, options in OUT_OF_RANGE:
        with pytest.raises(simcord.OptionError):
            await s.alice.slash(s.channel, name, **options)
    await harness.finish()
    assert all(task.runs == [] for task in harness.tasks.values())
    assert not any("/interactions/" in entry.path for entry in harness.env.http_requests)


@settings(BASE, max_examples=25)
@given(current=FREE_TEXT, option=st.sampled_from(("to", "from")))
async def test_language_autocomplete_answers_any_typing(
    harness: Harness, current: str, option: str
) -> None:
    s = await scene(harness)
    choices = await s.alice.autocomplete(s.channel, "translate", option, current, text="hi")
    assert len(choices) <= 25


# Command line

argv_text = st.one_of(short_text, broken_text, huge_text).map(lambda text: text.replace("\0", ""))
"""Arguments as a shell passes them: no NUL, undecodable bytes as lone surrogates."""
number_arg = st.one_of(
    integers.map(str),
    floats.map(str),
    st.sampled_from(("nan", "-inf", "1e309", "0x10", "1_000", "", "-", " 5 ", "\uff15", "--5")),
)
language_arg = st.sampled_from(KNOWN_LANGUAGES + UNKNOWN_LANGUAGES) | argv_text
PATHS = ("", ".", "/", "/nonexistent/notes.txt", "notes\udcff.txt", "n" * 300)
OUTS = ("x.png", "x.PNG", "x.wav", "x.ogg", "x.jpg", "", "/", "missing/x.png", "\udcff.ogg")


def flags(options: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """Any of ``options`` as ``--flag value`` arguments."""
    return st.fixed_dictionaries({}, optional=options).map(
        lambda chosen: [part for pair in chosen.items() for part in pair]
    )


def command_line(task: str, options: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy:
    """``ask TASK`` arguments: the text (sometimes missing), then any options."""
    return st.tuples(st.just(task), st.lists(argv_text, max_size=1), flags(options))


CLI_ARGS = st.one_of(
    command_line(
        "summarize",
        {
            "--length": st.sampled_from(sorted(LENGTHS)) | argv_text,
            "--min-tokens": number_arg,
            "--max-tokens": number_arg,
            "--file": st.sampled_from(PATHS),
        },
    ),
    command_line("translate", {"--to": language_arg, "--from": language_arg}),
    command_line(
        "imagine",
        {
            "--negative": argv_text,
            "--steps": number_arg,
            "--guidance": number_arg,
            "--seed": number_arg,
            "--size": st.sampled_from(SIZE_TEXTS) | argv_text,
            "--count": number_arg,
            "--out": st.sampled_from(OUTS),
        },
    ),
    command_line(
        "speak",
        {
            "--voice": st.sampled_from(VOICES) | argv_text,
            "--language": language_arg,
            "--out": st.sampled_from(OUTS),
        },
    ),
    command_line("sentiment", {}),
    command_line("classify", {"--labels": argv_text, "--multi-label": st.just("")}),
    command_line(
        "chat",
        {
            "--system": argv_text,
            "--max-tokens": number_arg,
            "--temperature": number_arg,
            "--seed": number_arg,
        },
    ),
)


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_dirs: dict[str, Path]) -> Path:
    """A clean environment in an empty folder, voices from a file; returns an empty model folder.

    Input that passes validation then fails to load that model (exit 1), so no example runs
    a model, and every exit 2 is a refusal made before any model work.
    """
    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BOT_SPEAK__VOICES", str(model_dirs["voices"]))
    monkeypatch.chdir(tmp_path)
    return model_dirs["empty"]


def run_cli(argv: list[str]) -> int:
    """``python -m bot`` in-process; argparse's usage errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        assert isinstance(exit_.code, int)
        return exit_.code


@settings(BASE, max_examples=40)
@given(args=CLI_ARGS)
@example(args=("imagine", ["a cat"], ["--size", "9" * 5000 + "x64"]))  # raised ValueError
@example(args=("chat", ["hi"], ["--temperature", "1", "--seed", str(2**64)]))  # accepted
@example(args=("sentiment", ["good \udcff"], []))  # accepted, then the tokenizer raised
def test_the_command_line_refuses_hostile_arguments_in_one_line(
    no_model: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, list[str], list[str]]
) -> None:
    task, text, options = args
    code = run_cli(["ask", task, *text, *options, "--model", str(no_model), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: ") and line.isprintable()
    # Exit 1 only for accepted input, which went on to the missing model.
    assert code == 2 or (code == 1 and line.startswith("error: could not load model"))


def test_a_huge_file_to_summarize_is_refused_after_a_bounded_read(
    no_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--file`` once read everything (``/dev/zero`` never ended); a sparse file stands in."""
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as file:
        file.truncate(4 * MAX_FILE_BYTES)
    tracemalloc.start()
    try:
        code = run_cli(["ask", "summarize", "--file", str(huge), "--model", str(no_model)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and capsys.readouterr().err == "error: file: is larger than 20 MiB\n"
    assert peak < 2 * MAX_FILE_BYTES


def test_an_output_file_that_cannot_be_written_is_one_line(
    no_model: Path, model_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing folder is refused before the model runs; an unwritable one after it, cleanly.

    Both once ended in a traceback, after the model had run.
    """
    model = ["--model", str(model_dirs["imagine"]), "--device", "cpu", "--steps", "1"]
    assert run_cli(["ask", "imagine", "a cat", "--out", "missing/cat.png", *model]) == 2
    assert capsys.readouterr().err == "error: out: the folder 'missing' does not exist\n"
    assert run_cli(["ask", "imagine", "a cat", "--out", "/proc/cat.png", *model]) == 2
    err = capsys.readouterr().err  # progress bars come first: the model ran
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: cannot write the result: ")
