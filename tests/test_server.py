"""End to end: the real server over stdio, driven by pytest-lsp's client, on tiny real models."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from diffgemma_ls.completion import complete_text
from diffgemma_ls.config import Settings
from diffgemma_ls.engine.infill import Engine
from diffgemma_ls.engine.loader import load_model

URI = "file:///work/example.py"
TEXT = "import os\n\n\ndef main():\n    path = \n    print(path)\n"
CURSOR = types.Position(line=4, character=11)  # after "path = "


def capabilities(profile: str, inline: bool = True) -> types.ClientCapabilities:
    """pytest-lsp's recorded client profiles predate LSP 3.18: add inline completion to them."""
    caps = client_capabilities(profile)
    if inline:
        caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    return caps


class Session:
    """A started server with its client and the notifications it sent."""

    def __init__(self, client: LanguageClient, result: types.InitializeResult):
        self.client = client
        self.result = result
        self.statuses: list[dict[str, Any]] = []
        client.feature("diffgemma/status")(lambda params: self.statuses.append(_plain(params)))
        self.applied: list[types.ApplyWorkspaceEditParams] = []  # workspace/applyEdit from the server

        @client.feature(types.WORKSPACE_APPLY_EDIT)
        def apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
            self.applied.append(params)
            return types.ApplyWorkspaceEditResult(applied=True)

    async def wait_for_state(self, *states: str, timeout: float = 120) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while not (self.statuses and self.statuses[-1]["state"] in states):
                await asyncio.sleep(0.05)
            return self.statuses[-1]

        return await asyncio.wait_for(poll(), timeout)

    def open(self, text: str = TEXT, uri: str = URI, language: str = "python") -> None:
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, language, 1, text))
        )

    async def fill(self, start: tuple[int, int], end: tuple[int, int]) -> bool:
        """``diffgemma.fill`` on a range of lines and characters; whether the server applied an edit."""
        result = await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(
                "diffgemma.fill",
                [
                    URI,
                    {
                        "start": {"line": start[0], "character": start[1]},
                        "end": {"line": end[0], "character": end[1]},
                    },
                ],
            )
        )
        return result.applied if hasattr(result, "applied") else result["applied"]

    async def inline(self, position: types.Position = CURSOR, uri: str = URI) -> types.InlineCompletionList:
        return await self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=position,
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )
        )


def _plain(params: Any) -> dict[str, Any]:
    return {
        k: getattr(params, k) for k in ("state", "model", "lastLatencyMs", "message") if hasattr(params, k)
    }


@asynccontextmanager
async def start(
    model: Path | str,
    caps: types.ClientCapabilities,
    options: dict[str, Any] | None = None,
    args: tuple[str, ...] = (),
) -> AsyncIterator[Session]:
    config = ClientServerConfig(
        server_command=[
            sys.executable,
            "-m",
            "diffgemma_ls",
            "--stdio",
            "--model",
            str(model),
            "--threads",
            "1",
            *args,
        ]
    )
    client = await config.start()
    session = Session(client, None)  # type: ignore[arg-type]
    session.result = await client.initialize_session(
        types.InitializeParams(capabilities=caps, initialization_options=options)
    )
    try:
        yield session
    finally:
        await client.shutdown_session()
        await client.stop()


@pytest.fixture
async def session(constant_model_dir: Path) -> AsyncIterator[Session]:
    async with start(constant_model_dir, capabilities("neovim")) as s:
        yield s


def expected_completion(model: Path, text: str, line: int, col: int, settings: Settings) -> str:
    """What the pipeline itself says for this cursor, computed in-process on the same model."""
    offset = len("".join(text.splitlines(keepends=True)[:line])) + col
    outcome = complete_text(
        Engine(load_model(str(model), device="cpu")), text[:offset], text[offset:], "python", "auto", settings
    )
    assert outcome.completion is not None
    return outcome.completion.text


