"""Chat: a small instruction-tuned causal LM (Qwen2.5-0.5B-Instruct by default), batched.

A request is a conversation: earlier turns, a summary of what came before them, and the new
message. Prompts go through the model's chat template.

Two ways to batch, chosen per model when it loads (``continuous``):

- continuous batching (``handlers.continuous``): each conversation joins the running batch
  at the next step and leaves when its answer ends, so a short answer never waits for a
  long one. On a GPU by default; a seed does not make a sampled answer repeatable there.
- static batching: prompts are left-padded so one ``generate`` call serves the batch; each
  job samples with its own seed, and the batch stops between tokens when nobody awaits it.

Either way text streams to each job as it is produced.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import llguidance
import llguidance.hf
import llguidance.torch
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LogitsProcessor
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
from handlers.continuous import ContinuousGenerator, Generated

DEFAULT_SYSTEM = "You are a helpful, concise assistant in a Discord community."
MAX_SEED = 2**32 - 1
"""As for /imagine; ``torch.manual_seed`` raises past 64 bits."""
MIN_SAMPLING_TEMPERATURE = 1e-3
"""Below this, answer greedily (the limit as temperature falls): logits divided by 1e-300
overflow to infinity, and sampling from them raises."""
TOP_P = 0.95
MAX_TURNS = 200
CHARS_PER_TOKEN_BOUND = 8
"""Text longer than this many characters per token of context cannot fit: a cheap bound
checked before anything is tokenised."""
CONTINUING = "(continuing our conversation)"
"""Stands for the member's turn that a history cut after; chat templates expect the
conversation to open with one."""
_SENTINEL = "\u2063SENTINEL\u2063"

Role = Literal["user", "assistant"]
Continuous = Literal["auto", "on", "off"]
"""Continuous batching: ``auto`` on CUDA only (on a CPU its per-step overhead outweighs
what it saves), ``on`` wherever the model supports it, ``off`` never."""

log = logging.getLogger(__name__)


def continuous_on(mode: Continuous, device: str) -> bool:
    return mode == "on" or (mode == "auto" and device.startswith("cuda"))


@dataclass(frozen=True)
class ChatTurn:
    role: Role
    content: str
    name: str | None = None
    """Who wrote a member's turn, so that the model can tell members apart."""


@dataclass(frozen=True)
class ChatRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset(
        {"message", "system", "history", "summary", "name", "json_schema"}
    )
    """Fields holding what members wrote (and the schema, long and of no use in a usage
    row): kept out of logs unless the admin opts in."""

    message: str
    system: str | None = None
    """Replaces the configured system prompt (a server's persona)."""
    max_tokens: int | None = None
    """Longest answer in tokens; None is the configured default."""
    temperature: float = 0.0
    """0 answers greedily (reproducible); higher values sample more freely."""
    seed: int = 0
    """Seeds this job's sampling, whatever else shares its batch."""
    history: tuple[ChatTurn, ...] = ()
    """Earlier turns of the conversation, oldest first."""
    summary: str = ""
    """What came before ``history``, folded into a few sentences."""
    name: str | None = None
    """Who wrote ``message``."""
    json_schema: str | None = None
    """A JSON Schema the answer must follow: each token is chosen among those the schema
    allows next (constrained generation), so the answer is always JSON of that shape, or
    cut at its token limit."""


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
    stop_ids: frozenset[int]
    context: int
    """Tokens the prompt and the answer may take together."""
    continuous: ContinuousGenerator | None = None
    """Set when requests join a running batch; None batches statically."""
    source: str = ""
    grammar_tokenizer: Any = None
    """The vocabulary as llguidance sees it, made the first time an answer follows a
    schema; False when this tokenizer is one llguidance cannot read."""

    def grammar_vocabulary(self, width: int) -> Any:
        """llguidance's view of the vocabulary, or None: answers then go unconstrained
        (whoever asked for a schema checks the answer anyway)."""
        if self.grammar_tokenizer is None:
            try:
                self.grammar_tokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=width, eos_token=sorted(self.stop_ids)
                )
            except (ValueError, TypeError) as exc:  # a slow or unusual tokenizer
                log.warning("%s: answers cannot follow a schema here: %s", self.source, exc)
                self.grammar_tokenizer = False
        return self.grammar_tokenizer or None


