"""Plain executor configuration, decoupled from settings so tests and benchmarks build it freely."""

from __future__ import annotations

from dataclasses import dataclass, field

from handlers.kinds import TaskKind


@dataclass(frozen=True)
class ClassLimits:
    """Batching and deadline limits shared by every task of one ``TaskKind``."""

    window_s: float
    """How long a forming batch waits for more compatible jobs once traffic is concurrent."""
    max_batch: int
    """Most jobs in one ``run_batch`` call."""
    max_cost: int
    """Most budget units (tokens, pixels) in one batch; a single job may exceed it alone."""
    queue_deadline_s: float
    """A job that waited longer than this is refused rather than run."""
    exec_timeout_s: float
    """A batch running longer than this is stopped and its jobs fail."""
    default_batch_s: float
    """Assumed batch duration before any has been measured, for wait estimates."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        for name in ("window_s", "queue_deadline_s", "exec_timeout_s", "default_batch_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def default_limits() -> dict[TaskKind, ClassLimits]:
    return {
        TaskKind.TEXT: ClassLimits(0.008, 64, 32768, 120.0, 120.0, 0.5),
        TaskKind.AUDIO: ClassLimits(0.03, 8, 4000, 300.0, 180.0, 3.0),
        TaskKind.IMAGE: ClassLimits(0.075, 4, 4 * 1024 * 1024, 600.0, 300.0, 10.0),
    }


@dataclass(frozen=True)
class ExecutorConfig:
    max_queue: int = 64
    """Most outstanding (queued or running) jobs across all users."""
    max_per_user: int = 2
    """Most outstanding jobs of one user."""
    limits: dict[TaskKind, ClassLimits] = field(default_factory=default_limits)
    shutdown_timeout_s: float = 30.0
    stop_grace_s: float = 10.0
    """How long a batch past its execution limit may take to stop before its worker is
    replaced."""
    fair_half_life_s: float = 120.0
    """How fast a member's GPU time is forgiven: it halves every this many seconds."""
    starvation_s: float = 60.0
    """A job that waited this long runs before every other (oldest first)."""

    def __post_init__(self) -> None:
        if self.max_queue < 1 or self.max_per_user < 1:
            raise ValueError("max_queue and max_per_user must be >= 1")
