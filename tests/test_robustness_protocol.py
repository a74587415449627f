"""Protocol fuzzing over stdio: whatever bytes an editor (or a broken plugin) sends, the server answers
what the JSON-RPC and LSP specs ask for, and a valid request afterwards still works.

One server serves the whole module (each start imports torch): the fixture probes it before
``initialize``, and the module's last test shuts it down and probes it after ``shutdown``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_robustness_support import RawServer, ServerThread, encode, frame

URI = "file:///fuzz/main.py"
TEXT = "import os\n\n\ndef main():\n    path = \n    print(path)\n"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
SERVER_NOT_INITIALIZED, REQUEST_CANCELLED = -32002, -32800
# What a request may be answered with when its content is nonsense: never an internal error.
CLIENT_ERRORS = {PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, REQUEST_CANCELLED}
FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same messages every run: a failure is reproducible and the figures fixed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


BEFORE_INITIALIZE: dict[str, Any] = {}  # what the module's server answered before initialize


async def _before_initialize(server: RawServer) -> None:
    """Requests before ``initialize`` get -32002; notifications are dropped (``exit`` aside)."""
    BEFORE_INITIALIZE["inline"] = await server.inline(URI, 0, 0)
    BEFORE_INITIALIZE["shutdown"] = await server.request("shutdown")
    BEFORE_INITIALIZE["unknown"] = await server.request("textDocument/frobnicate", {})
    server.open(URI, "before = 1\n")
    await server.initialize()
    BEFORE_INITIALIZE["documents"] = (await server.debug_state())["documents"]


@pytest.fixture(scope="module")
def fuzz(constant_model_dir: Path) -> Iterator[ServerThread]:
    driver = ServerThread()
    server = driver.start("--model", str(constant_model_dir))
    driver.run(_before_initialize(server))
    driver.run(server.wait_for_state("ready", "error", timeout=120))
    driver.call(server.open, URI, TEXT)
    yield driver
    driver.stop()


def still_works(driver: ServerThread) -> None:
    """A valid completion request after the fault is answered with the model's completion."""
    server = driver.server
    assert server is not None
    answer = driver.run(server.inline(URI, 4, 11))
    assert answer["result"]["items"], answer


def error_code(answer: dict[str, Any]) -> int | None:
    return answer.get("error", {}).get("code")


# -- framing and JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc": "2.0", "id": 1, "method": "textDocument/inlineCompletion"',  # cut short
        b"{not json at all}",
        b"\xff\xfe\x00garbage",  # not UTF-8
        b'{"jsonrpc": "2.0", "id": 2, "method": "x", "params": {"a": "\xc3\x28"}}',  # invalid UTF-8
        b"",
    ],
    ids=["truncated", "not-json", "binary", "bad-utf8", "empty"],
)
def test_malformed_json_gets_parse_error(fuzz: ServerThread, body: bytes) -> None:
    server = fuzz.server
    assert server is not None
    before = len(server.null_id_errors)
    fuzz.call(server.send_bytes, frame(body))
    if body:  # an empty body is no message at all: the server just keeps reading
        errors = fuzz.run(server.wait_for(lambda: server.null_id_errors[before:]))
        assert [error_code(e) for e in errors] == [PARSE_ERROR]
    still_works(fuzz)


def test_too_short_content_length_loses_only_that_message(fuzz: ServerThread) -> None:
    """The rest of the short message is junk before the next header: the next request still works."""
    server = fuzz.server
    assert server is not None
    body = encode({"jsonrpc": "2.0", "id": "short", "method": "textDocument/inlineCompletion"})
    before = len(server.null_id_errors)
    fuzz.call(server.send_bytes, frame(body, len(body) - 7))
    still_works(fuzz)
    assert [error_code(e) for e in server.null_id_errors[before:]] == [PARSE_ERROR]
    assert "short" not in server.responses


