"""Warm start: seed a request's canvas with what is still valid of the previous request's canvas.

While a person types, the request for the previous keystroke is usually superseded before its canvas
is fully denoised, and its committed tokens are thrown away. When the characters typed since are
exactly the start of that canvas, the rest of it is still a valid start for the new one: shifted
left past the typed characters (canvas position 0 is always the token right after the prompt, i.e.
at the cursor), its committed tokens seed the new canvas, so the denoiser only decides the positions
left open. Pure: token ids and strings in, token ids out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The previous prefix must be found within this many characters before the cursor (typing, not edits)
MAX_TYPED = 64
# Characters of the previous prefix that must reappear right before what was typed, when the context
# window's start moved (a prefix cut to a token budget loses lines at the top as lines are added).
ANCHOR_CHARS = 256


@dataclass(frozen=True)
class Draft:
    """The first canvas of a request: its tokens and which of them the sampler had committed."""

    prefix: str
    suffix: str
    tokens: tuple[int, ...]
    committed: tuple[bool, ...]


@dataclass(frozen=True)
class Seed:
    """A starting canvas (possibly shorter than the canvas): committed tokens, ``None`` for open ones."""

    tokens: tuple[int | None, ...]

    @property
    def committed(self) -> int:
        return self.committed_within(len(self.tokens))

    def committed_within(self, canvas_length: int) -> int:
        """Committed tokens that fit a canvas of ``canvas_length`` (the rest are dropped)."""
        return sum(t is not None for t in self.tokens[:canvas_length])


def typed_since(previous_prefix: str, prefix: str) -> str | None:
    """The text typed at the cursor since ``previous_prefix``, or ``None`` if it was not just typing."""
    if prefix.startswith(previous_prefix):
        typed = prefix[len(previous_prefix) :]
        return typed if len(typed) <= MAX_TYPED else None
    if len(previous_prefix) < ANCHOR_CHARS:
        return None
    anchor = previous_prefix[-ANCHOR_CHARS:]
    for n in range(min(MAX_TYPED, len(prefix)) + 1):
        if prefix[: len(prefix) - n].endswith(anchor):
            return prefix[len(prefix) - n :]
    return None


def seed_from(
    draft: Draft,
    prefix: str,
    suffix: str,
    piece: Callable[[int], str],
    encode: Callable[[str], list[int]],
    end_ids: set[int],
) -> Seed | None:
    """The still-valid part of ``draft`` for a request at (``prefix``, ``suffix``), or ``None``.

    Valid when the suffix is unchanged and the characters typed since are exactly the text of the
    draft's leading committed tokens. ``piece`` is one token's text; ``encode`` tokenizes the rest of
    a token the typing ended inside of. ``None`` also when nothing committed would be seeded, or
    only the end of the draft (all of it was typed: the next completion is a new one).
    """
    if suffix != draft.suffix:
        return None
    typed = typed_since(draft.prefix, prefix)
    if typed is None:
        return None
    i = 0
    while typed:
        if i >= len(draft.tokens) or not draft.committed[i] or draft.tokens[i] in end_ids:
            return None
        text = piece(draft.tokens[i])
        if not text or "\ufffd" in text:  # part of a multi-byte character: no safe alignment
            return None
        if typed.startswith(text):
            typed = typed[len(text) :]
            i += 1
        elif text.startswith(typed):  # typing stopped inside this token: seed the rest of it
            head = tuple(encode(text[len(typed) :]))
            return _seed(head, draft.tokens[i + 1 :], draft.committed[i + 1 :], end_ids)
        else:
            return None
    return _seed((), draft.tokens[i:], draft.committed[i:], end_ids)


def _seed(
    head: tuple[int, ...], tokens: tuple[int, ...], committed: tuple[bool, ...], end_ids: set[int]
) -> Seed | None:
    seed = Seed(head + tuple(t if c else None for t, c in zip(tokens, committed, strict=True)))
    if not seed.committed or (seed.tokens and seed.tokens[0] in end_ids):
        return None
    return seed
