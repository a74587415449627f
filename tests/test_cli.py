"""The command line contract other tools depend on: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffgemma_ls.cli import main
from tests import tiny

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diffgemma_ls", *args, "--threads", "1"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_infill_prints_the_completion_only(constant_model_dir: Path) -> None:
    done = cli("infill", str(DEMO), "--line", "16", "--col", "16", "--model", str(constant_model_dir))
    assert done.returncode == 0, done.stderr
    # "return " is typed and line 11 is "    return found": the copied line wins over the model's text
    assert done.stdout == "found\n"
    other = cli("infill", str(DEMO), "--line", "15", "--col", "44", "--model", str(constant_model_dir))
    assert other.returncode == 0, other.stderr  # at the end of a line no other line starts like
    assert other.stdout.endswith("\n") and set(other.stdout[:-1]) == {tiny.CONSTANT_TOKEN}


def test_infill_exit_codes(constant_model_dir: Path, tmp_path: Path) -> None:
    outside = cli("infill", str(DEMO), "--line", "99", "--col", "1", "--model", str(constant_model_dir))
    assert outside.returncode == 2 and "outside the file" in outside.stderr
    assert cli("infill", "--model", str(constant_model_dir)).returncode == 2
    missing = cli("infill", str(DEMO), "--line", "1", "--col", "1", "--model", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope" in missing.stderr
    zero = cli("infill", str(DEMO), "--line", "0", "--col", "1", "--model", str(constant_model_dir))
    assert zero.returncode == 2 and "count from 1, got 0:1" in zero.stderr
    bogus = cli("infill", str(DEMO), "--line", "1", "--col", "1", "--bogus")
    assert (
        bogus.returncode == 2
        and "diffgemma-ls infill: error: unrecognized arguments: --bogus" in bogus.stderr
    )


def test_infill_jsonl_one_line_per_task_in_order(constant_model_dir: Path) -> None:
    tasks = "\n".join(
        [
            json.dumps({"prefix": "def f(x):\n    return ", "suffix": "\n"}),
            "not json",
            json.dumps({"prefix": 1, "suffix": ""}),
            json.dumps({"prefix": "x = ", "suffix": "\n", "language": "python", "mode": "line"}),
        ]
    )
    done = cli("infill", "--jsonl", "--model", str(constant_model_dir), stdin=tasks)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 4
    assert "error" in rows[1] and "error" in rows[2]
    for row in (rows[0], rows[3]):
        assert set(row) == {
            "completion",
            "forward_passes",
            "tokens_per_forward",
            "ms",
            "prefill_ms",
            "denoise_ms",
        }
        assert set(row["completion"]) == {tiny.CONSTANT_TOKEN}
        assert row["forward_passes"] >= 1 and row["ms"] > 0


def test_infill_candidates_print_the_best_first_then_distinct_alternatives(constant_model_dir: Path) -> None:
    args = ("infill", str(DEMO), "--line", "16", "--col", "16", "--model", str(constant_model_dir))
    done = cli(*args, "--candidates", "3")
    assert done.returncode == 0, done.stderr
    texts = json.loads(done.stdout)
    assert 1 < len(texts) <= 3 and len(set(texts)) == len(texts)
    assert texts[0] == cli(*args).stdout.removesuffix("\n")  # the best is the one-candidate answer
    assert cli(*args, "--candidates", "0").returncode == 2


def test_info_json_reports_what_is_served(random_model_dir: Path) -> None:
    done = cli("info", "--json", "--model", str(random_model_dir), "--quantize", "4bit")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["quantization"] == "4bit" and info["noise_kind"] == "mask"
    assert info["quantized_fraction"] > 0.9 and info["footprint_bytes"] > 0


def test_fill_prints_the_replacement_or_says_why_not(constant_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "todo.py"
    source.write_text("def f(x):\n    pass\n\n\nprint(f(1))\n")
    model = ("--model", str(constant_model_dir))
    body = cli("fill", str(source), "--line", "2", "--col", "5", *model)  # the empty body at the cursor
    assert body.returncode == 0, body.stderr
    assert set(body.stdout.strip()) == {tiny.CONSTANT_TOKEN}  # `xxx...` is code and parses there
    closer = tmp_path / "closer.py"
    closer.write_text("total = (1 +\n         2)\nprint(total)\n")
    broken = cli("fill", str(closer), "--lines", "2", *model)
    assert broken.returncode == 0 and not broken.stdout  # no `xxx...` candidate closes the parenthesis
    assert "nothing to fill here" in broken.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--lines", "3-1"), "1 <= A <= B"),
        (("--lines", "40"), "outside the file"),
        (("--line", "5"), "no empty body or TODO line"),
        ((), "give --lines"),
    ],
)
def test_fill_usage_errors_before_loading_any_model(
    flags: tuple[str, ...], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "todo.py"
    source.write_text("def f(x):\n    pass\n\n\nprint(f(1))\n")
    assert main(["fill", str(source), *flags, "--model", str(tmp_path / "no-model")]) == 2
    assert message in capsys.readouterr().err
