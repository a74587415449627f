"""The bench on tiny models (its plumbing, not its figures), and the sandbox's limits for real."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import socket
import time
from pathlib import Path

import pytest

from diffgemma_ls.bench import runner
from diffgemma_ls.bench.metrics import Scorer, edit_similarity, normalize, paired_difference, parses
from diffgemma_ls.bench.report import COLUMNS, FILES
from diffgemma_ls.bench.sandbox import Limits, network_isolation, run_python
from diffgemma_ls.bench.tasks import SUITES, heldout_files, humaneval_tasks, load_tasks
from diffgemma_ls.bench.worker import generate
from diffgemma_ls.cli import main
from diffgemma_ls.config import Settings
from diffgemma_ls.nearest_line import nearest_line_completion

# --- sandbox: each test fails if the limit it names were not enforced -----------------------------


def test_sandbox_kills_a_program_that_runs_past_its_time_limit() -> None:
    started = time.monotonic()
    result = run_python("while True:\n    pass\n", Limits(seconds=1))
    assert result.status == "timeout"
    assert time.monotonic() - started < 8


def test_sandbox_limits_memory() -> None:
    program = "data = bytes(600 * 2**20)\nprint(len(data))\n"  # calloc: cheap when allowed
    limited = run_python(program, Limits(memory_mb=256))
    assert limited.status == "failed" and "MemoryError" in limited.output
    assert run_python(program, Limits(memory_mb=4096)).status == "passed"  # the limit is what failed it


def test_sandbox_has_no_network() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # reachable from here, so a failure below is the sandbox's doing
        high_level = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
        result = run_python(high_level)
        assert result.status == "failed" and "OSError" in result.output
        if network_isolation() == "namespace":  # even the C socket module finds no network
            raw = f"import _socket\ns = _socket.socket()\ns.settimeout(5)\ns.connect(('127.0.0.1', {port}))\n"
            result = run_python(raw)
            assert result.status == "failed" and "unreachable" in result.output
    finally:
        listener.close()


def test_sandbox_environment_is_empty_and_cwd_is_a_temp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    result = run_python("import os, sys\nprint(sorted(os.environ), os.getcwd(), sys.flags.isolated)\n")
    assert result.status == "passed"
    assert "PROXY" not in result.output and "PYTHONPATH" not in result.output
    assert "diffgemma-bench-" in result.output and result.output.rstrip().endswith("1")


def test_humaneval_canonical_solution_passes_and_a_wrong_one_fails() -> None:
    task = humaneval_tasks("he-line")[0]
    scorer = Scorer(Limits(seconds=10))
    right = scorer.score(task, task.target)
    assert right.passed and right.exact and right.parses and right.edit_similarity == 1.0
    wrong = scorer.score(task, "    raise SystemExit(3)\n")
    assert wrong.passed is False and not wrong.exact


# --- metrics, baseline, tasks ---------------------------------------------------------------------


def test_metrics_ignore_trailing_whitespace_only() -> None:
    assert normalize("  x = 1   \n\n") == "  x = 1"
    assert edit_similarity("return a + b", "return a + b\n") == 1.0
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abcd", "abcx") == pytest.approx(0.75)
    assert edit_similarity("", "abc") == 0.0


@pytest.mark.parametrize(
    ("document", "language", "expected"),
    [
        ("def f(x):\n    return x\n", "python", True),
        ("def f(x):\n    return (x\n", "python", False),
        ("def f(x):\n    \n\nx = 1\n", "python", False),  # an empty body: tree-sitter alone accepts it
        ("x = 1\n  y = 2\n", "python", False),  # unexpected indent
        ("function f() {}\n", "javascript", True),
        ("anything", "plaintext", None),
    ],
)
def test_parses_is_what_the_language_accepts(document: str, language: str, expected: bool | None) -> None:
    assert parses(document, language) is expected


def test_paired_difference_bounds_the_mean_of_per_task_differences() -> None:
    assert paired_difference([0.5, 0.2, 0.9], [0.5, 0.2, 0.9]) == (0.0, 0.0, 0.0)
    assert paired_difference([0.6, 0.3, 1.0], [0.5, 0.2, 0.9]) == pytest.approx((0.1, 0.1, 0.1))  # a shift
    # one task in ten gains a full point: the mean is +0.1, and a resample can miss that task
    ours, theirs = [1.0] + [0.0] * 9, [0.0] * 10
    delta, low, high = paired_difference(ours, theirs)
    assert delta == pytest.approx(0.1) and low == 0.0 and 0.2 <= high <= 0.4
    assert paired_difference(ours, theirs) == (delta, low, high)  # seeded
    # a large sample with a small, consistent gain: the interval excludes zero
    delta, low, high = paired_difference([0.52 + 0.01 * (i % 3) for i in range(300)], [0.5] * 300)
    assert 0 < low < delta < high
    with pytest.raises(ValueError):
        paired_difference([0.1], [0.1, 0.2])


def test_baseline_copies_the_nearest_matching_line() -> None:
    prefix = "class P:\n    def __init__(self, x, y):\n        self.x = x\n        self."
    assert nearest_line_completion(prefix, "\n") == "x = x"
    assert nearest_line_completion("a = 1\n    ", "\n    foo(2)\n") == "a = 1"  # a tie goes to the line above
    assert nearest_line_completion("\n\n    ", "\n    foo(2)\n") == "foo(2)"  # blank lines never match
    assert nearest_line_completion("zzz", "") == ""


def test_suites_are_fixed_and_heldout_files_are_the_training_split() -> None:
    tasks, _ = load_tasks(SUITES, 2)
    assert [t.suite for t in tasks] == [s for s in SUITES for _ in range(2)]
    assert load_tasks(SUITES, 2)[0] == tasks  # the same subsample every run
    assert all(t.target and t.document == t.prefix + t.target + t.suffix for t in tasks)
    files = heldout_files()
    assert files.texts, "no held-out file found on this Python: the held-out suites would be empty"
    for task in (t for t in tasks if t.suite == "ho-fill"):  # a whole function body, as a fill sees it
        assert task.mode == "fill" and task.target.strip() == task.target
        assert task.prefix.rsplit("\n", 1)[1].strip() == ""  # the body starts its line, after indentation
    corpus = pytest.importorskip("model.corpus")
    assert all(corpus.is_val(path) for path in files.texts)


# --- the bench on tiny models ---------------------------------------------------------------------


def test_bench_end_to_end_writes_table_json_csv_png(
    random_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    args = ["bench", "--model", str(random_model_dir), "--threads", "1", "--limit", "1", "--steps", "8"]
    args += ["--suites", "he-line,ho-line", "--sweep-bounds", "0.5", "--lsp-requests", "1", "--out", str(out)]
    assert main(args) == 0

    printed = capsys.readouterr().out
    for _, header, _ in COLUMNS:
        assert header in printed
    assert "adaptive / sequential [none]" in printed
    assert "adaptive - nearest-line [none]" in printed and "95% paired bootstrap" in printed
    assert all((out / name).stat().st_size > 0 for name in FILES)
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads((out / "results.json").read_text())
    decodes = [r["decode"] for r in result["rows"]]
    assert decodes == ["adaptive", "fixed", "sequential", "model-only", "adaptive@0.5", "nearest-line"]
    for row in result["rows"][:4]:
        assert row["tasks"] == 2 and row["forward_passes"] > 0 and row["e2e_p50_ms"] > 0
        assert row["tested"] == 1 and 0 <= row["pass_at_1"] <= 1  # the HumanEval task's test ran
        assert row["peak_rss_mb"] > 0 and row["cold_ms"] > 0 and row["footprint_mb"] > 0
    fixed, sequential = result["rows"][1], result["rows"][2]
    assert fixed["forward_passes"] < sequential["forward_passes"]  # 8 steps a canvas against one a token (16)
    assert result["ratios"][0]["passes_ratio"] > 0
    assert [r["decode"] for r in result["vs_baseline"]] == decodes[:-1]  # every decoding, against the floor
    assert all(r["low"] <= r["delta"] <= r["high"] for r in result["vs_baseline"])
    assert result["lsp"]["requests"] == 1 and result["lsp"]["stages"]["client total"]["p50_ms"] > 0

    with open(out / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert {key for key, _, _ in COLUMNS} <= set(header)
    assert "| quant | decode |" in (out / "results.md").read_text()


def test_quantizations_side_by_side(
    constant_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agreement and quantization columns, with workers run in-process to keep the test short."""

    def in_process(settings: Settings, tasks, configs):
        spec = {
            "settings": dataclasses.asdict(settings),
            "tasks": [runner._task_spec(t) for t in tasks],
            "configs": [dataclasses.asdict(c) for c in configs],
        }
        return generate(spec)

    monkeypatch.setattr(runner, "run_worker", in_process)
    plan = runner.BenchPlan(
        settings=Settings(model=str(constant_model_dir), threads=1, canvas_length=32),  # 32 > 16 steps
        quantizations=("none", "8bit"),
        modes=("adaptive", "fixed", "sequential"),
        steps=4,
        entropy_bound=None,
        sweep_bounds=(),
        suites=("he-line", "ho-line"),  # line mode: one canvas, so fixed takes exactly --steps
        limit=1,
        lsp_requests=0,
        limits=Limits(),
    )
    result = runner.run_bench_plan(plan, progress=lambda line: None)
    rows = {(r["quantize"], r["decode"]): r for r in result["rows"]}
    modes = {(q, m) for q in plan.quantizations for m in plan.modes}
    assert set(rows) == modes | {("none", "model-only"), ("-", "nearest-line")}  # the model alone: once
    assert rows["none", "fixed"]["forward_passes"] == 4  # --steps is exact for fixed
    assert rows["none", "adaptive"]["quantized_fraction"] == 0
    assert rows["8bit", "adaptive"]["quantized_fraction"] > 0.9
    assert rows["8bit", "adaptive"]["footprint_mb"] < rows["none", "adaptive"]["footprint_mb"]
    assert math.isnan(rows["none", "adaptive"]["agreement_vs_none"])
    for mode in plan.modes:
        assert 0 <= rows["8bit", mode]["agreement_vs_none"] <= 1
    assert {r["suite"] for r in result["suite_rows"]} == {"he-line", "ho-line"}


