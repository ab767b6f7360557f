"""Chat generation three ways, on one workload, in one run: how long members wait for the
first token and how many tokens per second the device produces.

    python bench/chat.py --device cpu --json out.json
    python bench/chat.py --device cuda --full-size --json out.json
    [--conversations 32] [--arrivals poisson|burst] [--rate 4] [--max-new 512] [--seed 0]

- ``naive``: one conversation at a time, in arrival order (``generate`` per request), as
  Discord AI bots commonly serve chat.
- ``static``: what the bot's executor does today: the conversations waiting when the device
  is free go in one ``generate`` call (left-padded, up to ``--max-batch``), which runs until
  its longest answer ends; later arrivals wait for it.
- ``continuous``: transformers' continuous batching (``model.init_continuous_batching``, a
  paged KV cache): a conversation joins the running batch at the next step and leaves
  when its answer ends. ``continuous_graphs`` (CUDA, not in the default paths): the same,
  each step replayed as a CUDA graph (``ContinuousBatchingConfig(use_cuda_graph=True)``).

Answer lengths are mixed (16 to ``--max-new`` tokens, log-uniform, seeded) and prompts are
64 random tokens; the random-weight model never ends early, so every answer has exactly its
length. ``--arrivals poisson`` spreads the conversations over time at ``--rate`` per second
(seeded); ``burst`` sends them all at once. The CPU model is a Qwen2 of about 25M
parameters, big enough that a step is not all overhead; ``--full-size`` builds
Qwen2.5-0.5B's architecture with random weights.

Reported per path: aggregate tokens/s (all answers' tokens over the time from the first
arrival to the last token), time to first token (from arrival) p50/p99, inter-token
latency p99, and the makespan.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import ContinuousBatchingConfig, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.generation.streamers import BaseStreamer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.executor.metrics import percentile  # noqa: E402 - the bot's own

PROMPT_TOKENS = 64
MIN_NEW = 16


@dataclass(frozen=True)
class Conversation:
    index: int
    arrival_s: float
    """Seconds after the run starts."""
    prompt: list[int]
    new_tokens: int


@dataclass
class Trace:
    """When each token of one answer appeared (seconds after the run started)."""

    arrival_s: float
    tokens: list[float] = field(default_factory=list)

    def ttft(self) -> float:
        return self.tokens[0] - self.arrival_s

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.tokens, self.tokens[1:], strict=False)]


def build_model(full_size: bool, device: str) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    if full_size:  # Qwen/Qwen2.5-0.5B-Instruct's architecture
        config = Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
            rope_theta=1_000_000.0, tie_word_embeddings=True,
        )  # fmt: skip
    else:
        config = Qwen2Config(
            vocab_size=8000, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
        )  # fmt: skip
    config.pad_token_id = 0
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype).eval()
    model.generation_config = GenerationConfig(do_sample=False, pad_token_id=0, eos_token_id=None)
    return model


def workload(args: argparse.Namespace, vocab: int) -> list[Conversation]:
    rng = random.Random(args.seed)
    conversations = []
    now = 0.0
    for index in range(args.conversations):
        if args.arrivals == "poisson" and index:
            now += rng.expovariate(args.rate)
        length = round(math.exp(rng.uniform(math.log(MIN_NEW), math.log(args.max_new))))
        prompt = [rng.randrange(1, vocab) for _ in range(PROMPT_TOKENS)]
        conversations.append(Conversation(index, now, prompt, length))
    return conversations


class _StepClock(BaseStreamer):
    """Stamps each generated column of a ``generate`` call: row ``i`` has a token at every
    step until its own answer length (the rest of the batch's steps are padding for it)."""

    def __init__(self, traces: list[Trace], lengths: list[int], clock: Callable[[], float]):
        self.traces, self.lengths, self.clock = traces, lengths, clock
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        now = self.clock()
        for trace, length in zip(self.traces, self.lengths, strict=True):
            if len(trace.tokens) < length:
                trace.tokens.append(now)

    def end(self) -> None:
        pass


def _wait_until(moment: float, clock: Callable[[], float]) -> None:
    delay = moment - clock()
    if delay > 0:
        time.sleep(delay)


def run_generate(
    model: Qwen2ForCausalLM, conversations: list[Conversation], max_batch: int
) -> list[Trace]:
    """Static batching (``max_batch`` > 1) or one at a time (1): whoever has arrived when
    the device is free goes in the next ``generate`` call, which runs to its longest answer."""
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    traces = [Trace(c.arrival_s) for c in conversations]
    pending = list(conversations)
    device = model.device
    while pending:
        _wait_until(pending[0].arrival_s, clock)
        now = clock()
        batch = [c for c in pending if c.arrival_s <= now][:max_batch]
        pending = [c for c in pending if c not in batch]
        ids = torch.tensor([c.prompt for c in batch], device=device)  # prompts: same length
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max(c.new_tokens for c in batch),
                min_new_tokens=max(c.new_tokens for c in batch),
                do_sample=False,
                streamer=_StepClock(
                    [traces[c.index] for c in batch], [c.new_tokens for c in batch], clock
                ),
            )
    return traces


