"""One model's queue: per-user round robin, and batches of compatible jobs within a budget."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator

from bot.executor.config import ClassLimits
from bot.executor.job import Job


class ModelQueue:
    """Jobs waiting for one (task, model); only the event loop thread touches it."""

    def __init__(self, limits: ClassLimits) -> None:
        self.limits = limits
        self._users: OrderedDict[str, deque[Job]] = OrderedDict()
        self._size = 0
        self.active = 0
        """Jobs of this model admitted and not yet finished (queued, running or finishing)."""
        self.ready_at = 0.0
        """When the forming batch may go even if not full."""

    def __len__(self) -> int:
        return self._size

    def push(self, job: Job, now: float) -> None:
        """Queue ``job``; a lone request goes at once, a burst waits one window to fill a batch."""
        if self._size == 0:
            concurrent = self.active > 0
            self.ready_at = now + self.limits.window_s if concurrent else now
        self._users.setdefault(job.user_id, deque()).append(job)
        self._size += 1

    def remove(self, job: Job) -> bool:
        jobs = self._users.get(job.user_id)
        if not jobs or job not in jobs:
            return False
        jobs.remove(job)
        if not jobs:
            del self._users[job.user_id]
        self._size -= 1
        return True

    def is_ready(self, now: float) -> bool:
        return self._size > 0 and (self._size >= self.limits.max_batch or now >= self.ready_at)

    def in_order(self) -> Iterator[Job]:
        """Jobs in the order round robin would serve them (ignoring batch keys)."""
        depth = max((len(jobs) for jobs in self._users.values()), default=0)
        for turn in range(depth):
            for jobs in self._users.values():
                if turn < len(jobs):
                    yield jobs[turn]

    def take_batch(self, now: float) -> list[Job]:
        """Compatible jobs, one per user per round, starting with the user whose turn it is."""
        if not self._size:
            return []
        key = next(iter(self._users.values()))[0].key
        batch: list[Job] = []
        cost = 0
        served: list[str] = []
        while len(batch) < self.limits.max_batch:
            took = False
            for user, jobs in self._users.items():
                if not jobs or jobs[0].key != key:
                    continue
                if batch and cost + jobs[0].cost > self.limits.max_cost:
                    break
                job = jobs.popleft()
                batch.append(job)
                cost += job.cost
                took = True
                if user not in served:
                    served.append(user)
                if len(batch) == self.limits.max_batch:
                    break
            else:
                if took:
                    continue
            break
        # Users served go to the back of the rotation in the order they were served.
        for user in served:
            jobs = self._users.pop(user)
            if jobs:
                self._users[user] = jobs
        self._size -= len(batch)
        self.ready_at = now
        return batch
