"""Which tree-sitter grammar parses a document, from its LSP ``languageId`` or file extension.

Grammars come from the per-language wheels (``tree-sitter-python`` and friends), so nothing is
downloaded or compiled at run time. A language without a grammar is not an error: context
extraction falls back to plain lines for it.
"""

from __future__ import annotations

import importlib
import threading
from functools import cache
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from tree_sitter import Language, Parser

# LSP languageId -> grammar name. JSX is part of the JavaScript grammar; TSX has its own.
_GRAMMAR_BY_LANGUAGE_ID = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "go": "go",
    "rust": "rust",
}

# File extension -> LSP languageId (the CLI's language for a file; the grammar for a URI without one).
LANGUAGE_BY_EXTENSION = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascriptreact",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "typescriptreact",
    ".go": "go",
    ".rs": "rust",
}


# Module and function of each grammar binding, imported on first use: a Python-only user should
# not pay for loading five grammars at startup.
_BINDINGS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}

GRAMMARS: frozenset[str] = frozenset(_BINDINGS)

# Parsers keep per-parse state and are not safe to share between threads; Languages are.
_thread_local = threading.local()


def grammar_name(language_id: str, uri: str = "") -> str | None:
    """Grammar for an LSP ``languageId`` (or a grammar name), else for the URI's extension."""
    grammar = _GRAMMAR_BY_LANGUAGE_ID.get(language_id) or (language_id if language_id in GRAMMARS else None)
    if grammar is None and uri:
        grammar = _GRAMMAR_BY_LANGUAGE_ID.get(language_for(uri) or "")
    return grammar


def language_for(path: str) -> str | None:
    """The LSP languageId of a file path or URI, from its extension."""
    path = unquote(urlparse(path).path) if "://" in path else path
    return LANGUAGE_BY_EXTENSION.get(PurePosixPath(path).suffix.lower())


@cache
def get_language(grammar: str) -> Language | None:
    """The tree-sitter ``Language`` for a grammar name, or ``None`` when there is no grammar."""
    if grammar not in _BINDINGS:
        return None
    module, function = _BINDINGS[grammar]
    try:
        binding = importlib.import_module(module)
    except ImportError:  # an uninstalled wheel degrades to plain lines, like an unknown language
        return None
    return Language(getattr(binding, function)())


def get_parser(grammar: str) -> Parser | None:
    """A parser for ``grammar``, reused across calls on the same thread."""
    parsers: dict[str, Parser | None] = _thread_local.__dict__.setdefault("parsers", {})
    if grammar not in parsers:
        language = get_language(grammar)
        parsers[grammar] = Parser(language) if language else None
    return parsers[grammar]


def served_languages(code_languages: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """LSP language ids to complete: a code model's own (its config's ``code_languages``), or, for a
    general model that lists none (the real DiffusionGemma), every id whose grammar is installed."""
    if code_languages:
        return tuple(code_languages)
    return tuple(lid for lid, grammar in _GRAMMAR_BY_LANGUAGE_ID.items() if get_language(grammar) is not None)
