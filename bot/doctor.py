"""``python -m bot doctor``: is this machine ready to run the bot, and if not, what to do.

Each check gives one or more rows (ok, warn, FAIL or skip) with a fix for every problem;
the command exits 1 when any row failed, so scripts and containers can gate on it.
Nothing here needs the network unless ``--online`` asks for a Discord login. Rows are
printed as they come, the quick ones first: only the GPU and model rows import torch
(seconds on a small machine).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import importlib.metadata
import json
import logging
import os
import shutil
import sqlite3
import struct
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import aiohttp
import aiosqlite
import discord
from huggingface_hub import constants as hub_constants
from packaging.requirements import Requirement as PackageRequirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from bot.models import (
    PULL_COMMAND,
    Requirement,
    State,
    hub_reachable,
    human_bytes,
    presence,
    requirements,
)
from bot.settings import TOKEN_SHAPE, Settings, host_variables, unknown_variables
from bot.usage import migrate, migrations

if TYPE_CHECKING:
    import torch

DISTRIBUTION = "assistant-bot"
KEY_PACKAGES = ("torch", "transformers", "diffusers", "discord.py", "huggingface_hub", "datasets")
"""Packages shown one per row; the other dependencies share a row."""

FLOAT_WIDTHS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
"""safetensors dtypes that loading converts to the configured dtype; others stay as stored."""

GPU_HEADROOM = 0.9
"""Share of GPU memory that weights may fill: batches need the rest for activations."""


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Row:
    check: str
    status: Status
    detail: str
    fix: str = ""


# Python and packages


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Row:
    try:
        wanted = importlib.metadata.metadata(DISTRIBUTION)["Requires-Python"] or ">=3.11"
    except importlib.metadata.PackageNotFoundError:
        wanted = ">=3.11"
    running = ".".join(map(str, sys.version_info[:3]))
    if SpecifierSet(wanted).contains(running, prereleases=True):
        return Row("python", Status.OK, f"{running} (needs {wanted})")
    return Row(
        "python",
        Status.FAIL,
        f"{running}, but the bot needs {wanted}",
        f"create the virtual environment with a Python {wanted.lstrip('>=')} or newer",
    )


def check_packages() -> list[Row]:
    """Installed versions against the project's minimums (from its installed metadata)."""
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return [
            Row(
                "packages",
                Status.FAIL,
                f"{DISTRIBUTION} is not installed, so its dependencies are unknown",
                "run `pip install -e .` in the repository",
            )
        ]
    minimums = {
        canonicalize_name(r.name): r
        for r in map(PackageRequirement, declared)
        if r.marker is None  # extras (dev tools) are not needed to run the bot
    }
    rows = []
    for name in KEY_PACKAGES:
        requirement = minimums.pop(canonicalize_name(name), None)
        rows.append(_package_row(name, requirement.specifier if requirement else SpecifierSet()))
    others = [_package_row(r.name, r.specifier) for r in minimums.values()]
    broken = [row for row in others if row.status is not Status.OK]
    if broken:
        rows.append(
            Row(
                "other packages",
                Status.FAIL,
                "; ".join(row.detail for row in broken),
                "run `pip install -e .` again to install or upgrade them",
            )
        )
    else:
        rows.append(Row("other packages", Status.OK, f"{len(others)} more, all up to date"))
    return rows


def _package_row(name: str, wanted: SpecifierSet) -> Row:
    version = _installed(name)
    needs = f" (needs {wanted})" if str(wanted) else ""
    if version is None:
        return Row(name, Status.FAIL, f"{name} is not installed{needs}", "run `pip install -e .`")
    if not wanted.contains(version, prereleases=True):
        return Row(
            name,
            Status.FAIL,
            f"{name} {version} is too old{needs}",
            f"pip install '{name}{wanted}'",
        )
    return Row(name, Status.OK, f"{version}{needs}")


# Accelerator


NO_GPU_FIX = (
    "install a CUDA build of torch (https://pytorch.org) and check that `nvidia-smi` sees the "
    "card, or set BOT_DEVICE=cpu to run on the CPU deliberately"
)