@dataclass(frozen=True)
class ChatWindow:
    """What the front end needs to fit a conversation to the model, without the model:
    its tokenizer and how many tokens a prompt and its answer may take."""

    task: ChatTask
    tokenizer: Any
    context: int

    def prompt_tokens(self, request: ChatRequest) -> int:
        return len(self.task.prompt_ids(self.tokenizer, request))

    def budget(self, request: ChatRequest) -> int:
        """Tokens left for the prompt once the answer's are set aside."""
        return self.context - self.task.new_tokens(request)

    def tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, tokens: int) -> str:
        """The start of ``text`` that fits in ``tokens`` tokens, cut in the text itself
        where the tokenizer says where tokens begin (decoding would change it)."""
        if not self.tokenizer.is_fast:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return self.tokenizer.decode(ids[: max(0, tokens)], skip_special_tokens=True)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        if len(offsets) <= tokens:
            return text
        return text[: offsets[tokens][0]] if tokens > 0 else ""


def check_history(history: Sequence[ChatTurn], max_chars: int) -> None:
    """Cheap bounds on a conversation's earlier turns, before anything is tokenised."""
    if len(history) > MAX_TURNS:
        raise InvalidInput("history", f"has more than {MAX_TURNS} turns")
    for turn in history:
        if turn.role not in ("user", "assistant"):
            raise InvalidInput("history", f"has a turn with the role {turn.role!r}")
        check_text("history", turn.content, max_chars, required=False)


def with_summary(system: str, summary: str) -> str:
    """The system prompt, with what a conversation's earlier turns were folded into."""
    return f"{system}\n\nEarlier in this conversation: {summary}" if summary else system


