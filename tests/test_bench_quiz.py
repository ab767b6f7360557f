"""bench/quiz.py: its materials are distinct real prose, and it counts a quiz as the bot
does (bot/quizzes.parse_quiz), naming why the others were refused."""

from __future__ import annotations

import json

from bench.quiz import materials, verdict

QUESTION = {"question": "What is JSON?", "choices": ["A format", "A fish"], "answer": 0}


def test_materials_are_distinct_module_docs_long_enough_to_ask_about() -> None:
    texts = materials(8)
    assert len(set(texts)) == 8 and all(len(t) >= 400 for t in texts)


def test_a_quiz_is_counted_as_the_bot_counts_it() -> None:
    assert verdict(json.dumps({"questions": [QUESTION] * 2}), 2) is None
    assert (
        verdict(json.dumps({"questions": [QUESTION | {"answer": 5}] * 2}), 2)
        == "has no right choice among its choices"
    )
    assert verdict("I cannot.", 2) == "the answer holds no JSON object"
