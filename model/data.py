"""The training corpus on disk (``python -m model.corpus`` writes it): its files by split."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "work" / "corpus"


def load_files(split: str) -> list[tuple[str, str]]:
    """``(path, text)`` of a corpus split (``train`` or ``val``)."""
    with open(CORPUS / f"{split}.jsonl") as fh:
        return [(row["path"], row["text"]) for row in map(json.loads, fh)]


def load_texts(split: str) -> list[str]:
    return [text for _, text in load_files(split)]
