"""Copy the line that sits between the same lines elsewhere: a copy anchored by its neighbours.

``nearest_line`` only asks that a line start with what is typed; on an empty line that is a guess.
Code repeats itself in runs (the same setup in two tests, the same ``except`` after the same
``try``, a sibling module assigning the same fields in its ``__init__``), so where the line above
the cursor, or the one below it, also stands elsewhere, the line next to it there is a much better
guess than the model's or the nearest line's (docs/benchmarks.md, "Anchored copies").

The cursor's neighbours are its nearest non-blank lines above and below, compared without their
indentation. A candidate is a non-blank line of the document (not the cursor's own) or of another
file whose content starts with what is typed on the cursor line and goes on; its score is how many
neighbours match in a row next to it, above plus below, at most ``ANCHOR_LINES`` each way, and
at least one of the matching ones must have a letter or a digit (the quotes alone on the line
above a docstring's first line are also the ones below its last). The highest score wins, then the
document's own line, then the one nearest the cursor (in another file, the first file's first).
What follows the typed part is the completion.

For a block request the candidate is its line and the lines after it indented at least as deeply
(at most ``BLOCK_LINES``), the neighbours below are matched after the last of them, and the copy is
re-indented to the cursor's line.

Pure (no torch, no protocol).
"""

from __future__ import annotations

from collections.abc import Iterable

from diffgemma_ls.nearest_line import cursor_line_start, lines_around

ANCHOR_LINES = 8
BLOCK_LINES = 12
ANCHOR_WINDOW = 64_000  # characters of the document searched each way: ~2 ms, so a keystroke can afford it


class Lines:
    """A file's lines, the non-blank ones found by their stripped content (a neighbour's other places).

    ``None`` stands for the cursor's line in the document being completed: it is never a
    candidate and matches no neighbour, so the lines around it are not each other's neighbours.
    Positions (``kept``, ``at``) count non-blank lines only. ``lines`` is kept, not copied: a
    workspace file's index shares its lines with ``Workspace``.
    """

    def __init__(self, lines: list[str | None]):
        self.lines = lines
        self.kept: list[int] = []  # position -> line number
        self.at: dict[str, list[int]] = {}  # stripped content -> positions
        for i, line in enumerate(lines):
            content = None if line is None else line.strip()
            if content:
                self.at.setdefault(content, []).append(len(self.kept))
            if content or line is None:
                self.kept.append(i)

    @classmethod
    def of(cls, text: str) -> Lines:
        return cls(text.splitlines())

    def run(self, start: int, step: int, wanted: list[str]) -> int:
        """How many of ``wanted`` match, in a row, from position ``start`` going ``step`` (+1 or -1)."""
        count = 0
        for want in wanted:
            j = start + step * count
            line = self.lines[self.kept[j]] if 0 <= j < len(self.kept) else None
            if line is None or line.strip() != want:
                break
            count += 1
        return count

    def end(self, j: int) -> int:
        """The last position of the block that starts at ``j``: the lines after it indented as deeply."""
        depth = _indentation(self.lines[self.kept[j]])
        last = j
        while (
            last + 1 < len(self.kept)
            and last + 1 - j < BLOCK_LINES
            and (line := self.lines[self.kept[last + 1]]) is not None
            and _indentation(line) >= depth
        ):
            last += 1
        return last

    def best(
        self, stem: str, above: list[str], below: list[str], near: int = -1, block: bool = False
    ) -> tuple[int, int, list[str]]:
        """``(score, -distance to near, lines)`` of the best candidate here; score 0 when none.

        Only lines next to an occurrence of the nearest neighbour above or below can score.
        """
        found: tuple[int, int, list[str]] = (0, 0, [])
        places = {p + 1 for p in self.at.get(above[0], ())} if above else set()
        if below:
            places |= {p - 1 for p in self.at.get(below[0], ())}
        for j in sorted(places):
            if not 0 <= j < len(self.kept) or (line := self.lines[self.kept[j]]) is None:
                continue
            content = line.lstrip(" \t")
            if not content.startswith(stem) or len(content.rstrip()) <= len(stem.rstrip()):
                continue
            last = self.end(j) if block else j
            up, down = self.run(j - 1, -1, above), self.run(last + 1, 1, below)
            if not any(map(_telling, above[:up] + below[:down])):
                continue  # only brackets or quotes match: a docstring's closing quotes are its opening ones
            score = up + down
            distance = -abs(j - near) if near >= 0 else 0
            if (score, distance) > found[:2]:
                found = (score, distance, self.lines[self.kept[j] : self.kept[last] + 1])
        return found


def _telling(content: str) -> bool:
    """Whether a neighbour says where it is: it has a letter or a digit (a bracket or quotes do not)."""
    return any(ch.isalnum() for ch in content)


def _indentation(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def neighbours(prefix: str, suffix: str) -> tuple[list[str], list[str], list[str | None]]:
    """``(above, below, document)``: the cursor's non-blank neighbours, stripped, nearest first, and
    the document's lines with ``None`` for the cursor's."""
    above, below = lines_around(prefix, suffix)
    nearest = lambda lines: [s for s in (line.strip() for line in lines) if s][:ANCHOR_LINES]  # noqa: E731
    return nearest(reversed(above)), nearest(below), [*above, None, *below]


def anchored_completion(prefix: str, suffix: str, others: Iterable[Lines] = (), block: bool = False) -> str:
    """The anchored copy at the cursor between ``prefix`` and ``suffix`` (the document), from the
    document or ``others`` (the workspace's other files), one line or, with ``block``, a block;
    ``""`` when no neighbour matches."""
    typed = cursor_line_start(prefix)
    stem = typed.lstrip(" \t")
    above, below, document = neighbours(prefix, suffix)
    if not above and not below:
        return ""
    here = Lines(document)
    cursor = here.kept.index(document.index(None))
    score, _, lines = here.best(stem, above, below, near=cursor, block=block)
    for other in others:
        found = other.best(stem, above, below, block=block)
        if found[0] > score:
            score, lines = found[0], found[2]
    if score == 0:
        return ""
    if not typed:  # at column 0 nothing is indented yet: the copy brings its own indentation
        return "\n".join(line.rstrip() for line in lines)
    depth = _indentation(lines[0])
    indent = typed[: len(typed) - len(stem)]
    rest = [indent + line[depth:].rstrip() if line.strip() else "" for line in lines[1:]]
    return "\n".join([lines[0][depth + len(stem) :].rstrip(), *rest])
