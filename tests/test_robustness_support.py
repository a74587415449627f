"""Shared by the robustness suite: a raw JSON-RPC client over the server's stdio, and test-only hooks.

``RawServer`` writes bytes to the server's stdin itself, so framing-level faults (a bad
Content-Length, invalid UTF-8, malformed JSON) can be sent that no well-behaved LSP client library
would produce. It answers the server's own requests (``workspace/configuration``, progress
creation) like a minimal editor, so the server never waits on us.

``SITECUSTOMIZE`` is installed into a temporary folder put first on the server's ``PYTHONPATH``: it
patches the server process from the outside (no production hook), driven by environment variables:

* ``DIFFGEMMA_TEST_NET_LOG``: every ``socket.connect`` to a non-loopback address is recorded in this
  file and refused, so a test can assert the server never tried to reach the network.
* ``DIFFGEMMA_TEST_OPEN_LOG`` + ``DIFFGEMMA_TEST_WATCH``: every file opened under the watched folder
  is recorded (a Python audit hook), so a test can assert a workspace's own files are never read.
* ``DIFFGEMMA_TEST_FAIL_FILE``: while this file exists the model's forward pass raises (and appends a
  byte to the file, to count faults), with a message that differs every call, as real errors
  carrying shapes or indices do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# Not a test module: pytest collects it (its name starts like the suite's) and finds nothing to run.
__test__ = False

# Bounds every wait, so a server that stops answering fails a test instead of hanging the suite.
TIMEOUT = 60.0
STARTUP_TIMEOUT = 180.0

SITECUSTOMIZE = '''
"""Test-only hooks for the diffgemma-ls robustness suite (see tests/test_robustness_support.py)."""
import os
import socket
import sys

_net_log = os.environ.get("DIFFGEMMA_TEST_NET_LOG")
if _net_log:
    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

    def _check(sock, address):
        if sock.family == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) else str(address)
        if host in ("127.0.0.1", "::1", "localhost") or host.startswith("127."):
            return
        with open(_net_log, "a") as f:
            f.write(f"{host}\\n")
        raise OSError(f"network access blocked by the robustness suite: {host}")

    def connect(self, address):
        _check(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex

_open_log, _watch = os.environ.get("DIFFGEMMA_TEST_OPEN_LOG"), os.environ.get("DIFFGEMMA_TEST_WATCH")
if _open_log and _watch:
    _watch = os.path.realpath(_watch)

    def _audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)) and args[0] != _open_log:
            path = os.fsdecode(args[0])
            # an existing file only: import machinery probes relative sys.path entries (an editable
            # install's "__editable__...__path_hook__") against the working directory, reading nothing
            if os.path.realpath(path).startswith(_watch) and os.path.exists(path):
                with open(_open_log, "a") as f:
                    f.write(path + "\\n")

    sys.addaudithook(_audit)

_fail_file = os.environ.get("DIFFGEMMA_TEST_FAIL_FILE")
if _fail_file:
    from diffgemma_ls.engine import model as _model

    _forward = _model.CodeDiffusionGemma.forward
    _calls = [0]

    def forward(self, *args, **kwargs):
        _calls[0] += 1
        if os.path.exists(_fail_file):
            with open(_fail_file, "a") as f:
                f.write("x")
            raise RuntimeError(f"injected fault in forward call {_calls[0]}")
        return _forward(self, *args, **kwargs)

    _model.CodeDiffusionGemma.forward = forward
'''


def install_hooks(folder: Path) -> Path:
    """Write the test-only ``sitecustomize`` into ``folder``; put the folder first on PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def server_env(hooks: Path | None = None, **extra: str) -> dict[str, str]:
    """The server's environment: one torch thread, no GPU probing, optional hooks folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFGEMMA_TEST_")}
    env.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES=""
    )
    if hooks is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def frame(body: bytes, length: int | None = None) -> bytes:
    """One LSP message: ``Content-Length`` header (``length`` overrides the true size) and body."""
    return b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


def encode(message: dict[str, Any]) -> bytes:
    """A message body as a client would send it (UTF-8 JSON; lone surrogates escaped as ``\\udxxx``)."""
    return json.dumps(message).encode("utf-8")


class RawServer:
    """``python -m diffgemma_ls --stdio`` with a hand-written JSON-RPC client on its pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:  # use ``start``
        self.process = process
        self.responses: dict[Any, dict[str, Any]] = {}
        self.null_id_errors: list[dict[str, Any]] = []  # responses with "id": null (parse errors)
        self.notifications: list[dict[str, Any]] = []
        self.garbage: list[bytes] = []  # anything the server wrote that is not a framed JSON message
        self._arrived = asyncio.Event()
        self._next_id = (
            10**9
        )  # far from the ids tests choose by hand, so no stale answer is mistaken for ours
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(
        cls,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        program: list[str] | None = None,
    ) -> RawServer:
        """Start the server (``program`` defaults to ``python -m diffgemma_ls``) with ``args``."""
        process = await asyncio.create_subprocess_exec(
            *(program or [sys.executable, "-m", "diffgemma_ls"]),
            "--stdio",
            "--threads",
            "1",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env or server_env(),
            cwd=cwd,
            limit=1 << 26,  # a completion of a 10 MB document is one long line of JSON
        )
        return cls(process)

    # -- reading ------------------------------------------------------------------------------

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            header = await stdout.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b": ", 1) for line in header.strip().split(b"\r\n") if b": " in line)
            if b"Content-Length" not in fields:
                self.garbage.append(header)
                continue
            body = await stdout.readexactly(int(fields[b"Content-Length"]))
            try:
                message = json.loads(body)
            except ValueError:
                self.garbage.append(body)
                continue
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:  # the server asks us something
            result: Any = None
            if message["method"] == "workspace/configuration":
                result = [None for _ in message["params"]["items"]]
            self.send({"jsonrpc": "2.0", "id": message["id"], "result": result})
        elif "method" in message:
            self.notifications.append(message)
        elif message.get("id") is None:
            self.null_id_errors.append(message)
        else:
            self.responses[message["id"]] = message
        self._arrived.set()

    async def wait_for(self, predicate: Any, timeout: float = TIMEOUT) -> Any:
        """Wait until ``predicate()`` is truthy (checked whenever a message arrives); return it."""

        async def poll() -> Any:
            while not (value := predicate()):
                if self._reader.done():
                    self._reader.result()  # re-raise why the server's output ended
                    raise AssertionError("the server closed its output")
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), 0.5)
            return value

        return await asyncio.wait_for(poll(), timeout)

    # -- writing ------------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(frame(encode(message)))

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def request_nowait(self, method: str, params: Any = None, msg_id: Any = None) -> Any:
        """Send a request, return its id; collect the response later with ``response``."""
        msg_id = self.new_id() if msg_id is None else msg_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return msg_id

    async def response(self, msg_id: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.wait_for(lambda: self.responses.get(msg_id), timeout)

    async def request(self, method: str, params: Any = None, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.response(self.request_nowait(method, params), timeout)

    def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    # -- LSP conveniences -----------------------------------------------------------------------

    async def initialize(self, options: Any = None, **params: Any) -> dict[str, Any]:
        caps = {
            "textDocument": {"inlineCompletion": {}},
            "window": {"workDoneProgress": True},
            "workspace": {"configuration": True},
        }
        answer = await self.request(
            "initialize",
            {"processId": None, "rootUri": None, "capabilities": caps, "initializationOptions": options}
            | params,
            timeout=STARTUP_TIMEOUT,  # the server imports torch before it reads its first message
        )
        self.notify("initialized", {})
        return answer

    async def wait_for_state(self, *states: str, timeout: float = 120) -> dict[str, Any]:
        def latest() -> dict[str, Any] | None:
            statuses = [n["params"] for n in self.notifications if n["method"] == "diffgemma/status"]
            return statuses[-1] if statuses and statuses[-1]["state"] in states else None

        return await self.wait_for(latest, timeout)

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}},
        )

    def inline_nowait(self, uri: str, line: int, character: int, msg_id: Any = None) -> Any:
        return self.request_nowait(
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": uri},
                "position": {"line": line, "character": character},
                "context": {"triggerKind": 1},  # Invoked
            },
            msg_id,
        )

    async def inline(self, uri: str, line: int, character: int, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.response(self.inline_nowait(uri, line, character), timeout)

    async def debug_state(self, uri: str | None = None) -> dict[str, Any]:
        answer = await self.request("diffgemma/debugState", {"uri": uri} if uri else {})
        assert "result" in answer, answer
        return answer["result"]

    def shown_messages(self) -> list[str]:
        return [n["params"]["message"] for n in self.notifications if n["method"] == "window/showMessage"]

    async def close(self) -> None:
        """Shut down politely if the server still listens, then make sure the process is gone."""
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.request("shutdown", timeout=10)
                self.notify("exit")
                await asyncio.wait_for(self.process.wait(), 10)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


class ServerThread:
    """A ``RawServer`` driven from synchronous code (hypothesis tests) through a loop on its own thread."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="raw-server-loop", daemon=True)
        self._thread.start()
        self.server: RawServer | None = None

    def run(self, coroutine: Any, timeout: float = STARTUP_TIMEOUT + 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Any, *args: Any) -> Any:
        """Run a plain method of the server (e.g. ``send``) on the loop's thread."""

        async def call() -> Any:
            return function(*args)

        return self.run(call())

    def start(self, *args: str, **kwargs: Any) -> RawServer:
        self.server = self.run(RawServer.start(*args, **kwargs))
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