async def test_inline_completion_end_to_end(session: Session, constant_model_dir: Path) -> None:
    caps = session.result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is None  # the client has inline completion: no second model run
    sync = caps.text_document_sync
    assert sync.change == types.TextDocumentSyncKind.Incremental
    assert (await session.wait_for_state("ready", "error"))["state"] == "ready"

    session.open()
    answer = await session.inline()  # Invoked: alternatives from the same batched run come after it
    assert 1 < len(answer.items) <= Settings().candidates
    assert len({i.insert_text for i in answer.items}) == len(answer.items)
    item = answer.items[0]
    assert item.insert_text == expected_completion(constant_model_dir, TEXT, 4, 11, Settings())
    assert set(item.insert_text) == {"x"}  # what the constant model writes
    assert item.range.start == CURSOR
    assert session.statuses[-1]["lastLatencyMs"] > 0

    # an incremental edit moves the cursor line; the answer follows the edited text
    session.client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(0, 0), types.Position(0, 0)), text="import sys\n"
                )
            ],
        )
    )
    moved = await session.inline(types.Position(line=5, character=11))
    assert moved.items and moved.items[0].range.start == types.Position(5, 11)
    shown = moved.items[0].insert_text

    # typing the start of the ghost text: the rest comes from the typing-ahead cache, not the model
    session.client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=3),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(5, 11), types.Position(5, 11)), text="xx"
                )
            ],
        )
    )
    ahead = await session.inline(types.Position(line=5, character=13))
    assert ahead.items[0].insert_text == shown[2:]  # a model run would answer a whole canvas again


async def test_progress_is_reported_while_loading(session: Session) -> None:
    await session.wait_for_state("ready")
    reports = [r for token, rs in session.client.progress_reports.items() if "load" in str(token) for r in rs]
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert isinstance(reports[-1], types.WorkDoneProgressEnd)
    assert [s["state"] for s in session.statuses][:1] == ["loading"]


async def test_client_without_inline_completion_gets_plain_completion(constant_model_dir: Path) -> None:
    async with start(constant_model_dir, capabilities("visual-studio-code", inline=False)) as s:
        assert s.result.capabilities.completion_provider is not None
        await s.wait_for_state("ready")
        s.open()
        result = await s.client.text_document_completion_async(
            types.CompletionParams(types.TextDocumentIdentifier(URI), CURSOR)
        )
        assert 1 <= len(result.items) <= Settings().candidates  # no context: an explicit request
        assert set(result.items[0].text_edit.new_text) == {"x"}


async def test_broken_model_path_is_reported_once_and_server_stays_up(tmp_path: Path) -> None:
    async with start(tmp_path / "missing-model", capabilities("neovim")) as s:
        status = await s.wait_for_state("error", "ready")
        assert status["state"] == "error" and "missing-model" in status["message"]
        s.open()
        for _ in range(3):
            assert (await s.inline()).items == ()
        errors = [m for m in s.client.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1 and "missing-model" in errors[0].message


async def test_invalid_settings_one_message_and_defaults(constant_model_dir: Path) -> None:
    options = {"diffgemma": {"canvasLength": "long", "quantize": "3bit", "maxStepz": 4, "debounceMs": "soon"}}
    async with start(constant_model_dir, capabilities("neovim"), options) as s:
        await s.wait_for_state("ready")
        s.open()
        answer = await s.inline()
        canvas = load_model(str(constant_model_dir), device="cpu").model.config.canvas_length
        assert answer.items and len(answer.items[0].insert_text) == canvas  # the checkpoint's default
        messages = [m.message for m in s.client.messages]
        assert len(messages) == 1
        assert "canvasLength" in messages[0] and "quantize" in messages[0] and "maxStepz" in messages[0]
        assert "debounceMs = 'soon': must be a whole number from 0 to 5000 or \"auto\"" in messages[0]


async def test_settings_change_reloads_and_languages_opt_in(
    random_model_dir: Path, constant_model_dir: Path
) -> None:
    async with start(random_model_dir, capabilities("neovim")) as s:
        await s.wait_for_state("ready")
        s.open("package main\n\nfunc main() {\n\tx := \n}\n", "file:///work/main.go", "go")
        go_cursor = types.Position(line=3, character=6)
        assert (await s.inline(go_cursor, "file:///work/main.go")).items == ()  # the model is for Python
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(
                settings={"diffgemma": {"model": str(constant_model_dir), "languages": ["go"]}}
            )
        )
        await s.wait_for_state("loading")
        await s.wait_for_state("ready")
        answer = await s.inline(go_cursor, "file:///work/main.go")
        assert answer.items and set(answer.items[0].insert_text) == {"x"}


