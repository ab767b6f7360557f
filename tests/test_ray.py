"""BOT_BACKEND=ray on a real local Ray (started here once, 2 CPUs): every task answers as on
the local backend, events and Cancel cross, a deployment's replicas run batches at once, a
replica killed mid-batch is retried once on another, and the bot keeps serving.

Ray is a dev dependency: without it these tests fail (CI installs it), they never skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import ray
import soundfile
from ray import serve

from bot.app import build_tasks, ray_backends, start_executor
from bot.doctor import Status, check_ray
from bot.executor import (
    BackendUnavailable,
    Executor,
    ExecutorConfig,
    JobCancelled,
    JobFailed,
    JobState,
    WorkerCrashed,
    ray_backend,
)
from bot.executor.ray_backend import DeploymentSpec, RayCluster, RayTaskBackend, ReplicaSpec
from bot.settings import Settings
from handlers.base import InvalidInput, TaskKind
from handlers.chat import ChatRequest
from handlers.classify import ClassifyRequest
from handlers.imagine import ImagineRequest
from handlers.sentiment import SentimentRequest
from handlers.speak import SpeakRequest
from handlers.summarize import SummarizeRequest
from handlers.translate import TranslateRequest
from tests import tinymodels
from tests.fakes import limits
from tests.remote_tasks import Done, Order, RemoteTask

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "test-ray"
WAIT_S = 180
"""Generous bounds on waits that should take seconds: a hung test fails instead of hanging."""

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """A local Ray with 2 CPUs for this module; the backends find it connected and leave it.
    Ray sets its own SIGTERM handler when started on the main thread (the bot starts it on
    another): the test's handlers are put back after it."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},  # replicas import tests.*
    )
    serve.start(proxy_location="Disabled")
    yield
    serve.shutdown()
    ray.shutdown()
    for number, handler in handlers.items():
        signal.signal(number, handler)


