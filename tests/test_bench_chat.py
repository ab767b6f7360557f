"""bench/chat.py's three paths still run and time every token (transformers' continuous
batching API moves between releases); the figures themselves belong to the benchmark."""

from __future__ import annotations

import argparse

import pytest

from bench import chat


@pytest.fixture(scope="module")
def model() -> chat.Qwen2ForCausalLM:
    return chat.build_model(full_size=False, device="cpu")


@pytest.mark.parametrize("path", sorted(chat.PATHS))
def test_each_path_times_every_token_of_every_answer(
    model: chat.Qwen2ForCausalLM, path: str
) -> None:
    args = argparse.Namespace(seed=1, conversations=4, arrivals="poisson", rate=50.0, max_new=24)
    conversations = chat.workload(args, model.config.vocab_size)
    traces = chat.PATHS[path](model, conversations, 4)
    assert [len(t.tokens) for t in traces] == [c.new_tokens for c in conversations]
    for trace in traces:
        assert trace.ttft() >= 0 and all(gap >= 0 for gap in trace.gaps())
    row = chat.summarize(path, traces, wall_s=1.0)
    assert row["tokens"] == sum(c.new_tokens for c in conversations) and row["tokens_per_s"] > 0
