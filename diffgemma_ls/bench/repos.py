"""The repository-level bench: completions in packages the model never saw, with and without the
workspace as context and with and without ``diffgemma-ls tune``.

For each repository (by default the pinned sdists of ``REPOS[--set]``, none of them installed on
the machine that built the training corpus, fetched with ``pip download`` into ``--cache``; or
``--repo DIR``), a fifth of its Python files (by a hash of the path) are the **bench files**: line,
line-tail and block tasks are cut from them (``tasks.cut_file``). ``tune`` runs for
``--tune-minutes`` on a copy of the repository without them, so no task's file was trained on.
Each task is completed as the server completes an explicit request, in the rows:

- ``file only``: the starting weights, the task's file alone (today's server without a workspace);
- ``+ context``: the same weights with the repository's other files as the workspace (the copy
  rival from other files; their chunks in the prompt when the model reads them);
- ``+ tuned``: the tuned weights, file alone; ``tuned + context``: both;
- ``nearest line``: the floor, copying the nearest matching line of the file, else of the
  workspace; ``anchored copy``: the anchored copy (line or block) of the file or workspace (``anchored``),
  else the nearest line, which is what the server's copy rules offer without the model; ``empty``: no
  completion.

Rows are compared per task against ``file only`` and against ``nearest line`` with 95% paired
bootstrap intervals, and with ``--baseline`` (an earlier run's ``results.json``) each row against
the same row there. The tune's weights go to ``--out``'s cache, not the user's;
``--tune-minutes 0`` leaves the tuned rows out.

    python -m diffgemma_ls.bench.repos --tune-minutes 10 --threads 1 --out bench-repos
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from statistics import fmean

from diffgemma_ls.bench.metrics import Scorer, paired_difference, percentile
from diffgemma_ls.bench.tasks import Task, cut_file
from diffgemma_ls.config import Settings
from diffgemma_ls.nearest_line import nearest_line_completion
from diffgemma_ls.workspace import Workspace, source_files

# Pure-Python packages with their tests, not in the training corpus (not installed where it was built):
# ``design``, the three the copy rules were chosen on, and ``check``, seven more to check them on.
REPOS = {
    "design": (("boltons", "25.0.0"), ("toolz", "1.0.0"), ("marshmallow", "3.26.1")),
    "check": (
        ("funcy", "2.0"),
        ("glom", "25.12.0"),
        ("cachetools", "8.0.3"),
        ("humanize", "4.17.0"),
        ("inflect", "7.6.0"),
        ("arrow", "1.4.0"),
        ("voluptuous", "0.15.2"),
    ),
}
BENCH_FRACTION = 0.2
SUITES = {"ho-line": "line", "ho-tail": "line", "ho-block": "block"}  # reported as line / block
ROWS = ("file only", "+ context", "+ tuned", "tuned + context", "nearest line", "anchored copy", "empty")


def fetch(name: str, version: str, cache: Path) -> Path:
    """The unpacked sdist of ``name==version`` under ``cache`` (downloaded once, from PyPI)."""
    folder = cache / f"{name}-{version}"
    if folder.is_dir():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{name}=={version}"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        spec,
        "-d",
        str(cache),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    archives = sorted(cache.glob(f"{name}-{version}.tar.gz"))
    if result.returncode != 0 or not archives:
        raise SystemExit(f"cannot download {spec} (pip: {result.stderr.strip()[-300:]}); pass --repo DIR")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(cache, filter="data")
    return folder


def split(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(tune files, bench files)`` as ``(path relative to root, text)``; Python files only."""
    tune, bench = [], []
    for path, text in source_files([root]):
        if path.suffix != ".py":
            continue
        relative = path.relative_to(root).as_posix()
        share = int(hashlib.sha1(f"bench:{relative}".encode()).hexdigest()[:8], 16) / 2**32
        (bench if share < BENCH_FRACTION else tune).append((relative, text))
    return tune, bench


def repo_tasks(root: Path, bench: list[tuple[str, str]], per_kind: int) -> list[Task]:
    tasks = []
    for relative, text in bench:
        tasks += [t for t in cut_file(relative, text, per_kind, folder=root) if t.suite in SUITES]
    return tasks


