"""Completions from an OpenAI-compatible server (vLLM, ``transformers serve``): a shared GPU for a team.

``HttpBackend`` stands where the in-process ``Engine`` stands, so the LSP side stays one pipeline:
the server cuts the context, builds the prompt (the same ``prompt.build_prompt`` layout, from the
tokenizer of ``--model``, which is all that is loaded locally), and post-processes the answer. The
prompt format picks the endpoint: ``fim`` and ``plain`` send the prompt text to
``/v1/completions``; ``chat`` sends the user's turn and the model's turn pre-filled up to the
cursor to ``/v1/chat/completions`` (``continue_final_message``, thinking off, vLLM's parameters).
Alternatives come from ``n``; a line request stops at the line's end.

What it cannot do that the engine does: keep the encoder cache between keystrokes, start a canvas
from the last one, cap the denoising steps per request, heal a split token, or score the copy
rival (no likelihoods): those stay in-process.

Robustness: every request is bounded by the request's deadline; a cancelled or superseded request
closes its connection (the server stops generating); connection errors, HTTP errors and malformed
answers give an empty answer, and the backend is then left alone for a backoff that doubles (0.5 s
to 30 s); ``on_status`` hears once when it goes down and once when it is back. The API key is read
from the environment variable the settings name and never logged; TLS is verified; plain HTTP to
a host other than this machine is warned about.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from diffgemma_ls.engine.kinds import BackendUnavailable, Cancelled, ModelLoadError
from diffgemma_ls.prompt import PromptLayout, build_prompt, chat_messages, prompt_layout

log = logging.getLogger(__name__)

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
TIMEOUTS_BEFORE_DOWN = 3  # consecutive requests cut by their deadline before the backend counts as down
PROBE_TIMEOUT_S = 5.0  # for /v1/models
POLL_S = 0.02  # how often a waiting request looks at its cancellation and deadline
REQUEST_ERRORS = frozenset({400, 413, 422})  # the request's fault (a prompt too long): no backoff


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Exchange:
    """One HTTP request on its own thread, so the caller can abandon it (closing its socket)."""

    def __init__(self, connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]):  # fmt: skip
        self.connection = connection
        self.done = threading.Event()
        self.status = 0
        self.payload = b""
        self.error: Exception | None = None
        self._aborted = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(method, path, body, headers), daemon=True)
        self._thread.start()

    def _run(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
        try:
            self.connection.connect()
            with self._lock:  # an abort during connect(): never send
                if self._aborted:
                    self.connection.close()
                    return
                self.connection.auto_open = 0  # an abort from now on must not reconnect and send
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
            self.status, self.payload = response.status, response.read()
        except Exception as exc:  # reported by the waiting side
            self.error = exc
        finally:
            self.done.set()

    def abort(self) -> None:
        """Close the socket under the request: the server sees the client leave and stops generating."""
        with self._lock:
            self._aborted = True
            sock = self.connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed by the other side
                    sock.shutdown(socket.SHUT_RDWR)
            self.connection.close()


class HttpBackend:
    """The ``Engine`` interface over an OpenAI-compatible HTTP server (see the module docstring)."""

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        defaults: Any,
        *,
        model_name: str | None = None,
        api_key_env: str | None = None,
        prompt_format: str = "auto",
    ):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ModelLoadError(f"backend URL must be http://HOST[:PORT][/PATH] or https://..., got {url!r}")
        self.url = url.rstrip("/")
        self._parsed = parsed
        self._base_path = parsed.path.rstrip("/")
        if self._base_path.endswith("/v1"):
            self._base_path = self._base_path[: -len("/v1")]
        self.tokenizer = tokenizer
        self.layout: PromptLayout = prompt_layout(tokenizer, prompt_format)
        self.defaults = defaults
        self.model_name = model_name
        self.api_key_env = api_key_env
        self.insecure = parsed.scheme == "http" and not is_loopback(parsed.hostname)
        if self.insecure:
            log.warning("backend %s is plain HTTP to another machine: the code you type crosses the network "
                        "unencrypted; use https://", self.url)  # fmt: skip
        self.totals: Counter[str] = Counter({"modelCalls": 0, "backendErrors": 0})
        self.on_status: Callable[[str | None], None] = lambda message: None
        self.down: str | None = None  # why the backend is considered down, if it is
        self._failures = 0
        self._timeouts = 0
        self._retry_at = 0.0
        self._request_errors_seen: set[int] = set()
        self._lock = threading.Lock()

    # -- the Engine interface the server and the CLI use --------------------------------------

    reads_snippets = False  # the HTTP prompt is the file's only (no model here trained for chunks)
    copies = False  # no likelihood to judge a copy with, and not the model the copy rules were measured on
    tuned_for = None
    cached_documents = 0
    code_languages: list[str] | None = None  # a served model is general: every installed grammar

    def continues(self, cache_key: str, prefix: str, suffix: str) -> bool:
        return False

    def forget(self, cache_key: str) -> None:
        """Nothing is cached per document here."""

    def describe(self, settings_canvas: int | None = None) -> str:
        return f"{self.model_name or 'the first model'} at {self.url} ({self.layout.format} prompt)"

    def warm_up(self) -> None:
        """Learn the model name from ``/v1/models`` (unless set); a backend that is down is only noted."""
        try:
            self.check()
        except ModelLoadError as exc:
            self._failed(str(exc))

    def check(self, deadline: float | None = None, cancelled: Callable[[], bool] | None = None) -> list[str]:
        """The models the backend serves; ``ModelLoadError`` with the reason when it cannot say."""
        probe_deadline = time.monotonic() + PROBE_TIMEOUT_S
        deadline = probe_deadline if deadline is None else min(deadline, probe_deadline)
        try:
            status, payload = self._exchange("GET", "/v1/models", None, deadline, cancelled)
            models = [m["id"] for m in json.loads(payload)["data"]] if status == 200 else None
        except (OSError, http.client.HTTPException, TimeoutError) as exc:
            raise ModelLoadError(f"backend {self.url} cannot be reached: {_reason(exc)}") from None
        except (ValueError, KeyError, TypeError):
            raise ModelLoadError(
                f"backend {self.url}: /v1/models did not answer as an OpenAI API does"
            ) from None
        if models is None:
            raise ModelLoadError(f"backend {self.url}: /v1/models answered HTTP {status}")
        if not models and self.model_name is None:
            raise ModelLoadError(f"backend {self.url} serves no model")
        self.model_name = self.model_name or models[0]
        self._recovered()
        return models

    def infill(
        self,
        prefix: str,
        suffix: str,
        options: Any = None,
        *,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        cache_key: str | None = None,
        rivals: Sequence[str] = (),
        copies_win: bool = False,
        language: str = "",
        path: str = "",
        snippets: Sequence[Any] = (),
    ) -> Any:
        """One completion from the backend, as an ``InfillResult``; ``BackendUnavailable`` when it fails."""
        from diffgemma_ls.engine.infill import DecodeOptions, InfillResult

        options = options or DecodeOptions()
        started = time.perf_counter()
        if cancelled is not None and cancelled():
            raise Cancelled
        deadline = deadline if deadline is not None else time.monotonic() + 30.0
        if time.monotonic() >= deadline:  # spent waiting for the model thread: not the backend's fault
            return InfillResult("", 0, 0.0, 0.0, 0.0, 0.0, 0, budget_exhausted=True)
        if time.monotonic() < self._retry_at:
            raise BackendUnavailable(self.down or "the backend is down")
        if self.model_name is None:
            try:
                self.check(deadline, cancelled)
            except ModelLoadError as exc:
                raise BackendUnavailable(self._failed(str(exc))) from None
        path_, body = self._body(prefix, suffix, options, language, path)
        self.totals["modelCalls"] += 1
        try:
            status, payload = self._exchange("POST", path_, body, deadline, cancelled)
        except TimeoutError:
            self._timeouts += 1
            if self._timeouts >= TIMEOUTS_BEFORE_DOWN:
                self._failed(f"backend {self.url} answers slower than the latency budget")
            ms = (time.perf_counter() - started) * 1000
            return InfillResult("", 0, 0.0, 0.0, ms, ms, 0, budget_exhausted=True)
        except (OSError, http.client.HTTPException) as exc:
            message = self._failed(f"backend {self.url} cannot be reached: {_reason(exc)}")
            raise BackendUnavailable(message) from None
        texts = self._texts(status, payload)
        self._timeouts = 0
        self._recovered()
        ms = (time.perf_counter() - started) * 1000
        return InfillResult(texts[0], 0, 0.0, 0.0, ms, ms, 0, alternatives=texts[1:])

    # -- requests -------------------------------------------------------------------------------

    def _body(self, prefix: str, suffix: str, options: Any, language: str, path: str) -> tuple[str, dict]:
        rows = options.candidates
        body: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": options.canvas_length * options.max_canvases,
            "n": rows,
            "temperature": 0.0 if rows == 1 else 0.8,
        }
        if options.first_line_only and prefix.rpartition("\n")[2].strip():
            body["stop"] = ["\n"]  # the line's end; on a blank line the answer may start with one
        if self.layout.format == "chat":
            messages = chat_messages(prefix, suffix, language, path)
            return "/v1/chat/completions", body | {
                "messages": messages,
                "continue_final_message": True,
                "add_generation_prompt": False,
                "chat_template_kwargs": {"enable_thinking": False},
            }
        ids = build_prompt(self.tokenizer, prefix, suffix, self.layout).ids
        return "/v1/completions", body | {"prompt": self.tokenizer.decode(ids, skip_special_tokens=False)}

    def _texts(self, status: int, payload: bytes) -> list[str]:
        if status != 200:
            detail = payload[:200].decode("utf-8", "replace").strip()
            message = f"backend {self.url} answered HTTP {status}: {detail}"
            if status in REQUEST_ERRORS:  # this request (too long a prompt, `n` unsupported): not the backend
                if status not in self._request_errors_seen:
                    self._request_errors_seen.add(status)
                    log.warning("%s", message)
                raise BackendUnavailable(message)
            raise BackendUnavailable(self._failed(message))
        try:
            choices = json.loads(payload)["choices"]
            texts = [c["message"]["content"] if "message" in c else c["text"] for c in choices]
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError("no text")
        except (ValueError, KeyError, TypeError):
            message = self._failed(f"backend {self.url} answered something that is not a completion")
            raise BackendUnavailable(message) from None
        return texts

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            else:
                log.warning(
                    "backendApiKeyEnv names %s, which is not set: sending no API key", self.api_key_env
                )
        return headers

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        host, port = self._parsed.hostname, self._parsed.port
        if self._parsed.scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _exchange(
        self,
        method: str,
        path: str,
        body: dict | None,
        deadline: float,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[int, bytes]:
        """``(status, payload)``; ``TimeoutError`` past ``deadline``, ``Cancelled`` when cancelled."""
        if cancelled is not None and cancelled():
            raise Cancelled
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        data = json.dumps(body).encode() if body is not None else None
        exchange = _Exchange(self._connection(left), method, self._base_path + path, data, self._headers())
        while not exchange.done.wait(POLL_S):
            if cancelled is not None and cancelled():
                exchange.abort()
                raise Cancelled
            if time.monotonic() >= deadline:
                exchange.abort()
                raise TimeoutError
        exchange.connection.close()
        if exchange.error is not None:
            if isinstance(exchange.error, (socket.timeout, TimeoutError)):
                raise TimeoutError
            raise exchange.error
        return exchange.status, exchange.payload

    # -- state ----------------------------------------------------------------------------------

    def _failed(self, message: str) -> str:
        """Back off, doubling, and say once that the backend is down; the message, for the caller."""
        with self._lock:
            self.totals["backendErrors"] += 1
            self._failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            was_up, self.down = self.down is None, message
        log.warning("%s (next try in %.1f s)", message, delay)
        if was_up:
            self.on_status(message)
        return message

    def _recovered(self) -> None:
        with self._lock:
            was_down, self.down = self.down is not None, None
            self._failures, self._retry_at = 0, 0.0
        if was_down:
            log.info("backend %s answers again", self.url)
            self.on_status(None)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return str(exc) or type(exc).__name__


def load_backend(url: str, model: str | None, settings: Any) -> HttpBackend:
    """The backend at ``url``, prompting with the tokenizer and canvas of ``model`` (folder or cached id)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from diffgemma_ls.engine.infill import serving_defaults
    from diffgemma_ls.engine.loader import resolve_model_path

    folder = Path(resolve_model_path(model, settings.allow_download))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read the tokenizer of {folder} for the backend's prompts: {exc}"
        ) from None
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:  # a tokenizer-only folder: transformers' defaults
        generation = None
    canvas = getattr(config, "canvas_length", None) or 32
    defaults = serving_defaults(canvas, getattr(config, "noise_kind", "uniform"), generation)
    try:
        return HttpBackend(
            url,
            tokenizer,
            defaults,
            model_name=settings.backend_model,
            api_key_env=settings.backend_api_key_env,
            prompt_format=settings.prompt_format,
        )
    except ValueError as exc:  # a prompt format the tokenizer cannot do
        raise ModelLoadError(str(exc)) from exc
