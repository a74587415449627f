"""What the model sees around the cursor, and what kind of completion fits there.

``extract_context`` turns (document text, cursor offset) into an ``InfillContext``: a prefix and
suffix within token budgets, plus the facts post-processing needs (mode, indentation, the rest
of the cursor line, the file's conventions). It is pure: the tokenizer comes in as a callable.

**Window.** Only whole lines within a few thousand characters of the cursor are looked at
(``_window_chars``: twice the most characters a budget could ever hold). A 10 MB file costs the
same as a 10 KB one, and tree-sitter never parses more than that window, so a keystroke never
re-parses the whole file. The price: a construct that opened before the window (a docstring
starting 20 KB up) is invisible, and the window's parse may be wrong near its top edge. A cursor
line too long for the window (minified code, a 1 MB line) is not parsed at all: it gets the
plain-line treatment of languages without a grammar.

**Mode** (``none`` / ``line`` / ``block``), decided in this order:

1. ``none`` when a word character follows the cursor: completing inside or before an
   identifier would only produce a new identifier glued to the old one.
2. ``none`` inside a comment or a string, since the model's prose there is mostly noise; a Python
   docstring is an exception (``line``): documentation written from the signature is useful.
   Code inside an f-string or template literal ``${...}`` counts as code.
3. On a line with only whitespace before the cursor:
   ``none`` if code follows the cursor on the line (nobody wants text inserted before it);
   ``block`` if the previous code line ends with an opener - ``{``, ``(``, ``[``, or Python's
   ``:`` that introduces a block - or is a Python docstring right after a ``def``/``class``
   header (the "empty body" case); otherwise ``line``: one statement, since a whole guessed
   block in the middle of a function is more often wrong than right.
4. Code before the cursor: ``block`` when that code ends with a body opener (``{``, Python
   ``:``) and only closing characters follow (``def f():█``, ``if (x) {█}``), else ``line``.

**Indentation** (``InfillContext.indent``) is what completed lines must keep to stay in scope:
for ``block`` the body's indentation (opener line's indentation plus one unit, or the cursor
line's own whitespace when that is deeper); for ``line`` the cursor line's indentation.

**Lead.** With only whitespace before the cursor, and less of it than the code there needs
(column 0 of an empty line in a function body), the context is cut as if the editor had
auto-indented: the missing whitespace (``InfillContext.lead``) ends the prefix the model sees, and
the completion starts with it. The code belongs at the body's indentation in ``block`` mode;
otherwise at the previous code line's, one unit more after an opener, one unit less after a
Python ``return``/``pass``/``raise``/``break``/``continue`` (the editors' own on-Enter rules), and
only from column 0 or a partly typed level: whole levels typed are a dedent the user chose.
With code after the cursor (mode ``none``, so only an explicit request gets here) the completion
is a new line before that code, which ``trim_trailing`` ends with a line break. The model learned
code mostly with the cursor after the indentation, and at column 0 it starts new top-level
definitions: HumanEval's single-line tasks put the cursor exactly there, before the next line.

**Budgets.** The prefix grows backwards from the cursor by whole lines while
``count_tokens`` says it fits; then its start snaps forward to the nearest start of a syntactic
unit (a statement or definition that is a sibling of one of the cursor's ancestors, found with
tree-sitter) so the model does not start reading in the middle of a string or a call - unless
that would throw away more than half of what fit. The suffix does the same forwards, snapping to
unit ends. Only the cursor line itself is ever cut mid-line. Per-line token counts are summed as
an estimate and the final text is always counted again, so ``count_tokens(prefix) <=
prefix_tokens`` and ``count_tokens(suffix) <= suffix_tokens`` hold whatever the tokenizer.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from tree_sitter import Node, Tree

from diffgemma_ls.documents import detect_indent_unit, detect_line_ending
from diffgemma_ls.languages import get_parser, grammar_name

Mode: TypeAlias = Literal["none", "line", "block"]
CountTokens: TypeAlias = Callable[[str], int]

# Text this long is never counted: no real tokenizer averages more characters per token over a
# line, and it keeps count_tokens away from a 1 MB line.
MAX_CHARS_PER_TOKEN = 16
# Tree-sitter's error recovery can take 200 ms on binary garbage; give up on syntax after this.
PARSE_SECONDS = 0.05
# What may follow the cursor for an inline completion to still make sense (and to be replaced).
CLOSING_CHARS = frozenset(")]}\"'`;:,")

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WORD_CHAR = re.compile(r"\w")
_PYTHON_DEDENT = re.compile(r"(return|pass|raise|break|continue)\b")  # the next line leaves the block
_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})
_STRINGS = frozenset(
    {
        "string",  # Python, JavaScript, TypeScript
        "template_string",
        "regex",
        "interpreted_string_literal",  # Go
        "raw_string_literal",  # Go, Rust
        "rune_literal",
        "string_literal",  # Rust
        "char_literal",
    }
)
_CODE_IN_STRINGS = frozenset({"interpolation", "template_substitution"})
_OPENERS = frozenset("{([")
_DEFAULT_INDENT_UNIT = {"go": "\t"}  # gofmt; everything else defaults to four spaces


@dataclass(frozen=True)
class InfillContext:
    """Everything downstream of context extraction needs about one completion request."""

    prefix: str  # text before the cursor, within the prefix budget, then ``lead``
    suffix: str  # text after the cursor, within the suffix budget
    mode: Mode
    offset: int  # cursor offset in the document
    language: str | None  # grammar name; None = no grammar, plain lines
    line_prefix: str  # the whole cursor line before the cursor, then ``lead``
    line_suffix: str  # the whole cursor line after the cursor, without its line break
    indent: str  # indentation completed lines must keep to stay in scope (see module docstring)
    indent_unit: str  # one level of indentation in this file: "\t" or N spaces
    line_ending: str  # "\n" or "\r\n"
    # whitespace the editor would have auto-indented: the end of prefix and line_prefix, and the
    # start of the completion (see module docstring)
    lead: str = ""

    @property
    def line_indent(self) -> str:
        """The cursor line's indentation in the document (without the lead)."""
        typed = self.line_prefix[: len(self.line_prefix) - len(self.lead)]
        return typed[: len(typed) - len(typed.lstrip(" \t"))]

    @property
    def rest_is_closing(self) -> bool:
        """Whether only closing characters (and whitespace) follow the cursor on its line."""
        rest = self.line_suffix.strip()
        return bool(rest) and set(rest) <= CLOSING_CHARS


