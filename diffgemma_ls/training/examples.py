"""Infilling examples cut from source files, laid out exactly as the server prompts the model.

Shared by the default model's training (``model/train.py``, on the corpus) and ``diffgemma-ls tune``
(on a workspace's own files).

An example is ``(prompt_ids, middle_ids)`` where ``prompt_ids`` is
``build_prompt(tokenizer, prefix, suffix).ids`` (the same function the server calls, so training
and serving see identical token sequences) and the middle is what the decoder must write.

Middles come in the shapes a completion request has in an editor:

- ``line_tail``: the rest of a line from a random column (typing mid-line);
- ``line``: a whole line after its indentation (cursor on a fresh, auto-indented line);
- ``block``: a tree-sitter ``block`` node (body of a def / class / if / for / with / try ...);
- ``span``: a random character span, possibly crossing lines (general infilling).

Prefix and suffix are cut at line boundaries to at most ``max_prefix`` / ``max_suffix`` tokens,
like an editor sending a window around the cursor (in training, a random window up to those).

With ``context_prob`` an example also gets cross-file context, as the server sends it: chunks of
other files of the same package (directory) ranked against the lines around the cursor
(``diffgemma_ls.snippets``), within a random character budget up to ``max_context_chars``, put
before the FIM prompt by ``build_prompt``. The corpus is package-shaped, so siblings share a
package's names the way a workspace's files do.

``make_batch`` turns examples into a canvas batch. Middles longer than one canvas are trained as
block-autoregressive continuation, the way ``generate()`` decodes them: the encoder sees the
prompt followed by the first ``k * canvas`` middle tokens and the canvas holds the next chunk.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath

import torch
import tree_sitter_python
from tree_sitter import Language, Parser

from diffgemma_ls.prompt import build_prompt, encode_text
from diffgemma_ls.snippets import Chunk, Snippet, best_snippets, chunks_of, query_of

KINDS = ("line_tail", "line", "block", "span")
# Training and the held-out set draw the same mix. ``next7``/``next8`` also trained on column-0
# whole lines; the server's lead (context.py) never asks for those, and they completed worse.
KIND_WEIGHTS = (0.35, 0.15, 0.25, 0.25)
MAX_BLOCK_BYTES = 1500
MAX_CONTINUATION = 192  # middle tokens appended to the prompt in block-AR examples
MAX_SIBLINGS = 24  # other files of the package whose chunks an example's context is drawn from


def packages(files: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Files grouped by directory: the siblings a file's cross-file context comes from."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for path, text in files:
        groups[str(PurePosixPath(path).parent)].append((path, text))
    return dict(groups)


@dataclass
class Example:
    prompt: list[int]  # build_prompt(...).ids
    middle: list[int]  # tokens the canvas must produce, without EOS
    kind: str
    prefix: str  # the text behind ``prompt``, for decoding through the server's engine
    suffix: str
    snippets: tuple[Snippet, ...] = ()  # the cross-file context in ``prompt``


class InfillSampler:
    """Draws infilling examples from a list of files (files weighted by length)."""

    def __init__(
        self,
        texts: list[str],
        tokenizer,
        max_prefix: int = 384,
        max_suffix: int = 128,
        vary_window: bool = False,
        paths: list[str] | None = None,
        pool: dict[str, list[tuple[str, str]]] | None = None,
        context_prob: float = 0.0,
        max_context_chars: int = 768,
    ) -> None:
        self.texts = texts
        self.tok = tokenizer
        # cross-file context: ``pool`` (``packages``) holds the siblings of ``paths[i]``
        self.paths, self.pool = paths, pool or {}
        self.context_prob, self.max_context_chars = context_prob, max_context_chars
        self._chunks: dict[str, list[Chunk]] = {}
        self.max_prefix, self.max_suffix = max_prefix, max_suffix
        # training draws each example's window size in [1/8, 1] of the maximum: a server may send
        # smaller windows, and short prompts make a step ~2x cheaper on CPU (more canvases per hour)
        self.vary_window = vary_window
        self.cum = []
        total = 0
        for t in texts:
            total += len(t)
            self.cum.append(total)
        self.parser = Parser(Language(tree_sitter_python.language()))
        self._blocks: dict[int, list[tuple[int, int]]] = {}

    @classmethod
    def of_files(
        cls, files: list[tuple[str, str]], tokenizer, context_prob: float, **kwargs
    ) -> InfillSampler:
        """Examples from ``(path, text)`` files, their context from the other files of each one's folder."""
        texts, paths = [t for _, t in files], [p for p, _ in files]
        return cls(texts, tokenizer, paths=paths, pool=packages(files), context_prob=context_prob, **kwargs)

    def _enc(self, text: str) -> list[int]:
        return encode_text(self.tok, text)

    def _blocks_of(self, idx: int, data: bytes) -> list[tuple[int, int]]:
        """Byte ranges of the file's ``block`` nodes (cached: parsing is the expensive part)."""
        if idx not in self._blocks:
            spans, stack = [], [self.parser.parse(data).root_node]
            while stack:
                node = stack.pop()
                if node.type == "block" and 0 < node.end_byte - node.start_byte <= MAX_BLOCK_BYTES:
                    spans.append((node.start_byte, node.end_byte))
                stack.extend(node.children)
            self._blocks[idx] = spans
        return self._blocks[idx]

    def _cut(self, idx: int, kind: str, rng: random.Random) -> tuple[str, str, str] | None:
        """(prefix, middle, suffix) of the whole file, or None if this file has no such cut."""
        text = self.texts[idx]
        if kind in ("line_tail", "line"):
            for _ in range(8):  # a random character's line: longer lines are picked more often
                s = text.rfind("\n", 0, rng.randrange(len(text))) + 1
                e = text.find("\n", s)
                e = len(text) if e < 0 else e
                line = text[s:e]
                indent = len(line) - len(line.lstrip())
                if e - s - indent < 2:
                    continue
                col = rng.randrange(s + indent, e - 1) if kind == "line_tail" else s + indent
                return text[:col], text[col:e], text[e:]
            return None
        if kind == "block":
            data = text.encode()
            blocks = self._blocks_of(idx, data)
            if not blocks:
                return None
            a, b = rng.choice(blocks)
            return data[:a].decode(), data[a:b].decode(), data[b:].decode()
        # span: log-uniform length so short spans (the common case in an editor) dominate
        n = int(2 ** rng.uniform(0, 8.5))
        a = rng.randrange(0, max(1, len(text) - n))
        return text[:a], text[a : a + n], text[a + n :]

    def _context(self, idx: int, prefix: str, suffix: str, rng: random.Random) -> tuple[Snippet, ...]:
        """Cross-file context for file ``idx`` (``()`` without siblings or when not drawn)."""
        if self.paths is None or rng.random() >= self.context_prob:
            return ()
        path = self.paths[idx]
        siblings = [f for f in self.pool.get(str(PurePosixPath(path).parent), ()) if f[0] != path]
        if not siblings:
            return ()
        if len(siblings) > MAX_SIBLINGS:
            siblings = rng.sample(siblings, MAX_SIBLINGS)
        chunks = []
        for name, text in siblings:
            if name not in self._chunks:
                self._chunks[name] = chunks_of("/".join(PurePosixPath(name).parts[-2:]), text)
            chunks += self._chunks[name]
        budget = rng.randint(self.max_context_chars // 4, self.max_context_chars)
        return tuple(best_snippets(chunks, query_of(prefix, suffix), budget))

    def _fit(self, text: str, budget: int, keep_end: bool) -> str:
        """Whole lines of ``text`` nearest the cursor that fit in ``budget`` tokens."""
        lines = text.splitlines(keepends=True)
        window = budget * 4  # chars: ~1.3x the expected size (3 bytes/token), avoids tokenizing huge files
        if keep_end:
            lines, kept = lines[::-1], []
        else:
            kept = []
        size = 0
        for line in lines:
            if size + len(line) > window and kept:
                break
            kept.append(line)
            size += len(line)
        while kept:
            out = "".join(kept[::-1] if keep_end else kept)
            if len(self._enc(out)) <= budget:
                return out
            # the line at the cursor is never dropped, only whole lines farther away
            if len(kept) == 1:
                return out[-budget:] if keep_end else out[:budget]
            kept = kept[: max(1, (len(kept) * 3) // 4)]
        return ""

    def sample(self, rng: random.Random, kind: str | None = None) -> Example:
        """One example; ``kind`` forces a middle shape (evaluation), else drawn by ``KIND_WEIGHTS``."""
        fixed = kind
        while True:
            idx = bisect.bisect_right(self.cum, rng.randrange(self.cum[-1]))
            kind = fixed or rng.choices(KINDS, KIND_WEIGHTS)[0]
            cut = self._cut(idx, kind, rng)
            if cut is None or not cut[1].strip():
                continue
            prefix, middle, suffix = cut
            max_prefix, max_suffix = self.max_prefix, self.max_suffix
            if self.vary_window:
                max_prefix = rng.randint(max_prefix // 8, max_prefix)
                max_suffix = rng.randint(max_suffix // 8, max_suffix)
            prefix = self._fit(prefix, max_prefix, keep_end=True)
            suffix = self._fit(suffix, max_suffix, keep_end=False)
            snippets = self._context(idx, prefix, suffix, rng)
            ids = build_prompt(self.tok, prefix, suffix, snippets=snippets).ids
            return Example(ids, self._enc(middle), kind, prefix, suffix, snippets)


@dataclass
class Batch:
    enc_ids: torch.Tensor  # (B, S) prompt (+ middle so far), right-padded with pad
    enc_len: torch.Tensor  # (B,) real length n_i of each row
    canvas: torch.Tensor  # (B, C) clean canvas: middle chunk, then eos, then pad


def make_batch(
    examples: list[Example],
    canvas_len: int,
    rng: random.Random,
    pad: int,
    eos: int,
    continuation: bool = True,
) -> Batch:
    """Collate examples for a canvas of ``canvas_len``; choose a block-AR chunk for long middles.

    Right padding is exact for the causal encoder (real tokens never attend to later pads); the
    decoder masks the padded cache slots and gets per-row positions n_i..n_i+C-1, so each row sees
    what ``generate()`` shows a batch-1, unpadded request.
    """
    rows, canvases = [], []
    for ex in examples:
        m = ex.middle
        n_chunks = len(m) // canvas_len + 1  # the last chunk carries EOS
        k = 0
        if continuation and n_chunks > 1:
            k = rng.randrange(min(n_chunks, MAX_CONTINUATION // canvas_len + 1))
        chunk = m[k * canvas_len : (k + 1) * canvas_len]
        if len(chunk) < canvas_len:
            chunk = chunk + [eos] + [pad] * (canvas_len - len(chunk) - 1)
        rows.append(ex.prompt + m[: k * canvas_len])
        canvases.append(chunk)
    width = max(map(len, rows))
    enc = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        enc[i, : len(r)] = torch.tensor(r)
    return Batch(enc, torch.tensor([len(r) for r in rows]), torch.tensor(canvases))
