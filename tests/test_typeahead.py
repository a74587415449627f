"""Typing-ahead cache: answers keystrokes that follow the shown completion, nothing else; spots accepts."""

from diffgemma_ls.postprocess import Completion
from diffgemma_ls.typeahead import Hit, TypeAhead

TEXT = "def f(x):\n    return \n\nprint(f(2))\n"
CURSOR = TEXT.index("return ") + len("return ")


def typed(text: str, at: int, chars: str) -> str:
    return text[:at] + chars + text[at:]


def test_typing_the_start_of_the_completion_returns_the_rest() -> None:
    cache = TypeAhead()
    cache.remember("a", TEXT, CURSOR, Completion("x * 2", replace_end=0))
    assert cache.lookup("a", typed(TEXT, CURSOR, "x "), CURSOR + 2) == Hit(Completion("* 2", 0), False)


def test_other_typing_or_edits_miss() -> None:
    cache = TypeAhead()
    cache.remember("a", TEXT, CURSOR, Completion("x * 2"))
    assert cache.lookup("a", typed(TEXT, CURSOR, "y"), CURSOR + 1) is None  # typed something else
    assert cache.lookup("a", TEXT, CURSOR) is None  # nothing typed: the model decides
    assert cache.lookup("a", typed(TEXT, CURSOR, "x * 2"), CURSOR + 5) is None  # all of it typed
    edited_below = typed(TEXT, CURSOR, "x").replace("print(f(2))", "print(f(3))")
    assert cache.lookup("a", edited_below, CURSOR + 1) is None  # the suffix changed
    edited_above = "import os\n" + typed(TEXT, CURSOR, "x")
    assert cache.lookup("a", edited_above, CURSOR + 11) is None  # the prefix changed
    assert cache.lookup("b", typed(TEXT, CURSOR, "x"), CURSOR + 1) is None  # another document


def test_bounded_and_forgets() -> None:
    cache = TypeAhead(max_documents=2)
    for uri in ("a", "b", "c"):
        cache.remember(uri, TEXT, CURSOR, Completion("x"))
    assert len(cache) == 2
    cache.forget("c")
    assert len(cache) == 1


def test_accepted_at_finds_the_cursor_after_an_accepted_completion() -> None:
    cache = TypeAhead()
    cache.remember("a", TEXT, CURSOR, Completion("x * 2"))
    assert cache.accepted_at("a", TEXT) is None  # not accepted yet
    assert cache.accepted_at("a", typed(TEXT, CURSOR, "x *")) is None  # partly typed
    assert cache.accepted_at("a", typed(TEXT, CURSOR, "x * 2")) == CURSOR + 5  # Tab, or all of it typed
    assert cache.accepted_at("a", typed(TEXT, CURSOR, "x * 3")) is None
    assert cache.accepted_at("b", typed(TEXT, CURSOR, "x * 2")) is None

    # a completion that replaced the closer after the cursor: "f(" + "x)" over ")"
    text = "y = f()\n"
    cache.remember("c", text, 6, Completion("x)", replace_end=1))
    assert cache.accepted_at("c", "y = f(x)\n") == 8


def test_a_prefetched_answer_answers_at_its_own_position() -> None:
    cache = TypeAhead()
    cache.remember("a", TEXT, CURSOR, Completion("x * 2"), prefetched=True)
    assert cache.lookup("a", TEXT, CURSOR) == Hit(Completion("x * 2"), True)
    assert cache.lookup("a", typed(TEXT, CURSOR, "x"), CURSOR + 1) == Hit(Completion(" * 2"), True)
    assert cache.lookup("a", typed(TEXT, CURSOR, "z"), CURSOR + 1) is None
