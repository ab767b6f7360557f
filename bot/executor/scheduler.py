"""The pure scheduler: admission counts, per-model queues, the choice of the next batch, and
the bookkeeping of finished and cancelled work.

No asyncio, no threads and no clock of its own: the engine passes ``now`` and acts on what
comes back, so every decision can be tested step by step (vLLM V1's ``Scheduler`` is the
model). Fairness is by GPU time: each member's recent GPU-seconds, decaying with a
half-life, rank their waiting jobs, ahead of which a long wait moves a job; a job that has
waited past the starvation limit goes before everything else.

A model with continuous batching (a ``cap`` of rows running at once) takes jobs whenever
rows are free, without waiting for company: its batch leaves the device as soon as its
rows have joined the running batch, and each job keeps its place (its member's and the
queue's counts, a row) until it ends and is ``release``d.

A slot runs ``capacity_of(slot)`` batches at once: one for a device (whatever its models),
as many as its replicas for a Ray Serve deployment (a slot of its own per task).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from bot.executor.config import ClassLimits
from bot.executor.errors import Busy

ModelKey = tuple[str, str]
"""(task, model): jobs of one key share a queue and a loaded model."""


class Entry(Protocol):
    """What the scheduler reads of a job."""

    @property
    def user_id(self) -> str: ...

    @property
    def queue_key(self) -> ModelKey: ...

    @property
    def key(self) -> Hashable:
        """Jobs with equal keys may share a batch."""

    @property
    def cost(self) -> int:
        """Budget units (tokens, pixels) the job adds to a batch."""

    @property
    def work(self) -> float:
        """Relative compute, to split a batch's GPU time between its jobs."""

    @property
    def enqueued_at(self) -> float: ...


J = TypeVar("J", bound=Entry)

MIN_CHARGE_S = 0.001
"""Least GPU time a job is charged, so that members alternate even when batches take no
measurable time."""


@dataclass(eq=False)
class Batch(Generic[J]):
    queue_key: ModelKey
    jobs: list[J]
    slot: int
    """Which backend (a device, or a task's deployment) runs it."""
    started_at: float


@dataclass
class _Queue(Generic[J]):
    limits: ClassLimits
    padded: bool
    """Whether a batch costs its longest job times its size (padding), or the sum."""
    slot: int
    cap: int | None = None
    """Rows that may run at once with continuous batching; None: batches run whole."""
    users: OrderedDict[str, deque[J]] = field(default_factory=OrderedDict)
    size: int = 0
    active: int = 0
    """Jobs admitted and not yet finished: queued, on the device, or running as a row."""
    rows: int = 0
    """Jobs whose batch left the device while they run on (continuous batching)."""
    shared: float = 0.0
    """Device seconds each row has had so far: the rows share the device equally, so this
    grows by the time passed over the number of rows running (processor sharing)."""
    shared_at: float = 0.0
    row_starts: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Each running row's (``shared``, time) when it started, by the job's id()."""
    ready_at: float = 0.0
    """When the forming batch may go even if not full."""

    def share_until(self, now: float) -> None:
        if self.rows:
            self.shared += max(0.0, now - self.shared_at) / self.rows
        self.shared_at = now

    @property
    def full(self) -> bool:
        """Every row of a continuous batch is taken."""
        return self.cap is not None and self.rows >= self.cap

    def is_ready(self, now: float) -> bool:
        if self.cap is not None:
            return self.size > 0 and not self.full
        return self.size > 0 and (self.size >= self.limits.max_batch or now >= self.ready_at)

    @property
    def max_batch(self) -> int:
        if self.cap is None:
            return self.limits.max_batch
        return max(1, min(self.limits.max_batch, self.cap - self.rows))

    def heads(self) -> Iterator[J]:
        """Each member's first waiting job: only it may run next (FIFO within a member)."""
        for jobs in self.users.values():
            yield jobs[0]

    def batch_cost(self, costs: list[int]) -> int:
        return max(costs) * len(costs) if self.padded else sum(costs)


