"""Terminal commands that run no model start without torch, transformers or discord.py
(seconds of imports on a small machine); `ask` and `run` load them when they need them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "diffusers", "discord")
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub probe trusts a configured proxy; these tests probe directly."""
    for name in list(os.environ):
        if name.lower() in PROXIES:
            monkeypatch.delenv(name)


PROBE = """
import sys
from bot.cli import main
try:
    code = main({argv!r})
except SystemExit as exit:
    code = exit.code
heavy = [name for name in {heavy!r} if name in sys.modules]
print("loaded:", heavy, "exit:", code)
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["settings"], ["health"], ["usage", "stats"], ["ask"], ["ask", "chat"],
     ["models", "list", "sentiment"], ["no-such-command"],
     ["run"], ["sync"]],  # without a usable DISCORD_TOKEN: told before the models load
)  # fmt: skip
def test_commands_that_run_no_model_load_no_model_library(argv: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env |= {"BOT_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env["DISCORD_TOKEN"] = "not-a-token"
    serving = argv[0] in ("run", "sync")  # these set up discord.py's logging first
    heavy = tuple(name for name in HEAVY if not (serving and name == "discord"))
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, heavy=heavy)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "loaded: []" in done.stdout, done.stdout + done.stderr


def test_an_unreachable_hub_fails_a_missing_model_at_once_in_one_line(tmp_path: Path) -> None:
    """No minute of retries (each logged twice) before the advice to pull the model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "HF_"))}
    env |= {
        "BOT_DATA_DIR": str(tmp_path / "data"),
        "HF_HOME": str(tmp_path / "hf"),  # nothing downloaded
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens: refused at once
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "sentiment", "hi", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: could not load model 'distilbert/distilbert-base-uncased-finetuned-sst-2-english':"
        " it is not downloaded; run `python -m bot models pull sentiment`"
    ]


def test_the_hub_is_probed_only_for_hub_models_and_only_offline_when_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants as hub_constants

    from bot import models

    probes: list[bool] = []
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "hub_reachable", lambda: probes.append(True) or True)
    assert not models.offline_unless_reachable([str(tmp_path)])  # local folders: no probe
    assert probes == []
    assert not models.offline_unless_reachable(["org/model"])  # reachable: stays online
    assert probes == [True] and not hub_constants.HF_HUB_OFFLINE
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    assert models.offline_unless_reachable(["org/model"])
    assert hub_constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"


def test_a_listening_hub_is_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from huggingface_hub import constants as hub_constants

    from bot.models import hub_reachable

    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setattr(
            hub_constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}"
        )
        assert hub_reachable()
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    assert not hub_reachable()


def test_ask_prints_its_result_and_nothing_else(tmp_path: Path) -> None:
    """No library warnings a user cannot act on, no loading bars: stderr stays empty."""
    from tests.tinymodels import build_classifier

    model = build_classifier(tmp_path / "sentiment")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "HF_", "TRANSF"))}
    env |= {"BOT_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "sentiment", "great coffee", "--model", str(model),
         "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    label, score = done.stdout.split()
    assert label in {"POSITIVE", "NEGATIVE"} and score.startswith("(0.")


def test_behind_a_proxy_the_hub_counts_as_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants as hub_constants

    from bot.models import hub_reachable

    monkeypatch.setattr(hub_constants, "ENDPOINT", "https://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub_reachable()  # the hub client goes through the proxy; no direct probe


DOCTOR_PROBE = """
import sys
from bot import doctor
from bot.settings import Settings

quick = []
async def until_the_gpu_row():
    async for row in doctor.diagnose(Settings()):
        if row.check == "gpu":
            return
        quick.append(row.check)
        assert "torch" not in sys.modules and "transformers" not in sys.modules, row

import asyncio
asyncio.run(until_the_gpu_row())
print("quick rows:", quick)
"""


def test_doctor_prints_its_quick_rows_before_loading_torch(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env |= {"BOT_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", DOCTOR_PROBE], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for check in ("python", "torch", "token", "discord login", "database", "hub cache"):
        assert f"'{check}'" in done.stdout
