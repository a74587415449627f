"""Typing-ahead: a keystroke that types the start of the shown completion is answered without the model.

Like Tabby's typing-ahead cache: when a person types exactly what the ghost text proposed, the rest
of that ghost text is still the answer, so no forward pass is needed. Pure: no model, no protocol.

It also spots an accepted completion (``accepted_at``: the document now holds all of it), after
which the server prefetches the next answer, as llama.vim does; a prefetched answer is kept here
too and answers a request at exactly its position, since it is what the model would say there.
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
    prefetched: bool  # computed ahead of any request, right after an accept


@dataclass(frozen=True)
class Hit:
    completion: Completion  # what is left to show
    prefetched: bool  # the answer was computed by a prefetch


class TypeAhead:
    """The last completion shown per document (at most ``max_documents``, least recently used out)."""

    def __init__(self, max_documents: int = 64):
        self.max_documents = max_documents
        self._shown: OrderedDict[str, _Shown] = OrderedDict()

    def __len__(self) -> int:
        return len(self._shown)

    def remember(
        self, uri: str, text: str, offset: int, completion: Completion, *, prefetched: bool = False
    ) -> None:
        start = max(0, offset - CONTEXT_CHARS)
        self._shown[uri] = _Shown(
            offset, text[start:offset], text[offset : offset + CONTEXT_CHARS], completion, prefetched
        )
        self._shown.move_to_end(uri)
        while len(self._shown) > self.max_documents:
            self._shown.popitem(last=False)

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)

    def lookup(self, uri: str, text: str, offset: int) -> Hit | None:
        """The rest of the shown completion if everything typed since matches its start, else None.

        At the very position it was made for, only a prefetched answer counts (it has not been shown
        yet); a shown one is not repeated there: a request at an unchanged position is the model's.
        """
        shown = self._shown.get(uri)
        if shown is None:
            return None
        typed_len = offset - shown.offset
        if not (0 if shown.prefetched else 1) <= typed_len < len(shown.completion.text):
            return None
        if not shown.completion.text.startswith(text[shown.offset : offset]) or not self._around(shown, text):
            return None
        if text[offset : offset + len(shown.after)] != shown.after:
            return None
        self._shown.move_to_end(uri)
        rest = Completion(shown.completion.text[typed_len:], shown.completion.replace_end)
        return Hit(rest, shown.prefetched)

    def accepted_at(self, uri: str, text: str) -> int | None:
        """The cursor offset after the shown completion if the document now holds all of it, else None.

        That is what accepting it (Tab) or typing all of it leaves: the text before it unchanged,
        the completion, then what followed the cursor minus the closers the completion replaced.
        """
        shown = self._shown.get(uri)
        if shown is None:
            return None
        end = shown.offset + len(shown.completion.text)
        after = shown.after[shown.completion.replace_end :]
        if text[shown.offset : end] != shown.completion.text or not self._around(shown, text):
            return None
        if text[end : end + len(after)] != after:
            return None
        return end

    @staticmethod
    def _around(shown: _Shown, text: str) -> bool:
        return text[shown.offset - len(shown.before) : shown.offset] == shown.before
