"""Line mode completes the cursor line only: keep text up to the first line break.

On a line with nothing but whitespace before the cursor, leading empty lines are skipped first:
a model that starts with a newline there still meant the statement after it.
"""

from __future__ import annotations

from diffgemma_ls.context import InfillContext


def keep_first_line(text: str, ctx: InfillContext) -> str:
    if ctx.mode != "line":
        return text
    if not ctx.line_prefix.strip():
        text = text.lstrip("\n")
    return text.split("\n", 1)[0]
