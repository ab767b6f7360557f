"""Continuous batching for a causal LM: transformers' ``ContinuousBatchingManager`` driven
for the executor. A request joins the running batch at the manager's next step, streams its
text, and leaves when it ends or when nobody waits for it any more, freeing its cache pages
for the next.

The manager runs its steps on its own thread over a paged KV cache sized here, up front
(its default would take most of the free GPU memory, which other models need). One
collector thread routes what the manager produces: streamed text to each job, the answer to
its future, and cancellations back to the manager.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from handlers.base import BatchContext, BatchStopped

log = logging.getLogger(__name__)

PAGE_TOKENS = 64
"""Tokens per page of the KV cache: small pages waste little on short answers."""
STREAM_EVERY = 8
"""Tokens between two streamed updates of a job's text, as the static path streams."""
POLL_S = 0.05
"""How often the collector looks for cancelled jobs while no token comes."""
START_TIMEOUT_S = 300.0
"""Longest the first answer may take: the KV cache is allocated (and on a GPU, the steps
warmed up) before it."""
GREEDY_TEMPERATURE = 1e-6
"""The manager samples every row; this temperature keeps only the likeliest token, so an
answer at temperature 0 stays greedy."""
TOP_P = 0.95


@dataclass
class Generated:
    """One finished answer: its tokens (without the stop token) and whether a stop token
    ended it (rather than the token limit)."""

    tokens: list[int]
    stopped: bool


class _Never:
    """The context of the start-up check: nobody abandons it, nothing streams."""

    def abandoned(self, index: int) -> bool:
        return False

    def partial(self, index: int, data: Any) -> None:
        pass


@dataclass
class _Row:
    ctx: BatchContext
    index: int
    future: concurrent.futures.Future[Generated]
    streamed: int = 0
    """Tokens already sent as partial text."""
    tokens: list[int] = field(default_factory=list)


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Keys and values of one token across every layer."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    width = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return 2 * text.num_hidden_layers * kv_heads * head_dim * width


def cache_pages(max_running: int, context: int) -> int:
    """Pages enough for ``max_running`` conversations of a full context each."""
    return max_running * math.ceil(context / PAGE_TOKENS)


def cache_bytes(config: Any, dtype: torch.dtype, max_running: int, context: int) -> int:
    """Memory the paged KV cache takes, reserved when the model loads."""
    return cache_pages(max_running, context) * PAGE_TOKENS * kv_bytes_per_token(config, dtype)


