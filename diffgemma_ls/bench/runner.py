"""Orchestration: tasks → one worker process per quantization → scores → aggregated rows.

Phases run one after another, never overlapping, so nothing the bench does competes with the
timings: generation (workers), then scoring (sandboxed tests), then the LSP client.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from diffgemma_ls.bench.metrics import Scorer, paired_difference, percentile
from diffgemma_ls.bench.sandbox import Limits, network_isolation
from diffgemma_ls.bench.tasks import Task, load_tasks
from diffgemma_ls.bench.worker import DecodeConfig
from diffgemma_ls.config import Settings
from diffgemma_ls.nearest_line import nearest_line_completion

Progress = Callable[[str], None]
BASELINE = "nearest-line"


class WorkerFailed(RuntimeError):
    """A worker exited without results; ``returncode`` 1 means the model could not load."""

    def __init__(self, returncode: int):
        super().__init__(f"bench worker exited with status {returncode}")
        self.returncode = returncode


@dataclass(frozen=True)
class BenchPlan:
    settings: Settings  # model, device, threads...; ``quantize`` is replaced per worker
    quantizations: tuple[str, ...]
    modes: tuple[str, ...]
    steps: int | None
    entropy_bound: float | None
    sweep_bounds: tuple[float, ...]  # adaptive with each bound, on the first quantization only
    suites: tuple[str, ...]
    limit: int | None  # tasks per suite
    lsp_requests: int
    limits: Limits
    workspace: bool = False  # also decode with the workspace rival (the held-out file's folder)


MODEL_ONLY = "model-only"
WORKSPACE = "adaptive+workspace"  # the rival also from the task file's folder


def mode_configs(plan: BenchPlan) -> list[DecodeConfig]:
    """The decoding modes as asked, on every quantization, each as the server decodes (rival included)."""
    return [
        DecodeConfig(mode, mode, plan.steps, plan.entropy_bound if mode == "adaptive" else None)
        for mode in plan.modes
    ]


def first_quantization_configs(plan: BenchPlan) -> list[DecodeConfig]:
    """On the first quantization only: the model alone, and the frontier's entropy-bound sweep.

    ``model-only`` is adaptive decoding without the nearest-line rival (``completion.plan``), so the
    table shows what the model adds over copying.
    """
    alone = [DecodeConfig(MODEL_ONLY, "adaptive", plan.steps, plan.entropy_bound, copy_rival=False)]
    if plan.workspace:
        alone.append(DecodeConfig(WORKSPACE, "adaptive", plan.steps, plan.entropy_bound, workspace=True))
    sweep = [
        DecodeConfig(f"adaptive@{bound:g}", "adaptive", plan.steps, bound) for bound in plan.sweep_bounds
    ]
    return (alone if "adaptive" in plan.modes else []) + sweep


def _task_spec(task: Task) -> dict[str, str]:
    return {k: getattr(task, k) for k in ("task_id", "prefix", "suffix", "language", "mode", "path")}


def run_worker(settings: Settings, tasks: list[Task], configs: list[DecodeConfig]) -> dict[str, Any]:
    """Generate in a fresh process (see ``worker``); its progress goes to our stderr."""
    spec = {
        "settings": dataclasses.asdict(settings),
        "tasks": [_task_spec(t) for t in tasks],
        "configs": [dataclasses.asdict(c) for c in configs],
    }
    with tempfile.TemporaryDirectory(prefix="diffgemma-bench-") as work:
        spec_path, out_path = os.path.join(work, "spec.json"), os.path.join(work, "out.json")
        with open(spec_path, "w", encoding="utf-8") as fh:
            json.dump(spec, fh)
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        command = [sys.executable, "-m", "diffgemma_ls.bench.worker", spec_path, out_path]
        returncode = subprocess.run(command, env=env, check=False).returncode
        if returncode != 0:
            raise WorkerFailed(returncode)
        with open(out_path, encoding="utf-8") as fh:
            return json.load(fh)


def _mean(values: list[float]) -> float:
    return fmean(values) if values else math.nan


def _quality(scored: list[dict[str, Any]]) -> dict[str, Any]:
    parsed = [r["parses"] for r in scored if r["parses"] is not None]
    tested = [r["passed"] for r in scored if r["passed"] is not None]
    return {
        "tasks": len(scored),
        "exact_match": _mean([float(r["exact"]) for r in scored]),
        "edit_similarity": _mean([r["edit_similarity"] for r in scored]),
        "parse_rate": _mean([float(p) for p in parsed]),
        "pass_at_1": _mean([float(p) for p in tested]),
        "tested": len(tested),
    }


def _speed(records: list[dict[str, Any]]) -> dict[str, Any]:
    e2e = [r["e2e_ms"] for r in records]
    return {
        "forward_passes": _mean([r["forward_passes"] for r in records]),
        "tokens_per_forward": _mean([r["tokens_per_forward"] for r in records if r["forward_passes"]]),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p95_ms": percentile(e2e, 95),
        "e2e_mean_ms": _mean(e2e),
        "prefill_p50_ms": percentile([r["prefill_ms"] for r in records], 50),
        "denoise_p50_ms": percentile([r["denoise_ms"] for r in records], 50),
        "budget_exhausted": sum(r["budget_exhausted"] for r in records),
    }


def _score_all(tasks: dict[str, Task], records: list[dict[str, Any]], scorer: Scorer) -> list[dict[str, Any]]:
    scored = []
    for record in records:
        score = scorer.score(tasks[record["task_id"]], record["text"], record["replace_end"])
        scored.append({**record, **dataclasses.asdict(score), "suite": tasks[record["task_id"]].suite})
    return scored


def _agreement(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> float:
    """Share of tasks where two runs inserted the same text over the same range."""
    expected = {r["task_id"]: (r["text"], r["replace_end"]) for r in reference}
    same = [expected.get(r["task_id"]) == (r["text"], r["replace_end"]) for r in rows]
    return _mean([float(s) for s in same])


def baseline_records(tasks: list[Task]) -> list[dict[str, Any]]:
    """The nearest-line baseline as records shaped like a worker's (no model, no cost)."""
    return [
        {
            "config": BASELINE,
            "task_id": t.task_id,
            "text": nearest_line_completion(t.prefix, t.suffix),
            "replace_end": 0,
            "forward_passes": 0,
        }
        for t in tasks
    ]