def test_absurd_content_length_is_not_waited_for(fuzz: ServerThread) -> None:
    """A header announcing a terabyte: pygls tried to allocate it (MemoryError ended the server)."""
    server = fuzz.server
    assert server is not None
    body = encode({"jsonrpc": "2.0", "id": "huge", "method": "textDocument/inlineCompletion"})
    fuzz.call(server.send_bytes, frame(body, 10**12))
    still_works(fuzz)
    assert "huge" not in server.responses


def test_too_long_content_length_costs_one_more_message(fuzz: ServerThread) -> None:
    """The body swallows the next message's start: both are lost (-32700), the one after works."""
    server = fuzz.server
    assert server is not None
    before = len(server.null_id_errors)
    body = encode({"jsonrpc": "2.0", "method": "$/noop"})
    fuzz.call(
        server.send_bytes, frame(body, len(body) + 10) + frame(encode({"jsonrpc": "2.0", "method": "$/x"}))
    )
    still_works(fuzz)
    assert [error_code(e) for e in server.null_id_errors[before:]] == [PARSE_ERROR]


@pytest.mark.parametrize(
    "message",
    [
        {"id": 71, "method": "textDocument/inlineCompletion", "params": {}},  # no "jsonrpc"
        {"jsonrpc": "1.0", "id": 72, "method": "shutdown"},
        [{"jsonrpc": "2.0", "id": 74, "method": "shutdown"}],  # a batch: LSP has none
        42,
        {"jsonrpc": "2.0", "id": {"nested": 1}, "method": "textDocument/inlineCompletion"},
        {"jsonrpc": "2.0", "id": 75, "method": 12},
    ],
    ids=["no-jsonrpc", "jsonrpc-1.0", "batch", "number", "object-id", "numeric-method"],
)
def test_invalid_request_object(fuzz: ServerThread, message: Any) -> None:
    server = fuzz.server
    assert server is not None
    before = len(server.null_id_errors)
    fuzz.call(server.send_bytes, frame(json.dumps(message).encode()))
    msg_id = message.get("id") if isinstance(message, dict) else None
    if isinstance(msg_id, int):
        answer = fuzz.run(server.response(msg_id))
    else:
        answer = fuzz.run(server.wait_for(lambda: server.null_id_errors[before:]))[0]
    assert error_code(answer) == INVALID_REQUEST, answer
    still_works(fuzz)


# -- methods and params -------------------------------------------------------------------------


def test_unknown_methods(fuzz: ServerThread) -> None:
    server = fuzz.server
    assert server is not None
    shown = len(server.shown_messages())
    for method in ("textDocument/frobnicate", "$/unknownRequest", "", "diffgemma/nope"):
        assert error_code(fuzz.run(server.request(method, {}))) == METHOD_NOT_FOUND
    fuzz.call(server.notify, "textDocument/frobnicated", {"x": 1})
    fuzz.call(server.notify, "$/setTrace", {"value": "verbose"})
    fuzz.call(server.notify, "$/someExtension", None)
    still_works(fuzz)
    assert server.shown_messages()[shown:] == []  # notifications are ignored, silently


@pytest.mark.parametrize(
    "params",
    [
        {"textDocument": {"uri": URI}, "position": "4:11", "context": {"triggerKind": 1}},
        {
            "textDocument": {"uri": URI},
            "position": {"line": -1, "character": 0},
            "context": {"triggerKind": 1},
        },
        {"textDocument": {"uri": 7}, "position": {"line": 4, "character": 11}},
        {"textDocument": URI, "position": {"line": 4, "character": 11}, "context": {"triggerKind": 1}},
        {
            "textDocument": {"uri": URI},
            "position": {"line": 4, "character": 11},
            "context": {"triggerKind": 9},
        },
        [1, 2, 3],
        "params",
        None,
    ],
    ids=[
        "position-string",
        "negative-line",
        "uri-number",
        "document-string",
        "trigger-9",
        "list",
        "str",
        "none",
    ],
)
def test_wrong_param_types_get_invalid_params(fuzz: ServerThread, params: Any) -> None:
    server = fuzz.server
    assert server is not None
    answer = fuzz.run(server.request("textDocument/inlineCompletion", params))
    assert error_code(answer) == INVALID_PARAMS, answer
    still_works(fuzz)


