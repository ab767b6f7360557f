"""Model registry: lazy loading, LRU eviction within a budget, device and dtype choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bot.executor.registry import ModelRegistry, resolve_device, resolve_dtype
from handlers.base import LoadSpec
from tests.fakes import FakeTask


class SizedTask(FakeTask):
    """Each model's size is the number in its name, e.g. ``m-1000``."""

    def __init__(self, registry: ModelRegistry | None = None) -> None:
        super().__init__(name="sized")
        self.registry = registry
        self.resident_at_load: list[set[str]] = []

    def load(self, spec: LoadSpec) -> str:
        if self.registry is not None:
            self.resident_at_load.append({m.model for m in self.registry.snapshot()})
        return super().load(spec)

    def model_bytes(self, model: str) -> int:
        return int(model.rsplit("-", 1)[1])


def test_models_load_once_and_least_recently_used_is_evicted() -> None:
    registry = ModelRegistry(device="cpu", budget_bytes=2500)
    task = SizedTask()
    registry.get(task, "a-1000")
    registry.get(task, "b-1000")
    registry.get(task, "a-1000")  # a is now the most recently used
    assert task.loads == ["a-1000", "b-1000"]
    registry.get(task, "c-1000")
    assert sorted(m.model for m in registry.snapshot()) == ["a-1000", "c-1000"]
    assert task.loads == ["a-1000", "b-1000", "c-1000"]


def test_known_weight_size_evicts_before_loading(tmp_path: Path) -> None:
    big = tmp_path / "big-3000"
    big.mkdir()
    (big / "model.safetensors").write_bytes(b"\0" * 3000)
    registry = ModelRegistry(device="cpu", budget_bytes=4000)
    task = SizedTask(registry)
    registry.get(task, "a-1000")
    registry.get(task, "b-1000")
    registry.get(task, str(big))
    # Only one small model fits beside the big one, and it went before the big load began.
    assert task.resident_at_load[-1] == {"b-1000"}
    assert {m.model for m in registry.snapshot()} == {"b-1000", str(big)}


def test_a_model_over_the_budget_still_runs_alone() -> None:
    registry = ModelRegistry(device="cpu", budget_bytes=500)
    task = SizedTask()
    registry.get(task, "a-100")
    registry.get(task, "huge-9000")
    assert [m.model for m in registry.snapshot()] == ["huge-9000"]


def test_failed_load_is_not_cached() -> None:
    registry = ModelRegistry(device="cpu")
    task = SizedTask()
    task.load_failures = 1
    with pytest.raises(OSError):
        registry.get(task, "m-10")
    assert registry.snapshot() == []
    assert registry.get(task, "m-10") == "model:m-10"


def test_unload_all_releases_everything() -> None:
    registry = ModelRegistry(device="cpu")
    registry.get(SizedTask(), "m-10")
    registry.unload_all()
    assert registry.snapshot() == []


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"


def test_dtype_is_half_on_accelerators_and_float32_on_cpu() -> None:
    assert resolve_dtype("auto", "cuda") is torch.float16
    assert resolve_dtype("auto", "mps") is torch.float16
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cuda") is torch.bfloat16
    with pytest.raises(ValueError, match="float8"):
        resolve_dtype("float8", "cuda")


def test_load_spec_forbids_pickles_and_remote_code() -> None:
    kwargs = LoadSpec("x", "cpu", torch.float32).pretrained_kwargs()
    assert kwargs["use_safetensors"] is True
    assert kwargs["trust_remote_code"] is False


class RowsTask(SizedTask):
    """Models named in ``answering`` still have requests running (continuous batching)."""

    def __init__(self) -> None:
        super().__init__()
        self.answering: set[str] = set()
        self.unloaded: list[str] = []

    def busy(self, model: str) -> bool:
        return model.removeprefix("model:") in self.answering

    def unload(self, model: str) -> None:
        self.unloaded.append(model.removeprefix("model:"))


def test_a_model_still_answering_is_not_evicted_and_every_unload_is_told() -> None:
    registry = ModelRegistry(device="cpu", budget_bytes=2500)
    task = RowsTask()
    registry.get(task, "a-1000")
    registry.get(task, "b-1000")
    task.answering.add("a-1000")  # the least recently used, but busy
    registry.get(task, "c-1000")
    assert sorted(m.model for m in registry.snapshot()) == ["a-1000", "c-1000"]
    assert task.unloaded == ["b-1000"]
    registry.unload_all()
    assert sorted(task.unloaded) == ["a-1000", "b-1000", "c-1000"]
