"""Translation with tiny real M2M100 and Marian models, built offline and loaded by path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry
from handlers.base import BatchStopped, HandlerError, InvalidInput, LoadSpec
from handlers.languages import (
    LANGUAGES,
    detect_language,
    guess_language,
    resolve_language,
    search_languages,
)
from handlers.translate import (
    TranslateModel,
    TranslateRequest,
    TranslateResult,
    TranslateTask,
)
from tests.tinymodels import MAX_LENGTH, build_classifier, build_m2m100, build_marian

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ENGLISH = "The study group meets every week to review the notes and ask questions."
GERMAN = "Die Gruppe trifft sich jede Woche, um die Notizen zu lesen und Fragen zu stellen."
SPANISH = "El grupo se reúne cada semana para repasar los apuntes y hacer preguntas."


class Context:
    """A batch context whose stop signal the test sets; it records nothing else."""

    def __init__(self, stop: bool = False) -> None:
        self.stop = stop

    def should_stop(self) -> bool:
        return self.stop

    def progress(self, step: int, total: int) -> None:
        pass

    def partial(self, index: int, data: Any) -> None:
        pass


@pytest.fixture(scope="session")
def m2m_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_m2m100(tmp_path_factory.mktemp("m2m100"))


@pytest.fixture(scope="session")
def marian_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_marian(tmp_path_factory.mktemp("marian"))


@pytest.fixture(scope="session")
def m2m(m2m_dir: Path) -> TranslateModel:
    return TranslateTask().load(LoadSpec(str(m2m_dir), "cpu", torch.float32))


@pytest.fixture(scope="session")
def marian(marian_dir: Path) -> TranslateModel:
    return TranslateTask().load(LoadSpec(str(marian_dir), "cpu", torch.float32))


def translate(
    model: TranslateModel, requests: list[TranslateRequest], task: TranslateTask | None = None
) -> list[TranslateResult]:
    task = task or TranslateTask()
    for request in requests:
        task.validate(request)
    return task.run_batch(model, requests, Context())


def spy_generate(model: TranslateModel, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every ``generate`` call's arguments and output ids while still running it."""
    calls: list[dict[str, Any]] = []
    real = model.model.generate

    def generate(**kwargs: Any) -> torch.Tensor:
        output = real(**kwargs)
        calls.append({**kwargs, "output": output})
        return output

    monkeypatch.setattr(model.model, "generate", generate)
    return calls


def test_m2m100_translates_with_the_pair_language_tokens(
    m2m: TranslateModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_generate(m2m, monkeypatch)
    (result,) = translate(m2m, [TranslateRequest(ENGLISH, "French", "English")])
    assert result.source == "en" and result.target == "fr"
    assert result.text.strip() and "__" not in result.text, result.text
    (call,) = calls
    fr, en = m2m.tokenizer.get_lang_id("fr"), m2m.tokenizer.get_lang_id("en")
    assert call["forced_bos_token_id"] == fr
    assert call["input_ids"][0, 0].item() == en
    assert call["output"][0, 1].item() == fr  # the forced token, dropped from the text


@pytest.mark.parametrize("family", ["m2m", "marian"])
def test_a_batch_matches_one_at_a_time(family: str, request: pytest.FixtureRequest) -> None:
    model: TranslateModel = request.getfixturevalue(family)
    texts = [ENGLISH, "Questions.", "We read about rivers and mountains.", ENGLISH[:30]]
    requests = [TranslateRequest(text, "de", "en") for text in texts]
    batched = translate(model, requests)
    alone = [translate(model, [r])[0] for r in requests]
    assert batched == alone
    assert len({r.text for r in batched}) > 1, "outputs should depend on the input"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("French", "fr"),
        ("fr", "fr"),
        ("FRENCH", "fr"),
        ("  french ", "fr"),
        ("pt-BR", "pt"),
        ("zh-CN", "zh"),
        ("en_US", "en"),
        ("chinese", "zh"),
        ("farsi", "fa"),
        ("norwegian", "no"),
        ("nb", "no"),
        ("Español", "es"),
        ("espanol", "es"),
        ("ceb", "ceb"),
    ],
)
def test_names_codes_and_aliases_resolve(query: str, code: str) -> None:
    assert resolve_language(query) == code


def test_the_table_is_m2m100s_hundred_languages() -> None:
    assert sorted(LANGUAGES) == sorted(FAIRSEQ_LANGUAGE_CODES["m2m100"])
    assert len(set(LANGUAGES.values())) == 100