def test_the_repository_bench_prints_every_row(
    tmp_path: Path, random_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffgemma_ls.bench import repos
    from tests.test_tune import make_repo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))  # restored after main sets its own
    monkeypatch.setenv("HF_HOME", os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface")))

    repo = make_repo(tmp_path / "repo", files=12)
    out = tmp_path / "out"
    argv = [
        "--repo",
        str(repo),
        "--model",
        str(random_model_dir),
        "--tune-minutes",
        "0.02",
        "--per-kind",
        "2",
    ]
    assert repos.main([*argv, "--threads", "1", "--out", str(out)]) == 0
    report = (out / "results.md").read_text()
    for row in repos.ROWS:
        assert f"| {row} |" in report
    (result,) = json.loads((out / "results.json").read_text())
    assert result["tune_steps"] > 0 and result["bench_files"] >= 1
    tasks = {r["task"] for r in result["rows"]["file only"]}
    assert len(tasks) == len(result["rows"]["empty"]) > 0
    assert (out / "cache").is_dir() and not (tmp_path / "user-cache").exists()  # not the user's cache


def test_a_repository_run_is_compared_with_a_baseline_task_by_task() -> None:
    from diffgemma_ls.bench.repos import versus_baseline

    def run(exact: list[bool]) -> list[dict]:
        rows = [
            {"task": f"t{i}", "kind": "line", "exact": e, "similarity": float(e)} for i, e in enumerate(exact)
        ]
        empty = [{**r, "exact": False, "similarity": 0.0} for r in rows]
        return [{"rows": {"file only": rows, "empty": empty}}]

    then = run([False, False, True, False])
    now = run([True, False, True, True])
    now[0]["rows"]["file only"].append({"task": "new", "kind": "line", "exact": True, "similarity": 1.0})
    report = versus_baseline(now, then)
    # the task only the new run has does not count: 1 of 4 → 3 of 4
    assert "| file only | 4 | 25.0 → 75.0%: +50.0 (" in report
    assert "| empty | 4 | 0.0 → 0.0%: +0.0 (+0.0 to +0.0)" in report
    assert "| + context |" not in report  # a row neither run has
