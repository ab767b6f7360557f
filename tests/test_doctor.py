"""``doctor``: red rows with fixes for what would stop the bot, exit 1; green on a good setup."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestServer
from datasets import config as datasets_config
from discord.http import Route
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

from bot.cli import main
from bot.doctor import Row, Status, chat_batching, check_device, check_login, memory_rows, render
from bot.models import pull, requirements
from bot.settings import Settings
from bot.usage import migrations
from tests import tinymodels
from tests.localhub import LocalHub

BOT_USER_ID = "123456789012345678"
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.Secret_signature-partXYZ0123456789"
"""Shaped like a bot token; its first part is BOT_USER_ID in base64url."""
WEIGHTS = 1024
"""float32 numbers in every placed model: 4 KiB on disk, 2 KiB once loaded as float16."""
LATEST = migrations()[-1][0]
"""The usage database's newest schema."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("BOT_") or name == "DISCORD_TOKEN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env from the developer's checkout
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # only the stand-in hub is used
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setenv("BOT_USAGE__PATH", str(tmp_path / "data" / "usage.sqlite3"))


def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def status(output: str, check: str) -> tuple[str, str]:
    """The status and the rest of ``check``'s row in doctor's plain-text table."""
    match = re.search(rf"^(\w+)\s+{re.escape(check)}\s{{2,}}(.*)$", output, re.MULTILINE)
    assert match, f"no row {check!r} in:\n{output}"
    return match.group(1), match.group(2)


def fix(output: str, check: str) -> str:
    lines = output.splitlines()
    row = next(i for i, line in enumerate(lines) if re.match(rf"\w+\s+{re.escape(check)}\s", line))
    following = lines[row + 1].strip()
    return following.removeprefix("fix: ") if following.startswith("fix: ") else ""


def minimal_model(folder: Path, weights: str = "model.safetensors") -> Path:
    """A folder with a config and real safetensors weights; doctor reads, never loads, them."""
    (folder / weights).parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(WEIGHTS, dtype=torch.float32)}, folder / weights)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    return folder


def populate_cache(settings: Settings, tmp_path: Path) -> None:
    """Pull every default model and the voices into the hub cache, from stand-in repos."""
    hub = LocalHub()
    for requirement in requirements(settings):
        folder = tmp_path / "repos" / requirement.source
        folder.mkdir(parents=True)
        if requirement.repo_type == "dataset":
            (folder / "data").mkdir()
            tinymodels.build_voices_parquet(folder / "data" / "validation-00000-of-00001.parquet")
        elif requirement.pipeline:
            minimal_model(folder, "unet/diffusion_pytorch_model.safetensors")
            (folder / "model_index.json").write_text("{}")
        else:
            minimal_model(folder)
        hub.add(requirement.source, folder, requirement.repo_type)
    assert pull(requirements(settings), download=hub, out=io.StringIO(), err=io.StringIO()) == 0


def test_missing_model_unwritable_database_and_no_gpu_are_red_with_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_gpu(monkeypatch)
    monkeypatch.setenv("BOT_DEVICE", "cuda")  # asked for: without one the bot cannot run
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's folder should be")
    monkeypatch.setenv("BOT_USAGE__PATH", str(blocker / "usage.sqlite3"))
    monkeypatch.setenv("BOT_MODELS__SENTIMENT", "tiny-org/absent")
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)

    assert main(["doctor"]) == 1

    output = capsys.readouterr().out
    assert "\033[" not in output  # no colour codes when stdout is not a terminal
    assert status(output, "gpu")[0] == "FAIL"
    assert "set BOT_DEVICE=cpu to run on the CPU deliberately" in fix(output, "gpu")
    db_status, db_detail = status(output, "database")
    assert db_status == "FAIL" and db_detail.startswith(f"cannot open {blocker / 'usage.sqlite3'}")
    assert "BOT_USAGE__PATH" in fix(output, "database")
    assert status(output, "model sentiment") == ("FAIL", "tiny-org/absent: not downloaded")
    assert fix(output, "model sentiment") == "run `python -m bot models pull sentiment`"
    assert status(output, "token") == (
        "ok",
        f"set, shaped like a bot token for bot user {BOT_USER_ID}",
    )
    assert TOKEN not in output and TOKEN.rsplit(".", 1)[1] not in output
    assert status(output, "discord login")[0] == "skip"
    assert output.rstrip().endswith("problem(s) to fix")


