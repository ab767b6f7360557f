"""Models on a Ray cluster: each task is a Ray Serve deployment whose replicas run the same
handler code as a local worker (loading through the same registry, splitting on
out-of-memory, encoding results), on the GPUs Ray gives them.

Why batches are formed in the bot and not by ``@serve.batch`` on the replicas: what members
see is decided where every job is known at once. Fairness by GPU time across tasks,
per-member caps, queue deadlines, queue positions with ETAs and Cancel all need the whole
queue, and a replica's ``@serve.batch`` sees only the requests routed to it, first come first
served, with a fixed wait. So the executor's scheduler forms each batch (compatible keys,
a padding-aware budget) and keeps as many batches in flight per task as the deployment has
replicas: each replica runs one while the next waits in the bot's fair queue, not in Ray's.
A batch is one streaming request: progress and partial text come back as it runs, then
every job's outcome; abandoning all its jobs cancels the request, which stops the batch on
the replica between steps. (Abandoning some jobs only drops their results in the bot: a
streaming request has no way back to its replica, so the replica finishes the batch for
the others.)

A batch whose replica dies or cannot be reached (killed, out of host memory, a crashed
driver, a lost node) is retried once, with its jobs still wanted: its request is cancelled
first, since a replica only out of reach would otherwise run on beside the retry, and Serve's
router no longer chooses that replica, so the batch runs on another (or on its replacement).
A member of a retried batch sees its progress start again from the first step; of its
streamed text, what the retry produces again is not sent twice (text that is a prefix of
what was shown is skipped), while text sampled differently is not a prefix and replaces
what was shown. A batch whose second replica is lost too fails its jobs with
``WorkerCrashed``; the deployment keeps serving the next batches.

Ray is imported only here and only when this backend starts, so the bot without Ray
installed, and every command that does not use it, never loads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bot.executor.backend import BatchRun, LoadedModelInfo, Outcome
from bot.executor.errors import BackendUnavailable, JobCancelled, JobFailed, WorkerCrashed
from bot.executor.process import Memory, RemoteBatch, portable, unsendable
from bot.executor.registry import ModelRegistry
from bot.executor.running import cuda_memory, encodes, execute, finish
from bot.executor.worker import default_torch_threads
from handlers.base import BatchStopped, HandlerError, Task

log = logging.getLogger(__name__)

INSTALL = "pip install 'assistant-bot[ray]'"
DEPLOY_TIMEOUT_S = 300.0
"""How long a deployment may take to have its replicas running (Ray may first have to
free or add the GPUs they ask for) before the bot says what Serve reports."""
DEPLOY_TRIES = 5
STATUS_EVERY_S = 2.0
"""How often the replicas of each deployment are counted, for the batches kept in flight."""
EVENTS_EVERY_S = 0.1
"""Least time between two messages of progress and streamed text from a replica (the
newest of each goes): a live stream for a member, a few messages per batch for Serve."""
CANCEL_WAIT_S = 5.0
"""How long a retry waits for Serve to take the cancel of the request it replaces."""
DEATHS = (
    "ActorDiedError",
    "ActorUnavailableError",
    "RayActorError",
)
"""Ray's errors for a replica that died or cannot be reached: the batch is retried once."""


@dataclass(frozen=True)
class DeploymentSpec:
    """What Ray gives each replica of one task's deployment, and how many there are."""

    gpus: float | None = None
    """GPUs per replica (fractions share one); None: ``auto_gpus`` when the cluster has GPUs,
    else none."""
    cpus: float = 0.25
    min_replicas: int = 1
    max_replicas: int = 1
    max_ongoing_requests: int = 1
    """Batches sent to one replica at once. It runs one at a time on its one device thread
    (a continuous batch too, until its last row ends): a second only waits there, ready to
    start the moment the first ends."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("replicas: need 0 <= min_replicas <= max_replicas, max >= 1")
        if self.max_ongoing_requests < 1 or self.cpus < 0 or (self.gpus or 0) < 0:
            raise ValueError("max_ongoing_requests must be >= 1, cpus and gpus >= 0")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas != self.max_replicas


@dataclass(frozen=True)
class ReplicaSpec:
    """How a replica sets up its device: the bot's dtype, budget and threads."""

    dtype: str = "auto"
    budget_bytes: int | None = None
    torch_threads: int | None = None
    encoders: int = 2
    log_level: int = logging.INFO
    preload: tuple[str, ...] = ()
    """Models each replica loads before it takes requests (the task's, in BOT_PRELOAD)."""


