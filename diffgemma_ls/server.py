"""LSP glue: thin handlers that move data between the protocol and the completion pipeline.

Threading model: the event loop owns the protocol, the documents and all state; the model lives on
one worker thread (``_model_thread``) that loads it and runs every denoising request in order, so a
request never blocks the loop. Each in-flight request has a ``threading.Event`` that the engine polls
between denoising steps: ``$/cancelRequest`` or a newer request for the same document sets it.

``diffgemma/debugState`` (a custom request) answers the sizes of that state - open documents, requests
in flight, pending handler futures, cache entries, queued model jobs, work counters (the engine's
forward passes and cache reuse, cancelled requests included; typing-ahead hits) - and, given ``{"uri": ...}``,
the SHA-256 of the server's copy of that document: what a bug report or a test needs to tell a leak
or a desynchronized document, without any document contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lsprotocol import types
from pygls.exceptions import (
    FeatureRequestError,
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
)
from pygls.lsp.server import LanguageServer
from pygls.protocol import JsonRPCProtocol, LanguageServerProtocol, lsp_method

from diffgemma_ls import __version__
from diffgemma_ls.completion import (
    CompletionRequest,
    Outcome,
    choose_fill,
    load_engine,
    plan,
    plan_fill,
    run,
)
from diffgemma_ls.config import SECTION, Settings, merge_client_settings
from diffgemma_ls.documents import DocumentStore, UnknownDocument, units
from diffgemma_ls.engine.infill import Cancelled, Engine
from diffgemma_ls.engine.loader import ModelLoadError
from diffgemma_ls.engine.quantize import describe_model
from diffgemma_ls.fill import fill_target, trim_selection
from diffgemma_ls.languages import served_languages
from diffgemma_ls.pace import TypingPace
from diffgemma_ls.postprocess import Completion
from diffgemma_ls.typeahead import TypeAhead

log = logging.getLogger(__name__)

STATUS_NOTIFICATION = "diffgemma/status"
FILL_TITLE = "Fill with DiffusionGemma"
FILL_COMMAND = "diffgemma.fill"
FILL_KEY = "#fill"  # in-flight key suffix: a fill and an inline completion of one document coexist
PREFETCH_KEY = "#prefetch"  # likewise a prefetch: a request for another state cancels it explicitly
FILL_BUDGET_FACTOR = 5  # a fill may take several canvases: this many latency budgets
DEBUG_STATE_REQUEST = "diffgemma/debugState"
_SURROGATE = re.compile("[\ud800-\udfff]")
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
    last_latency_ms: float | None = None
    engine: Engine | None = None
    languages: tuple[str, ...] = ()


# Larger than any document an editor sends in one message; a bigger Content-Length is a broken header,
# not a message to wait for (pygls would try to allocate it and die with MemoryError).
MAX_MESSAGE_BYTES = 256 << 20
_CONTENT_LENGTH = b"Content-Length:"


class _ResyncingStdin:
    """stdin for pygls' reader: finds the next header after a body that was shorter than announced.

    pygls reads headers a line at a time and only takes a line that *is* a ``Content-Length`` header.
    The unread rest of a short body has no line break, so it glues onto the next header line and the
    next, valid, message would be lost as well. A header with an absurd length is dropped likewise.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readline(self) -> bytes:
        line = self._stream.readline()
        at = line.find(_CONTENT_LENGTH)
        if at > 0:
            log.warning("skipped %d bytes of junk before a message header", at)
            line = line[at:]
        if at >= 0:
            length = line[len(_CONTENT_LENGTH) :].strip()
            if length.isdigit() and int(length) > MAX_MESSAGE_BYTES:
                log.warning("ignored a message header announcing %s bytes", length.decode())
                return b"\r\n"
        return line

    def read(self, n: int) -> bytes:
        return self._stream.read(n)


@dataclass(frozen=True)
class _BadMessage:
    """A message that cannot be handled, and the error its sender gets (``msg_id`` None: id null)."""

    msg_id: int | str | None
    code: int
    message: str


def _valid_id(msg_id: Any) -> bool:
    return isinstance(msg_id, str) or (isinstance(msg_id, int) and not isinstance(msg_id, bool))


