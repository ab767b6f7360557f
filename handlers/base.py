"""The contract between a task handler and whatever runs it.

A handler is plain model code: it validates a request, loads its model through the
Hugging Face loading code, runs a whole batch at once and turns raw outputs into a
result. It never imports ``bot`` or ``discord``; the executor drives it through the
methods below, so the same handler serves Discord, the command line and the tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
from huggingface_hub.utils import are_progress_bars_disabled
from transformers import StoppingCriteria

# Re-exported: handlers name these from here; front ends import them from their own,
# torch-free modules, so that a terminal command starts without loading torch.
from handlers.errors import HandlerError as HandlerError
from handlers.errors import InvalidInput as InvalidInput
from handlers.errors import check_length as check_length
from handlers.errors import check_text as check_text
from handlers.errors import quote as quote
from handlers.kinds import TaskKind as TaskKind

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")


class UnsafeModelError(HandlerError):
    """A model would need pickle weights or remote code, which the bot never loads."""


class BatchStopped(Exception):
    """Raised inside ``run_batch`` when every job of the batch was cancelled or timed out."""


class BatchContext(Protocol):
    """What a running batch can ask of the executor; thread-safe, cheap to call per step."""

    def should_stop(self) -> bool:
        """True once no job of the batch still wants a result; stop between steps."""

    def progress(self, step: int, total: int) -> None:
        """Report step progress (diffusion steps, generated tokens) to every job."""

    def partial(self, index: int, data: Any) -> None:
        """Send an intermediate output (streamed text) to the job at ``index``."""

    def abandoned(self, index: int) -> bool:
        """Nobody waits for the result of the job at ``index`` any more."""


def raise_if_stopped(ctx: BatchContext) -> None:
    """Call between steps: stops the batch cooperatively when nobody awaits it."""
    if ctx.should_stop():
        raise BatchStopped


class StopWhenAbandoned(StoppingCriteria):
    """Ends ``generate`` between tokens once nobody waits for the batch any more."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stop = self.ctx.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class LoadSpec:
    """Where a model comes from and how the executor wants it placed."""

    source: str
    """A hub repository id or a local directory."""
    device: str
    dtype: torch.dtype

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every ``from_pretrained`` call must use: no pickles, no remote code."""
        return {"dtype": self.dtype, "use_safetensors": True, "trust_remote_code": False}


def from_pretrained(cls: Any, spec: LoadSpec, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` under the bot's rules, with a clear error for pickle-only weights.

    diffusers' loading bar follows the hub's switch (HF_HUB_DISABLE_PROGRESS_BARS), as
    transformers' does, so that a log file gets none."""
    if cls.__module__.startswith("diffusers") and are_progress_bars_disabled():
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(spec.source, **spec.pretrained_kwargs(), **kwargs)
    except OSError as exc:
        if "safetensors" not in str(exc):
            raise
        raise UnsafeModelError(
            f"{spec.source} has no safetensors weights; the bot never loads pickled weights"
        ) from exc


def module_bytes(*objects: Any) -> int:
    """Memory held by the parameters and buffers of the torch modules among ``objects``."""
    seen: set[int] = set()
    total = 0
    for obj in objects:
        modules: list[torch.nn.Module] = []
        if isinstance(obj, torch.nn.Module):
            modules.append(obj)
        elif hasattr(obj, "components"):  # a diffusers pipeline
            modules.extend(c for c in obj.components.values() if isinstance(c, torch.nn.Module))
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
    return total


class Task(ABC, Generic[RequestT, ResultT]):
    """One kind of work the bot offers, e.g. sentiment or image generation.

    ``validate``, ``batch_key`` and ``cost`` run on the caller's thread and must be cheap.
    ``load`` and ``run_batch`` run on the single thread that owns the accelerator.
    ``finish`` runs in a CPU pool, so encoding PNGs or audio never stalls the accelerator.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    remote: ClassVar[bool] = False
    """Answered by another server: it needs no device, and runs beside the devices."""
    pipeline: ClassVar[bool] = False
    """Loads a diffusers pipeline, whose files lie in one folder per component."""

    def prepare(self) -> None:
        """Load what ``validate`` needs (a language detector, a voice table) ahead of time.

        Called off the event loop at start-up, so the first request does not stall it.
        """

    def validate(self, request: RequestT) -> None:
        """Raise ``InvalidInput`` for a request that can never succeed."""

    def model_for(self, request: RequestT, default: str) -> str:
        """The model that serves ``request``: tasks with per-language models override this."""
        return default

    def batch_key(self, request: RequestT) -> Hashable:
        """Requests with equal keys may share one ``run_batch`` call."""
        return None

    def cost(self, request: RequestT) -> int:
        """Budget units (tokens, pixels) the request adds to a batch."""
        return 1

    def work(self, request: RequestT) -> float:
        """Relative compute of the request beside others of its task (tokens, pixels times
        steps), to charge each member their share of a batch's GPU time."""
        return float(self.cost(request))

    @abstractmethod
    def load(self, spec: LoadSpec) -> Any:
        """Load the model (and its tokenizer or processor) ready for ``run_batch``."""

    def running_cap(self) -> int | None:
        """How many requests may run at once when each joins the running batch at the next
        step and leaves when done (continuous batching): ``run_batch`` then returns futures
        that resolve as rows finish. None: a batch runs from start to end together."""
        return None

    def unload(self, model: Any) -> None:
        """Stop what ``load`` started beside the weights (threads, caches) before the model
        is dropped."""

    def busy(self, model: Any) -> bool:
        """Whether requests are still running on the model after their batch returned
        (continuous batching): it is then not unloaded to make room for another."""
        return False

    def model_bytes(self, model: Any) -> int:
        """Accelerator memory the loaded model holds, for the registry's budget."""
        if isinstance(model, tuple | list):
            return module_bytes(*model)
        return module_bytes(model)

    @abstractmethod
    def run_batch(self, model: Any, requests: Sequence[RequestT], ctx: BatchContext) -> list[Any]:
        """Run every request at once; return one raw output (or an exception) per request."""

    def finish(self, output: Any) -> ResultT:
        """Turn one raw output into the result the caller receives."""
        return output
