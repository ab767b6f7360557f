"""Every ``python -m bot`` command in the fenced blocks of README.md and of the pages in
``docs/`` runs as printed.

The commands are read from the pages themselves, so the test follows them: a command added there
is run here, and fails the test until it works or is named in ``NOT_RUN`` with its reason.
Each runs in a fresh process, in its own folder, against the tiny offline models, with the
optional ``[...]`` parts left out and each ``a | b`` alternative run in turn.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import soundfile
from PIL import Image

from bot.cli import build_parser
from tests import tinymodels

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
PREFIX = ("python", "-m", "bot")
_COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*python -m bot\b")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
STDIN = "What should we review before the exam?\n"
"""What ``chat`` (a conversation on stdin) reads: one turn, then the end of input."""


@dataclass(frozen=True)
class Example:
    """One runnable reading of a README line."""

    env: dict[str, str]
    """Variables the line sets before ``python -m bot``."""
    argv: tuple[str, ...]
    """Arguments after ``python -m bot``, without the optional parts."""
    stdout_to: str | None
    """The file a ``> FILE`` redirect sends the output to."""
    optional_flags: tuple[str, ...]
    """Options shown in ``[...]``: not run, but they must exist."""

    @property
    def shown(self) -> str:
        assignments = [f"{name}={value}" for name, value in self.env.items()]
        return shlex.join([*assignments, *PREFIX, *self.argv])


def examples_in(line: str) -> list[Example]:
    """The commands a README line documents: ``[...]`` dropped, one per ``a | b``."""
    tokens = shlex.split(line, comments=True)
    env: dict[str, str] = {}
    while "=" in tokens[0]:
        name, value = tokens.pop(0).split("=", 1)
        env[name] = value
    assert tuple(tokens[: len(PREFIX)]) == PREFIX, line
    words: list[str] = []
    optional: list[str] = []
    stdout_to = None
    alternatives: list[str] = []
    depth = 0
    rest = iter(tokens[len(PREFIX) :])
    for token in rest:
        if token.startswith("["):
            depth += 1
        if depth:
            optional.extend(part for part in token.strip("[]").split("|") if part.startswith("--"))
            depth -= token.endswith("]")
        elif token == ">":
            stdout_to = next(rest)
        elif token == "|":
            alternatives.append(next(rest))
        else:
            words.append(token)
    argvs = [words] + [[*words[:-1], alternative] for alternative in alternatives]
    return [Example(env, tuple(argv), stdout_to, tuple(optional)) for argv in argvs]


def readme_examples(text: str) -> list[Example]:
    """Every ``python -m bot`` line of every fenced block, as examples."""
    return [
        example
        for block in _FENCE.findall(text)
        for line in block.splitlines()
        if _COMMAND.match(line.strip())
        for example in examples_in(line)
    ]


class Refusal(NamedTuple):
    """Why a command is not run to success, and the failure it must show instead."""

    reason: str
    exit_code: int
    stderr: str


NEEDS_DISCORD = Refusal(
    "serves Discord (or registers its commands): it needs a real bot token and the network, "
    "which tests never have; without a token it must say so at once, in one line",
    2,
    "error: DISCORD_TOKEN is not set; put your bot's token in .env (README: Discord setup)",
)
NOT_RUN: dict[str, Refusal] = {
    "python -m bot run": NEEDS_DISCORD,
    "python -m bot sync": NEEDS_DISCORD,
    "HF_HUB_OFFLINE=1 python -m bot run": NEEDS_DISCORD,
    "BOT_BACKEND=ray python -m bot run": NEEDS_DISCORD,
}
"""Commands as printed (optional parts dropped) that are checked for their refusal instead."""


def documented_examples() -> list[Example]:
    """The examples of every page, each command once."""
    found: dict[str, Example] = {}
    for page in PAGES:
        for example in readme_examples(page.read_text(encoding="utf-8")):
            found.setdefault(example.shown, example)
    return list(found.values())


EXAMPLES = documented_examples()


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory: pytest.TempPathFactory, tiny_chat: Path) -> dict[str, str]:
    """An environment where every configured model, voice table and vocoder is a tiny local
    one and nothing reaches the hub or Discord. The tiny chat model's window is 256 tokens,
    all of which the default answer length (256) would take, so answers default to 16."""
    root = tmp_path_factory.mktemp("readme-models")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BOT_", "HF_", "TRANSFORMERS_", "DISCORD_"))
    }
    return env | {
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "BOT_DEVICE": "cpu",
        "BOT_CHAT__DEFAULT_NEW_TOKENS": "16",
        "BOT_MODELS__SUMMARIZE": str(tinymodels.build_summarizer(root / "summarize")),
        "BOT_MODELS__TRANSLATE": str(tinymodels.build_m2m100(root / "translate")),
        "BOT_MODELS__IMAGINE": str(tinymodels.build_pipeline(root / "imagine")),
        "BOT_MODELS__SPEAK": str(tinymodels.build_speecht5(root / "speak")),
        "BOT_MODELS__SENTIMENT": str(tinymodels.build_classifier(root / "sentiment")),
        "BOT_MODELS__CLASSIFY": str(tinymodels.build_nli(root / "classify")),
        "BOT_MODELS__CHAT": str(tiny_chat),
        "BOT_MODELS__TRANSCRIBE": str(tinymodels.build_whisper(root / "transcribe")),
        "BOT_MODELS__DESCRIBE": str(tinymodels.build_vision(root / "describe")),
        "BOT_MODELS__UPSCALE": str(tinymodels.build_upscaler(root / "upscale")),
        "BOT_SPEAK__VOCODER": str(tinymodels.build_hifigan(root / "vocoder")),
        "BOT_SPEAK__VOICES": str(tinymodels.build_voices_npy(root / "voices.npy")),
        "BOT_IMAGINE__PREVIEW_MODEL": str(tinymodels.build_taesd(root / "taesd")),
    }


def run(example: Example, env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    """``example`` in a fresh process started in ``folder``, its redirect honoured."""
    with contextlib.ExitStack() as stack:
        stdout = (
            stack.enter_context((folder / example.stdout_to).open("w", encoding="utf-8"))
            if example.stdout_to
            else subprocess.PIPE
        )
        return subprocess.run(
            [sys.executable, "-m", "bot", *example.argv],
            cwd=folder, env=env | {"BOT_DATA_DIR": str(folder / "data"), **example.env},
            input=STDIN, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.shown for e in EXAMPLES])
def test_the_readme_command_runs(
    example: Example, tiny_env: dict[str, str], tmp_path: Path
) -> None:
    lecture = 0.3 * np.sin(np.arange(32_000) * 0.1).astype(np.float32)  # `ask transcribe` hears it
    soundfile.write(tmp_path / "lecture.ogg", lecture, 16_000, format="OGG", subtype="OPUS")
    Image.new("RGB", (96, 64), "teal").save(tmp_path / "whiteboard.png")  # `ask describe` sees it
    Image.new("RGB", (48, 32), "teal").save(tmp_path / "sketch.png")  # `ask upscale` enlarges it
    done = run(example, tiny_env, tmp_path)
    refusal = NOT_RUN.get(example.shown)
    if refusal is not None:
        assert (done.returncode, done.stderr.splitlines()) == (
            refusal.exit_code,
            [refusal.stderr],
        ), f"{example.shown} is not run because it {refusal.reason}"
        return
    assert done.returncode == 0, done.stderr
    # `chat` reports a failed turn and goes on, so its exit status alone proves nothing.
    assert not re.search(r"^error:|Traceback", done.stderr, re.MULTILINE), done.stderr
    output = (tmp_path / example.stdout_to).read_text() if example.stdout_to else done.stdout
    assert output.strip(), f"{example.shown} printed nothing"


@pytest.mark.parametrize(
    "example",
    [e for e in EXAMPLES if e.optional_flags],
    ids=[e.shown for e in EXAMPLES if e.optional_flags],
)
def test_the_optional_parts_shown_exist(example: Example) -> None:
    parser = build_parser()
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
        parser.parse_args([*example.argv, "--help"])
    offered = set(re.findall(r"--[\w-]+", shown.getvalue()))
    assert set(example.optional_flags) <= offered, shown.getvalue()


def test_every_line_of_the_commands_block_is_read_and_every_exception_is_still_there() -> None:
    """A line the parser skipped would go untested; an exception must name a command the
    README still shows, or it would wait to excuse one added later."""
    commands = README.read_text(encoding="utf-8").split("\n## Commands\n", 1)[1]
    block = _FENCE.search(commands)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert lines and all(_COMMAND.match(line) for line in lines), lines
    assert set(NOT_RUN) <= {e.shown for e in EXAMPLES}


def test_every_page_in_docs_is_linked_from_the_readme_and_read_here() -> None:
    readme = README.read_text(encoding="utf-8")
    pages = PAGES[1:]
    assert pages, "docs/ has no pages"
    assert [p.name for p in pages if f"](docs/{p.name})" not in readme] == []
    assert "python -m bot models pull" not in readme  # shown only in docs/ ...
    assert "python -m bot models pull" in {e.shown for e in EXAMPLES}  # ... and run here


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_pages_resolve() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"`[^`\n]*`", "", page.read_text(encoding="utf-8"))  # code is no link
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
                if fragment not in {anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target}")
    assert broken == []


def test_examples_drop_optional_parts_and_split_alternatives() -> None:
    line = 'FOO=1 python -m bot ask x "a b" [--opt "c d"] [--mode one|two] [--flag] # note | here'
    (example,) = examples_in(line)
    assert example.env == {"FOO": "1"}
    assert example.argv == ("ask", "x", "a b")
    assert example.optional_flags == ("--opt", "--mode", "--flag")
    first, second = examples_in("python -m bot run | sync  # serve | register")
    assert (first.argv, second.argv) == (("run",), ("sync",))
    (export,) = examples_in("python -m bot usage export --since 2026-11-01 > usage.csv")
    assert export.argv == ("usage", "export", "--since", "2026-11-01")
    assert export.stdout_to == "usage.csv"