def test_a_healthy_configuration_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_DEVICE", "cpu")
    monkeypatch.setenv("BOT_DTYPE", "float16")
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    populate_cache(Settings(_env_file=None), tmp_path)

    assert main(["doctor"]) == 0

    output = capsys.readouterr().out
    assert status(output, "gpu") == ("ok", "none: CPU by configuration (BOT_DEVICE=cpu)")
    assert status(output, "workers") == (
        "ok", "one process per device for every task (BOT_WORKERS_PER_DEVICE=auto)"
    )  # fmt: skip
    assert status(output, "database") == (
        "ok",
        f"{tmp_path / 'data' / 'usage.sqlite3'}: schema {LATEST} of {LATEST} (created)",
    )
    sentiment = status(output, "model sentiment")
    assert sentiment[0] == "ok" and sentiment[1].endswith(", ~2.0 KiB as float16")
    assert status(output, "model imagine")[1].endswith(", ~2.0 KiB as float16")
    assert status(output, "model speak voices")[0] == "ok"
    assert status(output, "model chat")[1].endswith(
        "; static batching (BOT_CHAT__CONTINUOUS=auto, which is for CUDA GPUs (cpu))"
    )
    assert status(output, "memory") == ("ok", "~24.0 KiB for all models as float16 (no budget)")
    assert output.rstrip().endswith("ready to run")

    # A second run finds the database as the first left it.
    assert main(["doctor"]) == 0
    assert status(capsys.readouterr().out, "database")[1].endswith(f"schema {LATEST} of {LATEST}")


