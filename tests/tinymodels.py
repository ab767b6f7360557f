"""Tiny real models built offline: random weights, real architectures, trained tokenizers.

They load through the same ``from_pretrained`` code as hub checkpoints, in a second on a CPU:
text models on a listed WordPiece vocabulary, translation and speech on sentencepiece
models trained here, images on a letters-only CLIP tokenizer.
The benchmark reuses the tokenizer builders for its in-memory models.
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from enum import StrEnum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sentencepiece
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
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
    CLIPConfig,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    M2M100Config,
    M2M100ForConditionalGeneration,
    M2M100Tokenizer,
    MarianConfig,
    MarianMTModel,
    MarianTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SpeechT5Config,
    SpeechT5FeatureExtractor,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    SpeechT5Processor,
    SpeechT5Tokenizer,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    VitsConfig,
    VitsModel,
    VitsTokenizer,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

from handlers.speak import CMU_ARCTIC_SPEAKERS

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
    """A BERT-style WordPiece tokenizer: one token per word of ``WORDS``, letters otherwise.

    The vocabulary is listed, not trained, so ids are the same in every run (a trainer
    breaks frequency ties in hash order, which changes the tiny models between runs).
    """
    letters = sorted({c for c in "".join(WORDS) + "abcdefghijklmnopqrstuvwxyz0123456789.,!?'"})
    tokens = dict.fromkeys([*SPECIAL, *letters, *(f"##{c}" for c in letters), *WORDS])
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
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


def chat_tokenizer(max_length: int = 256) -> PreTrainedTokenizerFast:
    """The WordPiece vocabulary with a chat template and an end-of-turn token."""
    tokenizer = wordpiece_tokenizer(max_length=max_length)
    tokenizer.add_special_tokens(
        {
            "eos_token": "<|end|>",
            "additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"],
        }
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


SPECIALS = ["<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"]
"""The byte-level chat vocabulary's specials: Qwen2's tokenizer class, which loads it, adds
<|endoftext|> unless it is there."""


def byte_level_chat_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE, as Qwen2.5's tokenizer (the default chat model's) is, trained on
    ``CORPUS`` and ``WORDS``: any text, JSON included, is a sequence of its tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIALS,
    )
    bpe.train_from_iterator([*CORPUS, " ".join(WORDS)] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|end|>", pad_token="<|pad|>",
        additional_special_tokens=SPECIALS[2:],
        model_max_length=4096,
    )  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_chat(directory: Path, positions: int = 256, byte_level: bool = False) -> Path:
    """A tiny Qwen2 causal LM with a chat template and an end-of-turn token; with
    ``byte_level``, over a byte-level BPE vocabulary rather than the WordPiece one."""
    tokenizer = byte_level_chat_tokenizer() if byte_level else chat_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    # With a zero row the end-of-turn logit is 0 while some word's is almost surely higher,
    # so random weights still answer with words.
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = 0
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


CORPUS = (
    "The study group meets every week to review notes and ask questions.",
    "We read about rivers, mountains and the history of the old city.",
    "Le groupe se réunit chaque semaine pour relire les notes et poser des questions.",
    "Nous lisons sur les rivières, les montagnes et l'histoire de la vieille ville.",
    "Die Gruppe trifft sich jede Woche, um Notizen zu lesen und Fragen zu stellen.",
    "Wir lesen über Flüsse, Berge und die Geschichte der alten Stadt.",
    "El grupo se reúne cada semana para repasar apuntes y hacer preguntas.",
    "Leemos sobre ríos, montañas y la historia de la ciudad antigua.",
)

MAX_LENGTH = 24
"""The tokenizers' ``model_max_length``: short, so that a few sentences overflow it.

Random models never stop early; their 40 positions also keep every generation short.
"""


def train_sentencepiece(vocab_size: int = 120) -> bytes:
    """A unigram sentencepiece model over ``CORPUS``, serialised as the ``.model`` file bytes."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _pieces(spm_bytes: bytes) -> list[str]:
    processor = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def _vocab(head: list[str], pieces: list[str], tail: list[str]) -> dict[str, int]:
    tokens = dict.fromkeys([*head, *pieces, *tail])
    return {token: i for i, token in enumerate(tokens)}