def model_context(config: Any) -> int | None:
    """Positions the model was built for, under whichever name its config uses."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """The special token that the chat template puts after an assistant's turn (Qwen's
    ``<|im_end|>``, Llama 3's ``<|eot_id|>``), found by rendering a turn and looking."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
            tokenize=False,
        )
    except Exception:  # a template that refuses this shape simply tells us nothing
        return set()
    if not isinstance(text, str) or _SENTINEL not in text:
        return set()
    after = tokenizer(text.split(_SENTINEL, 1)[1], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return next(({token} for token in after if token in special), set())


def stop_token_ids(tokenizer: Any, generation_config: Any) -> frozenset[int]:
    """Every token that ends an answer: the generation config's ``eos_token_id`` (often a
    list), the tokenizer's end of sequence and the chat template's end of turn."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    ids |= end_of_turn_ids(tokenizer)
    return frozenset(i for i in ids if isinstance(i, int))


def schema_grammar(schema: str) -> str:
    """The llguidance grammar of a JSON Schema, written compactly (no free whitespace, which
    a model could repeat until its token limit); ``InvalidInput("json_schema")`` if the
    schema is not one it can follow."""
    try:
        json.loads(schema)
    except json.JSONDecodeError as exc:
        raise InvalidInput("json_schema", f"is not JSON: {exc.msg}") from None
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False}
    )
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidInput("json_schema", f"cannot be followed: {error}")
    return grammar


class _RowGrammars(LogitsProcessor):
    """Leaves each constrained row only the tokens its schema allows next (llguidance's
    token masks, computed from the tokens the row has chosen so far); other rows are
    untouched. Runs before the sampler, so a sampled row samples among allowed tokens."""

    def __init__(
        self, model: ChatModel, requests: Sequence[ChatRequest], start: int, width: int
    ) -> None:
        self.matchers: dict[int, Any] = {}
        self.start = start
        wanted = {row: r.json_schema for row, r in enumerate(requests) if r.json_schema}
        vocabulary = model.grammar_vocabulary(width) if wanted else None
        if vocabulary is None:
            return
        self.matchers = {
            row: llguidance.LLMatcher(vocabulary, schema_grammar(schema))
            for row, schema in wanted.items()
        }
        self.mask = llguidance.torch.allocate_token_bitmask(len(requests), vocabulary.vocab_size)

    @property
    def active(self) -> bool:
        return bool(self.matchers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        chosen = input_ids.shape[1] > self.start
        for row, matcher in self.matchers.items():
            if chosen and not matcher.is_stopped():
                matcher.consume_token(int(input_ids[row, -1]))
            llguidance.torch.fill_next_token_bitmask(matcher, self.mask, row)
        llguidance.torch.apply_token_bitmask_inplace(scores, self.mask.to(scores.device))
        return scores


class _RowSampler(LogitsProcessor):
    """Samples each row with its own seeded generator and temperature, so that a job's
    answer depends on its seed, not on which jobs share its batch or on a retry.

    The row's sampled token is left as the only candidate, so greedy selection keeps it;
    rows with temperature 0 are left untouched and stay greedy.
    """

    def __init__(self, requests: Sequence[ChatRequest], device: str) -> None:
        self.rows = [
            (row, r.temperature, torch.Generator(device=device).manual_seed(r.seed))
            for row, r in enumerate(requests)
            if r.temperature >= MIN_SAMPLING_TEMPERATURE
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        for row, temperature, generator in self.rows:
            probs = torch.softmax(scores[row].float() / temperature, dim=-1)
            ordered, order = probs.sort(descending=True)
            keep = ordered.cumsum(0) - ordered < TOP_P  # the nucleus, never empty
            ordered = ordered * keep
            choice = order[torch.multinomial(ordered, 1, generator=generator)]
            scores[row] = -math.inf
            scores[row, choice] = 0.0
        return scores

    @property
    def active(self) -> bool:
        return bool(self.rows)


class BatchStreamer(BaseStreamer):
    """Sends each job its text so far every ``every`` tokens (generate feeds one column a step)."""

    def __init__(
        self,
        tokenizer: Any,
        ctx: BatchContext,
        size: int,
        stop_ids: frozenset[int],
        every: int = 8,
    ) -> None:
        self.tokenizer = tokenizer
        self.ctx = ctx
        self.every = every
        self.stop_ids = stop_ids
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
            if token in self.stop_ids:
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
        default_new_tokens: int = 256,
        max_new_tokens: int = 1024,
        system_prompt: str = DEFAULT_SYSTEM,
        context_tokens: int = 4096,
        continuous: Continuous = "auto",
        max_running: int = 32,
        cuda_graphs: bool = True,
    ) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be positive, got {max_running}")
        self.continuous = continuous
        self.max_running = max_running
        """Conversations generating at once with continuous batching: the KV cache is
        sized for this many full contexts."""
        self.cuda_graphs = cuda_graphs
        """Whether continuous batching on CUDA replays each step as a CUDA graph: its
        per-step launch overhead, not the GPU, otherwise limits a small model."""
        self.default_new_tokens = default_new_tokens
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.context_tokens = context_tokens
        """The most a prompt and its answer may take, below the model's own limit: memory
        and time grow with it."""
        self._windows: dict[str, ChatWindow] = {}
        self._windows_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process receives: settings, not the front end's tokenizers."""
        state = self.__dict__.copy()
        state["_windows"] = {}
        del state["_windows_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._windows_lock = threading.Lock()

    def new_tokens(self, request: ChatRequest) -> int:
        return request.max_tokens or self.default_new_tokens

    def validate(self, request: ChatRequest) -> None:
        """Cheap bounds only: what fits the model's window is decided on tokens, by the
        front end (which folds or cuts) and by ``run_batch`` (which refuses)."""
        context_chars = self.context_tokens * CHARS_PER_TOKEN_BOUND
        check_text("message", request.message, context_chars)
        check_text("system", request.system or "", context_chars, required=False)
        check_text("summary", request.summary, context_chars, required=False)
        if request.max_tokens is not None and not 1 <= request.max_tokens <= self.max_new_tokens:
            raise InvalidInput("max_tokens", f"must be between 1 and {self.max_new_tokens}")
        if not math.isfinite(request.temperature) or not 0 <= request.temperature <= 2:
            raise InvalidInput("temperature", "must be between 0 and 2")
        if not 0 <= request.seed <= MAX_SEED:
            raise InvalidInput("seed", f"must be between 0 and {MAX_SEED}")
        check_history(request.history, context_chars)
        if request.json_schema is not None:
            schema_grammar(request.json_schema)
        if self._chars(request) > context_chars:
            raise InvalidInput("history", "is longer than the model's context")

    @staticmethod
    def _chars(request: ChatRequest) -> int:
        return (
            len(request.message)
            + len(request.system or "")
            + len(request.summary)
            + sum(len(turn.content) for turn in request.history)
        )

    def batch_key(self, request: ChatRequest) -> Hashable:
        return self.new_tokens(request)  # each job samples with its own temperature and seed

    def cost(self, request: ChatRequest) -> int:
        return self._chars(request) // 4 + self.new_tokens(request)

    def running_cap(self) -> int | None:
        return None if self.continuous == "off" else self.max_running

    def uses_continuous(self, device: str) -> bool:
        """Whether a model loaded on ``device`` is tried with continuous batching."""
        return continuous_on(self.continuous, device)

    def load(self, spec: LoadSpec) -> ChatModel:
        tokenizer = self._tokenizer(spec.source)
        model = from_pretrained(AutoModelForCausalLM, spec).to(spec.device).eval()
        context = min(model_context(model.config) or self.context_tokens, self.context_tokens)
        stop_ids = stop_token_ids(tokenizer, model.generation_config)
        loaded = ChatModel(tokenizer, model, spec.device, stop_ids, context, source=spec.source)
        if self.uses_continuous(spec.device):
            loaded.continuous = self._start_continuous(loaded)
        return loaded

    def _start_continuous(self, loaded: ChatModel) -> ContinuousGenerator | None:
        """A running continuous batch for ``loaded``, or None to batch statically."""
        try:
            generator = ContinuousGenerator(
                loaded.model,
                loaded.tokenizer,
                loaded.stop_ids,
                self.max_running,
                loaded.context,
                cuda_graphs=self.cuda_graphs and loaded.device.startswith("cuda"),
            )
        except Exception as exc:  # an architecture it cannot page, a cache that won't fit
            log.warning("%s: continuous batching is not available (%s); batching statically",
                        loaded.source, exc)  # fmt: skip
            return None
        log.info("%s: continuous batching, up to %d conversations at once, %.0f MiB of KV cache%s",
                 loaded.source, self.max_running, generator.cache_bytes / 2**20,
                 ", CUDA graphs" if generator.cuda_graphs else "")  # fmt: skip
        return generator

    def unload(self, model: ChatModel) -> None:
        if model.continuous is not None:
            model.continuous.close()

    def busy(self, model: ChatModel) -> bool:
        return model.continuous is not None and model.continuous.running > 0

    @staticmethod
    def _tokenizer(source: str) -> Any:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=False, padding_side="left"
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.chat_template is None:
            raise ValueError(f"{source} has no chat template; choose an instruction model")
        return tokenizer

    def window(self, source: str) -> ChatWindow:
        """The tokenizer and context of ``source``, loaded once on the CPU (no weights): for
        the front end, which cuts a conversation to fit before it asks for an answer."""
        with self._windows_lock:
            if source not in self._windows:
                config = AutoConfig.from_pretrained(source, trust_remote_code=False)
                limit = model_context(config) or self.context_tokens
                self._windows[source] = ChatWindow(
                    self, self._tokenizer(source), min(limit, self.context_tokens)
                )
            return self._windows[source]

    def model_bytes(self, model: ChatModel) -> int:
        cache = model.continuous.cache_bytes if model.continuous is not None else 0
        return super().model_bytes(model.model) + cache

    def messages(self, request: ChatRequest) -> list[dict[str, str]]:
        """The conversation as chat-template messages; a member's turns carry their name,
        and turns in a row from one side are joined, as many templates require them to
        alternate."""
        system = with_summary(request.system or self.system_prompt, request.summary)
        turns = [*request.history, ChatTurn("user", request.message, request.name)]
        if turns[0].role == "assistant":  # cut after a member's turn: templates want one first
            turns.insert(0, ChatTurn("user", CONTINUING))
        messages = [{"role": "system", "content": system}]
        for turn in turns:
            content = f"{turn.name}: {turn.content}" if turn.name else turn.content
            if messages[-1]["role"] == turn.role:
                messages[-1]["content"] += f"\n\n{content}"
            else:
                messages.append({"role": turn.role, "content": content})
        return messages

    def prompt(self, tokenizer: Any, request: ChatRequest) -> str:
        return tokenizer.apply_chat_template(
            self.messages(request), tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, tokenizer: Any, request: ChatRequest) -> list[int]:
        return tokenizer(self.prompt(tokenizer, request), add_special_tokens=False)["input_ids"]

    def run_batch(
        self, model: ChatModel, requests: Sequence[ChatRequest], ctx: BatchContext
    ) -> list[ChatResult | InvalidInput | concurrent.futures.Future[ChatResult]]:
        """Answers, or with continuous batching futures of them: the rows have joined the
        running batch and this returns at once."""
        limit = self.new_tokens(requests[0])
        prompts = [self.prompt_ids(model.tokenizer, r) for r in requests]
        fitting = [row for row, ids in enumerate(prompts) if len(ids) + limit <= model.context]
        if model.continuous is not None and not model.continuous.healthy:
            log.warning("%s: restarting continuous batching, which %s", model.source,
                        model.continuous.broken or "stopped")  # fmt: skip
            model.continuous.close()
            model.continuous = self._start_continuous(model)
        here = (
            fitting
            if model.continuous is None
            else self._beside(model.continuous, requests, fitting)
        )
        answers: dict[int, ChatResult | concurrent.futures.Future[ChatResult]] = {}
        if here:  # generated here first; the rest of the batch joins the running one after
            chosen = ([prompts[i] for i in here], [requests[i] for i in here])
            answers.update(zip(here, self._generate(model, *chosen, limit, Rows(ctx, here)),
                               strict=True))  # fmt: skip
        for row in fitting:
            if row not in here:
                assert model.continuous is not None
                answers[row] = self._join(model.continuous, prompts[row], requests[row], limit,
                                          ctx, row)  # fmt: skip
        return [
            answers[row]
            if row in fitting
            else InvalidInput(
                "message",
                f"the conversation takes {len(ids)} tokens; with the answer's {limit} it "
                f"would pass the model's {model.context}",
            )
            for row, ids in enumerate(prompts)
        ]

    @staticmethod
    def _beside(
        generator: ContinuousGenerator, requests: Sequence[ChatRequest], fitting: list[int]
    ) -> list[int]:
        """The rows to generate here rather than in the running batch: those that follow a
        schema, whose tokens the running batch cannot mask row by row. With CUDA graphs,
        only while the running batch is idle: a graph captured on its thread fails if
        another thread uses the GPU meanwhile. Otherwise they join it unconstrained (whoever
        asked for a schema checks the answer anyway)."""
        shaped = [row for row in fitting if requests[row].json_schema is not None]
        if shaped and generator.cuda_graphs and generator.running:
            log.info("%d answer(s) join the running batch without their schema", len(shaped))
            return []
        return shaped

    def _join(
        self,
        generator: ContinuousGenerator,
        prompt: list[int],
        request: ChatRequest,
        limit: int,
        ctx: BatchContext,
        row: int,
    ) -> concurrent.futures.Future[ChatResult]:
        generated = generator.submit(prompt, limit, request.temperature, ctx, row)
        answer: concurrent.futures.Future[ChatResult] = concurrent.futures.Future()

        def done(future: concurrent.futures.Future[Generated]) -> None:
            try:
                if future.cancelled():
                    raise BatchStopped
                if (error := future.exception()) is not None:
                    raise error
                tokens, stopped = future.result().tokens, future.result().stopped
                text = generator.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                answer.set_result(ChatResult(text, len(tokens), stopped))
            except BaseException as exc:  # whatever ends the row answers its job
                answer.set_exception(exc)

        generated.add_done_callback(done)
        return answer

    def _generate(
        self,
        model: ChatModel,
        prompts: list[list[int]],
        requests: list[ChatRequest],
        limit: int,
        ctx: BatchContext,
    ) -> list[ChatResult]:
        tokenizer = model.tokenizer
        encoded = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(
            model.device
        )
        sampler = _RowSampler(requests, model.device)
        width = model.model.get_output_embeddings().weight.shape[0]
        grammars = _RowGrammars(model, requests, encoded["input_ids"].shape[1], width)
        processors = [p for p in (grammars, sampler) if p.active]
        with torch.inference_mode():
            generated = model.model.generate(
                **encoded,
                max_new_tokens=limit,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(model.stop_ids),
                logits_processor=processors or None,
                streamer=BatchStreamer(tokenizer, ctx, len(requests), model.stop_ids),
                stopping_criteria=[StopWhenAbandoned(ctx)],
            )
        if ctx.should_stop():
            raise BatchStopped
        results = []
        for row in generated[:, encoded["input_ids"].shape[1] :].tolist():
            end = next((i for i, token in enumerate(row) if token in model.stop_ids), None)
            tokens = row if end is None else row[:end]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            results.append(ChatResult(text, len(tokens), end is not None))
        return results


class Rows:
    """The batch context of a batch's subset of rows, renumbered from 0."""

    def __init__(self, ctx: BatchContext, rows: list[int]) -> None:
        self.ctx = ctx
        self.rows = rows

    def should_stop(self) -> bool:
        return self.ctx.should_stop()

    def progress(self, step: int, total: int) -> None:
        self.ctx.progress(step, total)

    def partial(self, index: int, data: Any) -> None:
        self.ctx.partial(self.rows[index], data)

    def abandoned(self, index: int) -> bool:
        return self.ctx.abandoned(self.rows[index])
