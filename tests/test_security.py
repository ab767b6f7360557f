"""What a hostile member or a careless log must never get: the token, a model of their
choosing, a path on disk, an SQL statement, or the whole queue."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import discord
import pytest

from handlers.base import InvalidInput
from handlers.imagine import ImageModelChoice, ImagineRequest, ImagineTask
from handlers.speak import SpeakRequest, SpeakTask
from handlers.translate import TranslateRequest, TranslateTask
from tests import tinymodels
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    REAL_REQUEST,
    Harness,
    harness,
    scene,
    simcord_bot,
    stack,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.s3cr3t-t0k3n-never-in-any-output-AbCdEf"
SECRET_PART = "s3cr3t-t0k3n-never-in-any-output"


def bot_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BOT_")},
        "DISCORD_TOKEN": TOKEN,
        "BOT_LOG_LEVEL": "DEBUG",
        "BOT_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180,
    )  # fmt: skip


def test_the_token_never_reaches_output_logs_or_files(tmp_path: Path) -> None:
    """``run`` at DEBUG (it fails to reach Discord here), ``settings`` and ``doctor``."""
    runs = [bot_command(tmp_path, *args) for args in (["run"], ["settings"], ["doctor"])]
    # Offline (CI) it cannot reach Discord; online, Discord rejects the made-up token.
    assert (runs[0].returncode, runs[0].stderr.count("error: ")) in ((1, 1), (2, 1))
    assert "cannot reach Discord" in runs[0].stderr or "rejected DISCORD_TOKEN" in runs[0].stderr
    assert "DEBUG" in runs[0].stderr  # the logs were as verbose as they get
    assert "DISCORD_TOKEN" in runs[1].stdout  # the setting is listed, its value is not
    for done in runs:
        assert SECRET_PART not in done.stdout + done.stderr
    written = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert any(p.name == "usage.sqlite3" for p in written)
    for path in written:
        assert SECRET_PART.encode() not in path.read_bytes(), path


def test_settings_repr_and_errors_mask_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.settings import Settings

    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    settings = Settings(_env_file=None)
    assert SECRET_PART not in repr(settings) and SECRET_PART not in str(settings.model_dump())
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == TOKEN


async def test_members_choose_no_model_only_options_the_admin_configured(
    harness: Harness, tmp_path: Path
) -> None:
    """No command takes a model id or a path; languages, voices and image model names map
    to configured models."""
    for command in harness.bot.tree.walk_commands():
        for parameter in getattr(command, "parameters", []):
            if (command.qualified_name, parameter.name) == ("imagine", "model"):
                continue  # the name of a configured model: checked below
            assert not {"model", "repo", "checkpoint", "path"} & set(parameter.name.split("_"))
    imagine = ImagineTask(models={"turbo": ImageModelChoice("configured/turbo")})
    picked = imagine.model_for(ImagineRequest("a fox", model="turbo"), "configured/sd")
    assert picked == "configured/turbo"
    for name in ("attacker/model", "../../models/x", "configured/turbo"):
        with pytest.raises(InvalidInput) as refused:
            imagine.validate(ImagineRequest("a fox", model=name))
        assert refused.value.option == "model"
    speak = SpeakTask(voices=str(tinymodels.build_voices_npy(tmp_path / "voices.npy")))
    speak.prepare()
    for option, request in [
        ("voice", SpeakRequest("hi", voice="../../attacker/xvectors")),
        ("language", SpeakRequest("hi", language="attacker/tts-model")),
    ]:
        with pytest.raises(InvalidInput) as refused:
            speak.validate(request)
        assert refused.value.option == option
    translate = TranslateTask(pair_models={"en-fr": "configured/en-fr"})
    translate.prepare()
    chosen = translate.model_for(TranslateRequest("hello", "fr", "en"), "configured/m2m")
    assert chosen == "configured/en-fr"
    with pytest.raises(InvalidInput):
        translate.validate(TranslateRequest("hello", "attacker/model", "en"))


def test_handlers_never_allow_remote_code_or_pickles() -> None:
    """Every ``X.from_pretrained`` call says ``trust_remote_code=False`` (or passes
    LoadSpec's kwargs, which also demand safetensors); nothing ever says True."""
    for path in sorted((ROOT / "handlers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg in (
                "trust_remote_code",
                "use_safetensors",
            ):
                expected = node.arg == "use_safetensors"
                assert isinstance(node.value, ast.Constant) and node.value.value is expected, path
            calls_from_pretrained = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
            )
            if calls_from_pretrained:
                named = {k.arg for k in node.keywords}
                spread = [ast.unparse(k.value) for k in node.keywords if k.arg is None]
                assert "trust_remote_code" in named or any(
                    "pretrained_kwargs" in s for s in spread
                ), f"{path.name}:{node.lineno}: from_pretrained without trust_remote_code=False"


SQL_CALLS = {"execute", "executemany", "query", "write_now", "quick", "_read", "_write"}
SQL_FRAGMENTS = {
    "names", "marks", "changes", "sets", "where", "', '.join(COLUMNS)",
    "int(self.busy_timeout_ms)", "QUICK_BUSY_MS",
}  # fmt: skip
"""What an f-string statement may interpolate: each is built from the fixed COLUMNS list,
known column names or constant text, never from a value (reviewed in bot/usage.py)."""


def test_sql_statements_take_values_only_as_parameters() -> None:
    for path in sorted((ROOT / "bot").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in SQL_CALLS
                and node.args
            ):
                continue
            statement = node.args[0]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert not isinstance(statement, ast.BinOp), f"{where}: SQL built with + or %"
            if isinstance(statement, ast.JoinedStr):
                for part in statement.values:
                    if isinstance(part, ast.FormattedValue):
                        expression = ast.unparse(part.value)
                        assert expression in SQL_FRAGMENTS, f"{where}: {expression} in SQL"


async def test_hostile_text_is_stored_as_data_not_run_as_sql(harness: Harness) -> None:
    s = await scene(harness)
    harness.bot.invoker.log_prompts = True
    hostile = "x'); DROP TABLE invocations; --"
    await s.alice.slash(s.channel, "imagine", prompt=hostile)
    await s.alice.slash(s.channel, "chat", message=hostile)
    await harness.finish()
    await harness.bot.usage.flush()
    prompts = [json.loads(r["prompt"]) for r in harness.rows()]
    assert prompts[0]["prompt"] == hostile
    assert hostile in prompts[1].values()
    with sqlite3.connect(harness.db) as db:
        (stored,) = db.execute("SELECT request FROM image_requests").fetchone()
    assert hostile in stored


async def test_an_uploaded_file_name_is_never_a_path(harness: Harness, tmp_path: Path) -> None:
    s = await scene(harness)
    before = set(tmp_path.rglob("*"))
    cwd_before = set(Path.cwd().iterdir())
    for name in ("../../../../tmp/evil.txt", "/etc/passwd.txt", "..\\..\\boot.ini.txt"):
        result = await s.alice.slash(s.channel, "summarize", file=(name, b"Notes. More notes."))
        await harness.finish()
        assert result.response.content == "summary: Notes. More notes."
    assert not Path("/tmp/evil.txt").exists()
    assert set(tmp_path.rglob("*")) - before <= {harness.db, *harness.db.parent.glob("usage*")}
    assert set(Path.cwd().iterdir()) == cwd_before


async def test_one_member_cannot_fill_the_queue(harness: Harness) -> None:
    """Beyond max_per_user jobs, a member is refused at once; others still get in."""
    s = await scene(harness)
    task = harness.tasks["sentiment"]
    task.hold = True
    blocker = harness.bot.executor.submit("sentiment", REAL_REQUEST, user_id="blocker")
    await asyncio.to_thread(task.entered.wait, 10)
    spam = [await s.alice.slash(s.channel, "sentiment", text=f"spam {n}") for n in range(10)]
    other = await s.bob.slash(s.channel, "sentiment", text="my turn")
    refused = [r for r in spam if r.ephemeral]
    assert len(refused) == 8
    assert all("You already have jobs in progress" in r.response.content for r in refused)
    assert not other.ephemeral
    task.hold = False
    task.gate.set()
    await blocker
    await harness.finish()
    assert "**POSITIVE**" in other.response.content


async def test_admin_commands_check_the_permission_when_run(harness: Harness) -> None:
    """Discord hides them from members (test_discord.test_members_cannot_run_admin_commands),
    but a server can change that setting: the command checks again when it runs."""
    from bot.cogs.admin import Admin
    from bot.cogs.config import ServerConfig
    from bot.commands import NotAnAdmin

    commands = {c.name: c for c in Admin.__cog_app_commands__}
    member = SimpleNamespace(id=42, guild_permissions=discord.Permissions.none())
    owner = SimpleNamespace(id=7, guild_permissions=discord.Permissions.none())
    harness.bot.settings.owner_ids = ["7"]
    config = harness.bot.get_cog("ServerConfig")
    assert isinstance(config, ServerConfig)
    checks = [commands["queue"].checks[0], commands["stats"].checks[0], config.interaction_check]
    for check in checks:
        with pytest.raises(NotAnAdmin):
            await check(SimpleNamespace(client=harness.bot, user=member))
        assert await check(SimpleNamespace(client=harness.bot, user=owner))