def _complete(engine, task: Task, settings: Settings, workspace: Workspace | None) -> tuple[str, float]:
    from diffgemma_ls.completion import complete_text

    started = time.perf_counter()
    outcome = complete_text(
        engine, task.prefix, task.suffix, "python", task.mode, settings, workspace=workspace, path=task.path
    )
    text = outcome.completion.text if outcome.completion else ""
    return text, (time.perf_counter() - started) * 1000


def bench_repo(root: Path, args: argparse.Namespace, settings: Settings) -> dict:
    """Tune on the repository's tune files, then every row on its bench tasks."""
    from diffgemma_ls.completion import load_engine
    from diffgemma_ls.engine.loader import resolve_model_path
    from diffgemma_ls.tune import tune
    from diffgemma_ls.tuned import WEIGHTS, tune_dir

    tune_files, bench_files = split(root)
    tasks = repo_tasks(root, bench_files, args.per_kind)
    print(
        f"{root.name}: {len(tune_files)} files to tune on, {len(tasks)} tasks from {len(bench_files)} files"
    )
    tune_root = args.out / "workspaces" / root.name
    shutil.rmtree(tune_root, ignore_errors=True)
    for relative, text in tune_files:
        (tune_root / relative).parent.mkdir(parents=True, exist_ok=True)
        (tune_root / relative).write_text(text)
    base = Path(resolve_model_path(settings.model))
    started = time.monotonic()
    record = None
    if args.tune_minutes > 0:
        say = lambda message: print(f"  tune: {message}")  # noqa: E731
        record = tune(tune_root, base, args.tune_minutes, settings, fresh=True, say=say)
    tune_seconds = time.monotonic() - started
    workspace = Workspace([root])
    workspace.scan()
    plain = load_engine(settings)
    engines = {"file only": (plain, None), "+ context": (plain, workspace)}
    if record is not None:  # the kept weights themselves, whatever model they were tuned from
        kept = Settings(model=str(tune_dir(tune_root) / WEIGHTS), threads=settings.threads)
        tuned = load_engine(kept) if record.kept else plain
        engines |= {"+ tuned": (tuned, None), "tuned + context": (tuned, workspace)}
    scorer = Scorer()
    rows: dict[str, list[dict]] = {row: [] for row in [*engines, "nearest line", "anchored copy", "empty"]}
    for i, task in enumerate(tasks):
        answers = {name: _complete(engine, task, settings, ws) for name, (engine, ws) in engines.items()}
        floor = nearest_line_completion(task.prefix, task.suffix) or workspace.nearest_line(
            task.prefix, task.suffix, exclude=task.path
        )
        block = task.mode == "block"
        anchored = workspace.anchored(task.prefix, task.suffix, exclude=task.path, block=block) or floor
        answers |= {"nearest line": (floor, 0.0), "anchored copy": (anchored, 0.0), "empty": ("", 0.0)}
        for name, (text, ms) in answers.items():
            score = scorer.score(task, text)
            rows[name].append(
                {"task": task.task_id, "kind": SUITES[task.suite], "exact": score.exact,
                 "similarity": score.edit_similarity, "ms": ms}
            )  # fmt: skip
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(tasks)} tasks")
    return {
        "repo": root.name,
        "tune_files": len(tune_files),
        "bench_files": len(bench_files),
        "tune_minutes": args.tune_minutes,
        "tune_seconds": round(tune_seconds, 1),
        "tune_steps": record.steps if record else 0,
        "tune_kept": record.kept if record else False,
        "tune_before": vars(record.before) if record and record.before else None,
        "tune_after": vars(record.after) if record and record.after else None,
        "rows": rows,
    }


