"""Counters and recent samples behind ``/queue``, ``/stats`` and the benchmark."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bot.executor.backend import LoadedModelInfo

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]


class MetricsObserver(Protocol):
    """Sees every event as it is recorded, for exporters that need all of them (Prometheus
    histograms) rather than the recent samples kept here."""

    def on_wait(self, key: ModelKey, seconds: float) -> None: ...

    def on_batch(self, key: ModelKey, size: int, seconds: float) -> None: ...

    def on_outcome(self, key: ModelKey, outcome: str) -> None: ...

    def on_refusal(self, reason: str) -> None: ...

    def on_failure(self, key: ModelKey, error: str) -> None: ...


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: deque[float] | list[float]) -> Percentiles:
        if not seconds:
            return cls(0, 0.0, 0.0, 0.0)
        p50, p95, p99 = (1000 * percentile(seconds, q) for q in (0.50, 0.95, 0.99))
        return cls(len(seconds), p50, p95, p99)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (numpy's ``inverted_cdf``): the smallest measured value
    with at least ``q`` of them at or below it. Every figure the bot shows uses this one, so
    /queue and /stats agree on the same numbers."""
    return float(np.percentile(values, 100 * q, method="inverted_cdf"))


@dataclass(frozen=True)
class ModelStats:
    task: str
    model: str
    queued: int
    wait: Percentiles
    run: Percentiles
    batch_sizes: dict[int, int]
    outcomes: dict[str, int]


@dataclass(frozen=True)
class MetricsSnapshot:
    outstanding: int
    queued: int
    models: list[ModelStats]
    loaded: list[LoadedModelInfo]
    refused: dict[str, int] = field(default_factory=dict)


class Metrics:
    def __init__(self, samples: int = 2048) -> None:
        self._wait: defaultdict[ModelKey, deque[float]] = defaultdict(lambda: deque(maxlen=samples))
        self._run: defaultdict[ModelKey, deque[float]] = defaultdict(lambda: deque(maxlen=samples))
        self._batch_sizes: defaultdict[ModelKey, Counter[int]] = defaultdict(Counter)
        self._outcomes: defaultdict[ModelKey, Counter[str]] = defaultdict(Counter)
        self.refused: Counter[str] = Counter()
        self.callback_errors: Counter[str] = Counter()
        """Errors the engine caught in its callbacks, by where: listener, observer, ..."""
        self.observers: list[MetricsObserver] = []

    def _tell(self, call: Callable[[MetricsObserver], None]) -> None:
        for observer in self.observers:
            try:
                call(observer)
            except Exception:  # an exporter's bug must not stop the engine
                self.callback_errors["observer"] += 1
                log.exception("a metrics observer failed")

    def record_callback_error(self, where: str) -> None:
        self.callback_errors[where] += 1

    def record_wait(self, key: ModelKey, seconds: float) -> None:
        self._wait[key].append(seconds)
        self._tell(lambda observer: observer.on_wait(key, seconds))

    def record_batch(self, key: ModelKey, size: int, seconds: float) -> None:
        self._run[key].append(seconds)
        self._tell(lambda observer: observer.on_batch(key, size, seconds))
        self._batch_sizes[key][size] += 1

    def record_outcome(self, key: ModelKey, outcome: str) -> None:
        self._outcomes[key][outcome] += 1
        self._tell(lambda observer: observer.on_outcome(key, outcome))

    def record_failure(self, key: ModelKey, error: str) -> None:
        """A job failed: ``error`` is its error's ``kind`` (a chat server's "timeout",
        "unauthorized"...) or its class's name."""
        self._tell(lambda observer: observer.on_failure(key, error))

    def record_refusal(self, reason: str) -> None:
        self.refused[reason] += 1
        self._tell(lambda observer: observer.on_refusal(reason))

    def model_stats(self, key: ModelKey, queued: int) -> ModelStats:
        return ModelStats(
            task=key[0],
            model=key[1],
            queued=queued,
            wait=Percentiles.of(self._wait[key]),
            run=Percentiles.of(self._run[key]),
            batch_sizes=dict(sorted(self._batch_sizes[key].items())),
            outcomes=dict(self._outcomes[key]),
        )

    def known_keys(self) -> list[ModelKey]:
        return list({*self._wait, *self._run, *self._outcomes})
