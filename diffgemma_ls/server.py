"""LSP glue: thin handlers that move data between the protocol and the completion service.

``DiffgemmaServer`` holds the session's state (settings, the model's status, messages already
shown); ``CompletionService`` (``service.py``) does the work, on the model thread that
``ModelScheduler`` (``scheduler.py``) owns; ``protocol.py`` mends what pygls does not answer. Each
handler below is a plain function of the server and the request's params, registered by
``create_server``.

``diffgemma/debugState`` (a custom request) answers the sizes of that state - open documents, requests
in flight, pending handler futures, cache entries, queued model jobs, work counters (the engine's
forward passes and cache reuse, cancelled requests included; typing-ahead hits) - and, given
``{"uri": ...}``, the SHA-256 of the server's copy of that document: what a bug report or a test needs
to tell a leak or a desynchronized document, without any document contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import (
    FeatureRequestError,
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
)
from pygls.lsp.server import LanguageServer

from diffgemma_ls import __version__
from diffgemma_ls.backend import HttpBackend
from diffgemma_ls.config import SECTION, Settings, merge_client_settings
from diffgemma_ls.documents import DocumentStore, UnknownDocument, units
from diffgemma_ls.engine.kinds import ModelLoadError
from diffgemma_ls.fill import fill_target
from diffgemma_ls.languages import LANGUAGE_BY_EXTENSION, served_languages
from diffgemma_ls.pace import TypingPace
from diffgemma_ls.protocol import Protocol, ResyncingStdin, valid_text
from diffgemma_ls.scheduler import ModelScheduler
from diffgemma_ls.service import Answer, CompletionService, Serving, Superseded
from diffgemma_ls.typeahead import TypeAhead
from diffgemma_ls.workspace import Workspace

if TYPE_CHECKING:
    from diffgemma_ls.engine.infill import Engine

log = logging.getLogger(__name__)

STATUS_NOTIFICATION = "diffgemma/status"
FILL_TITLE = "Fill with DiffusionGemma"
FILL_COMMAND = "diffgemma.fill"
DEBUG_STATE_REQUEST = "diffgemma/debugState"
_ENCODINGS = {
    types.PositionEncodingKind.Utf8: "utf-8",
    types.PositionEncodingKind.Utf16: "utf-16",
    types.PositionEncodingKind.Utf32: "utf-32",
}


@dataclass
class ModelState:
    """What the status bar shows: ``loading``, ``ready``, ``error``."""

    state: str = "loading"
    model: str = ""
    message: str | None = None
    tuned_for: str | None = None  # the workspace folder whose tuned weights serve


class DiffgemmaServer(LanguageServer):
    def __init__(self, settings: Settings):
        super().__init__("diffgemma-ls", __version__, protocol_cls=Protocol)
        self.base_settings = settings
        self.settings = settings
        self.documents = DocumentStore()
        self.pace = TypingPace()
        self.scheduler = ModelScheduler()
        self.service = CompletionService(
            self.documents,
            self.scheduler,
            TypeAhead(),
            self.pace,
            lambda text, kind: self.tell_once(text, key=kind),
        )
        self.service.serve(Serving(settings))
        self.model_state = ModelState(model=settings.model or "default")
        self._load_generation = 0
        self._load_task: asyncio.Future | None = None
        self._reported_errors: set[str] = set()
        self.pending_problems: list[str] = []
        self.client_has_inline_completion = True
        self.folders: list[str] = []  # the workspace folders the client sent
        self.backend_down: str | None = None  # why the HTTP backend is down, while it is

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        super().start_io(ResyncingStdin(stdin or sys.stdin.buffer), stdout)

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Errors outside a request's own response, never one message box per keystroke (pygls shows each).

        A body that is not JSON gets -32700 (id null); a notification that does not fit its type is
        ignored, as the spec says of notifications; a crash in a notification handler is shown once.
        """
        if source is FeatureRequestError:
            return  # the request's error response already says it
        if isinstance(error, ValueError):  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.protocol._send_response(None, error=types.ResponseError(code=-32700, message="parse error"))
        elif source is JsonRpcException:  # the reader: a notification that does not fit its type
            log.warning("ignored a malformed notification: %s", error)
        else:
            self.tell_once(f"internal error ({type(error).__name__}); the log has the details")

    # -- status and messages -------------------------------------------------------------------

    def send_status(self) -> None:
        s = self.model_state
        params: dict[str, Any] = {
            "state": s.state,
            "model": s.model,
            "lastLatencyMs": self.service.last_latency_ms,
        }
        if s.message:
            params["message"] = s.message
        if s.tuned_for:
            params["tunedFor"] = s.tuned_for
        if self.settings.backend:
            params["backend"] = self.settings.backend
            if self.backend_down:
                params["backendDown"] = self.backend_down
        self.protocol.notify(STATUS_NOTIFICATION, params)

    def tell_once(
        self, message: str, kind: types.MessageType = types.MessageType.Error, key: str | None = None
    ) -> None:
        """Show a message to the user once per ``key`` (default: its text), not on every keystroke.

        Errors whose text varies (shapes, indices, call counts) pass a stable ``key``.
        """
        log.log(logging.ERROR if kind == types.MessageType.Error else logging.WARNING, message)
        if (key or message) in self._reported_errors:
            return
        self._reported_errors.add(key or message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"diffgemma-ls: {message}"))

    # -- settings and model ---------------------------------------------------------------------

    def apply_client_settings(self, client: Any) -> None:
        """Merge a client's ``diffgemma`` section; reload the model if model/quantize/device changed."""
        new, problems = merge_client_settings(self.base_settings, client)
        if problems:
            self.tell_once("invalid settings, using defaults for: " + "; ".join(problems))
        old, self.settings = self.settings, new
        self.service.serve(Serving(new, self.service.serving.engine, self.service.serving.languages))
        if new.model_key != old.model_key:
            self.start_model_load()

    def start_model_load(self) -> None:
        self._load_generation += 1
        self.scheduler.cancel_all()
        self._load_task = asyncio.ensure_future(self._load_model(self._load_generation))

    async def _load_model(self, generation: int) -> None:
        settings = self.settings
        self.backend_down = None  # a new engine: what the last one said no longer holds
        name = settings.model or "default"
        self.model_state = ModelState(state="loading", model=name)
        self.service.serve(Serving(settings))
        self.send_status()
        token = f"diffgemma-load-{generation}"
        progress = self._client_supports_progress()
        if progress:
            try:
                await self.work_done_progress.create_async(token)
                self.work_done_progress.begin(
                    token, types.WorkDoneProgressBegin(title="DiffusionGemma", message=f"loading {name}")
                )
            except Exception:  # a client that refuses progress still gets the model
                progress = False
        try:
            engine = await self.scheduler.call(_load_engine, settings, self.folders)
            if isinstance(engine, HttpBackend):  # it says when it goes down and comes back, from its thread
                loop = asyncio.get_running_loop()
                report = self._backend_status
                engine.on_status = lambda down: loop.call_soon_threadsafe(report, down, generation)
            if progress:
                self.work_done_progress.report(token, types.WorkDoneProgressReport(message="warming up"))
            await self.scheduler.call(engine.warm_up)
        except ModelLoadError as exc:
            if generation == self._load_generation:
                self.model_state = ModelState(state="error", model=name, message=str(exc))
                self.tell_once(str(exc))
        else:
            if generation == self._load_generation:
                code_languages = engine.code_languages
                languages = served_languages(code_languages)
                self.service.serve(Serving(self.settings, engine, languages))
                tuned = str(engine.tuned_for) if engine.tuned_for else None
                self.model_state = ModelState(state="ready", model=name, tuned_for=tuned)
                log.info(
                    "serving %s%s; languages: %s%s",
                    engine.describe(self.settings.canvas_length),
                    f", tuned for {tuned}" if tuned else "",
                    ", ".join(languages),
                    "" if code_languages else " (a general model: every language with an installed grammar)",
                )
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=self.model_state.state))
        if generation == self._load_generation:
            self.send_status()

    def _backend_status(self, down: str | None, generation: int) -> None:
        """The backend went down (``down`` says why) or came back: one status notification each time."""
        if generation != self._load_generation:  # an engine since replaced
            return
        self.backend_down = down
        self.send_status()

    def _client_supports_progress(self) -> bool:
        window = self.protocol.client_capabilities.window
        return bool(window and window.work_done_progress)

    def supports_configuration(self) -> bool:
        workspace = self.protocol.client_capabilities.workspace
        return bool(workspace and workspace.configuration)

    async def client_configuration(self) -> Any:
        """The client's ``diffgemma`` section, by ``workspace/configuration`` (None if it has none)."""
        result = await self.workspace_configuration_async(
            types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
        )
        return result[0] if result else None

    def debug_state(self, uri: Any) -> dict[str, Any]:
        """Sizes of the server's state (see the module docstring); never document text."""
        service, engine = self.service, self.service.serving.engine
        state: dict[str, Any] = {
            "documents": len(self.documents),
            "totalChars": self.documents.total_chars,
            "inflight": self.scheduler.inflight,
            "pendingFutures": self.protocol.pending_futures,
            "typeahead": len(service.typeahead),
            "prefetching": service.prefetching,
            "promptCaches": engine.cached_documents if engine is not None else 0,
            "modelQueue": self.scheduler.queued,
            "workspaceFiles": len(service.workspace) if service.workspace is not None else 0,
            "autoDebounceMs": round(self.pace.delay_ms()),
            **service.stats,
            **(engine.totals if engine is not None else {}),
        }
        if isinstance(uri, str) and uri in self.documents:
            text = self.documents.get(uri).text
            state["textSha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return state


def _load_engine(settings: Settings, folders: list[str]) -> Engine:
    """On the model thread: torch and transformers are imported here, not before ``initialize``."""
    from diffgemma_ls.completion import load_engine

    return load_engine(settings, folders)


def _client_settings(options: Any) -> Any:
    """initializationOptions may be the section itself or ``{"diffgemma": {...}}``."""
    if isinstance(options, dict) and SECTION in options:
        return options[SECTION]
    return options


def _range(ls: DiffgemmaServer, uri: str, start: int, end: int) -> types.Range:
    doc = ls.documents.get(uri)
    return types.Range(types.Position(*doc.position_at(start)), types.Position(*doc.position_at(end)))


async def _answers(
    ls: DiffgemmaServer, uri: str, position: types.Position, invoked: bool
) -> list[tuple[str, types.Range]]:
    """Texts to insert and the ranges they replace (the closers after the cursor a completion re-typed)."""
    ran = ls.service.model_answers
    try:
        answers = await ls.service.complete(uri, position.line, position.character, invoked)
    except Superseded as exc:
        raise JsonRpcRequestCancelled(str(exc)) from None
    if ls.service.model_answers != ran:  # a new latency to show; cache hits send nothing per key
        ls.send_status()
    return [(a.completion.text, _replaced(ls, a, position)) for a in answers]


def _replaced(ls: DiffgemmaServer, answer: Answer, position: types.Position) -> types.Range:
    replaced = answer.text[answer.offset : answer.offset + answer.completion.replace_end]
    end = types.Position(position.line, position.character + units(replaced, ls.documents.encoding))
    return types.Range(start=position, end=end)


# -- handlers -----------------------------------------------------------------------------------


def _folders(params: types.InitializeParams) -> list[str]:
    """The workspace folders the client sent (file URIs only), else its root."""
    uris = [folder.uri for folder in params.workspace_folders or []] or [params.root_uri or ""]
    paths = [unquote(urlparse(uri).path) for uri in uris if uri.startswith("file://")]
    return paths or ([params.root_path] if params.root_path else [])


def initialize(ls: DiffgemmaServer, params: types.InitializeParams) -> None:
    ls.documents.encoding = _ENCODINGS.get(ls.workspace.position_encoding, "utf-16")
    text_caps = params.capabilities.text_document
    ls.client_has_inline_completion = bool(text_caps and text_caps.inline_completion)
    if not ls.client_has_inline_completion:
        # only for clients without inline completion, so no client runs the model twice a keystroke
        ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(plain_completion)
    ls.settings, ls.pending_problems = merge_client_settings(
        ls.base_settings, _client_settings(params.initialization_options)
    )
    ls.folders = _folders(params)


async def initialized(ls: DiffgemmaServer, params: types.InitializedParams) -> None:
    if ls.pending_problems:
        ls.tell_once("invalid settings, using defaults for: " + "; ".join(ls.pending_problems))
    if ls.supports_configuration():
        try:
            section = await asyncio.wait_for(ls.client_configuration(), timeout=5)
            if section is not None:
                ls.settings, problems = merge_client_settings(ls.settings, section)
                if problems:
                    ls.tell_once("invalid settings, using defaults for: " + "; ".join(problems))
        except Exception:
            log.warning("workspace/configuration failed; keeping initialization settings", exc_info=True)
    ls.service.serve(Serving(ls.settings))
    ls.start_model_load()
    if ls.settings.workspace_context and ls.folders:
        workspace = Workspace(ls.folders, ls.settings.workspace_max_files)
        await asyncio.get_running_loop().run_in_executor(None, workspace.scan)  # not the model's thread
        for uri in ls.documents.uris():  # what the editor holds is newer than the disk
            workspace.update(unquote(urlparse(uri).path), ls.documents.get(uri).text)
        ls.service.workspace = workspace
        log.info("workspace: %d source files from %d folder(s)", len(workspace), len(ls.folders))
        await _watch_files(ls)


async def _watch_files(ls: DiffgemmaServer) -> None:
    """Ask the client to report changes to source files on disk (a checkout, a generator, another tool)."""
    caps = ls.protocol.client_capabilities.workspace
    watched = caps.did_change_watched_files if caps else None
    if not (watched and watched.dynamic_registration):
        return
    pattern = "**/*.{" + ",".join(sorted(ext.lstrip(".") for ext in LANGUAGE_BY_EXTENSION)) + "}"
    options = types.DidChangeWatchedFilesRegistrationOptions(
        watchers=[types.FileSystemWatcher(glob_pattern=pattern)]
    )
    registration = types.Registration("diffgemma-watch", types.WORKSPACE_DID_CHANGE_WATCHED_FILES, options)
    try:
        await ls.client_register_capability_async(types.RegistrationParams([registration]))
    except Exception:  # the client cannot watch: the editor's own copies still keep the index current
        log.warning("the client did not register the file watcher", exc_info=True)


async def did_change_watched_files(ls: DiffgemmaServer, params: types.DidChangeWatchedFilesParams) -> None:
    """Files changed on disk: read them off the event loop, then update the index on it."""
    workspace = ls.service.workspace
    if workspace is None:
        return
    uris = [c.uri for c in params.changes if c.uri.startswith("file://") and c.uri not in ls.documents]
    paths = [unquote(urlparse(uri).path) for uri in uris]
    texts = await asyncio.get_running_loop().run_in_executor(None, workspace.read_all, paths)
    for uri, path, text in zip(uris, paths, texts, strict=True):
        if uri not in ls.documents:  # the editor's copy wins, also when it was opened meanwhile
            workspace.reload(path, text)


async def did_change_configuration(ls: DiffgemmaServer, params: types.DidChangeConfigurationParams) -> None:
    section = _client_settings(params.settings)
    if section is None and ls.supports_configuration():
        section = await ls.client_configuration()
    if section is not None:
        ls.apply_client_settings(section)


def did_open(ls: DiffgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
    doc = params.text_document
    ls.documents.open(doc.uri, valid_text(doc.text), doc.language_id, doc.version)
    _index(ls, doc.uri)


def did_save(ls: DiffgemmaServer, params: types.DidSaveTextDocumentParams) -> None:
    _index(ls, params.text_document.uri)


def _index(ls: DiffgemmaServer, uri: str) -> None:
    """The workspace's copy of an opened or saved document: not on every keystroke."""
    if ls.service.workspace is not None and uri.startswith("file://") and uri in ls.documents:
        ls.service.workspace.update(unquote(urlparse(uri).path), ls.documents.get(uri).text)


def did_change(ls: DiffgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
    changes = []
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            r = change.range
            span = ((r.start.line, r.start.character), (r.end.line, r.end.character))
            changes.append((span, valid_text(change.text)))
        else:
            changes.append((None, valid_text(change.text)))
    try:
        ls.documents.change(params.text_document.uri, params.text_document.version, changes)
    except UnknownDocument:
        log.warning("didChange for a document that is not open: %s", params.text_document.uri)
        return
    ls.pace.edited(time.monotonic())
    ls.service.prefetch_after_accept(params.text_document.uri)


def did_close(ls: DiffgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.service.forget(uri)
    with contextlib.suppress(UnknownDocument):
        ls.documents.close(uri)


async def inline_completion(
    ls: DiffgemmaServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    answers = await _answers(ls, params.text_document.uri, params.position, invoked)
    return types.InlineCompletionList(
        items=[types.InlineCompletionItem(insert_text=text, range=replace) for text, replace in answers]
    )


async def plain_completion(ls: DiffgemmaServer, params: types.CompletionParams) -> types.CompletionList:
    invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
    answers = await _answers(ls, params.text_document.uri, params.position, invoked)
    items = [
        types.CompletionItem(
            label=(text.strip().splitlines() or [text])[0][:60],
            kind=types.CompletionItemKind.Snippet,
            detail="DiffusionGemma",
            text_edit=types.TextEdit(range=replace, new_text=text),
            insert_text_format=types.InsertTextFormat.PlainText,
            sort_text=f"{rank:02d}",  # the model's order, not the label's
        )
        for rank, (text, replace) in enumerate(answers)
    ]
    return types.CompletionList(is_incomplete=True, items=items)


def code_action(ls: DiffgemmaServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    """Offered on every cursor move, so it only looks (tree-sitter); resolve runs the model."""
    uri = params.text_document.uri
    if uri not in ls.documents:
        return []
    doc = ls.documents.get(uri)
    if not ls.service.serving.enabled(doc.language_id):
        return []
    start = doc.offset_at(params.range.start.line, params.range.start.character)
    end = doc.offset_at(params.range.end.line, params.range.end.character)
    if start == end:
        span = fill_target(doc.text, start, doc.language_id, uri)
        if span is None:
            return []
        start, end = span
    data = {"uri": uri, "start": start, "end": end, "version": doc.version}
    return [types.CodeAction(title=FILL_TITLE, kind=types.CodeActionKind.RefactorRewrite, data=data)]


async def _fill_edit(ls: DiffgemmaServer, uri: str, start: int, end: int) -> types.WorkspaceEdit | None:
    """The fill's edit, or ``None`` after telling the user why nothing changes (the user asked for it)."""
    try:
        filled, why = await ls.service.fill(uri, start, end)
    except Superseded as exc:
        raise JsonRpcRequestCancelled(str(exc)) from None
    if filled is None:
        message = f"diffgemma-ls: the fill changes nothing: {why}"
        ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Info, message=message))
        return None
    start, end, text = filled
    return types.WorkspaceEdit(
        changes={uri: [types.TextEdit(range=_range(ls, uri, start, end), new_text=text)]}
    )


async def resolve_code_action(ls: DiffgemmaServer, action: types.CodeAction) -> types.CodeAction:
    data = action.data if isinstance(action.data, dict) else {}
    uri, start, end = data.get("uri"), data.get("start"), data.get("end")
    current = (
        isinstance(uri, str) and uri in ls.documents and ls.documents.get(uri).version == data.get("version")
    )
    if current and isinstance(start, int) and isinstance(end, int):
        action.edit = await _fill_edit(ls, uri, start, end)
    return action


async def fill_command(ls: DiffgemmaServer, uri: str, rng: types.Range) -> dict[str, bool]:
    """``diffgemma.fill(uri, range)``: fill the range and apply the edit through the client.

    An empty range fills the empty body or TODO line at that position, as the code action does.
    """
    if uri not in ls.documents:
        raise JsonRpcInvalidParams(f"diffgemma.fill: {uri} is not open")
    doc = ls.documents.get(uri)
    start = doc.offset_at(rng.start.line, rng.start.character)
    end = doc.offset_at(rng.end.line, rng.end.character)
    if start == end and (span := fill_target(doc.text, start, doc.language_id, uri)) is not None:
        start, end = span
    edit = await _fill_edit(ls, uri, start, end)
    if edit is None:
        return {"applied": False}
    result = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=FILL_TITLE))
    return {"applied": bool(result and result.applied)}


def debug_state(ls: DiffgemmaServer, params: Any) -> dict[str, Any]:
    uri = params.get("uri") if isinstance(params, dict) else getattr(params, "uri", None)
    return ls.debug_state(uri)


def shutdown(ls: DiffgemmaServer, *_: Any) -> None:
    ls.scheduler.shutdown()


FEATURES: tuple[tuple[str, Any, Any], ...] = (
    (types.INITIALIZE, None, initialize),
    (types.INITIALIZED, None, initialized),
    (types.WORKSPACE_DID_CHANGE_CONFIGURATION, None, did_change_configuration),
    (types.TEXT_DOCUMENT_DID_OPEN, None, did_open),
    (types.TEXT_DOCUMENT_DID_CHANGE, None, did_change),
    (types.TEXT_DOCUMENT_DID_CLOSE, None, did_close),
    (types.TEXT_DOCUMENT_DID_SAVE, None, did_save),
    (types.WORKSPACE_DID_CHANGE_WATCHED_FILES, None, did_change_watched_files),
    (types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(), inline_completion),
    (
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(
            code_action_kinds=[types.CodeActionKind.RefactorRewrite], resolve_provider=True
        ),
        code_action,
    ),
    (types.CODE_ACTION_RESOLVE, None, resolve_code_action),
    (DEBUG_STATE_REQUEST, None, debug_state),
    (types.SHUTDOWN, None, shutdown),
)


def create_server(settings: Settings) -> DiffgemmaServer:
    server = DiffgemmaServer(settings)
    for method, options, handler in FEATURES:
        server.feature(method, options)(handler)
    server.command(FILL_COMMAND)(fill_command)
    return server