class Scheduler(Generic[J]):
    def __init__(
        self,
        max_queue: int,
        max_per_user: int,
        limits_of: Callable[[ModelKey], ClassLimits],
        padded_of: Callable[[ModelKey], bool] = lambda key: True,
        cap_of: Callable[[ModelKey], int | None] = lambda key: None,
        pinned_of: Callable[[ModelKey], int | None] = lambda key: None,
        capacity_of: Callable[[int], int] = lambda slot: 1,
        slots: int = 1,
        half_life_s: float = 120.0,
        starvation_s: float = 60.0,
    ) -> None:
        self.max_queue = max_queue
        self.max_per_user = max_per_user
        self.limits_of = limits_of
        self.padded_of = padded_of
        self.cap_of = cap_of
        self.pinned_of = pinned_of
        """A model that must run on one slot (a task that needs no device, or one with a
        deployment of its own), or None."""
        self.capacity_of = capacity_of
        """Batches a slot may run at once; read at each choice, so it may change (replicas
        that come and go)."""
        self.slots = slots
        self.half_life_s = half_life_s
        self.starvation_s = starvation_s
        self._queues: dict[ModelKey, _Queue[J]] = {}
        self._outstanding: Counter[str] = Counter()
        self._usage: dict[str, tuple[float, float]] = {}
        """Member -> (GPU-seconds, when): decays by half every ``half_life_s``."""
        self._batch_s: dict[ModelKey, float] = {}
        """Typical batch duration per model, for wait estimates."""
        self._s_per_work: dict[ModelKey, float] = {}
        """Typical GPU-seconds per unit of work per model, to project members' usage."""
        self._running: list[Batch[J]] = []

    # Admission

    @property
    def outstanding(self) -> int:
        """Jobs admitted and not finished (queued, running, or on a device)."""
        return sum(self._outstanding.values())

    @property
    def queued(self) -> int:
        return sum(q.size for q in self._queues.values())

    def check(self, user_id: str, now: float) -> None:
        """Raise ``Busy`` when the member or the whole queue has no room for one more job."""
        if self._outstanding[user_id] >= self.max_per_user:
            retry_after = self._user_retry_after(user_id, now)
            raise Busy("you already have jobs in progress", retry_after, "user_limit")
        if self.outstanding >= self.max_queue:
            raise Busy("the bot is busy", self._queue_retry_after())

    def add(self, job: J, now: float) -> None:
        """Queue an admitted job. A lone job may go at once; one that arrives while its model
        has work waits one window for company."""
        self.check(job.user_id, now)
        queue = self._queue(job.queue_key)
        if queue.size == 0:
            busy = queue.active and queue.cap is None  # rows join at the next step
            queue.ready_at = now + queue.limits.window_s if busy else now
        queue.users.setdefault(job.user_id, deque()).append(job)
        queue.size += 1
        queue.active += 1
        self._outstanding[job.user_id] += 1

    def place(self, key: ModelKey) -> int:
        """The device (slot) that runs the model's batches."""
        return self._queue(key).slot

    def _queue(self, key: ModelKey) -> _Queue[J]:
        queue = self._queues.get(key)
        if queue is None:
            # Placement: a model stays on the device that had the fewest models when it came.
            slot = self.pinned_of(key)
            if slot is None:
                placed = Counter(q.slot for q in self._queues.values())
                slot = min(range(self.slots), key=lambda s: (placed[s], s))
            queue = self._queues[key] = _Queue(
                self.limits_of(key), self.padded_of(key), slot, self.cap_of(key)
            )
        return queue

    def remove(self, job: J) -> bool:
        """Take a waiting job out (cancelled, or past its queue deadline); False if it is not
        waiting."""
        queue = self._queues.get(job.queue_key)
        jobs = queue.users.get(job.user_id) if queue else None
        if queue is None or not jobs or job not in jobs:
            return False
        jobs.remove(job)
        if not jobs:
            del queue.users[job.user_id]
        queue.size -= 1
        queue.active -= 1
        self._release(job.user_id)
        return True

    def _release(self, user_id: str) -> None:
        self._outstanding[user_id] -= 1
        if not self._outstanding[user_id]:
            del self._outstanding[user_id]

    # Choosing the next batch

    def usage(self, user_id: str, now: float) -> float:
        """The member's GPU-seconds, decayed to ``now``."""
        value, when = self._usage.get(user_id, (0.0, now))
        return value * 0.5 ** (max(0.0, now - when) / self.half_life_s)

    def _rank(self, job: J, now: float, usage: float | None = None) -> tuple[int, float, float]:
        """Lower goes first. A job that waited past the starvation limit goes by age before
        all others; the rest by when the member's GPU time, this job's included, would be
        used up (weighted fair queueing's finish tag), less how long the job has waited."""
        waited = now - job.enqueued_at
        if waited >= self.starvation_s:
            return (0, job.enqueued_at, 0.0)
        used = self.usage(job.user_id, now) if usage is None else usage
        return (1, used + self._estimate(job) - waited, job.enqueued_at)

    def schedule(self, now: float) -> Batch[J] | None:
        """The next batch for an idle device, or None when nothing is ready to go."""
        candidates = [
            (min(self._rank(job, now) for job in queue.heads()), key)
            for key, queue in self._queues.items()
            if self._free(queue.slot) and queue.is_ready(now)
        ]
        if not candidates:
            return None
        _, key = min(candidates)
        queue = self._queues[key]
        batch = Batch(key, self._take(queue, now), queue.slot, now)
        self._running.append(batch)
        return batch

    def _free(self, slot: int) -> bool:
        """Whether the slot may take one more batch (one at least: a deployment with no
        replica up yet holds it until one is)."""
        running = sum(batch.slot == slot for batch in self._running)
        return running < max(1, self.capacity_of(slot))

    def _take(self, queue: _Queue[J], now: float) -> list[J]:
        """The first-ranked head, then compatible heads a member at a time per round, best
        ranked first, within the batch cap and the cost budget (a job over the budget on its
        own still runs, alone). The queue changes only once the batch is chosen."""
        limits = queue.limits
        usage = {user: self.usage(user, now) for user in queue.users}
        taken: dict[str, int] = dict.fromkeys(queue.users, 0)

        def head(user: str) -> J | None:
            jobs = queue.users[user]
            return jobs[taken[user]] if taken[user] < len(jobs) else None

        def rank(job: J) -> tuple[int, float, float]:
            return self._rank(job, now, usage[job.user_id])

        first = min(queue.heads(), key=rank)
        batch: list[J] = []
        costs: list[int] = []
        max_batch = queue.max_batch
        while len(batch) < max_batch:
            turn = sorted(
                (
                    job
                    for user in queue.users
                    if (job := head(user)) is not None
                    and job.key == first.key
                    and (not batch or queue.batch_cost([*costs, job.cost]) <= limits.max_cost)
                ),
                key=lambda job: (job is not first, rank(job)),
            )
            if not turn:
                break
            for job in turn:
                if len(batch) == max_batch:
                    break
                if batch and queue.batch_cost([*costs, job.cost]) > limits.max_cost:
                    continue
                batch.append(job)
                costs.append(job.cost)
                taken[job.user_id] += 1
                usage[job.user_id] += self._estimate(job)
        for user, count in taken.items():
            jobs = queue.users[user]
            for _ in range(count):
                jobs.popleft()
            if not jobs:
                del queue.users[user]
        queue.size -= len(batch)
        queue.ready_at = now
        return batch

    def next_ready_in(self, now: float) -> float | None:
        """Seconds until a waiting batch may go on an idle device; None if none is waiting."""
        waits = [
            max(0.0, queue.ready_at - now)
            for queue in self._queues.values()
            if queue.size and self._free(queue.slot) and not queue.full
        ]  # a full continuous batch is woken by ``release``, not by the clock
        return min(waits, default=None)

    # Finishing

    def finish(self, batch: Batch[J], now: float, running_on: Collection[int] = ()) -> list[float]:
        """The batch's device work returned: charge its GPU time, free its members' places
        and its device. The jobs at ``running_on`` (continuous batching) keep their places
        until ``release``. Returns each job's share of the device time, in seconds."""
        seconds = max(0.0, now - batch.started_at)
        total_work = sum(job.work for job in batch.jobs) or float(len(batch.jobs))
        shares = [seconds * (job.work or 1.0) / total_work for job in batch.jobs]
        queue = self._queues[batch.queue_key]
        queue.share_until(now)
        for index, (job, share) in enumerate(zip(batch.jobs, shares, strict=True)):
            self._charge(job.user_id, share, now)
            if index in running_on:
                queue.rows += 1
                queue.row_starts[id(job)] = (queue.shared, now)
            else:
                self._release(job.user_id)
                queue.active -= 1
        if not running_on:  # rows are timed when they end: joining says nothing of them
            self._learn(batch.queue_key, seconds, seconds / total_work)
        if batch in self._running:
            self._running.remove(batch)
        self._forget_idle(now)
        return shares

    def release(self, job: J, now: float) -> float:
        """A job that ran on as a row ended (answered, cancelled or past its deadline): free
        its row and its member's place. It is charged its share of the device while it ran,
        the rows beside it sharing equally, and that share (in seconds) is returned."""
        queue = self._queues[job.queue_key]
        queue.share_until(now)
        try:
            shared_then, started = queue.row_starts.pop(id(job))
        except KeyError:
            raise ValueError("release: the job is not running as a row") from None
        share = queue.shared - shared_then
        queue.rows -= 1
        queue.active -= 1
        self._charge(job.user_id, share, now)
        self._release(job.user_id)
        self._learn(job.queue_key, now - started, share / (job.work or 1.0))
        self._forget_idle(now)
        return share

    def _learn(self, key: ModelKey, seconds: float, per_work: float) -> None:
        """Typical durations, for wait estimates and members' projected usage."""
        for table, value in ((self._batch_s, seconds), (self._s_per_work, per_work)):
            previous = table.get(key)
            table[key] = value if previous is None else 0.8 * previous + 0.2 * value

    def _charge(self, user_id: str, seconds: float, now: float) -> None:
        self._usage[user_id] = (self.usage(user_id, now) + max(MIN_CHARGE_S, seconds), now)

    def _estimate(self, job: J) -> float:
        """The GPU-seconds ``job`` should take, from its model's recent batches."""
        per_work = self._s_per_work.get(job.queue_key)
        if per_work is None:
            limits = self._queues[job.queue_key].limits
            return max(MIN_CHARGE_S, limits.default_batch_s / limits.max_batch)
        return max(MIN_CHARGE_S, per_work * (job.work or 1.0))

    def _forget_idle(self, now: float) -> None:
        """Drop members whose GPU time has decayed to nothing (the table stays small)."""
        faded = [u for u in self._usage if self.usage(u, now) < 1e-3 and not self._outstanding[u]]
        for user_id in faded:
            del self._usage[user_id]

    # Introspection

    def running(self) -> list[Batch[J]]:
        return list(self._running)

    def waiting(self, key: ModelKey) -> int:
        queue = self._queues.get(key)
        return queue.size if queue else 0

    def models(self) -> list[ModelKey]:
        return list(self._queues)

    def order(self, key: ModelKey, now: float) -> list[J]:
        """The model's waiting jobs in the order they would run (batch keys aside): each
        pick adds its estimated GPU time to its member's usage, so equals alternate."""
        queue = self._queues.get(key)
        if queue is None:
            return []
        lines = {user: deque(jobs) for user, jobs in queue.users.items()}
        usage = {user: self.usage(user, now) for user in lines}
        ordered: list[J] = []
        while lines:
            user = min(lines, key=lambda u: self._rank(lines[u][0], now, usage[u]))
            job = lines[user].popleft()
            ordered.append(job)
            usage[user] += self._estimate(job)
            if not lines[user]:
                del lines[user]
        return ordered

    def batch_seconds(self, key: ModelKey, default: float) -> float:
        return self._batch_s.get(key, default)

    def eta(self, key: ModelKey, position: int) -> float:
        """Seconds until the job at ``position`` of the model's queue should start."""
        queue = self._queues[key]
        batch_s = self.batch_seconds(key, queue.limits.default_batch_s)
        return (position // queue.limits.max_batch + 1) * batch_s

    def _user_retry_after(self, user_id: str, now: float) -> float:
        etas = [
            self.eta(key, position)
            for key in self._queues
            for position, job in enumerate(self.order(key, now))
            if job.user_id == user_id
        ]
        return max(1.0, min(etas, default=self._queue_retry_after()))

    def _queue_retry_after(self) -> float:
        waits = [
            self.batch_seconds(key, queue.limits.default_batch_s)
            for key, queue in self._queues.items()
            if queue.active
        ]
        return max(1.0, min(waits, default=1.0))
