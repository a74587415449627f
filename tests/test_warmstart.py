"""Warm start, pure: which part of the previous canvas is still valid after typing (no model)."""

from __future__ import annotations

import pytest

from diffgemma_ls.engine.warmstart import ANCHOR_CHARS, MAX_TYPED, Draft, seed_from, typed_since

# A toy vocabulary: one id per piece; 0 is the end token.
PIECES = {0: "", 1: "return", 2: " a", 3: " +", 4: " b", 5: "urn", 8: "\ufffd"}
IDS = {text: i for i, text in PIECES.items() if text}
END = {0}


def piece(token: int) -> str:
    return PIECES[token]


def encode(text: str) -> list[int]:
    """Greedy longest match over the toy vocabulary, one character ids otherwise (never hit here)."""
    ids, i = [], 0
    while i < len(text):
        match = max((p for p in IDS if text.startswith(p, i)), key=len)
        ids.append(IDS[match])
        i += len(match)
    return ids


DRAFT = Draft("def f(a, b):\n    ", "\n", (1, 2, 3, 4, 0, 0), (True, True, False, True, True, True))


@pytest.mark.parametrize(
    ("previous", "now", "typed"),
    [
        ("abc", "abc", ""),
        ("abc", "abcde", "de"),
        ("abc", "ab", None),  # deleted: not typing
        ("abc", "xbcde", None),  # an edit before the cursor
        ("abc", "abc" + "x" * (MAX_TYPED + 1), None),  # too far: a paste or another place
        ("y" * ANCHOR_CHARS, "z" + "y" * ANCHOR_CHARS + "q", "q"),  # the window's start moved
    ],
)
def test_typed_since(previous: str, now: str, typed: str | None) -> None:
    assert typed_since(previous, now) == typed


def test_same_state_seeds_the_committed_tokens_in_place() -> None:
    seed = seed_from(DRAFT, DRAFT.prefix, "\n", piece, encode, END)
    assert seed is not None and seed.tokens == (1, 2, None, 4, 0, 0)
    assert seed.committed == 5


def test_typing_a_whole_token_shifts_the_canvas_left() -> None:
    seed = seed_from(DRAFT, DRAFT.prefix + "return", "\n", piece, encode, END)
    assert seed is not None and seed.tokens == (2, None, 4, 0, 0)


def test_typing_inside_a_token_seeds_the_rest_of_it() -> None:
    seed = seed_from(DRAFT, DRAFT.prefix + "ret", "\n", piece, encode, END)
    assert seed is not None and seed.tokens == (5, 2, None, 4, 0, 0)  # "urn", then the rest


@pytest.mark.parametrize(
    ("typed", "suffix"),
    [
        ("retx", "\n"),  # not what the canvas says
        ("return a +", "\n"),  # " +" was never committed: nothing to check the typing against
        ("return a", "\nelse"),  # the text after the cursor changed
    ],
)
def test_nothing_is_seeded_when_the_draft_no_longer_holds(typed: str, suffix: str) -> None:
    assert seed_from(DRAFT, DRAFT.prefix + typed, suffix, piece, encode, END) is None


def test_typing_all_of_the_draft_or_past_it_seeds_nothing() -> None:
    """After the whole completion is typed (or accepted) the next one is new: no seed of just EOS."""
    ended = Draft("p", "", (2, 0, 0), (True, True, True))
    assert seed_from(ended, "p", "", piece, encode, END) is not None
    assert seed_from(ended, "p a", "", piece, encode, END) is None
    assert seed_from(ended, "p a b", "", piece, encode, END) is None


def test_a_draft_with_nothing_committed_left_is_no_seed() -> None:
    draft = Draft("p", "", (2, 3), (True, False))
    assert seed_from(draft, "p a", "", piece, encode, END) is None


def test_partial_characters_are_not_aligned() -> None:
    draft = Draft("p", "", (8, 2), (True, True))
    assert seed_from(draft, "p\ufffd", "", piece, encode, END) is None
