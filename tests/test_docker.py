"""The container files, checked without a Docker engine: the linter, and agreement with the
README, the settings and each other."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import build_parser
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
        elif current.strip():
            logical.append(" ".join(current.split()))
            current = ""
    return [tuple(entry.split(" ", 1)) for entry in logical]  # type: ignore[misc]


def arguments(name: str) -> list[str]:
    return [args for instruction, args in instructions() if instruction == name]


def env() -> dict[str, str]:
    values: dict[str, str] = {}
    for args in arguments("ENV"):
        values.update(item.split("=", 1) for item in shlex.split(args))
    return values


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["bot"]


def healthcheck_command() -> list[str]:
    (args,) = arguments("HEALTHCHECK")
    return yaml.safe_load(args.split(" CMD ", 1)[1])


def test_hadolint_passes() -> None:
    installed = Path(sys.executable).with_name("hadolint")
    hadolint = str(installed) if installed.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with pip install -e '.[dev]')")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_the_way_the_readme_does() -> None:
    readme = (ROOT / "README.md").read_text()
    run_block = re.search(r"\*\*Run the bot\*\*.*?```bash\n(.*?)\n```", readme, re.S)
    assert run_block is not None
    steps = [step.strip() for step in run_block.group(1).split("&&")]
    install = [s for s in steps if s.startswith(("python3 -m venv", ". ", "pip install"))]
    assert len(install) == 3, steps
    # The image makes the same virtual environment and installs the project the same way,
    # into /opt/venv, and not editable (the source stays root-owned and read-only).
    expected = [s.replace(".venv", "/opt/venv").replace(" -e .", " .") for s in install]
    (run,) = [a for a in arguments("RUN") if "pip install" in a]
    run = re.sub(r"^(--\S+ )+", "", run)  # RUN's own flags (the pip cache mount)
    assert [s.strip() for s in run.split("&&")] == expected
    assert any("-r locks/bot.txt" in step for step in expected)  # the lock, in both
    docker_page = (ROOT / "docs" / "docker.md").read_text()
    assert "Dockerfile" in docker_page and "pip install -r locks/bot.txt .`" in docker_page


def test_the_image_runs_the_readme_commands_as_a_user_with_state_on_volumes() -> None:
    (cmd,) = arguments("CMD")
    assert yaml.safe_load(cmd) == ["python", "-m", "bot", "run"]
    assert arguments("USER")[-1].split(":")[0] not in ("0", "root")
    assert arguments("FROM")[0].startswith("nvidia/cuda:") and "-runtime-" in arguments("FROM")[0]
    assert arguments("STOPSIGNAL") == []  # SIGTERM, which bot/serve.py turns into a clean stop
    values = env()
    (volumes,) = arguments("VOLUME")
    assert set(yaml.safe_load(volumes)) == {values["BOT_DATA_DIR"], values["HF_HOME"]}
    # The health check reads the file the bot writes, under the data directory.
    heartbeat = Settings(_env_file=None, data_dir=values["BOT_DATA_DIR"]).heartbeat_path()
    assert healthcheck_command() == ["python", "-m", "bot.health", str(heartbeat)]


def test_compose_reserves_the_gpu_reads_env_restarts_and_checks_health() -> None:
    bot = compose()
    assert bot["build"] == "."
    assert bot["env_file"] == ".env"
    assert bot["restart"] == "on-failure:5"  # a bad token or setting exits at once: not forever
    (gpu,) = bot["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert bot["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
    # .env (a copy of .env.example) lists every setting; these must not move the state off
    # the volumes or the metrics server off the published port.
    values = env()
    assert bot["environment"] == {
        "BOT_DATA_DIR": values["BOT_DATA_DIR"],
        "BOT_METRICS_HOST": values["BOT_METRICS_HOST"],
    }
    mounts = {volume.split(":")[1] for volume in bot["volumes"]}
    assert mounts == {values["BOT_DATA_DIR"], values["HF_HOME"]}
    assert all(port.startswith("127.0.0.1:") for port in bot["ports"])


def test_documented_container_commands_exist(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    docker_page = (ROOT / "docs" / "docker.md").read_text()
    code = re.findall(r"```\w*\n(.*?)```|`([^`\n]+)`", docker_page, re.S)
    texts = [block or span for block, span in code] + [(ROOT / "compose.yaml").read_text()]
    commands = {c for text in texts for c in re.findall(r"python -m bot ([a-z][a-z ]*[a-z])", text)}
    assert {"models pull", "doctor", "usage stats", "health"} <= commands
    for command in sorted(commands):
        with pytest.raises(SystemExit) as exit:
            build_parser().parse_args([*command.split(), "--help"])
        assert exit.value.code == 0, f"python -m bot {command}: {capsys.readouterr().err}"
    assert "cp .env.example .env" in readme and "docker compose up -d" in readme
    assert "](docs/docker.md)" in readme


def test_env_example_copied_to_env_gives_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Docker path starts with `cp .env.example .env`: that file must load as is."""
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    assert Settings() == Settings(_env_file=None)


def test_dockerignore_keeps_secrets_and_state_out_of_the_build() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "data", "*.sqlite3*"):
        assert entry in ignored
    copied = [args.split()[:-1] for args in arguments("COPY")]
    assert {path for paths in copied for path in paths} == {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "locks",
        "bot",
        "handlers",
    }


def test_the_vllm_compose_file_points_the_bots_chat_at_its_server() -> None:
    services = yaml.safe_load((ROOT / "compose.vllm.yaml").read_text())["services"]
    vllm, bot = services["vllm"], services["bot"]
    served = next(arg.split("=", 1)[1] for arg in vllm["command"] if arg.startswith("--model="))
    assert bot["environment"] == {
        "BOT_CHAT__ENGINE": "openai",
        "BOT_CHAT__OPENAI__BASE_URL": "http://vllm:8000/v1",
        "BOT_CHAT__OPENAI__MODEL": served,
    }
    assert bot["depends_on"]["vllm"]["condition"] == "service_healthy"


def test_the_ray_compose_file_runs_the_bot_as_a_node_of_a_cluster_with_a_worker_per_gpu() -> None:
    services = yaml.safe_load((ROOT / "compose.ray.yaml").read_text())["services"]
    head, bot = services["ray-head"], services["bot"]
    install = "pip install --no-cache-dir -r /app/locks/ray.txt '/app[ray]'"
    assert install in head["build"]["dockerfile_inline"]
    assert {s["image"] for s in services.values()} == {"assistant-bot-ray"}  # one Ray version
    workers = [s for name, s in services.items() if name.startswith("ray-gpu-")]
    cards = [w["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for w in workers]
    assert sorted(cards) == [["0"], ["1"]]
    assert all("--address=ray-head:6379" in w["command"] for w in workers)
    # The bot joins as a node and drives the cluster from there (auto), never through ray://.
    assert bot["command"][-1].startswith("ray start --address=ray-head:6379")
    assert bot["command"][-1].endswith("exec python -m bot run")
    assert (bot["environment"]["BOT_BACKEND"], bot["environment"]["BOT_RAY__ADDRESS"]) == (
        "ray",
        "auto",
    )
    assert all(s["environment"]["RAY_AUTH_MODE"] == "token" for s in services.values())
    assert "deploy" not in bot  # its GPUs are the workers'
