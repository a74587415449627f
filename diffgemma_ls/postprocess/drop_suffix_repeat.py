"""Drop the end of a completion that repeats what already follows the cursor.

A FIM model that does not trust the suffix writes it again: the closing ``}`` of a block that is
already there, the ``return x`` on the next line, the ``, b)`` after the cursor. Two checks:

* whole lines: if the completion's last lines (from its second line on) are the first non-blank
  lines that follow it, they are dropped. Indentation must match too, or the ``}`` closing a
  block the model opened would pass for the ``}`` of the enclosing one. Text after the cursor
  on its line counts as a line after the cursor line's indentation (where ``trim_trailing`` puts it);
* within the line: a completion ending with the rest of the cursor line loses that ending, unless
  the rest of the line is only closing characters, which ``closing_chars`` handles with brackets
  counted.
"""

from __future__ import annotations

import re

from diffgemma_ls.context import InfillContext

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _following_lines(ctx: InfillContext) -> list[str]:
    """Non-blank lines after the cursor as they will stand after a multi-line completion."""
    rest, *lines = _LINE_BREAK.split(ctx.suffix)
    following = [(ctx.line_indent + rest).rstrip()] if rest.strip() else []
    return following + [line.rstrip() for line in lines if line.strip()]


def _drop_repeated_lines(text: str, ctx: InfillContext) -> str:
    lines = text.split("\n")
    following = _following_lines(ctx) if len(lines) > 1 else []
    for start in range(1, len(lines)):
        tail = [line.rstrip() for line in lines[start:] if line.strip()]
        if tail and tail == following[: len(tail)]:
            return "\n".join(lines[:start])
    return text


def drop_suffix_repeat(text: str, ctx: InfillContext) -> str:
    text = _drop_repeated_lines(text, ctx)
    rest = ctx.line_suffix.strip()
    if rest and not ctx.rest_is_closing and "\n" not in text and text.rstrip().endswith(rest):
        text = text.rstrip()[: -len(rest)]
    return text
