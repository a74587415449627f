"""Fill targets (empty bodies, TODO lines), the syntax guard, the choice among candidates: no model."""

import pytest

from diffgemma_ls.completion import Outcome, choose_fill, choose_fill_why
from diffgemma_ls.fill import breaks_syntax, discards_working_code, fill_target, has_code, trim_selection
from diffgemma_ls.postprocess import Completion


def target(text: str, language: str = "python") -> str | None:
    """The text a fill at the █ cursor would replace."""
    offset = text.index("█")
    text = text.replace("█", "")
    span = fill_target(text, offset, language)
    return None if span is None else text[span[0] : span[1]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("def f(x):█\n    pass\n", "pass"),
        ("def f(x):\n    █...\n", "..."),
        ('def f(x):\n    """Doc."""\n    pa█ss\n\nprint(1)\n', "pass"),
        ("class A:\n    def m(self):\n        █pass\n", "pass"),
        ("def f(x):\n    █return x\n", None),
        ('def f(x):\n    """Only a docstring."""█\n', None),
        ("x = 1  # TODO█ compute\n", "x = 1  # TODO compute"),
        ("def f(x):\n    return x█\n", None),
    ],
)
def test_python_targets(text: str, expected: str | None) -> None:
    assert target(text) == expected


def test_braces_languages_fill_inside_empty_braces() -> None:
    assert target("function f(a) {█}\n", "javascript") == ""
    assert target("func f() int {\n\t█// nothing yet\n}\n", "go") == "\n\t// nothing yet\n"
    assert target("fn f() -> u8 {\n    █todo_later();\n}\n", "rust") is None


@pytest.mark.parametrize(
    ("selected", "kept"),
    [
        ("    a = 1\n    return a\n", "a = 1\n    return a"),  # linewise: indentation and break go
        ("a = 1", "a = 1"),
        ("  \n\t", "  \n\t"),  # all blank: unchanged
        ("\r\n    x\r\n", "x"),
    ],
)
def test_trim_selection(selected: str, kept: str) -> None:
    text = "def f():\n" + selected + "END"
    start, end = trim_selection(text, 9, 9 + len(selected))
    assert text[start:end] == kept


@pytest.mark.parametrize(
    ("text", "replacement", "broken"),
    [
        ("def f(x):\n    pass\n\nprint(f(1))\n", "return x + 1", False),
        ("def f(x):\n    pass\n\nprint(f(1))\n", "return (x +", True),
        ("def f(x):\n    pass\n\nprint(f(1)\n", "return x", False),  # the error was already there
        ("def f(x):\n    pass\n\nprint(f(1)\n", "return [x", True),  # one more error
        ("def f(x):\n    pass\n\nprint(f(1))\n", "y = x\n  return y", True),  # indentation: compile
        ("def f(x):\n    pass\n\nprint(f(1))\n", "y = x\n    return y", False),
    ],
)
def test_breaks_syntax(text: str, replacement: str, broken: bool) -> None:
    start = text.index("pass")
    assert breaks_syntax(text, start, start + 4, replacement, "python") is broken


def test_breaks_syntax_without_a_grammar_never_rejects() -> None:
    assert not breaks_syntax("x = 1\n", 4, 5, "{{{", "plaintext")


def _outcome(*texts: str) -> Outcome:
    first, *others = [Completion(t) for t in texts]
    return Outcome(first, None, 0.0, alternatives=others)


@pytest.mark.parametrize(
    ("texts", "chosen"),
    [
        (("return x + 1",), "return x + 1"),
        (("return x +", "return x * 2", "return"), "return x * 2"),  # the first that parses
        (("pass", "return x"), "return x"),  # the region unchanged is no fill
        (("# compute it", "...", "  ", "return x"), "return x"),  # nor a comment, a placeholder, blanks
        (("return (", "x +"), None),  # nothing fits: the fill changes nothing
    ],
)
def test_choose_fill_takes_the_first_that_parses(texts: tuple[str, ...], chosen: str | None) -> None:
    text = "def f(x):\n    pass\n\n\nprint(f(1))\n"
    start = text.index("pass")
    choice = choose_fill(_outcome(*texts), text, start, start + 4, "python")
    assert (choice.text if choice else None) == chosen


@pytest.mark.parametrize(
    ("replacement", "language", "expected"),
    [
        ("return x", "python", True),
        ("x = 1  # one", "python", True),
        ("# only a comment", "python", False),
        ("pass", "python", False),
        ("...", "python", False),
        ("\n  \n", "python", False),
        ("// later", "javascript", False),
        ("return a;", "javascript", True),
        ("anything", "no-such-language", True),
    ],
)
def test_has_code(replacement: str, language: str, expected: bool) -> None:
    assert has_code(replacement, language) is expected


BODY = "    found = []\n    for name in names:\n        found.append(name.strip())\n    return found\n"


@pytest.mark.parametrize(
    ("original", "replacement", "expected"),
    [
        (BODY, "    return", True),
        (BODY, "    return None", True),
        (BODY, "    pass", True),
        (BODY, "    return []", True),
        (BODY, "    x = 1", True),  # one short line for four of code
        (BODY, "    return [name.strip() for name in names if name]", False),  # a real rewrite
        (BODY, "    found = []\n    return found", False),  # more than one line: the model's call
        ("    pass\n", "    return", False),  # a placeholder is no working code: a real attempt
        ("    return x\n", "    return", False),  # one line: nothing much to lose
        ("", "    return", False),  # an empty region
        ("x = 1  # TODO compute\nprint(x)\n", "x = 2", True),
    ],
)
def test_a_fill_does_not_throw_away_working_code(original: str, replacement: str, expected: bool) -> None:
    assert discards_working_code(original, replacement, "python") is expected


def test_choose_fill_keeps_working_code_and_says_why() -> None:
    text = f"def clean(names):\n{BODY}\n\nprint(clean([' a ']))\n"
    start, end = text.index("    found"), text.index("\n\n\n") + 1
    choice, why = choose_fill_why(_outcome("    return", "    return None"), text, start, end, "python")
    assert choice is None and "throws away the working code" in why
    better = "    return [name.strip() for name in names]"
    choice, why = choose_fill_why(_outcome("    return", better), text, start, end, "python")
    assert choice is not None and choice.text == better and why == ""
