"""Wires settings to handlers and the executor; the one place that knows every task."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from bot.executor import Backend, Executor, ExecutorError, LocalBackend, ModelRegistry
from bot.executor.errors import not_downloaded
from bot.executor.process import ProcessBackend, WorkerSpec
from bot.executor.registry import check_device, resolve_device
from bot.guilds import GuildSettingsStore
from bot.invocations import Invoker
from bot.models import PULL_COMMAND, offline_unless_reachable, presence, requirements
from bot.prometheus import MetricsServer
from bot.quotas import QuotaPolicy, Quotas
from bot.settings import Settings
from bot.usage import UsageLog
from handlers.base import Task
from handlers.chat import ChatTask
from handlers.classify import ClassifyTask
from handlers.describe import DescribeTask
from handlers.imagine import ImageModelChoice, ImagineTask, configured_native_size
from handlers.sentiment import SentimentTask
from handlers.speak import SpeakTask
from handlers.summarize import SummarizeTask
from handlers.transcribe import TranscribeTask
from handlers.translate import TranslateTask
from handlers.upscale import UpscaleTask

log = logging.getLogger(__name__)

Worker = Literal["process", "thread"]

WORKER_CLASSES = {"imagine": "image", "upscale": "image", "chat": "chat", "speak": "audio",
                  "transcribe": "audio"}  # fmt: skip
"""Which worker a task runs in when each device has a worker per class; "text" otherwise
(describe too: a short generate, like summarize's, not a diffusion batch)."""


class TaskUnavailable(ExecutorError):
    """A task could not get ready (e.g. its voice table or language detector failed to load)."""

    def __init__(self, task: str, cause: BaseException) -> None:
        self.task = task
        if not_downloaded(cause):
            super().__init__(
                f"{task} is unavailable: files it needs are not downloaded; "
                f"run `{PULL_COMMAND} {task}`"
            )
            return
        reason = " ".join(str(cause).split())
        super().__init__(f"{task} is unavailable: {type(cause).__name__}: {reason}")


def build_tasks(settings: Settings) -> dict[str, Task[Any, Any]]:
    imagine = settings.imagine
    return {
        "summarize": SummarizeTask(
            max_chars=settings.summarize.max_chars,
            max_summary_tokens=settings.summarize.max_summary_tokens,
        ),
        "translate": TranslateTask(
            max_chars=settings.max_text_chars, pair_models=settings.translate.pair_models
        ),
        "imagine": ImagineTask(
            max_steps=imagine.max_steps,
            default_steps=imagine.default_steps,
            default_guidance=imagine.default_guidance,
            max_count=imagine.max_count,
            safety_model=imagine.safety_model,
            safety_threshold=imagine.safety_threshold,
            blocked_terms=imagine.blocked_terms,
            # Known from the config files when they are on disk: sizes are then offered and
            # checked before the model loads.
            native_size=configured_native_size(settings.models.imagine),
            scheduler=imagine.scheduler,
            channels_last=imagine.channels_last,
            compile=imagine.compile,
            default_strength=imagine.default_strength,
            max_image_bytes=imagine.max_image_bytes,
            preview_model=imagine.preview_model if imagine.previews else None,
            preview_every_s=settings.edit_interval_s,
            models={
                name: ImageModelChoice(
                    m.source,
                    m.default_steps,
                    m.default_guidance,
                    m.scheduler,
                    configured_native_size(m.source),
                )
                for name, m in imagine.models.items()
            },
            default_name=imagine.default_name,
        ),
        "upscale": UpscaleTask(
            steps=settings.upscale.steps,
            guidance=settings.upscale.guidance,
            noise_level=settings.upscale.noise_level,
            max_side=settings.upscale.max_side,
            max_image_bytes=imagine.max_image_bytes,
            max_output_bytes=settings.upscale.max_output_bytes,
            safety_model=imagine.safety_model,
            safety_threshold=imagine.safety_threshold,
        ),
        "speak": SpeakTask(
            max_chars=settings.speak.max_chars,
            voices=settings.speak.voices,
            vocoder=settings.speak.vocoder,
            language_models=settings.speak.language_models,
        ),
        "sentiment": SentimentTask(max_chars=settings.max_text_chars),
        "classify": ClassifyTask(max_chars=settings.max_text_chars),
        "chat": chat_task(settings),
        "transcribe": TranscribeTask(
            max_seconds=settings.transcribe.max_seconds,
            max_bytes=settings.transcribe.max_bytes,
            no_speech_threshold=settings.transcribe.no_speech_threshold,
            log_prob_threshold=settings.transcribe.log_prob_threshold,
            pieces_per_call=settings.transcribe.pieces_per_call,
        ),
        "describe": DescribeTask(
            max_images=settings.describe.max_images,
            max_bytes=settings.describe.max_bytes,
            max_pixels=settings.describe.max_pixels,
            max_chars=settings.max_text_chars,
            default_new_tokens=settings.describe.default_new_tokens,
            context_tokens=settings.describe.context_tokens,
            safety_model=imagine.safety_model,
            safety_threshold=imagine.safety_threshold,
        ),
    }


def chat_task(settings: Settings) -> ChatTask:
    """The local model's chat, or an OpenAI-compatible server's."""
    chat = settings.chat
    common = dict(
        default_new_tokens=chat.default_new_tokens,
        max_new_tokens=chat.max_new_tokens,
        system_prompt=chat.system_prompt,
        context_tokens=chat.context_tokens,
    )
    if chat.engine == "openai":
        from handlers.remote_chat import RemoteChatTask

        server = chat.openai
        key = server.api_key.get_secret_value() if server.api_key else None
        return RemoteChatTask(
            server.base_url, key, server.max_concurrent, server.timeout_s, **common
        )
    continuous = chat.continuous
    if continuous == "auto":  # decided here, so that the executor knows chat's row cap
        # On Ray the replicas' devices are not known here: static batches, unless asked.
        local = settings.backend == "local"
        cuda = any(resolve_device(device).startswith("cuda") for device in settings.devices())
        continuous = "on" if local and cuda else "off"
    return ChatTask(
        **common,
        continuous=continuous,
        max_running=chat.max_running,
        cuda_graphs=chat.cuda_graphs,
    )


def build_executor(
    settings: Settings,
    worker: Worker | None = None,
    eager: Iterable[str] | None = None,
    handlers: dict[str, Task[Any, Any]] | None = None,
) -> Executor:
    """The executor with a backend per device: worker processes, or threads of this process
    (``worker`` overrides ``BOT_WORKER``); or, with ``BOT_BACKEND=ray``, a Ray Serve
    deployment per task, those in ``eager`` (default: all) deployed when it starts.
    ``handlers`` replaces the tasks the settings make (a benchmark's own)."""
    tasks = handlers if handlers is not None else build_tasks(settings)
    budget = settings.memory_budget_bytes()
    if settings.backend == "ray":
        backends_of = ray_backends(settings, tasks, eager)
        return Executor(tasks, settings.default_models(), backends_of, settings.executor_config())
    backends: list[Backend]
    if (worker or settings.worker) == "process":
        level = logging.getLogger().getEffectiveLevel()
        on_device = {n: t for n, t in tasks.items() if not t.remote}
        if workers_by_class(settings):
            return Executor(
                tasks, settings.default_models(), class_backends(settings, on_device, level),
                settings.executor_config(),
            )  # fmt: skip
        specs = [
            WorkerSpec(device, settings.dtype, budget, settings.torch_threads,
                       settings.cpu_workers, level)
            for device in settings.devices()
        ]  # fmt: skip
        backends = [ProcessBackend(on_device, spec) for spec in specs]
    else:
        backends = [
            LocalBackend(
                ModelRegistry(device, settings.dtype, budget),
                settings.torch_threads,
                settings.cpu_workers,
            )
            for device in settings.devices()
        ]
    return Executor(tasks, settings.default_models(), backends, settings.executor_config())


def workers_by_class(settings: Settings) -> bool:
    """Whether the device gets a worker per class of task (BOT_WORKERS_PER_DEVICE): with
    several devices each serves every task (settings refuse by-class there)."""
    devices = settings.devices()
    if settings.workers_per_device != "auto" or len(devices) > 1:
        return settings.workers_per_device == "by-class" and len(devices) == 1
    return resolve_device(devices[0]).startswith("cuda")


def worker_classes(tasks: Iterable[str]) -> dict[str, list[str]]:
    """The tasks of each worker class, in the classes' first-seen order."""
    classes: dict[str, list[str]] = {}
    for name in tasks:
        classes.setdefault(WORKER_CLASSES.get(name, "text"), []).append(name)
    return classes


def class_backends(
    settings: Settings, tasks: dict[str, Task[Any, Any]], log_level: int
) -> dict[str, Backend]:
    """A worker process per class of task on the one device, each with the share of the
    memory budget its models' size on disk asks for (an even share while they are not
    downloaded: the shares are set when the bot starts), and, on the CPU, its share of
    the cores."""
    classes = worker_classes(tasks)
    (device,) = settings.devices()
    budget = settings.memory_budget_bytes()
    sizes = class_sizes(settings, classes) if budget is not None else dict.fromkeys(classes, 1)
    threads = settings.torch_threads
    if threads is None and resolve_device(device) == "cpu":
        threads = max(1, (os.cpu_count() or 1) // len(classes))  # the cores shared out
    backends: dict[str, Backend] = {}
    for name, members in classes.items():
        share = None if budget is None else int(budget * sizes[name] / sum(sizes.values()))
        spec = WorkerSpec(device, settings.dtype, share, threads, settings.cpu_workers,
                          log_level, name=name)  # fmt: skip
        backend = ProcessBackend({task: tasks[task] for task in members}, spec)
        backends |= dict.fromkeys(members, backend)
    return backends


def class_sizes(settings: Settings, classes: dict[str, list[str]]) -> dict[str, int]:
    """Bytes on disk of each class's models (what its worker will hold), read from the local
    cache without touching the network; a class with none yet counts as the mean, and a
    cache that cannot be read gives an even split."""
    try:
        found = {
            name: sum(presence(need).size for need in requirements(settings, members))
            for name, members in classes.items()
        }
    except OSError as exc:
        log.warning("the memory budget is split evenly between the workers: %s", exc)
        return dict.fromkeys(classes, 1)
    known = [size for size in found.values() if size > 0]
    mean = sum(known) // len(known) if known else 1
    return {name: size or mean for name, size in found.items()}


def ray_backends(
    settings: Settings, tasks: dict[str, Task[Any, Any]], eager: Iterable[str] | None = None
) -> dict[str, Backend]:
    """A deployment per task that runs on a device (a remote one keeps its thread here),
    sharing one connection to the cluster."""
    from bot.executor.ray_backend import (
        DeploymentSpec,
        RayCluster,
        RayTaskBackend,
        ReplicaSpec,
        auto_gpus,
    )

    ray = settings.ray
    cluster = RayCluster(ray.address, ray.num_cpus, ray.prefix)
    on_device = {name: task for name, task in tasks.items() if not task.remote}
    wanted = set(on_device if eager is None else eager)
    models = settings.default_models()
    preloaded = set(settings.preload)
    if settings.imagine.compile:  # minutes: each replica compiles as it starts, not in a request
        preloaded.add("imagine")
    backends: dict[str, Backend] = {}
    for name, task in on_device.items():
        deployment = ray.deployment(name)
        spec = DeploymentSpec(
            gpus=deployment.gpus_per_replica,
            cpus=deployment.cpus_per_replica,
            min_replicas=deployment.min_replicas,
            max_replicas=deployment.max_replicas,
            max_ongoing_requests=deployment.max_ongoing_requests,
        )
        replica = ReplicaSpec(
            dtype=settings.dtype,
            budget_bytes=settings.memory_budget_bytes(),
            torch_threads=settings.torch_threads,
            encoders=settings.cpu_workers,
            log_level=logging.getLogger().getEffectiveLevel(),
            preload=(models[name],) if name in preloaded else (),
        )
        backends[name] = RayTaskBackend(
            cluster,
            task,
            spec,
            replica,
            eager=name in wanted,
            required=eager is not None and name in wanted,  # ask's task; the bot serves on
            gpu_share=auto_gpus(len(on_device)),
        )
    return backends


@dataclass(frozen=True)
class Services:
    """Everything a front end needs, opened together and closed in the right order."""

    executor: Executor
    usage: UsageLog
    invoker: Invoker
    metrics: MetricsServer | None = None
    """The Prometheus endpoint, when the bot serves one."""


@asynccontextmanager
async def running(
    settings: Settings,
    tasks: Iterable[str] | None = None,
    *,
    metrics: bool = False,
    worker: Worker | None = None,
) -> AsyncIterator[Services]:
    """Open the usage log and start the executor; on exit drain jobs, then flush the log.

    ``metrics`` serves Prometheus metrics when ``BOT_METRICS_PORT`` is set: the long-running
    bot asks for it, one-off commands don't (they would compete for the port). ``worker``
    overrides ``BOT_WORKER`` (``ask`` runs its one job in a thread, quicker to start).
    """
    usage = UsageLog(
        settings.usage_path(),
        retention_days=settings.usage.retention_days,
        image_requests_ttl_s=settings.imagine.reroll_hours * 3600,
        conversations_ttl_s=settings.chat.memory_days * 86400,
    )
    async with usage:
        quotas = Quotas(
            QuotaPolicy(
                settings.quotas,
                settings.cooldowns,
                frozenset(settings.quota_exempt_users),
                settings.gpu_seconds_per_day,
            ),
            usage,
        )
        await quotas.load()
        guilds = GuildSettingsStore(usage)
        await guilds.load()
        executor = await start_executor(settings, tasks, worker)
        server: MetricsServer | None = None
        try:
            server = serve_metrics(executor, settings) if metrics else None
            invoker = Invoker(
                executor, usage, quotas, guilds, settings.log_prompts, settings.direct_messages
            )
            # What start-up created (torch, transformers and discord.py's modules: most of a
            # million objects) stays: the collector stops walking it, which made each full
            # collection stall the event loop for a quarter of a second under load.
            gc.collect()
            gc.freeze()
            yield Services(executor, usage, invoker, server)
        finally:
            if server is not None:
                await asyncio.to_thread(server.close)
            await executor.shutdown()


def serve_metrics(executor: Executor, settings: Settings) -> MetricsServer | None:
    """The metrics endpoint if one is configured; a port that cannot be bound is logged and
    the bot serves Discord without metrics."""
    if settings.metrics_port is None:
        return None
    try:
        server = MetricsServer(executor, settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        log.error(
            "metrics are off: cannot listen on %s:%s: %s",
            settings.metrics_host,
            settings.metrics_port,
            exc,
        )
        return None
    log.info("serving metrics at http://%s:%d/metrics", server.host, server.port)
    return server


async def start_executor(
    settings: Settings,
    tasks: Iterable[str] | None = None,
    worker: Worker | None = None,
    handlers: dict[str, Task[Any, Any]] | None = None,
) -> Executor:
    """A started executor with ``tasks`` prepared and the preload list loaded.

    Naming ``tasks`` makes their preparation a condition of starting (``ask`` needs its
    one task); without it every task is prepared and one that fails is only logged, so
    the bot still serves the others.
    """
    tasks = None if tasks is None else list(tasks)
    if settings.backend == "local":  # on Ray, the replicas find their own devices
        for device in settings.devices():
            check_device(resolve_device(device))
    executor = build_executor(settings, worker, tasks, handlers)
    wanted = list(executor.tasks if tasks is None else tasks)
    sources = [
        executor.default_models[name]
        for name in wanted
        if not executor.tasks[name].remote  # another server's models
    ]
    await asyncio.to_thread(offline_unless_reachable, sources)
    for name in wanted:
        try:
            await asyncio.to_thread(executor.tasks[name].prepare)
        except Exception as exc:
            if tasks is not None:
                raise TaskUnavailable(name, exc) from exc
            log.error("%s", TaskUnavailable(name, exc))
    preload = list(settings.preload)
    if settings.imagine.compile and "imagine" in wanted and "imagine" not in preload:
        preload.append("imagine")  # compiling takes minutes: never within a request's limit
    try:
        await executor.start()
        for task in preload:
            await executor.preload(task)
    except BaseException:
        await executor.shutdown()  # no worker thread or model left behind
        raise
    return executor
