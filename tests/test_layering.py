"""The dependency rules of DESIGN.md, checked on the source: handlers never import the bot,
the executor imports nothing of the bot outside its package, and settings load without
torch (every terminal command builds them first)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every module each file under ``folder`` imports, by file."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_handlers_never_import_the_bot_or_discord() -> None:
    leaks = {
        path: sorted(n for n in names if n.split(".")[0] in {"bot", "discord"})
        for path, names in imported_modules(ROOT / "handlers").items()
    }
    assert {path: names for path, names in leaks.items() if names} == {}


def test_the_executor_imports_nothing_of_the_bot_outside_its_package() -> None:
    leaks = {
        path: sorted(n for n in names if n.startswith("bot") and not n.startswith("bot.executor"))
        for path, names in imported_modules(ROOT / "bot" / "executor").items()
    }
    assert {path: names for path, names in leaks.items() if names} == {}


@pytest.mark.parametrize("module", ["bot.settings", "bot.executor.config"])
def test_settings_import_without_torch(module: str) -> None:
    check = f"import {module}, sys; assert 'torch' not in sys.modules, sorted(sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
