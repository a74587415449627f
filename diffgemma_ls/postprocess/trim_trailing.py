"""Trailing whitespace and blank lines of a completion are noise: drop them.

One exception: when a multi-line completion is inserted before text on the cursor line (the ``}``
of ``{█}``), that text must move to a line of its own, at the cursor line's indentation.
"""

from __future__ import annotations

from diffgemma_ls.context import InfillContext


def trim_trailing(text: str, ctx: InfillContext) -> str:
    text = text.rstrip()
    if "\n" in text and ctx.line_suffix.strip():
        indent = ctx.line_prefix[: len(ctx.line_prefix) - len(ctx.line_prefix.lstrip(" \t"))]
        text += "\n" + indent
    return text
