"""Scoring one completion against its task: exact match, edit similarity, parse, pass@1.

A completion is judged in the document it produces, as the editor would apply it: inserted at the
cursor, replacing the ``replace_end`` characters after it (closing brackets it re-typed). So the
reference for the text is ``target + suffix[:replace_end]``, and the document is
``prefix + text + suffix[replace_end:]``. ``paired_difference`` compares two decodings task by task.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import fmean

from rapidfuzz.distance import Levenshtein

from diffgemma_ls.bench.sandbox import Limits, SandboxResult, run_python
from diffgemma_ls.bench.tasks import Task
from diffgemma_ls.fill import python_compiles
from diffgemma_ls.languages import get_parser, grammar_name

MAX_EDIT_CHARS = 2000  # longer texts are compared on their start (as every figure so far was)


def normalize(text: str) -> str:
    """Trailing whitespace of each line and blank lines around the text do not count."""
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def edit_similarity(prediction: str, reference: str) -> float:
    """``1 - levenshtein / max length`` on normalized text: 1.0 is identical, 0.0 shares nothing."""
    a, b = normalize(prediction)[:MAX_EDIT_CHARS], normalize(reference)[:MAX_EDIT_CHARS]
    if not a and not b:
        return 1.0
    return 1.0 - Levenshtein.distance(a, b) / max(len(a), len(b))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 20 samples p95 is the 19th, a real sample)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def paired_difference(
    ours: list[float], theirs: list[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``ours - theirs`` over the same tasks, with a 95% paired-bootstrap interval.

    Whether a decoding beats the nearest-line floor "clearly" is a question about the spread of
    per-task differences, not about two means: tasks are resampled with replacement, the same
    draw for both sides, and the 2.5th / 97.5th percentiles of the resampled means are the bounds.
    Seeded, so a rerun prints the same interval.
    """
    if len(ours) != len(theirs) or not ours:
        raise ValueError("paired_difference needs two equally long, non-empty lists")
    deltas = [a - b for a, b in zip(ours, theirs, strict=True)]
    rng = random.Random(seed)
    means = sorted(fmean(rng.choices(deltas, k=len(deltas))) for _ in range(resamples))
    return fmean(deltas), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def apply_completion(task: Task, text: str, replace_end: int = 0) -> str:
    """The document after the completion is accepted."""
    return task.prefix + text + task.suffix[replace_end:]


def parses(document: str, language: str) -> bool | None:
    """Whether the document parses; ``None`` without a grammar.

    Tree-sitter without an error node, and for Python also an AST compile (nothing runs):
    tree-sitter-python accepts an empty function body and some indentation errors, which would count
    a fill that left a body empty as valid code.
    """
    grammar = grammar_name(language)
    parser = get_parser(grammar) if grammar else None
    if parser is None:
        return None
    if parser.parse(document.encode("utf-8", errors="surrogatepass")).root_node.has_error:
        return False
    return python_compiles(document) if grammar == "python" else True


def humaneval_program(task: Task, document: str) -> str:
    """The completed solution followed by the problem's tests, as HumanEval runs them."""
    return f"{document}\n\n{task.test}\n\ncheck({task.entry_point})\n"


@dataclass(frozen=True)
class Score:
    exact: bool
    edit_similarity: float
    parses: bool | None  # None: no grammar, or the original file did not parse either
    passed: bool | None  # None: the task has no tests


class Scorer:
    """Scores completions; sandbox runs are cached by program text, since modes often agree."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._runs: dict[str, SandboxResult] = {}
        self._original_parses: dict[str, bool | None] = {}

    def run(self, program: str) -> SandboxResult:
        if program not in self._runs:
            self._runs[program] = run_python(program, self.limits)
        return self._runs[program]

    @property
    def sandbox_runs(self) -> int:
        return len(self._runs)

    def score(self, task: Task, text: str, replace_end: int = 0) -> Score:
        reference = task.target + task.suffix[:replace_end]
        document = apply_completion(task, text, replace_end)
        if task.task_id not in self._original_parses:
            self._original_parses[task.task_id] = parses(task.document, task.language)
        parse = parses(document, task.language) if self._original_parses[task.task_id] else None
        passed = None
        if task.test:
            passed = self.run(humaneval_program(task, document)).status == "passed"
        return Score(
            exact=normalize(text) == normalize(reference),
            edit_similarity=edit_similarity(text, reference),
            parses=parse,
            passed=passed,
        )
