import logging
from pathlib import Path

import pytest

from tests.tinymodels import build_chat


@pytest.fixture(autouse=True)
def _quiet_loading_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model (built once): conversations are counted with its tokenizer."""
    return build_chat(tmp_path_factory.mktemp("tiny-chat"))