def test_unknown_language_lists_close_matches() -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve_language("Frnch", "target")
    assert caught.value.option == "target"
    assert "unknown language 'Frnch'; did you mean: French (fr)" in caught.value.message
    with pytest.raises(InvalidInput, match="unknown language 'qqq'"):
        resolve_language("qqq")


def test_search_offers_at_most_25_choices_best_first() -> None:
    assert len(search_languages("")) == 25
    assert search_languages("fr")[0].code == "fr"
    assert search_languages("ger")[0].code == "de"
    assert search_languages("farsi")[0].code == "fa"
    assert [lang.code for lang in search_languages("port")] == ["pt"]
    assert len(search_languages("a", limit=3)) == 3


def test_auto_detection_picks_the_pair_and_batch_key_groups_by_it() -> None:
    task = TranslateTask()
    requests = [
        TranslateRequest(ENGLISH, "fr"),
        TranslateRequest(GERMAN, "fr"),
        TranslateRequest(SPANISH, "fr"),
        TranslateRequest("We read about the history of the old city.", "French"),
        TranslateRequest(GERMAN, "fr", "German"),
    ]
    for request in requests:
        task.validate(request)
    keys = [task.batch_key(r) for r in requests]
    assert [key[:2] for key in keys] == [
        ("en", "fr"), ("de", "fr"), ("es", "fr"), ("en", "fr"), ("de", "fr")
    ]  # fmt: skip
    assert not any(guessed for *_, guessed in keys)  # each clear from the text
    assert detect_language("<@123> https://example.com 12345 :)") is None


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Guten Morgen", "de"),
        ("Vielen Dank", "de"),
        ("Pas de problème", "fr"),
        ("Hasta luego", "es"),
        ("Boa noite", "pt"),
        ("Non lo so", "it"),
        ("Доброе утро", "ru"),
        ("Как дела?", "ru"),
        ("Welkom terug", "nl"),
        ("Do jutra", "pl"),
        ("おはようございます", "ja"),
        ("GUTEN MORGEN", "de"),
    ],
)
def test_two_or_three_words_are_enough_to_detect_a_common_language(text: str, code: str) -> None:
    # py3langid, the previous detector, left all but the Japanese undecided or wrong.
    assert detect_language(text) == code


@pytest.mark.parametrize(
    "text",
    [
        "Hallo",  # fastText knows no word of it: its fallback scores never decide
        "asdf qwer",
        "Mi estas studento kaj mi loĝas en Parizo.",  # Esperanto: M2M100 does not offer it
    ],
)
def test_unknown_words_and_unserved_languages_stay_undecided(text: str) -> None:
    assert detect_language(text) is None


def test_lone_surrogates_do_not_break_detection() -> None:
    # fastText only takes valid UTF-8; validation refuses such text, but callers may not.
    assert detect_language("\ud800 Guten Morgen \udfff") == "de"


def test_pair_models_route_a_known_pair_to_its_model() -> None:
    task = TranslateTask(pair_models={"en-de": "opus-en-de", "French-English": "opus-fr-en"})
    assert task.model_for(TranslateRequest(ENGLISH, "de"), "m2m") == "opus-en-de"
    assert task.model_for(TranslateRequest(ENGLISH, "German", "en-GB"), "m2m") == "opus-en-de"
    assert task.model_for(TranslateRequest("Bonjour", "en", "fr"), "m2m") == "opus-fr-en"
    assert task.model_for(TranslateRequest(ENGLISH, "fr"), "m2m") == "m2m"
    assert task.model_for(TranslateRequest(GERMAN, "en"), "m2m") == "m2m"
    with pytest.raises(ValueError, match="look like 'en-fr'"):
        TranslateTask(pair_models={"en": "x"})
    with pytest.raises(ValueError, match="Klingon"):
        TranslateTask(pair_models={"en-Klingon": "x"})


