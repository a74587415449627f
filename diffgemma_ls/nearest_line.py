"""Copy the nearest line of the file that matches what is typed: the bench's floor, the model's rival.

Code repeats itself (``self.x = x`` under ``self.y = y``, the same ``return`` in two branches), so
a completion that only copies is a real, free baseline. The typed part of the cursor line (after
its indentation) must be a prefix of the copied line; the nearest such line wins (the line above
on a tie), and what follows the typed part is the completion. It is always one line: for block
tasks it is a deliberately weak floor.

The bench scores it on whole files as the floor a model must beat. On an explicit line request
with no anchored copy (``anchored``: a line between the same neighbours elsewhere, which wins when
there is one), the server offers it, from the whole document, as a rival to the model's own answer
(``Engine.infill``'s ``rivals``). Where something is typed on the cursor line the copy wins
outright: a small model copies poorly and, judging by its own likelihood, preferred its text to a
right copy of names it had never seen. On an empty line the model's likelihood picks (the nearest
line is a guess there).
"""

from __future__ import annotations


def nearest_line_completion(prefix: str, suffix: str) -> str:
    """The completion at the cursor between ``prefix`` and ``suffix``; ``""`` when nothing matches."""
    above, below = lines_around(prefix, suffix)
    typed = cursor_line_start(prefix)
    stem = typed.lstrip(" \t")
    for distance in range(1, max(len(above), len(below)) + 1):  # above before below on a tie
        for lines, index in ((above, -distance), (below, distance - 1)):
            if distance > len(lines):
                continue
            line = lines[index]
            content = line.lstrip(" \t")
            if content.strip() and content.startswith(stem) and len(content) > len(stem):
                # at column 0 nothing is indented yet: the copy brings its own indentation
                return line.rstrip() if not typed else content[len(stem) :].rstrip()
    return ""


def cursor_line_start(prefix: str) -> str:
    """What is on the cursor line before the cursor."""
    cut = max(prefix.rfind("\n"), prefix.rfind("\r"))
    return prefix[cut + 1 :]


def lines_around(prefix: str, suffix: str) -> tuple[list[str], list[str]]:
    """The whole lines above the cursor's line and below it, nearest last and first."""
    before = prefix.splitlines()
    above = before[:-1] if before and not prefix.endswith(("\n", "\r")) else before
    return above, suffix.splitlines()[1:]
