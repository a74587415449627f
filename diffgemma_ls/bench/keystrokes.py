"""Keystroke replay: type real files character by character through the LSP, as an editor does.

For each file, a span of characters is cut out at a line start and typed back one character at a
time: ``didChange`` then ``textDocument/inlineCompletion`` after every keystroke, at a fixed typing
interval, or with ``--spread`` one drawn log-normally around it (the same draws for every
configuration), as real typing varies between keys; with ``--pause-ms``, a pause to think after
each line break too. A request still pending when the next key arrives is cancelled
(``$/cancelRequest``), as editors do. When the answer shown
for the current state is exactly what comes next in the span, the typist accepts it (one keystroke,
Tab, inserts all of it), as a person would. Reported per configuration (all caches on, each one
off, none, anchored copies as you type off, as-you-type requests with the former default of 4
steps and with as many as explicit ones, and with fixed or adaptive debounces; ``--configs`` picks
some):

- time to completion per answered keystroke (p50, p95), the fraction answered, and the fraction
  answered with a completion (an answer may be empty: nothing belongs there, or the model ended);
- forward passes per keystroke (cancelled requests' passes included), typing-ahead and prefetch hit
  rates, keys answered by an anchored copy (no model), warm-started model calls, share of prompt
  tokens whose encoder KV was reused (from the server's ``diffgemma/debugState`` counters), share
  of the span typed by accepting completions;
- quality: edit similarity of each answer's first line with the rest of the line actually typed
  next, so a cache that answers fast but wrong shows up;
- how often an answer differs from a cold answer on the same document state (no caches, computed
  in-process with the same model and settings).

``python -m diffgemma_ls.bench.keystrokes --model DIR`` prints a table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

from diffgemma_ls.bench.metrics import edit_similarity, percentile

CONFIGS: dict[str, list[str]] = {
    "all caches": [],
    "no prefetch": ["--no-prefetch"],
    "no typing-ahead": ["--no-typeahead"],  # the prefetch keeps its answers there: off too
    "no prompt cache": ["--prompt-caches", "0"],  # the warm start is kept with it: off too
    "no warm start": ["--no-warm-start"],
    "no typing copies": ["--no-typing-copies"],
    "no caches": ["--no-typeahead", "--no-prefetch", "--prompt-caches", "0", "--no-warm-start"],
    "4 steps as you type": ["--typing-max-steps", "4"],  # the default until 2026-12-06
    "16 steps as you type": ["--typing-max-steps", "16"],  # as explicit requests
    "debounce 50 ms": ["--debounce-ms", "50"],
    "debounce 150 ms": ["--debounce-ms", "150"],
    "auto debounce": ["--debounce-ms", "auto"],
}


@dataclass
class Answer:
    text: str  # the document when the request was sent
    offset: int
    completion: str
    expected: str  # what the typist types next, to the end of the line
    inserts: bool = True  # the answer inserts at the cursor (replaces nothing after it)

    @property
    def similarity(self) -> float:
        return edit_similarity(self.completion.split("\n", 1)[0], self.expected)


@dataclass
class Replay:
    keystrokes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    cancelled: int = 0
    span_chars: int = 0
    accepted_chars: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def acceptable(self, text: str, cursor: int, rest: str) -> str:
        """The latest answer if it was made for this state and is what comes next, else ``""``."""
        if not self.answers:
            return ""
        last = self.answers[-1]
        if last.text != text or last.offset != cursor or not last.inserts or not last.completion:
            return ""
        return last.completion if rest.startswith(last.completion) else ""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _position(text: str, offset: int) -> types.Position:
    """UTF-16 position of ``offset`` (the client negotiates UTF-16)."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return types.Position(line, len(text[start:offset].encode("utf-16-le")) // 2)


def spans(texts: list[str], chars: int) -> list[tuple[str, int, str]]:
    """(document text without the span, cursor offset, span to type) from the middle of each text.

    The span is whole lines (at least ``chars`` characters, without the last line break), so what
    follows the cursor while typing is the next line, as when writing new code.
    """
    out = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        first = len(lines) // 2
        start = sum(len(x) for x in lines[:first])
        end = start
        for line in lines[first:]:
            end += len(line)
            if end - start >= chars:
                break
        span = text[start:end].rstrip("\r\n")
        out.append((text[:start] + text[start + len(span) :], start, span))
    return out