def import_ray() -> Any:
    """``ray`` with Serve, or one line saying how to install them."""
    try:
        import ray
        import ray.serve
    except ImportError as exc:
        raise BackendUnavailable(
            f"BOT_BACKEND=ray needs Ray Serve, which is not installed ({exc.name}); run `{INSTALL}`"
        ) from None
    return ray


def auto_gpus(tasks: int) -> float:
    """An equal share of one GPU for each of ``tasks`` deployments, as the local bot shares
    its one card (Ray counts GPU fractions to four decimals: rounded down, they fit)."""
    return math.floor(10_000 / max(1, tasks)) / 10_000


class RayCluster:
    """The connection to a Ray cluster, shared by every task's backend: the cluster at
    ``address``, or a local one started here. A process already connected to Ray (a test, a
    notebook) keeps its connection, and it is not shut down when the bot closes."""

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, prefix: str = "assistant-bot"
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.prefix = prefix
        self.gpus = 0.0
        self._connecting: asyncio.Future[None] | None = None
        self.owned = False
        """Whether the cluster was started here (and ends with the bot)."""
        self._backends: dict[str, RayTaskBackend] = {}
        """The backends using the cluster, by application name."""
        self._replicas: dict[str, int] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.deploying = threading.Lock()
        """Serve's deployment calls are not thread-safe (they swap pickling modes around
        them): the tasks' deployments are sent one at a time, and start side by side."""

    def app_name(self, task: str) -> str:
        return f"{self.prefix}-{task}"

    async def connect(self) -> None:
        """Connect once, however many backends ask; one line when it cannot."""
        if self._connecting is None or _failed(self._connecting):
            self._connecting = asyncio.ensure_future(asyncio.to_thread(self._connect))
        await asyncio.shield(self._connecting)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="ray-replicas")

    def _connect(self) -> None:
        ray = import_ray()
        from ray import serve

        where = self.address or "a local Ray cluster"
        if not ray.is_initialized():
            try:
                ray.init(
                    # "local": a Ray of the bot's own, never one found running on this machine
                    # (which ray.init's default would join, and the bot would then shut down).
                    address=self.address or "local",
                    num_cpus=None if self.address else self.num_cpus,
                    include_dashboard=False if not self.address else None,
                    # Ray's start-up notes (its SIGTERM handler is the bot's to set, token
                    # auth) are not the admin's to act on; replicas' logs come with ours.
                    logging_level=logging.ERROR,
                    log_to_driver=log.isEnabledFor(logging.INFO),
                )
            except Exception as exc:
                reason = " ".join(str(exc).split())[:300]
                raise BackendUnavailable(
                    f"cannot reach the Ray cluster at {where}: {reason}"
                ) from None
            self.owned = self.address is None  # a cluster joined outlives the bot
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # a line per deployment step
        try:  # handles only: no HTTP proxy (and no port) for the deployments
            serve.start(proxy_location="Disabled")
        except Exception as exc:
            raise BackendUnavailable(f"cannot start Ray Serve on {where}: {exc}") from None
        self.gpus = float(ray.cluster_resources().get("GPU", 0.0))
        log.info("connected to %s (%g GPUs)", where, self.gpus)

    def replicas(self, task: str) -> int:
        """Running replicas of the task's deployment, as last counted."""
        return self._replicas.get(self.app_name(task), 0)

    async def count(self) -> None:
        """Count every deployment's running replicas (calls to Serve's controller and to
        Ray's), and tell each backend which replicas live and whether its count changed."""
        counts, live = await asyncio.to_thread(_running_replicas)
        before, self._replicas = self._replicas, counts
        for name, backend in list(self._backends.items()):
            backend.counted(live, changed=counts.get(name, 0) != before.get(name, 0))

    async def _watch(self) -> None:
        while True:
            try:
                await self.count()
            except Exception as exc:  # the next count may work; the last one stands
                log.warning("could not count the Ray replicas: %s", exc)
            await asyncio.sleep(STATUS_EVERY_S)

    def hold(self, backend: RayTaskBackend) -> None:
        self._backends[backend.name] = backend

    async def release(self, backend: RayTaskBackend) -> None:
        """The last backend gone: stop counting, and shut down a cluster started here."""
        self._backends.pop(backend.name, None)
        if self._backends:
            return
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.owned:
            self.owned = False
            await asyncio.to_thread(_shut_down_ray)


