"""Throughput and latency of the executor against the naive one-request-at-a-time bot.

    python bench/executor.py --device cpu --json out.json
    python bench/executor.py --device cuda --full-size --json out.json
    [--worker process|thread]   (the models in a worker process, as the bot runs them, or a thread)
    [--backend ray]             (then the same workloads again through a Ray Serve deployment
                                 per task on a local Ray, and what each batch costs more)

For each workload, in the same run: 64 simulated users send requests back to back,
first through a naive path (one direct model call per request, FIFO, on one thread, as
Discord AI bots commonly do), then through the executor. Then a lone request's latency
through both. The event loop's lag is sampled while the executor is saturated. With
``--backend ray`` the same again through Ray; then lone requests (one batch each) through
the local backend and Ray in turn: the difference of their medians is what Ray adds to each
batch.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.workloads import Workload, workloads  # noqa: E402
from bot.executor import Backend, Executor, ExecutorConfig, LocalBackend, ModelRegistry  # noqa: E402
from bot.executor.config import default_limits  # noqa: E402
from bot.executor.metrics import percentile  # noqa: E402
from bot.executor.process import ProcessBackend, WorkerSpec  # noqa: E402
from handlers.base import LoadSpec, Task  # noqa: E402

TASKS = ("classifier", "seq2seq", "image")


class NoContext:
    """The naive path has no scheduler to report to."""

    def should_stop(self) -> bool:
        return False

    def progress(self, step: int, total: int) -> None:
        pass

    def partial(self, index: int, data: Any) -> None:
        pass

    def abandoned(self, index: int) -> bool:
        return False


class LoopLag:
    """Samples how late a 1 ms sleep wakes up: the event loop's responsiveness."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            self.samples.append(time.perf_counter() - start - 0.001)

    def start(self) -> None:
        self._first = len(self.samples)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[float]:
        """Stop sampling; return this run's samples (``samples`` keeps every run's)."""
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.samples[self._first :]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


async def closed_loop(users: int, total: int, call: Any) -> tuple[float, list[float]]:
    """``users`` coroutines each send one request at a time until ``total`` were sent."""
    remaining = total
    latencies: list[float] = []

    async def user(uid: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call(uid)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(user(u) for u in range(users)))
    return time.perf_counter() - start, latencies