# --- lines ---------------------------------------------------------------------------------------


def _line_start(text: str, offset: int) -> int:
    """Start of the line containing ``offset``."""
    brk = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset))
    if brk >= 0 and text[brk] == "\r" and text.startswith("\n", brk + 1):
        return _line_start(text, brk)  # offset sits inside a "\r\n": it belongs to the line before
    return brk + 1


def _line_end(text: str, offset: int) -> int:
    """End of the content of the line containing ``offset`` (where its line break begins)."""
    ends = [i for i in (text.find("\n", offset), text.find("\r", offset)) if i >= 0]
    return min(ends, default=len(text))


def _next_line_start(text: str, offset: int) -> int:
    """Start of the first line beginning at or after ``offset``."""
    if (
        offset == 0
        or text[offset - 1] == "\n"
        or (text[offset - 1] == "\r" and text[offset : offset + 1] != "\n")
    ):
        return offset
    end = _line_end(text, offset)
    return end + (2 if text.startswith("\r\n", end) else 1)


def _previous_line_end(text: str, line_start: int) -> int:
    """Content end of the line before the one starting at ``line_start`` (> 0)."""
    end = line_start - 1
    return end - 1 if text[end] == "\n" and end > 0 and text[end - 1] == "\r" else end


@dataclass(frozen=True)
class _Window:
    """Whole lines of the document around the cursor; offsets are relative to ``text``."""

    text: str
    start: int  # document offset of text[0]
    cursor: int
    starts: list[int]  # where each line starts
    ends: list[int]  # where each line's content ends, before its line break
    cursor_line: int

    @classmethod
    def around(cls, text: str, offset: int, before: int, after: int) -> _Window:
        line_start, line_end = _line_start(text, offset), _line_end(text, offset)
        lo, hi = offset - before, offset + after
        start = 0 if lo <= 0 else line_start if lo >= line_start else _next_line_start(text, lo)
        if hi >= len(text):
            end = len(text)
        else:
            hi_start = _line_start(text, hi)
            end = _previous_line_end(text, hi_start) if hi_start > line_end else line_end
        window = text[start:end]
        breaks = list(_LINE_BREAK.finditer(window))
        starts = [0] + [m.end() for m in breaks]
        ends = [m.start() for m in breaks] + [len(window)]
        cursor = offset - start
        return cls(window, start, cursor, starts, ends, bisect_right(starts, cursor) - 1)

    @property
    def column(self) -> int:
        """The cursor's column on its line."""
        return self.cursor - self.starts[self.cursor_line]

    def line(self, index: int) -> str:
        return self.text[self.starts[index] : self.ends[index]]