def _running_replicas() -> tuple[dict[str, int], frozenset[str]]:
    """Running replicas by application, and the names of the replicas alive."""
    import ray
    from ray import serve

    counts = {
        name: sum(
            count
            for deployment in app.deployments.values()
            for state, count in deployment.replica_states.items()
            if str(getattr(state, "value", state)) == "RUNNING"
        )
        for name, app in serve.status().applications.items()
    }
    actors = ray.util.list_named_actors(all_namespaces=True)
    return counts, frozenset(a["name"] for a in actors if a["namespace"] == "serve")


def _shut_down_ray() -> None:
    import ray

    ray.shutdown()  # Serve and the replicas end with the cluster


def _failed(future: asyncio.Future[Any]) -> bool:
    """Whether a shared step ended without its result, so that the next caller tries again."""
    return future.done() and (future.cancelled() or future.exception() is not None)


def _died(error: BaseException) -> bool:
    return any(cls.__name__ in DEATHS for cls in type(error).__mro__)


@dataclass
class _Replicas:
    """What the bot knows of the replicas that ran its batches."""

    loaded: dict[str, list[LoadedModelInfo]] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)

    def keep(self, live: Collection[str]) -> None:
        """Forget the replicas gone: their models and memory went with them."""
        for replica in self.loaded.keys() - set(live):
            del self.loaded[replica]
            self.memory.pop(replica, None)


