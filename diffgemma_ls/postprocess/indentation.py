"""Indent completed lines with the file's tabs or spaces.

The model was trained mostly on space-indented code, so in a tab-indented file it may answer with
spaces (and in a space-indented file, rarely, with tabs). Only the leading whitespace of each line
is rewritten, by width: a tab is ``TAB_WIDTH`` columns, as is one level of model indentation in a
tab file. Alignment that is not a whole level stays as spaces after the tabs.

The first line continues the cursor line, so it is only touched when nothing but whitespace
precedes the cursor, and then together with that whitespace.
"""

from __future__ import annotations

from diffgemma_ls.context import InfillContext

TAB_WIDTH = 4


def width(indent: str, tab_width: int = TAB_WIDTH) -> int:
    """Columns of leading whitespace."""
    return sum(tab_width if char == "\t" else 1 for char in indent)


def _reindent(line: str, unit: str) -> str:
    body = line.lstrip(" \t")
    indent = line[: len(line) - len(body)]
    if unit == "\t":
        if " " not in indent:
            return line
        columns = width(indent)
        return "\t" * (columns // TAB_WIDTH) + " " * (columns % TAB_WIDTH) + body
    if "\t" not in indent:
        return line
    return " " * width(indent, len(unit)) + body


def match_indentation(text: str, ctx: InfillContext) -> str:
    first, *rest = text.split("\n")
    if not ctx.line_prefix.strip():
        whole = _reindent(ctx.line_prefix + first, ctx.indent_unit)
        if whole.startswith(ctx.line_prefix):
            first = whole[len(ctx.line_prefix) :]
    return "\n".join([first, *(_reindent(line, ctx.indent_unit) for line in rest)])