def test_bad_notifications_are_ignored_without_a_message_per_keystroke(fuzz: ServerThread) -> None:
    """Notifications get no answer (the spec); bad ones must not pop up an error per keystroke."""
    server = fuzz.server
    assert server is not None
    shown = len(server.shown_messages())
    unopened = "file:///fuzz/never-opened.py"
    for version in range(2, 7):
        change = {
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
            "text": "x",
        }
        fuzz.call(
            server.notify,
            "textDocument/didChange",
            {"textDocument": {"uri": unopened, "version": version}, "contentChanges": [change]},
        )
        fuzz.call(server.notify, "textDocument/didClose", {"textDocument": {"uri": unopened}})
        fuzz.call(server.notify, "textDocument/didOpen", {"textDocument": {"uri": 5, "text": None}})
        fuzz.call(server.notify, "textDocument/didChange", {"textDocument": "nope", "contentChanges": 3})
    answer = fuzz.run(server.inline(unopened, 0, 0))
    assert answer["result"]["items"] == []
    still_works(fuzz)
    assert len(server.shown_messages()[shown:]) <= 1, server.shown_messages()[shown:]


def test_a_notification_sent_as_a_request_is_answered(fuzz: ServerThread) -> None:
    """``didClose`` with an id: pygls would take it as the notification and never answer."""
    server = fuzz.server
    assert server is not None
    for msg_id, method in [("as-request-1", "textDocument/didClose"), (10**13, "textDocument/didChange")]:
        params = {"textDocument": {"uri": "file:///fuzz/other.py"}}
        fuzz.call(server.send, {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        assert error_code(fuzz.run(server.response(msg_id))) == METHOD_NOT_FOUND
    still_works(fuzz)


def test_positions_past_the_end(fuzz: ServerThread) -> None:
    server = fuzz.server
    assert server is not None
    for line, character in [(4, 10_000), (10_000, 0), (2**31 - 1, 2**31 - 1), (0, 0), (5, 2**31 - 1)]:
        answer = fuzz.run(server.inline(URI, line, character))
        assert "result" in answer, answer
    still_works(fuzz)


@pytest.mark.parametrize(
    "text",
    [
        "x = '\ud800'\ny = \n",  # a lone high surrogate (JSON "\\ud800")
        "x = '\udfff\ud83d'\ny = \n",  # a lone low one, then an unpaired high one
        "x = '\x00\x00'\ny = \x00\n",  # NUL bytes
        "\ud83d\ude00 = 1\ny = \n",  # a valid pair, for contrast
    ],
    ids=["lone-high", "lone-low-high", "nul", "valid-pair"],
)
def test_invalid_utf16_and_nul_in_documents(fuzz: ServerThread, text: str) -> None:
    server = fuzz.server
    assert server is not None
    uri = "file:///fuzz/odd-" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8] + ".py"
    fuzz.call(server.open, uri, text)
    for line, character in [(1, 4), (0, 5), (0, 6), (1, 0)]:
        answer = fuzz.run(server.inline(uri, line, character))
        assert "result" in answer, answer
    change = {
        "range": {"start": {"line": 0, "character": 5}, "end": {"line": 0, "character": 6}},
        "text": "\udc00",
    }
    fuzz.call(
        server.notify,
        "textDocument/didChange",
        {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [change]},
    )
    assert "result" in fuzz.run(server.inline(uri, 1, 4))
    fuzz.call(server.notify, "textDocument/didClose", {"textDocument": {"uri": uri}})
    still_works(fuzz)


# -- generated messages -------------------------------------------------------------------------

METHODS = [
    "textDocument/inlineCompletion",
    "textDocument/completion",
    "textDocument/didOpen",
    "textDocument/didChange",
    "textDocument/didClose",
    "textDocument/hover",
    "workspace/executeCommand",
    "$/cancelRequest",
    "$/progress",
    "diffgemma/debugState",
    "window/workDoneProgress/cancel",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
positions = st.fixed_dictionaries(
    {"line": st.integers(-2, 2**31) | json_values, "character": st.integers(-2, 2**31) | json_values}
)
plausible_params = st.fixed_dictionaries(
    {
        "textDocument": st.fixed_dictionaries(
            {"uri": st.sampled_from([URI, "file:///fuzz/other.py", "untitled:1"]) | json_values},
            optional={
                "version": st.integers(-1, 10) | json_values,
                "text": st.text(max_size=40) | json_values,
            },
        ),
        "position": positions | json_values,
    },
    optional={
        "context": st.fixed_dictionaries({"triggerKind": st.integers(0, 3) | json_values}) | json_values
    },
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(METHODS) | st.text(max_size=30)},
    optional={"params": plausible_params | json_values},
)
FUZZED: list[int] = []  # messages sent by the generated tests, for the README's figures


@FUZZ_SETTINGS
@given(
    message=messages, is_request=st.booleans(), msg_id=st.integers(0, 2**31) | st.text(min_size=1, max_size=8)
)
def test_generated_messages_get_one_sane_answer(
    fuzz: ServerThread, message: dict[str, Any], is_request: bool, msg_id: int | str
) -> None:
    """Any request gets exactly one response, never an internal error; a notification gets none."""
    server = fuzz.server
    assert server is not None
    if message["method"] == "textDocument/didClose":
        message.setdefault("params", {})  # keep the module's own document open for still_works
        document = message["params"].get("textDocument") if isinstance(message["params"], dict) else None
        if isinstance(document, dict) and document.get("uri") == URI:  # with or without other keys
            message["params"]["textDocument"] = {**document, "uri": "file:///fuzz/other.py"}
    if is_request:
        msg_id = f"fuzz-{msg_id}" if isinstance(msg_id, str) else 10**12 + msg_id
        message["id"] = msg_id
    FUZZED.append(1)
    fuzz.call(server.send, message)
    if is_request:
        answer = fuzz.run(server.response(msg_id))
        assert "result" in answer or error_code(answer) in CLIENT_ERRORS, (message, answer)
    answer = fuzz.run(server.request("diffgemma/debugState", {}))
    assert "result" in answer, answer
    assert not server.garbage


def test_after_fuzzing_the_server_is_whole(fuzz: ServerThread) -> None:
    server = fuzz.server
    assert server is not None
    still_works(fuzz)
    state = fuzz.run(server.debug_state(URI))
    assert state["textSha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert state["inflight"] == 0 and state["pendingFutures"] <= 1, state
    assert len(set(server.shown_messages())) == len(server.shown_messages())  # each said once
    print(f"robustness: {len(FUZZED)} generated messages fuzzed")


# -- lifecycle (keep these last: the final test shuts the module's server down) ------------------


def test_before_initialize(fuzz: ServerThread) -> None:
    assert error_code(BEFORE_INITIALIZE["inline"]) == SERVER_NOT_INITIALIZED
    assert error_code(BEFORE_INITIALIZE["shutdown"]) == SERVER_NOT_INITIALIZED
    assert error_code(BEFORE_INITIALIZE["unknown"]) == SERVER_NOT_INITIALIZED
    assert BEFORE_INITIALIZE["documents"] == 0  # the early didOpen was dropped


def test_after_shutdown(fuzz: ServerThread) -> None:
    """After ``shutdown`` every request is an invalid request; only ``exit`` is honoured (code 0)."""
    server = fuzz.server
    assert server is not None
    still_works(fuzz)
    assert "result" in fuzz.run(server.request("shutdown"))
    assert error_code(fuzz.run(server.inline(URI, 4, 11))) == INVALID_REQUEST
    assert error_code(fuzz.run(server.request("shutdown"))) == INVALID_REQUEST
    assert error_code(fuzz.run(server.request("initialize", {"capabilities": {}}))) == INVALID_REQUEST
    fuzz.call(server.notify, "exit")
    assert fuzz.run(server.process.wait()) == 0