async def test_executor_batches_by_pair_and_routes_pairs_to_marian(
    m2m_dir: Path, marian_dir: Path, m2m: TranslateModel, marian: TranslateModel
) -> None:
    task = TranslateTask(pair_models={"en-de": str(marian_dir)})
    requests = [
        *(TranslateRequest(f"{ENGLISH[: 20 + 9 * i]}.", "fr") for i in range(3)),
        *(TranslateRequest(f"{GERMAN[: 40 + 9 * i]}.", "fr") for i in range(3)),
        *(TranslateRequest(f"{ENGLISH[: 25 + 9 * i]}.", "de") for i in range(2)),
    ]
    executor = Executor(
        {"translate": task},
        {"translate": str(m2m_dir)},
        LocalBackend(ModelRegistry(device="cpu")),
        ExecutorConfig(max_per_user=64),
    )
    async with executor:
        handles = [executor.submit("translate", r, user_id=i) for i, r in enumerate(requests)]
        results = await asyncio.gather(*handles)
        snapshot = executor.snapshot()
    assert [(r.source, r.target) for r in results] == [("en", "fr")] * 3 + [("de", "fr")] * 3 + [
        ("en", "de")
    ] * 2
    groups = [(m2m, requests[:3]), (m2m, requests[3:6]), (marian, requests[6:])]
    assert results == [result for model, group in groups for result in translate(model, group)]
    batches = {stats.model: stats.batch_sizes for stats in snapshot.models}
    assert batches == {str(m2m_dir): {3: 2}, str(marian_dir): {2: 1}}