def build_m2m100(directory: Path) -> Path:
    """A two-layer M2M100 with the fairseq vocabulary layout and all 100 language tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    spm_bytes = train_sentencepiece()
    (directory / "sentencepiece.bpe.model").write_bytes(spm_bytes)
    vocab = _vocab(["<s>", "<pad>", "</s>", "<unk>"], _pieces(spm_bytes), [])
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = M2M100Tokenizer(
        str(directory / "vocab.json"),
        str(directory / "sentencepiece.bpe.model"),
        model_max_length=MAX_LENGTH,
    )
    # The model's embedding also covers the language tokens and fairseq's "madeup" words.
    languages = len(FAIRSEQ_LANGUAGE_CODES["m2m100"])
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=tokenizer.vocab_size + languages + tokenizer.num_madeup_words,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=40,
        init_std=0.3,
    )
    model = M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Zero language-token embeddings (tied to the output layer) so greedy decoding picks
        # them only when forced, as a trained model would; the forced one still needs removing.
        model.get_input_embeddings().weight[tokenizer.vocab_size :] = 0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_marian(directory: Path) -> Path:
    """A two-layer Marian (opus-mt layout: shared source/target spm, ``<pad>`` last)."""
    directory.mkdir(parents=True, exist_ok=True)
    spm_bytes = train_sentencepiece()
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes(spm_bytes)
    pieces = [p for p in _pieces(spm_bytes) if p not in {"<unk>", "<s>", "</s>"}]
    vocab = _vocab(["</s>", "<unk>"], pieces, ["<pad>"])
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = MarianTokenizer(
        str(directory / "source.spm"),
        str(directory / "target.spm"),
        str(directory / "vocab.json"),
        model_max_length=MAX_LENGTH,
    )
    pad = vocab["<pad>"]
    torch.manual_seed(1)
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=40,
        pad_token_id=pad,
        decoder_start_token_id=pad,
        eos_token_id=vocab["</s>"],
        forced_eos_token_id=vocab["</s>"],
        init_std=0.3,
    )
    MarianMTModel(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


MEL_BINS = 16
SAMPLE_RATE = 16000
XVECTOR_DIM = 512
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump? Sphinx of black quartz, judge my vow.",
    "Numbers: zero one two three; 0123456789 - 'quoted' (and) \"double\" words: ok.",
)


def speecht5_tokenizer(directory: Path) -> SpeechT5Tokenizer:
    """A character sentencepiece model with SpeechT5's special ids (<s> 0, <pad> 1, </s> 2)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT * 8),
        model_writer=model,
        model_type="char",
        vocab_size=64,
        hard_vocab_limit=False,
        character_coverage=1.0,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spm_char.model").write_bytes(model.getvalue())
    return SpeechT5Tokenizer(str(directory / "spm_char.model"))


def build_speecht5(directory: Path, max_text_positions: int = 64) -> Path:
    """A two-layer SpeechT5 whose stop head fires after a text-dependent number of steps.

    Random weights predict "stop" at a constant rate; a wide stop head with a negative bias
    reads the decoder state instead, so pieces end at different lengths as real ones do. A
    wide decoder prenet makes its always-on dropout audible in the output.
    """
    tokenizer = speecht5_tokenizer(directory)
    SpeechT5Processor(SpeechT5FeatureExtractor(), tokenizer).save_pretrained(directory)
    torch.manual_seed(0)
    config = SpeechT5Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=MEL_BINS,
        speech_decoder_prenet_units=32,
        speech_decoder_postnet_units=32,
        speech_decoder_postnet_layers=2,
        speaker_embedding_dim=XVECTOR_DIM,
        max_text_positions=max_text_positions,
        encoder_max_relative_position=16,
        max_speech_positions=2000,
    )
    model = SpeechT5ForTextToSpeech(config).eval()
    with torch.no_grad():
        for layer in model.speecht5.decoder.prenet.layers:
            layer.weight.normal_(0, 0.5)
        stop = model.speech_decoder_postnet.prob_out
        stop.weight.copy_(
            torch.randn(stop.weight.shape, generator=torch.Generator().manual_seed(0))
        )
        stop.bias.fill_(-10.0)
    model.save_pretrained(directory)
    return directory


def build_hifigan(directory: Path) -> Path:
    """A HiFi-GAN vocoder: 64 samples per mel frame, 16 kHz.

    Weights, biases and input statistics are scaled as in a trained vocoder, so the waveform
    swings over [-1, 1] and padding frames would show in the output (zeros would hide them).
    """
    torch.manual_seed(1)
    config = SpeechT5HifiGanConfig(
        model_in_dim=MEL_BINS,
        sampling_rate=SAMPLE_RATE,
        upsample_initial_channel=16,
        upsample_rates=[8, 8],
        upsample_kernel_sizes=[16, 16],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]],
    )
    vocoder = SpeechT5HifiGan(config).eval()
    with torch.no_grad():
        for module in vocoder.modules():
            if isinstance(module, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, 1.5 / fan_in**0.5)
                module.bias.normal_(0, 0.1)
        vocoder.mean.normal_(0, 0.5)
        vocoder.scale.uniform_(0.5, 1.5)
    vocoder.save_pretrained(directory)
    return directory


def xvectors(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, XVECTOR_DIM)).astype(np.float32)