def _by_config(scored: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in scored:
        groups.setdefault(record["config"], []).append(record)
    return groups


def run_bench_plan(plan: BenchPlan, progress: Progress) -> dict[str, Any]:
    """Everything the report needs, as plain JSON-able data."""
    tasks, task_info = load_tasks(plan.suites, plan.limit)
    if not tasks:
        raise ValueError("no tasks: every suite is empty (are the held-out files installed?)")
    by_id = {t.task_id: t for t in tasks}
    progress(f"{len(tasks)} tasks: {task_info['tasks_per_suite']}")

    workers = {}
    for index, quantize in enumerate(plan.quantizations):
        configs = mode_configs(plan) + (first_quantization_configs(plan) if index == 0 else [])
        settings = dataclasses.replace(plan.settings, quantize=quantize)
        progress(f"generating with quantization {quantize}: {', '.join(c.name for c in configs)}")
        workers[quantize] = run_worker(settings, tasks, configs)

    scorer = Scorer(plan.limits)
    progress(f"scoring (sandbox: {network_isolation()} network isolation)")
    scored = {q: _by_config(_score_all(by_id, w["records"], scorer)) for q, w in workers.items()}
    baseline = _score_all(by_id, baseline_records(tasks), scorer)

    progress(f"scored: {scorer.sandbox_runs} sandboxed test runs")
    rows, suite_rows = [], []
    reference = scored.get("none")
    for quantize, groups in scored.items():
        worker = workers[quantize]
        for config, records in groups.items():
            row = {"quantize": quantize, "decode": config, **_quality(records), **_speed(records)}
            row.update(
                cold_ms=worker["cold"]["e2e_ms"],
                load_ms=worker["load_ms"],
                peak_rss_mb=worker["peak_rss_mb"],
                rss_mb=worker["rss_mb"],
                quantized_fraction=worker["report"]["quantized_fraction"],
                footprint_mb=worker["report"]["footprint_bytes"] / 2**20,
                agreement_vs_none=(
                    _agreement(records, reference[config])
                    if reference is not None and quantize != "none" and config in reference
                    else math.nan
                ),
            )
            rows.append(row)
            suite_rows.extend(_suite_rows(quantize, config, records))
    rows.append({"quantize": "-", "decode": BASELINE, **_quality(baseline), "forward_passes": 0.0})
    suite_rows.extend(_suite_rows("-", BASELINE, baseline))

    result: dict[str, Any] = {
        "meta": {
            "model": next(iter(workers.values()))["model"],
            "quantizations": list(plan.quantizations),
            "modes": list(plan.modes),
            "steps": plan.steps,
            "entropy_bound": plan.entropy_bound,
            "default_entropy_bound": next(iter(workers.values()))["default_entropy_bound"],
            "sweep_bounds": list(plan.sweep_bounds),
            "limit_per_suite": plan.limit,
            "fill_candidates": plan.settings.candidates,
            "threads": next(iter(workers.values()))["threads"],
            "sandbox": {**dataclasses.asdict(plan.limits), "network": network_isolation()},
            "sandbox_runs": scorer.sandbox_runs,
            **task_info,
        },
        "rows": rows,
        "suite_rows": suite_rows,
        "ratios": _ratios(rows),
        "vs_baseline": _vs_baseline(*next(iter(scored.items())), baseline),
        "completions": {
            q: [
                {k: r[k] for k in ("config", "task_id", "text", "exact", "passed")}
                for g in gs.values()
                for r in g
            ]
            for q, gs in scored.items()
        },
    }
    if plan.lsp_requests > 0:
        from diffgemma_ls.bench.lsp_latency import measure_lsp

        progress(f"LSP latency over stdio: {plan.lsp_requests} requests")
        settings = dataclasses.replace(plan.settings, quantize=plan.quantizations[0])
        result["lsp"] = measure_lsp(settings, tasks, plan.lsp_requests)
    return result


def _suite_rows(quantize: str, config: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    suites: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        suites.setdefault(record["suite"], []).append(record)
    return [{"quantize": quantize, "decode": config, "suite": s, **_quality(rs)} for s, rs in suites.items()]


def _vs_baseline(
    quantize: str, groups: dict[str, list[dict[str, Any]]], baseline: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each decoding of the first quantization against the nearest-line floor, task by task; and the
    workspace rival against the same decoding without it."""
    references = {BASELINE: baseline}
    pairs = [(config, BASELINE) for config in groups]
    if WORKSPACE in groups and "adaptive" in groups:
        references["adaptive"] = groups["adaptive"]
        pairs.append((WORKSPACE, "adaptive"))
    out = []
    for config, reference in pairs:
        theirs = {r["task_id"]: r["edit_similarity"] for r in references[reference]}
        records = groups[config]
        ours = [r["edit_similarity"] for r in records]
        delta, low, high = paired_difference(ours, [theirs[r["task_id"]] for r in records])
        row = {"quantize": quantize, "decode": config, "reference": reference}
        out.append({**row, "delta": delta, "low": low, "high": high})
    return out


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adaptive over sequential, per quantization: forward passes and wall time on the same tasks."""
    out = []
    for quantize in dict.fromkeys(r["quantize"] for r in rows):
        by_config = {r["decode"]: r for r in rows if r["quantize"] == quantize}
        adaptive, sequential = by_config.get("adaptive"), by_config.get("sequential")
        if adaptive and sequential and sequential["forward_passes"] and sequential["e2e_mean_ms"]:
            out.append(
                {
                    "quantize": quantize,
                    "passes_ratio": adaptive["forward_passes"] / sequential["forward_passes"],
                    "wall_ratio": adaptive["e2e_mean_ms"] / sequential["e2e_mean_ms"],
                }
            )
    return out
