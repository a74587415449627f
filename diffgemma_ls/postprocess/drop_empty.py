"""A completion of nothing but whitespace is no completion: ghost text the user cannot see."""

from __future__ import annotations

from diffgemma_ls.context import InfillContext


def drop_empty(text: str, ctx: InfillContext) -> str | None:
    return text if text.strip() else None
