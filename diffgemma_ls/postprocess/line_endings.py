"""Line breaks: ``\\n`` while filtering, the document's own style in the result.

The model may echo the prompt's ``\\r\\n``; the filters split on ``\\n`` only, so everything is
normalized first, and converted back last so a CRLF file does not get mixed line endings.
"""

from __future__ import annotations

import re

from diffgemma_ls.context import InfillContext

_LINE_BREAK = re.compile(r"\r\n|\r")


def normalize_newlines(text: str, ctx: InfillContext) -> str:
    return _LINE_BREAK.sub("\n", text)


def to_document_line_endings(text: str, ctx: InfillContext) -> str:
    return text.replace("\n", ctx.line_ending) if ctx.line_ending != "\n" else text
