"""Latency as an editor sees it: a real LSP client driving ``python -m diffgemma_ls --stdio``.

Each request opens one task's document and asks for an inline completion at its cursor
(``Invoked``, so that every task gets a model call even where as-you-type requests get none),
with ``candidates`` set to 1 so it costs what an as-you-type completion costs (an explicit
request's alternatives are measured apart, see docs/benchmarks.md, candidates). Three clocks:

- ``client``: request sent to response read, in this process (pygls' ``LanguageClient``): JSON-RPC
  over pipes, the server's document store, context, model and post-processing;
- ``server``: the ``lastLatencyMs`` of the server's ``diffgemma/status`` notification, sent just
  before the response (from the request's start inside the server to its end);
- stages: the per-request timing line the server logs (``completion context .. ms, prefill ..``),
  read from its ``--log-file``.

``protocol`` is client minus server: serialization, pipes and the event loop. The server runs its
defaults (adaptive decoding, its latency budget), so these numbers are what a user gets; requests
the budget cut short are counted. The first request is reported apart, as cold.

With ``--backend URL`` the server completes through an OpenAI-compatible server instead, so the
two paths can be timed on the same tasks:

    python -m diffgemma_ls.bench.lsp_latency --requests 60
    python -m diffgemma_ls.bench.lsp_latency --requests 60 --backend http://127.0.0.1:8000 --model DIR
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsprotocol import types

from diffgemma_ls.bench.metrics import percentile
from diffgemma_ls.bench.tasks import Task
from diffgemma_ls.config import Settings

STATUS = "diffgemma/status"
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 300.0
_TIMING = re.compile(
    r"completion context (?P<context>[\d.]+) ms, (?:no model call|prefill (?P<prefill>[\d.]+) ms .*?"
    r"denoise (?P<denoise>[\d.]+) ms .*?postprocess (?P<postprocess>[\d.]+) ms)"
)


def parse_timings(log: str) -> list[dict[str, float]]:
    """The server's per-request stage timings, in request order."""
    return [
        {k: float(v) for k, v in m.groupdict().items() if v is not None} | {"budget": "budget spent" in m[0]}
        for m in _TIMING.finditer(log)
    ]


def cursor_position(prefix: str) -> types.Position:
    """LSP position of the end of ``prefix``: line, and UTF-16 code units into it."""
    line = prefix.count("\n")
    last = prefix[prefix.rfind("\n") + 1 :]
    return types.Position(line=line, character=len(last.encode("utf-16-le")) // 2)


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "mean_ms": sum(values) / len(values) if values else float("nan"),
    }


def _server_command(settings: Settings, log_file: str) -> list[str]:
    command = [sys.executable, "-m", "diffgemma_ls", "--stdio", "--log-file", log_file]
    for flag, value in (
        ("--model", settings.model),
        ("--quantize", settings.quantize),
        ("--device", settings.device),
        ("--threads", settings.threads or None),
        ("--backend", settings.backend),
    ):
        if value is not None:
            command += [flag, str(value)]
    return command


async def _session(command: list[str], tasks: list[Task]) -> tuple[list[float], list[float]]:
    """Client and server milliseconds of each request, in order."""
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("diffgemma-bench", "1")
    statuses: list[Any] = []

    @client.feature(STATUS)
    def on_status(params: Any) -> None:
        statuses.append(params)

    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    await client.start_io(*command, env=env)
    capabilities = types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities()
        )
    )
    try:
        await client.initialize_async(
            types.InitializeParams(capabilities=capabilities, initialization_options={"candidates": 1})
        )
        client.initialized(types.InitializedParams())
        await asyncio.wait_for(_ready(statuses), READY_TIMEOUT_S)
        client_ms, server_ms = [], []
        for index, task in enumerate(tasks):
            uri = f"file:///diffgemma-bench/{index}.py"
            client.text_document_did_open(
                types.DidOpenTextDocumentParams(
                    types.TextDocumentItem(uri, task.language, 1, task.prefix + task.suffix)
                )
            )
            params = types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=cursor_position(task.prefix),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )
            seen = len(statuses)
            started = time.perf_counter()
            await asyncio.wait_for(client.text_document_inline_completion_async(params), REQUEST_TIMEOUT_S)
            client_ms.append((time.perf_counter() - started) * 1000)
            latest = statuses[-1] if len(statuses) > seen else None
            server_ms.append(float(getattr(latest, "lastLatencyMs", None) or "nan"))
            client.text_document_did_close(
                types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri))
            )
        await client.shutdown_async(None)
        client.exit(None)
    finally:
        await client.stop()
    return client_ms, server_ms


async def _ready(statuses: list[Any]) -> None:
    while True:
        state = getattr(statuses[-1], "state", None) if statuses else None
        if state == "ready":
            return
        if state == "error":
            raise RuntimeError(f"the server could not load the model: {getattr(statuses[-1], 'message', '')}")
        await asyncio.sleep(0.05)


def measure_lsp(settings: Settings, tasks: list[Task], requests: int) -> dict[str, Any]:
    """Cold request plus ``requests`` warm ones, spread evenly over ``tasks``."""
    step = max(1, len(tasks) // max(1, requests))
    chosen = [tasks[0], *tasks[::step][:requests]]
    with tempfile.TemporaryDirectory(prefix="diffgemma-bench-lsp-") as work:
        log_file = str(Path(work) / "server.log")
        client_ms, server_ms = asyncio.run(_session(_server_command(settings, log_file), chosen))
        timings = parse_timings(Path(log_file).read_text(encoding="utf-8", errors="replace"))
    warm = slice(1, None)
    warm_timings = timings[1:]
    protocol = [c - s for c, s in zip(client_ms[warm], server_ms[warm], strict=True)]
    stages: dict[str, dict[str, float]] = {
        "client total": _stats(client_ms[warm]),
        "server total": _stats(server_ms[warm]),
        "protocol (client - server)": _stats(protocol),
    }
    for stage in ("context", "prefill", "denoise", "postprocess"):
        stages[f"server {stage}"] = _stats([t[stage] for t in warm_timings if stage in t])
    return {
        "requests": len(client_ms) - 1,
        "quantize": settings.quantize,
        "cold_client_ms": client_ms[0],
        "cold_server_ms": server_ms[0],
        "budget_cut": sum(bool(t["budget"]) for t in warm_timings),
        "logged_timings": len(timings),
        "stages": stages,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from diffgemma_ls.bench.tasks import load_tasks

    ap = argparse.ArgumentParser(description="LSP latency of explicit requests over stdio")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--model", help="model folder (with --backend: the tokenizer to prompt with)")
    ap.add_argument("--backend", help="an OpenAI-compatible server to complete with")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    tasks, _ = load_tasks(("ho-line", "ho-tail", "ho-block"), args.requests)
    settings = Settings(model=args.model, backend=args.backend, threads=args.threads)
    result = measure_lsp(settings, tasks, args.requests)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
