"""Throughput and latency of the executor against the naive one-request-at-a-time bot.

    python bench/executor.py --device cpu --json out.json
    python bench/executor.py --device cuda --full-size --json out.json
    [--worker process|thread]   (the models in a worker process, as the bot runs them, or a thread)

For each workload, in the same run: 64 simulated users send requests back to back,
first through a naive path (one direct model call per request, FIFO, on one thread, as
Discord AI bots commonly do), then through the executor. Then a lone request's latency
through both. The event loop's lag is sampled while the executor is saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
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
from bot.executor.process import ProcessBackend, WorkerSpec  # noqa: E402
from handlers.base import LoadSpec  # noqa: E402

TASKS = ("classifier", "seq2seq", "image")


class NoContext:
    """The naive path has no scheduler to report to."""

    def should_stop(self) -> bool:
        return False

    def progress(self, step: int, total: int) -> None:
        pass

    def partial(self, index: int, data: Any) -> None:
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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
        "full_size": args.full_size,
        "users": args.users,
        "tasks": {},
    }
    async with executor:
        for name, work in zip(names, chosen, strict=True):
            started = time.perf_counter()
            result["tasks"][name] = await bench_workload(work, executor, registry, args.users, lag)
            result["tasks"][name]["seconds"] = round(time.perf_counter() - started, 1)
            stats = {(m.task): m for m in executor.snapshot().models}[work.task.name]
            result["tasks"][name]["batch_sizes"] = stats.batch_sizes
            print(f"{name}: {result['tasks'][name]}", file=sys.stderr, flush=True)
        worker_gpu = sum(reserved for _, reserved in backend.device_memory().values())
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


def table(result: dict[str, Any]) -> str:
    head = f"{'task':<11}{'naive rps':>11}{'engine rps':>12}{'speedup':>9}"
    head += f"{'p50 ms':>9}{'p99 ms':>9}{'lone +ms':>10}"
    lines = [f"device: {result['device']}  users: {result['users']}", head]
    for name, t in result["tasks"].items():
        lines.append(
            f"{name:<11}{t['naive_rps']:>11.1f}{t['engine_rps']:>12.1f}{t['speedup']:>8.1f}x"
            f"{t['p50_ms']:>9.1f}{t['p99_ms']:>9.1f}{t['lone_overhead_ms']:>10.2f}"
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