def run_continuous(
    model: Qwen2ForCausalLM,
    conversations: list[Conversation],
    max_batch: int,
    cuda_graphs: bool = False,
) -> list[Trace]:
    """transformers' continuous batching: each conversation is added when it arrives and
    streams its tokens; the manager's own thread runs the steps. ``cuda_graphs`` replays
    each step's kernels as one graph (captured per padded shape on first use)."""
    longest = PROMPT_TOKENS + max(c.new_tokens for c in conversations)
    page = 64
    config = ContinuousBatchingConfig(
        page_size=page,
        num_blocks=max_batch * math.ceil(longest / page) + 8,
        max_batch_tokens=max(512, max_batch * 2),
        max_queue_size=0,
        use_cuda_graph=cuda_graphs,
    )
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(
            do_sample=False,
            max_new_tokens=max(c.new_tokens for c in conversations),
            eos_token_id=-1,  # random weights: every answer runs to its length
            pad_token_id=0,
        ),
        continuous_batching_config=config,
    )
    traces = [Trace(c.arrival_s) for c in conversations]
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    def collect() -> None:
        """Stamp each streamed result as it arrives, until every answer has ended."""
        remaining = len(conversations)
        while remaining:
            output = manager.get_result(timeout=60)
            if output is None:
                raise TimeoutError("continuous batching stopped producing results")
            now = clock()
            trace = traces[int(output.request_id[1:])]
            while len(trace.tokens) < len(output.generated_tokens):
                trace.tokens.append(now)
            remaining -= output.is_finished()

    manager.start()
    collector = threading.Thread(target=collect, name="collect")
    try:
        start = time.perf_counter()
        collector.start()
        for c in conversations:
            _wait_until(c.arrival_s, clock)
            manager.add_request(
                c.prompt, request_id=f"c{c.index}", max_new_tokens=c.new_tokens, streaming=True
            )
        collector.join()
    finally:
        manager.stop(block=True, timeout=30)
    return traces


def summarize(name: str, traces: list[Trace], wall_s: float) -> dict[str, Any]:
    tokens = sum(len(t.tokens) for t in traces)
    first = min(t.arrival_s for t in traces)
    last = max(t.tokens[-1] for t in traces)
    ttft = [t.ttft() for t in traces]
    gaps = [gap for t in traces for gap in t.gaps()]
    return {
        "path": name,
        "tokens": tokens,
        "tokens_per_s": tokens / (last - first),
        "makespan_s": last - first,
        "ttft_p50_ms": 1000 * statistics.median(ttft),
        "ttft_p99_ms": 1000 * percentile(ttft, 0.99),
        "itl_p99_ms": 1000 * percentile(gaps, 0.99) if gaps else 0.0,
        "wall_s": wall_s,
    }


PATHS: dict[str, Callable[[Qwen2ForCausalLM, list[Conversation], int], list[Trace]]] = {
    "naive": lambda model, conversations, _: run_generate(model, conversations, 1),
    "static": run_generate,
    "continuous": run_continuous,
    "continuous_graphs": lambda model, conversations, max_batch: run_continuous(
        model, conversations, max_batch, cuda_graphs=True
    ),
}


def report(
    args: argparse.Namespace, conversations: list[Conversation], results: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "conversations": [asdict(c) | {"prompt": len(c.prompt)} for c in conversations],
        "results": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true", help="Qwen2.5-0.5B architecture")
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--arrivals", choices=("poisson", "burst"), default="poisson")
    parser.add_argument("--rate", type=float, default=4.0, help="arrivals per second (poisson)")
    parser.add_argument("--max-new", type=int, default=512, help="longest answer in tokens")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--paths", default="naive,static,continuous")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    # Without psutil it logs an error at each start although the cache is sized here.
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)

    model = build_model(args.full_size, args.device)
    conversations = workload(args, model.config.vocab_size)
    total = sum(c.new_tokens for c in conversations)
    print(
        f"{args.conversations} conversations ({args.arrivals}"
        f"{f', {args.rate}/s' if args.arrivals == 'poisson' else ''}), {total} answer tokens, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters on {args.device}",
        file=sys.stderr,
    )
    warm = [Conversation(0, 0.0, conversations[0].prompt, 4)]
    results: list[dict[str, Any]] = []
    for name in args.paths.split(","):
        PATHS[name](model, warm, args.max_batch)  # first-call costs out of the figures
        began = time.perf_counter()
        traces = PATHS[name](model, conversations, args.max_batch)
        results.append(summarize(name, traces, time.perf_counter() - began))
        row = results[-1]
        print(
            f"{name:>10}: {row['tokens_per_s']:8.1f} tokens/s"
            f"  TTFT p50 {row['ttft_p50_ms']:8.0f} ms  p99 {row['ttft_p99_ms']:8.0f} ms"
            f"  ITL p99 {row['itl_p99_ms']:6.1f} ms  makespan {row['makespan_s']:6.1f} s",
            file=sys.stderr,
        )
        if args.json:  # a run cut short still leaves the paths it finished
            args.json.write_text(json.dumps(report(args, conversations, results), indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
