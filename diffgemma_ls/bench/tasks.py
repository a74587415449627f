"""The bench's infilling tasks: HumanEval-Infilling, plus held-out cuts of real files.

Suites (``SUITES``), each a list of ``Task`` in a fixed order, so ``--limit N`` always takes the
same first N and two runs of the bench compare like with like:

- ``he-line``: HumanEval-Infilling single-line (1,033 tasks over 164 problems); completion mode
  ``line``, since the suite promises one line.
- ``he-span``: HumanEval-Infilling random-span-light (164 tasks); mode ``auto``, since a span has
  no shape an editor could know, so the request is what an explicitly invoked completion gets.
- ``ho-line``, ``ho-tail``, ``ho-block``: a whole line after its indentation, the rest of a line
  from a random column, and a tree-sitter ``block`` (a body) of at most ``MAX_BLOCK_LINES`` lines,
  cut from files the default model never trained on; modes ``line``, ``line``, ``block``.
- ``ho-fill``: a whole function body (from its first statement to the end of its last) of at most
  ``MAX_FILL_LINES`` lines from the same files, regenerated as the server's "Fill with
  DiffusionGemma" does (mode ``fill``: up to ``FILL_CANVASES`` canvases, length chosen by the model).

Held-out files: ``model/corpus.py`` splits its corpus **by file** (``is_val``: a hash of the
path) after filtering, dedup and HumanEval decontamination. The bench does not import ``model``
(it is not installed with the package, and its split needs the corpus build); the split is
frozen instead in ``data/heldout_files.json``: the path (relative to the standard-library
directory, as in ``corpus.py``) and the sha1 of every held-out file. Files are read from the
running Python's installation and used only when the sha1 matches, so a file that differs from
what was held out (another Python version, upgraded site-packages) is skipped, never silently
replaced by something the model may have trained on; the report says how many were found.
Regenerate after a corpus rebuild: ``python -m diffgemma_ls.bench.tasks model/work/corpus/val.jsonl``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tree_sitter import Node

from diffgemma_ls.languages import get_parser

SUITES = ("he-line", "he-span", "ho-line", "ho-tail", "ho-block", "ho-fill")
HUMANEVAL_FILES = {
    "he-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "he-span": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
MAX_LINE_CHARS = 100  # longer lines are data, not the typing a completion helps with
MAX_BLOCK_LINES = 8  # about what 3 canvases of 32 tokens hold
MAX_BLOCK_CHARS = 320
MAX_FILL_LINES = 12  # a body a person would select and ask to have rewritten
MAX_FILL_CHARS = 480
_NOT_CODE = frozenset({"comment", "string", "string_content", "string_start", "string_end"})


@dataclass(frozen=True)
class Task:
    """One completion request and its reference answer."""

    task_id: str
    suite: str
    prefix: str
    suffix: str
    target: str  # the text that was cut out
    mode: str  # completion mode for ``complete_text``: line, block or auto
    language: str = "python"
    test: str = ""  # HumanEval's ``check`` source; empty where there is no test (no pass@1)
    entry_point: str = ""
    path: str = ""  # the held-out file on disk (its folder is the workspace); empty for HumanEval

    @property
    def document(self) -> str:
        """The original file, the target in place."""
        return self.prefix + self.target + self.suffix


def _data_dir():
    return resources.files("diffgemma_ls.bench") / "data"


def _shuffled(tasks: list[Task], seed: str) -> list[Task]:
    """A fixed permutation, so the first N of a suite are a uniform sample of it."""
    return sorted(tasks, key=lambda t: hashlib.sha1(f"{seed}:{t.task_id}".encode()).hexdigest())


def humaneval_tasks(suite: str) -> list[Task]:
    """One HumanEval-Infilling suite (vendored in ``data/humaneval_infilling``, MIT, OpenAI)."""
    path = _data_dir() / "humaneval_infilling" / HUMANEVAL_FILES[suite]
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    tasks = [
        Task(
            task_id=row["task_id"],
            suite=suite,
            prefix=row["prompt"],
            suffix=row["suffix"],
            target=row["canonical_solution"],
            mode="line" if suite == "he-line" else "auto",
            test=row["test"],
            entry_point=row["entry_point"],
        )
        for row in rows
    ]
    return _shuffled(tasks, suite)


def stdlib_dir() -> Path:
    """Where ``model/corpus.py`` reads its sources from (paths in the manifest are relative to it)."""
    return Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class HeldOutFiles:
    texts: dict[str, str]  # path -> text, in manifest order
    listed: int  # files in the manifest


def heldout_files(root: Path | None = None) -> HeldOutFiles:
    """The manifest's files found under ``root`` with the recorded sha1."""
    root = root or stdlib_dir()
    manifest = json.loads((_data_dir() / "heldout_files.json").read_text(encoding="utf-8"))
    texts = {}
    for entry in manifest["files"]:
        try:
            text = (root / entry["path"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if hashlib.sha1(text.encode("utf-8")).hexdigest() == entry["sha1"]:
            texts[entry["path"]] = text
    return HeldOutFiles(texts, len(manifest["files"]))


def _line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each line's content."""
    spans, start = [], 0
    for line in text.splitlines(keepends=True):
        content = line.rstrip("\r\n")
        spans.append((start, start + len(content)))
        start += len(line)
    return spans


def _walk(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _is_code_at(root: Node, byte: int) -> bool:
    """Whether ``byte`` starts code rather than a comment or the inside of a string."""
    node = root.descendant_for_byte_range(byte, byte)
    while node is not None:
        if node.type in _NOT_CODE:
            return False
        node = node.parent
    return True


def cut_file(path: str, text: str, per_kind: int = 1, folder: Path | None = None) -> list[Task]:
    """At most ``per_kind`` tasks per held-out kind from one file, at positions drawn from the path's
    hash; ``folder`` is what ``path`` is relative to (default: the standard library)."""
    rng = random.Random(hashlib.sha1(path.encode()).hexdigest())
    data = text.encode("utf-8")
    parser = get_parser("python")
    assert parser is not None  # tree-sitter-python is a dependency
    root = parser.parse(data).root_node
    if root.has_error:
        return []
    char_at = _byte_to_char(text)
    lines = []
    for start, end in _line_spans(text):
        line = text[start:end]
        indent = len(line) - len(line.lstrip(" \t"))
        content = line.strip()
        if len(content) >= 4 and end - start <= MAX_LINE_CHARS and not content.startswith(("#", "@")):
            byte = len(text[: start + indent].encode("utf-8"))
            if _is_code_at(root, byte):
                lines.append((start + indent, end))
    tasks = []
    folder = stdlib_dir() if folder is None else folder
    cut = lambda suite, start, end, mode: _task(path, suite, text, start, end, mode, folder)  # noqa: E731
    for _ in range(per_kind if lines else 0):
        start, end = rng.choice(lines)
        tasks.append(cut("ho-line", start, end, "line"))
        start, end = rng.choice(lines)
        tasks.append(cut("ho-tail", rng.randrange(start + 1, end - 1), end, "line"))
    blocks = [
        (char_at[n.start_byte], char_at[n.end_byte])
        for n in _walk(root)
        if n.type == "block" and n.end_point.row - n.start_point.row < MAX_BLOCK_LINES
    ]
    blocks = [(a, b) for a, b in blocks if 0 < b - a <= MAX_BLOCK_CHARS]
    for _ in range(per_kind if blocks else 0):
        start, end = rng.choice(blocks)
        tasks.append(cut("ho-block", start, end, "block"))
    bodies = [
        (char_at[n.start_byte], char_at[n.end_byte])
        for n in _walk(root)
        if n.type == "block"
        and n.parent is not None
        and n.parent.type == "function_definition"
        and n.end_point.row - n.start_point.row < MAX_FILL_LINES
    ]
    bodies = [(a, b) for a, b in bodies if 0 < b - a <= MAX_FILL_CHARS]
    for _ in range(per_kind if bodies else 0):
        start, end = rng.choice(bodies)
        tasks.append(cut("ho-fill", start, end, "fill"))
    return list({task.task_id: task for task in tasks}.values())  # a position drawn twice counts once


def _byte_to_char(text: str) -> dict[int, int]:
    """Character offset of every UTF-8 byte offset that starts a character (and of the end)."""
    mapping, byte = {}, 0
    for i, ch in enumerate(text):
        mapping[byte] = i
        byte += len(ch.encode("utf-8"))
    mapping[byte] = len(text)
    return mapping


def _task(path: str, suite: str, text: str, start: int, end: int, mode: str, folder: Path) -> Task:
    return Task(
        task_id=f"{suite}/{path}:{text.count(chr(10), 0, start) + 1}:{start}",
        suite=suite,
        prefix=text[:start],
        suffix=text[end:],
        target=text[start:end],
        mode=mode,
        path=str(folder / path),
    )


def heldout_tasks(files: HeldOutFiles, limit: int | None) -> dict[str, list[Task]]:
    """The held-out suites, at most ``limit`` tasks each, from files in a fixed shuffled order.

    Files are cut one at a time until every suite is full, since parsing all of them costs seconds.
    """
    by_suite: dict[str, list[Task]] = {"ho-line": [], "ho-tail": [], "ho-block": [], "ho-fill": []}
    order = sorted(files.texts, key=lambda path: hashlib.sha1(f"heldout:{path}".encode()).hexdigest())
    for path in order:
        if limit is not None and all(len(tasks) >= limit for tasks in by_suite.values()):
            break
        for task in cut_file(path, files.texts[path]):
            by_suite[task.suite].append(task)
    return {suite: tasks[:limit] for suite, tasks in by_suite.items()}


def load_tasks(suites: tuple[str, ...], limit: int | None) -> tuple[list[Task], dict[str, object]]:
    """The first ``limit`` tasks of each suite, and what was available (for the report)."""
    info: dict[str, object] = {}
    pools: dict[str, list[Task]] = {}
    if any(s.startswith("ho-") for s in suites):
        files = heldout_files()
        info["heldout_files_found"] = f"{len(files.texts)}/{files.listed}"
        pools.update(heldout_tasks(files, limit))
    for suite in suites:
        if suite in HUMANEVAL_FILES:
            pools[suite] = humaneval_tasks(suite)[:limit]
    chosen = [task for suite in suites for task in pools[suite]]
    info["tasks_per_suite"] = {suite: len(pools[suite]) for suite in suites}
    return chosen, info


def write_manifest(val_jsonl: Path, out: Path) -> int:
    """Freeze ``model/corpus.py``'s held-out split (its ``val.jsonl``) into the manifest."""
    entries = []
    with open(val_jsonl, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            digest = hashlib.sha1(row["text"].encode("utf-8")).hexdigest()
            entries.append(json.dumps({"path": row["path"], "sha1": digest}))
    manifest = json.loads((_data_dir() / "heldout_files.json").read_text(encoding="utf-8"))
    header = f'{{\n"about": {json.dumps(manifest["about"])},\n"python": "{sys.version_info.major}.'
    header += f'{sys.version_info.minor}",\n"files": [\n'
    out.write_text(header + ",\n".join(entries) + "\n]\n}\n", encoding="utf-8")
    return len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the held-out manifest from the corpus build.")
    parser.add_argument("val_jsonl", type=Path, help="model/work/corpus/val.jsonl")
    default_out = Path(__file__).resolve().parent / "data" / "heldout_files.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    print(f"{write_manifest(args.val_jsonl, args.out)} files -> {args.out}")


if __name__ == "__main__":
    main()