def summarize(results: list[dict]) -> str:
    """The Markdown report: per row, line exact / similarity and block similarity, with intervals."""
    names = [name for name in ROWS if name in results[0]["rows"]]
    rows = {name: [r for result in results for r in result["rows"][name]] for name in names}
    lines = ["| row | line exact | line edit sim | block edit sim | line exact vs file only (95%) "
             "| line exact vs nearest line (95%) | p50 ms |", "|---|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    pct = lambda values: f"{100 * fmean(values):.1f}%" if values else "-"  # noqa: E731

    def versus(name: str, other: str) -> str:
        ours = [float(r["exact"]) for r in rows[name] if r["kind"] == "line"]
        theirs = [float(r["exact"]) for r in rows[other] if r["kind"] == "line"]
        if name == other or not ours:
            return ""
        mean, low, high = paired_difference(ours, theirs)
        return f"{100 * mean:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"

    for name in names:
        line = [r for r in rows[name] if r["kind"] == "line"]
        block = [r for r in rows[name] if r["kind"] == "block"]
        ms = [r["ms"] for r in rows[name] if r["ms"] > 0]
        lines.append(
            f"| {name} | {pct([float(r['exact']) for r in line])} | {pct([r['similarity'] for r in line])} "
            f"| {pct([r['similarity'] for r in block])} | {versus(name, 'file only')} "
            f"| {versus(name, 'nearest line')} | {f'{percentile(ms, 50):.0f}' if ms else '-'} |"
        )
    n_line = sum(r["kind"] == "line" for r in rows["empty"])
    n_block = len(rows["empty"]) - n_line
    tunes = "; ".join(
        f"{r['repo']}: {r['tune_files']} files, {r['tune_minutes']:g} min of training "
        f"({r['tune_seconds'] / 60:.1f} min with measuring), {r['tune_steps']} steps, "
        f"{'kept' if r['tune_kept'] else 'not kept'}"
        for r in results
    )
    lines += ["", f"{n_line} line and {n_block} block tasks from {len(results)} repositories. Tune: {tunes}."]
    return "\n".join(lines)


def versus_baseline(results: list[dict], baseline: list[dict]) -> str:
    """Per row in both runs, line exact and edit similarity against ``baseline`` (an earlier
    ``results.json``) on the tasks both have, with 95% paired intervals: what a change did."""
    lines = ["| row | tasks | line exact (95%) | line edit sim (95%) | block edit sim (95%) |",
             "|---|--:|--:|--:|--:|"]  # fmt: skip
    for name in ROWS:
        if name not in results[0]["rows"] or name not in baseline[0]["rows"]:
            continue
        ours = {r["task"]: r for result in results for r in result["rows"][name]}
        theirs = {r["task"]: r for result in baseline for r in result["rows"][name]}
        shared = sorted(ours.keys() & theirs.keys())
        cells = []
        for kind, metric in (("line", "exact"), ("line", "similarity"), ("block", "similarity")):
            tasks = [t for t in shared if ours[t]["kind"] == kind]
            if not tasks:
                cells.append("-")
                continue
            now, then = [float(ours[t][metric]) for t in tasks], [float(theirs[t][metric]) for t in tasks]
            mean, low, high = paired_difference(now, then)
            cells.append(
                f"{100 * fmean(then):.1f} → {100 * fmean(now):.1f}%: "
                f"{100 * mean:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"
            )
        lines.append(f"| {name} | {len(shared)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--repo", type=Path, action="append", help="a repository folder (default: the pinned ones)"
    )
    ap.add_argument("--set", choices=REPOS, default="design", help="which pinned repositories")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "diffgemma-ls" / "bench-repos")
    ap.add_argument("--out", type=Path, default=Path("bench-repos"))
    ap.add_argument("--tune-minutes", type=float, default=10.0)
    ap.add_argument("--per-kind", type=int, default=3, help="tasks of each kind per bench file")
    ap.add_argument("--model", help="the weights to start from (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--baseline", type=Path, help="an earlier results.json to compare every row with")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    # the tunes stay out of the user's cache; Hugging Face's cache (under XDG's by default) stays put
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ.setdefault("HF_HOME", str(user_cache / "huggingface"))
    os.environ["XDG_CACHE_HOME"] = str(args.out / "cache")
    settings = Settings(model=args.model, threads=args.threads)
    roots = args.repo or [fetch(name, version, args.cache) for name, version in REPOS[args.set]]
    results = [bench_repo(root.resolve(), args, settings) for root in roots]
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = summarize(results)
    if args.baseline:
        report += "\n\nAgainst " + str(args.baseline) + ":\n\n"
        report += versus_baseline(results, json.loads(args.baseline.read_text()))
    (args.out / "results.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
