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


def test_env_names_nested_overrides_and_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "sst2").mkdir()
    monkeypatch.setenv("BOT_MODELS__SENTIMENT", str(tmp_path / "sst2"))
    monkeypatch.setenv("BOT_IMAGE__MAX_BATCH", "2")
    monkeypatch.setenv("BOT_MAX_PER_USER", "3")
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token")
    settings = Settings()
    assert settings.models.sentiment == str(tmp_path / "sst2")
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
    assert err.count("\n") == 1 and "BOT_MAX_QUEUE" in err


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


# Settings read the way hosts write them (#33)


@pytest.mark.parametrize(
    ("preload", "quotas"),
    [
        ("sentiment,chat", "imagine:20,chat:100"),
        (" sentiment , chat ", "imagine=20, chat=100"),
        ('["sentiment", "chat"]', '{"imagine": 20, "chat": 100}'),
    ],
)
def test_lists_and_maps_in_plain_form_or_json(
    preload: str, quotas: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BOT_PRELOAD", preload)
    (tmp_path / ".env").write_text(f"BOT_QUOTAS={quotas}\nBOT_IMAGINE__BLOCKED_TERMS=gore, war\n")
    settings = Settings()
    assert settings.preload == ["sentiment", "chat"]
    assert settings.quotas == {"imagine": 20, "chat": 100}
    assert settings.imagine.blocked_terms == ["gore", "war"]


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("BOT_QUOTAS", "imagine;20", "BOT_QUOTAS: 'imagine;20' is not NAME:VALUE; write a map"),
        ("BOT_QUOTAS", "{imagine: 20", "BOT_QUOTAS: '{imagine: 20' is not valid JSON"),
        ("BOT_QUOTAS", "imgine:20", "BOT_QUOTAS: 'imgine' is not a command; the commands: "),
        ("BOT_COOLDOWNS", "chat:-3", "BOT_COOLDOWNS: a limit cannot be negative (chat)"),
        ("BOT_QUOTAS", "chat:many", "BOT_QUOTAS (at chat): Input should be a valid integer"),
        ("BOT_IMAGINE__DEFAULT_STEPS", "lots", "BOT_IMAGINE__DEFAULT_STEPS: Input should be"),
        ("BOT_PRELOAD", "sentiment,dance", "BOT_PRELOAD: unknown task(s) dance"),
        ("BOT_MODELS__CHAT", "./my-qwen", "BOT_MODELS__CHAT: './my-qwen' is not a folder here"),
        ("BOT_MODELS__CHAT", "Qwen 2.5", "BOT_MODELS__CHAT: 'Qwen 2.5' is neither a folder"),
    ],
)
@pytest.mark.parametrize("command", [["doctor"], ["settings"], ["ask", "sentiment", "hi"]])
def test_a_bad_setting_is_one_line_naming_the_variable_and_exit_2(
    variable: str,
    value: str,
    said: str,
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(command) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {said}") and error.count("\n") == 1, error


def test_settings_printed_into_a_dotenv_read_back_the_same(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_QUOTAS", "imagine:5,chat:50")
    monkeypatch.setenv("BOT_CHAT__SYSTEM_PROMPT", 'Tutor #1, it\'s "chemistry" \\ physics')
    monkeypatch.setenv(
        "BOT_IMAGINE__MODELS", '{"turbo": {"source": "x/turbo", "default_steps": 1}}'
    )
    monkeypatch.setenv("DISCORD_TOKEN", "a.secret.token")
    assert main(["settings"]) == 0
    printed = capsys.readouterr().out
    assert "a.secret.token" not in printed and "# DISCORD_TOKEN is set (not shown)" in printed
    for name in ("BOT_QUOTAS", "BOT_CHAT__SYSTEM_PROMPT", "BOT_IMAGINE__MODELS"):
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(printed)
    assert main(["settings"]) == 0
    assert capsys.readouterr().out == printed
    settings = Settings()
    assert settings.chat.system_prompt == 'Tutor #1, it\'s "chemistry" \\ physics'
    assert settings.imagine.models["turbo"].default_steps == 1


def test_a_variable_that_sets_nothing_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bot.doctor import Status, check_variables

    (tmp_path / ".env").write_text("BOT_MAX_QUEU=9\n")
    monkeypatch.setenv("BOT_IMAGNE__DEFAULT_STEPS", "5")
    monkeypatch.setenv("BOT_QUOTAS__CHAT", "5")  # an item of a map: fine
    row = check_variables()
    assert row.status is Status.WARN
    assert row.detail == (
        "BOT_IMAGNE__DEFAULT_STEPS sets nothing (did you mean BOT_IMAGINE__DEFAULT_STEPS?); "
        "BOT_MAX_QUEU sets nothing (did you mean BOT_MAX_QUEUE?)"
    )
    monkeypatch.delenv("BOT_IMAGNE__DEFAULT_STEPS")
    (tmp_path / ".env").unlink()
    assert check_variables().status is Status.OK


def test_a_mistyped_option_is_named_with_the_one_meant_and_the_commands_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv, said in [
        (["ask", "translate", "hi", "--too", "fr"],
         "error: the following arguments are required: --to; --too is not an option here: "
         "did you mean --to? (see python -m bot ask translate --help)"),
        (["ask", "translate", "hi", "--to", "fr", "--jsn"],
         "error: unrecognized arguments: --jsn; --jsn is not an option here: did you mean "
         "--json? (see python -m bot ask translate --help)"),
        (["settings", "--env-exampel"],
         "error: unrecognized arguments: --env-exampel; --env-exampel is not an option here: "
         "did you mean --env-example? (see python -m bot settings --help)"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert capsys.readouterr().err == said + "\n"


def test_the_env_template_names_the_libraries_own_variables() -> None:
    template = (ROOT / ".env.example").read_text()
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HOME", "HF_ENDPOINT", "RAY_AUTH_TOKEN"):
        assert f"\n# {name}=" in template


def test_the_console_script_names_itself_in_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["/venv/bin/assistant-bot", "--help"])
    assert build_parser().format_usage().startswith("usage: assistant-bot ")
    monkeypatch.setattr(sys, "argv", ["/work/bot/__main__.py"])
    assert build_parser().format_usage().startswith("usage: python -m bot ")


def test_what_the_first_review_found_reads_back_or_is_said_right(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backslashes, newlines, a URL in a map, a chat server's own model name, a rule across
    settings, a password in a URL and ${...} each come out of `settings` as they should."""
    monkeypatch.setenv("BOT_OWNER_IDS", '["C:\\\\dir\\\\x", "two"]')
    monkeypatch.setenv("BOT_CHAT__SYSTEM_PROMPT", "line one\nline two")
    monkeypatch.setenv("BOT_TRANSLATE__PAIR_MODELS", "en-fr=http://mirror/opus:1")
    monkeypatch.setenv("BOT_CHAT__ENGINE", "openai")
    monkeypatch.setenv("BOT_MODELS__CHAT", "llama3.1:8b")  # Ollama's name for it: allowed
    monkeypatch.setenv("BOT_CHAT__OPENAI__BASE_URL", "http://me:pw@server:8000/v1")
    monkeypatch.setenv("BOT_DATA_DIR", "${HOME}/bot")
    settings = Settings()
    assert settings.translate.pair_models == {"en-fr": "http://mirror/opus:1"}
    assert main(["settings"]) == 0
    printed = capsys.readouterr().out
    assert "me:pw" not in printed
    assert "# BOT_CHAT__OPENAI__BASE_URL is set, with a password in it (not shown)" in printed
    assert "# BOT_DATA_DIR holds ${...}, which a .env cannot keep: set it by hand" in printed
    for name in ("BOT_OWNER_IDS", "BOT_CHAT__SYSTEM_PROMPT", "BOT_TRANSLATE__PAIR_MODELS",
                 "BOT_CHAT__ENGINE", "BOT_MODELS__CHAT"):  # fmt: skip
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(printed)
    again = Settings()
    assert again.owner_ids == ["C:\\dir\\x", "two"]
    assert again.chat.system_prompt == "line one\nline two"
    assert again.models.chat == "llama3.1:8b"
    monkeypatch.setenv("BOT_WORKERS_PER_DEVICE", "by-class")
    monkeypatch.setenv("BOT_DEVICE", "cuda:0,cuda:1")
    assert main(["settings"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: BOT_WORKERS_PER_DEVICE=by-class needs one device"
    )


def test_variables_within_maps_and_in_any_case_are_settings() -> None:
    from bot.settings import unknown_variables

    assert unknown_variables([
        "BOT_RAY__TASKS__IMAGINE__MAX_REPLICAS", "BOT_IMAGINE__MODELS__TURBO__SOURCE",
        "BOT_QUOTAS__CHAT", "bot_preload", "BOT_PRELOAD__0",
    ]) == [("BOT_PRELOAD__0", "BOT_PRELOAD")]  # fmt: skip
