"""Which region a "Fill with DiffusionGemma" at the cursor regenerates, when nothing is selected.

Pure (tree-sitter only). Offered cheaply on every cursor move, so it parses a bounded window and
never calls the model. Targets, innermost first:

- the body of the function at the cursor when it is empty: only ``pass`` / ``...`` (after an
  optional docstring) in Python, ``{}`` or comments only in braces languages;
- a line whose comment says ``TODO`` (the whole line's code is replaced).

A selection is trimmed by ``trim_selection`` first, so whole-line selections behave like targets.
"""

from __future__ import annotations

import ast
import re

from tree_sitter import Node

from diffgemma_ls.languages import get_parser, grammar_name

WINDOW_CHARS = 200_000  # a fill target is local; a huge file is parsed around the cursor only
_FUNCTIONS = frozenset(
    {
        "function_definition",  # Python
        "function_declaration",  # JS, TS, Go
        "method_definition",  # JS, TS
        "method_declaration",  # Go
        "arrow_function",
        "function_item",  # Rust
    }
)
_PLACEHOLDERS = frozenset({"pass_statement", "ellipsis", "comment", "line_comment", "block_comment"})
_TODO = re.compile(r"(#|//|/\*).*\bTODO\b")


def _window(text: str, offset: int) -> tuple[int, str]:
    start = max(0, text.rfind("\n", 0, max(0, offset - WINDOW_CHARS // 2)) + 1)
    end = text.find("\n", min(len(text), offset + WINDOW_CHARS // 2))
    return start, text[start : len(text) if end < 0 else end]


def _is_placeholder(node: Node) -> bool:
    if node.type in _PLACEHOLDERS:
        return True
    if node.type == "expression_statement" and node.named_child_count == 1:
        child = node.named_children[0]
        return child.type == "ellipsis" or (child.type == "string" and node.prev_named_sibling is None)
    return False


def _empty_body(function: Node) -> tuple[int, int] | None:
    """Byte span of an empty body's placeholder statements (Python) or of the inside of ``{}``."""
    body = function.child_by_field_name("body")
    if body is None:
        return None
    statements = body.named_children
    if not all(_is_placeholder(s) for s in statements):
        return None
    if body.type == "block" and function.type == "function_definition":  # Python: keep a docstring
        code = [
            s
            for s in statements
            if not (s.type == "expression_statement" and s.named_children[0].type == "string")
        ]
        if not code:
            return None
        return code[0].start_byte, code[-1].end_byte
    if body.child_count >= 2 and body.children[0].type == "{":
        return body.children[0].end_byte, body.children[-1].start_byte
    return None


def fill_target(text: str, offset: int, language_id: str, uri: str = "") -> tuple[int, int] | None:
    """The (start, end) string offsets a fill at ``offset`` would replace, or None."""
    base, window = _window(text, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line = text[line_start : len(text) if line_end < 0 else line_end]
    grammar = grammar_name(language_id, uri)
    parser = get_parser(grammar) if grammar else None
    if parser is not None:
        data = window.encode("utf-8", "surrogatepass")
        tree = parser.parse(data)
        cursor_byte = len(window[: offset - base].encode("utf-8", "surrogatepass"))
        node: Node | None = tree.root_node.named_descendant_for_byte_range(cursor_byte, cursor_byte)
        while node is not None and node.type not in _FUNCTIONS:
            node = node.parent
        span = _empty_body(node) if node is not None else None
        if span is not None:
            start = base + len(data[: span[0]].decode("utf-8", "surrogatepass"))
            end = base + len(data[: span[1]].decode("utf-8", "surrogatepass"))
            return start, end
    if _TODO.search(line):
        indent = len(line) - len(line.lstrip())
        return line_start + indent, line_start + len(line.rstrip("\r"))
    return None


def has_code(replacement: str, language_id: str, uri: str = "") -> bool:
    """Whether a replacement holds more than blanks, comments and placeholders (``pass``, ``...``).

    A fill that writes only a comment or a placeholder where the user asked for code is nothing
    useful, so it changes nothing. Without a grammar, any non-blank text counts.
    """
    if not replacement.strip():
        return False
    grammar = grammar_name(language_id, uri)
    parser = get_parser(grammar) if grammar else None
    if parser is None:
        return True
    root = parser.parse(replacement.encode("utf-8", "surrogatepass")).root_node
    return any(not _is_placeholder(node) for node in root.named_children)


# one statement that does nothing useful in place of a body
_TRIVIAL = re.compile(
    r"(return|return (None|\{\}|\[\]|\(\)|''|\"\"|0|-1|False|True|nil|null)|pass|\.\.\.|"
    r"raise NotImplementedError(\(.*\))?|panic!?\(.*\)|todo!\(\)|unimplemented!\(\)|\{\}|;)[;]?"
)


def discards_working_code(original: str, replacement: str, language_id: str, uri: str = "") -> bool:
    """Whether ``replacement`` throws away working code for one trivial line (``return``, ``pass``, ...).

    A fill of a correct 6-line body came back as ``return None``: it parses, and the model found it
    likely, but it deletes what the user wrote. Only code of two lines or more counts as working
    code (an empty body, ``pass`` or a ``TODO`` line gets a real attempt); the replacement counts as
    trivial when it is one line that does nothing, or one line a quarter of the code's length.
    """
    code = [line.strip() for line in original.splitlines() if line.strip()]
    code = [line for line in code if not line.startswith(("#", "//", "/*", "*"))]
    if len(code) < 2 or not has_code(original, language_id, uri):
        return False
    lines = [line.strip() for line in replacement.splitlines() if line.strip()]
    if len(lines) != 1:
        return False
    return bool(_TRIVIAL.fullmatch(lines[0])) or len(lines[0]) < sum(map(len, code)) / 4


def trim_selection(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` without the blank space at either end; unchanged if it is all blank.

    Editors select whole lines (Neovim's ``V``, a triple click): the indentation before the first
    line and the line break after the last belong to the surrounding code, which the model sees as
    prefix and suffix. Regenerating them too would leave the model to re-create the layout.
    """
    region = text[start:end]
    if not region.strip():
        return start, end
    return start + len(region) - len(region.lstrip()), end - (len(region) - len(region.rstrip()))


def _error_count(node: Node) -> int:
    """ERROR and MISSING nodes below ``node`` (only subtrees that have an error are walked)."""
    if not node.has_error and not node.is_missing:
        return 0
    own = 1 if node.type == "ERROR" or node.is_missing else 0
    return own + sum(_error_count(child) for child in node.children)


def breaks_syntax(text: str, start: int, end: int, replacement: str, language_id: str, uri: str = "") -> bool:
    """Whether writing ``replacement`` over ``text[start:end]`` adds syntax errors around the region.

    A fill rewrites code the user already has, so a replacement that does not parse where the
    original did is worse than nothing: the server then changes nothing. Both versions are parsed on
    the same window around the region; errors the file already had do not count against the fill.
    Python is also compiled (to an AST, nothing runs), since tree-sitter accepts some indentation
    errors. Languages without a grammar are never judged broken.
    """
    grammar = grammar_name(language_id, uri)
    parser = get_parser(grammar) if grammar else None
    if parser is None:
        return False
    base, window = _window(text, start)
    stop = max(base + len(window), end)  # a region longer than the window is judged whole
    before = text[base:stop]
    after = text[base:start] + replacement + text[end:stop]
    old, new = (
        _error_count(parser.parse(version.encode("utf-8", "surrogatepass")).root_node)
        for version in (before, after)
    )
    if new > old:
        return True
    return grammar == "python" and python_compiles(before) and not python_compiles(after)


def python_compiles(source: str) -> bool:
    """Whether Python accepts ``source`` (parsed to an AST only: nothing is executed)."""
    try:
        compile(source, "<fill>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True
