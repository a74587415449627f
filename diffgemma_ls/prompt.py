"""The fill-in-the-middle prompt layout shared by training and serving.

Order is suffix-then-prefix ("SPM"): ``<bos><|fim_suffix|>S<|fim_prefix|>P<|fim_middle|>``.
While a person types at the cursor, the suffix stays put and the prefix only grows at its end,
so the encoder's cached prompt stays valid up to the cursor and only the new characters (plus
``<|fim_middle|>``) need prefilling. The canvas the decoder fills is ``middle <eos> <pad>...``.

A tokenizer without the FIM special tokens (e.g. a general chat checkpoint) gets the same layout
with plain-text markers, so any DiffusionGemma checkpoint can be served, if less well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

PAD = "<pad>"
EOS = "<eos>"
BOS = "<bos>"
MASK = "<|mask|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FILE_SEP = "<|file_separator|>"
# Multimodal placeholders the DiffusionGemma config requires ids for; the code model never uses them.
BOI = "<|boi|>"
EOI = "<|eoi|>"
IMAGE = "<|image|>"

# Order fixes the ids of the shipped tokenizer: pad=0, eos=1, bos=2 as in DiffusionGemmaTextConfig.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    EOS,
    BOS,
    MASK,
    FIM_PREFIX,
    FIM_SUFFIX,
    FIM_MIDDLE,
    FILE_SEP,
    BOI,
    EOI,
    IMAGE,
)

_PLAIN_MARKERS = {FIM_SUFFIX: "<SUFFIX>\n", FIM_PREFIX: "\n<PREFIX>\n", FIM_MIDDLE: "\n<MIDDLE>\n"}


class TokenizerLike(Protocol):
    """The slice of a Hugging Face tokenizer that prompt building needs."""

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...

    def encode(
        self, text: str, add_special_tokens: bool = ..., split_special_tokens: bool = ...
    ) -> list[int]: ...


@dataclass(frozen=True)
class FimIds:
    """Token ids of the FIM markers; ``None`` where the tokenizer lacks them."""

    bos: int | None
    prefix: int | None
    suffix: int | None
    middle: int | None

    @property
    def native(self) -> bool:
        return None not in (self.prefix, self.suffix, self.middle)


def _token_id(tokenizer: TokenizerLike, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if tid is None or (unk is not None and tid == unk) else tid


def fim_ids(tokenizer: TokenizerLike) -> FimIds:
    bos = getattr(tokenizer, "bos_token_id", None)
    return FimIds(
        bos=bos,
        prefix=_token_id(tokenizer, FIM_PREFIX),
        suffix=_token_id(tokenizer, FIM_SUFFIX),
        middle=_token_id(tokenizer, FIM_MIDDLE),
    )


@dataclass(frozen=True)
class FimPrompt:
    """Prompt ids split where the keystroke cache needs them.

    ``head`` (bos, suffix marker, suffix, prefix marker) changes only when the suffix does;
    ``prefix`` grows as the user types; ``tail`` (the middle marker) is always re-encoded.
    """

    head: list[int]
    prefix: list[int]
    tail: list[int]

    @property
    def ids(self) -> list[int]:
        return self.head + self.prefix + self.tail


def encode_text(tokenizer: TokenizerLike, text: str) -> list[int]:
    """Document text as plain text: an ``<eos>`` or ``<|fim_middle|>`` written in a file (ML code,
    this very module) is characters, not a control token that would end or restructure the prompt."""
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def build_prompt(tokenizer: TokenizerLike, prefix: str, suffix: str) -> FimPrompt:
    """Tokenize ``prefix``/``suffix`` into the SPM layout (see module docstring)."""
    ids = fim_ids(tokenizer)
    enc = lambda text: encode_text(tokenizer, text)  # noqa: E731
    head = [ids.bos] if ids.bos is not None else []
    if ids.native:
        head += [ids.suffix, *enc(suffix), ids.prefix]
        tail = [ids.middle]
    else:
        head += enc(_PLAIN_MARKERS[FIM_SUFFIX] + suffix + _PLAIN_MARKERS[FIM_PREFIX])
        tail = enc(_PLAIN_MARKERS[FIM_MIDDLE])
    return FimPrompt(head=head, prefix=enc(prefix), tail=tail)
