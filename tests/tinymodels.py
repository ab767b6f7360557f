"""Tiny real models built offline: random weights, real architectures, trained tokenizers.

They load through the same ``from_pretrained`` code as hub checkpoints, in a second on a CPU.
The benchmark reuses the tokenizer builders for its in-memory models.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

WORDS = (  # noqa: SIM905 - a sentence reads better than a column of words
    "the a study group meets every week to review notes and ask questions about physics "
    "chemistry history music art code models data great terrible good bad happy sad love hate "
    "today tomorrow lesson exam project deadline friend teacher library coffee quiet loud fast "
    "slow bright dark summary translation image voice sentiment label river mountain city"
).split()

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences(count: int, length: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences of ``length`` words over the tokenizer's vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=length)) for _ in range(count)]


def wordpiece_tokenizer(max_length: int = 512) -> PreTrainedTokenizerFast:
    """A BERT-style tokenizer trained on ``WORDS`` alone (one token per word)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=1000, special_tokens=SPECIAL, show_progress=False
    )
    tokenizer.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def tiny_classifier(vocab_size: int) -> DistilBertForSequenceClassification:
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=vocab_size,
        dim=32,
        hidden_dim=64,
        n_layers=2,
        n_heads=2,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    return DistilBertForSequenceClassification(config).eval()


def build_classifier(directory: Path, *, safetensors: bool = True) -> Path:
    """Save a tiny sentiment classifier as a hub checkpoint would be laid out.

    ``safetensors=False`` leaves only a pickled ``pytorch_model.bin``, as old checkpoints do.
    """
    tokenizer = wordpiece_tokenizer(max_length=128)
    model = tiny_classifier(len(tokenizer))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if not safetensors:
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
        (directory / "model.safetensors").unlink()
    return directory


def _bart_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int | None]:
    """BART's special ids, matched to the WordPiece tokenizer's."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "decoder_start_token_id": tokenizer.cls_token_id,
        "forced_eos_token_id": None,
    }


def tiny_bart_config(tokenizer: PreTrainedTokenizerFast, **extra: object) -> BartConfig:
    return BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        **_bart_ids(tokenizer),
        **extra,
    )


def place_in_hub_cache(model_dir: Path, cache: Path, repo_id: str) -> Path:
    """Lay ``model_dir`` out as huggingface_hub's cache does, so ``repo_id`` loads offline."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def build_summarizer(directory: Path) -> Path:
    """A tiny BART with a 64-token window, so modest texts must be chunked."""
    tokenizer = wordpiece_tokenizer(max_length=64)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(tiny_bart_config(tokenizer)).eval()
    # Random weights favour special tokens, which decode to nothing: make it emit words.
    with torch.no_grad():
        model.final_logits_bias[:, : len(SPECIAL)] = -1e4
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_nli(directory: Path) -> Path:
    """A tiny BART-MNLI-shaped classifier (contradiction, neutral, entailment)."""
    tokenizer = wordpiece_tokenizer(max_length=64)
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    torch.manual_seed(0)
    config = tiny_bart_config(
        tokenizer, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model = BartForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_chat(directory: Path) -> Path:
    """A tiny Qwen2 causal LM with a chat template and an end-of-turn token."""
    tokenizer = wordpiece_tokenizer(max_length=256)
    tokenizer.add_special_tokens(
        {
            "eos_token": "<|end|>",
            "additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"],
        }
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
