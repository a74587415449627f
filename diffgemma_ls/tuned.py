"""Where ``diffgemma-ls tune`` keeps a workspace's weights, and which weights serve a workspace.

Each workspace folder gets its own directory in the user's cache (``$XDG_CACHE_HOME``, else
``~/.cache``), never inside the repository: ``diffgemma-ls/tuned/<sha1 of the folder's path>/``
with ``record.json`` (what was tuned, how long, the held-out scores before and after, whether it
was kept), ``checkpoint.pt`` (weights and optimizer, to resume) and ``model/`` (the kept weights,
a model folder the loader reads like any other). Tuned weights are tied to the weights they were
tuned from (their SHA-1): after an upgrade of the shipped model an old tune no longer applies.

Pure (no torch): the server and the CLI ask it before loading a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD = "record.json"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffgemma-ls" / "tuned"


def tune_dir(workspace: str | Path) -> Path:
    """The cache directory of one workspace folder (its resolved path, hashed)."""
    key = hashlib.sha1(str(Path(workspace).resolve()).encode()).hexdigest()[:16]
    return cache_root() / key


def weights_id(model_dir: Path) -> str:
    """SHA-1 of a model folder's weight files: what a tune was made from."""
    digest = hashlib.sha1()
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Score:
    """Held-out completion quality: line exact match and mean edit similarity, in [0, 1]."""

    tasks: int
    exact: float
    similarity: float


@dataclass
class TuneRecord:
    workspace: str
    base: str  # ``weights_id`` of the weights tuned from
    train_files: int = 0
    heldout_files: int = 0
    steps: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    heldout_key: str = ""  # which held-out tasks ``before`` and ``after`` were measured on
    before: Score | None = None  # the starting weights
    after: Score | None = None  # the kept weights, or the last tune's when none is kept
    kept: bool = False
    history: list[dict] = field(default_factory=list)  # one row per ``tune`` run

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (RECORD + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, folder / RECORD)

    @classmethod
    def load(cls, folder: Path) -> TuneRecord | None:
        """The record in ``folder``, or ``None`` when there is none or it is unreadable."""
        try:
            raw = json.loads((folder / RECORD).read_text())
            scores = {k: Score(**raw[k]) if raw.get(k) else None for k in ("before", "after")}
            return cls(**{**raw, **scores})
        except (OSError, ValueError, TypeError, KeyError):
            return None


def tuned_weights(workspaces: Iterable[str | Path], base_dir: Path) -> tuple[Path, Path] | None:
    """``(workspace, weights folder)`` of the first workspace with a kept tune of ``base_dir``'s weights."""
    base = None
    for workspace in workspaces:
        folder = tune_dir(workspace)
        record = TuneRecord.load(folder)
        if record is None or not record.kept or not (folder / WEIGHTS / "config.json").is_file():
            continue
        base = base or weights_id(base_dir)
        if record.base == base:
            return Path(workspace), folder / WEIGHTS
    return None