def _indentation(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


# --- syntax --------------------------------------------------------------------------------------


def _ancestor(node: Node | None, types: frozenset[str]) -> Node | None:
    """``node`` or its nearest ancestor whose type is in ``types``."""
    while node is not None and node.type not in types:
        node = node.parent
    return node


class _Syntax:
    """A tree-sitter parse of the window, queried by (line, column) of the window."""

    def __init__(self, window: _Window, tree: Tree, data: bytes, byte_starts: list[int]) -> None:
        self.window = window
        self.root = tree.root_node
        self.data = data
        self.byte_starts = byte_starts

    @classmethod
    def parse(cls, window: _Window, grammar: str | None) -> _Syntax | None:
        """Parse the window, or ``None`` without a grammar or when parsing takes too long."""
        parser = get_parser(grammar) if grammar else None
        if parser is None:
            return None
        data = window.text.encode("utf-8", "surrogatepass")
        view = memoryview(data)
        deadline = time.monotonic() + PARSE_SECONDS
        try:
            tree = parser.parse(
                lambda byte, _point: view[byte:], progress_callback=lambda *_: time.monotonic() > deadline
            )
        except ValueError:  # cancelled by the deadline
            parser.reset()  # or the next parse would resume this one
            return None
        if len(data) == len(window.text):
            byte_starts = window.starts
        else:
            byte_starts, total, previous = [], 0, 0
            for start in window.starts:
                total += len(window.text[previous:start].encode("utf-8", "surrogatepass"))
                byte_starts.append(total)
                previous = start
        return cls(window, tree, data, byte_starts)

    def byte(self, line: int, column: int) -> int:
        start = self.window.starts[line]
        return self.byte_starts[line] + len(
            self.window.text[start : start + column].encode("utf-8", "surrogatepass")
        )

    def column(self, line: int, byte: int) -> int:
        """Column on ``line`` of a byte offset that starts a character."""
        encoded = self.window.line(line).encode("utf-8", "surrogatepass")
        return len(encoded[: byte - self.byte_starts[line]].decode("utf-8", "surrogatepass"))

    def line_of(self, byte: int) -> int:
        return bisect_right(self.byte_starts, byte) - 1

    def is_line_comment(self, node: Node) -> bool:
        """A comment that runs to the end of its line, so a cursor at its end is still inside it."""
        return node.type == "line_comment" or self.data.startswith((b"//", b"#"), node.start_byte)

    def literal_at(self, byte: int) -> Node | None:
        """The comment or string the cursor is inside, judged by the character before it."""
        if byte == 0:
            return None
        node: Node | None = self.root.descendant_for_byte_range(byte - 1, byte)
        while node is not None:
            inside = node.start_byte < byte < node.end_byte
            if node.type in _CODE_IN_STRINGS and inside:
                return None
            if node.type in _STRINGS and inside:
                return node
            if node.type in _COMMENTS and (inside or (byte == node.end_byte and self.is_line_comment(node))):
                return node
            node = node.parent
        return None

    def last_token(self, line: int, column: int) -> Node | None:
        """The last token on ``line`` before ``column``, skipping comments and whitespace."""
        text = self.window.line(line)[:column]
        while text.strip():
            text = text.rstrip()
            byte = self.byte(line, len(text))
            token = self.root.descendant_for_byte_range(byte - 1, byte)
            comment = _ancestor(token, _COMMENTS)
            if comment is None:
                return token
            if comment.start_byte < self.byte_starts[line]:
                return None  # the whole line is inside a comment that began earlier
            text = text[: self.column(line, comment.start_byte)]
        return None

    def unit_lines(self, byte: int) -> tuple[set[int], set[int]]:
        """Lines where a syntactic unit around the cursor starts (before it) and ends (after it).

        Units are the named children of every ancestor of the cursor, and the ancestors
        themselves: cutting the prefix at one of them never starts the model mid-construct.
        """
        starts, ends = set(), set()
        node: Node | None = self.root.descendant_for_byte_range(byte, byte)
        while node is not None:
            if node != self.root:
                starts.add(self.line_of(node.start_byte))
                ends.add(self.line_of(max(node.end_byte - 1, node.start_byte)))
            for child in node.named_children:
                if child.end_byte <= byte:
                    starts.add(self.line_of(child.start_byte))
                elif child.start_byte >= byte:
                    ends.add(self.line_of(max(child.end_byte - 1, child.start_byte)))
            node = node.parent
        return starts, ends


def _is_docstring(string: Node) -> bool:
    """A Python string that is the first statement of a module, class or function body."""
    statement = string.parent
    if statement is None or statement.type != "expression_statement" or statement.named_child_count != 1:
        return False
    body = statement.parent
    if body is None:
        return False
    owner = body.parent.type if body.type == "block" and body.parent is not None else None
    if body.type != "module" and owner not in ("function_definition", "class_definition"):
        return False
    first = next((child for child in body.named_children if child.type not in _COMMENTS), None)
    return first == statement


def _opens_block(token: Node, grammar: str | None, same_line: bool) -> bool:
    """Whether ``token``, the last on its line, opens a body the next lines belong to.

    On the cursor's own line only body openers count (``{``, Python's block ``:``): after ``foo(``
    the useful completion is the arguments inline, not a block.
    """
    if grammar == "python" and token.type == ":":
        # Not next_named_sibling: it skips the zero-width block of an empty body.
        siblings = token.parent.children if token.parent is not None else []
        after = (node for node in siblings if node.start_byte >= token.end_byte and node.is_named)
        following = next((node for node in after if node.type not in _COMMENTS), None)
        return following is not None and following.type == "block"
    return token.type == "{" if same_line else token.type in _OPENERS


# --- mode ----------------------------------------------------------------------------------------


def _ends_with_opener(
    window: _Window, syntax: _Syntax | None, grammar: str | None, line: int, column: int, same_line: bool
) -> bool:
    if syntax is None:
        code = window.line(line)[:column].rstrip()
        return bool(code) and (code[-1] == "{" if same_line else code[-1] in _OPENERS)
    token = syntax.last_token(line, column)
    return token is not None and _opens_block(token, grammar, same_line)


def _previous_code_line(window: _Window, syntax: _Syntax | None) -> int | None:
    """The nearest line above the cursor with code on it (not blank, not only a comment)."""
    for line in range(window.cursor_line - 1, -1, -1):
        text = window.line(line)
        if text.strip() and (syntax is None or syntax.last_token(line, len(text)) is not None):
            return line
    return None


def _docstring_ends(syntax: _Syntax, line: int) -> Node | None:
    """The Python docstring whose last line is ``line``, if any."""
    string = _ancestor(syntax.last_token(line, len(syntax.window.line(line))), _STRINGS)
    if string is not None and _is_docstring(string) and syntax.line_of(string.end_byte - 1) == line:
        return string
    return None


def _decide_mode(
    window: _Window, syntax: _Syntax | None, grammar: str | None, unit: str
) -> tuple[Mode, str, str]:
    """Mode, scope indentation and lead at the cursor; the rules are in the module docstring."""
    line, column = window.cursor_line, window.column
    text = window.line(line)
    before, after = text[:column], text[column:]
    indent = _indentation(text)
    literal = syntax.literal_at(syntax.byte(line, column)) if syntax is not None else None
    at_line_start = not before.strip() and literal is None
    if _WORD_CHAR.match(after):
        if not at_line_start:
            return "none", indent, ""
        lead = _statement_lead(window, syntax, grammar, before, unit, _previous_code_line(window, syntax))
        return "none", before + lead, lead
    if literal is not None:
        docstring = grammar == "python" and literal.type == "string" and _is_docstring(literal)
        return ("line" if docstring else "none"), indent, ""
    rest = after.strip()
    closing_only = not rest or set(rest) <= CLOSING_CHARS
    if before.strip():
        if closing_only and _ends_with_opener(window, syntax, grammar, line, column, same_line=True):
            return "block", indent + unit, ""
        return "line", indent, ""
    previous = _previous_code_line(window, syntax)
    if not closing_only:  # code follows: an explicit request writes a new line before it
        lead = _statement_lead(window, syntax, grammar, before, unit, previous)
        return "none", before + lead, lead
    if previous is None:
        return "line", before, ""
    previous_text = window.line(previous)
    if _ends_with_opener(window, syntax, grammar, previous, len(previous_text), same_line=False):
        body = _indentation(previous_text) + unit
    elif grammar == "python" and syntax is not None and (docstring := _docstring_ends(syntax, previous)):
        body = _indentation(window.line(syntax.line_of(docstring.start_byte)))
    else:
        lead = _statement_lead(window, syntax, grammar, before, unit, previous)
        return "line", before + lead, lead
    # Whitespace the editor already auto-indented is authoritative: it knows the user's settings.
    if len(before) > len(_indentation(previous_text)):
        return "block", before, ""
    return "block", body, body[len(before) :] if body.startswith(before) else ""


def _statement_lead(
    window: _Window, syntax: _Syntax | None, grammar: str | None, before: str, unit: str, previous: int | None
) -> str:
    """What to add to ``before`` for a statement starting at the cursor (module docstring, "Lead").

    ``previous`` is the line of the nearest code above the cursor (``_previous_code_line``).
    """
    partial = unit != "\t" and "\t" not in before and len(before) % len(unit) != 0
    if previous is None or (before and not partial):  # a whole level typed is the user's choice
        return ""
    code = window.line(previous)
    expected = _indentation(code)
    if _ends_with_opener(window, syntax, grammar, previous, len(code), same_line=False):
        expected += unit
    elif grammar == "python" and _PYTHON_DEDENT.match(code.lstrip()) and expected.endswith(unit):
        expected = expected[: -len(unit)]
    return expected[len(before) :] if expected.startswith(before) else ""


# --- budgets -------------------------------------------------------------------------------------


def _longest(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest ``k`` in ``[0, limit]`` with ``fits(k)``, for ``fits`` true up to a point."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


class _Budget:
    """``count_tokens`` against a token budget, never called on text that cannot possibly fit."""

    def __init__(self, count_tokens: CountTokens, tokens: int) -> None:
        self.count_tokens = count_tokens
        self.tokens = tokens
        self.max_chars = tokens * MAX_CHARS_PER_TOKEN

    def count(self, text: str) -> int:
        return self.count_tokens(text) if len(text) <= self.max_chars else self.tokens + 1

    def fits(self, text: str) -> bool:
        return self.count(text) <= self.tokens


def _prefix_start(window: _Window, budget: _Budget, units: set[int] | None) -> int:
    """Where the prefix starts in the window: whole lines back from the cursor (see module doc)."""
    text, starts, cursor, line = window.text, window.starts, window.cursor, window.cursor_line
    head = text[starts[line] : cursor]
    if not budget.fits(head):  # only the cursor line itself is ever cut
        return cursor - _longest(
            min(len(head), budget.max_chars), lambda k: budget.fits(head[len(head) - k :])
        )
    used = {line: budget.count(head)}  # estimated tokens of the prefix starting at each line
    first = line
    while first > 0 and cursor - starts[first - 1] <= budget.max_chars:
        total = used[first] + budget.count(text[starts[first - 1] : starts[first]])
        if total > budget.tokens:
            break
        first -= 1
        used[first] = total
    if not budget.fits(text[starts[first] : cursor]):  # the per-line sum underestimated
        first = line - _longest(line - first, lambda k: budget.fits(text[starts[line - k] : cursor]))
    if units is not None:
        snapped = min((unit for unit in units if first <= unit <= line), default=first)
        if 2 * used[snapped] >= used[first]:
            first = snapped
    return starts[first]


def _suffix_end(window: _Window, budget: _Budget, units: set[int] | None) -> int:
    """Where the suffix ends in the window: whole lines on from the cursor, like the prefix."""
    text, ends, cursor, line = window.text, window.ends, window.cursor, window.cursor_line
    tail = text[cursor : ends[line]]
    if not budget.fits(tail):
        return cursor + _longest(min(len(tail), budget.max_chars), lambda k: budget.fits(tail[:k]))
    used = {line: budget.count(tail)}
    last = line
    while last + 1 < len(ends) and ends[last + 1] - cursor <= budget.max_chars:
        total = used[last] + budget.count(text[ends[last] : ends[last + 1]])
        if total > budget.tokens:
            break
        last += 1
        used[last] = total
    if not budget.fits(text[cursor : ends[last]]):
        last = line + _longest(last - line, lambda k: budget.fits(text[cursor : ends[line + k]]))
    if units is not None:
        snapped = max((unit for unit in units if line <= unit <= last), default=last)
        if 2 * used[snapped] >= used[last]:
            last = snapped
    return ends[last]


def _window_chars(tokens: int) -> int:
    """Characters of window on one side of the cursor: room for the budget, and parse context."""
    return max(4096, 2 * tokens * MAX_CHARS_PER_TOKEN)


# --- entry point ---------------------------------------------------------------------------------


def extract_context(
    text: str,
    offset: int,
    language_id: str,
    count_tokens: CountTokens,
    *,
    uri: str = "",
    prefix_tokens: int = 384,
    suffix_tokens: int = 128,
) -> InfillContext:
    """The ``InfillContext`` for a cursor at string ``offset`` of ``text``.

    ``language_id`` is the LSP languageId (``uri``'s extension is the fallback for picking a
    grammar). ``count_tokens`` is the model tokenizer's count, injected to keep this module pure.
    """
    offset = min(max(offset, 0), len(text))
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        offset -= 1  # inside a "\r\n" is not a position; take the end of the line
    grammar = grammar_name(language_id, uri)
    before, after = _window_chars(prefix_tokens), _window_chars(suffix_tokens)
    window = _Window.around(text, offset, before, after)
    syntax = _Syntax.parse(window, grammar) if len(window.text) <= before + after else None
    unit = detect_indent_unit(window.text, _DEFAULT_INDENT_UNIT.get(grammar or "", "    "))
    mode, indent, lead = _decide_mode(window, syntax, grammar, unit)

    prefix_units = suffix_units = None
    if syntax is not None:
        prefix_units, suffix_units = syntax.unit_lines(syntax.byte(window.cursor_line, window.column))
        if window.start == 0:
            prefix_units.add(0)
        if window.start + len(window.text) == len(text):
            suffix_units.add(len(window.ends) - 1)
    lead_tokens = count_tokens(lead) if lead else 0
    start = _prefix_start(window, _Budget(count_tokens, prefix_tokens - lead_tokens), prefix_units)
    end = _suffix_end(window, _Budget(count_tokens, suffix_tokens), suffix_units)
    line = window.line(window.cursor_line)
    return InfillContext(
        prefix=window.text[start : window.cursor] + lead,
        suffix=window.text[window.cursor : end],
        mode=mode,
        offset=offset,
        language=grammar,
        line_prefix=line[: window.column] + lead,
        line_suffix=line[window.column :],
        indent=indent,
        indent_unit=unit,
        line_ending=detect_line_ending(window.text),
        lead=lead,
    )
