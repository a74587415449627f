"""pygls' protocol with the answers the JSON-RPC and LSP specs ask for where pygls sends none.

Its own module because it reaches into pygls internals (the reader's stdin, ``structure_message``,
``_execute_handler``, the document handlers): what to re-check on a pygls upgrade is all here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import attrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import JsonRPCProtocol, LanguageServerProtocol, lsp_method

log = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")


# Larger than any document an editor sends in one message; a bigger Content-Length is a broken header,
# not a message to wait for (pygls would try to allocate it and die with MemoryError).
MAX_MESSAGE_BYTES = 256 << 20
_CONTENT_LENGTH = b"Content-Length:"


class ResyncingStdin:
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


def _is_notification(message_type: Any) -> bool:
    """An LSP message type that carries no id (``DidCloseTextDocumentNotification`` and the like)."""
    return attrs.has(message_type) and "id" not in attrs.fields_dict(message_type)


def _valid_id(msg_id: Any) -> bool:
    return isinstance(msg_id, str) or (isinstance(msg_id, int) and not isinstance(msg_id, bool))


class Protocol(LanguageServerProtocol):
    """pygls' protocol plus the answers the JSON-RPC and LSP specs ask for where pygls sends none.

    pygls drops, without a response, a request whose params do not fit their type, any request
    after ``shutdown``, a request named like a notification (``didClose`` with an id), and anything
    that is not a JSON-RPC 2.0 object; a client waits forever for those. Here they get -32602,
    -32600, -32601 and -32600; requests before ``initialize`` get -32002.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._initialize_seen = False

    def structure_message(self, data: dict[str, Any]) -> Any:
        method = data.get("method") if isinstance(data, dict) else None
        if "id" in data and isinstance(method, str) and _is_notification(self.get_message_type(method)):
            # pygls would structure it as the notification, drop the id, and never answer
            msg_id = data["id"] if _valid_id(data["id"]) else None
            return _BadMessage(msg_id, -32601, f"{method} is a notification, not a request")
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

    @property
    def pending_futures(self) -> int:
        """Handler futures not yet done (a leak shows here): for ``diffgemma/debugState``."""
        return len(self._request_futures)

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


def valid_text(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (JSON can carry ``"\\ud800"``) replaced by U+FFFD.

    No tokenizer encodes a lone surrogate: the completion request crashed in the model's tokenizer.
    U+FFFD has a lone surrogate's width in UTF-8, UTF-16 and UTF-32 alike, so positions stay in step
    with the client's copy. Only incoming text is scanned: an edit costs its own length, not the file's.
    """
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)