def build_voices_parquet(path: Path, per_speaker: int = 2) -> Path:
    """An x-vector table laid out like ``regisss/cmu-arctic-xvectors``: speakers in turn."""
    names = [
        f"cmu_us_{code}_arctic-wav-arctic_a{take:04d}"
        for code in CMU_ARCTIC_SPEAKERS
        for take in range(1, per_speaker + 1)
    ]
    vectors = xvectors(len(names))
    table = pa.table({"filename": names, "xvector": [list(map(float, v)) for v in vectors]})
    pq.write_table(table, path)
    return path


def build_voices_npy(path: Path, rows: int = 3) -> Path:
    np.save(path, xvectors(rows, seed=1))
    return path


def build_vits(directory: Path, *, noise: bool = True) -> Path:
    """A one-layer MMS-style VITS with a character vocabulary, blank token "_" at id 0.

    ``noise=False`` zeroes the sampling noise, which makes VITS a deterministic function.
    """
    directory.mkdir(parents=True, exist_ok=True)
    characters = list(" abcdefghijklmnopqrstuvwxyz'-àâçéèêëîïôùûü")
    vocab = {"_": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(characters)}}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = VitsTokenizer(
        str(directory / "vocab.json"), pad_token="_", language="fra", phonemize=False
    )
    tokenizer.save_pretrained(directory)
    torch.manual_seed(2)
    config = VitsConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        window_size=2,
        ffn_dim=32,
        flow_size=8,
        spectrogram_bins=9,
        upsample_initial_channel=16,
        upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]],
        depth_separable_num_layers=1,
        duration_predictor_filter_channels=16,
        duration_predictor_num_flows=1,
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        sampling_rate=SAMPLE_RATE,
        noise_scale=0.667 if noise else 0.0,
        noise_scale_duration=0.8 if noise else 0.0,
    )
    VitsModel(config).eval().save_pretrained(directory)
    return directory


NATIVE_SIZE = 96


def letter_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single letters: enough to drive the text encoder offline."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, letter in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[letter + "</w>"] = 2 + i
        vocab[letter] = 28 + i
    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as name:
        folder = Path(name)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            str(folder / "vocab.json"),
            str(folder / "merges.txt"),
            model_max_length=77,
            pad_token="<|endoftext|>",
        )


def tiny_safety_checker() -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    """SD 1.x's own checker, with concept thresholds below any similarity: flags every image."""
    config = CLIPConfig(
        text_config=dict(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
            num_hidden_layers=1, num_attention_heads=2,
        ),
        projection_dim=16,
    )  # fmt: skip
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # cosine similarity is never below -1
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    return checker, processor


def tiny_pipeline(*, safety_checker: bool = False) -> StableDiffusionPipeline:
    """SD 2.1's layout (v-prediction DDIM) at toy width; random weights, so images are noise."""
    torch.manual_seed(0)
    text = CLIPTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=32, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=NATIVE_SIZE // 8, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=NATIVE_SIZE,
    )  # fmt: skip
    checker, feature_extractor = tiny_safety_checker() if safety_checker else (None, None)
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=letter_clip_tokenizer(),
        scheduler=DDIMScheduler(prediction_type="v_prediction", steps_offset=1, clip_sample=False),
        safety_checker=checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=safety_checker,
    )


def build_pipeline(
    directory: Path, *, safetensors: bool = True, safety_checker: bool = False
) -> Path:
    """Save a tiny pipeline; ``safetensors=False`` pickles the UNet and VAE as old repos do."""
    tiny_pipeline(safety_checker=safety_checker).save_pretrained(
        directory, safe_serialization=safetensors
    )
    return directory


def tiny_upscaler() -> StableDiffusionUpscalePipeline:
    """The SD x4 upscaler's layout at toy width: a 7-channel UNet (latents beside the
    low-resolution picture) with noise-level class embeddings, a VAE that scales by 4."""
    torch.manual_seed(3)
    text = CLIPTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, projection_dim=32, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
        num_class_embeds=351, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(8, 8, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        scaling_factor=0.08333, sample_size=64,
    )  # fmt: skip
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=letter_clip_tokenizer(),
        unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear"),
        scheduler=DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear"),
        max_noise_level=350,
    )


def build_upscaler(directory: Path) -> Path:
    tiny_upscaler().save_pretrained(directory)
    return directory


