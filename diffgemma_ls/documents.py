"""Open documents and LSP incremental edits, in any negotiated position encoding.

LSP positions are ``(line, character)`` where ``character`` counts code units of the negotiated
encoding: UTF-16 units by default (an emoji is 2), UTF-8 bytes (an emoji is 4, a CJK character 3)
or UTF-32 code points. Python strings index code points, so every position is converted here, in
one place, and the rest of the server only ever sees string offsets.

Line breaks are ``\\r\\n``, ``\\n`` and a lone ``\\r``, as the spec says. ``str.splitlines`` is
deliberately not used: it also breaks at ``\\x0b``, ``\\x0c``, ``\\u2028`` and others, which would
shift every line number below them.

Out-of-range positions follow the spec: a character past the end of its line means the end of
the line, a line past the last one means the end of the document. A character that falls inside
a multi-unit character (half an emoji in UTF-16, the middle of a UTF-8 sequence) rounds down to
the start of that character, so an edit never splits a character.

The line-start table is updated incrementally: a keystroke in a 10 MB file costs a list shift,
not a rescan of the whole text.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from typing import Literal, TypeAlias, get_args

PositionEncoding: TypeAlias = Literal["utf-16", "utf-8", "utf-32"]
Position: TypeAlias = tuple[int, int]
Range: TypeAlias = tuple[Position, Position]

ENCODINGS: tuple[str, ...] = get_args(PositionEncoding)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# A line starts after "\n", and after a "\r" that is not the first half of "\r\n".
_LINE_BREAK_END = re.compile(r"\n|\r(?!\n)")
# Characters wider than one code unit, per encoding. UTF-32 has none.
_WIDE = {"utf-16": re.compile("[\U00010000-\U0010ffff]"), "utf-8": re.compile(r"[^\x00-\x7f]")}
# Enough text to judge a file's conventions; detection must stay cheap on huge files.
_SAMPLE_CHARS = 1 << 16


class UnknownDocument(KeyError):
    """A request named a document that was never opened (or was already closed)."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.uri = uri

    def __str__(self) -> str:
        return f"document is not open: {self.uri}"


def _line_starts(text: str, lo: int, hi: int) -> list[int]:
    """Offsets in ``[lo, hi]`` where a line starts (0 always does)."""
    starts = [0] if lo == 0 else []
    # A start at p depends only on text[p - 1] and text[p], so scanning text[lo - 1 : hi + 1] suffices.
    for match in _LINE_BREAK_END.finditer(text, max(lo - 1, 0), min(hi + 1, len(text))):
        if lo <= match.end() <= hi:
            starts.append(match.end())
    return starts


def _width(char: str, encoding: str) -> int:
    """Code units of one character that ``_WIDE`` matched."""
    if encoding == "utf-16":
        return 2
    code = ord(char)
    return 2 if code < 0x800 else 3 if code < 0x10000 else 4


def units(text: str, encoding: str) -> int:
    """Length of ``text`` in code units of ``encoding``."""
    if encoding == "utf-32":
        return len(text)
    if encoding == "utf-16":
        return len(text.encode("utf-16-le", "surrogatepass")) // 2
    return len(text.encode("utf-8", "surrogatepass"))


def char_index(line: str, character: int, encoding: str) -> int:
    """Index into ``line`` of the character starting at code unit ``character``.

    Past the end clamps to ``len(line)``; inside a multi-unit character rounds down to its start.
    """
    if character <= 0:
        return 0
    if encoding == "utf-32" or line.isascii():
        return min(character, len(line))
    extra = 0  # code units beyond one per character, seen so far
    for match in _WIDE[encoding].finditer(line):
        first_unit = match.start() + extra
        if first_unit >= character:
            break
        width = _width(match.group(), encoding)
        if first_unit + width > character:
            return match.start()
        extra += width - 1
    return min(character - extra, len(line))


def _strip_line_break(text: str, start: int, end: int) -> int:
    """End of the line content in ``text[start:end]``, before its line break."""
    if end > start and text[end - 1] == "\n":
        end -= 1
    if end > start and text[end - 1] == "\r":
        end -= 1
    return end


def detect_line_ending(text: str) -> str:
    """``"\\r\\n"`` when most line breaks near the start of ``text`` are CRLF, else ``"\\n"``.

    A lone ``\\r`` (classic Mac) counts as ``"\\n"``: editors converting on save is the lesser evil
    than writing a line ending nothing else in the file uses.
    """
    sample = text[:_SAMPLE_CHARS]
    crlf = sample.count("\r\n")
    return "\r\n" if crlf and crlf >= sample.count("\n") - crlf else "\n"


def detect_indent_unit(text: str, default: str = "    ") -> str:
    """The file's indentation step: ``"\\t"`` or N spaces, judged from the start of ``text``.

    Tabs win when more lines start with a tab than with a space. Otherwise the step is the most
    common change in indentation between consecutive non-blank lines, counting only changes of 2 to
    8 spaces: a change of 1 is nearly always the ``" * "`` of a block comment, not a level.
    ``default`` is used when nothing is indented.
    """
    tabs = spaces = previous = 0
    steps: Counter[int] = Counter()
    for line in _LINE_BREAK.split(text[:_SAMPLE_CHARS]):
        stripped = line.lstrip(" \t")
        if not stripped:
            continue
        indent = line[: len(line) - len(stripped)]
        if indent.startswith("\t"):
            tabs += 1
            continue
        spaces += bool(indent)
        if "\t" not in indent:
            step = abs(len(indent) - previous)
            if 2 <= step <= 8:
                steps[step] += 1
            previous = len(indent)
    if tabs > spaces:
        return "\t"
    if steps:
        return " " * steps.most_common(1)[0][0]
    return default


