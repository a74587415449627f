"""The bench's outputs: a terminal table, JSON, CSV, a markdown report and the frontier PNG.

Pure formatting of ``runner.run_bench_plan``'s result; nothing here measures anything.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

# (key in a row, header, format): "%" shows a fraction as a percentage.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("quantize", "quant", "s"),
    ("decode", "decode", "s"),
    ("tasks", "n", "d"),
    ("exact_match", "exact", "%"),
    ("edit_similarity", "edit sim", "%"),
    ("parse_rate", "parses", "%"),
    ("pass_at_1", "pass@1", "%"),
    ("forward_passes", "passes", ".1f"),
    ("tokens_per_forward", "tok/pass", ".2f"),
    ("e2e_p50_ms", "p50 ms", ".0f"),
    ("e2e_p95_ms", "p95 ms", ".0f"),
    ("prefill_p50_ms", "prefill ms", ".1f"),
    ("denoise_p50_ms", "denoise ms", ".0f"),
    ("cold_ms", "cold ms", ".0f"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("rss_mb", "RSS MB", ".0f"),
    ("quantized_fraction", "quantized", "%"),
    ("footprint_mb", "weights MB", ".1f"),
    ("agreement_vs_none", "agree", "%"),
)
SUITE_COLUMNS = (COLUMNS[0], COLUMNS[1], ("suite", "suite", "s"), *COLUMNS[2:7])
LSP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("stage", "stage", "s"),
    ("p50_ms", "p50 ms", ".1f"),
    ("p95_ms", "p95 ms", ".1f"),
    ("mean_ms", "mean ms", ".1f"),
)
FILES = ("results.json", "results.csv", "suites.csv", "results.md", "frontier.png")


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "%":
        return f"{100 * value:.1f}%"
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def _cells(rows: list[dict[str, Any]], columns) -> list[list[str]]:
    return [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]


def text_table(rows: list[dict[str, Any]], columns=COLUMNS) -> str:
    """Aligned columns for a terminal: text left, numbers right."""
    headers = [header for _, header, _ in columns]
    body = _cells(rows, columns)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    left = [fmt == "s" for _, _, fmt in columns]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if lf else c.rjust(w) for c, w, lf in zip(cells, widths, left, strict=True)
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(rows: list[dict[str, Any]], columns=COLUMNS) -> str:
    headers = [header for _, header, _ in columns]
    align = [":--" if fmt == "s" else "--:" for _, _, fmt in columns]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(rows, columns)]
    return "\n".join(lines)


def ratio_lines(result: dict[str, Any]) -> list[str]:
    return [
        f"adaptive / sequential [{r['quantize']}]: {r['passes_ratio']:.2f}x forward passes, "
        f"{r['wall_ratio']:.2f}x wall time"
        for r in result["ratios"]
    ]


def floor_lines(result: dict[str, Any]) -> list[str]:
    return [
        f"{r['decode']} - {r.get('reference', 'nearest-line')} [{r['quantize']}]: {100 * r['delta']:+.1f} "
        "points of edit similarity "
        f"(95% paired bootstrap {100 * r['low']:+.1f} to {100 * r['high']:+.1f})"
        for r in result.get("vs_baseline", [])
    ]


def lsp_rows(lsp: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stage": stage, **stats} for stage, stats in lsp["stages"].items()]


def summary(result: dict[str, Any]) -> str:
    """What the terminal shows at the end of a run."""
    meta = result["meta"]
    parts = [
        f"model {meta['model']}, {meta['threads']} thread(s), tasks per suite {meta['tasks_per_suite']}"
        + (f", held-out files {meta['heldout_files_found']}" if "heldout_files_found" in meta else "")
        + f", fill candidates {meta['fill_candidates']}",
        text_table(result["rows"]),
        *ratio_lines(result),
        *floor_lines(result),
    ]
    if "lsp" in result:
        lsp = result["lsp"]
        parts += [
            f"LSP over stdio ({lsp['requests']} requests, cold first request "
            f"{lsp['cold_client_ms']:.0f} ms):",
            text_table(lsp_rows(lsp), LSP_COLUMNS),
        ]
    return "\n\n".join(parts)


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    sections = [
        "# diffgemma-ls bench",
        "\n".join(f"- {key}: {value}" for key, value in meta.items()),
        "## Quality and cost per decoding mode\n\n" + markdown_table(result["rows"]),
        "\n".join(f"- {line}" for line in [*ratio_lines(result), *floor_lines(result)]),
        "## Per suite\n\n" + markdown_table(result["suite_rows"], SUITE_COLUMNS),
    ]
    if "lsp" in result:
        lsp = result["lsp"]
        sections.append(
            f"## LSP latency over stdio\n\n{lsp['requests']} requests, cold first request "
            f"{lsp['cold_client_ms']:.0f} ms.\n\n" + markdown_table(lsp_rows(lsp), LSP_COLUMNS)
        )
    return "\n\n".join(sections) + "\n"


def _jsonable(value: Any) -> Any:
    """NaN is not JSON: it becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(_jsonable(row) for row in rows)


def frontier_png(result: dict[str, Any], path: Path) -> None:
    """Quality against forward passes: each mode a point, the entropy-bound sweep a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, PercentFormatter, ScalarFormatter

    rows = [r for r in result["rows"] if r["quantize"] != "-"]
    baseline = next((r for r in result["rows"] if r["quantize"] == "-"), None)
    panels = [("edit_similarity", "edit similarity (all tasks)"), ("pass_at_1", "pass@1 (HumanEval)")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    markers = {"adaptive": "o", "fixed": "s", "sequential": "^", "model-only": "x"}
    for ax, (key, label) in zip(axes, panels, strict=True):
        for index, quantize in enumerate(dict.fromkeys(r["quantize"] for r in rows)):
            color = f"C{index}"  # one color per quantization, one marker per mode
            mine = [r for r in rows if r["quantize"] == quantize]
            sweep = sorted((r for r in mine if "@" in r["decode"]), key=lambda r: r["forward_passes"])
            if sweep:
                ax.plot(
                    [r["forward_passes"] for r in sweep],
                    [r[key] for r in sweep],
                    "-.",
                    color="gray",
                    label=f"adaptive, entropy bound sweep [{quantize}]",
                )
                for r in sweep:
                    ax.annotate(r["decode"].split("@")[1], (r["forward_passes"], r[key]), fontsize=7)
            for r in mine:
                if r["decode"] in markers:
                    ax.plot(
                        r["forward_passes"],
                        r[key],
                        markers[r["decode"]],
                        color=color,
                        markersize=8,
                        label=f"{r['decode']} [{quantize}]",
                    )
        if baseline is not None and not _is_nan(baseline.get(key)):
            ax.axhline(baseline[key], linestyle=":", color="black", label="nearest-line baseline")
        passes = [r["forward_passes"] for r in rows if r["forward_passes"] > 0]
        if passes and max(passes) > 4 * min(passes):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        values = [r[key] for r in [*rows, baseline or {}] if not _is_nan(r.get(key))]
        ax.set_ylim(0, min(1.0, max([*values, 0.04]) * 1.2))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("forward passes per request (mean)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"speed/quality frontier: {Path(str(result['meta']['model'])).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_all(result: dict[str, Any], out: Path) -> list[Path]:
    """Write every output file into ``out``; return their paths (``FILES``' order)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    paths[0].write_text(json.dumps(_jsonable(result), indent=1), encoding="utf-8")
    _write_csv(result["rows"], paths[1])
    _write_csv(result["suite_rows"], paths[2])
    paths[3].write_text(markdown(result), encoding="utf-8")
    frontier_png(result, paths[4])
    return paths