async def test_cancel_request_answers_request_cancelled(random_model_dir: Path) -> None:
    slow = {"diffgemma": {"canvasLength": 256, "maxSteps": 1000, "latencyBudgetMs": 600_000}}
    async with start(random_model_dir, capabilities("neovim"), slow) as s:
        await s.wait_for_state("ready")
        s.open()
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(URI),
            position=CURSOR,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
        request = asyncio.ensure_future(
            s.client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="slow-1"
            )
        )
        await asyncio.sleep(0.5)
        s.client.cancel_request(types.CancelParams(id="slow-1"))
        with pytest.raises(JsonRpcRequestCancelled):
            await asyncio.wait_for(request, timeout=30)
        # the model thread is free again: a request with a short budget is answered
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"diffgemma": {"latencyBudgetMs": 50}})
        )
        answer = await asyncio.wait_for(s.inline(), timeout=30)
        assert isinstance(answer, types.InlineCompletionList)


async def test_newer_request_supersedes_older(random_model_dir: Path) -> None:
    slow = {"diffgemma": {"canvasLength": 256, "maxSteps": 1000, "latencyBudgetMs": 600_000}}
    async with start(random_model_dir, capabilities("neovim"), slow) as s:
        await s.wait_for_state("ready")
        s.open()
        older = asyncio.ensure_future(s.inline())
        await asyncio.sleep(0.5)
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"diffgemma": {"latencyBudgetMs": 50}})
        )
        newer = asyncio.ensure_future(s.inline())
        with pytest.raises(JsonRpcRequestCancelled):
            await asyncio.wait_for(older, timeout=30)
        assert isinstance(await asyncio.wait_for(newer, timeout=30), types.InlineCompletionList)


async def test_utf8_position_encoding_ranges(constant_model_dir: Path) -> None:
    caps = capabilities("neovim")
    caps.general = types.GeneralClientCapabilities(
        position_encodings=[types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16]
    )
    text = "def f():\n    s = '🎉世界' + \n"
    async with start(constant_model_dir, caps) as s:
        assert s.result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        await s.wait_for_state("ready")
        s.open(text)
        utf8_col = len("    s = '🎉世界' + ".encode())
        answer = await s.inline(types.Position(1, utf8_col))
        assert answer.items and answer.items[0].range.start == types.Position(1, utf8_col)


async def test_fill_code_action_and_command(session: Session) -> None:
    await session.wait_for_state("ready")
    text = "def f(x):\n    pass\n\n\nprint(f(1))\n"
    session.open(text)
    pass_range = types.Range(types.Position(1, 4), types.Position(1, 8))
    context = types.CodeActionContext(diagnostics=[])
    doc = types.TextDocumentIdentifier(URI)
    none_here = await session.client.text_document_code_action_async(
        types.CodeActionParams(doc, types.Range(types.Position(4, 3), types.Position(4, 3)), context)
    )
    assert not none_here  # not an empty body, nothing selected: no lightbulb
    actions = await session.client.text_document_code_action_async(
        types.CodeActionParams(doc, types.Range(types.Position(1, 5), types.Position(1, 5)), context)
    )
    assert len(actions) == 1 and actions[0].kind == types.CodeActionKind.RefactorRewrite
    assert actions[0].edit is None  # the model runs in resolve, not for the lightbulb
    resolved = await session.client.code_action_resolve_async(actions[0])
    (edit,) = resolved.edit.changes[URI]
    assert edit.range == pass_range
    assert set(edit.new_text) == {"x"}

    assert await session.fill((1, 5), (1, 5))
    applied = session.applied
    assert applied and applied[0].edit.changes[URI][0].range == pass_range

    # a whole-line selection (Neovim's V) regenerates the code on it, not its indentation and break
    await session.fill((1, 0), (2, 0))
    assert len(applied) == 2 and applied[1].edit.changes[URI][0].range == pass_range


