"""Tiny real models built offline: random weights, real architectures, trained tokenizers.

They load through the same ``from_pretrained`` code as hub checkpoints, in a second on a CPU.
The benchmark reuses the tokenizer builders for its in-memory models.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedTokenizerFast,
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