class Document:
    """The text of one open document, kept in sync with the editor by incremental edits."""

    def __init__(
        self,
        uri: str,
        text: str,
        language_id: str = "",
        version: int = 0,
        encoding: PositionEncoding = "utf-16",
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown position encoding {encoding!r}; expected one of {ENCODINGS}")
        self.uri = uri
        self.language_id = language_id
        self.version = version
        self.encoding: PositionEncoding = encoding
        self._text = text
        self._starts = _line_starts(text, 0, len(text))

    def __repr__(self) -> str:
        return f"Document({self.uri!r}, version={self.version}, {len(self._text)} chars)"

    @property
    def text(self) -> str:
        return self._text

    @property
    def line_count(self) -> int:
        return len(self._starts)

    @property
    def line_ending(self) -> str:
        """``"\\r\\n"`` or ``"\\n"``: what inserted text must use to match the file."""
        return detect_line_ending(self._text)

    @property
    def indent_unit(self) -> str:
        """One level of indentation in this file: a tab or N spaces."""
        return detect_indent_unit(self._text)

    def line(self, line: int) -> str:
        """Text of ``line`` without its line break; ``""`` past the end."""
        if not 0 <= line < len(self._starts):
            return ""
        start = self._starts[line]
        end = self._starts[line + 1] if line + 1 < len(self._starts) else len(self._text)
        return self._text[start : _strip_line_break(self._text, start, end)]

    def offset_at(self, line: int, character: int) -> int:
        """String offset of an LSP position, clamped as the spec says (see module docstring)."""
        if line < 0:
            return 0
        if line >= len(self._starts):
            return len(self._text)
        start = self._starts[line]
        return start + char_index(self.line(line), character, self.encoding)

    def position_at(self, offset: int) -> Position:
        """LSP position of a string offset; an offset inside a line break maps to the line's end."""
        offset = min(max(offset, 0), len(self._text))
        line = bisect_right(self._starts, offset) - 1
        start = self._starts[line]
        content = self.line(line)
        return line, units(content[: offset - start], self.encoding)

    def apply_change(self, range: Range | None, text: str) -> None:
        """Apply one ``TextDocumentContentChangeEvent``; ``range=None`` replaces the whole text."""
        if range is None:
            self._text = text
            self._starts = _line_starts(text, 0, len(text))
            return
        (start_line, start_char), (end_line, end_char) = range
        start = self.offset_at(start_line, start_char)
        end = self.offset_at(end_line, end_char)
        if end < start:  # a reversed range still names the same span
            start, end = end, start
        old = self._starts
        self._text = self._text[:start] + text + self._text[end:]
        # Starts before `start` and after `end` survive (the latter shifted); only the edited
        # stretch, one character either side included, needs scanning.
        shift = len(text) - (end - start)
        self._starts = (
            old[: bisect_left(old, start)]
            + _line_starts(self._text, start, start + len(text))
            + [offset + shift for offset in old[bisect_right(old, end) :]]
        )


class DocumentStore:
    """Open documents by URI.

    Nothing is evicted: the editor decides what is open and ``close`` frees it; dropping a document
    the editor still edits would desynchronize every later incremental change. ``total_chars``
    is there for logging when someone opens a 100 MB log file.
    """

    def __init__(self, encoding: PositionEncoding = "utf-16") -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown position encoding {encoding!r}; expected one of {ENCODINGS}")
        self.encoding: PositionEncoding = encoding
        self._documents: dict[str, Document] = {}

    def __contains__(self, uri: object) -> bool:
        return uri in self._documents

    def __len__(self) -> int:
        return len(self._documents)

    @property
    def total_chars(self) -> int:
        return sum(len(document.text) for document in self._documents.values())

    def open(self, uri: str, text: str, language_id: str = "", version: int = 0) -> Document:
        """``textDocument/didOpen``; reopening a URI replaces it."""
        document = Document(uri, text, language_id, version, self.encoding)
        self._documents[uri] = document
        return document

    def uris(self) -> list[str]:
        return list(self._documents)

    def get(self, uri: str) -> Document:
        try:
            return self._documents[uri]
        except KeyError:
            raise UnknownDocument(uri) from None

    def change(self, uri: str, version: int, changes: Iterable[tuple[Range | None, str]]) -> Document:
        """``textDocument/didChange``: apply ``(range, text)`` changes in order."""
        document = self.get(uri)
        for range, text in changes:
            document.apply_change(range, text)
        document.version = version
        return document

    def close(self, uri: str) -> None:
        """``textDocument/didClose``; closing an unknown URI raises ``UnknownDocument``."""
        if self._documents.pop(uri, None) is None:
            raise UnknownDocument(uri)