def check_gpu(settings: Settings) -> tuple[Row, int | None]:
    """The accelerators the bot will use, and the smallest one's memory in bytes when they
    are CUDA GPUs."""
    checked = [check_device(device) for device in settings.devices()]
    if len(checked) == 1:
        return checked[0]
    for row, _ in checked:
        if row.status is not Status.OK:
            return row, None
    detail = "; ".join(f"{device}: {row.detail}" for device, (row, _) in
                       zip(settings.devices(), checked, strict=True))  # fmt: skip
    sizes = [size for _, size in checked]
    return Row("gpu", Status.OK, detail), None if None in sizes else min(filter(None, sizes))


def check_device(setting: str) -> tuple[Row, int | None]:
    """One device of BOT_DEVICE, and its memory in bytes when it is a CUDA GPU."""
    if setting == "cpu":
        return Row("gpu", Status.OK, "none: CPU by configuration (BOT_DEVICE=cpu)"), None
    import torch

    from bot.executor.registry import resolve_device

    build = (
        f"torch {torch.__version__} with CUDA {torch.version.cuda}"
        if torch.version.cuda
        else f"torch {torch.__version__} is a CPU-only build"
    )
    device = resolve_device(setting)
    if device == "cpu":  # auto found none: the bot runs, slowly for images and chat
        detail = f"none found ({build}): runs on the CPU, slowly for images and chat"
        return Row("gpu", Status.WARN, detail, NO_GPU_FIX), None
    if device == "mps":
        if torch.backends.mps.is_available():
            return Row("gpu", Status.OK, "Apple GPU (MPS)"), None
        return Row("gpu", Status.FAIL, "BOT_DEVICE=mps, but MPS is not available", NO_GPU_FIX), None
    if not device.startswith("cuda"):
        return Row("gpu", Status.WARN, f"BOT_DEVICE={device} is not checked here"), None
    if not torch.cuda.is_available():
        return Row(
            "gpu", Status.FAIL, f"BOT_DEVICE={device}, but no CUDA GPU ({build})", NO_GPU_FIX
        ), None
    try:
        index = torch.device(device).index or 0
    except RuntimeError:
        return Row(
            "gpu", Status.FAIL, f"BOT_DEVICE={device} is not a device name", NO_GPU_FIX
        ), None
    count = torch.cuda.device_count()
    if index >= count:
        return (
            Row(
                "gpu",
                Status.FAIL,
                f"BOT_DEVICE={device}, but torch sees {count} GPU(s)",
                f"set BOT_DEVICE to one of cuda:0 .. cuda:{count - 1}",
            ),
            None,
        )
    properties = torch.cuda.get_device_properties(index)
    detail = f"{properties.name}, {human_bytes(properties.total_memory)}, CUDA {torch.version.cuda}"
    return Row("gpu", Status.OK, detail), properties.total_memory


# Discord token


def _discord_token(settings: Settings) -> str:
    return settings.discord_token.get_secret_value() if settings.discord_token else ""


def check_variables() -> Row:
    """BOT_ variables (in the environment or .env) that set nothing: a typo the bot would
    otherwise ignore without a word."""
    unknown = unknown_variables(host_variables())
    if not unknown:
        return Row("settings", Status.OK, "every BOT_ variable names a setting")
    said = "; ".join(
        f"{name} sets nothing" + (f" (did you mean {close}?)" if close else "")
        for name, close in unknown
    )
    return Row(
        "settings",
        Status.WARN,
        said,
        "rename or remove it; `python -m bot settings` lists them all",
    )