async def test_fill_that_breaks_the_syntax_changes_nothing(session: Session) -> None:
    """No candidate of the constant model's (``xxx...``, ``\\nxxx...``) fits as a def's parameters."""
    await session.wait_for_state("ready")
    session.open("def f(x):\n    return x\n")
    assert not await session.fill((0, 5), (0, 8))
    assert not session.applied


async def test_accept_prefetches_the_next_completion(session: Session, constant_model_dir: Path) -> None:
    """Accepting (the document now holds the shown completion) starts the next answer at once."""
    await session.wait_for_state("ready")
    session.open()
    shown = (await session.inline()).items[0]
    line = TEXT.splitlines()[CURSOR.line]
    accepted = TEXT.replace(line, line + shown.insert_text, 1)
    session.client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=2, uri=URI),
            [types.TextDocumentContentChangePartial(types.Range(CURSOR, CURSOR), shown.insert_text)],
        )
    )
    after = types.Position(CURSOR.line, CURSOR.character + len(shown.insert_text))
    (answer,) = (await session.inline(after)).items
    state = await session.client.protocol.send_request_async("diffgemma/debugState", {})
    state = state if isinstance(state, dict) else state._asdict()
    assert state["prefetches"] == 1 and state["prefetchHits"] == 1, state
    assert state["modelCalls"] == 2  # the first answer and the prefetch: the second request ran nothing
    # the prefetched answer is the one a cold request at that state gets
    assert answer.insert_text == expected_completion(
        constant_model_dir, accepted, CURSOR.line, after.character, Settings()
    )


async def test_a_prefetch_uses_the_documents_caches_and_closing_frees_them(session: Session) -> None:
    """The prefetch runs under its own in-flight key but with the document's encoder cache."""
    await session.wait_for_state("ready")
    session.open()
    typed = await session.client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(URI),
            position=CURSOR,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
    )
    shown = typed.items[0]
    session.client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=2, uri=URI),
            [types.TextDocumentContentChangePartial(types.Range(CURSOR, CURSOR), shown.insert_text)],
        )
    )
    await session.inline(types.Position(CURSOR.line, CURSOR.character + len(shown.insert_text)))
    state = await session.client.protocol.send_request_async("diffgemma/debugState", {})
    state = state if isinstance(state, dict) else state._asdict()
    assert state["prefetches"] == 1 and state["reusedPromptTokens"] > 0, state
    session.client.text_document_did_close(
        types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(URI))
    )
    state = await session.client.protocol.send_request_async("diffgemma/debugState", {})
    state = state if isinstance(state, dict) else state._asdict()
    assert state["promptCaches"] == 0 and state["documents"] == 0, state


async def test_debounce_drops_an_as_you_type_request_when_typing_goes_on(constant_model_dir: Path) -> None:
    """With debounceMs, a keystroke during the wait cancels the request before any model work."""
    async with start(constant_model_dir, capabilities("neovim"), {"debounceMs": 300}) as s:
        await s.wait_for_state("ready")
        s.open()
        automatic = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)
        first = asyncio.ensure_future(  # sent now, not when awaited
            s.client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    context=automatic, text_document=types.TextDocumentIdentifier(URI), position=CURSOR
                )
            )
        )
        await asyncio.sleep(0.05)
        s.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=2, uri=URI),
                [types.TextDocumentContentChangePartial(types.Range(CURSOR, CURSOR), "o")],
            )
        )
        with pytest.raises(JsonRpcRequestCancelled):
            await first
        after = types.Position(CURSOR.line, CURSOR.character + 1)
        answer = await s.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                context=automatic, text_document=types.TextDocumentIdentifier(URI), position=after
            )
        )
        assert answer.items  # a pause after the keystroke: this one runs
        state = await s.client.protocol.send_request_async("diffgemma/debugState", {})
        state = state if isinstance(state, dict) else state._asdict()
        assert state["debounced"] == 1 and state["modelCalls"] == 1, state