async def replay(
    model: str,
    server_args: list[str],
    work: list[tuple[str, int, str]],
    interval_s: float,
    pause_s: float = 0.0,
    spread: float = 0.0,
) -> Replay:
    client = LanguageClient("diffgemma-keystrokes", "0")
    ready = asyncio.Event()

    @client.feature("diffgemma/status")
    def _status(params: Any) -> None:
        if getattr(params, "state", None) == "ready":
            ready.set()

    await client.start_io(
        sys.executable, "-m", "diffgemma_ls", "--stdio", "--model", model, "--threads", "1", *server_args
    )
    caps = types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities()
        )
    )
    await client.initialize_async(types.InitializeParams(capabilities=caps))
    client.initialized(types.InitializedParams())
    await asyncio.wait_for(ready.wait(), 300)
    result = Replay()
    rhythm = random.Random(0)  # seeded: every configuration types with the same intervals
    for n, (text, cursor, span) in enumerate(work):
        uri = f"file:///replay/file{n}.py"
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 0, text))
        )
        pending: asyncio.Task | None = None
        typed, version = 0, 0
        result.span_chars += len(span)
        while typed < len(span):
            keys = result.acceptable(text, cursor, span[typed:]) or span[typed]  # Tab, or the next key
            result.accepted_chars += len(keys) if len(keys) > 1 else 0
            position = _position(text, cursor)
            version += 1
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(version=version, uri=uri),
                    [types.TextDocumentContentChangePartial(types.Range(position, position), keys)],
                )
            )
            text, cursor, typed = text[:cursor] + keys + text[cursor:], cursor + len(keys), typed + len(keys)
            if pending is not None and not pending.done():
                pending.cancel()  # _request sends $/cancelRequest for it
            expected = span[typed:].split("\n", 1)[0]
            pending = asyncio.ensure_future(_request(client, uri, text, cursor, expected, result))
            result.keystrokes += 1
            interval = interval_s * math.exp(spread * rhythm.gauss(0.0, 1.0)) if spread else interval_s
            await asyncio.sleep(interval + (pause_s if keys.endswith("\n") else 0.0))
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    result.stats = _plain(await client.protocol.send_request_async("diffgemma/debugState", {}))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return result


def _plain(obj: Any) -> dict[str, Any]:
    """pygls answers custom requests with namedtuples."""
    return obj if isinstance(obj, dict) else obj._asdict()


async def _request(
    client: LanguageClient, uri: str, text: str, cursor: int, expected: str, result: Replay
) -> None:
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=_position(text, cursor),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )
    started = time.perf_counter()
    msg_id = f"key-{result.keystrokes}-{uri}"
    future = client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # a cancelled answer is expected
    try:
        answer = await asyncio.shield(future)
    except asyncio.CancelledError:  # the next keystroke came first
        client.cancel_request(types.CancelParams(id=msg_id))
        result.cancelled += 1
        return
    except JsonRpcException:
        result.cancelled += 1
        return
    result.latencies_ms.append((time.perf_counter() - started) * 1000)
    items = answer.items if answer is not None else []
    if not items:
        result.answers.append(Answer(text, cursor, "", expected))
        return
    r = items[0].range
    inserts = r is None or r.start == r.end
    result.answers.append(Answer(text, cursor, items[0].insert_text, expected, inserts))


def cold_agreement(model: str, server_args: list[str], answers: list[Answer], limit: int) -> tuple[int, int]:
    """(answers equal to a cold answer on the same state, answers compared).

    Cold: the replayed server's own settings, without any cache.
    """
    from diffgemma_ls.cli import build_parser
    from diffgemma_ls.completion import load_engine, plan, run
    from diffgemma_ls.config import settings_from_cli

    served = settings_from_cli(build_parser().parse_args(["--model", model, "--threads", "1", *server_args]))
    settings = dataclasses.replace(served, prompt_caches=0, warm_start=False)
    engine = load_engine(settings)
    same = compared = 0
    for answer in answers[:limit]:
        request = plan(answer.text, answer.offset, "python", settings, engine)
        cold = run(engine, request) if request is not None else None
        cold_text = cold.completion.text if cold is not None and cold.completion is not None else ""
        same += cold_text == answer.completion
        compared += 1
    return same, compared


