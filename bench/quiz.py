"""How often the chat model writes a whole quiz (#31): the share of well-formed quizzes over
``--runs`` materials, at the first try and after the one retry the bot makes, with why the
others were refused, without and with constrained generation (the quiz's JSON Schema,
followed by the chat handler through llguidance), side by side in one run.

    python bench/quiz.py --json out.json                     # the tests' tiny chat model, CPU
    python bench/quiz.py --model Qwen/Qwen2.5-0.5B-Instruct --device cuda --json out.json

Each run asks for ``--questions`` questions about its own material: the docstring of one of
the standard library's modules (real English prose, found offline, ``--runs`` of them). The
requests are the bot's own (``bot/quizzes.quiz_request``: greedy first, sampled on the
retry), run by ``ChatTask.run_batch`` in batches of ``--batch``, and parsed by
``bot/quizzes.parse_quiz``, as ``/quiz make`` does.

The tiny model has random weights over a byte-level BPE vocabulary (as Qwen2.5's is): left
free, it never writes a quiz; constrained, it can only write JSON of the quiz's shape, and
what is left to fail is what a schema cannot say (two choices alike) or an answer cut at its
token limit. With the default model (``--model``, on a GPU) the unconstrained share is how
often a small instruction model botches the format by itself.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import importlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.executor import NoContext
from bot.quizzes import (
    MalformedQuiz,
    answer_tokens,
    material_chars,
    parse_quiz,
    quiz_request,
)
from handlers.base import LoadSpec
from handlers.chat import ChatRequest, ChatResult, ChatTask

MIN_MATERIAL = 400
MAX_MATERIAL = 3000


def materials(count: int) -> list[str]:
    """``count`` module docstrings of the standard library, long enough to ask about."""
    found: list[str] = []
    for module in sorted(sys.stdlib_module_names):
        if len(found) == count:
            break
        if module.startswith("_") or module in ("antigravity", "this", "idlelib", "turtle"):
            continue
        try:
            with warnings.catch_warnings():  # deprecated modules say so as they import
                warnings.simplefilter("ignore")
                doc = importlib.import_module(module).__doc__ or ""
        except Exception:  # a module that does not import here
            continue
        if len(doc) >= MIN_MATERIAL and doc not in found:
            found.append(doc[:MAX_MATERIAL])
    if len(found) < count:
        raise SystemExit(f"only {len(found)} module docstrings are long enough")
    return found


def answers(task: ChatTask, model: Any, requests: list[Any], batch: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(requests), batch):
        for answer in task.run_batch(model, requests[start : start + batch], NoContext()):
            if isinstance(answer, concurrent.futures.Future):
                answer = answer.result()
            out.append(answer.text if isinstance(answer, ChatResult) else f"refused: {answer}")
    return out


def verdict(text: str, count: int) -> str | None:
    """None for a whole quiz; else why it is malformed, without its question number."""
    try:
        parse_quiz(text, count)
    except MalformedQuiz as exc:
        why = str(exc)
        return why.split(" ", 2)[2] if why.startswith("question ") else why
    return None


def run(
    task: ChatTask,
    model: Any,
    texts: list[str],
    count: int,
    batch: int,
    constrained: bool,
    answer_tokens: int | None = None,
) -> dict[str, Any]:
    """Quizzes of ``texts`` as /quiz make writes them: a retry for each malformed one."""

    def asked(text: str, attempt: int) -> ChatRequest:
        request = quiz_request(text, count, task.max_new_tokens, attempt)
        if answer_tokens is not None:
            request = dataclasses.replace(request, max_tokens=answer_tokens)
        return request if constrained else dataclasses.replace(request, json_schema=None)

    started = time.perf_counter()
    first_answers = answers(task, model, [asked(t, 0) for t in texts], batch)
    first = [verdict(a, count) for a in first_answers]
    again = [i for i, v in enumerate(first) if v is not None]
    final = list(first)
    retried = answers(task, model, [asked(texts[i], 1) for i in again], batch)
    for i, answer in zip(again, retried, strict=True):
        final[i] = verdict(answer, count)
    return {
        "well_formed_first_try": sum(v is None for v in first),
        "why_malformed_first_try": dict(
            collections.Counter(v for v in first if v is not None).most_common()
        ),
        "well_formed_after_retry": sum(v is None for v in final),
        "why_malformed_after_retry": dict(
            collections.Counter(v for v in final if v is not None).most_common()
        ),
        "seconds": round(time.perf_counter() - started, 1),
        "example_answer": first_answers[0][:300],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a hub id or a directory (default: the tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument(
        "--answer-tokens", type=int,
        help="the answer's token limit (default: the bot's, 120 a question)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    source = args.model
    if source is None:
        from tests.tinymodels import build_chat

        source = str(build_chat(Path("/tmp/bench-quiz-chat"), args.context, byte_level=True))
    task = ChatTask(context_tokens=args.context, continuous="off")
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model = task.load(LoadSpec(source, args.device, dtype))
    room = material_chars(args.context, task.max_new_tokens, args.questions)
    texts = [text[:room] for text in materials(args.runs)]
    report: dict[str, Any] = {
        "model": args.model or "tests/tinymodels.build_chat byte-level BPE (random weights)",
        "device": args.device,
        "runs": args.runs,
        "questions": args.questions,
        "answer_tokens": args.answer_tokens or answer_tokens(task.max_new_tokens, args.questions),
    }
    for mode, constrained in (("unconstrained", False), ("constrained", True)):
        report[mode] = run(task, model, texts, args.questions, args.batch, constrained,
                           args.answer_tokens)  # fmt: skip
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
