"""Shared by the editor end-to-end tests: the model they serve, the server command, the expected text."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from diffgemma_ls.completion import choose_fill, complete_text, plan_fill, run
from diffgemma_ls.config import Settings
from diffgemma_ls.engine.infill import Engine
from diffgemma_ls.engine.loader import load_model
from diffgemma_ls.fill import trim_selection
from diffgemma_ls.languages import get_parser

REPO = Path(__file__).resolve().parents[2]
DEPS = REPO / "editors" / ".deps"
# generous, so the server's answer is the model's full answer and equals the in-process one
LATENCY_BUDGET_MS = 120_000


@pytest.fixture(scope="session")
def editor_model_dir(constant_model_dir: Path) -> Path:
    """The model the editors are tested with: the constant model, whose answer is known to be visible.

    ``DIFFGEMMA_EDITOR_MODEL=model/default`` runs the same tests on the shipped model instead: that is
    how ``editors/vscode/screenshot.png`` was taken (``editors/.deps/artifacts/vscode-e2e-ghost.png``).
    """
    chosen = os.environ.get("DIFFGEMMA_EDITOR_MODEL")
    return Path(chosen).resolve() if chosen else constant_model_dir


def missing_tool(reason: str) -> NoReturn:
    """Editor tooling is absent: a failure on CI (where editors/setup.sh installs it), else a skip."""
    message = f"{reason}; run `bash editors/setup.sh`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def server_command(model_dir: Path, log_file: Path) -> list[str]:
    """The server as an editor starts it, with a verbose log to read when a test fails."""
    return [
        sys.executable,
        "-m",
        "diffgemma_ls",
        "--stdio",
        "--model",
        str(model_dir),
        "--threads",
        "1",
        "--log-file",
        str(log_file),
        "-v",
    ]


def expected_completion(model_dir: Path, text: str, offset: int, language_id: str = "python") -> str:
    """The pipeline's own answer at ``offset``, computed in-process on the same model."""
    engine = Engine(load_model(str(model_dir), device="cpu"))
    outcome = complete_text(
        engine,
        text[:offset],
        text[offset:],
        language_id,
        "auto",
        Settings(latency_budget_ms=LATENCY_BUDGET_MS),
    )
    assert outcome.completion is not None
    return outcome.completion.text


def expected_fill(model_dir: Path, text: str, start: int, end: int, language_id: str = "python") -> str:
    """The document after the pipeline's own fill of ``text[start:end]``, computed in-process."""
    engine = Engine(load_model(str(model_dir), device="cpu"))
    start, end = trim_selection(text, start, end)
    settings = Settings(latency_budget_ms=LATENCY_BUDGET_MS)
    request = plan_fill(text, start, end, language_id, settings, engine, candidates=settings.candidates)
    chosen = choose_fill(run(engine, request), text, start, end, language_id)
    assert chosen is not None
    return text[:start] + chosen.text + text[end:]


def parses(text: str, grammar: str = "python") -> bool:
    """Whether tree-sitter parses ``text`` without an error or missing node."""
    parser = get_parser(grammar)
    assert parser is not None
    return not parser.parse(text.encode()).root_node.has_error