def summarize(name: str, replay_: Replay, agreement: tuple[int, int]) -> dict[str, Any]:
    s = replay_.stats
    keys = max(1, replay_.keystrokes)
    return {
        "config": name,
        "keystrokes": replay_.keystrokes,
        "answered": len(replay_.latencies_ms) / keys,
        "shown": sum(bool(a.completion) for a in replay_.answers) / keys,
        "p50_ms": percentile(replay_.latencies_ms, 50),
        "p95_ms": percentile(replay_.latencies_ms, 95),
        "passes_per_key": s.get("forwardPasses", 0) / keys,
        "typeahead_hit_rate": s.get("typeaheadHits", 0) / keys,
        "prefetch_hit_rate": s.get("prefetchHits", 0) / keys,
        "copy_rate": s.get("copies", 0) / keys,
        "warm_start_rate": s.get("warmStarts", 0) / max(1, s.get("modelCalls", 0)),
        "accepted": replay_.accepted_chars / max(1, replay_.span_chars),
        "next_line_similarity": _mean([a.similarity for a in replay_.answers]),
        "prompt_reuse": s.get("reusedPromptTokens", 0) / max(1, s.get("promptTokens", 0)),
        "same_as_cold": agreement[0] / agreement[1] if agreement[1] else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--files", nargs="+", type=Path, help="files to type (default: 3 held-out files)")
    parser.add_argument("--chars", type=int, default=40, help="characters typed per file")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="time between keystrokes")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="extra pause after each line break typed")
    parser.add_argument(
        "--spread",
        type=float,
        default=0.0,
        help="log-normal sigma of the interval between keys (its median stays --interval-ms); 0: steady",
    )
    parser.add_argument("--agreement-sample", type=int, default=20, help="answers compared with cold ones")
    parser.add_argument(
        "--configs",
        type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
        default=list(CONFIGS),
        help=f"comma list of configs to run (default: all of {', '.join(CONFIGS)})",
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    texts = [p.read_text(encoding="utf-8") for p in args.files] if args.files else _default_texts()
    work = spans(texts, args.chars)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs: {', '.join(unknown)}")
    rows = []
    for name in args.configs:
        server_args = CONFIGS[name]
        timing = (args.interval_ms / 1000, args.pause_ms / 1000, args.spread)
        result = asyncio.run(replay(args.model, server_args, work, *timing))
        agreement = cold_agreement(args.model, server_args, result.answers, args.agreement_sample)
        rows.append(summarize(name, result, agreement))
    pause = f", {args.pause_ms:.0f} ms more after a line break" if args.pause_ms else ""
    spread = f" (log-normal, sigma {args.spread:g})" if args.spread else ""
    every = f"one key every {args.interval_ms:.0f} ms{spread}{pause}"
    print(f"{len(work)} files, {args.chars} characters each, {every}\n")
    header = ["config", "keys", "answered", "shown", "p50 ms", "p95 ms", "passes/key", "typing-ahead hits"]
    header += ["prefetch hits", "anchored copies", "warm-started calls", "typed by accepting"]
    header += ["prompt KV reused", "next-line similarity", "same as cold"]
    print("| " + " | ".join(header) + " |")
    print("| :-- |" + " --: |" * (len(header) - 1))
    for r in rows:
        cells = [
            r["config"],
            str(r["keystrokes"]),
            f"{r['answered']:.0%}",
            f"{r['shown']:.0%}",
            f"{r['p50_ms']:.0f}",
            f"{r['p95_ms']:.0f}",
            f"{r['passes_per_key']:.2f}",
            f"{r['typeahead_hit_rate']:.0%}",
            f"{r['prefetch_hit_rate']:.0%}",
            f"{r['copy_rate']:.0%}",
            f"{r['warm_start_rate']:.0%}",
            f"{r['accepted']:.0%}",
            f"{r['prompt_reuse']:.0%}",
            f"{r['next_line_similarity']:.1%}",
            f"{r['same_as_cold']:.0%}",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _default_texts() -> list[str]:
    from diffgemma_ls.bench.tasks import heldout_files

    return list(heldout_files().texts.values())[:3]


if __name__ == "__main__":
    sys.exit(main())