class RayTaskBackend:
    """One task's deployment: the executor's slot for that task, running as many batches at
    once as it has replicas."""

    def __init__(
        self,
        cluster: RayCluster,
        task: Task[Any, Any],
        spec: DeploymentSpec,
        replica: ReplicaSpec,
        *,
        eager: bool = True,
        required: bool = False,
        gpu_share: float = 1.0,
    ) -> None:
        """``eager`` deploys when the executor starts; otherwise before the task's first
        batch (``ask`` deploys only the task asked). An eager deployment that fails is
        logged, and deployed again before the task's next batch, so that the bot serves the
        other tasks; ``required`` makes it fail the start instead (``ask``'s task).
        ``gpu_share`` is what ``spec.gpus=None`` asks for on a cluster with GPUs."""
        self.cluster = cluster
        self.task = task
        self.spec = spec
        self.replica = replica
        self.eager = eager
        self.required = required
        self.gpu_share = gpu_share
        self.name = cluster.app_name(task.name)
        self._handle: Any = None
        self._deploying: asyncio.Future[Any] | None = None
        self._sending: asyncio.Future[Any] | None = None
        """The last sending of the app to Serve, which ``close`` deletes."""
        self._waking: asyncio.Future[None] | None = None
        self._started = False
        """Whether the executor's own start has been: every later start precedes a batch."""
        self._held = False
        self._closed = False
        self._running_on: dict[int, str] = {}
        """The replica actor running each batch, by id() of the batch, for ``abort``."""
        self._seen = _Replicas()
        self._capacity_changed: Callable[[], None] | None = None

    @property
    def gpus(self) -> float:
        if self.spec.gpus is not None:
            return self.spec.gpus
        return self.gpu_share if self.cluster.gpus else 0.0

    async def start(self) -> None:
        """Connect, and deploy if ``eager``. The executor starts a backend again before each
        batch, ahead of the batch's clock: that start deploys the task if it is not yet, and
        wakes a deployment scaled to zero, so that neither counts against the batch's limit."""
        if self._closed:
            raise RuntimeError("the backend is closed")
        if not self._held:
            self.cluster.hold(self)
            self._held = True
        await self.cluster.connect()
        first, self._started = not self._started, True
        if first and not self.eager:
            return
        try:
            await self._deployed()
        except BackendUnavailable as exc:
            if not first or self.required:
                raise
            log.error("%s; it is deployed again before its next batch", exc)
            return
        if not first:
            await self._replica_running()

    async def _replica_running(self) -> None:
        """Wait for a replica of a deployment scaled to zero: Serve starts one for the
        request sent here (once, however many batches wait)."""
        if self.spec.min_replicas > 0 or self.cluster.replicas(self.task.name) > 0:
            return
        if self._waking is None or self._waking.done():  # a scale to zero since, too
            self._waking = asyncio.ensure_future(self._wake())
        await asyncio.shield(self._waking)

    async def _wake(self) -> None:
        handle = await self._deployed()
        log.info("starting a replica of %s (scaled to zero)", self.task.name)
        response = handle.options(stream=False).ready.remote()
        try:
            await asyncio.wait_for(response, DEPLOY_TIMEOUT_S)
        except TimeoutError:
            _cancel(response)
            status = await asyncio.to_thread(self._status)
            why = (
                "" if status == "RUNNING" else " (" + " ".join(" ".join(status).split())[:400] + ")"
            )
            raise BackendUnavailable(
                f"{self.task.name}'s Ray deployment started no replica within "
                f"{DEPLOY_TIMEOUT_S:.0f}s{why}"
            ) from None
        await self.cluster.count()

    async def _deployed(self) -> Any:
        """The deployment's handle, deploying it first (once, however many callers ask)."""
        if self._handle is not None:
            return self._handle
        if self._deploying is None or _failed(self._deploying):
            self._deploying = asyncio.ensure_future(self._deploy())
        return await asyncio.shield(self._deploying)

    async def _deploy(self) -> Any:
        await self.cluster.connect()
        # Shielded: a close that cancels the deploy still learns whether the app was sent.
        self._sending = asyncio.ensure_future(asyncio.to_thread(self._run_app))
        handle = await asyncio.shield(self._sending)
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while (status := await asyncio.to_thread(self._status)) != "RUNNING":
            state, message = status
            if state == "DEPLOY_FAILED" or time.monotonic() > deadline:
                why = " ".join(message.split())[:400] or state
                raise BackendUnavailable(f"{self.task.name}'s Ray deployment did not start: {why}")
            await asyncio.sleep(0.2)
        await self.cluster.count()
        log.info(
            "%s deployed on Ray: %d replica(s), %g GPU and %g CPU each",
            self.task.name, self.cluster.replicas(self.task.name), self.gpus, self.spec.cpus,
        )  # fmt: skip
        self._handle = handle
        return handle

    def _run_app(self) -> Any:
        # Serve builds a deployment's config under a process-wide pickling switch that its
        # router thread flips too, when configs change (Ray 2.60): a clash fails the call
        # before anything is sent, so it is tried again.
        for attempt in range(DEPLOY_TRIES):
            try:
                with self.cluster.deploying:
                    return self._send_app()
            except ValueError as exc:
                if "pickle by value" not in str(exc) or attempt == DEPLOY_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _send_app(self) -> Any:
        """Send the deployment to Serve; its streaming handle."""
        from ray import serve

        spec = self.spec
        scaling: dict[str, Any] = (
            {
                "autoscaling_config": {
                    "min_replicas": spec.min_replicas,
                    "max_replicas": spec.max_replicas,
                    "target_ongoing_requests": spec.max_ongoing_requests,
                }
            }
            if spec.autoscaling
            else {"num_replicas": spec.max_replicas}
        )
        deployment = serve.deployment(TaskReplica).options(
            name=self.task.name,
            max_ongoing_requests=spec.max_ongoing_requests,
            ray_actor_options={"num_cpus": spec.cpus, "num_gpus": self.gpus},
            **scaling,
        )
        level = logging.getLevelName(max(self.replica.log_level, logging.WARNING))
        target = serve.RunTarget(
            deployment.bind(self.task, self.replica),
            name=self.name,
            route_prefix=None,
            logging_config={"enable_access_log": False, "log_level": level},
        )
        (handle,) = serve.run_many([target], wait_for_applications_running=False)
        return handle.options(stream=True)

    def _status(self) -> str | tuple[str, str]:
        """RUNNING, or the application's state and Serve's message about it."""
        from ray import serve

        app = serve.status().applications.get(self.name)
        if app is None:
            return ("NOT_STARTED", "")
        state = str(getattr(app.status, "value", app.status))
        if state == "RUNNING":
            return state
        messages = [app.message, *(d.message for d in app.deployments.values())]
        return (state, "; ".join(m for m in messages if m))

    def capacity(self) -> int:
        """Running replicas times the batches each takes, and one more while an autoscaling
        deployment may still grow: Serve scales on requests that wait for a replica."""
        running = self.cluster.replicas(self.task.name)
        spare = 1 if self.spec.autoscaling and running < self.spec.max_replicas else 0
        return running * self.spec.max_ongoing_requests + spare

    def watch_capacity(self, changed: Callable[[], None]) -> None:
        self._capacity_changed = changed

    def counted(self, live: Collection[str], *, changed: bool) -> None:
        """After each count of the cluster: forget the replicas gone, and tell the engine
        when the capacity (which follows the running replicas) changed."""
        self._seen.keep(live)
        if changed and self._capacity_changed is not None:
            self._capacity_changed()

    async def run(self, batch: BatchRun) -> list[Outcome | asyncio.Future[Any]]:
        handle = await self._deployed()
        try:
            return await self._stream(handle, batch)
        except Exception as exc:
            if not _died(exc):
                raise
            log.warning("the Ray replica running a %s batch died (%s); retrying it once",
                        self.task.name, type(exc).__name__)  # fmt: skip
        try:  # the jobs still wanted, the first request cancelled
            return await self._stream(handle, batch)
        except Exception as exc:
            if not _died(exc):
                raise
            raise WorkerCrashed(
                "its Ray replica died, and so did the one it was retried on"
            ) from None

    async def _stream(self, handle: Any, batch: BatchRun) -> list[Outcome]:
        """The batch's jobs still wanted as one streaming request: events as they come, then
        the outcomes (a job abandoned before it was sent is cancelled)."""
        from ray.serve.exceptions import RequestCancelledError

        outcomes: list[Outcome] = [JobCancelled("stopped")] * len(batch)
        rows = [index for index in range(len(batch)) if not batch.abandoned(index)]
        if not rows:
            return outcomes
        requests = batch.requests
        response = handle.run.remote(batch.model, [requests[row] for row in rows])
        cancelling: list[asyncio.Future[None]] = []

        def cancel_when_all_abandoned() -> None:
            if batch.should_stop() and not cancelling:
                cancelling.append(_cancel(response))

        batch.on_abandon = cancel_when_all_abandoned
        try:
            async for event in response:
                kind, replica = event[0], event[1]
                self._running_on[id(batch)] = replica
                if kind == "events":
                    for news in event[2]:
                        if news[0] == "progress":
                            batch.progress(news[2], news[3])
                        else:
                            batch.partial(rows[news[2]], news[3])
                elif kind == "outcomes":
                    _, _, sent, self._seen.loaded[replica], self._seen.memory[replica] = event
                    for row, outcome in zip(rows, sent, strict=True):
                        outcomes[row] = outcome
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not cancelling or (current is not None and current.cancelling()):
                if not cancelling:  # the engine gave up on the batch: so does the replica
                    cancelling.append(_cancel(response))
                raise
            # else cancelled by us before a replica took it
        except RequestCancelledError:  # cancelled by us on the replica
            if not batch.should_stop():
                raise
        except Exception as exc:
            # A replica that cannot be reached may still be running the batch: it is told to
            # stop before the batch is retried, so that it does not run twice at once.
            if _died(exc) and not cancelling:
                cancelling.append(_cancel(response))
                await asyncio.wait(cancelling, timeout=CANCEL_WAIT_S)
            raise
        finally:
            batch.on_abandon = None
            self._running_on.pop(id(batch), None)
        return outcomes  # each job's, or cancelled if the request ended without them

    async def abort(self, batch: BatchRun) -> None:
        """Kill the replica whose batch would not stop; Serve starts another."""
        name = self._running_on.get(id(batch))
        if name is None:
            return
        log.error("killing Ray replica %s (%s)", name, self.task.name)
        await asyncio.to_thread(_kill_replica, name)

    async def preload(self, task: Task[Any, Any], model: str) -> None:
        """Load ``model`` on a replica. Those of ``ReplicaSpec.preload`` load as each replica
        starts, whenever the deployment is made: nothing to do (nor to deploy) for them."""
        if model not in self.replica.preload:
            handle = await self._deployed()
            await handle.options(stream=False).preload.remote(model)

    def loaded_models(self) -> list[LoadedModelInfo]:
        """As each replica last reported them, its devices named after it."""
        return [
            dataclasses.replace(info, device=_on(replica, info.device))
            for replica, infos in self._seen.loaded.items()
            for info in infos
        ]

    def device_memory(self) -> Memory:
        return {
            _on(replica, device): used
            for replica, memory in self._seen.memory.items()
            for device, used in memory.items()
        }

    async def close(self, timeout: float) -> None:
        """Delete the deployment if it was sent, running or not (its replicas release their
        GPUs; Serve stops them after the bot has gone), or leave it to end with a cluster
        started here."""
        if self._closed:
            return
        self._closed = True
        for waiting in (self._deploying, self._waking):  # for replicas about to be deleted
            if waiting is not None:
                waiting.cancel()
        if self._sending is not None and not self.cluster.owned:
            with contextlib.suppress(BaseException):  # sent (or not) once this is done
                await asyncio.wait_for(asyncio.shield(self._sending), timeout)
            try:
                await asyncio.wait_for(asyncio.to_thread(_delete_app, self.name), timeout)
            except Exception as exc:
                log.warning("could not delete the Ray deployment %s: %s", self.name, exc)
        if self._held:
            await self.cluster.release(self)


