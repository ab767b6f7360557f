"""The locks (docs/dependencies.md) agree with pyproject.toml and with each other, and the
README's two commands, the Dockerfile and CI install from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PYTHONS = ("3.11", "3.12", "3.13")


def pins(lock: str, python: str) -> dict[str, Version]:
    """The lock's exact releases that apply on Linux x86-64 under ``python``."""
    environment = {"python_version": python, "python_full_version": f"{python}.0",
                   "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix"}  # fmt: skip
    found: dict[str, Version] = {}
    for line in (LOCKS / lock).read_text().splitlines():
        if not line or line.startswith((" ", "#", "-")):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        name = canonicalize_name(requirement.name)
        assert name not in found, f"{lock} pins {name} twice for Python {python}"
        found[name] = Version(specifier.version)
    return found


def requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's requirements with these extras, the project's own extras expanded."""
    listed = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        for requirement in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
                listed += requirements(*requirement.extras)
            else:
                listed.append(requirement)
    return listed


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize(("lock", "extras"), [("bot.txt", ()), ("ray.txt", ("ray",)),
                                              ("dev.txt", ("dev",))])  # fmt: skip
def test_each_lock_pins_every_requirement_within_its_range(
    lock: str, extras: tuple[str, ...], python: str
) -> None:
    locked = pins(lock, python)
    for requirement in requirements(*extras):
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": python, "extra": ""}
        ):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} has no {name}: run locks/refresh"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock} pins {name}=={locked[name]}, outside pyproject.toml's "
            f"{requirement.specifier}: run locks/refresh"
        )


@pytest.mark.parametrize("python", PYTHONS)
def test_the_locks_agree_and_leave_out_pytorchs_cuda_libraries(python: str) -> None:
    dev = pins("dev.txt", python)
    for lock in ("bot.txt", "ray.txt"):
        for name, version in pins(lock, python).items():
            assert dev.get(name) == version, f"{lock} and dev.txt differ on {name}"
    constraints = [Requirement(line) for line in (LOCKS / "pins.txt").read_text().splitlines()
                   if line and not line.startswith("#")]  # fmt: skip
    for constraint in constraints:
        assert dev[canonicalize_name(constraint.name)] in constraint.specifier
    assert not [name for name in dev if re.match(r"nvidia-|cuda-|triton$", name)]


def test_the_fast_moving_libraries_stop_before_their_next_major() -> None:
    bounded = {canonicalize_name(r.name): r for r in requirements("dev")}
    for name in ("openai", "transformers", "diffusers", "discord-py", "ray"):
        uppers = [s for s in bounded[name].specifier if s.operator == "<"]
        assert len(uppers) == 1, f"{name} has no upper bound"
        assert Version(uppers[0].version).minor == 0, f"{name}: bound it at the next major"


def test_the_readme_the_image_and_ci_install_from_the_locks() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"\*\*Run the (bot|tests)\*\*.*?```bash\n(.*?)\n```", readme, re.S)
    commands = dict(blocks)
    assert "pip install -r locks/bot.txt -e ." in commands["bot"]
    assert "pip install -r locks/dev.txt -e '.[dev]'" in commands["tests"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == commands["tests"]  # exactly the README's test command, last
    assert "pip install -r locks/bot.txt ." in (ROOT / "Dockerfile").read_text()
