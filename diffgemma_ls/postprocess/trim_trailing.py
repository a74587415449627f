"""Trailing whitespace and blank lines of a completion are noise: drop them.

One exception: when a completion is inserted before text on the cursor line, that text must move
to a line of its own, at the cursor line's indentation: after a multi-line completion (the ``}``
of ``{█}``), and after a line written at the start of a line that holds code (an explicit
request there writes a new line before the code; see ``context``, "Lead").
"""

from __future__ import annotations

from diffgemma_ls.context import InfillContext


def trim_trailing(text: str, ctx: InfillContext) -> str:
    text = text.rstrip()
    new_line = ctx.mode == "line" and not ctx.line_prefix.strip() and not ctx.rest_is_closing
    if text and ctx.line_suffix.strip() and ("\n" in text or new_line):
        text += "\n" + ctx.line_indent
    return text
