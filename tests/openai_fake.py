"""A loopback HTTP server that answers like an OpenAI-compatible one, or fails as one can: for the
backend's fault tests (a real ``transformers serve`` is tested separately in ``test_backend.py``)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """``mode``: ``ok`` (answers ``text``), ``stall`` (holds the request ``stall_s``), ``garbage``
    (not JSON), ``error`` (HTTP 500), ``partial`` (a JSON body cut short, then the socket closes)."""

    def __init__(
        self,
        mode: str = "ok",
        text: str = "value)",
        stall_s: float = 30.0,
        delay_s: float = 0.0,
        port: int = 0,
    ):
        self.mode, self.text, self.stall_s, self.delay_s = mode, text, stall_s, delay_s
        self.status = 500  # of an ``error`` answer
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.aborted = 0  # requests whose client left before the answer
        self.in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.in_flight += 1
                try:
                    fake._answer(self, body)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, status: int, payload: Any, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, handler: Any, body: dict[str, Any]) -> None:
        if self.mode == "stall":
            deadline = time.monotonic() + self.stall_s
            while time.monotonic() < deadline:  # until the client leaves (the socket reads EOF)
                handler.connection.settimeout(0.05)
                try:
                    if handler.connection.recv(1) == b"":
                        with self._lock:
                            self.aborted += 1
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return
            return
        time.sleep(self.delay_s)
        if self.mode == "garbage":
            handler._send(200, None, raw=b"<html>502 Bad Gateway</html>")
        elif self.mode == "error":
            handler._send(self.status, {"error": {"message": "CUDA out of memory"}})
        elif self.mode == "partial":
            data = json.dumps({"choices": [{"text": self.text}]}).encode()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data) + 50))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.close_connection = True
        else:
            n = int(body.get("n") or 1)
            if "messages" in body:
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": self.text}} for i in range(n)
                ]
            else:
                choices = [{"index": i, "text": self.text} for i in range(n)]
            handler._send(200, {"object": "text_completion", "model": "fake-model", "choices": choices})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
