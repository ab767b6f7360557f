"""The dependency rules of docs/architecture.md (Layers), checked on the source: handlers
never import the bot, the executor imports nothing of the bot outside its package, settings
load without torch (every terminal command builds them first), no module imports itself
back through others, and the cogs (``bot/cogs``, Discord extensions) are imported by
nothing, each other included: what they share lives below them (``bot/commands.py``)."""

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


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Which modules of ``bot`` and ``handlers`` each of them imports: every import, at the
    top, inside a function or only for type checking (``from a import b`` counts as
    ``a.b`` where that is a module, as ``a`` where ``b`` is a name in it)."""
    files: dict[str, Path] = {}
    for top in ("bot", "handlers"):
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = set()
        for target in targets:
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = [stack.pop()]
            while group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back() -> None:
    assert cycles(module_graph()) == []


def test_the_cycle_check_counts_type_only_relative_and_function_imports(tmp_path: Path) -> None:
    sources = {
        "bot/__init__.py": "",
        "bot/client.py": "from bot import commands\n",
        "bot/commands.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .client import Bot\n"
        ),
        "bot/cogs/tasks.py": "def later():\n    from bot.cogs import voice\n",
        "bot/cogs/voice.py": "import bot.cogs.tasks\n",
        "handlers/base.py": "",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cycles(module_graph(tmp_path)) == [
        ["bot.client", "bot.commands"],
        ["bot.cogs.tasks", "bot.cogs.voice"],
    ]


def test_nothing_imports_a_cog_and_no_cog_imports_another() -> None:
    graph = module_graph()
    cogs = {name for name in graph if name.startswith("bot.cogs.")}
    assert len(cogs) >= 6
    assert {name: sorted(targets & cogs) for name, targets in graph.items() if targets & cogs} == {}