async def test_a_request_that_continues_the_last_canvas_skips_the_debounce(constant_model_dir: Path) -> None:
    """Typing the start of the last canvas warm-starts the next request: it runs at once, undebounced.

    Typing-ahead is off, or it would answer from the shown completion without the model.
    """
    options = {"debounceMs": 5000, "candidates": 1}
    async with start(constant_model_dir, capabilities("neovim"), options, ("--no-typeahead",)) as s:
        await s.wait_for_state("ready")
        s.open()
        (shown,) = (await s.inline()).items  # invoked: never debounced
        typed = shown.insert_text[0]
        s.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=2, uri=URI),
                [types.TextDocumentContentChangePartial(types.Range(CURSOR, CURSOR), typed)],
            )
        )
        after = types.Position(CURSOR.line, CURSOR.character + 1)
        automatic = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)
        params = types.InlineCompletionParams(
            context=automatic, text_document=types.TextDocumentIdentifier(URI), position=after
        )
        answer = await asyncio.wait_for(s.client.text_document_inline_completion_async(params), 4)
        assert answer.items and answer.items[0].insert_text.startswith(shown.insert_text[1:])
        state = await s.client.protocol.send_request_async("diffgemma/debugState", {})
        state = state if isinstance(state, dict) else state._asdict()
        assert state["warmStarts"] == 1 and state["modelCalls"] == 2, state


async def test_auto_debounce_waits_for_a_pause_in_the_typists_rhythm(constant_model_dir: Path) -> None:
    """debounceMs "auto": keys 150 ms apart make a request wait 1.5x that (at most 250 ms)."""
    automatic = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)

    def key(version: int, at: types.Position) -> types.Position:
        s.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=version, uri=URI),
                [types.TextDocumentContentChangePartial(types.Range(at, at), "o")],
            )
        )
        return types.Position(at.line, at.character + 1)

    def request(at: types.Position) -> asyncio.Future:
        params = types.InlineCompletionParams(
            context=automatic, text_document=types.TextDocumentIdentifier(URI), position=at
        )
        return asyncio.ensure_future(s.client.text_document_inline_completion_async(params))

    async with start(constant_model_dir, capabilities("neovim"), {"debounceMs": "auto"}) as s:
        await s.wait_for_state("ready")
        s.open()
        position = CURSOR
        for version in range(2, 7):
            position = key(version, position)
            await asyncio.sleep(0.15)
        first = request(position)
        await asyncio.sleep(0.02)
        position = key(7, position)  # typing goes on within the wait: the request is dropped unrun
        with pytest.raises(JsonRpcRequestCancelled):
            await first
        assert (await request(position)).items  # no key follows: this one runs after the wait
        state = await s.client.protocol.send_request_async("diffgemma/debugState", {})
        state = state if isinstance(state, dict) else state._asdict()
        assert state["debounced"] == 1 and state["modelCalls"] == 1, state
        assert 200 <= state["autoDebounceMs"] <= 250, state


async def test_as_you_type_a_line_between_the_same_lines_elsewhere_is_copied(
    constant_model_dir: Path,
) -> None:
    text = (
        "def a(client):\n    client.open()\n    client.send(1)\n    client.close()\n\n\n"
        "def b(client):\n    client.open()\n    \n    client.close()\n"
    )
    automatic = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)
    answers = {}
    for args in ((), ("--no-typing-copies",)):
        async with start(constant_model_dir, capabilities("neovim"), args=args) as session:
            await session.wait_for_state("ready")
            session.open(text)
            params = types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(URI),
                position=types.Position(8, 4),
                context=automatic,
            )
            answer = await session.client.text_document_inline_completion_async(params)
            state = await session.client.protocol.send_request_async("diffgemma/debugState", {})
            state = state if isinstance(state, dict) else state._asdict()
            answers[args] = (answer.items[0].insert_text, state.get("copies", 0))
    assert answers[()] == ("client.send(1)", 1)  # no model call: the constant model writes x's
    copied_off = answers[("--no-typing-copies",)]
    assert set(copied_off[0]) == {"x"} and copied_off[1] == 0