def test_continuous_batching_shows_its_kv_cache_beside_the_chat_weights(
    tiny_chat: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_DEVICE", "cpu")
    monkeypatch.setenv("BOT_DTYPE", "float16")
    monkeypatch.setenv("BOT_MODELS__CHAT", str(tiny_chat))
    monkeypatch.setenv("BOT_CHAT__CONTINUOUS", "on")
    monkeypatch.setenv("BOT_CHAT__MAX_RUNNING", "4")
    main(["doctor"])
    # 2 layers x (keys + values) x 1 head x 16 dims x 2 bytes, for 4 x 256 tokens
    assert status(capsys.readouterr().out, "model chat")[1].endswith(
        "; continuous batching, 4 conversations at once, +128.0 KiB KV cache"
    )


@pytest.mark.parametrize(("setting", "shown"), [("true", True), ("false", False)])
def test_continuous_batching_on_a_gpu_says_whether_steps_replay_as_cuda_graphs(
    tiny_chat: Path, monkeypatch: pytest.MonkeyPatch, setting: str, shown: bool
) -> None:
    monkeypatch.setenv("BOT_CHAT__CUDA_GRAPHS", setting)
    line, _ = chat_batching(Settings(_env_file=None), "cuda:0", tiny_chat, torch.float16)
    assert line.startswith("continuous batching")
    assert ("steps as CUDA graphs" in line) is shown


def test_a_model_over_the_memory_budget_is_red(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_DEVICE", "cpu")
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("BOT_MEMORY_BUDGET_GB", str(6000 / 2**30))
    populate_cache(Settings(_env_file=None), tmp_path)

    assert main(["doctor"]) == 1

    output = capsys.readouterr().out
    # float32 on the CPU: 4 KiB per model, 8 KiB for speech (model and vocoder load together).
    assert status(output, "memory") == (
        "FAIL",
        "speak alone needs ~8.0 KiB as float32, over the 5.9 KiB of BOT_MEMORY_BUDGET_GB",
    )
    assert fix(output, "memory").startswith("raise BOT_MEMORY_BUDGET_GB to at least")


def test_a_model_setting_that_is_no_hub_id_is_one_line_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_MODELS__CHAT", "my chat model")
    for command in (["doctor"], ["models", "pull", "chat"]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.err == (
            "error: BOT_MODELS__CHAT: 'my chat model' is neither a folder here nor a hub id "
            "(owner/name)\n"
        )


def test_cuda_asked_for_without_a_gpu_is_red(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_gpu(monkeypatch)
    monkeypatch.setenv("BOT_DEVICE", "cuda")
    assert main(["doctor"]) == 1
    gpu_status, detail = status(capsys.readouterr().out, "gpu")
    assert gpu_status == "FAIL" and detail.startswith("BOT_DEVICE=cuda, but no CUDA GPU")


GiB = 2**30


@pytest.mark.parametrize(
    ("budget", "expected", "message", "fix"),
    [
        (None, Status.FAIL, "all models need ~4.0 GiB as float16 and stay loaded (no budget)",
         "set BOT_MEMORY_BUDGET_GB=3 so models take turns"),
        (2 * GiB, Status.FAIL, "imagine alone needs ~3.0 GiB as float16, over the 2.0 GiB",
         "raise BOT_MEMORY_BUDGET_GB to at least 3.0, or pick a smaller model"),
        (int(3.5 * GiB), Status.WARN, "models take turns",
         "raise BOT_MEMORY_BUDGET_GB to keep every model loaded, if memory allows"),
        (5 * GiB, Status.FAIL, "BOT_MEMORY_BUDGET_GB (5.0 GiB) is more than the GPU can hold",
         "set BOT_MEMORY_BUDGET_GB=3"),
        (4 * GiB, Status.OK, "~4.0 GiB for all models as float16 (budget 4.0 GiB, GPU 8.0 GiB)",
         ""),
    ],
)  # fmt: skip
def test_memory_against_the_gpu_and_the_budget(
    budget: int | None, expected: Status, message: str, fix: str
) -> None:
    gpu = 8 * GiB if expected is Status.OK else 4 * GiB
    rows = memory_rows({"imagine": 3 * GiB, "chat": 1 * GiB}, budget, gpu, "float16")
    assert [(row.status, row.fix) for row in rows] == [(expected, fix)]
    assert message in rows[0].detail


def test_render_colours_status_only_for_terminals() -> None:
    rows = [Row("gpu", Status.FAIL, "no GPU", "install CUDA"), Row("python", Status.OK, "3.11")]
    coloured = render(rows, colour=True)
    assert "\033[31mFAIL\033[0m  gpu     no GPU" in coloured
    assert "\033[32mok  \033[0m  python  3.11" in coloured
    plain = render(rows, colour=False)
    assert plain.splitlines() == [
        "FAIL  gpu     no GPU",
        "              fix: install CUDA",
        "ok    python  3.11",
        "",
        "1 problem(s) to fix",
    ]


@pytest.fixture
async def discord_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Discord's REST API, as far as a login goes: GET /users/@me with the bot's token."""

    def reply(data: dict[str, object], status: int) -> web.Response:
        # discord.py parses bodies typed exactly application/json, as Discord sends them.
        return web.Response(
            body=json.dumps(data).encode(), status=status, content_type="application/json"
        )

    async def me(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {TOKEN}":
            return reply({"message": "401: Unauthorized", "code": 0}, 401)
        return reply({"id": BOT_USER_ID, "username": "study-bot"}, 200)

    app = web.Application()
    app.router.add_get("/users/@me", me)
    server = TestServer(app)
    await server.start_server()
    monkeypatch.setattr(Route, "BASE", f"http://{server.host}:{server.port}")
    yield
    await server.close()


async def test_online_login_accepts_a_good_token_and_rejects_a_bad_one(
    discord_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    good = await check_login(Settings(_env_file=None), online=True)
    assert good == Row("discord login", Status.OK, f"logged in as study-bot (id {BOT_USER_ID})")
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN[:-4] + "AAAA")  # a token reset since
    bad = await check_login(Settings(_env_file=None), online=True)
    assert (bad.status, bad.detail) == (Status.FAIL, "Discord rejected the token")
    assert "reset the token" in bad.fix


def test_voice_is_a_warning_with_its_fix_when_libopus_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import discord

    from bot.doctor import check_voice

    monkeypatch.setattr(discord.opus, "is_loaded", lambda: False)
    monkeypatch.setattr(discord.opus, "_load_default", lambda: False)
    row = check_voice()
    assert row.status is Status.WARN
    assert row.fix == "`apt install libopus0` (or your system's package)"
    assert row.detail == "voice needs libopus; /voice and /speak in calls are off"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there to be found")
def test_no_gpu_with_the_default_device_is_a_warning_not_a_failure() -> None:
    """BOT_DEVICE=auto on a CPU machine: the bot runs there, slowly; FAIL means it will not."""
    row, memory = check_device("auto")
    assert (row.status, memory) == (Status.WARN, None)
    assert "runs on the CPU, slowly for images and chat" in row.detail
    failed, _ = check_device("cuda")  # asked for a GPU that is not there: it will not work
    assert failed.status is Status.FAIL
