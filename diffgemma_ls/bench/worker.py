"""Generation for one quantization, in its own process: ``python -m diffgemma_ls.bench.worker SPEC OUT``.

Why a process per quantization: peak RSS (``ru_maxrss``) only grows within a process, so only a
fresh one measures what a model costs; the first request is really cold (lazy imports, grammar
loading, allocator warm-up) only in a process that has served none; and quantized weights never
share an address space with the unquantized ones they are compared with.

SPEC is JSON: ``settings`` (``Settings`` fields), ``tasks`` (``task_id``, ``prefix``, ``suffix``,
``language``, ``mode``) and ``configs`` (``name``, ``decode``, ``steps``, ``entropy_bound``). The
first task is completed once before anything is recorded and timed as the cold request. Configs
are interleaved task by task, so no config alone pays for warm-up or for a busy minute; no request
passes a ``cache_key``, so none reuses another's encoder cache and every one prefills its prompt. OUT gets
JSON: the model report, load time, cold request, peak RSS and one record per (config, task).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffgemma_ls.completion import complete_text
from diffgemma_ls.config import Settings
from diffgemma_ls.engine.infill import Engine
from diffgemma_ls.workspace import Workspace

WORKSPACE_FILES = 300  # a held-out file's folder: enough for its siblings, seconds to scan


@dataclass(frozen=True)
class DecodeConfig:
    """One way of decoding, as the bench names it in its table."""

    name: str
    decode: str
    steps: int | None = None
    entropy_bound: float | None = None
    copy_rival: bool = True  # the server's nearest-line rival (completion.plan); off: the model alone
    workspace: bool = False  # the rival also from the task file's folder (``Workspace``), as in an editor


_WORKSPACES: dict[str, Workspace] = {}


def _workspace(path: str) -> Workspace:
    """The folder of a held-out file as its workspace, scanned once (its siblings, not the file)."""
    folder = str(Path(path).parent)
    if folder not in _WORKSPACES:
        _WORKSPACES[folder] = Workspace([folder], max_files=WORKSPACE_FILES)
        _WORKSPACES[folder].scan()
    return _WORKSPACES[folder]


def _request(
    engine: Engine, settings: Settings, task: dict[str, Any], config: DecodeConfig
) -> dict[str, Any]:
    workspace = _workspace(task["path"]) if config.workspace and task.get("path") else None
    started = time.perf_counter()
    outcome = complete_text(
        engine,
        task["prefix"],
        task["suffix"],
        task["language"],
        task["mode"],
        settings,
        decode=config.decode,
        steps=config.steps,
        entropy_bound=config.entropy_bound,
        copy_rival=config.copy_rival,
        workspace=workspace,
        path=task.get("path", ""),
    )
    e2e_ms = (time.perf_counter() - started) * 1000
    result, completion = outcome.result, outcome.completion
    return {
        "config": config.name,
        "task_id": task["task_id"],
        "text": completion.text if completion else "",
        "replace_end": completion.replace_end if completion else 0,
        "e2e_ms": e2e_ms,
        "context_ms": outcome.context_ms,
        "postprocess_ms": outcome.postprocess_ms,
        "prefill_ms": result.prefill_ms if result else 0.0,
        "denoise_ms": result.denoise_ms if result else 0.0,
        "forward_passes": result.forward_passes if result else 0,
        "tokens_per_forward": result.tokens_per_forward if result and result.forward_passes else 0.0,
        "prompt_tokens": result.prompt_tokens if result else 0,
        "budget_exhausted": bool(result and result.budget_exhausted),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    """Resident now: after quantization the full-precision load peak is gone, and this shows it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def generate(spec: dict[str, Any], progress=None) -> dict[str, Any]:
    """Load the model, time the cold request, then complete every task with every config."""
    import torch

    from diffgemma_ls.completion import load_engine
    from diffgemma_ls.engine.quantize import describe_model

    settings = Settings(**spec["settings"])
    started = time.perf_counter()
    engine = load_engine(settings)
    load_ms = (time.perf_counter() - started) * 1000
    rss_loaded = _peak_rss_mb()
    configs = [DecodeConfig(**c) for c in spec["configs"]]
    tasks = spec["tasks"]
    cold = _request(engine, settings, tasks[0], configs[0])
    records = []
    started = time.perf_counter()
    report_every = max(1, len(tasks) // 5)
    for done, task in enumerate(tasks, start=1):
        # every config on a task before the next task: warm-up and load drift hit all configs alike
        records.extend(_request(engine, settings, task, config) for config in configs)
        if progress and (done % report_every == 0 or done == len(tasks)):
            progress(
                f"[{settings.quantize}] {done}/{len(tasks)} tasks x {len(configs)} configs, "
                f"{time.perf_counter() - started:.0f} s"
            )
    return {
        "quantize": settings.quantize,
        "model": engine.loaded.path,
        "quantization": engine.loaded.quantization,
        "report": describe_model(engine.model).to_dict(),
        "load_ms": load_ms,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_mb": _rss_mb(),
        "threads": torch.get_num_threads(),
        "default_entropy_bound": engine.default_entropy_bound,
        "cold": cold,
        "records": records,
    }


def main(argv: list[str]) -> int:
    """Exit 0 with OUT written, or 1 (the CLI's ``EXIT_MODEL``) after saying why the model cannot load."""
    from diffgemma_ls.engine.loader import ModelLoadError

    spec_path, out_path = argv
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    try:
        result = generate(spec, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except ModelLoadError as exc:
        print(f"diffgemma-ls bench: {exc}", file=sys.stderr)
        return 1
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
