"""Quizzes from a study group's material (/quiz): multiple-choice questions written by the
chat model, parsed strictly, kept in SQLite with every member's first answer to each.

The model is asked for a JSON object of questions, and its answer is constrained to that
shape (``quiz_schema``: the chat handler's constrained generation, llguidance locally and
structured output on OpenAI-compatible engines), so a small model writes JSON of the right
shape whatever it says. ``parse_quiz`` still takes it only when every question is whole (a
question, two to five distinct choices, the index or letter of the right one) and there are
as many as were asked, since a schema cannot say that choices differ, and an answer can be
cut at its token limit. The text around the object (a code fence, "Here is your quiz:") is
ignored; anything else wrong makes the quiz malformed, and it is made again once (sampled,
so that the second try differs) and otherwise refused: a half-broken quiz is never posted.

Questions are posted as messages with a button per choice rather than as Discord polls:
a poll cannot say which answer is right, show it to the member who answered, or be scored
when it is answered, and its answers stay anonymous to the bot until it ends.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from bot.markdown import neutralize
from bot.usage import UsageLog
from handlers.chat import ChatRequest

LETTERS = "ABCDE"
MAX_QUESTIONS = 10
"""The most questions in one quiz: each is a message of its own."""
CHOICES = range(2, len(LETTERS) + 1)
MAX_QUESTION_CHARS = 200
MAX_CHOICE_CHARS = 80
TOKENS_PER_QUESTION = 150
"""Room in the answer for one question in JSON: a long question and four choices (a
trained model's are far shorter than the schema's bounds; an answer cut at its limit is
malformed, and written again)."""
ASKED_CHOICES = 4
PROMPT_TOKENS = 300
"""What the instructions around the material take."""
CHARS_PER_TOKEN = 3
"""A cautious guess of a document's characters per token, to size the material."""
RETRY_TEMPERATURE = 0.7

SYSTEM = "You write multiple-choice quizzes for students. You answer with JSON only."
INSTRUCTIONS = """Write {count} multiple-choice questions that test understanding of the \
material below. Each question has four choices, exactly one of them correct, and is \
answered by the material.

Answer with JSON only, in this form:
{{"questions": [{{"question": "...", "choices": ["...", "...", "...", "..."], "answer": 0}}]}}
where "answer" is the index (0 to 3) of the correct choice.

Material:
\"\"\"
{material}
\"\"\""""
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int
    """Index of the right choice."""

    def render(self, number: int, count: int) -> str:
        """The question's message: what members read before they press a letter."""
        lines = [f"**Question {number} of {count}**", neutralize(self.question)]
        lines += [f"**{LETTERS[i]}.** {neutralize(c)}" for i, c in enumerate(self.choices)]
        return "\n".join(lines)

    def verdict(self, choice: int) -> str:
        right = f"**{LETTERS[self.answer]}.** {neutralize(self.choices[self.answer])}"
        return f"✅ Right: {right}" if choice == self.answer else f"❌ The answer is {right}"


class MalformedQuiz(ValueError):
    """The model's answer is not a whole quiz; the message says what is wrong."""


def material_chars(context_tokens: int, max_new_tokens: int, count: int) -> int:
    """How much material a quiz of ``count`` questions can be made from: what the chat
    model's window leaves once the instructions and the questions are set aside."""
    room = context_tokens - answer_tokens(max_new_tokens, count) - PROMPT_TOKENS
    return max(room, 0) * CHARS_PER_TOKEN


def answer_tokens(max_new_tokens: int, count: int) -> int:
    return min(max_new_tokens, TOKENS_PER_QUESTION * count)


def quiz_schema(count: int) -> str:
    """The JSON Schema a quiz of ``count`` questions follows."""
    text = {"type": "string", "minLength": 1}
    question = {
        "type": "object",
        "properties": {
            "question": text | {"maxLength": MAX_QUESTION_CHARS},
            "choices": {
                "type": "array",
                "items": text | {"maxLength": MAX_CHOICE_CHARS},
                "minItems": ASKED_CHOICES,
                "maxItems": ASKED_CHOICES,
            },
            "answer": {"type": "integer", "minimum": 0, "maximum": ASKED_CHOICES - 1},
        },
        "required": ["question", "choices", "answer"],
        "additionalProperties": False,
    }
    questions = {"type": "array", "items": question, "minItems": count, "maxItems": count}
    return json.dumps({
        "type": "object",
        "properties": {"questions": questions},
        "required": ["questions"],
        "additionalProperties": False,
    })  # fmt: skip


def quiz_request(material: str, count: int, max_new_tokens: int, attempt: int = 0) -> ChatRequest:
    """The chat request for a quiz: greedy first, sampled on the retry."""
    return ChatRequest(
        INSTRUCTIONS.format(count=count, material=material.strip()),
        system=SYSTEM,
        max_tokens=answer_tokens(max_new_tokens, count),
        temperature=RETRY_TEMPERATURE if attempt else 0.0,
        seed=attempt,
        json_schema=quiz_schema(count),
    )


