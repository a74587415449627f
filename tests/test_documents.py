"""Document positions in every encoding, checked against an independent reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffgemma_ls.documents import (
    ENCODINGS,
    Document,
    DocumentStore,
    UnknownDocument,
    detect_indent_unit,
    detect_line_ending,
)

# --- reference model: character by character, sharing no code with the implementation ----------

_CODECS = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2), "utf-32": ("utf-32-le", 4)}


def reference_lines(text: str) -> list[tuple[str, str]]:
    """``(content, line break)`` pairs; LSP breaks are CRLF, LF and a lone CR."""
    lines, current, i = [], "", 0
    while i < len(text):
        if text.startswith("\r\n", i):
            lines.append((current, "\r\n"))
            current, i = "", i + 2
        elif text[i] in "\r\n":
            lines.append((current, text[i]))
            current, i = "", i + 1
        else:
            current, i = current + text[i], i + 1
    lines.append((current, ""))
    return lines


def code_units(char: str, encoding: str) -> int:
    codec, size = _CODECS[encoding]
    return len(char.encode(codec)) // size


def reference_offset(text: str, line: int, character: int, encoding: str) -> int:
    lines = reference_lines(text)
    if line >= len(lines):
        return len(text)
    offset = sum(len(content) + len(brk) for content, brk in lines[:line])
    unit = 0
    for char in lines[line][0]:
        width = code_units(char, encoding)
        if unit + width > character:  # past the position, or it falls inside this character
            break
        unit += width
        offset += 1
    return offset


def reference_position(text: str, offset: int, encoding: str) -> tuple[int, int]:
    start = 0
    for number, (content, brk) in enumerate(reference_lines(text)):
        if offset <= start + len(content) + len(brk) - (1 if brk else 0) or not brk:
            inside = content[: max(0, offset - start)]
            return number, sum(code_units(char, encoding) for char in inside)
        start += len(content) + len(brk)
    raise AssertionError("unreachable")


# --- unit tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "character", "offset"),
    [
        ("utf-16", 1, 1),  # before the emoji
        ("utf-16", 2, 1),  # between its surrogates: rounds down to the emoji
        ("utf-16", 3, 2),  # after it
        ("utf-8", 2, 1),
        ("utf-8", 4, 1),
        ("utf-8", 5, 2),
        ("utf-32", 2, 2),
        ("utf-32", 3, 3),
    ],
)
def test_emoji(encoding, character, offset):
    doc = Document("file:///a", "a😀b", encoding=encoding)
    assert doc.offset_at(0, character) == offset


@pytest.mark.parametrize(("encoding", "after_cjk"), [("utf-16", 2), ("utf-8", 6), ("utf-32", 2)])
def test_cjk(encoding, after_cjk):
    doc = Document("file:///a", "中文 = 1", encoding=encoding)
    assert doc.offset_at(0, after_cjk) == 2
    assert doc.position_at(2) == (0, after_cjk)
    if encoding == "utf-8":
        assert doc.offset_at(0, 4) == 1  # inside 文 (bytes 3..5): its start


def test_tabs_are_one_unit():
    doc = Document("file:///a", "\t\tx = 1")
    assert doc.offset_at(0, 2) == 2
    assert doc.position_at(3) == (0, 3)


def test_mixed_line_breaks():
    doc = Document("file:///a", "a\r\nbb\rc\nd")
    assert doc.line_count == 4
    assert [doc.line(n) for n in range(4)] == ["a", "bb", "c", "d"]
    assert doc.offset_at(1, 0) == 3
    assert doc.offset_at(2, 0) == 6
    assert doc.offset_at(3, 0) == 8
    assert doc.offset_at(0, 99) == 1  # past the end of the line: its end, not into the CRLF
    assert doc.position_at(2) == (0, 1)  # between \r and \n: end of line


def test_past_the_end_clamps_to_document_end():
    doc = Document("file:///a", "ab\ncd")
    assert doc.offset_at(7, 0) == 5
    assert doc.offset_at(2, 0) == 5
    assert doc.offset_at(-1, 3) == 0
    assert doc.position_at(99) == (1, 2)


def test_edit_joining_cr_and_lf_makes_one_line_break():
    doc = Document("file:///a", "a\rb")
    doc.apply_change(((1, 0), (1, 0)), "\n")
    assert doc.text == "a\r\nb"
    assert doc.line_count == 2  # "\r\n" is one break, not "\r" then "\n"
    doc.apply_change(((0, 1), (1, 0)), "\rx\n")
    assert doc.text == "a\rx\nb"
    assert doc.line_count == 3


def test_apply_change_utf16_emoji_roundtrip():
    doc = Document("file:///a", "x = ''\n")
    doc.apply_change(((0, 5), (0, 5)), "🎉")
    assert doc.text == "x = '🎉'\n"
    assert doc.position_at(len("x = '🎉")) == (0, 7)
    doc.apply_change(((0, 5), (0, 7)), "")
    assert doc.text == "x = ''\n"


def test_reversed_range_and_full_replace():
    doc = Document("file:///a", "hello world")
    doc.apply_change(((0, 11), (0, 5)), "")
    assert doc.text == "hello"
    doc.apply_change(None, "new\ntext")
    assert doc.text == "new\ntext"
    assert doc.line_count == 2


def test_unknown_encoding_is_rejected():
    with pytest.raises(ValueError, match="position encoding"):
        Document("file:///a", "", encoding="utf-7")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "ending"),
    [("a\r\nb\r\n", "\r\n"), ("a\nb\n", "\n"), ("one line", "\n"), ("a\r\nb\nc\r\n", "\r\n"), ("a\rb", "\n")],
)
def test_detect_line_ending(text, ending):
    assert detect_line_ending(text) == ending


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("func f() {\n\tx := 1\n\tif x {\n\t\ty()\n\t}\n}\n", "\t"),
        ("def f():\n  if x:\n    y()\n  return 1\n", "  "),
        ("def f():\n    if x:\n        y()\n", "    "),
        ("/**\n * docs\n */\nfunction f() {\n  return 1;\n}\n", "  "),
        ("x = 1\ny = 2\n", "    "),
    ],
)
def test_detect_indent_unit(text, unit):
    assert detect_indent_unit(text) == unit


def test_store_lifecycle():
    store = DocumentStore(encoding="utf-8")
    store.open("file:///a.py", "print('é')\n", "python", 1)
    doc = store.change("file:///a.py", 2, [(((0, 9), (0, 9)), "!"), (None, "x = 1\n")])
    assert (doc.text, doc.version, doc.encoding) == ("x = 1\n", 2, "utf-8")
    assert "file:///a.py" in store
    assert (len(store), store.total_chars) == (1, 6)
    store.close("file:///a.py")
    with pytest.raises(KeyError) as error:
        store.get("file:///a.py")
    assert isinstance(error.value, UnknownDocument)
    assert "not open: file:///a.py" in str(error.value)
    with pytest.raises(UnknownDocument):
        store.close("file:///a.py")


# --- property test: random incremental edits against the reference model -------------------------

_PIECES = ["a", "bc", " ", "\t", "\n", "\r", "\r\n", "é", "中", "文字", "😀", "𝄞", "(", ")"]
pieces = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)
texts = st.one_of(pieces, st.text(max_size=8))
positions = st.tuples(st.integers(0, 8), st.integers(0, 12))
edits = st.lists(st.tuples(st.one_of(st.none(), st.tuples(positions, positions)), texts), max_size=12)
probe_lists = st.lists(positions, max_size=4)


@settings(max_examples=200, deadline=None)
@given(encoding=st.sampled_from(ENCODINGS), initial=pieces, edits=edits, probes=probe_lists)
def test_random_edits_match_reference(encoding, initial, edits, probes):
    doc = Document("file:///p", initial, encoding=encoding)
    expected = initial
    for range_, inserted in edits:
        if range_ is None:
            expected = inserted
        else:
            start, end = (reference_offset(expected, *pos, encoding) for pos in range_)
            start, end = min(start, end), max(start, end)
            expected = expected[:start] + inserted + expected[end:]
        doc.apply_change(range_, inserted)
        assert doc.text == expected
        assert doc.line_count == len(reference_lines(expected))
    for line, character in probes:
        offset = reference_offset(expected, line, character, encoding)
        assert doc.offset_at(line, character) == offset
        assert doc.position_at(offset) == reference_position(expected, offset, encoding)
