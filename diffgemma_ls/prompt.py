"""The prompt layouts: how the code around the cursor is put before the canvas, per checkpoint.

A checkpoint's prompt format is a property of its tokenizer (``prompt_layout``):

* ``fim``, the tokenizer has FIM tokens (the shipped code model, trained on this layout):
  suffix-then-prefix ("SPM"), ``<bos><|fim_suffix|>S<|fim_prefix|>P<|fim_middle|>``. The canvas the
  decoder fills is ``middle <eos> <pad>...``.
* ``chat``, a chat template and no FIM tokens (``google/diffusiongemma-26B-A4B-it``: Gemma 4's
  vocabulary has none). DiffusionGemma's ``generate()`` always puts the canvas after the whole
  prompt and its sampler re-noises anything not accepted, so a hole cannot be left inside the
  canvas: the suffix goes in the prompt. One user turn, rendered by the checkpoint's own template
  (thinking off, as transformers' and diffusers' DiffusionGemma examples prompt it), gives the
  language, the file and the code after, then before, the cursor in fenced blocks, and asks for
  the missing code only; the model turn is pre-filled with an opening fence and the cursor line's
  text, so the canvas starts at the cursor (``postprocess.strip_markdown`` removes a closing fence).
* ``plain``, neither: the SPM layout with plain-text markers, which no model was trained on; the
  loader warns.

In every layout the suffix comes before the prefix and the prefix ends the part that grows as the
user types: the encoder's cached prompt stays valid up to the cursor and only the new characters
(plus a few marker tokens, ``FimPrompt.tail``) need prefilling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from diffgemma_ls.snippets import Snippet, snippet_text

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

PromptFormat = Literal["fim", "chat", "plain"]
PROMPT_FORMATS = ("auto", "fim", "chat")  # what a user may ask for; "plain" is only ever a fallback
# Gemma 4 ends a model turn with this token: an end of the canvas's text, like <eos>
END_OF_TURN = "<turn|>"
# Stands for the user's message while the chat template is rendered once; no whitespace, since
# templates trim the content.
_CONTENT = "\x00diffgemma-ls-content\x00"


class TokenizerLike(Protocol):
    """The slice of a Hugging Face tokenizer that prompt building needs."""

    chat_template: str | None

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: object) -> str: ...

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


@functools.lru_cache(maxsize=8)
def token_counter(tokenizer: TokenizerLike) -> Callable[[str], int]:
    """``len(encode_text(tokenizer, text))``, remembered for the last few thousand texts.

    Context cutting counts the tokens of every line it considers, on every keystroke; between two
    keystrokes only the cursor line changes, so nearly every count is one it made before
    (~40 counts and ~4 ms a request on this CPU without it).
    """

    @functools.lru_cache(maxsize=4096)
    def count(text: str) -> int:
        return len(encode_text(tokenizer, text))

    return count


@dataclass(frozen=True)
class PromptLayout:
    """A checkpoint's prompt format, resolved once at load.

    For ``chat``, ``turn_head`` and ``turn_tail`` are the checkpoint's chat template rendered around
    one user message (``turn_tail``: the end of that turn and the model's turn, thinking off).
    """

    format: PromptFormat
    turn_head: str = ""
    turn_tail: str = ""


def prompt_layout(tokenizer: TokenizerLike, requested: str = "auto") -> PromptLayout:
    """The layout to prompt with: ``requested`` if the tokenizer supports it (``ValueError`` if not).

    ``auto`` takes ``fim`` where the tokenizer has FIM tokens, else ``chat`` where it has a chat
    template, else ``plain``.
    """
    if requested not in PROMPT_FORMATS:
        raise ValueError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {requested!r}")
    has_fim = fim_ids(tokenizer).native
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if requested == "fim" and not has_fim:
        raise ValueError(
            "promptFormat 'fim': this tokenizer has no FIM tokens (<|fim_prefix|>, <|fim_middle|>, ...)"
        )
    if requested == "chat" and not has_chat:
        raise ValueError("promptFormat 'chat': this tokenizer has no chat template")
    if requested == "fim" or (requested == "auto" and has_fim):
        return PromptLayout("fim")
    if not has_chat:
        return PromptLayout("plain")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _CONTENT}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    head, found, tail = rendered.partition(_CONTENT)
    if not found:
        raise ValueError("the chat template does not render the user's message as given")
    return PromptLayout("chat", head, tail)


def _fence(code: str) -> str:
    """A Markdown fence longer than any backtick run in ``code``, so the code cannot close it."""
    longest, run = 0, 0
    for char in code:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def build_prompt(
    tokenizer: TokenizerLike,
    prefix: str,
    suffix: str,
    layout: PromptLayout | None = None,
    *,
    language: str = "",
    path: str = "",
    snippets: Sequence[Snippet] = (),
) -> FimPrompt:
    """Tokenize ``prefix``/``suffix`` into ``layout`` (default: the tokenizer's own, see the module doc).

    ``language`` and ``path`` name the file in the chat layout; the FIM layouts do not use them.
    ``snippets`` (other files' chunks, ``diffgemma_ls.snippets``) come first, each as
    ``<|file_separator|>path\ncode`` (the repository layout of CodeGemma and Qwen-Coder), in the
    FIM layout only, and only where the tokenizer has the separator.
    """
    layout = layout or prompt_layout(tokenizer)
    if layout.format == "chat":
        return _chat_prompt(tokenizer, prefix, suffix, layout, language, path)
    ids = fim_ids(tokenizer)
    enc = lambda text: encode_text(tokenizer, text)  # noqa: E731
    head = [ids.bos] if ids.bos is not None else []
    separator = _token_id(tokenizer, FILE_SEP)
    if layout.format == "fim" and separator is not None:
        for text in snippet_text(snippets):
            head += [separator, *enc(text)]
    if layout.format == "fim":
        head += [ids.suffix, *enc(suffix), ids.prefix]
        tail = [ids.middle]
    else:
        head += enc(_PLAIN_MARKERS[FIM_SUFFIX] + suffix + _PLAIN_MARKERS[FIM_PREFIX])
        tail = enc(_PLAIN_MARKERS[FIM_MIDDLE])
    return FimPrompt(head=head, prefix=enc(prefix), tail=tail)


def _chat_parts(
    prefix: str, suffix: str, language: str, path: str
) -> tuple[list[str | list[str]], list[str | list[str]]]:
    """The user's message and the model turn's start, as parts: ``_Ours`` text, or the document's."""
    fence = _fence(prefix + suffix)
    line = prefix.rpartition("\n")[2]
    lang = language or "code"
    where = [_Ours(" of `"), path, _Ours("`")] if path else []
    user = [
        [_Ours("Fill in the missing "), lang, _Ours(" code at the cursor"), *where],
        _Ours(f".\n\nThe code after the cursor:\n{fence}\n"),
        suffix,
        _Ours(f"\n{fence}\n\nThe code before the cursor:\n{fence}\n"),
        prefix,
        _Ours(
            f"\n{fence}\n\nReply with one {fence} block holding only the missing code, from the cursor's "
            "line on, so that the code before, your code and the code after form the file."
        ),
    ]
    return user, [_Ours(fence), lang, _Ours("\n"), line]


def _chat_prompt(
    tokenizer: TokenizerLike, prefix: str, suffix: str, layout: PromptLayout, language: str, path: str
) -> FimPrompt:
    """One user turn (suffix, then prefix up to the cursor) and a model turn that starts at the cursor.

    Template and instruction text are tokenized with their special tokens; whatever comes from the
    document or the client (code, path, language id) with ``encode_text``, so a file that spells
    ``<turn|>`` cannot end the turn.
    """
    (opening, *head, _prefix, tail), (fence, *model_turn) = _chat_parts(prefix, suffix, language, path)
    # template text joins the instructions it touches: tokenized as one, as the template renders it
    opening = [_Ours(layout.turn_head + opening[0]), *opening[1:]]
    return FimPrompt(
        head=_encode(tokenizer, opening, *head),
        prefix=encode_text(tokenizer, prefix),
        tail=_encode(tokenizer, _Ours(tail + layout.turn_tail + fence), *model_turn),
    )


def chat_messages(prefix: str, suffix: str, language: str = "", path: str = "") -> list[dict[str, str]]:
    """The chat layout as OpenAI-style messages (an HTTP backend applies the template itself): the
    user's turn and the model's turn pre-filled up to the cursor, to be continued."""
    user, model_turn = _chat_parts(prefix, suffix, language, path)
    text = lambda parts: "".join(t for part in parts for t in (part if isinstance(part, list) else [part]))  # noqa: E731
    return [{"role": "user", "content": text(user)}, {"role": "assistant", "content": text(model_turn)}]


class _Ours(str):
    """Text this module wrote (template, instructions): its special tokens are tokens."""


def _encode(tokenizer: TokenizerLike, *parts: str | list[str]) -> list[int]:
    ids: list[int] = []
    for part in parts:
        for text in part if isinstance(part, list) else [part]:
            if not text:
                continue
            if isinstance(text, _Ours):
                ids += tokenizer.encode(text, add_special_tokens=False)
            else:
                ids += encode_text(tokenizer, text)
    return ids
