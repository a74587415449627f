"""The floor a model must beat: copy the nearest line of the file that matches what is typed.

Code repeats itself (``self.x = x`` under ``self.y = y``, the same ``return`` in two branches), so
a completion that only copies is a real, free baseline. The typed part of the cursor line (after
its indentation) must be a prefix of the copied line; the nearest such line wins (the line above
on a tie), and what follows the typed part is the completion. It is always one line: for block
tasks it is a deliberately weak floor.
"""

from __future__ import annotations


def nearest_line_completion(prefix: str, suffix: str) -> str:
    """The completion at the cursor between ``prefix`` and ``suffix``; ``""`` when nothing matches."""
    before = prefix.splitlines()
    above = before[:-1] if before and not prefix.endswith(("\n", "\r")) else before
    typed = _cursor_line_start(prefix)
    after = suffix.splitlines()
    below = after[1:] if after else []
    stem = typed.lstrip(" \t")
    candidates: list[tuple[int, str]] = [(i, line) for i, line in enumerate(reversed(above), start=1)]
    candidates += [(i, line) for i, line in enumerate(below, start=1)]
    for _, line in sorted(candidates, key=lambda c: c[0]):  # stable: above before below on a tie
        content = line.lstrip(" \t")
        if content.strip() and content.startswith(stem) and len(content) > len(stem):
            # at column 0 nothing is indented yet: the copy brings its own indentation
            return line.rstrip() if not typed else content[len(stem) :].rstrip()
    return ""


def _cursor_line_start(prefix: str) -> str:
    """What is on the cursor line before the cursor."""
    cut = max(prefix.rfind("\n"), prefix.rfind("\r"))
    return prefix[cut + 1 :]
