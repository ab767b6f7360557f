import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants
from huggingface_hub import utils as hub_utils

from bot.cli import QUIET
from tests.tinymodels import build_chat


@pytest.fixture(autouse=True)
def _quiet_loading_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


@pytest.fixture(autouse=True)
def _process_switches_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Process-wide switches a command flips stay in its test: offline mode (an executor that
    found the hub unreachable, ``bot.models.offline_unless_reachable``), the quiet library
    output of ``ask`` and ``chat`` (``bot.cli.quiet_libraries``) and the executor's log
    level (``bot.cli.configure_logging``)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE)
    for name in ("HF_HUB_OFFLINE", *QUIET):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    bars_off = hub_utils.are_progress_bars_disabled()
    executor_log = logging.getLogger("bot.executor")
    level = executor_log.level
    yield
    if not bars_off:
        hub_utils.enable_progress_bars()
    executor_log.setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and steadily while other work shares the CPUs:
    torch's spinning threads wait on each other there (ten to twenty times the latency was
    common on a shared 2-core machine). A module asks for it with ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model (built once): conversations are counted with its tokenizer."""
    return build_chat(tmp_path_factory.mktemp("tiny-chat"))