def check_token(settings: Settings) -> Row:
    """The token's presence and shape; it is never printed."""
    token = _discord_token(settings)
    if not token:
        return Row(
            "token",
            Status.FAIL,
            "DISCORD_TOKEN is not set",
            "put your bot's token in .env as DISCORD_TOKEN=... (README: Discord setup)",
        )
    if not TOKEN_SHAPE.match(token):
        return Row(
            "token",
            Status.FAIL,
            "DISCORD_TOKEN does not look like a bot token (three dot-separated parts)",
            "copy it again from the Bot page of your application (Reset Token)",
        )
    head = token.split(".", 1)[0]
    try:  # the first part is the bot's user id, which is public
        user_id = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except ValueError:
        user_id = ""
    suffix = f" for bot user {user_id}" if user_id.isdigit() else ""
    return Row("token", Status.OK, f"set, shaped like a bot token{suffix}")


async def check_login(settings: Settings, online: bool, timeout: float = 10.0) -> Row:
    """Log in to Discord's REST API with the token (only with ``--online``)."""
    token = _discord_token(settings)
    if not online:
        return Row("discord login", Status.SKIP, "not checked (offline); add --online to try it")
    if not TOKEN_SHAPE.match(token):
        return Row("discord login", Status.SKIP, "no usable token to try")
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        user = await asyncio.wait_for(http.static_login(token), timeout)
    except discord.LoginFailure:
        return Row(
            "discord login",
            Status.FAIL,
            "Discord rejected the token",
            "reset the token on the Bot page of your application and update .env",
        )
    except (TimeoutError, aiohttp.ClientError, OSError, discord.HTTPException) as exc:
        return Row(
            "discord login",
            Status.FAIL,
            f"cannot reach Discord: {type(exc).__name__}: {exc}".rstrip(": "),
            "check this machine's network and firewall (HTTPS to discord.com)",
        )
    finally:
        await http.close()
    return Row("discord login", Status.OK, f"logged in as {user['username']} (id {user['id']})")


# Usage database


async def check_database(settings: Settings) -> Row:
    """Open the usage database and apply pending migrations, as start-up would.

    It does not go through ``UsageLog``: opening that marks running jobs interrupted, which
    would be wrong while the bot is serving.
    """
    path = settings.usage_path()
    latest = max(number for number, _, _ in migrations())
    fix = "set BOT_USAGE__PATH (or BOT_DATA_DIR) to a file in a writable directory"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        for place in (path, path.parent) if existed else (path.parent,):
            if not os.access(place, os.W_OK):
                raise PermissionError(f"{place} is not writable")
        async with aiosqlite.connect(path) as db:
            await db.execute("PRAGMA busy_timeout = 5000")
            async with db.execute("PRAGMA user_version") as cursor:
                (before,) = await cursor.fetchone()
            version = await migrate(db)
    except (OSError, sqlite3.Error) as exc:
        return Row("database", Status.FAIL, f"cannot open {path}: {exc}", fix)
    if version > latest:
        return Row(
            "database",
            Status.WARN,
            f"{path}: schema {version}, newer than this bot's {latest}",
            "update the bot to the version that wrote this database",
        )
    if not existed:
        note = " (created)"
    elif before < version:
        note = f" (migrated from {before})"
    else:
        note = ""
    return Row("database", Status.OK, f"{path}: schema {version} of {latest}{note}")


# Models and memory


