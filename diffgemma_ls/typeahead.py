"""Typing-ahead: a keystroke that types the start of the shown completion is answered without the model.

Like Tabby's typing-ahead cache: when a person types exactly what the ghost text proposed, the rest
of that ghost text is still the answer, so no forward pass is needed. Pure: no model, no protocol.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from diffgemma_ls.postprocess import Completion

# Text compared around the cursor: enough to tell an edit elsewhere nearby from typing at the cursor,
# small enough that a 10 MB document costs nothing. An edit farther away does not change the answer
# in practice (and the model's window is about this size anyway).
CONTEXT_CHARS = 4000


@dataclass(frozen=True)
class _Shown:
    offset: int
    before: str  # up to CONTEXT_CHARS of text before the cursor when the completion was made
    after: str  # up to CONTEXT_CHARS of text after it
    completion: Completion


class TypeAhead:
    """The last completion shown per document (at most ``max_documents``, least recently used out)."""

    def __init__(self, max_documents: int = 64):
        self.max_documents = max_documents
        self._shown: OrderedDict[str, _Shown] = OrderedDict()

    def __len__(self) -> int:
        return len(self._shown)

    def remember(self, uri: str, text: str, offset: int, completion: Completion) -> None:
        start = max(0, offset - CONTEXT_CHARS)
        self._shown[uri] = _Shown(
            offset, text[start:offset], text[offset : offset + CONTEXT_CHARS], completion
        )
        self._shown.move_to_end(uri)
        while len(self._shown) > self.max_documents:
            self._shown.popitem(last=False)

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)

    def lookup(self, uri: str, text: str, offset: int) -> Completion | None:
        """The rest of the shown completion if everything typed since matches its start, else None."""
        shown = self._shown.get(uri)
        if shown is None:
            return None
        typed_len = offset - shown.offset
        if not 0 < typed_len < len(shown.completion.text):
            return None
        typed = text[shown.offset : offset]
        if not shown.completion.text.startswith(typed):
            return None
        if text[shown.offset - len(shown.before) : shown.offset] != shown.before:
            return None
        if text[offset : offset + len(shown.after)] != shown.after:
            return None
        self._shown.move_to_end(uri)
        return Completion(shown.completion.text[typed_len:], shown.completion.replace_end)
