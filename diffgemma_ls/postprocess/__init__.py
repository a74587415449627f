"""Post-processing: raw model text in, a completion the editor can show (or ``None``) out.

One filter per module, each a pure ``(text, context) -> text`` function, applied in this order:

1. ``cut_eos``: cut at a leaked special token - everything after it is not the middle.
2. ``line_endings.normalize_newlines``: ``\\n`` only, so every later filter can split on it.
   (then, for a chat prompt only, ``strip_markdown``: a reply's fences and preamble off)
3. ``indentation``: the file's tabs or spaces, before anything compares indentation.
4. ``single_line``: line mode keeps the first line.
5. ``limit_scope``: block mode stops where the indentation leaves the block.
6. ``drop_suffix_repeat``: drop an ending that repeats the text after the cursor; after the
   scope cut, so it sees the real end of the completion.
7. ``trim_trailing``: trailing whitespace off (and the rest of a ``{█}`` line onto its own line).
8. ``drop_empty``: nothing left to show -> ``None``.
9. ``line_endings.to_document_line_endings``: back to the document's ``\\r\\n`` if it uses them.
10. ``closing_chars``: last, on the final text: how much of the closers after the cursor
    the completion replaces (``Completion.replace_end``).

The filters see the cursor after ``InfillContext.lead`` (the indentation the editor would have
put there); the completion starts with it.

Golden cases in ``tests/golden/postprocess/`` pin the behaviour down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from diffgemma_ls.context import InfillContext
from diffgemma_ls.postprocess.closing_chars import replaced_closers
from diffgemma_ls.postprocess.cut_eos import cut_special_tokens
from diffgemma_ls.postprocess.drop_empty import drop_empty
from diffgemma_ls.postprocess.drop_suffix_repeat import drop_suffix_repeat
from diffgemma_ls.postprocess.indentation import match_indentation
from diffgemma_ls.postprocess.limit_scope import limit_scope
from diffgemma_ls.postprocess.line_endings import normalize_newlines, to_document_line_endings
from diffgemma_ls.postprocess.single_line import keep_first_line
from diffgemma_ls.postprocess.strip_markdown import strip_markdown
from diffgemma_ls.postprocess.trim_trailing import trim_trailing

Filter: TypeAlias = Callable[[str, InfillContext], str | None]

FILTERS: tuple[Filter, ...] = (
    cut_special_tokens,
    normalize_newlines,
    match_indentation,
    keep_first_line,
    limit_scope,
    drop_suffix_repeat,
    trim_trailing,
    drop_empty,
    to_document_line_endings,
)


@dataclass(frozen=True)
class Completion:
    """Text to insert at the cursor, replacing the ``replace_end`` characters after it."""

    text: str
    replace_end: int = 0  # characters after the cursor that the text replaces; 0 = plain insertion


CHAT_FILTERS: tuple[Filter, ...] = (*FILTERS[:2], strip_markdown, *FILTERS[2:])


def postprocess(raw: str, ctx: InfillContext, *, chat: bool = False) -> Completion | None:
    """Run the filters over the model's text; ``None`` when nothing worth showing is left.

    ``chat``: the text is a chat model's reply (the ``chat`` prompt format), fences and all.
    """
    if ctx.mode == "none":
        return None
    text = raw
    for step in CHAT_FILTERS if chat else FILTERS:
        result = step(text, ctx)
        if result is None:
            return None
        text = result
    return Completion(ctx.lead + text, replaced_closers(text, ctx))


__all__ = ["CHAT_FILTERS", "FILTERS", "Completion", "Filter", "postprocess"]