def test_long_input_is_split_within_the_model_limit_and_nothing_is_lost(
    m2m: TranslateModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentences = [f"{ENGLISH} {SPANISH[:20]}", "We read about rivers.", GERMAN, "We ask questions."]
    text = " ".join(sentences) + "\n\n" + "notes " * 40
    assert len(m2m.tokenizer(text).input_ids) > 3 * MAX_LENGTH
    calls = spy_generate(m2m, monkeypatch)
    (result,) = translate(m2m, [TranslateRequest(text, "fr", "en")])
    (call,) = calls
    assert call["input_ids"].shape[1] <= MAX_LENGTH

    # The source language token is not registered as special; drop it by id to read the pieces.
    en = m2m.tokenizer.get_lang_id("en")
    rows = [[t for t in row if t != en] for row in call["input_ids"].tolist()]
    pieces = [m2m.tokenizer.decode(row, skip_special_tokens=True) for row in rows]
    assert " ".join(pieces).split() == text.split(), "every word is sent exactly once, in order"
    first, blank, second = result.text.split("\n")
    assert blank == ""
    separately = translate(m2m, [TranslateRequest(piece, "fr", "en") for piece in pieces])
    assert " ".join(r.text for r in separately) == f"{first} {second}"


@pytest.mark.parametrize(
    ("request_", "option", "match"),
    [
        (TranslateRequest("   ", "fr"), "text", "is empty"),
        (TranslateRequest("a" * 2001, "fr", "en"), "text", "2001 characters"),
        (TranslateRequest(ENGLISH, "Frnch"), "target", "did you mean: French"),
        (TranslateRequest(ENGLISH, "auto"), "target", "cannot be auto"),
        (TranslateRequest(ENGLISH, "fr", "Englsh"), "source", "did you mean: English"),
        (TranslateRequest(ENGLISH, "en"), "target", "already in English \\(detected\\)"),
        (TranslateRequest(ENGLISH, "en-US", "English"), "target", "already in English;"),
        (TranslateRequest("12345 :) https://example.com", "fr"), "source", "detect"),
    ],
)
def test_bad_requests_name_the_offending_option(
    request_: TranslateRequest, option: str, match: str
) -> None:
    with pytest.raises(InvalidInput, match=match) as caught:
        TranslateTask().validate(request_)
    assert caught.value.option == option


def test_a_model_that_does_not_translate_is_refused_at_load(tmp_path: Path) -> None:
    classifier = build_classifier(tmp_path / "classifier")
    with pytest.raises(HandlerError, match="'distilbert' model; translation supports"):
        TranslateTask().load(LoadSpec(str(classifier), "cpu", torch.float32))


def test_an_abandoned_batch_stops(marian: TranslateModel) -> None:
    with pytest.raises(BatchStopped):
        TranslateTask().run_batch(marian, [TranslateRequest(ENGLISH, "de", "en")], Context(True))


# Short texts (#33): a language guessed, and said to be


SHORT_PHRASES = {
    "en": ["Hello world", "Good morning everyone", "See you tomorrow", "Thank you so much",
           "How are you", "Hello AI world", "Nice to meet you", "What time is it",
           "Happy birthday", "Good night"],
    "fr": ["Bonjour tout le monde", "Merci beaucoup", "À demain", "Comment ça va", "Bonne nuit",
           "Je suis fatigué", "Quelle heure est-il", "Bon anniversaire", "Salut les amis",
           "Enchanté de vous rencontrer"],
    "de": ["Guten Morgen", "Vielen Dank", "Bis morgen", "Wie geht es dir", "Gute Nacht",
           "Ich bin müde", "Wie spät ist es", "Alles Gute zum Geburtstag", "Hallo zusammen",
           "Schönen Tag noch"],
    "es": ["Hola a todos", "Muchas gracias", "Hasta mañana", "¿Cómo estás?", "Buenas noches",
           "Estoy cansado", "¿Qué hora es?", "Feliz cumpleaños", "Buenos días", "Mucho gusto"],
    "it": ["Ciao a tutti", "Grazie mille", "A domani", "Come stai", "Buona notte", "Sono stanco",
           "Che ore sono", "Buon compleanno", "Buongiorno a tutti", "Piacere di conoscerti"],
    "pt": ["Olá a todos", "Muito obrigado", "Até amanhã", "Como você está", "Boa noite",
           "Estou cansado", "Que horas são", "Feliz aniversário", "Bom dia",
           "Prazer em conhecê-lo"],
    "nl": ["Hallo allemaal", "Dank je wel", "Tot morgen", "Hoe gaat het", "Goede nacht",
           "Ik ben moe", "Hoe laat is het", "Gefeliciteerd met je verjaardag",
           "Goedemorgen iedereen", "Leuk je te ontmoeten"],
    "ru": ["Привет всем", "Большое спасибо", "До завтра", "Как дела", "Спокойной ночи", "Я устал",
           "Который час", "С днём рождения", "Доброе утро",  # noqa: RUF001 - Cyrillic
           "Приятно познакомиться"],
    "ja": ["おはようございます", "ありがとうございます", "また明日", "お元気ですか",
           "おやすみなさい", "疲れました", "今何時ですか", "お誕生日おめでとう",
           "こんにちは皆さん", "はじめまして"],
    "pl": ["Cześć wszystkim", "Dziękuję bardzo", "Do jutra", "Jak się masz", "Dobranoc",
           "Jestem zmęczony", "Która godzina", "Wszystkiego najlepszego", "Dzień dobry",
           "Miło cię poznać"],
}  # fmt: skip
"""Two to four words in ten languages, greetings included: the set guess_language's
docstring gives its figures on."""


def tally(decide: Callable[[str, str], str | None]) -> tuple[int, list[tuple[str, str]]]:
    """(undecided, the phrases decided wrongly with what they were taken for)."""
    undecided, wrong = 0, []
    for language, phrases in SHORT_PHRASES.items():
        for phrase in phrases:
            found = decide(phrase, language)
            if found is None:
                undecided += 1
            elif found != language:
                wrong.append((phrase, found))
    return undecided, wrong


def test_short_phrases_are_guessed_more_often_and_never_wrongly_without_a_hint() -> None:
    """The figures in guess_language's docstring, measured again."""
    assert tally(lambda text, own: detect_language(text)) == (10, [])
    assert tally(lambda text, own: guess_language(text).code) == (7, [])
    assert tally(lambda text, own: guess_language(text, own).code) == (4, [])
    english = tally(lambda text, own: guess_language(text, "en").code)
    assert english == (4, [("Bonne nuit", "en"), ("Bom dia", "en")])


def test_hello_world_is_translated_and_the_source_said_to_be_guessed() -> None:
    task = TranslateTask()
    request = TranslateRequest("Hello world", "fr")
    task.validate(request)
    assert task.pair(request) == ("en", "fr", True)
    hinted = TranslateRequest("Hello world", "fr", hint="en-GB")
    assert task.pair(hinted) == ("en", "fr", True)
    assert task.pair(TranslateRequest("Guten Morgen", "fr", hint="en")) == ("de", "fr", False)
    with pytest.raises(InvalidInput, match="could not detect the language"):
        task.validate(TranslateRequest("Tot morgen", "fr", hint="en"))  # no guess at all
    # A hint that is the target says nothing of the text: not "already in German (guessed)".
    assert guess_language("Bonne nuit", "de").code == "de"  # German is among its likeliest
    with pytest.raises(InvalidInput, match="could not detect the language"):
        task.validate(TranslateRequest("Bonne nuit", "German", hint="de"))


def test_a_guessed_source_is_said_in_the_reply() -> None:
    from bot.commands import render

    assert render(TranslateResult("Bonjour", "en", "fr", True)).note == (
        "-# en → fr · from English, guessed: if wrong, use /translate with from:"
    )
    assert render(TranslateResult("Bonjour", "en", "fr")).note == "-# en → fr"