def parse_quiz(text: str, count: int) -> list[Question]:
    """The first ``count`` questions of the model's answer; ``MalformedQuiz`` unless they
    are all whole."""
    body = _FENCE.sub("", text)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise MalformedQuiz("the answer holds no JSON object")
    try:
        quiz = json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        raise MalformedQuiz(f"the answer is not valid JSON ({exc.msg})") from None
    items = quiz.get("questions") if isinstance(quiz, dict) else None
    if not isinstance(items, list):
        raise MalformedQuiz('the answer holds no list of "questions"')
    if len(items) < count:
        raise MalformedQuiz(f"{len(items)} question(s) of the {count} asked")
    return [_question(item, number) for number, item in enumerate(items[:count], 1)]


def _question(item: Any, number: int) -> Question:
    def wrong(why: str) -> MalformedQuiz:
        return MalformedQuiz(f"question {number} {why}")

    if not isinstance(item, dict):
        raise wrong("is not an object")
    question, choices, answer = item.get("question"), item.get("choices"), item.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise wrong("has no question")
    if len(question) > MAX_QUESTION_CHARS:
        raise wrong(f"is over {MAX_QUESTION_CHARS} characters")
    if not isinstance(choices, list) or len(choices) not in CHOICES:
        raise wrong(f"needs {CHOICES.start} to {CHOICES.stop - 1} choices")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise wrong("has an empty choice")
    kept = tuple(c.strip() for c in choices)
    if any(len(c) > MAX_CHOICE_CHARS for c in kept):
        raise wrong(f"has a choice over {MAX_CHOICE_CHARS} characters")
    if len({c.casefold() for c in kept}) != len(kept):
        raise wrong("repeats a choice")
    if isinstance(answer, str) and len(answer.strip()) == 1:
        answer = LETTERS.find(answer.strip().upper())
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(kept):
        raise wrong("has no right choice among its choices")
    return Question(question.strip(), kept, answer)


@dataclass(frozen=True)
class Score:
    user_id: str
    correct: int
    answered: int


class QuizStore:
    """Quizzes and their answers, in the usage database."""

    def __init__(self, usage: UsageLog) -> None:
        self.usage = usage

    async def put(
        self,
        guild_id: int,
        channel_id: int | None,
        created_by: str,
        questions: list[Question],
    ) -> str:
        """Keep a quiz; its id, which its buttons carry."""
        quiz_id = uuid.uuid4().hex
        stored = [
            {"question": q.question, "choices": list(q.choices), "answer": q.answer}
            for q in questions
        ]
        await self.usage.write_now(
            "INSERT INTO quizzes (id, guild_id, channel_id, created_by, created_at, questions) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (quiz_id, guild_id, channel_id, created_by, self.usage.clock(),
             json.dumps(stored, ensure_ascii=False)),
        )  # fmt: skip
        return quiz_id

    async def question(self, quiz_id: str, index: int) -> tuple[int, Question] | None:
        """The quiz's server and its question ``index``; None when either is not kept."""
        rows = await self.usage.query(
            "SELECT guild_id, questions FROM quizzes WHERE id = ?", (quiz_id,)
        )
        if not rows:
            return None
        questions = json.loads(rows[0]["questions"])
        if not 0 <= index < len(questions):
            return None
        item = questions[index]
        return rows[0]["guild_id"], Question(item["question"], tuple(item["choices"]),
                                             item["answer"])  # fmt: skip

    async def answer(
        self, quiz_id: str, index: int, user_id: str, guild_id: int, choice: int, correct: bool
    ) -> int:
        """Keep a member's answer unless they answered already: the choice that counts."""
        await self.usage.write_now(
            "INSERT OR IGNORE INTO quiz_answers (quiz_id, question, user_id, guild_id, choice, "
            "correct, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (quiz_id, index, user_id, guild_id, choice, int(correct), self.usage.clock()),
        )
        rows = await self.usage.query(
            "SELECT choice FROM quiz_answers WHERE quiz_id = ? AND question = ? AND user_id = ?",
            (quiz_id, index, user_id),
        )
        return int(rows[0]["choice"])

    async def scores(self, guild_id: int, limit: int = 10) -> list[Score]:
        """The server's best: most right answers, then fewest answers."""
        rows = await self.usage.query(
            "SELECT user_id, SUM(correct) AS correct, COUNT(*) AS answered FROM quiz_answers "
            "WHERE guild_id = ? GROUP BY user_id ORDER BY correct DESC, answered ASC, user_id "
            "LIMIT ?",
            (guild_id, limit),
        )
        return [Score(r["user_id"], int(r["correct"]), int(r["answered"])) for r in rows]

    async def score(self, guild_id: int, user_id: str) -> Score:
        rows = await self.usage.query(
            "SELECT COALESCE(SUM(correct), 0) AS correct, COUNT(*) AS answered "
            "FROM quiz_answers WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return Score(user_id, int(rows[0]["correct"]), int(rows[0]["answered"]))
