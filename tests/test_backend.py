"""The HTTP backend: against a real OpenAI-compatible server (``transformers serve``), and against
loopback servers that refuse, stall, fail or answer garbage; 20 LSP sessions on one backend."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from diffgemma_ls.backend import BACKOFF_FIRST_S, HttpBackend, load_backend
from diffgemma_ls.config import Settings
from diffgemma_ls.engine.infill import DecodeOptions, ServingDefaults
from diffgemma_ls.engine.kinds import BackendUnavailable, Cancelled, ModelLoadError
from diffgemma_ls.engine.loader import default_model_path
from tests.openai_fake import FakeOpenAI
from tests.test_robustness_support import RawServer, server_env

DEFAULTS = ServingDefaults(32, 16, 3)
LINE = DecodeOptions(canvas_length=32, first_line_only=True)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


def backend(url: str, tokenizer, **kwargs) -> HttpBackend:
    made = HttpBackend(url, tokenizer, DEFAULTS, **kwargs)
    made.statuses = []  # type: ignore[attr-defined]
    made.on_status = made.statuses.append  # type: ignore[attr-defined]
    return made


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a loopback server that answers -------------------------------------------------------------


def test_the_fim_prompt_goes_to_completions_as_the_engine_builds_it(tokenizer) -> None:
    fake = FakeOpenAI(text="a + b")
    try:
        made = backend(fake.url, tokenizer)
        assert made.check() == ["fake-model"] and made.model_name == "fake-model"
        result = made.infill("def add(a, b):\n    return ", "\n", LINE)
        assert result.text == "a + b"
        (body,) = fake.requests
        assert (
            body["prompt"] == "<bos><|fim_suffix|>\n<|fim_prefix|>def add(a, b):\n    return <|fim_middle|>"
        )
        assert body["stop"] == ["\n"] and body["max_tokens"] == 32 and body["model"] == "fake-model"
        three = made.infill("x = ", "", DecodeOptions(candidates=3))
        assert three.alternatives == ["a + b", "a + b"] and fake.requests[-1]["n"] == 3
        assert "stop" not in fake.requests[-1]  # not a line request
    finally:
        fake.close()


def test_a_chat_checkpoint_goes_to_chat_completions_continuing_the_model_turn(tmp_path: Path) -> None:
    from tests.tiny import build_stock_model

    folder = build_stock_model(tmp_path / "stock")
    fake = FakeOpenAI(text="b\n```")
    try:
        made = load_backend(fake.url, str(folder), Settings())
        assert made.layout.format == "chat"
        made.check()
        made.infill("def add(a, b):\n    return a + ", "\n", LINE, language="python", path="m.py")
        (body,) = fake.requests
        user, model_turn = body["messages"]
        assert "The code after the cursor" in user["content"] and "def add(a, b):" in user["content"]
        assert model_turn == {"role": "assistant", "content": "```python\n    return a + "}
        assert body["continue_final_message"] and not body["add_generation_prompt"]
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
    finally:
        fake.close()


def test_the_api_key_comes_from_the_named_variable_and_is_never_logged(
    tokenizer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEAM_LLM_KEY", "sk-secret-123")
    fake = FakeOpenAI()
    try:
        with caplog.at_level(logging.DEBUG):
            made = backend(fake.url, tokenizer, api_key_env="TEAM_LLM_KEY")
            made.check()
            made.infill("x = ", "", LINE)
        assert all(h.get("Authorization") == "Bearer sk-secret-123" for h in fake.headers)
        assert "sk-secret-123" not in caplog.text
    finally:
        fake.close()


def test_plain_http_to_another_machine_warns_and_https_is_verified(
    tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        backend("http://10.20.30.40:8000", tokenizer)
    assert "unencrypted" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        backend("http://127.0.0.1:8000", tokenizer)
    assert "unencrypted" not in caplog.text
    fake = FakeOpenAI()  # plain HTTP: a TLS handshake with it fails, and is not retried in the clear
    try:
        with pytest.raises(ModelLoadError, match="cannot be reached"):
            backend(fake.url.replace("http://", "https://"), tokenizer).check()
        assert fake.requests == []
    finally:
        fake.close()
    with pytest.raises(ModelLoadError, match="backend URL"):
        backend("ftp://example.com", tokenizer)


# -- faults -------------------------------------------------------------------------------------


def test_a_dead_port_fails_fast_backs_off_and_says_so_once(tokenizer) -> None:
    made = backend(f"http://127.0.0.1:{free_port()}", tokenizer, model_name="m")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="connection refused"):
        made.infill("x = ", "", LINE)
    with pytest.raises(BackendUnavailable):  # inside the backoff: no connection is even tried
        made.infill("x = ", "", LINE)
    assert time.monotonic() - started < 1.0
    assert made.statuses == [made.down] and "connection refused" in made.down  # type: ignore[attr-defined]
    time.sleep(BACKOFF_FIRST_S + 0.1)
    with pytest.raises(BackendUnavailable):
        made.infill("x = ", "", LINE)
    assert made._retry_at - time.monotonic() > BACKOFF_FIRST_S  # the second failure doubled it
    assert len(made.statuses) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["garbage", "error", "partial"])
def test_errors_and_garbage_give_no_answer_and_the_backend_comes_back(tokenizer, mode: str) -> None:
    fake = FakeOpenAI(mode=mode)
    try:
        made = backend(fake.url, tokenizer, model_name="fake-model")
        with pytest.raises(BackendUnavailable):
            made.infill("x = ", "", LINE)
        assert made.down and len(made.statuses) == 1  # type: ignore[attr-defined]
        if mode == "error":
            assert "HTTP 500" in made.down and "CUDA out of memory" in made.down
        fake.mode = "ok"
        time.sleep(BACKOFF_FIRST_S + 0.1)
        assert made.infill("x = ", "", LINE).text == "value)"
        assert made.down is None and made.statuses[-1] is None  # type: ignore[attr-defined]
    finally:
        fake.close()


def test_a_stalled_server_costs_only_the_latency_budget_and_is_left(tokenizer) -> None:
    fake = FakeOpenAI(mode="stall")
    try:
        made = backend(fake.url, tokenizer, model_name="fake-model")
        started = time.monotonic()
        result = made.infill("x = ", "", LINE, deadline=time.monotonic() + 0.3)
        assert result.text == "" and result.budget_exhausted
        assert time.monotonic() - started < 0.6
        deadline = time.monotonic() + 2
        while fake.aborted < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.aborted == 1  # the connection was closed: the server can stop generating
        for _ in range(2):  # slow three times in a row: down
            made.infill("x = ", "", LINE, deadline=time.monotonic() + 0.1)
        assert made.down and "slower than the latency budget" in made.down
    finally:
        fake.close()


def test_cancelling_aborts_the_http_request(tokenizer) -> None:
    fake = FakeOpenAI(mode="stall")
    try:
        made = backend(fake.url, tokenizer, model_name="fake-model")
        flag = threading.Event()
        threading.Timer(0.2, flag.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            made.infill("x = ", "", LINE, deadline=time.monotonic() + 10, cancelled=flag.is_set)
        assert time.monotonic() - started < 0.5
        deadline = time.monotonic() + 2
        while fake.aborted < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.aborted == 1 and made.down is None  # cancelling is not a failure
    finally:
        fake.close()


def test_a_request_cancelled_or_expired_before_it_is_sent_never_reaches_the_server(tokenizer) -> None:
    fake = FakeOpenAI()
    try:
        made = backend(fake.url, tokenizer, model_name="fake-model")
        with pytest.raises(Cancelled):
            made.infill("x = ", "", LINE, cancelled=lambda: True)
        for _ in range(5):  # waited out its budget in the queue: empty, and not the backend's fault
            assert made.infill("x = ", "", LINE, deadline=time.monotonic() - 1).budget_exhausted
        assert fake.requests == [] and made.down is None and made._timeouts == 0
    finally:
        fake.close()


def test_a_request_the_server_rejects_does_not_take_the_backend_down(tokenizer) -> None:
    fake = FakeOpenAI(mode="error")
    fake.status = 400  # type: ignore[attr-defined]
    try:
        made = backend(fake.url, tokenizer, model_name="fake-model")
        with pytest.raises(BackendUnavailable, match="HTTP 400"):
            made.infill("x = ", "", LINE)
        assert made.down is None and made.statuses == []  # type: ignore[attr-defined]
        fake.mode = "ok"
        assert made.infill("x = ", "", LINE).text == "value)"  # no backoff in between
    finally:
        fake.close()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffgemma_ls", *args],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=120,
    )


def test_infill_with_a_dead_backend_exits_1_saying_why(tmp_path: Path) -> None:
    source = tmp_path / "a.py"
    source.write_text("x = \n")
    result = run_cli(
        "infill", str(source), "--line", "1", "--col", "5", "--backend", f"http://127.0.0.1:{free_port()}"
    )
    assert result.returncode == 1 and "connection refused" in result.stderr and result.stdout == ""


# -- the LSP server with a backend --------------------------------------------------------------


async def test_the_server_answers_every_request_and_reports_a_down_backend_once(tmp_path: Path) -> None:
    port = free_port()
    server = await RawServer.start("--backend", f"http://127.0.0.1:{port}")
    try:
        await server.initialize()
        status = await server.wait_for_state("ready", "error")
        assert status["state"] == "ready" and status["backend"].endswith(str(port))
        uri = (tmp_path / "a.py").as_uri()
        server.open(uri, "def f(x):\n    return ")
        statuses = lambda: [n["params"] for n in server.notifications if n["method"] == "diffgemma/status"]  # noqa: E731
        assert "connection refused" in statuses()[-1]["backendDown"]  # found out while warming up
        before = len(statuses())
        for _ in range(5):
            answer = await server.inline(uri, 1, 11)
            assert answer.get("result") == {"items": []} or answer.get("result") == []
        assert len(statuses()) == before  # not once per keystroke
        # the backend comes up on that port: answers resume and the status says so, once
        fake = FakeOpenAI(text="x * 2", port=port)
        items = []
        deadline = time.monotonic() + 60
        while not items and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            answer = await server.inline(uri, 1, 11)
            items = (answer.get("result") or {}).get("items", [])
        assert items and items[0]["insertText"] == "x * 2"
        assert "backendDown" not in statuses()[-1]
        state = await server.debug_state()
        assert state["inflight"] == 0
        fake.close()
    finally:
        await server.close()


SESSIONS = 20


async def _typing_session(fake_url: str, folder: Path, n: int) -> tuple[int, int, dict]:
    """One editor typing a line against the backend: (answered, cancelled, final debug state)."""
    server = await RawServer.start("--backend", fake_url, "--debounce-ms", "0")
    try:
        await server.initialize()
        await server.wait_for_state("ready", "error")
        uri = (folder / f"s{n}.py").as_uri()
        text = "def handler(request):\n    "
        server.open(uri, text)
        line = "return request.value"
        ids = []
        for i, char in enumerate(line, start=1):
            server.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": uri, "version": i + 1},
                 "contentChanges": [{"range": {"start": {"line": 1, "character": 3 + i},
                                               "end": {"line": 1, "character": 3 + i}}, "text": char}]},
            )  # fmt: skip
            ids.append(server.inline_nowait(uri, 1, 4 + i))
            await asyncio.sleep(0.03)
        answered = cancelled = 0
        for msg_id in ids:
            reply = await server.response(msg_id, timeout=60)
            if "result" in reply:
                answered += 1
            elif reply.get("error", {}).get("code") == -32800:  # RequestCancelled: superseded
                cancelled += 1
        await asyncio.sleep(0.2)
        return answered, cancelled, await server.debug_state()
    finally:
        await server.close()


async def test_twenty_sessions_typing_against_one_backend(tmp_path: Path) -> None:
    fake = FakeOpenAI(text="value", delay_s=0.05)
    try:
        results = await asyncio.gather(*(_typing_session(fake.url, tmp_path, n) for n in range(SESSIONS)))
        keys = len("return request.value")
        for answered, cancelled, state in results:
            assert answered + cancelled == keys  # every request answered or cancelled
            assert answered >= 1
            assert state["inflight"] == 0 and state["modelQueue"] == 0 and state["pendingFutures"] == 0
        assert fake.in_flight == 0 and len(fake.requests) >= SESSIONS
    finally:
        fake.close()


# -- a real OpenAI-compatible server ------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory: pytest.TempPathFactory):
    """``transformers serve`` with a tiny Llama that has the shipped tokenizer (it cannot serve
    DiffusionGemma: it loads an image processor the checkpoint does not have)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(default_model_path())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    port = free_port()
    env = server_env(HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder), "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    probe = HttpBackend(url, tok, DEFAULTS)
    while True:
        try:
            probe.check()
            break
        except ModelLoadError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.5)
    yield url, folder
    process.terminate()
    process.wait(10)


