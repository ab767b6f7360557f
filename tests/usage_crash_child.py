"""Run as a child process: log jobs, flush, report, then wait to be killed (SIGKILL test)."""

import asyncio
import sys
from pathlib import Path

from bot.usage import UsageLog


async def main(path: Path) -> None:
    usage = UsageLog(path, flush_interval_s=3600)
    await usage.open()
    for n in range(20):
        usage.begin({"id": f"job{n}", "source": "cli", "user_id": "u", "task": "chat"})
    for n in range(10):
        usage.end(f"job{n}", "ok", run_ms=5.0)
    assert await usage.flush()
    print("flushed", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main(Path(sys.argv[1])))
