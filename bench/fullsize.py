"""Full-size stand-ins for the default models, random weights, written as checkpoints the bot
loads like hub ones: what ``bench/capacity.py --full-size`` serves on a GPU.

Each has its default model's architecture (layers, widths, heads, positions): BART-large for
summarize and classify, M2M100-418M, SD 2.1 (768 px, v-prediction) and the SD x4 upscaler,
SpeechT5 with its HiFi-GAN, DistilBERT-base, Qwen2.5-0.5B, whisper-large-v3-turbo and
SmolVLM-500M (their own benchmarks' stand-ins). Vocabularies are the test tokenizers' (so
output layers are smaller than the real ones'), and weights are saved as float16. Random
weights never stop early: every answer runs to its length limit unless the benchmark ends it
(bench/lengths.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    M2M100Config,
    M2M100ForConditionalGeneration,
    M2M100Tokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
    SpeechT5Config,
    SpeechT5FeatureExtractor,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    SpeechT5Processor,
)
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.describe import build_model as describe_stand_in  # noqa: E402
from bench.transcribe import turbo_stand_in as transcribe_stand_in  # noqa: E402
from bench.workloads import BenchImage  # noqa: E402
from handlers.base import LoadSpec  # noqa: E402
from tests import tinymodels  # noqa: E402

BART_LARGE = dict(
    d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
    decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
    max_position_embeddings=1024,
)  # fmt: skip
TRANSCRIBE_TOKENS = 96
"""Tokens a 30-second piece may generate in the capacity run (speech of 3 to 15 s)."""
MEL_BINS = 80
"""SpeechT5's mel bins, which its HiFi-GAN reads."""


def _save(model: torch.nn.Module, tokenizer: object, directory: Path) -> Path:
    model.half().save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)  # type: ignore[attr-defined]
    return directory


def summarizer(directory: Path) -> Path:
    tokenizer = tinymodels.wordpiece_tokenizer(max_length=1024)
    config = BartConfig(vocab_size=len(tokenizer), **BART_LARGE, **tinymodels._bart_ids(tokenizer))
    return _save(BartForConditionalGeneration(config).eval(), tokenizer, directory)


def nli(directory: Path) -> Path:
    tokenizer = tinymodels.wordpiece_tokenizer(max_length=1024)
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    config = BartConfig(
        vocab_size=len(tokenizer), **BART_LARGE, **tinymodels._bart_ids(tokenizer),
        num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    return _save(BartForSequenceClassification(config).eval(), tokenizer, directory)


def translator(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spm = tinymodels.train_sentencepiece()
    (directory / "sentencepiece.bpe.model").write_bytes(spm)
    vocab = tinymodels._vocab(["<s>", "<pad>", "</s>", "<unk>"], tinymodels._pieces(spm), [])
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = M2M100Tokenizer(
        str(directory / "vocab.json"), str(directory / "sentencepiece.bpe.model"),
        model_max_length=1024,
    )  # fmt: skip
    languages = len(FAIRSEQ_LANGUAGE_CODES["m2m100"])
    config = M2M100Config(
        vocab_size=tokenizer.vocab_size + languages + tokenizer.num_madeup_words,
        **BART_LARGE,
    )
    return _save(M2M100ForConditionalGeneration(config).eval(), tokenizer, directory)


def speech(directory: Path) -> Path:
    tokenizer = tinymodels.speecht5_tokenizer(directory)
    SpeechT5Processor(SpeechT5FeatureExtractor(), tokenizer).save_pretrained(directory)
    config = SpeechT5Config(vocab_size=len(tokenizer), num_mel_bins=MEL_BINS)  # its defaults
    model = SpeechT5ForTextToSpeech(config).eval()
    with torch.no_grad():  # a stop head that reads the decoder: answers end at varied lengths
        model.speech_decoder_postnet.prob_out.bias.fill_(-10.0)
    return _save(model, None, directory)


def vocoder(directory: Path) -> Path:
    config = SpeechT5HifiGanConfig(model_in_dim=MEL_BINS)  # HiFi-GAN's full widths
    return _save(SpeechT5HifiGan(config).eval(), None, directory)


def classifier(directory: Path) -> Path:
    tokenizer = tinymodels.wordpiece_tokenizer(max_length=512)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )  # fmt: skip
    return _save(DistilBertForSequenceClassification(config).eval(), tokenizer, directory)


def chat(directory: Path) -> Path:
    tokenizer = tinymodels.chat_tokenizer(max_length=4096)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        max_position_embeddings=32768, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return _save(model, tokenizer, directory)


def pipeline(directory: Path) -> Path:
    BenchImage(full_size=True)._build(LoadSpec("bench", "cpu", torch.float16)).save_pretrained(
        directory
    )
    return directory


def upscaler(directory: Path) -> Path:
    """The SD x4 upscaler's architecture (stabilityai/stable-diffusion-x4-upscaler): a
    7-channel UNet whose first blocks only cross-attend, a VAE that scales by 4."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, hidden_act="gelu", projection_dim=512,
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=7, out_channels=4, block_out_channels=(256, 512, 512, 1024),
        layers_per_block=2, cross_attention_dim=1024, attention_head_dim=8,
        num_class_embeds=1000, only_cross_attention=(True, True, True, False),
        use_linear_projection=True,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
    )  # fmt: skip
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(128, 256, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=256, scaling_factor=0.08333,
    )  # fmt: skip
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=CLIPTextModel(text), tokenizer=tinymodels.letter_clip_tokenizer(),
        unet=unet, low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear"),
        scheduler=DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear"),
        max_noise_level=350,
    )  # fmt: skip
    pipe.to(dtype=torch.float16).save_pretrained(directory)
    return directory


def preview(directory: Path) -> Path:
    """TAESD's architecture (madebyollin/taesd): the tiny autoencoder of live previews."""
    from diffusers import AutoencoderTiny

    AutoencoderTiny().save_pretrained(directory)
    return directory


def build(directory: Path) -> dict[str, str]:
    """Every task's model under ``directory``; the paths for BOT_MODELS__* and the speech
    settings (``vocoder``, ``voices``)."""
    torch.manual_seed(0)
    return {
        "summarize": str(summarizer(directory / "summarize")),
        "translate": str(translator(directory / "translate")),
        "imagine": str(pipeline(directory / "imagine")),
        "speak": str(speech(directory / "speak")),
        "vocoder": str(vocoder(directory / "vocoder")),
        "voices": str(tinymodels.build_voices_npy(directory / "voices.npy")),
        "sentiment": str(classifier(directory / "sentiment")),
        "classify": str(nli(directory / "classify")),
        "chat": str(chat(directory / "chat")),
        "preview": str(preview(directory / "preview")),
        "upscale": str(upscaler(directory / "upscale")),
        "transcribe": str(transcribe_stand_in(directory / "transcribe", TRANSCRIBE_TOKENS)),
        "describe": str(describe_stand_in(directory / "describe", full_size=True)),
    }