def build_taesd(directory: Path) -> Path:
    """A tiny autoencoder laid out like madebyollin/taesd: decodes the tiny pipeline's
    4-channel latents at 8x, as TAESD does SD's."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(2)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).save_pretrained(directory)  # fmt: skip
    return directory


class Verdict(StrEnum):
    """How a tiny safety classifier judges images."""

    NEVER = "never"
    ALWAYS = "always"
    VARIED = "varied"
    """Random weights scaled up: unsafe scores around 0.5 that depend on the pixels."""


def build_safety_classifier(
    directory: Path, verdict: Verdict, labels: tuple[str, str] = ("normal", "nsfw")
) -> Path:
    """A ViT image classifier laid out like Falconsai/nsfw_image_detection, label 1 unsafe."""
    torch.manual_seed(1)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=2, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        if verdict is Verdict.VARIED:
            model.classifier.weight.mul_(20.0)
            model.classifier.bias.copy_(torch.tensor([0.0, 2.5]))  # centre the scores near 0.5
        else:
            model.classifier.weight.zero_()
            unsafe = 20.0 if verdict is Verdict.ALWAYS else -20.0
            model.classifier.bias.copy_(torch.tensor([0.0, unsafe]))
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


WHISPER_LANGUAGES = ("en", "de", "fr", "es", "ja")
WHISPER_SPECIALS = (
    "<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in WHISPER_LANGUAGES),
    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
    "<|notimestamps|>",
)  # fmt: skip


def whisper_tokenizer() -> WhisperTokenizerFast:
    """Byte-level BPE trained on ``WORDS`` with Whisper's special and timestamp tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[]
    )
    bpe.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_object=bpe, unk_token=end, bos_token=end, eos_token=end, pad_token=end
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIALS)})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    return tokenizer


def build_whisper(directory: Path) -> Path:
    """A tiny multilingual Whisper (one layer each side, 80 mel bins, 5 languages).

    Random weights favour special and timestamp tokens, which decode to nothing: its output
    layer is untied and scaled so that it writes whole words.
    """
    tokenizer = whisper_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    end, start = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=64, pad_token_id=end, bos_token_id=end, eos_token_id=end,
        decoder_start_token_id=start, suppress_tokens=[], begin_suppress_tokens=[],
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    vocab = tokenizer.get_vocab()
    wordy = [
        i for token, i in vocab.items()
        if i < 300 and len(word := tokenizer.convert_tokens_to_string([token]).strip()) > 2
        and word.isalpha()
    ]  # fmt: skip
    scale = torch.full((len(tokenizer), 1), 0.01)
    scale[wordy] = 20.0
    with torch.no_grad():
        model.proj_out.weight.copy_(model.model.decoder.embed_tokens.weight * scale)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, bos_token_id=end,
        is_multilingual=True, max_length=64,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in WHISPER_LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, begin_suppress_tokens=[],
        # Generation ends at max_length: an end token would come first and leave nothing.
        suppress_tokens=[ids(token) for token in WHISPER_SPECIALS],
    )  # fmt: skip
    model.save_pretrained(directory)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    ).save_pretrained(directory)
    return directory


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""SmolVLM's chat template (Idefics3): images as ``<image>``, turns end with
``<end_of_utterance>``."""


def idefics3_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """The word-piece tokenizer with Idefics3's special tokens: its end of utterance, the
    image placeholders and a tag for each tile of a split image."""
    tokenizer = wordpiece_tokenizer(max_length=max_length)
    tiles = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tokenizer.add_special_tokens(
        {
            "eos_token": "<end_of_utterance>",
            "additional_special_tokens": ["<image>", "<fake_token_around_image>",
                                          "<global-img>", *tiles],
        }
    )  # fmt: skip
    return tokenizer


def build_vision(directory: Path) -> Path:
    """A tiny Idefics3 (SmolVLM's architecture): a one-layer SigLIP-style encoder over 32-px
    tiles, a two-layer Llama, the Idefics3 processor splitting images into tiles, and
    SmolVLM's chat template."""
    tokenizer = idefics3_tokenizer(max_length=4096)
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    config = Idefics3Config(
        text_config={
            "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 4096,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": end,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # a zero row: random weights still answer with words
        model.lm_head.weight[end] = 0
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = end
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={"longest_edge": 64}, max_image_size={"longest_edge": 32}
        ),
        tokenizer=tokenizer,
        chat_template=IDEFICS3_TEMPLATE,
        image_seq_len=4,  # (32 px / 8 px patches)^2 / scale_factor^2
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_every_task(root: Path) -> dict[str, Path]:
    """A tiny model for every task under ``root``, by task name, plus what speech reads
    beside its model (``vocoder``, ``voices``) and imagine's previews (``preview``): what a
    whole bot serves from."""
    return {
        "summarize": build_summarizer(root / "summarize"),
        "translate": build_m2m100(root / "translate"),
        "imagine": build_pipeline(root / "imagine"),
        "speak": build_speecht5(root / "speak"),
        "vocoder": build_hifigan(root / "vocoder"),
        "voices": build_voices_npy(root / "voices.npy"),
        "sentiment": build_classifier(root / "sentiment"),
        "classify": build_nli(root / "classify"),
        "chat": build_chat(root / "chat"),
        "transcribe": build_whisper(root / "transcribe"),
        "describe": build_vision(root / "describe"),
        "preview": build_taesd(root / "preview"),
        "upscale": build_upscaler(root / "upscale"),
    }