def safetensors_header(path: Path) -> dict[str, dict]:
    """A safetensors file's tensor table: name -> dtype, shape and byte offsets."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{path.name} has an implausible {length}-byte header")
        header = json.loads(file.read(length))
    header.pop("__metadata__", None)
    return header


def loaded_bytes(files: Sequence[Path], dtype: torch.dtype) -> int:
    """Memory the weights take once loaded as ``dtype`` (floating tensors are converted)."""
    total = 0
    for file in files:
        for entry in safetensors_header(file).values():
            start, end = entry["data_offsets"]
            width = FLOAT_WIDTHS.get(entry["dtype"])
            total += end - start if width is None else (end - start) // width * dtype.itemsize
    return total


def _memory_group(requirement: Requirement) -> str:
    """Parts loaded together (a model with its vocoder or safety model) share a group."""
    if requirement.role in ("model", "vocoder", "safety model"):
        return requirement.task
    return requirement.label


def check_models(settings: Settings, gpu_bytes: int | None) -> list[Row]:
    from bot.executor.registry import resolve_device, resolve_dtype

    device = resolve_device(settings.devices()[0])
    dtype = resolve_dtype(settings.dtype, device)
    dtype_name = str(dtype).removeprefix("torch.")
    rows: list[Row] = []
    groups: dict[str, int] = {}
    for requirement in requirements(settings):
        check = f"model {requirement.label}"
        found = presence(requirement)
        if not found.ready:
            fix = (
                f"fix {requirement.setting}"
                if requirement.local or found.state is State.INVALID
                else f"run `{PULL_COMMAND} {requirement.task}`"
            )
            rows.append(Row(check, Status.FAIL, f"{requirement.source}: {found.detail}", fix))
            continue
        assert found.path is not None
        where = f"{requirement.source}: {found.state.value}, {human_bytes(found.size)} on disk"
        if requirement.repo_type == "dataset" or found.path.is_file():
            rows.append(Row(check, Status.OK, where))
            continue
        weights = requirement.weight_files(found.path)
        if not weights:
            rows.append(
                Row(
                    check,
                    Status.FAIL,
                    f"{requirement.source}: no safetensors weights",
                    f"set {requirement.setting} to a model with safetensors weights",
                )
            )
            continue
        try:
            memory = loaded_bytes(weights, dtype)
        except (OSError, ValueError, KeyError) as exc:
            rows.append(
                Row(
                    check,
                    Status.FAIL,
                    f"{requirement.source}: unreadable weights ({exc})",
                    f"delete {found.path} and run `{PULL_COMMAND} {requirement.task}`",
                )
            )
            continue
        detail = f"{where}, ~{human_bytes(memory)} as {dtype_name}"
        if requirement.label == "chat":
            batching, cache = chat_batching(settings, device, found.path, dtype)
            memory += cache
            detail += f"; {batching}"
        group = _memory_group(requirement)
        groups[group] = groups.get(group, 0) + memory
        rows.append(Row(check, Status.OK, detail))
    rows.extend(memory_rows(groups, settings.memory_budget_bytes(), gpu_bytes, dtype_name))
    return rows


def check_workers(settings: Settings) -> Row:
    """Which worker process holds which tasks' models (BOT_WORKERS_PER_DEVICE)."""
    from bot.app import worker_classes, workers_by_class

    if settings.backend == "ray":
        return Row("workers", Status.OK, "a Ray Serve deployment per task (BOT_BACKEND=ray)")
    if settings.worker == "thread":
        return Row("workers", Status.OK, "threads of the bot's own process (BOT_WORKER=thread)")
    setting = f"BOT_WORKERS_PER_DEVICE={settings.workers_per_device}"
    if not workers_by_class(settings):
        return Row("workers", Status.OK, f"one process per device for every task ({setting})")
    remote = settings.chat.engine == "openai"
    tasks = [t for t in settings.models.model_dump() if not (remote and t == "chat")]
    classes = "; ".join(f"{name}: {', '.join(members)}"
                        for name, members in worker_classes(tasks).items())  # fmt: skip
    detail = f"a process per class of task ({setting}), each with its models only: {classes}"
    return Row("workers", Status.OK, detail)


def chat_batching(
    settings: Settings, device: str, path: Path, dtype: torch.dtype
) -> tuple[str, int]:
    """How chat will batch on ``device``, and the KV cache continuous batching reserves."""
    from transformers import AutoConfig

    from handlers.chat import continuous_on, model_context
    from handlers.continuous import cache_bytes

    chat = settings.chat
    if not continuous_on(chat.continuous, device):
        why = "off" if chat.continuous == "off" else f"auto, which is for CUDA GPUs ({device})"
        return f"static batching (BOT_CHAT__CONTINUOUS={why})", 0
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        context = min(model_context(config) or chat.context_tokens, chat.context_tokens)
        cache = cache_bytes(config, dtype, chat.max_running, context)
    except (OSError, ValueError, AttributeError) as exc:
        return f"continuous batching (KV cache size unknown: {exc})", 0
    graphs = ", steps as CUDA graphs" if chat.cuda_graphs and device.startswith("cuda") else ""
    return (
        f"continuous batching{graphs}, {chat.max_running} conversations at once, "
        f"+{human_bytes(cache)} KV cache"
    ), cache