def test_transformers_serve_answers_the_prompt_the_engine_builds(transformers_serve) -> None:
    url, folder = transformers_serve
    made = load_backend(url, str(folder), Settings())
    assert made.check() == [str(folder)]
    result = made.infill("def add(a, b):\n    return ", "\n", LINE)
    assert isinstance(result.text, str) and "\n" not in result.text  # stopped at the line's end
    block = made.infill("def add(a, b):\n", "", DecodeOptions(canvas_length=8))
    assert block.text  # 8 tokens of a random model's text


def test_the_cli_and_the_server_complete_through_transformers_serve(
    transformers_serve, tmp_path: Path
) -> None:
    url, folder = transformers_serve
    info = run_cli("info", "--json", "--backend", url, "--model", str(folder))
    assert info.returncode == 0 and str(folder) in info.stdout
    source = tmp_path / "a.py"
    source.write_text("def add(a, b):\n    return \n")
    result = run_cli(
        "infill", str(source), "--line", "2", "--col", "12", "--backend", url, "--model", str(folder)
    )
    assert result.returncode == 0, result.stderr

    async def session() -> dict:
        server = await RawServer.start("--backend", url, "--model", str(folder))
        try:
            await server.initialize()
            assert (await server.wait_for_state("ready", "error"))["state"] == "ready"
            uri = source.as_uri()
            server.open(uri, source.read_text())
            answer = await server.inline(uri, 1, 11)
            assert "result" in answer
            return await server.debug_state()
        finally:
            await server.close()

    state = asyncio.run(session())
    assert state["modelCalls"] >= 1 and state.get("backendErrors", 0) == 0


def test_the_backend_never_imports_weights(tmp_path: Path) -> None:
    """Backend mode loads a tokenizer only: a folder with no weights at all serves."""
    folder = tmp_path / "tokenizer-only"
    folder.mkdir()
    for name in os.listdir(default_model_path()):
        if not name.endswith(".safetensors"):
            (folder / name).write_bytes((default_model_path() / name).read_bytes())
    fake = FakeOpenAI(text="1")
    try:
        made = load_backend(fake.url, str(folder), Settings())
        made.check()
        assert made.infill("x = ", "", LINE).text == "1"
    finally:
        fake.close()