def _cancel(response: Any) -> asyncio.Future[None]:
    """Cancel a Serve request, best effort: a failure is logged, never raised. Serve's cancel
    blocks on its router when that runs in a loop of its own (the default), so it runs off
    the event loop then; with the router on this loop, it touches this loop's futures and
    runs here."""
    loop = asyncio.get_running_loop()
    if getattr(response, "_is_router_running_in_separate_loop", True):
        cancelling = loop.run_in_executor(None, response.cancel)
    else:
        cancelling = loop.create_future()
        try:
            response.cancel()
        except Exception as exc:
            cancelling.set_exception(exc)
        else:
            cancelling.set_result(None)
    cancelling.add_done_callback(_log_cancel_failure)
    return cancelling


def _log_cancel_failure(cancelling: asyncio.Future[None]) -> None:
    if not cancelling.cancelled() and (exc := cancelling.exception()) is not None:
        log.debug("could not cancel a Ray request: %r", exc)


def _on(replica: str, device: str) -> str:
    """A replica's device, told apart from another replica's: "cuda:0 (abc123)"."""
    return f"{device} ({replica.rsplit('#', 1)[-1]})"


def _kill_replica(name: str) -> None:
    import ray

    with contextlib.suppress(ValueError):  # gone already
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)


def _delete_app(name: str) -> None:
    from ray import serve

    serve.delete(name, _blocking=False)


