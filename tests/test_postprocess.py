"""Post-processing: golden cases end to end (context -> filters), and each filter's edge cases."""

from __future__ import annotations

import dataclasses

import pytest

from diffgemma_ls.context import InfillContext, extract_context
from diffgemma_ls.postprocess import FILTERS, Completion, postprocess
from diffgemma_ls.postprocess.closing_chars import replaced_closers
from diffgemma_ls.postprocess.cut_eos import cut_special_tokens
from diffgemma_ls.postprocess.drop_suffix_repeat import drop_suffix_repeat
from diffgemma_ls.postprocess.indentation import match_indentation
from diffgemma_ls.postprocess.limit_scope import limit_scope
from diffgemma_ls.prompt import SPECIAL_TOKENS
from tests.golden import Case, read_cases


def words(text: str) -> int:
    return len(text.split())


def context_at(document: str, language: str = "python", **changes) -> InfillContext:
    """Context for a document with the cursor marked by █, optionally with fields overridden."""
    ctx = extract_context(document.replace("█", ""), document.index("█"), language, words)
    return dataclasses.replace(ctx, **changes)


@pytest.mark.parametrize("case", read_cases("postprocess"), ids=lambda case: f"{case.language}: {case.title}")
def test_golden(case: Case):
    text, offset = case.text_and_offset
    ctx = extract_context(text, offset, case.language, words)
    if "mode" in case.headers:
        assert ctx.mode == case.headers["mode"]
    completion = postprocess(case.sections["model"], ctx)
    if case.headers.get("expected") == "none":
        assert completion is None
        return
    expected = case.sections["expected"]
    if case.headers.get("line_ending") == "crlf":
        expected = expected.replace("\n", "\r\n")
    assert completion is not None
    assert completion.text == expected
    replaced = case.literal("replaces") if "replaces" in case.headers else ""
    assert text[offset : offset + completion.replace_end] == replaced


def test_there_are_enough_golden_cases():
    cases = read_cases("postprocess")
    assert len(cases) >= 20
    assert {"python", "javascript", "typescript", "go", "rust"} <= {case.language for case in cases}


@pytest.mark.parametrize("token", [*SPECIAL_TOKENS, "<MIDDLE>"])
def test_every_special_token_cuts(token):
    assert cut_special_tokens(f"x = 1{token}y = 2", context_at("█")) == "x = 1"


def test_crlf_model_output_is_normalized_then_converted():
    ctx = context_at("def f():\r\n    █\r\n", "python")
    assert ctx.line_ending == "\r\n"
    assert postprocess("a()\r\n    b()\r\n", ctx) == Completion("a()\r\n    b()")


def test_space_indented_file_expands_model_tabs():
    ctx = context_at("def f():\n  if x:\n    y()\n  █", indent_unit="  ")
    assert match_indentation("z()\n\tw()\n\t\tv()", ctx) == "z()\n  w()\n    v()"


def test_tab_file_keeps_alignment_spaces():
    ctx = context_at("func f() {\n\t█\n}", "go")
    assert match_indentation("a(1,\n      2)", ctx) == "a(1,\n\t  2)"


def test_limit_scope_checks_the_first_line_only_at_line_start():
    # body indentation "    ", cursor at column 0 without the lead the context would add
    ctx = context_at("def f():\n█", line_prefix="", lead="")
    assert ctx.mode == "block"
    assert limit_scope("x = 1\n    y = 2", ctx) == ""
    assert limit_scope("    x = 1\n    y = 2\nz = 3", ctx) == "    x = 1\n    y = 2"


def test_an_explicit_line_before_code_is_a_line_of_its_own():
    """HumanEval's single-line position: column 0, before the next statement, explicitly invoked."""
    document = "def f(n):\n    if n:\n█        return n\n    return 0\n"
    ctx = context_at(document, mode="line")  # plan() makes an explicit request's "none" a line
    completion = postprocess("n += 1", ctx)
    assert completion == Completion("        n += 1\n")
    text, offset = document.replace("█", ""), document.index("█")
    assert text[:offset] + completion.text + text[offset:] == (
        "def f(n):\n    if n:\n        n += 1\n        return n\n    return 0\n"
    )
    assert postprocess("return n", ctx) is None  # the next line again


@pytest.mark.parametrize(
    ("document", "text", "replaced"),
    [
        ("print(foo(█))", "x))", 2),
        ("print(foo(█))", "x)", 1),
        ("print(foo(█))", "x", 0),
        ("print(█)", "f(x)", 0),
        ('print("█")', 'hi")', 2),
        ('print("█")', "hi", 0),
        ("x = [█]", "a[0]]", 1),
        ("f(█) ", "x)", 1),  # trailing whitespace is not replaced
        ("f(█, y)", "x)", 0),  # not only closers after the cursor
    ],
)
def test_replaced_closers(document, text, replaced):
    assert replaced_closers(text, context_at(document, "javascript")) == replaced


def test_mode_none_is_never_completed():
    assert postprocess("anything", context_at("x = fo█o")) is None


def test_filters_are_pure_functions_of_text_and_context():
    ctx = context_at("def f():\n    █")
    for step in FILTERS:
        assert step("", ctx) in ("", None)


def test_repeated_lines_must_match_indentation_too():
    ctx = context_at("function f() {\n  if (x) {\n    █\n  }\n}", "javascript")
    assert drop_suffix_repeat("y();\n  }", ctx) == "y();"  # repeats the if's brace
    assert drop_suffix_repeat("if (y) {\n      z();\n    }", ctx) == "if (y) {\n      z();\n    }"
    same_line = context_at("function f() {█}", "javascript")
    assert drop_suffix_repeat("\n    x;\n}", same_line) == "\n    x;"
