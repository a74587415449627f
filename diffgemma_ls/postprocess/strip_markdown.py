"""A chat model's reply around its code: an opening fence (and any preamble before it) and a closing fence.

Only for the ``chat`` prompt (``prompt.py``): the model turn is pre-filled with an opening fence and
the cursor line, so the canvas should hold code only, up to a closing fence. A model that writes
``Here is the code:`` and a fence anyway, or closes the fence and goes on to explain, would otherwise
put that prose into the file. A code model's FIM middle is not filtered: a fence inside a docstring
is the file's own text there.
"""

from __future__ import annotations

import re

from diffgemma_ls.context import InfillContext

# a whole line that opens a fenced block with a language tag (```python), or only a fence
_OPENING = re.compile(r"^[ \t]*`{3,}[\w+#.-]+[ \t]*$")
_FENCE_LINE = re.compile(r"^[ \t]*`{3,}[\w+#.-]*[ \t]*$")
# a closing fence at the end of a line of code (`return x```)
_TRAILING_FENCE = re.compile(r"`{3,}[ \t]*$")


def strip_markdown(text: str, ctx: InfillContext) -> str:
    lines = text.split("\n")
    opening = next((i for i, line in enumerate(lines) if _FENCE_LINE.match(line)), None)
    if opening is not None and _OPENING.match(lines[opening]):
        lines = lines[opening + 1 :]  # a fence re-opened (with a preamble, or without)
    for i, line in enumerate(lines):
        if _FENCE_LINE.match(line):
            return "\n".join(lines[:i])
        trailing = _TRAILING_FENCE.search(line)
        if trailing:
            return "\n".join([*lines[:i], line[: trailing.start()]])
    return "\n".join(lines)
