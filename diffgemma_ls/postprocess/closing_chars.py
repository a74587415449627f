"""Replace, rather than duplicate, the closing characters after the cursor.

Editors auto-close brackets and quotes, so the cursor often sits before ``)``, ``")`` or ``):``.
A model that writes those closers itself would double them; one that stops before them is fine
as it is. When only closing characters (with ``;``, ``:``, ``,``) follow the cursor, the
completion replaces the longest start of them that it both ends with and accounts for:

* its unmatched closing brackets - those closing something opened before the cursor - must be
  exactly the brackets of the replaced part, so ``f(x)`` in ``print(█)`` (its ``)`` is its own)
  is inserted, while ``f(x))`` replaces the ``)``;
* a quote in the replaced part must appear an odd number of times in the completion (it closes
  a string opened before the cursor), which works for triple quotes as well as single ones.

The text itself is never changed: only how much of the line it replaces.
"""

from __future__ import annotations

from diffgemma_ls.context import InfillContext

_OPENER_OF = {")": "(", "]": "[", "}": "{"}
_QUOTES = "\"'`"


def _unmatched_closers(text: str) -> str:
    """Closing brackets in ``text`` that close something opened before it."""
    opened: list[str] = []
    unmatched = []
    for char in text:
        if char in "([{":
            opened.append(char)
        elif char in _OPENER_OF:
            if opened and opened[-1] == _OPENER_OF[char]:
                opened.pop()
            else:
                unmatched.append(char)
    return "".join(unmatched)


def _accounts_for(text: str, replaced: str) -> bool:
    """Whether ``text``, ending with ``replaced``, closes what ``replaced`` closes in the document."""
    closers = "".join(char for char in replaced if char in _OPENER_OF)
    if _unmatched_closers(text) != closers:
        return False
    return all(text.count(quote) % 2 == 1 for quote in set(replaced) & set(_QUOTES))


def replaced_closers(text: str, ctx: InfillContext) -> int:
    """How many characters after the cursor the completion ``text`` replaces (0: it inserts)."""
    if not ctx.rest_is_closing:
        return 0
    rest = ctx.line_suffix.rstrip()
    for length in range(len(rest), 0, -1):
        replaced = rest[:length]
        if text.endswith(replaced) and _accounts_for(text, replaced):
            return length
    return 0