class _Protocol(LanguageServerProtocol):
    """pygls' protocol plus the answers the JSON-RPC and LSP specs ask for where pygls sends none.

    pygls drops, without a response, a request whose params do not fit their type, any request
    after ``shutdown``, and anything that is not a JSON-RPC 2.0 object; a client waits forever for
    those. Here they get -32602, -32600 and -32600; requests before ``initialize`` get -32002.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._initialize_seen = False

    def structure_message(self, data: dict[str, Any]) -> Any:
        if "method" in data and "params" not in data and self.get_message_type(data["method"]) is None:
            data = {**data, "params": None}  # params are optional in JSON-RPC; pygls' generic types need one
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "method" not in data or "id" not in data:
                raise  # a notification or response: nobody waits for an answer
            if not _valid_id(data["id"]) or not isinstance(data["method"], str):
                return _BadMessage(data["id"] if _valid_id(data["id"]) else None, -32600, "invalid request")
            return _BadMessage(data["id"], -32602, f"invalid params for {data['method']}: {exc.message}")

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _BadMessage):
            self._refuse(message)
            return
        method = getattr(message, "method", None)
        msg_id = getattr(message, "id", None)
        if getattr(message, "jsonrpc", None) != JsonRPCProtocol.VERSION or not isinstance(method, str | None):
            if isinstance(message, dict | list | str | int | float | bool | None) or method is not None:
                raw_id = message.get("id") if isinstance(message, dict) else msg_id
                self._refuse(_BadMessage(raw_id if _valid_id(raw_id) else None, -32600, "invalid request"))
            return
        if method is not None and msg_id is not None:  # a request
            if not self._initialize_seen and method != types.INITIALIZE:
                self._refuse(_BadMessage(msg_id, -32002, "server not initialized"))
                return
            if self._shutdown:
                self._refuse(_BadMessage(msg_id, -32600, "the server is shutting down"))
                return
            self._initialize_seen = True
        elif method is not None and not self._initialize_seen and method != types.EXIT:
            log.warning("notification %r before initialize: dropped", method)
            return
        super().handle_message(message)

    def _execute_handler(
        self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None
    ) -> None:
        """Forget each handler's future once done: pygls only does that for requests it answers.

        Every notification (each keystroke's ``didChange``) left its future in ``_request_futures``
        for the life of the process.
        """

        def done(future: Any) -> None:
            if self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]
            callback(future)

        super()._execute_handler(msg_id, handler, done, args, kwargs)

    def _refuse(self, bad: _BadMessage) -> None:
        log.warning("refused a message: %d %s", bad.code, bad.message)
        self._send_response(bad.msg_id, error=types.ResponseError(code=bad.code, message=bad.message))

    # The server keeps its own documents (``DocumentStore``). pygls' copy doubled the memory of every
    # open file, re-split the whole text on every keystroke, and raised on a change to an unopened
    # document before our handler could ignore it, so these no longer feed it.

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Iterator[Any]:
        yield self.fm.features[types.TEXT_DOCUMENT_DID_OPEN], (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Iterator[Any]:
        yield self.fm.features[types.TEXT_DOCUMENT_DID_CHANGE], (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Iterator[Any]:
        yield self.fm.features[types.TEXT_DOCUMENT_DID_CLOSE], (params,), None


class DiffgemmaServer(LanguageServer):
    def __init__(self, settings: Settings):
        super().__init__("diffgemma-ls", __version__, protocol_cls=_Protocol)
        self.base_settings = settings
        self.settings = settings
        self.documents = DocumentStore()
        self.typeahead = TypeAhead()
        self.pace = TypingPace()
        self.stats: Counter[str] = Counter()  # cache hits, for diffgemma/debugState and the keystroke bench
        self.model_state = ModelState(model=settings.model or "default")
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffgemma-model")
        self._inflight: dict[str, threading.Event] = {}
        # per document: (text, cursor offset, task) of the prefetch running after an accept
        self._prefetches: dict[str, tuple[str, int, asyncio.Task]] = {}
        self._load_generation = 0
        self._reported_errors: set[str] = set()
        self._pending_problems: list[str] = []
        self._load_task: asyncio.Future | None = None
        self.client_has_inline_completion = True

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        super().start_io(_ResyncingStdin(stdin or sys.stdin.buffer), stdout)

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
        params: dict[str, Any] = {"state": s.state, "model": s.model, "lastLatencyMs": s.last_latency_ms}
        if s.message:
            params["message"] = s.message
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
        if new.model_key != old.model_key:
            self.start_model_load()

    def start_model_load(self) -> None:
        self._load_generation += 1
        for event in self._inflight.values():
            event.set()
        self._load_task = asyncio.ensure_future(self._load_model(self._load_generation))

    async def _load_model(self, generation: int) -> None:
        settings = self.settings
        name = settings.model or "default"
        self.model_state = ModelState(state="loading", model=name)
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
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(self._model_thread, load_engine, settings)
            if progress:
                self.work_done_progress.report(token, types.WorkDoneProgressReport(message="warming up"))
            await loop.run_in_executor(self._model_thread, engine.warm_up)
        except ModelLoadError as exc:
            if generation == self._load_generation:
                self.model_state = ModelState(state="error", model=name, message=str(exc))
                self.tell_once(str(exc))
        else:
            if generation == self._load_generation:
                report = describe_model(engine.model)
                general = not getattr(engine.model.config, "code_languages", None)
                languages = served_languages(getattr(engine.model.config, "code_languages", None))
                self.model_state = ModelState(state="ready", model=name, engine=engine, languages=languages)
                self.typeahead = TypeAhead()  # what the old model showed is no answer of the new one
                defaults = engine.defaults
                log.info(
                    "serving %s on %s: %s, quantization %s, %.1f MB resident, "
                    "%.0f%% of text weights quantized, noise %s, prompt %s, canvas %d, steps %d "
                    "(as you type %d), languages: %s",
                    engine.loaded.path,
                    engine.loaded.device,
                    ", ".join(f"{k} {v:,}" for k, v in report.params_by_dtype.items()),
                    engine.loaded.quantization,
                    report.footprint_bytes / 1e6,
                    100 * report.quantized_fraction,
                    engine.model.noise_kind,
                    engine.layout.format,
                    self.settings.canvas_length or defaults.canvas_length,
                    self.settings.max_steps or defaults.max_steps,
                    self.settings.typing_max_steps or defaults.typing_max_steps,
                    ", ".join(languages)
                    + (" (a general model: every language with an installed grammar)" if general else ""),
                )
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=self.model_state.state))
        if generation == self._load_generation:
            self.send_status()

    def _client_supports_progress(self) -> bool:
        window = self.client_capabilities.window
        return bool(window and window.work_done_progress)

    @property
    def client_capabilities(self) -> types.ClientCapabilities:
        return self.protocol.client_capabilities

    # -- completion -----------------------------------------------------------------------------

    def language_enabled(self, language_id: str) -> bool:
        return language_id in self.model_state.languages or language_id in self.settings.languages

    async def complete(
        self, uri: str, position: types.Position, invoked: bool
    ) -> list[tuple[str, types.Range]]:
        """The shared body of inline and plain completion: texts to insert and the ranges they replace.

        Best first; an explicit (``invoked``) request also gets the alternatives of one batched run.
        """
        started = time.monotonic()
        state = self.model_state
        if state.state != "ready" or state.engine is None:
            return []
        try:
            doc = self.documents.get(uri)
        except UnknownDocument:
            return []
        if not self.language_enabled(doc.language_id):
            return []
        text = doc.text  # the snapshot this request answers for, whatever edits arrive meanwhile
        offset = doc.offset_at(position.line, position.character)
        if (prefetch := self._prefetch_for(uri, text, offset)) is not None:
            await asyncio.wait({prefetch})  # the model is already computing this very answer
        ahead = self.typeahead.lookup(uri, text, offset) if self.settings.typeahead else None
        if ahead is not None:
            self.stats["prefetchHits" if ahead.prefetched else "typeaheadHits"] += 1
            log.info(
                "completion from the %s, no model call",
                "prefetch" if ahead.prefetched else "typing-ahead cache",
            )
            return [self._answer(ahead.completion, text, offset, position)]
        candidates = self.settings.candidates if invoked else 1
        request = plan(
            text, offset, doc.language_id, self.settings, state.engine, invoked=invoked, candidates=candidates
        )
        if request is None:
            return []
        delay_ms = self.pace.delay_ms() if self.settings.debounce_ms == "auto" else self.settings.debounce_ms
        context = request.context
        if not invoked and delay_ms > 0 and not state.engine.continues(uri, context.prefix, context.suffix):
            await self._debounce(uri, doc.version, delay_ms)
        outcome = await self._run_model(uri, request, started + self.settings.latency_budget_ms / 1000)
        if outcome is None:
            return []
        self.model_state.last_latency_ms = round((time.monotonic() - started) * 1000, 1)
        self.send_status()
        if outcome.completion is None:
            return []
        self.typeahead.remember(uri, text, offset, outcome.completion)
        shown = [outcome.completion, *outcome.alternatives]
        return [self._answer(completion, text, offset, position) for completion in shown]

    def prefetch_after_accept(self, uri: str) -> None:
        """After a change that accepted the shown completion, compute the next one right away.

        The editor asks at the new cursor as soon as the accepted text is in; by then the answer is
        on its way or done (llama.vim's speculative next request). Any other change cancels it.
        """
        if (pending := self._prefetches.pop(uri, None)) is not None:
            pending[2].cancel()
        state = self.model_state
        if not (self.settings.prefetch and self.settings.typeahead) or state.engine is None:
            return
        doc = self.documents.get(uri)
        offset = self.typeahead.accepted_at(uri, doc.text)
        if offset is None or not self.language_enabled(doc.language_id):
            return
        self.typeahead.forget(uri)
        request = plan(doc.text, offset, doc.language_id, self.settings, state.engine)
        if request is None:
            return
        self.stats["prefetches"] += 1
        task = asyncio.ensure_future(self._prefetch(uri, doc.text, offset, request))
        self._prefetches[uri] = (doc.text, offset, task)

    async def _prefetch(self, uri: str, text: str, offset: int, request: CompletionRequest) -> None:
        deadline = time.monotonic() + self.settings.latency_budget_ms / 1000
        try:
            outcome = await self._run_model(uri + PREFETCH_KEY, request, deadline)
        except JsonRpcRequestCancelled:
            return
        finally:
            if (pending := self._prefetches.get(uri)) is not None and pending[2] is asyncio.current_task():
                del self._prefetches[uri]
        if outcome is not None and outcome.completion is not None:
            self.typeahead.remember(uri, text, offset, outcome.completion, prefetched=True)

    def _prefetch_for(self, uri: str, text: str, offset: int) -> asyncio.Future | None:
        """The running prefetch for exactly this document state, if any."""
        pending = self._prefetches.get(uri)
        if pending is None or pending[0] != text or pending[1] != offset:
            return None
        return pending[2]

    async def _debounce(self, uri: str, version: int, delay_ms: float) -> None:
        """Wait ``delay_ms``; raise RequestCancelled if the document changed meanwhile.

        While someone types faster than a completion takes, every model run would be cancelled by the
        next keystroke after doing some passes: waiting first drops those runs before any work.
        """
        await asyncio.sleep(delay_ms / 1000)
        if uri not in self.documents or self.documents.get(uri).version != version:
            self.stats["debounced"] += 1
            raise JsonRpcRequestCancelled("superseded by a keystroke while debouncing")

    async def _run_model(self, key: str, request: CompletionRequest, deadline: float) -> Outcome | None:
        """Run one request on the model thread; a newer one with the same key supersedes it.

        Raises RequestCancelled when superseded or cancelled; ``None`` when the run crashed (the
        user is told once).
        """
        previous = self._inflight.get(key)
        if previous is not None:
            previous.set()
        cancel = threading.Event()
        self._inflight[key] = cancel
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(
                self._model_thread, _run_request, self.model_state.engine, request, deadline, cancel, key
            )
        except asyncio.CancelledError:
            cancel.set()
            raise
        except Cancelled:
            raise JsonRpcRequestCancelled("superseded by a newer request or cancelled") from None
        except Exception as exc:  # a crash inside one denoising run fails that request only
            log.exception("completion failed")
            self.tell_once(f"completion failed: {type(exc).__name__}: {exc}", key=type(exc).__name__)
            return None
        finally:
            if self._inflight.get(key) is cancel:
                del self._inflight[key]
        log.info("%s %s", "fill" if key.endswith(FILL_KEY) else "completion", outcome.timing_line())
        return outcome

    async def fill(self, uri: str, start: int, end: int) -> types.WorkspaceEdit | None:
        """Regenerate ``[start, end)`` of a document; ``None`` when nothing useful came (no change)."""
        state = self.model_state
        if state.state != "ready" or state.engine is None or uri not in self.documents:
            return None
        doc = self.documents.get(uri)
        if not self.language_enabled(doc.language_id):
            return None
        text, version = doc.text, doc.version
        start, end = trim_selection(text, start, end)
        settings = self.settings
        request = plan_fill(
            text, start, end, doc.language_id, settings, state.engine, uri=uri, candidates=settings.candidates
        )
        budget = FILL_BUDGET_FACTOR * self.settings.latency_budget_ms / 1000
        outcome = await self._run_model(uri + FILL_KEY, request, time.monotonic() + budget)
        if outcome is None:
            return None
        chosen = choose_fill(outcome, text, start, end, doc.language_id, uri)
        if chosen is None:
            log.info("fill of %s discarded: no candidate changes the region and parses", uri)
            return None
        if uri not in self.documents or self.documents.get(uri).version != version:
            return None  # edited meanwhile: the range no longer means what it meant
        edit_range = types.Range(
            types.Position(*doc.position_at(start)), types.Position(*doc.position_at(end))
        )
        return types.WorkspaceEdit(changes={uri: [types.TextEdit(range=edit_range, new_text=chosen.text)]})

    def _answer(
        self, completion: Completion, text: str, offset: int, position: types.Position
    ) -> tuple[str, types.Range]:
        """The insert text and the range it replaces: the closing characters after the cursor, if any."""
        replaced = text[offset : offset + completion.replace_end]  # on the cursor line (closers)
        end = types.Position(position.line, position.character + units(replaced, self.documents.encoding))
        return completion.text, types.Range(start=position, end=end)


def _run_request(
    engine: Engine, request: CompletionRequest, deadline: float, cancel: threading.Event, uri: str
):
    return run(engine, request, deadline=deadline, cancelled=cancel.is_set, cache_key=uri)


def _valid_text(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (JSON can carry ``"\\ud800"``) replaced by U+FFFD.

    No tokenizer encodes a lone surrogate: the completion request crashed in the model's tokenizer.
    U+FFFD has a lone surrogate's width in UTF-8, UTF-16 and UTF-32 alike, so positions stay in step
    with the client's copy. Only incoming text is scanned: an edit costs its own length, not the file's.
    """
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _client_settings(options: Any) -> Any:
    """initializationOptions may be the section itself or ``{"diffgemma": {...}}``."""
    if isinstance(options, dict) and SECTION in options:
        return options[SECTION]
    return options


def create_server(settings: Settings) -> DiffgemmaServer:
    server = DiffgemmaServer(settings)

    @server.feature(types.INITIALIZE)
    def initialize(ls: DiffgemmaServer, params: types.InitializeParams) -> None:
        ls.documents = DocumentStore(_ENCODINGS.get(ls.workspace.position_encoding, "utf-16"))
        text_caps = params.capabilities.text_document
        ls.client_has_inline_completion = bool(text_caps and text_caps.inline_completion)
        if not ls.client_has_inline_completion:
            # only for clients without inline completion, so no client runs the model twice a keystroke
            ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(plain_completion)
        new, problems = merge_client_settings(
            ls.base_settings, _client_settings(params.initialization_options)
        )
        ls.settings = new
        if problems:
            ls._pending_problems = problems

    @server.feature(types.INITIALIZED)
    async def initialized(ls: DiffgemmaServer, params: types.InitializedParams) -> None:
        if ls._pending_problems:
            ls.tell_once("invalid settings, using defaults for: " + "; ".join(ls._pending_problems))
        if _supports_configuration(ls):
            try:
                result = await asyncio.wait_for(
                    ls.workspace_configuration_async(
                        types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
                    ),
                    timeout=5,
                )
                if result and result[0] is not None:
                    new, problems = merge_client_settings(ls.settings, result[0])
                    ls.settings = new
                    if problems:
                        ls.tell_once("invalid settings, using defaults for: " + "; ".join(problems))
            except Exception:
                log.warning("workspace/configuration failed; keeping initialization settings", exc_info=True)
        ls.start_model_load()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: DiffgemmaServer, params: types.DidChangeConfigurationParams):
        section = _client_settings(params.settings)
        if section is None and _supports_configuration(ls):
            result = await ls.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
            )
            section = result[0] if result else None
        if section is not None:
            ls.apply_client_settings(section)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DiffgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        ls.documents.open(doc.uri, _valid_text(doc.text), doc.language_id, doc.version)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DiffgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
        changes = []
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                changes.append(
                    (
                        ((r.start.line, r.start.character), (r.end.line, r.end.character)),
                        _valid_text(change.text),
                    )
                )
            else:
                changes.append((None, _valid_text(change.text)))
        try:
            ls.documents.change(params.text_document.uri, params.text_document.version, changes)
        except UnknownDocument:
            log.warning("didChange for a document that is not open: %s", params.text_document.uri)
            return
        ls.pace.edited(time.monotonic())
        ls.prefetch_after_accept(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DiffgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        if (event := ls._inflight.pop(uri, None)) is not None:
            event.set()
        if (engine := ls.model_state.engine) is not None:
            # on the model thread: forget() waits for the engine, the event loop must not
            ls._model_thread.submit(engine.forget, uri)
        ls.typeahead.forget(uri)
        if (pending := ls._prefetches.pop(uri, None)) is not None:
            pending[2].cancel()
        with contextlib.suppress(UnknownDocument):
            ls.documents.close(uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: DiffgemmaServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        answers = await ls.complete(params.text_document.uri, params.position, invoked)
        items = [types.InlineCompletionItem(insert_text=text, range=replace) for text, replace in answers]
        return types.InlineCompletionList(items=items)

    async def plain_completion(ls: DiffgemmaServer, params: types.CompletionParams) -> types.CompletionList:
        invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
        answers = await ls.complete(params.text_document.uri, params.position, invoked)
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

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(
            code_action_kinds=[types.CodeActionKind.RefactorRewrite], resolve_provider=True
        ),
    )
    def code_action(ls: DiffgemmaServer, params: types.CodeActionParams) -> list[types.CodeAction]:
        """Offered on every cursor move, so it only looks (tree-sitter); resolve runs the model."""
        uri = params.text_document.uri
        if ls.model_state.state != "ready" or uri not in ls.documents:
            return []
        doc = ls.documents.get(uri)
        if not ls.language_enabled(doc.language_id):
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

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def resolve_code_action(ls: DiffgemmaServer, action: types.CodeAction) -> types.CodeAction:
        data = action.data if isinstance(action.data, dict) else {}
        uri = data.get("uri")
        if (
            isinstance(uri, str)
            and uri in ls.documents
            and ls.documents.get(uri).version == data.get("version")
            and isinstance(data.get("start"), int)
            and isinstance(data.get("end"), int)
        ):
            action.edit = await ls.fill(uri, data["start"], data["end"])
        return action

    @server.command(FILL_COMMAND)
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
        edit = await ls.fill(uri, start, end)
        if edit is None:
            return {"applied": False}
        result = await ls.workspace_apply_edit_async(
            types.ApplyWorkspaceEditParams(edit=edit, label=FILL_TITLE)
        )
        return {"applied": bool(result and result.applied)}

    @server.feature(DEBUG_STATE_REQUEST)
    def debug_state(ls: DiffgemmaServer, params: Any) -> dict[str, Any]:
        """Sizes of the server's state (see the module docstring); never document text."""
        engine = ls.model_state.engine
        state: dict[str, Any] = {
            "documents": len(ls.documents),
            "totalChars": ls.documents.total_chars,
            "inflight": len(ls._inflight),
            "pendingFutures": len(ls.protocol._request_futures),
            "typeahead": len(ls.typeahead),
            "prefetching": len(ls._prefetches),
            "promptCaches": len(engine._prompt_cache) if engine is not None else 0,
            "modelQueue": ls._model_thread._work_queue.qsize(),
            "autoDebounceMs": round(ls.pace.delay_ms()),
            **ls.stats,
            **(engine.totals if engine is not None else {}),
        }
        uri = params.get("uri") if isinstance(params, dict) else getattr(params, "uri", None)
        if isinstance(uri, str) and uri in ls.documents:
            text = ls.documents.get(uri).text
            state["textSha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return state

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: DiffgemmaServer, *_: Any) -> None:
        for event in ls._inflight.values():
            event.set()
        ls._model_thread.shutdown(wait=False, cancel_futures=True)

    return server


def _supports_configuration(ls: DiffgemmaServer) -> bool:
    workspace = ls.client_capabilities.workspace
    return bool(workspace and workspace.configuration)
