"""Block mode stays inside the block: stop at the first line indented less than its body.

A model that finished the body goes on to write the next function or the code after the block;
indentation says where the body ends, in every language here. Lines made only of closing
characters (``}``, ``});``) at a shallower indentation close the block: one is kept when the
document does not close the block already (nothing like it follows the cursor), and the text
stops after it.

The first line counts when only whitespace precedes the cursor (it is then a whole line).
"""

from __future__ import annotations

import re

from diffgemma_ls.context import InfillContext
from diffgemma_ls.postprocess.indentation import width

_CLOSING_LINE = re.compile(r"[)\]}]+[;,)]*")


def _already_closed(ctx: InfillContext) -> bool:
    """Whether the text after the cursor starts with a closing bracket (the editor auto-closed)."""
    rest = ctx.suffix.lstrip()
    return rest[:1] in (")", "]", "}")


def limit_scope(text: str, ctx: InfillContext) -> str:
    if ctx.mode != "block":
        return text
    lines = text.split("\n")
    body = width(ctx.indent)
    for number, line in enumerate(lines):
        if not line.strip() or (number == 0 and ctx.line_prefix.strip()):
            continue
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if width((ctx.line_prefix if number == 0 else "") + indent) >= body:
            continue
        keep = number + 1 if _CLOSING_LINE.fullmatch(line.strip()) and not _already_closed(ctx) else number
        return "\n".join(lines[:keep])
    return text
