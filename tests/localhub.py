"""A stand-in for the Hugging Face hub that ``bot.models.pull`` can download from offline.

It serves folders built by ``tests/tinymodels.py`` as repositories and writes what
``snapshot_download`` writes into the hub cache: the files its patterns select, ``refs/main``
and the repository's tree listing (every file, selected or not). The listing is what lets the
real offline loaders (huggingface_hub, diffusers) tell a complete download from a partial
one, so a pull that skipped a file the loader needs fails the test as it would fail the bot.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import filter_repo_objects

COMMIT = "1" * 40


class LocalHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Path] = {}
        self.downloads: list[str] = []

    def add(self, repo_id: str, folder: Path, repo_type: str = "model") -> None:
        self.repos[(repo_id, repo_type)] = folder

    def __call__(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        allow_patterns: list[str] | None = None,
        ignore_patterns: list[str] | None = None,
    ) -> str:
        """``snapshot_download`` into ``hub_constants.HF_HUB_CACHE``."""
        self.downloads.append(repo_id)
        folder = self.repos.get((repo_id, repo_type))
        if folder is None:
            raise OSError(f"404 Client Error: Repository Not Found for {repo_type} {repo_id}")
        files = {f.relative_to(folder).as_posix(): f for f in folder.rglob("*") if f.is_file()}
        storage = Path(hub_constants.HF_HUB_CACHE) / repo_folder_name(
            repo_id=repo_id, repo_type=repo_type
        )
        snapshot = storage / "snapshots" / COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        for name in filter_repo_objects(
            files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
        ):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[name], snapshot / name)
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / "main").write_text(COMMIT)
        (storage / "trees").mkdir(exist_ok=True)
        listing = {
            name: {
                "size": path.stat().st_size,
                "blob_id": hashlib.sha1(path.read_bytes()).hexdigest(),
            }
            for name, path in files.items()
        }
        tree = {"format_version": 1, "files": listing}
        (storage / "trees" / f"{COMMIT}.json").write_text(json.dumps(tree))
        return str(snapshot)
