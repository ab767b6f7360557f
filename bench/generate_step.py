"""What one step of plain (eager) ``generate`` costs for Qwen2.5-0.5B's architecture, at
batch 1 and batch 16: the per-step overhead that decides how chat and the other
autoregressive tasks scale on a GPU (docs/benchmarks.md).

    python bench/generate_step.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

NEW_TOKENS = 128
PROMPT_TOKENS = 64


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,16", help="batch sizes, comma-separated")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = Qwen2ForCausalLM(config).to(args.device, dtype).eval()
    prompt = torch.randint(1, 1000, (1, PROMPT_TOKENS), device=args.device)
    options = dict(
        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    model.generate(input_ids=prompt, **options)  # first-call costs out of the figures
    for batch in (int(size) for size in args.batches.split(",")):
        ids = prompt.repeat(batch, 1)
        synchronize(args.device)
        began = time.perf_counter()
        model.generate(input_ids=ids, **options)
        synchronize(args.device)
        step_ms = (time.perf_counter() - began) / NEW_TOKENS * 1000
        print(f"transformers {transformers.__version__}, batch {batch}: {step_ms:.1f} ms/step")
    began = time.perf_counter()
    sum(range(10**7))  # this machine's single-core Python speed, to compare machines
    print(f"python: sum(range(10**7)) in {time.perf_counter() - began:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
