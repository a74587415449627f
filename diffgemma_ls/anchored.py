"""Copy the line that sits between the same lines elsewhere: a copy anchored by its neighbours.

``nearest_line`` only asks that a line start with what is typed; on an empty line that is a guess.
Code repeats itself in runs (the same setup in two tests, the same ``except`` after the same
``try``, a sibling module assigning the same fields in its ``__init__``), so where the line above
the cursor, or the one below it, also stands elsewhere, the line next to it there is a much better
guess than the model's or the nearest line's (docs/benchmarks.md, "Anchored copies").

The cursor's neighbours are its nearest non-blank lines above and below, compared without their
indentation. A candidate is a non-blank line of the document (not the cursor's own) or of another
file whose content starts with what is typed on the cursor line and goes on; its score is how many
neighbours match in a row next to it, above plus below, at most ``ANCHOR_LINES`` each way. The
highest score wins (at least 1), then the document's own line, then the one nearest the cursor
(in another file, the first file's first). What follows the typed part is the completion, one line.

Pure (no torch, no protocol).
"""

from __future__ import annotations

from collections.abc import Iterable

from diffgemma_ls.nearest_line import cursor_line_start

ANCHOR_LINES = 8


class Lines:
    """A file's non-blank lines, found by their stripped content (a neighbour's other places).

    ``None`` stands for the cursor's line in the document being completed: it is never a
    candidate and matches no neighbour, so the lines around it are not each other's neighbours.
    """

    def __init__(self, lines: Iterable[str | None]):
        self.lines = [line for line in lines if line is None or line.strip()]
        self.stripped = [None if line is None else line.strip() for line in self.lines]
        self.at: dict[str, list[int]] = {}
        for i, content in enumerate(self.stripped):
            if content is not None:
                self.at.setdefault(content, []).append(i)

    @classmethod
    def of(cls, text: str) -> Lines:
        return cls(text.splitlines())

    def run(self, start: int, step: int, wanted: list[str]) -> int:
        """How many of ``wanted`` match, in a row, from line ``start`` going ``step`` (+1 or -1)."""
        count = 0
        for want in wanted:
            i = start + step * count
            if not 0 <= i < len(self.lines) or self.stripped[i] != want:
                break
            count += 1
        return count

    def best(self, stem: str, above: list[str], below: list[str], near: int = -1) -> tuple[int, int, str]:
        """``(score, -distance to near, line)`` of the best candidate here; score 0 when none.

        Only lines next to an occurrence of the nearest neighbour above or below can score.
        """
        found = (0, 0, "")
        places = {p + 1 for p in self.at.get(above[0], ())} if above else set()
        if below:
            places |= {p - 1 for p in self.at.get(below[0], ())}
        for j in sorted(places):
            line = self.lines[j] if 0 <= j < len(self.lines) else None
            if line is None:
                continue
            content = line.lstrip(" \t")
            if not content.startswith(stem) or len(content.rstrip()) <= len(stem.rstrip()):
                continue
            score = self.run(j - 1, -1, above) + self.run(j + 1, 1, below)
            candidate = (score, -abs(j - near) if near >= 0 else 0, line)
            if candidate[:2] > found[:2]:
                found = candidate
        return found


def neighbours(prefix: str, suffix: str) -> tuple[list[str], list[str], list[str | None]]:
    """``(above, below, document)``: the cursor's non-blank neighbours, stripped, nearest first, and
    the document's lines with ``None`` for the cursor's."""
    before = prefix.splitlines()
    above = before[:-1] if before and not prefix.endswith(("\n", "\r")) else before
    below = suffix.splitlines()[1:]
    nearest = lambda lines: [s for s in (line.strip() for line in lines) if s][:ANCHOR_LINES]  # noqa: E731
    return nearest(reversed(above)), nearest(below), [*above, None, *below]


def anchored_completion(prefix: str, suffix: str, others: Iterable[Lines] = ()) -> str:
    """The anchored copy at the cursor between ``prefix`` and ``suffix`` (the document), from the
    document or ``others`` (the workspace's other files); ``""`` when no neighbour matches."""
    typed = cursor_line_start(prefix)
    stem = typed.lstrip(" \t")
    above, below, document = neighbours(prefix, suffix)
    if not above and not below:
        return ""
    here = Lines(document)
    cursor = here.lines.index(None)
    score, _, line = here.best(stem, above, below, near=cursor)
    for lines in others:
        found = lines.best(stem, above, below)
        if found[0] > score:
            score, line = found[0], found[2]
    if score == 0:
        return ""
    # at column 0 nothing is indented yet: the copy brings its own indentation
    return line.rstrip() if not typed else line.lstrip(" \t")[len(stem) :].rstrip()
