"""pyproject.toml declares every package bot/ and handlers/ import, and nothing for the
runtime that they do not (#34): a package that arrives only as another's dependency can
leave with that one's next release."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ONLY = {
    "sentencepiece": "the Marian and M2M100 tokenizers need it to load",
    "pynacl": "discord.py's voice encryption",
    "davey": "discord.py's voice end-to-end encryption (DAVE)",
}
"""Declared for the runtime, never imported by the bot's own code."""


def imported_modules() -> set[str]:
    """Top-level names of every absolute import in bot/ and handlers/, inside functions too."""
    names: set[str] = set()
    for folder in ("bot", "handlers"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"bot", "handlers", "__future__"}


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [
        *project["dependencies"],
        *(r for e in extras for r in project["optional-dependencies"][e]),
    ]
    return {canonicalize_name(Requirement(line).name) for line in lines} - {"assistant-bot"}


def test_every_package_the_code_imports_is_declared() -> None:
    distributions = packages_distributions()
    imported = {
        module: {canonicalize_name(d) for d in distributions.get(module, [module])}
        for module in imported_modules()
    }
    runtime = declared("ray")  # the Ray backend imports ray, an optional extra
    undeclared = {
        module: sorted(names) for module, names in imported.items() if not names & runtime
    }
    assert undeclared == {}


def test_every_runtime_dependency_is_imported_or_said_why_not() -> None:
    distributions = packages_distributions()
    used = {
        canonicalize_name(d) for module in imported_modules() for d in distributions.get(module, [])
    }
    unused = declared() - used - set(RUNTIME_ONLY)
    assert unused == set()  # a test-only package belongs in the dev extra
    assert set(RUNTIME_ONLY) <= declared()  # and what is needed without an import is there
