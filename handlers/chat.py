"""Chat: a small instruction-tuned causal LM (Qwen2.5-0.5B-Instruct by default), batched.

Prompts go through the model's chat template and are left-padded so one ``generate`` call
serves the whole batch. Text streams to each job as it is produced, and the batch stops
between tokens when nobody awaits it any more.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from handlers.base import (
    BatchContext,
    BatchStopped,
    InvalidInput,
    LoadSpec,
    StopWhenAbandoned,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
)

DEFAULT_SYSTEM = "You are a helpful, concise assistant in a Discord community."
MAX_SEED = 2**32 - 1
"""As for /imagine; ``torch.manual_seed`` raises past 64 bits."""
MIN_SAMPLING_TEMPERATURE = 1e-3
"""Below this, answer greedily (the limit as temperature falls): logits divided by 1e-300
overflow to infinity, and sampling from them raises."""


@dataclass(frozen=True)
class ChatRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"message", "system"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    message: str
    system: str | None = None
    """Replaces the configured system prompt."""
    max_tokens: int | None = None
    """Longest answer in tokens; None is the configured default."""
    temperature: float = 0.0
    """0 answers greedily (reproducible); higher values sample more freely."""
    seed: int = 0
    """Seeds sampling; jobs batched together share the first job's seed."""


@dataclass(frozen=True)
class ChatResult:
    text: str
    tokens: int
    complete: bool
    """False when the answer was cut at its token limit."""


@dataclass
class ChatModel:
    tokenizer: Any
    model: torch.nn.Module
    device: str


class _BatchStreamer(BaseStreamer):
    """Sends each job its text so far every ``every`` tokens (generate feeds one column a step)."""

    def __init__(self, tokenizer: Any, ctx: BatchContext, size: int, every: int = 8) -> None:
        self.tokenizer = tokenizer
        self.ctx = ctx
        self.every = every
        self.tokens: list[list[int]] = [[] for _ in range(size)]
        self.done = [False] * size
        self.prompt_seen = False
        self.steps = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            if token == self.tokenizer.eos_token_id:
                self.done[row] = True
            else:
                self.tokens[row].append(token)
        self.steps += 1
        if self.steps % self.every == 0:
            self._flush()

    def end(self) -> None:
        self._flush()

    def _flush(self) -> None:
        for row, tokens in enumerate(self.tokens):
            if tokens:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                self.ctx.partial(row, text)


class ChatTask(Task[ChatRequest, ChatResult]):
    name = "chat"
    kind = TaskKind.TEXT

    def __init__(
        self,
        max_chars: int = 4000,
        default_new_tokens: int = 256,
        max_new_tokens: int = 1024,
        system_prompt: str = DEFAULT_SYSTEM,
    ) -> None:
        self.max_chars = max_chars
        self.default_new_tokens = default_new_tokens
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt

    def new_tokens(self, request: ChatRequest) -> int:
        return request.max_tokens or self.default_new_tokens

    def validate(self, request: ChatRequest) -> None:
        check_text("message", request.message, self.max_chars)
        check_text("system", request.system or "", self.max_chars, required=False)
        if len(request.message) + len(request.system or "") > self.max_chars:
            raise InvalidInput("message", f"is longer than the {self.max_chars}-character limit")
        if request.max_tokens is not None and not 1 <= request.max_tokens <= self.max_new_tokens:
            raise InvalidInput("max_tokens", f"must be between 1 and {self.max_new_tokens}")
        if not math.isfinite(request.temperature) or not 0 <= request.temperature <= 2:
            raise InvalidInput("temperature", "must be between 0 and 2")
        if not 0 <= request.seed <= MAX_SEED:
            raise InvalidInput("seed", f"must be between 0 and {MAX_SEED}")

    def batch_key(self, request: ChatRequest) -> Hashable:
        return (self.new_tokens(request), request.temperature)

    def cost(self, request: ChatRequest) -> int:
        return (len(request.message) + len(request.system or "")) // 4 + self.new_tokens(request)

    def load(self, spec: LoadSpec) -> ChatModel:
        tokenizer = AutoTokenizer.from_pretrained(
            spec.source, trust_remote_code=False, padding_side="left"
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.chat_template is None:
            raise ValueError(f"{spec.source} has no chat template; choose an instruction model")
        model = from_pretrained(AutoModelForCausalLM, spec).to(spec.device).eval()
        return ChatModel(tokenizer, model, spec.device)

    def model_bytes(self, model: ChatModel) -> int:
        return super().model_bytes(model.model)

    def prompt(self, tokenizer: Any, request: ChatRequest) -> str:
        messages = [
            {"role": "system", "content": request.system or self.system_prompt},
            {"role": "user", "content": request.message},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def run_batch(
        self, model: ChatModel, requests: Sequence[ChatRequest], ctx: BatchContext
    ) -> list[ChatResult]:
        first = requests[0]
        tokenizer = model.tokenizer
        encoded = tokenizer(
            [self.prompt(tokenizer, r) for r in requests],
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        ).to(model.device)
        limit = self.new_tokens(first)
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature >= MIN_SAMPLING_TEMPERATURE:
            torch.manual_seed(first.seed)
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": 0.95}
        with torch.inference_mode():
            generated = model.model.generate(
                **encoded,
                max_new_tokens=limit,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                streamer=_BatchStreamer(tokenizer, ctx, len(requests)),
                stopping_criteria=[StopWhenAbandoned(ctx)],
                **sampling,
            )
        if ctx.should_stop():
            raise BatchStopped
        results = []
        for row in generated[:, encoded["input_ids"].shape[1] :].tolist():
            complete = tokenizer.eos_token_id in row
            tokens = row[: row.index(tokenizer.eos_token_id)] if complete else row
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            results.append(ChatResult(text, len(tokens), complete))
        return results
