"""The bot's models for the load and capacity benchmarks, and the texts members send.

Kept apart from ``bench/load.py`` so ``bench/capacity.py`` needs neither discord.py nor
SimCord (a GPU machine's Python may lack both).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.settings import (  # noqa: E402
    ChatSettings,
    ImagineSettings,
    ModelSettings,
    Settings,
    SpeakSettings,
)
from tests import tinymodels  # noqa: E402

TEXTS = [
    "The group met on Tuesday. They reviewed the notes on enzymes and planned the exam.",
    "I love this study group, everyone is so helpful!",
    "The deadline moved to Friday, so we have more time for the lab report.",
    "Chapter three covers photosynthesis. Read it before the next meeting.",
]


def build_models(directory: Path, device: str = "cpu", full_size: bool = False) -> Settings:
    """Models for every task (tiny, or the defaults' architectures with random weights:
    ``bench/fullsize.py``), and settings that point the bot at them."""
    if full_size:
        from bench import fullsize

        paths = fullsize.build(directory)
        return Settings(
            _env_file=None,
            device=device,
            data_dir=directory / "data",
            # The tasks without a full-size stand-in keep their defaults (never loaded here).
            models=ModelSettings(**{t: paths[t] for t in ModelSettings.model_fields if t in paths}),
            speak=SpeakSettings(voices=paths["voices"], vocoder=paths["vocoder"]),
            imagine=ImagineSettings(preview_model=paths["preview"]),
        )
    paths = tinymodels.build_every_task(directory)
    models = ModelSettings(**{t: str(paths[t]) for t in ModelSettings.model_fields})
    return Settings(
        _env_file=None,
        device=device,
        data_dir=directory / "data",
        models=models,
        imagine=ImagineSettings(default_steps=4, preview_model=str(paths["preview"])),
        chat=ChatSettings(default_new_tokens=16),
        speak=SpeakSettings(voices=str(paths["voices"]), vocoder=str(paths["vocoder"])),
        edit_interval_s=0.5,
        torch_threads=1,
        read_messages=True,  # the load test reads its channel aloud in a call
    )