async def bench_workload(
    work: Workload, executor: Executor, registry: ModelRegistry, users: int, lag: LoopLag
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    task = work.task
    device = registry.device
    model = task.load(LoadSpec(work.model, device, registry.dtype))
    naive_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="naive")

    def direct(request: Any) -> Any:
        output = task.run_batch(model, [request], NoContext())[0]
        result = task.finish(output)
        sync(device)
        return result

    async def naive_call(uid: int) -> Any:
        return await loop.run_in_executor(naive_pool, direct, work.make_request())

    async def engine_call(uid: int) -> Any:
        return await executor.submit(task.name, work.make_request(), user_id=uid)

    # Warm up both paths: the registry's load, and kernels for lone and full batches on
    # each thread (cuBLAS and cuDNN pick algorithms per thread and shape).
    await naive_call(0)
    await engine_call(0)
    await closed_loop(users, min(users, work.engine_requests), engine_call)

    naive_lag = LoopLag()
    naive_lag.start()
    naive_s, _ = await closed_loop(users, work.naive_requests, naive_call)
    naive_lags = await naive_lag.stop()
    lag.start()
    engine_s, latencies = await closed_loop(users, work.engine_requests, engine_call)
    engine_lags = await lag.stop()

    alone_direct, alone_engine = [], []
    for _ in range(work.lone_repeats):
        start = time.perf_counter()
        await naive_call(0)
        alone_direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        await engine_call(0)
        alone_engine.append(time.perf_counter() - start)
    naive_pool.shutdown()

    naive_rps = work.naive_requests / naive_s
    engine_rps = work.engine_requests / engine_s
    return {
        "naive_rps": round(naive_rps, 2),
        "engine_rps": round(engine_rps, 2),
        "speedup": round(engine_rps / naive_rps, 2),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "lone_overhead_ms": round(
            1000 * (statistics.median(alone_engine) - statistics.median(alone_direct)), 2
        ),
        "lone_direct_ms": round(1000 * statistics.median(alone_direct), 2),
        "lone_engine_ms": round(1000 * statistics.median(alone_engine), 2),
        "loop_lag_p99_ms": round(1000 * percentile(engine_lags, 0.99), 2),
        "loop_lag_max_ms": round(1000 * max(engine_lags), 2),
        "naive_loop_lag_p99_ms": round(1000 * percentile(naive_lags, 0.99), 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    names = args.tasks.split(",")
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise SystemExit(f"error: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    chosen = workloads(args.full_size, names)
    config = ExecutorConfig(max_queue=2 * args.users, max_per_user=2, limits=default_limits())
    registry = ModelRegistry(device=args.device)  # the naive path's device and dtype
    tasks = {w.task.name: w.task for w in chosen}
    backend: Backend = (
        ProcessBackend(tasks, WorkerSpec(args.device, encoders=args.cpu_workers))
        if args.worker == "process"
        else LocalBackend(ModelRegistry(device=args.device), cpu_workers=args.cpu_workers)
    )
    executor = Executor(tasks, {w.task.name: w.model for w in chosen}, backend, config)
    lag = LoopLag()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "worker": args.worker,
        "backend": args.backend,
        "full_size": args.full_size,
        "users": args.users,
        "tasks": {},
    }
    async with executor:
        result["tasks"] = await each_workload(executor, chosen, names, registry, args.users, lag)
        worker_gpu = sum(reserved for _, reserved in backend.device_memory().values())
        if args.backend == "ray":
            on_ray = ray_executor(tasks, {w.task.name: w.model for w in chosen}, config)
            async with on_ray:
                result["ray"] = await each_workload(
                    on_ray, chosen, names, registry, args.users, lag
                )
                for name, work in zip(names, chosen, strict=True):
                    added = await added_per_batch(work, executor, on_ray)
                    result["ray"][name].update(added)
    result["loop_lag_p99_ms"] = round(1000 * percentile(lag.samples, 0.99), 2)
    result["loop_lag_max_ms"] = round(1000 * max(lag.samples), 2)
    if args.device.startswith("cuda"):  # the naive path's here, the engine's in its worker
        gpu = torch.cuda.max_memory_allocated() + worker_gpu
        result["peak_mem_mb"] = round(gpu / 2**20, 1)
    else:
        processes = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        rss = max(resource.getrusage(who).ru_maxrss for who in processes)
        result["peak_mem_mb"] = round(rss / 1024, 1)
    return result


async def each_workload(
    executor: Executor,
    chosen: list[Workload],
    names: list[str],
    registry: ModelRegistry,
    users: int,
    lag: LoopLag,
) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    for name, work in zip(names, chosen, strict=True):
        started = time.perf_counter()
        figures[name] = await bench_workload(work, executor, registry, users, lag)
        figures[name]["seconds"] = round(time.perf_counter() - started, 1)
        stats = {(m.task): m for m in executor.snapshot().models}[work.task.name]
        figures[name]["batch_sizes"] = stats.batch_sizes
        print(f"{name}: {figures[name]}", file=sys.stderr, flush=True)
    return figures


async def added_per_batch(work: Workload, local: Executor, on_ray: Executor) -> dict[str, float]:
    """A lone request (one batch) through each backend in turn, both started and warm, so
    that the machine's own ups and downs weigh on both alike: the median difference is what
    Ray adds to a batch."""
    times: dict[Executor, list[float]] = {local: [], on_ray: []}
    for turn in range(2 * work.lone_repeats):
        for executor in (local, on_ray) if turn % 2 else (on_ray, local):
            start = time.perf_counter()
            await executor.submit(work.task.name, work.make_request(), user_id="lone")
            times[executor].append(time.perf_counter() - start)
    local_ms, ray_ms = (1000 * statistics.median(times[e]) for e in (local, on_ray))
    return {
        "lone_local_ms": round(local_ms, 2),
        "lone_ray_ms": round(ray_ms, 2),
        "added_ms_per_batch": round(ray_ms - local_ms, 2),
    }


def ray_executor(
    tasks: dict[str, Task[Any, Any]], models: dict[str, str], config: ExecutorConfig
) -> Executor:
    """A deployment of one replica per task on a local Ray with every core, as a bot on one
    machine would run with BOT_BACKEND=ray."""
    import ray

    from bot.executor.ray_backend import DeploymentSpec, RayCluster, RayTaskBackend, ReplicaSpec

    # The replicas import the benchmark's tasks, which live beside the package.
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    cluster = RayCluster(prefix="bench")
    spec = DeploymentSpec(cpus=0.1)
    backends = {
        name: RayTaskBackend(cluster, task, spec, ReplicaSpec()) for name, task in tasks.items()
    }
    return Executor(tasks, models, backends, config)


def table(result: dict[str, Any]) -> str:
    head = f"{'task':<11}{'naive rps':>11}{'engine rps':>12}{'speedup':>9}"
    head += f"{'p50 ms':>9}{'p99 ms':>9}{'lone +ms':>10}"
    lines = [f"device: {result['device']}  users: {result['users']}", head]
    for name, t in result["tasks"].items():
        lines.append(
            f"{name:<11}{t['naive_rps']:>11.1f}{t['engine_rps']:>12.1f}{t['speedup']:>8.1f}x"
            f"{t['p50_ms']:>9.1f}{t['p99_ms']:>9.1f}{t['lone_overhead_ms']:>10.2f}"
        )
    for name, t in result.get("ray", {}).items():
        lines.append(
            f"{name + ' (ray)':<11}{'':>11}{t['engine_rps']:>12.1f}{'':>9}{t['p50_ms']:>9.1f}"
            f"{t['p99_ms']:>9.1f}{t['lone_overhead_ms']:>10.2f}"
            f"  +{t['added_ms_per_batch']} ms/batch"
        )
    lines.append(
        f"loop lag p99: {result['loop_lag_p99_ms']} ms   peak memory: {result['peak_mem_mb']} MB"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--full-size", action="store_true", help="full-size architectures")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--users", type=int, default=64, help="simulated concurrent users")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    parser.add_argument("--cpu-workers", type=int, default=2, help="result-encoding threads")
    parser.add_argument(
        "--worker", choices=["process", "thread"], default="process", help="where models run"
    )
    parser.add_argument(
        "--backend", choices=["local", "ray"], default="local", help="also through Ray Serve"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