@pytest.mark.parametrize(
    ("address", "owned"), [(None, True), ("auto", False), ("head:6379", False)]
)
async def test_only_a_ray_started_by_the_bot_ends_with_it(
    address: str | None, owned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster the bot joined is not shut down when it stops, so its deployments are
    deleted instead; unset, the bot starts a Ray of its own even if one runs here."""
    inits: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: inits.append(options))
    monkeypatch.setattr(serve, "start", lambda **options: None)
    cluster = RayCluster(address)
    cluster._connect()
    assert cluster.owned is owned
    assert [init["address"] for init in inits] == [address or "local"]


async def test_the_bot_starts_without_a_failed_deployment_ask_not_and_compiling_preloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    settings = Settings(backend="ray", imagine={"compile": True})
    tasks = build_tasks(settings)
    bot = ray_backends(settings, tasks)
    asked = ray_backends(settings, tasks, eager=["sentiment"])
    assert all(isinstance(b, RayTaskBackend) and b.eager and not b.required for b in bot.values())
    assert [n for n, b in asked.items() if getattr(b, "required", False)] == ["sentiment"]
    # Every replica compiles its model as it starts, never within a request's limit.
    imagine = bot["imagine"]
    assert isinstance(imagine, RayTaskBackend)
    assert imagine.replica.preload == (settings.default_models()["imagine"],)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition``; a test whose condition never comes fails instead of hanging."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT_S)


def remote_executor(task: RemoteTask, replicas: int = 2) -> Executor:
    """The remote task as a deployment of ``replicas``, each taking one batch at a time."""
    spec = DeploymentSpec(cpus=0.1, min_replicas=replicas, max_replicas=replicas)
    backend = RayTaskBackend(RayCluster(prefix=PREFIX), task, spec, ReplicaSpec())
    class_limits = limits(max_batch=4)
    config = ExecutorConfig(max_per_user=8, limits={k: class_limits for k in TaskKind})
    return Executor({task.name: task}, {task.name: "remote-model"}, {task.name: backend}, config)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Executor]:
    """One deployment of two replicas for the behaviour tests (starting one takes seconds)."""
    async with remote_executor(RemoteTask()) as started:
        yield started


async def test_a_batch_runs_on_a_replica_with_its_events(engine: Executor) -> None:
    handle = engine.submit("remote", Order("hello"), user_id="u")
    events = [event async for event in handle.events()]
    done = await handle
    assert isinstance(done, Done) and done.value == "HELLO"
    assert done.model_pid != os.getpid() and done.finish_pid == done.model_pid
    assert done.finish_thread.startswith("replica-finish")  # encoded on the replica
    steps = [(e.step, e.total) for e in events if e.step]  # the newest, when they come fast
    assert steps in ([(1, 2), (2, 2)], [(2, 2)])
    assert [e.partial for e in events if e.partial] == ["h"]
    assert events[-1].state is JobState.DONE
    loaded = engine.snapshot().loaded
    assert ("remote", "remote-model", 10) in [(m.task, m.model, m.bytes) for m in loaded]
    assert engine.backends[0].capacity() == 2  # a batch in flight per replica


async def test_errors_cross_with_their_type_and_details(engine: Executor) -> None:
    handles = [engine.submit("remote", Order(v), user_id=v) for v in ("ok", "bad", "invalid")]
    results = await asyncio.wait_for(asyncio.gather(*handles, return_exceptions=True), WAIT_S)
    assert isinstance(results[0], Done)
    assert isinstance(results[1], JobFailed) and "cannot process bad" in str(results[1])
    assert isinstance(results[2], InvalidInput) and results[2].option == "value"


async def test_doctor_shows_the_cluster_and_the_replicas(engine: Executor) -> None:
    settings = Settings(backend="ray", ray={"address": "auto", "prefix": PREFIX})
    rows = {row.check: row for row in check_ray(settings)}
    assert rows["ray cluster"].status is Status.OK
    assert "2 CPUs, no GPU" in rows["ray cluster"].detail
    deployed = rows["ray remote"]
    assert deployed.status is Status.OK and "replicas running" in deployed.detail
    assert rows["ray sentiment"].detail.startswith("not deployed")


async def test_two_replicas_run_two_batches_at_once(engine: Executor, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    # Different keys would share a batch; different users' jobs do. These two must not: the
    # first waits for a file only the second creates, so they ran at the same time.
    waiting = engine.submit("remote", Order("wait", str(flag)), user_id="a")
    await until(lambda: waiting.state is JobState.RUNNING)
    touching = engine.submit("remote", Order("touch", str(flag)), user_id="b")
    first, second = await asyncio.wait_for(asyncio.gather(waiting, touching), WAIT_S)
    assert first.model_pid != second.model_pid


async def test_cancel_stops_the_batch_on_its_replica(engine: Executor, tmp_path: Path) -> None:
    # Each replica runs one batch at a time and "loop" never ends unless stopped: with both
    # replicas looping, the next job runs only once a Cancel has reached a replica.
    loops = [engine.submit("remote", Order("loop"), user_id=f"l{n}") for n in range(2)]
    await until(lambda: all(looping.state is JobState.RUNNING for looping in loops))
    assert loops[0].cancel()
    with pytest.raises(JobCancelled):
        await loops[0]
    after = await asyncio.wait_for(engine.submit("remote", Order("next"), user_id="n"), WAIT_S)
    assert after.value == "NEXT"
    assert loops[1].cancel()
    with pytest.raises(JobCancelled):
        await loops[1]


async def test_a_replica_killed_mid_batch_is_retried_on_another(
    engine: Executor, tmp_path: Path
) -> None:
    where = tmp_path / "first-replica"
    held = engine.submit("remote", Order("hold-once", str(where)), user_id="k")
    await until(lambda: where.exists() and bool(where.read_text()))
    first = int(where.read_text())
    os.kill(first, signal.SIGKILL)  # as the kernel's OOM killer would
    done = await asyncio.wait_for(held, WAIT_S)
    assert done.value == "HOLD-ONCE" and done.model_pid != first


async def test_a_retry_leaves_out_the_jobs_abandoned_meanwhile(
    engine: Executor, tmp_path: Path
) -> None:
    where, touched = tmp_path / "first-replica", tmp_path / "touched"
    # One batch: the replica holds the first job, and never reaches the second's touch.
    held = engine.submit("remote", Order("hold-once", str(where)), user_id="r1")
    left = engine.submit("remote", Order("touch", str(touched)), user_id="r2")
    await until(lambda: where.exists() and bool(where.read_text()))
    assert held.batch_size == left.batch_size == 2
    assert left.cancel()
    os.kill(int(where.read_text()), signal.SIGKILL)
    done = await asyncio.wait_for(held, WAIT_S)
    assert done.value == "HOLD-ONCE"
    assert not touched.exists()  # the retry ran without it


async def test_a_batch_whose_replicas_die_twice_fails_clearly_and_the_bot_serves_on(
    engine: Executor,
) -> None:
    with pytest.raises(WorkerCrashed, match="Ray replica died, and so did the one"):
        await asyncio.wait_for(engine.submit("remote", Order("die"), user_id="d"), WAIT_S)
    after = await asyncio.wait_for(engine.submit("remote", Order("after"), user_id="d"), WAIT_S)
    assert after.value == "AFTER"
    assert engine.health().ok


def unplaceable_executor(name: str, required: bool) -> Executor:
    """A deployment whose replica asks for more CPUs than the cluster has: it never starts."""
    task = RemoteTask(name)
    backend = RayTaskBackend(
        RayCluster(prefix=PREFIX), task, DeploymentSpec(cpus=64), ReplicaSpec(), required=required
    )
    config = ExecutorConfig(limits={kind: limits() for kind in TaskKind})
    return Executor({task.name: task}, {task.name: "remote-model"}, {task.name: backend}, config)


async def test_a_deployment_that_cannot_start_fails_its_jobs_not_the_bot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ray_backend, "DEPLOY_TIMEOUT_S", 1.0)
    # The bot starts without it, and deploys it again for its job, in vain.
    async with unplaceable_executor("unplaceable", required=False) as executor:
        job = executor.submit("unplaceable", Order("x"), user_id="u")
        with pytest.raises(BackendUnavailable, match="unplaceable's Ray deployment did not start"):
            await asyncio.wait_for(job, WAIT_S)

    def deleted() -> bool:  # Serve marks it so in its next control loop
        app = serve.status().applications.get(f"{PREFIX}-unplaceable")
        return app is None or str(app.status.value) == "DELETING"

    await until(deleted)  # though it never ran
    asked = unplaceable_executor("asked", required=True)  # ``ask``'s task: no start without it
    try:
        with pytest.raises(BackendUnavailable, match="did not start"):
            await asyncio.wait_for(asked.start(), WAIT_S)
    finally:
        await asked.shutdown()


async def test_a_lazy_deployment_scaled_to_zero_is_ready_before_its_first_batch() -> None:
    """The executor starts a backend again before each batch's clock: the deploy, and a
    replica started from zero, do not count against the batch's limit."""
    spec = DeploymentSpec(cpus=0.1, min_replicas=0, max_replicas=1)
    task = RemoteTask("lazy")
    backend = RayTaskBackend(RayCluster(prefix=PREFIX), task, spec, ReplicaSpec(), eager=False)
    try:
        await asyncio.wait_for(backend.start(), WAIT_S)  # the executor's start
        assert backend.name not in serve.status().applications
        await asyncio.wait_for(backend.start(), WAIT_S)  # before its first batch
        assert backend.cluster.replicas(task.name) == 1
    finally:
        await backend.close(WAIT_S)


async def test_a_replica_gone_leaves_the_snapshot(engine: Executor) -> None:
    """Its models and memory go with it: the snapshot and the metrics stop showing them."""
    await asyncio.wait_for(engine.submit("remote", Order("seen"), user_id="s"), WAIT_S)
    backend = engine.backends[0]
    assert isinstance(backend, RayTaskBackend)
    gone = next(iter(backend._seen.loaded))
    ray.kill(ray.get_actor(gone, namespace="serve"), no_restart=True)

    async def forgotten() -> None:
        while gone in backend._seen.loaded or gone in backend._seen.memory:
            await backend.cluster.count()

    await asyncio.wait_for(forgotten(), WAIT_S)
    assert all(
        not m.device.endswith(f"({gone.rsplit('#', 1)[-1]})") for m in backend.loaded_models()
    )


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tinymodels.build_every_task(tmp_path_factory.mktemp("ray-models"))


REQUESTS: dict[str, list[Any]] = {
    "summarize": [SummarizeRequest("The group met today to review the physics notes.", "short")],
    "translate": [TranslateRequest("good morning", "fr", "en")],
    "imagine": [ImagineRequest("a red cat", steps=2, seed=42, count=2)],
    "speak": [SpeakRequest("Hello there. See you soon.", voice="voice1")],
    "sentiment": [SentimentRequest("great coffee"), SentimentRequest("terrible exam")],
    "classify": [ClassifyRequest("loud city music", ("music", "art", "river"))],
    "chat": [ChatRequest("hello", max_tokens=8, temperature=0.8, seed=3)],
}


async def answers(settings: Settings) -> dict[str, list[Any]]:
    executor = await start_executor(settings, list(REQUESTS), worker="thread")
    try:
        results = {}
        for task, requests in REQUESTS.items():
            handles = [executor.submit(task, r, user_id=f"{task}{n}") for n, r in
                       enumerate(requests)]  # fmt: skip
            results[task] = await asyncio.wait_for(asyncio.gather(*handles), WAIT_S)
    finally:
        await executor.shutdown()
    return results


async def test_every_task_answers_through_ray_as_through_the_local_backend(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    settings = Settings(
        device="cpu",
        models={task: str(tiny_models[task]) for task in REQUESTS},
        speak={"vocoder": str(tiny_models["vocoder"]), "voices": str(tiny_models["voices"])},
        imagine={"preview_model": str(tiny_models["preview"])},
        ray={"prefix": f"{PREFIX}-all", "cpus_per_replica": 0.1},
    )
    local = await answers(settings)
    remote = await answers(settings.model_copy(update={"backend": "ray"}))
    for task in REQUESTS:
        assert agree(remote[task], local[task]), task


def agree(remote: Any, local: Any) -> bool:
    """Equal results, but for float rounding (two processes may add up in another order) and
    for audio files, compared by their sound (an Ogg stream has a random serial number)."""
    if dataclasses.is_dataclass(local) and not isinstance(local, type):
        return type(remote) is type(local) and all(
            agree(getattr(remote, f.name), getattr(local, f.name))
            for f in dataclasses.fields(local)
        )
    if isinstance(local, float):
        return math.isclose(remote, local, rel_tol=1e-3, abs_tol=1e-4)
    if isinstance(local, list | tuple):
        return len(remote) == len(local) and all(map(agree, remote, local))
    if isinstance(local, dict):
        return remote.keys() == local.keys() and all(agree(remote[k], local[k]) for k in local)
    if isinstance(local, bytes) and local.startswith((b"RIFF", b"OggS")):  # the same sound
        ours, theirs = (soundfile.read(io.BytesIO(b), dtype="int16")[0] for b in (remote, local))
        return ours.shape == theirs.shape and int(abs(ours.astype(int) - theirs).max()) <= 2
    return bool(remote == local)


async def test_without_ray_the_bot_says_how_to_install_it_in_one_line(tmp_path: Path) -> None:
    model = tinymodels.build_classifier(tmp_path / "sentiment")
    code = (
        "import sys; sys.modules['ray'] = None; from bot.cli import main; "  # as if not installed
        f"sys.exit(main(['ask', 'sentiment', 'great coffee', '--model', {str(model)!r}]))"
    )
    env = {**os.environ, "BOT_BACKEND": "ray", "BOT_DATA_DIR": str(tmp_path / "data")}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: BOT_BACKEND=ray needs Ray Serve, which is not installed (ray); "
        "run `pip install 'assistant-bot[ray]'`\n"
    )