def memory_rows(
    groups: dict[str, int], budget: int | None, gpu_bytes: int | None, dtype_name: str
) -> list[Row]:
    """Weights against the budget and the GPU: the largest must fit alone, all need not."""
    if not groups:
        return [Row("memory", Status.SKIP, "no model to measure")]
    total = sum(groups.values())
    largest, largest_bytes = max(groups.items(), key=lambda item: item[1])
    gpu_room = int(gpu_bytes * GPU_HEADROOM) if gpu_bytes else None
    suggested = f"{gpu_room // 2**30}" if gpu_room else ""
    rows = []
    if gpu_room and largest_bytes > gpu_room:
        rows.append(
            Row(
                "memory",
                Status.FAIL,
                f"{largest} alone needs ~{human_bytes(largest_bytes)} as {dtype_name}, more than "
                f"the GPU's {human_bytes(gpu_bytes or 0)} leaves room for",
                "pick a smaller model, or BOT_DTYPE=float16 if it is float32",
            )
        )
    if budget is not None and largest_bytes > budget:
        rows.append(
            Row(
                "memory",
                Status.FAIL,
                f"{largest} alone needs ~{human_bytes(largest_bytes)} as {dtype_name}, over the "
                f"{human_bytes(budget)} of BOT_MEMORY_BUDGET_GB",
                f"raise BOT_MEMORY_BUDGET_GB to at least {largest_bytes / 2**30:.1f}, or pick a "
                "smaller model",
            )
        )
    if gpu_room and budget is not None and budget > gpu_room:
        rows.append(
            Row(
                "memory",
                Status.FAIL,
                f"BOT_MEMORY_BUDGET_GB ({human_bytes(budget)}) is more than the GPU can hold "
                f"beside running batches ({human_bytes(gpu_room)})",
                f"set BOT_MEMORY_BUDGET_GB={suggested}",
            )
        )
    if gpu_room and budget is None and total > gpu_room:
        rows.append(
            Row(
                "memory",
                Status.FAIL,
                f"all models need ~{human_bytes(total)} as {dtype_name} and stay loaded (no "
                f"budget), more than the GPU's {human_bytes(gpu_bytes or 0)} can hold",
                f"set BOT_MEMORY_BUDGET_GB={suggested} so models take turns",
            )
        )
    if rows:
        return rows
    limits = [f"budget {human_bytes(budget)}" if budget is not None else "no budget"]
    if gpu_bytes:
        limits.append(f"GPU {human_bytes(gpu_bytes)}")
    detail = f"~{human_bytes(total)} for all models as {dtype_name} ({', '.join(limits)})"
    if budget is not None and total > budget:
        return [
            Row(
                "memory",
                Status.WARN,
                f"{detail}: models take turns, the least recently used is unloaded",
                "raise BOT_MEMORY_BUDGET_GB to keep every model loaded, if memory allows",
            )
        ]
    return [Row("memory", Status.OK, detail)]


def check_hub_cache(online: bool) -> Row:
    """The model cache, and how the hub is used: the configured mode, or with ``online``
    whether it answers."""
    cache = Path(hub_constants.HF_HUB_CACHE)
    existing = next((p for p in (cache, *cache.parents) if p.exists()), cache)
    free = human_bytes(shutil.disk_usage(existing).free)
    where = f"{cache}, {free} free"
    hub = hub_constants.ENDPOINT
    if hub_constants.HF_HUB_OFFLINE:
        return Row(
            "hub cache", Status.OK, f"{where}; offline (HF_HUB_OFFLINE=1): downloaded models only"
        )
    if not online:
        return Row(
            "hub cache",
            Status.OK,
            f"{where}; downloads from {hub} allowed (--online checks it answers)",
        )
    if hub_reachable():
        return Row("hub cache", Status.OK, f"{where}; {hub} answers")
    return Row(
        "hub cache", Status.WARN,
        f"{where}; {hub} cannot be reached: downloaded models still load, pulling others fails",
        "check the network or HTTPS_PROXY, point HF_ENDPOINT at a mirror, or copy a model "
        "cache here and set HF_HUB_OFFLINE=1",
    )  # fmt: skip


