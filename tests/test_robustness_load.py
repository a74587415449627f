"""Size and load: huge, odd and binary documents, and a storm of edits, completions and cancellations.

Every request is answered; the context that reaches the model stays within its token budget whatever
the document (checked on ``completion.plan``'s ``InfillContext``, in-process, with the same model);
after the storm nothing is left in flight, caches are within their bounds and the server's copy of
every document equals the client's (``diffgemma/debugState`` hashes). One server for the module.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffgemma_ls.completion import plan
from diffgemma_ls.config import Settings
from diffgemma_ls.documents import Document
from diffgemma_ls.engine.infill import Engine
from diffgemma_ls.engine.loader import load_model
from diffgemma_ls.typeahead import TypeAhead
from tests.test_robustness_support import ServerThread

# Small canvases keep each model call short on a shared CPU; the protocol path is the same.
OPTIONS = {"diffgemma": {"canvasLength": 8, "maxSteps": 2, "latencyBudgetMs": 5000}}
PREFIX_TOKENS, SUFFIX_TOKENS = 384, 128  # context.extract_context's budgets, as plan() uses them
PROMPT_CACHES = 8  # Engine's default bound on per-document encoder caches
REQUEST_CANCELLED = -32800
STORM_OPERATIONS = 1000
REPLAYED: list[int] = []  # edits replayed, for the README's figures


def _python_line(i: int) -> str:
    return f"    value_{i} = compute(value_{i - 1}, {i})  # step {i}\n"


def _documents() -> dict[str, tuple[str, str]]:
    """uri -> (languageId, text): the size cases of issue #7."""
    rng = random.Random(7)
    ten_mb = "def main():\n" + "".join(_python_line(i) for i in range(200_000))
    ten_mb += "    x = " + "y" * (10_000_000 - len(ten_mb)) + "\n"
    binary = bytes(rng.randrange(256) for _ in range(200_000)).decode("latin-1")
    return {
        "file:///big/ten_mb.py": ("python", ten_mb),
        "file:///big/lines.py": ("python", "".join(f"x{i} = {i}\n" for i in range(100_000))),
        "file:///big/one_line.py": ("python", "data = [" + "1, " * 333_333 + "]"),
        "file:///big/blob.py": ("python", binary),  # a binary file opened as Python by mistake
        "file:///big/report.cob": ("cobol", "       IDENTIFICATION DIVISION.\n" * 1000),
    }