class ContinuousGenerator:
    """Greedy or sampled generation for any number of rows, each joining when it comes."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_ids: frozenset[int],
        max_running: int,
        context: int,
        cuda_graphs: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.max_running = max_running
        self.cuda_graphs = cuda_graphs
        self.num_blocks = cache_pages(max_running, context)
        self.cache_bytes = cache_bytes(model.config, model.dtype, max_running, context)
        config = ContinuousBatchingConfig(
            page_size=PAGE_TOKENS,
            num_blocks=self.num_blocks,
            max_requests_per_batch=max_running,
            max_batch_tokens=max(512, 2 * max_running),
            max_queue_size=0,
            per_request_processors=True,  # each row's own temperature
            allow_block_sharing=True,  # rows sharing a system prompt share its pages
            use_cuda_graph=cuda_graphs,
        )
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.7,  # a default that is not 1 makes the per-row temperature exist
            top_p=TOP_P,
            eos_token_id=sorted(stop_ids),
            pad_token_id=tokenizer.pad_token_id,
        )
        self.manager = model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        self._ids = 0
        self._closed = threading.Event()
        self.broken: str | None = None
        """Why the manager stopped serving, once it has; the model must start a new one."""
        self.manager.start()
        self._collector = threading.Thread(
            target=self._collect, name="continuous-collector", daemon=True
        )
        self._collector.start()
        try:  # the cache is allocated on the manager's thread: a failure shows here
            first = self.submit([tokenizer.pad_token_id or 0], 1, 0.0, _Never(), 0)  # type: ignore[arg-type]
            first.result(timeout=START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    @property
    def healthy(self) -> bool:
        return self.broken is None and not self._closed.is_set() and self.manager.is_running()

    def submit(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float,
        ctx: BatchContext,
        index: int,
    ) -> concurrent.futures.Future[Generated]:
        """Add a row; its future resolves with the answer, or with ``BatchStopped`` once
        nobody waits for it."""
        future: concurrent.futures.Future[Generated] = concurrent.futures.Future()
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("continuous batching has stopped")
            self._ids += 1
            request_id = f"r{self._ids}"
            self._rows[request_id] = _Row(ctx, index, future)
        added = self.manager.add_request(
            prompt,
            request_id=request_id,
            max_new_tokens=max_new_tokens,
            streaming=True,
            eos_token_id=sorted(self.stop_ids),
            temperature=max(temperature, GREEDY_TEMPERATURE),
        )
        if added is None:  # the manager is stopping or failed
            with self._lock:
                self._rows.pop(request_id, None)
            raise RuntimeError("continuous batching does not accept requests any more")
        return future

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._rows)

    def _collect(self) -> None:
        while not self._closed.is_set():
            try:
                if not self._collect_once():
                    return
            except Exception:  # one bad turn must not leave every row waiting for good
                log.exception("continuous batching: routing a result failed")

    def _collect_once(self) -> bool:
        """Route one result (or none, after a short wait); False once the manager is gone."""
        self._cancel_abandoned()
        output = self.manager.get_result(timeout=POLL_S)
        if output is None:
            if not self.manager.is_running() and not self._closed.is_set():
                fatal = self.manager.background_thread_status.fatal_error
                self.broken = f"its generation thread stopped ({fatal or 'no reason given'})"
                log.error("continuous batching stopped: %s", self.broken)
                self._fail_all(RuntimeError(f"continuous batching failed: {self.broken}"))
                return False
            return True
        with self._lock:
            row = self._rows.get(output.request_id)
        if row is None:  # cancelled already, or before the manager knew the request
            if not output.is_finished():
                self.manager.cancel_request(output.request_id)
            return True
        try:
            self._deliver(output, row)
        except Exception as exc:  # a listener's bug fails its row, not the others
            log.exception("could not deliver a continuous batching result")
            self.manager.cancel_request(output.request_id)
            self._end(output.request_id, error=exc)
        return True

    def _deliver(self, output: Any, row: _Row) -> None:
        tokens = list(output.generated_tokens)
        end = next((i for i, token in enumerate(tokens) if token in self.stop_ids), None)
        row.tokens = tokens if end is None else tokens[:end]
        if output.error is not None:
            self._end(output.request_id, error=RuntimeError(output.error))
        elif output.is_finished() or end is not None:
            self._end(output.request_id, Generated(row.tokens, end is not None))
        elif len(row.tokens) - row.streamed >= STREAM_EVERY:
            row.streamed = len(row.tokens)
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True).strip()
            row.ctx.partial(row.index, text)

    def _cancel_abandoned(self) -> None:
        with self._lock:
            gone = [rid for rid, row in self._rows.items() if row.ctx.abandoned(row.index)]
        for request_id in gone:
            self.manager.cancel_request(request_id)  # its pages are freed at the next step
            self._end(request_id, error=BatchStopped())

    def _end(
        self, request_id: str, result: Generated | None = None, error: BaseException | None = None
    ) -> None:
        with self._lock:
            row = self._rows.pop(request_id, None)
        if row is None or row.future.done():
            return
        if error is not None:
            row.future.set_exception(error)
        else:
            row.future.set_result(result)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            rows, self._rows = self._rows, {}
        for row in rows.values():
            if not row.future.done():
                row.future.set_exception(error)

    def close(self) -> None:
        """Stop the manager's thread (it is not a daemon) and fail what still runs."""
        self._closed.set()
        try:
            self.manager.stop(block=True, timeout=30, hard_stop=True)
        finally:
            self._fail_all(RuntimeError("the chat model was unloaded"))
            self._collector.join(timeout=5)