# Everything below runs in a replica.


class _Events:
    """A replica batch's progress and partial outputs, from its device thread to the
    request's stream on the replica's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()

    def send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(RuntimeError):  # the request has ended: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)

    async def news(
        self, not_before: float, within: float | None = None
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """What happened since the last call, gathered until ``not_before`` (loop time) or
        the batch's end, and whether it has ended: only the newest progress and partial
        output of each job, since a member sees the latest and every message through Serve
        costs a little. Nothing, if nothing happened ``within`` seconds."""
        try:
            waiting = [await asyncio.wait_for(self.queue.get(), within)]
        except TimeoutError:
            return [], False
        while None not in waiting and (left := not_before - self.loop.time()) > 0:
            try:
                waiting.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for event in waiting:
            if event is not None:
                key = ("progress",) if event[0] == "progress" else ("partial", event[2])
                latest.pop(key, None)
                latest[key] = event
        return list(latest.values()), None in waiting


def sendable(outcome: Outcome) -> Outcome:
    """An outcome as it can cross to the bot: errors that pickle, results that pickle, or
    their job's error."""
    if isinstance(outcome, BaseException):
        return portable(outcome)
    try:
        pickle.dumps(outcome)
    except Exception as exc:
        return unsendable(outcome, exc)
    return outcome


