"""``diffgemma-ls bench`` flags and entry point (wired into ``diffgemma_ls.cli``).

The subcommand takes the main CLI's model flags, and its own ``--decode`` and ``--quantize`` as comma
lists, since the bench's point is to put modes and quantizations side by side on the same tasks in
one run.

Subsampling: ``--quick`` takes the first ``QUICK_LIMIT`` tasks of each suite (fixed order, see
``tasks``), no entropy-bound sweep and no LSP client; the full bench takes the first
``FULL_LIMIT`` of each suite, sweeps ``FULL_SWEEP`` and sends ``FULL_LSP`` LSP requests. Flags
override either.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from diffgemma_ls.bench.tasks import SUITES
from diffgemma_ls.config import MAX_CANDIDATES, Settings
from diffgemma_ls.engine.kinds import DECODE_MODES, QUANTIZE_MODES

QUICK_LIMIT, FULL_LIMIT = 2, 30
FULL_SWEEP = "0.5,1,3,30"  # --quick sweeps nothing: the frontier shows the three modes only
QUICK_LSP, FULL_LSP = 0, 20  # the LSP server loads the model again: ~15 s that --quick cannot spare


def _comma_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        if not items or any(v not in choices for v in items):
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}, got {value!r}")
        return items

    return parse


def _floats(value: str) -> tuple[float, ...]:
    try:
        bounds = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        bounds = ()
    if not bounds or any(b <= 0 for b in bounds):
        raise argparse.ArgumentTypeError(f"expected a comma list of positive numbers, got {value!r}")
    return bounds


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Bench flags, next to the model flags (but ``--quantize``: a list here, as ``--decode``)."""
    parser.add_argument(
        "--decode",
        type=_comma_list(DECODE_MODES),
        default=DECODE_MODES,
        metavar="A,B,...",
        help=f"decoding modes side by side: a comma list of {', '.join(DECODE_MODES)} (default: all)",
    )
    parser.add_argument(
        "--quantize",
        type=_comma_list(QUANTIZE_MODES),
        default=("none",),
        metavar="A,B,...",
        help=f"quantizations side by side: a comma list of {', '.join(QUANTIZE_MODES)} (default: none)",
    )
    parser.add_argument("--steps", type=int, help="cap on forward passes per canvas (exact for fixed)")
    parser.add_argument("--entropy-bound", type=float, help="entropy bound for adaptive acceptance")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    parser.add_argument(
        "--quick", action="store_true", help=f"fixed small subsample: {QUICK_LIMIT} tasks per suite (< 1 min)"
    )
    parser.add_argument(
        "--limit", type=int, help=f"tasks per suite (default: {FULL_LIMIT}; --quick: {QUICK_LIMIT})"
    )
    parser.add_argument(
        "--suites",
        type=_comma_list(SUITES),
        default=",".join(SUITES),
        metavar="A,B,...",
        help=f"task suites (default: all of {', '.join(SUITES)})",
    )
    parser.add_argument(
        "--sweep-bounds",
        type=_floats,
        help=f"entropy bounds swept with adaptive decoding for the frontier plot (default: {FULL_SWEEP}; "
        "--quick: none)",
    )
    parser.add_argument(
        "--lsp-requests",
        type=int,
        help=f"requests through a real LSP client, 0 to skip (default: {FULL_LSP}; --quick: {QUICK_LSP})",
    )
    parser.add_argument(
        "--fill-candidates",
        type=int,
        default=Settings().candidates,
        help="candidates per ho-fill task, of which the first that parses is kept, as the server's fill "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--workspace-rival",
        action="store_true",
        help="also an adaptive+workspace row: the copy rival drawn from the held-out file's folder too",
    )
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per sandboxed test run")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per test run")


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Run the bench, print the table, write ``--out``; exit codes as the main CLI's."""
    from diffgemma_ls.bench import report
    from diffgemma_ls.bench.runner import BenchPlan, WorkerFailed, run_bench_plan
    from diffgemma_ls.bench.sandbox import Limits
    from diffgemma_ls.exit_codes import EXIT_MODEL, EXIT_OK, EXIT_USAGE

    if (args.limit is not None and args.limit < 1) or (args.lsp_requests or 0) < 0:
        print("diffgemma-ls bench: --limit must be at least 1 and --lsp-requests at least 0", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.fill_candidates <= MAX_CANDIDATES:
        print(f"diffgemma-ls bench: --fill-candidates must be 1 to {MAX_CANDIDATES}", file=sys.stderr)
        return EXIT_USAGE
    plan = BenchPlan(
        # ``--quantize`` is a list here; completions decode one candidate, fills settings.candidates
        settings=dataclasses.replace(settings, quantize="none", candidates=args.fill_candidates),
        quantizations=args.quantize,
        modes=args.decode,
        steps=args.steps,
        entropy_bound=args.entropy_bound,
        sweep_bounds=args.sweep_bounds or (() if args.quick else _floats(FULL_SWEEP)),
        suites=args.suites,
        limit=args.limit or (QUICK_LIMIT if args.quick else FULL_LIMIT),
        lsp_requests=args.lsp_requests
        if args.lsp_requests is not None
        else QUICK_LSP
        if args.quick
        else FULL_LSP,
        limits=Limits(seconds=args.time_limit, memory_mb=args.memory_mb),
        workspace=args.workspace_rival,
    )
    started = time.monotonic()
    try:
        result = run_bench_plan(
            plan,
            progress=lambda line: print(
                f"bench [{time.monotonic() - started:.0f} s]: {line}", file=sys.stderr, flush=True
            ),
        )
    except WorkerFailed as exc:
        print(f"diffgemma-ls bench: {exc}", file=sys.stderr)
        return EXIT_MODEL
    result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    paths = report.write_all(result, args.out)
    print(report.summary(result))
    print(f"\n{result['meta']['wall_s']:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    return EXIT_OK