@pytest.fixture(scope="module")
def engine(random_model_dir: Path) -> Engine:
    return Engine(load_model(str(random_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def served(random_model_dir: Path) -> Iterator[ServerThread]:
    driver = ServerThread()
    server = driver.start("--model", str(random_model_dir))
    driver.run(server.initialize(OPTIONS))
    assert driver.run(server.wait_for_state("ready", "error", timeout=120))["state"] == "ready"
    yield driver
    driver.stop()


def _positions(text: str) -> list[tuple[int, int]]:
    """Start, middle, end, past the end, and the middle of the longest line."""
    lines = text.count("\n")
    return [(0, 0), (lines // 2, 4), (lines, 0), (lines + 5, 99), (0, 500_000)]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def test_size_cases_are_answered_within_budget(served: ServerThread, engine: Engine) -> None:
    server = served.server
    assert server is not None
    count = lambda s: len(engine.tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
    cases = _documents()
    for uri, (language, text) in cases.items():
        served.call(server.open, uri, text, language)
        for line, character in _positions(text):
            answer = served.run(server.inline(uri, line, character))
            assert "result" in answer, (uri, answer)
            if language == "cobol":  # not the model's language: nothing, quickly
                assert answer["result"]["items"] == []
            # the window the model would see for this cursor
            doc = Document(uri, text, language)
            request = plan(text, doc.offset_at(line, character), language, Settings(), engine, invoked=True)
            if request is not None:
                assert count(request.context.prefix) <= PREFIX_TOKENS, uri
                assert count(request.context.suffix) <= SUFFIX_TOKENS, uri
        state = served.run(server.debug_state(uri))
        assert state["textSha256"] == _sha(text), uri
    state = served.run(server.debug_state())
    assert state["totalChars"] == sum(len(t) for _, t in cases.values())
    assert state["inflight"] == 0 and state["pendingFutures"] == 0 and state["modelQueue"] == 0, state
    assert state["promptCaches"] <= PROMPT_CACHES and state["typeahead"] <= TypeAhead().max_documents
    for uri in cases:
        served.call(server.notify, "textDocument/didClose", {"textDocument": {"uri": uri}})
    assert served.run(server.debug_state())["totalChars"] == 0  # closing frees them: nothing else holds text


# -- edits ----------------------------------------------------------------------------------------

# Text an editor may insert: ASCII, line breaks of every kind, wide characters, NUL, tabs.
inserted = st.lists(st.sampled_from([*"ab(){}:= \t\n\r", "\r\n", "é", "世", "🎉", "\x00"]), max_size=8).map(
    "".join
)
edits = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 60), st.integers(0, 40), st.integers(0, 60), inserted),
    min_size=1,
    max_size=25,
)


def _change(doc: Document, edit: tuple[int, int, int, int, str]) -> dict[str, Any]:
    """Apply one generated edit to the client's copy; return it as an LSP content change."""
    sl, sc, el, ec, text = edit
    doc.apply_change(((sl, sc), (el, ec)), text)
    return {
        "range": {"start": {"line": sl, "character": sc}, "end": {"line": el, "character": ec}},
        "text": text,
    }


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(edits=edits, batch=st.booleans())
def test_generated_edits_keep_the_server_in_sync(
    served: ServerThread, edits: list[tuple[int, int, int, int, str]], batch: bool
) -> None:
    """Any edit sequence, one per notification or all in one, leaves the server's copy equal to ours."""
    server = served.server
    assert server is not None
    uri, start = "file:///edits/main.py", "def f(a):\n    return a\n\nx = f(1)\r\ny = 2\n"
    served.call(server.open, uri, start)
    doc = Document(uri, start)
    changes = [_change(doc, edit) for edit in edits]
    groups = [changes] if batch else [[c] for c in changes]
    for version, group in enumerate(groups, 2):
        served.call(
            server.notify,
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": version}, "contentChanges": group},
        )
    REPLAYED.append(len(edits))
    assert served.run(server.debug_state(uri))["textSha256"] == _sha(doc.text)


# -- the storm ------------------------------------------------------------------------------------


def test_storm_of_edits_completions_and_cancellations(served: ServerThread) -> None:
    server = served.server
    assert server is not None
    rng = random.Random(1234)
    uris = [f"file:///storm/m{i}.py" for i in range(4)]
    docs = {
        uri: Document(uri, f"import os\n\n\ndef main_{i}():\n    path = \n") for i, uri in enumerate(uris)
    }
    for uri, doc in docs.items():
        served.call(server.open, uri, doc.text)
    versions = dict.fromkeys(uris, 1)
    requests: list[Any] = []
    cancelled: set[Any] = set()
    edited: list[int] = []

    async def storm() -> None:  # on the server's loop: send everything without waiting for anything
        for _ in range(STORM_OPERATIONS):
            uri = rng.choice(uris)
            doc = docs[uri]
            roll = rng.random()
            if roll < 0.55:
                line = rng.randrange(doc.line_count + 1)
                col = rng.randrange(len(doc.line(line)) + 2)
                text = rng.choice(["x", "(", ")", "\n    ", "os.path", "", "🎉", "\n"])
                end = (line, col + rng.choice([0, 0, 1, 3]))
                change = _change(doc, (line, col, *end, text))
                edited.append(1)
                versions[uri] += 1
                server.notify(
                    "textDocument/didChange",
                    {"textDocument": {"uri": uri, "version": versions[uri]}, "contentChanges": [change]},
                )
            elif roll < 0.9 or not requests:
                line = rng.randrange(doc.line_count)
                requests.append(server.inline_nowait(uri, line, len(doc.line(line))))
            else:
                target = rng.choice(requests)
                cancelled.add(target)
                server.notify("$/cancelRequest", {"id": target})

    served.run(storm())
    for msg_id in requests:
        answer = served.run(server.response(msg_id, timeout=120))
        assert "result" in answer or answer["error"]["code"] == REQUEST_CANCELLED, answer
    REPLAYED.append(len(edited))
    state = served.run(server.debug_state())
    assert state["inflight"] == 0 and state["pendingFutures"] == 0 and state["modelQueue"] == 0, state
    assert state["promptCaches"] <= PROMPT_CACHES and state["typeahead"] <= TypeAhead().max_documents, state
    for uri, doc in docs.items():
        assert served.run(server.debug_state(uri))["textSha256"] == _sha(doc.text), uri
    answered = sum("result" in server.responses[i] for i in requests)
    superseded = len(requests) - answered
    print(
        f"robustness: storm of {STORM_OPERATIONS} operations: {len(edited)} edits, {len(requests)} "
        f"completions ({answered} answered, {superseded} cancelled or superseded), {len(cancelled)} "
        f"$/cancelRequest; {sum(REPLAYED)} edits replayed in this module"
    )
