"""Context extraction: golden mode decisions, budgets, and inputs no editor should send."""

from __future__ import annotations

import functools
import random
import re
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffgemma_ls import context
from diffgemma_ls.context import extract_context
from diffgemma_ls.languages import get_parser, grammar_name
from tests.golden import Case, read_cases


def words(text: str) -> int:
    return len(text.split())


def thirds(text: str) -> int:
    return len(text) // 3


def assert_window(text: str, ctx: context.InfillContext, count, prefix_tokens=384, suffix_tokens=128) -> None:
    """Prefix and suffix are the text around the cursor, within budget, cut only at line breaks.

    The prefix ends with the lead, whitespace that is not in the document (see ``context``).
    """
    assert count(ctx.prefix) <= prefix_tokens
    assert count(ctx.suffix) <= suffix_tokens
    assert not ctx.lead.strip() and ctx.prefix.endswith(ctx.lead) and ctx.line_prefix.endswith(ctx.lead)
    before = ctx.prefix[: len(ctx.prefix) - len(ctx.lead)]
    assert text[ctx.offset - len(before) : ctx.offset] == before
    assert text[ctx.offset : ctx.offset + len(ctx.suffix)] == ctx.suffix
    start, end = ctx.offset - len(before), ctx.offset + len(ctx.suffix)
    assert start == 0 or text[start - 1] in "\r\n" or ctx.line_prefix.endswith(ctx.prefix)
    assert end == len(text) or text[end] in "\r\n" or ctx.line_suffix.startswith(ctx.suffix)


@pytest.mark.parametrize("case", read_cases("context"), ids=lambda case: f"{case.language}: {case.title}")
def test_golden(case: Case):
    text, offset = case.text_and_offset
    budgets = {
        key: int(case.headers[key]) for key in ("prefix_tokens", "suffix_tokens") if key in case.headers
    }
    ctx = extract_context(text, offset, case.language, words, **budgets)
    if "mode" in case.headers:
        assert ctx.mode == case.headers["mode"]
    if "indent" in case.headers:
        assert ctx.indent == case.literal("indent")
    assert ctx.lead == (case.literal("lead") if "lead" in case.headers else "")
    if "prefix" in case.sections:
        assert ctx.prefix == case.sections["prefix"]
    if "suffix" in case.sections:
        assert ctx.suffix == case.sections["suffix"]
    assert_window(text, ctx, words, **budgets)


def test_context_fields():
    text = "def f(x):\r\n\tif x:\r\n\t\treturn g(x, )\r\n"
    offset = text.index(", )") + 2
    ctx = extract_context(text, offset, "python", words)
    assert (ctx.mode, ctx.language, ctx.offset) == ("line", "python", offset)
    assert (ctx.line_prefix, ctx.line_suffix) == ("\t\treturn g(x, ", ")")
    assert (ctx.indent, ctx.indent_unit, ctx.line_ending) == ("\t\t", "\t", "\r\n")
    assert ctx.rest_is_closing
    assert ctx.prefix == text[:offset]
    assert ctx.suffix == ")\r\n"  # the document's last line is the empty one after it


def test_position_inside_crlf_means_end_of_line():
    ctx = extract_context("x = 1\r\ny = 2\r\n", 6, "python", words)
    assert (ctx.offset, ctx.line_prefix, ctx.line_suffix) == (5, "x = 1", "")


def test_without_syntax_falls_back_to_lines(monkeypatch):
    monkeypatch.setattr(context, "PARSE_SECONDS", -1.0)  # every parse "times out"
    text = "function f() {\n  // {\n  █"
    ctx = extract_context(text.replace("█", ""), text.index("█"), "javascript", words)
    assert ctx.mode == "block"  # the plain-line rule sees the "{" at the end of the comment
    assert get_parser("javascript").parse(b"x = 1;").root_node.type == "program"  # parser was reset


# --- inputs of any size --------------------------------------------------------------------------

_FUNCTION = "def f{i}(x):\n    y = x + {i}\n    if y:\n        return y * 2\n    return None\n\n"


@functools.cache  # built once for both tokenizers: the 10 MB string alone takes a while
def _huge_inputs() -> dict[str, tuple[str, int, str]]:
    rng = random.Random(0)
    ten_mb = "".join(_FUNCTION.format(i=i) for i in range(150_000))
    lines = "x = 1\n" * 100_000
    one_line = "values = [" + "1, " * 350_000 + "]"
    garbage = bytes(rng.randrange(256) for _ in range(1 << 18)).decode("latin-1")
    emoji = "s = '" + "😀中" * 200_000 + "'"
    return {
        "10 MB": (ten_mb, len(ten_mb) // 2, "python"),
        "100,000 lines": (lines, len(lines) // 2, "python"),
        "100,000 empty lines": ("\n" * 100_000, 50_000, "go"),
        "1 MB line": (one_line, len(one_line) // 2, "python"),
        "1 MB line, cursor at end": (one_line, len(one_line), "javascript"),
        "binary garbage": (garbage, len(garbage) // 2, "rust"),
        "emoji line": (emoji, len(emoji) // 2, "python"),
        "lone surrogates": ("x = '\ud800'\n" * 1000, 5000, "python"),
    }


@pytest.mark.parametrize("count", [words, thirds])
def test_huge_inputs_stay_within_budget(count):
    for name, (text, offset, language) in _huge_inputs().items():
        started = time.perf_counter()
        ctx = extract_context(text, offset, language, count)
        elapsed = time.perf_counter() - started
        assert_window(text, ctx, count)
        assert elapsed < 2.0, f"{name} took {elapsed:.2f} s"  # ~50 ms normally; loose for busy machines


_PIECES = ["def f():", "    ", "\t", "x = 1", "{", "}", "(", ")", "# c", '"s', "\n", "\r\n", "😀", "中"]


@settings(max_examples=100, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=60),
    cursor=st.floats(0, 1),
    language=st.sampled_from(["python", "javascript", "go", "rust", "plaintext"]),
    budgets=st.fixed_dictionaries({"prefix_tokens": st.integers(0, 12), "suffix_tokens": st.integers(0, 6)}),
    count=st.sampled_from([words, thirds]),
)
def test_random_documents_keep_the_window_invariants(pieces, cursor, language, budgets, count):
    text = "".join(pieces)
    offset = int(cursor * len(text))
    ctx = extract_context(text, offset, language, count, **budgets)
    if text[offset - 1 : offset + 1] == "\r\n":
        offset -= 1
    assert ctx.offset == offset
    assert ctx.mode in ("none", "line", "block")
    assert_window(text, ctx, count, **budgets)


# --- languages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language_id", "uri", "grammar"),
    [
        ("python", "", "python"),
        ("javascriptreact", "", "javascript"),
        ("typescript", "", "typescript"),
        ("typescriptreact", "", "tsx"),
        ("go", "", "go"),
        ("rust", "", "rust"),
        ("tsx", "", "tsx"),
        ("", "file:///src/My%20App/main.RS", "rust"),
        ("plaintext", "file:///a/b.pyi", "python"),
        ("plaintext", "untitled:Untitled-1", None),
        ("lua", "", None),
    ],
)
def test_grammar_name(language_id, uri, grammar):
    assert grammar_name(language_id, uri) == grammar


def test_parsers_are_cached_per_thread():
    assert get_parser("python") is get_parser("python")
    assert get_parser("lua") is None
    other = []
    thread = threading.Thread(target=lambda: other.append(get_parser("python")))
    thread.start()
    thread.join()
    assert other[0] is not get_parser("python")
    assert re.fullmatch(r"\(module .*\)", str(other[0].parse(b"x = 1").root_node))