def check_voice() -> Row:
    """Voice channels are optional: without their libraries everything else works."""
    from bot.voice_audio import missing_voice_support

    missing = missing_voice_support()
    if missing is None:
        return Row("voice", Status.OK, "PyNaCl, davey and libopus present: /voice works")
    what, _, fix = missing.partition(": ")
    return Row("voice", Status.WARN, f"{what}; /voice and /speak in calls are off", fix)


def check_chat_engine(settings: Settings) -> Row:
    """Where chat's answers come from when another server gives them (never its key)."""
    server = settings.chat.openai
    model = settings.default_models()["chat"]
    key = ", with an API key" if server.api_key else ""
    detail = f"OpenAI-compatible server at {server.base_url}, model {model}{key}"
    return Row("chat engine", Status.OK, detail)


# Ray


def _ray_tasks(settings: Settings) -> list[str]:
    """The tasks that get a deployment (chat from another server does not)."""
    return [t for t in settings.default_models() if t != "chat" or settings.chat.engine == "local"]


def _per_replica(settings: Settings, task: str) -> str:
    spec = settings.ray.deployment(task)
    gpus = (
        "a share of one GPU" if spec.gpus_per_replica is None else f"{spec.gpus_per_replica:g} GPU"
    )
    scale = (
        f"{spec.max_replicas} replica(s)"
        if spec.min_replicas == spec.max_replicas
        else f"{spec.min_replicas}-{spec.max_replicas} replicas (autoscaling)"
    )
    return f"{scale}, {gpus} and {spec.cpus_per_replica:g} CPU each"


def check_ray(settings: Settings) -> list[Row]:
    """BOT_BACKEND=ray: the cluster (reached only when BOT_RAY__ADDRESS names one), its
    GPUs, and each task's deployment with its running replicas."""
    from bot.executor.errors import BackendUnavailable
    from bot.executor.ray_backend import INSTALL, import_ray

    address = settings.ray.address
    try:
        ray = import_ray()
    except BackendUnavailable as exc:
        return [Row("backend", Status.FAIL, f"ray: {exc}".split("; run")[0], f"run `{INSTALL}`")]
    tasks = _ray_tasks(settings)
    if address is None and not ray.is_initialized():
        cpus = settings.ray.num_cpus or os.cpu_count()
        rows = [Row("backend", Status.OK, f"ray: a local cluster the bot starts ({cpus} CPUs)")]
        return rows + [
            Row(f"ray {task}", Status.OK, f"deployed at start: {_per_replica(settings, task)}")
            for task in tasks
        ]
    rows = [Row("backend", Status.OK, f"ray: the cluster at {address or 'this process'}")]
    connected = ray.is_initialized()
    try:
        if not connected:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        apps = _serve_apps()
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        fix = "start the cluster, or check BOT_RAY__ADDRESS (auto on a node of the cluster)"
        return [*rows, Row("ray cluster", Status.FAIL, f"cannot reach {address}: {reason}", fix)]
    finally:
        if not connected and ray.is_initialized():
            ray.shutdown()
    gpus = resources.get("GPU", 0)
    kinds = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
    gpu_text = (
        f"{gpus:g} GPU(s)" + (f" ({', '.join(kinds)})" if kinds else "") if gpus else "no GPU"
    )
    detail = f"{nodes} node(s): {resources.get('CPU', 0):g} CPUs, {gpu_text}"
    rows.append(Row("ray cluster", Status.OK, detail))
    prefix = f"{settings.ray.prefix}-"
    others = [name.removeprefix(prefix) for name in apps if name.startswith(prefix)]
    for task in dict.fromkeys([*tasks, *others]):  # and the bot's deployments of other tasks
        app = apps.get(f"{settings.ray.prefix}-{task}")
        if app is None:
            plan = _per_replica(settings, task)
            rows.append(Row(f"ray {task}", Status.OK, f"not deployed (the bot deploys it): {plan}"))
            continue
        state, running, wanted, message = app
        status = Status.OK if state == "RUNNING" else Status.WARN
        detail = f"{running} of {wanted} replicas running ({_per_replica(settings, task)})"
        fix = message if status is Status.WARN else ""
        rows.append(Row(f"ray {task}", status, f"{state.lower()}: {detail}", fix))
    return rows


