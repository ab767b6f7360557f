"""handlers/text.py's splitter against semantic-text-splitter (#34), side by side in one run,
on 100,000 characters of mixed text, with a byte-level BPE and a SentencePiece tokenizer:

    pip install semantic-text-splitter   # for this comparison only; the bot does not use it
    python bench/splitter.py [--chars 100000] [--budget 256] [--json out.json]

The text is made up, seeded, of what members send: English prose (the standard library's
docstrings), Japanese with and without sentence marks, URLs, inline code and fenced code
blocks, emoji (ZWJ families, skin tones, flags, keycaps), whitespace runs and long runs of
letters without a space. Each splitter cuts it into pieces of at most ``--budget`` tokens,
measured by the same tokenizer: ours and the library's ``from_callback`` call Python for
every size they measure; the library's ``from_huggingface_tokenizer`` measures in Rust (a
fast tokenizer only: SentencePiece models such as Marian's are slow ones, so it has no such
row). Reported per splitter: seconds, pieces, how full pieces are (tokens / budget), the
pieces over budget, whether the pieces join back into the text, and where each cut falls:
after a paragraph, a line, a sentence, a clause, a space, or inside a word, a URL or code.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import itertools
import json
import random
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sentencepiece

from handlers import text as ours
from tests.tinymodels import byte_level_chat_tokenizer, train_sentencepiece

JAPANESE = (
    "日本語の文章を句読点なしで書くとどこで切るか分からない", "今日は図書館で勉強しました。",
    "明日の試験は金曜日です\uff01", "ノートを持ってきてください。",
)  # fmt: skip
EMOJI = ("\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", "\U0001f44d\U0001f3fd",
         "\U0001f1eb\U0001f1f7", "1\ufe0f\u20e3", "\u2b50", "\U0001f600")  # fmt: skip


def prose() -> list[str]:
    paragraphs = []
    for module in ("json", "re", "asyncio", "argparse", "logging", "pathlib", "typing", "csv"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            doc = importlib.import_module(module).__doc__ or ""
        paragraphs += [p.strip() for p in doc.split("\n\n") if len(p.strip()) > 80]
    return paragraphs


def mixed_text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    paragraphs = prose()
    parts: list[str] = []
    while sum(map(len, parts)) < chars:
        kind = rng.choice(["prose", "prose", "prose", "japanese", "url", "code", "fence",
                           "emoji", "run", "space"])  # fmt: skip
        if kind == "prose":
            parts.append(rng.choice(paragraphs) + rng.choice(["\n\n", " ", "\n"]))
        elif kind == "japanese":
            parts.append("".join(rng.choice(JAPANESE) for _ in range(rng.randint(3, 30))) + "\n")
        elif kind == "url":
            path = "/".join(f"part{rng.randint(0, 999)}" for _ in range(rng.randint(1, 40)))
            parts.append(f"see https://docs.example.com/{path}?q={rng.randint(0, 9)} for it. ")
        elif kind == "code":
            parts.append(f"run `python -m bot ask summarize --file notes{rng.randint(0, 9)}.pdf` ")
        elif kind == "fence":
            lines = [f"value_{k} = compute({k}, scale=0.{k}); print(value_{k})" for k in range(
                rng.randint(2, 30))]  # fmt: skip
            parts.append("```python\n" + "\n".join(lines) + "\n```\n")
        elif kind == "emoji":
            parts.append(" ".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 20))) + " ")
        elif kind == "run":
            parts.append("a" * rng.randint(100, 3000) + " ")
        else:
            parts.append(rng.choice([" " * rng.randint(2, 400), "\n" * rng.randint(2, 20)]))
    return "".join(parts)[:chars]


def classify_cuts(text: str, cuts: list[int]) -> dict[str, int]:
    """Where each cut falls, by the best boundary it is at."""
    atoms = [m.span() for m in ours._ATOMS.finditer(text)]
    fences = [m.span() for m in ours._FENCES.finditer(text)]
    sentence_ends = {m.end() for m in ours.SENTENCE.finditer(text)}
    clause_ends = {m.end() for m in ours.CLAUSE.finditer(text)}
    counts: collections.Counter[str] = collections.Counter()
    for cut in cuts:
        before = text[:cut]
        if any(a < cut < b for a, b in atoms):
            counts["inside a URL or inline code"] += 1
        elif any(a < cut < b for a, b in fences) and not before.endswith("\n"):
            counts["inside a code line"] += 1
        elif re.search(r"\n[ \t]*\n\s*$", before):
            counts["paragraph"] += 1
        elif re.search(r"\n\s*$", before):
            counts["line"] += 1
        elif cut in sentence_ends:
            counts["sentence"] += 1
        elif cut in clause_ends:
            counts["clause"] += 1
        elif before[-1:].isspace() or text[cut : cut + 1].isspace():
            counts["space"] += 1
        else:
            counts["inside a word"] += 1
    return dict(counts.most_common())


def measure(
    name: str, split: Callable[[], list[str]], text: str, size: Callable[[str], int], budget: int
) -> dict[str, Any]:
    started = time.perf_counter()
    pieces = split()
    seconds = time.perf_counter() - started
    sizes = [size(piece) for piece in pieces]
    ends = list(itertools.accumulate(len(p) for p in pieces))[:-1]
    return {
        "splitter": name,
        "seconds": round(seconds, 3),
        "pieces": len(pieces),
        "fill_mean": round(statistics.mean(sizes) / budget, 3),
        "fill_median": round(statistics.median(sizes) / budget, 3),
        "over_budget": sum(s > budget for s in sizes),
        "joins_back": "".join(pieces) == text,
        "cuts": classify_cuts(text, ends),
    }


def splitters(
    text: str, size: Callable[[str], int], fast: Any, budget: int
) -> dict[str, Callable[[], list[str]]]:
    from semantic_text_splitter import TextSplitter

    candidates = {
        "ours (handlers/text.py)": lambda: ours.split_to_fit(text, size, budget),
        "semantic-text-splitter, from_callback": lambda: TextSplitter.from_callback(
            size, budget, trim=False
        ).chunks(text),
    }
    if fast is not None:
        candidates["semantic-text-splitter, from_huggingface_tokenizer"] = lambda: (
            TextSplitter.from_huggingface_tokenizer(fast, budget, trim=False).chunks(text)
        )
    return candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    text = mixed_text(args.chars)
    bpe = byte_level_chat_tokenizer(vocab_size=2000)
    spm = sentencepiece.SentencePieceProcessor(model_proto=train_sentencepiece(vocab_size=400))
    tokenizers: dict[str, tuple[Callable[[str], int], Any]] = {
        "byte-level BPE": (
            lambda t: len(bpe(t, add_special_tokens=False)["input_ids"]), bpe.backend_tokenizer,
        ),
        "SentencePiece": (lambda t: len(spm.encode(t)), None),
    }  # fmt: skip
    rows = []
    for tokenizer, (size, fast) in tokenizers.items():
        budget = args.budget
        candidates = splitters(text, size, fast, budget)
        for name, split in candidates.items():
            row = {"tokenizer": tokenizer, **measure(name, split, text, size, budget)}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    report = {"chars": len(text), "budget": args.budget, "rows": rows}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
