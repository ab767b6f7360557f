"""Settings from the environment, the .env template, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.cli import main
from bot.settings import RaySettings, Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray BOT_* variables or .env file from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("BOT_") or name == "DISCORD_TOKEN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_env_names_nested_overrides_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_MODELS__SENTIMENT", "/models/sst2")
    monkeypatch.setenv("BOT_IMAGE__MAX_BATCH", "2")
    monkeypatch.setenv("BOT_MAX_PER_USER", "3")
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token")
    settings = Settings()
    assert settings.models.sentiment == "/models/sst2"
    assert settings.image.max_batch == 2
    assert settings.image.window_ms == 75  # the rest of the image class keeps its defaults
    assert settings.max_per_user == 3
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "secret-token"
    assert "secret-token" not in repr(settings)
    config = settings.executor_config()
    assert config.max_per_user == 3


def test_settings_come_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BOT_MAX_QUEUE=7\nBOT_TEXT__WINDOW_MS=2\n")
    settings = Settings()
    assert settings.max_queue == 7
    assert settings.text.window_ms == 2


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_PRELOAD", '["sentiment", "dance"]')
    with pytest.raises(ValidationError, match="dance"):
        Settings()


def test_a_tasks_ray_replicas_are_checked_with_the_defaults_it_changes() -> None:
    imagine = RaySettings(max_replicas=4, tasks={"imagine": {"min_replicas": 3}}).deployment(
        "imagine"
    )
    assert (imagine.min_replicas, imagine.max_replicas) == (3, 4)
    with pytest.raises(
        ValidationError,
        match=r"tasks\['imagine'\]: min_replicas \(2\) must not exceed max_replicas \(1\)",
    ):
        RaySettings(min_replicas=2, max_replicas=2, tasks={"imagine": {"max_replicas": 1}})
    with pytest.raises(ValidationError, match=r"tasks\['chat'\]: gpus: Extra inputs"):
        RaySettings(tasks={"chat": {"gpus": 1}})


def test_env_example_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings", "--env-example"]) == 0
    generated = capsys.readouterr().out
    assert (ROOT / ".env.example").read_text() == generated, (
        "regenerate with: python -m bot settings --env-example > .env.example"
    )
    for name in ("DISCORD_TOKEN=", "BOT_MODELS__SENTIMENT=", "BOT_TEXT__WINDOW_MS="):
        assert name in generated


def test_invalid_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_MAX_QUEUE", "zero")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_queue" in err


def test_help_lists_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bot", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    assert "ask" in out.stdout and "settings" in out.stdout


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "error: DISCORD_TOKEN is not set"),
        ("not-a-token", "error: DISCORD_TOKEN does not look like a bot token"),
    ],
)
def test_run_without_a_usable_token_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], token: str, message: str
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", token)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
