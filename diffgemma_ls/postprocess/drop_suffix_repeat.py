"""Drop the end of a completion that repeats what already follows the cursor.

A FIM model that does not trust the suffix writes it again: the closing ``}`` of a block that is
already there, the ``return x`` on the next line, the ``, b)`` after the cursor. Two checks:

* whole lines: if the completion's last lines (from its second line on) are the suffix's first
  non-blank lines, compared without surrounding whitespace, they are dropped;
* within the line: a completion ending with the rest of the cursor line loses that ending, unless
  the rest of the line is only closing characters, which ``closing_chars`` handles with brackets
  counted.
"""

from __future__ import annotations

import re

from diffgemma_ls.context import InfillContext

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _drop_repeated_lines(text: str, suffix: str) -> str:
    lines = text.split("\n")
    following = [line.strip() for line in _LINE_BREAK.split(suffix) if line.strip()]
    for start in range(1, len(lines)):
        tail = [line.strip() for line in lines[start:] if line.strip()]
        if tail and tail == following[: len(tail)]:
            return "\n".join(lines[:start])
    return text


def drop_suffix_repeat(text: str, ctx: InfillContext) -> str:
    text = _drop_repeated_lines(text, ctx.suffix)
    rest = ctx.line_suffix.strip()
    if rest and not ctx.rest_is_closing and "\n" not in text and text.rstrip().endswith(rest):
        text = text.rstrip()[: -len(rest)]
    return text
