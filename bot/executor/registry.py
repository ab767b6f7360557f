"""Loads models lazily and keeps them resident within a memory budget (least recently used out).

Only the accelerator thread calls ``get``, ``evict`` and ``unload_all``;
``snapshot`` is safe from any thread.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bot.executor.backend import LoadedModelInfo
from bot.executor.errors import DeviceUnavailable, ModelNotDownloaded, not_downloaded
from handlers.base import LoadSpec, Task

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(device: str) -> str:
    """``auto`` picks cuda, then mps, then cpu."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> None:
    """Refuse, saying how to fix it, a device this machine or this PyTorch cannot use:
    before any model loads, not as a traceback from the first one."""
    kind, _, index = device.partition(":")
    if index and not index.isdigit():
        raise DeviceUnavailable(f"device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        if torch.version.cuda is None:
            raise DeviceUnavailable(
                f"device {device!r}: this PyTorch is a CPU-only build; install its CUDA build "
                "(`pip install --force-reinstall torch`) or use the cpu"
            )
        count = torch.cuda.device_count()
        if count == 0 or (index and int(index) >= count):
            raise DeviceUnavailable(
                f"device {device!r} is not available: this machine shows {count} CUDA GPU(s)"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"device {device!r} is not available on this machine")
    elif kind not in ("cpu", "cuda", "mps"):
        raise DeviceUnavailable(f"device {device!r}: use auto, cpu, cuda, cuda:N or mps")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is half precision on an accelerator and float32 on the CPU."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}") from None


def estimate_bytes(source: str) -> int | None:
    """Size of the safetensors weights already on disk, or None when unknown before loading."""
    path = Path(source)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(source, local_files_only=True))
        except Exception:
            return None
    sizes = [f.stat().st_size for f in path.rglob("*.safetensors")]
    return sum(sizes) if sizes else None


@dataclass
class _Resident:
    task: str
    source: str
    model: Any
    bytes: int
    last_used: float
    handler: Task[Any, Any]

    def busy(self) -> bool:
        try:
            return self.handler.busy(self.model)
        except Exception:
            log.exception("could not tell whether %s model %s is busy", self.task, self.source)
            return False

    def unload(self) -> None:
        """Stop what the model runs beside its weights; a failure must not keep it resident."""
        try:
            self.handler.unload(self.model)
        except Exception:
            log.exception("unloading %s model %s failed", self.task, self.source)


class ModelRegistry:
    def __init__(
        self, device: str = "auto", dtype: str = "auto", budget_bytes: int | None = None
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.budget_bytes = budget_bytes
        self._resident: dict[tuple[str, str], _Resident] = {}
        self._lock = threading.Lock()

    def get(self, task: Task[Any, Any], source: str) -> Any:
        """The loaded model, loading it (and evicting others) first if needed.

        A failed load leaves nothing cached, so the next request tries again.
        """
        key = (task.name, source)
        with self._lock:
            resident = self._resident.get(key)
            if resident is not None:
                resident.last_used = time.monotonic()
                return resident.model
        estimate = estimate_bytes(source)
        if estimate is not None:
            self._evict_until_fits(estimate, keep=key)
        log.info("loading %s model %s on %s as %s", task.name, source, self.device, self.dtype)
        started = time.monotonic()
        try:
            model = task.load(LoadSpec(source=source, device=self.device, dtype=self.dtype))
        except Exception as exc:
            if not not_downloaded(exc):
                raise
            raise ModelNotDownloaded(task.name, source, pipeline=task.pipeline) from exc
        size = task.model_bytes(model)
        with self._lock:
            self._resident[key] = _Resident(task.name, source, model, size, time.monotonic(), task)
        log.info("loaded %s in %.1fs (%.0f MiB)", source, time.monotonic() - started, size / 2**20)
        self._evict_until_fits(0, keep=key)
        return model

    def _evict_until_fits(self, incoming: int, keep: tuple[str, str]) -> None:
        if self.budget_bytes is None:
            return
        while True:
            with self._lock:
                used = sum(r.bytes for r in self._resident.values())
                # A model still answering requests (continuous batching) is not evicted.
                others = [r for k, r in self._resident.items() if k != keep and not r.busy()]
                if used + incoming <= self.budget_bytes or not others:
                    if used + incoming > self.budget_bytes:
                        log.warning(
                            "%s needs %.0f MiB, over the %.0f MiB budget, and runs alone",
                            keep[1],
                            (used + incoming) / 2**20,
                            self.budget_bytes / 2**20,
                        )
                    return
                victim = min(others, key=lambda r: r.last_used)
            self.evict(victim.task, victim.source)

    def evict(self, task: str, source: str) -> None:
        with self._lock:
            resident = self._resident.pop((task, source), None)
        if resident is None:
            return
        log.info("evicting %s model %s (%.0f MiB)", task, source, resident.bytes / 2**20)
        resident.unload()
        del resident
        self.release_memory()

    def unload_all(self) -> None:
        with self._lock:
            residents = list(self._resident.values())
            self._resident.clear()
        for resident in residents:
            resident.unload()
        del residents
        self.release_memory()

    def release_memory(self) -> None:
        gc.collect()
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def snapshot(self) -> list[LoadedModelInfo]:
        with self._lock:
            return [
                LoadedModelInfo(
                    r.task,
                    r.source,
                    self.device,
                    str(self.dtype).removeprefix("torch."),
                    r.bytes,
                    r.last_used,
                )
                for r in self._resident.values()
            ]