class TaskReplica:
    """One replica of a task's deployment: a device thread that runs one batch at a time
    through the registry, and a small pool that encodes results meanwhile."""

    def __init__(self, task: Task[Any, Any], spec: ReplicaSpec) -> None:
        import ray
        from ray import serve

        logging.getLogger("bot").setLevel(spec.log_level)
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.task = task
        self.registry = ModelRegistry(device, spec.dtype, spec.budget_bytes)
        # Ray limits a replica's threads to its CPUs (often a fraction: one thread); the
        # bot's own rule applies instead, as in a local worker.
        threads = spec.torch_threads or default_torch_threads(device) or os.cpu_count() or 1
        torch.set_num_threads(threads)
        self.device = concurrent.futures.ThreadPoolExecutor(1, "replica-device")
        self.encoders = concurrent.futures.ThreadPoolExecutor(spec.encoders, "replica-finish")
        self.name = serve.get_replica_context().replica_id.to_full_id_str()
        for model in spec.preload:
            self.registry.get(task, model)

    async def run(self, model: str, requests: Sequence[Any]) -> AsyncIterator[tuple[Any, ...]]:
        """Stream ("events", name, progress and partial outputs) as the batch runs, then
        ("outcomes", name, outcomes, loaded models, device memory); a batch that has said
        nothing for a while says ("replica", name), so that the bot can end it if it hangs."""
        loop = asyncio.get_running_loop()
        events = _Events(loop)
        batch = RemoteBatch(0, self.task, model, requests, events)
        done = loop.run_in_executor(self.device, self._execute, batch)
        done.add_done_callback(lambda _: events.queue.put_nowait(None))
        try:
            ended, named, sent = False, False, loop.time()
            while not ended:
                news, ended = await events.news(
                    sent + EVENTS_EVERY_S, None if named else EVENTS_EVERY_S
                )
                if news:
                    yield ("events", self.name, news)
                elif not ended and not named:
                    yield ("replica", self.name)
                named = named or bool(news) or not ended
                sent = loop.time() if news else sent
            outcomes = await done
            if encodes(self.task):  # results encoded side by side in the replica's pool
                encoding = {
                    index: loop.run_in_executor(self.encoders, finish, self.task, outcome)
                    for index, outcome in enumerate(outcomes)
                    if not isinstance(outcome, BaseException)
                }
                for index, future in encoding.items():
                    outcomes[index] = await future
            yield (
                "outcomes",
                self.name,
                [sendable(o) for o in outcomes],
                self.registry.snapshot(),
                cuda_memory(),
            )
        finally:
            if not done.done():  # cancelled: stop between steps, and hold the request until
                batch.stop(range(len(requests)))  # the device is free for the next one
                with contextlib.suppress(BaseException):
                    await asyncio.shield(done)

    def _execute(self, batch: RemoteBatch) -> list[Outcome]:
        """Raw outcomes; rows of a continuous batch are waited for here (their text streams
        meanwhile), since the request carries every outcome back at once."""
        outcomes = execute(self.registry, batch)
        return [_settled(o) if isinstance(o, concurrent.futures.Future) else o for o in outcomes]

    async def ready(self) -> None:
        """Nothing: a request that makes Serve start a replica of a deployment scaled to
        zero, before a batch is sent to it."""

    async def preload(self, model: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.device, self.registry.get, self.task, model)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.registry.unload_all()


def _settled(row: concurrent.futures.Future[Any]) -> Outcome:
    """A continuous batch's row once it ended, as a local worker reports it."""
    try:
        return row.result()
    except (concurrent.futures.CancelledError, BatchStopped):
        return JobCancelled("stopped")
    except (HandlerError, JobFailed) as exc:
        return exc
    except Exception as exc:
        return JobFailed(exc)
