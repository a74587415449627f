"""Cut the completion at the first special token that leaked into the decoded text.

The engine stops at ``<eos>``, but a diffusion canvas is decoded all at once: a ``<pad>`` or an
unresolved ``<|mask|>`` can sit before the end, and a model that restarts the FIM layout writes
``<|fim_prefix|>`` or ``<|file_separator|>``. Nothing after any of them belongs to the middle, so
cutting (rather than deleting the token and keeping what follows) is the safe choice.
"""

from __future__ import annotations

import re

from diffgemma_ls.context import InfillContext
from diffgemma_ls.prompt import SPECIAL_TOKENS

# The plain-text markers prompt.py uses for tokenizers without FIM tokens.
_PLAIN_MARKERS = ("<SUFFIX>", "<PREFIX>", "<MIDDLE>")
_SPECIAL = re.compile("|".join(re.escape(token) for token in (*SPECIAL_TOKENS, *_PLAIN_MARKERS)))


def cut_special_tokens(text: str, ctx: InfillContext) -> str:
    match = _SPECIAL.search(text)
    return text[: match.start()] if match else text