def _serve_apps() -> dict[str, tuple[str, int, int, str]]:
    """Each Serve application: its state, running and wanted replicas, and Serve's message."""
    from ray import serve

    try:
        applications = serve.status().applications
    except Exception:  # Serve is not running on the cluster: nothing is deployed
        return {}
    apps = {}
    for name, app in applications.items():
        states = [s for d in app.deployments.values() for s in d.replica_states.items()]
        running = sum(n for state, n in states if str(getattr(state, "value", state)) == "RUNNING")
        wanted = sum(n for _, n in states)
        messages = "; ".join(
            m for m in [app.message, *(d.message for d in app.deployments.values())] if m
        )
        apps[name] = (str(getattr(app.status, "value", app.status)), running, wanted, messages)
    return apps


# The whole report


async def diagnose(settings: Settings, online: bool = False) -> AsyncIterator[Row]:
    """Each row as soon as it is known; the ones that need torch come last."""
    yield check_python()
    for row in check_packages():
        yield row
    yield check_variables()
    yield check_token(settings)
    yield await check_login(settings, online)
    yield await check_database(settings)
    yield await asyncio.to_thread(check_hub_cache, online)
    yield check_voice()
    if settings.chat.engine == "openai":
        yield check_chat_engine(settings)
    if settings.backend == "ray":
        for row in await asyncio.to_thread(check_ray, settings):
            yield row
    gpu_row, gpu_bytes = await asyncio.to_thread(check_gpu, settings)
    yield gpu_row
    yield check_workers(settings)
    for row in await asyncio.to_thread(check_models, settings, gpu_bytes):
        yield row


COLOURS = {
    Status.OK: "\033[32m",
    Status.WARN: "\033[33m",
    Status.FAIL: "\033[31m",
    Status.SKIP: "\033[2m",
}


CHECK_WIDTH = 19
"""Width of the check column when rows are printed as they come: "model speak vocoder"."""


def render_row(row: Row, width: int, colour: bool) -> str:
    """Status, check and detail, and under a problem its fix."""
    mark = f"{row.status.value:<4}"
    if colour:
        mark = f"{COLOURS[row.status]}{mark}\033[0m"
    line = f"{mark}  {row.check:<{width}}  {row.detail}\n"
    return line + (f"{'':4}  {'':<{width}}  fix: {row.fix}\n" if row.fix else "")


def verdict(rows: Sequence[Row]) -> str:
    failed = sum(row.status is Status.FAIL for row in rows)
    return "\n" + (f"{failed} problem(s) to fix" if failed else "ready to run") + "\n"


def render(rows: Sequence[Row], colour: bool) -> str:
    """The whole table at once, its check column as wide as the longest name."""
    width = max(len(row.check) for row in rows)
    return "".join(render_row(row, width, colour) for row in rows) + verdict(rows)


def doctor(settings: Settings, online: bool = False, out: TextIO | None = None) -> int:
    """Print the report row by row; 1 when anything failed, else 0."""
    out = out or sys.stdout
    colour = out.isatty() and "NO_COLOR" not in os.environ

    async def report() -> list[Row]:
        rows = []
        async for row in diagnose(settings, online):
            rows.append(row)
            out.write(render_row(row, CHECK_WIDTH, colour))
            out.flush()
        return rows

    rows = asyncio.run(report())
    out.write(verdict(rows))
    return 1 if any(row.status is Status.FAIL for row in rows) else 0
