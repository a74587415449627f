"""Cross-file context: chunks of other files that look like the code at the cursor.

A small model cannot know a repository's names (``self._pending_reads``, ``make_conn(...)``) from the
current file alone; a sibling module that uses them can show it. As llama.vscode and Tabby do, files
are cut into chunks of ``CHUNK_LINES`` lines (overlapping by half), and the chunks whose identifiers
overlap most with the lines around the cursor (Jaccard) go into the prompt, best last (nearest the
cursor), within a character budget. Training (``model/data.py``) and serving use these same
functions, so the model sees at inference what it learned from.

Pure (no torch, no protocol).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CHUNK_LINES = 16
QUERY_LINES = 12  # lines before the cursor (and a few after) that the chunks are ranked against
MIN_SCORE = 0.05  # below this overlap a chunk is noise, not context
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")  # 3+ characters: `i`, `x`, `fn` say nothing
# Keywords and names every file has: sharing them says nothing about sharing a subject.
COMMON_NAMES = frozenset({
    "and", "as", "assert", "async", "await", "break", "case", "class", "const", "continue", "def",
    "del", "elif", "else", "enum", "except", "export", "false", "finally", "for", "from", "func",
    "function", "global", "import", "impl", "interface", "lambda", "let", "match", "mut", "new",
    "none", "nonlocal", "not", "null", "package", "pass", "print", "pub", "raise", "return", "self",
    "static", "struct", "super", "this", "true", "try", "type", "use", "var", "void", "while", "with",
    "yield", "len", "range", "str", "int",
})  # fmt: skip


@dataclass(frozen=True)
class Snippet:
    """A chunk of another file, named by its path relative to the workspace (the prompt shows it)."""

    path: str
    text: str


@dataclass(frozen=True)
class Chunk:
    path: str
    start: int  # first line, 0-based
    text: str
    names: frozenset[str]


def names(text: str) -> frozenset[str]:
    return frozenset(n for n in _IDENTIFIER.findall(text) if n.lower() not in COMMON_NAMES)


def chunks_of(path: str, text: str) -> list[Chunk]:
    """``text`` cut into chunks of ``CHUNK_LINES`` lines every ``CHUNK_LINES // 2``; blank ones dropped."""
    lines = text.splitlines(keepends=True)
    step = CHUNK_LINES // 2
    out = []
    for start in range(0, max(1, len(lines) - step), step):
        body = "".join(lines[start : start + CHUNK_LINES])
        found = names(body)
        if found:
            out.append(Chunk(path, start, body, found))
    return out


def query_of(prefix: str, suffix: str) -> frozenset[str]:
    """The identifiers the chunks are ranked against: the last lines before the cursor, a few after."""
    before = prefix.splitlines()[-QUERY_LINES:]
    after = suffix.splitlines()[: QUERY_LINES // 4]
    return names("\n".join(before + after))


def best_snippets(chunks: Iterable[Chunk], query: frozenset[str], budget_chars: int) -> list[Snippet]:
    """The chunks that overlap ``query`` most, at most ``budget_chars`` in all, best last.

    Two chunks of the same file that overlap in lines are not both taken (half of one repeats the
    other). ``[]`` for an empty query or budget.
    """
    if not query or budget_chars <= 0:
        return []
    scored = []
    for chunk in chunks:
        shared = len(query & chunk.names)
        if shared:
            score = shared / len(query | chunk.names)
            if score >= MIN_SCORE:
                scored.append((score, chunk))
    scored.sort(key=lambda pair: -pair[0])
    taken: list[Chunk] = []
    used = 0
    for _, chunk in scored:
        if used + len(chunk.text) > budget_chars:
            continue
        if any(o.path == chunk.path and abs(o.start - chunk.start) < CHUNK_LINES for o in taken):
            continue
        taken.append(chunk)
        used += len(chunk.text)
    return [Snippet(c.path, c.text) for c in reversed(taken)]


class ChunkIndex:
    """The chunks of many files, with an inverted index so ranking touches only chunks that share a
    name with the query (a workspace holds ~10^5 chunks; a keystroke cannot score them all).

    Names in more than ``COMMON_FRACTION`` of the chunks (``self``, ``return``) do not make a chunk
    a candidate on their own, but count in its score as in ``best_snippets``.
    """

    COMMON_FRACTION = 0.05

    def __init__(self) -> None:
        self._files: dict[str, list[Chunk]] = {}
        self._postings: dict[str, set[tuple[str, int]]] = {}  # name -> (path, chunk index)

    def __len__(self) -> int:
        return sum(map(len, self._files.values()))

    def set_file(self, key: str, label: str, text: str | None) -> None:
        """Index ``text`` under ``key`` (its snippets named ``label``); ``None`` forgets the file."""
        for i, chunk in enumerate(self._files.pop(key, ())):
            for name in chunk.names:
                postings = self._postings[name]
                postings.discard((key, i))
                if not postings:
                    del self._postings[name]
        if text is None:
            return
        chunks = chunks_of(label, text)
        self._files[key] = chunks
        for i, chunk in enumerate(chunks):
            for name in chunk.names:
                self._postings.setdefault(name, set()).add((key, i))

    def best(self, query: frozenset[str], budget_chars: int, exclude: str = "") -> list[Snippet]:
        """``best_snippets`` over the indexed chunks, leaving out file ``exclude``."""
        common = max(8, int(len(self) * self.COMMON_FRACTION))
        found: set[tuple[str, int]] = set()
        for name in query:
            postings = self._postings.get(name, ())
            if len(postings) <= common:
                found.update(postings)
        chunks = [self._files[key][i] for key, i in found if key != exclude]
        chunks.sort(key=lambda c: (c.path, c.start))  # ties go the same way on every call
        return best_snippets(chunks, query, budget_chars)


def snippet_text(snippets: Sequence[Snippet]) -> list[str]:
    """How each snippet is written in a FIM prompt after its ``<|file_separator|>``: path, newline, code."""
    return [f"{s.path}\n{s.text}" if s.text.endswith("\n") else f"{s.path}\n{s.text}\n" for s in snippets]
