"""The infill engine: prefix + suffix in, middle text out, through DiffusionGemma's own ``generate()``.

What it adds around ``generate()``: the FIM prompt, a per-request canvas length (a shallow view of the
model with its own config, so no config shared between requests is mutated), a wall-clock budget and
a cancellation check between denoising steps (a streamer's ``put_draft`` hook, which ``generate()``
calls after every step), per-request timings, a deterministic seed taken from the prompt, and the
per-document keystroke state: the encoder cache of the last prompt and its first canvas (warm start).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

import torch
from transformers import DynamicCache, LogitsProcessorList

from diffgemma_ls.engine.kinds import Cancelled
from diffgemma_ls.engine.loader import LoadedModel
from diffgemma_ls.engine.model import CodeDiffusionGemma
from diffgemma_ls.engine.sampling import (
    DECODE_MODES,
    CodeSampler,
    CodeSamplerConfig,
    DecodeMode,
    DistinctStarts,
    LineStop,
    StartsWith,
    StockSamplerConfig,
)
from diffgemma_ls.engine.warmstart import Draft, Seed, seed_from
from diffgemma_ls.prompt import END_OF_TURN, PromptLayout, build_prompt, encode_text, prompt_layout
from diffgemma_ls.snippets import Snippet

log = logging.getLogger(__name__)


class _BudgetSpent(Exception):
    """Raised inside ``generate()`` when the latency budget is gone; the latest draft is kept."""


@dataclass(frozen=True)
class DecodeOptions:
    """How to denoise one request.

    ``max_steps`` caps forward passes per canvas in ``adaptive`` mode and is the exact count in ``fixed``;
    ``sequential`` takes one pass per token. ``max_canvases`` > 1 continues block-autoregressively.
    ``candidates`` > 1 denoises that many alternatives as one batch (``InfillResult.alternatives``).
    ``first_line_only`` (line mode) ends a canvas once its first line is decoded (``LineStop``;
    with transformers' own sampler, once it is stable and confident: ``FirstLineStable``). ``heal``: a cursor
    inside a word has the prompt's last token rewritten by the canvas (``Engine._heal_piece``).
    """

    mode: DecodeMode = "adaptive"
    canvas_length: int = 32
    max_canvases: int = 1
    max_steps: int = 16
    entropy_bound: float | None = None
    candidates: int = 1
    first_line_only: bool = False
    heal: bool = False

    def __post_init__(self) -> None:
        if self.mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {self.mode!r}")
        invalid = self.max_canvases < 1 or self.max_steps < 1 or not 1 <= self.candidates <= 16
        if not 1 <= self.canvas_length <= 1024 or invalid:
            raise ValueError(f"invalid decode options {self}")


@dataclass
class InfillResult:
    text: str
    forward_passes: int
    tokens_per_forward: float
    prefill_ms: float
    denoise_ms: float
    ms: float
    prompt_tokens: int
    budget_exhausted: bool = False
    token_ids: list[int] = field(default_factory=list)
    reused_prompt_tokens: int = 0  # prompt tokens whose encoder KV came from the previous request
    alternatives: list[str] = field(default_factory=list)  # rows 1.. of a batched candidates run
    seeded_tokens: int = 0  # committed canvas tokens carried over from the previous request (warm start)
    copied: bool = False  # a rival (a line copied from the file) won over the denoised middle


@dataclass(frozen=True)
class ServingDefaults:
    """What a request uses where the settings leave it to the checkpoint (``Engine.defaults``)."""

    canvas_length: int
    max_steps: int  # explicit requests
    typing_max_steps: int  # as-you-type requests


# The shipped code model's (mask noise): 16 passes per canvas explicitly, 3 as you type, measured in
# docs/benchmarks.md; its checkpoint says canvas 32. A uniform-noise checkpoint (the real
# DiffusionGemma) is served with its own canvas and step cap: with transformers' sampler, positions
# it has not accepted by the last step come back as argmax noise, so fewer steps are not cheaper
# but wrong; a line request ends early instead (``FirstLineStable``).
MASK_NOISE_STEPS = (16, 3)


def serving_defaults(
    canvas_length: int, noise_kind: str, generation_config: object | None
) -> ServingDefaults:
    """A checkpoint's canvas and step caps: ``MASK_NOISE_STEPS`` for mask noise, else its own cap."""
    if noise_kind == "mask":
        return ServingDefaults(canvas_length, *MASK_NOISE_STEPS)
    steps = getattr(generation_config, "max_denoising_steps", None) or 48  # transformers' own default
    return ServingDefaults(canvas_length, steps, steps)


TOTALS = ("modelCalls", "forwardPasses", "promptTokens", "reusedPromptTokens", "warmStarts", "seededTokens")


class _StepMonitor:
    """A ``generate()`` streamer that counts passes, keeps the latest draft and enforces budget/cancel."""

    def __init__(self, deadline: float | None, cancelled: Callable[[], bool] | None):
        self.deadline = deadline
        self.cancelled = cancelled
        self.forward_passes = 0
        self.finished_canvases: list[torch.Tensor] = []
        self.draft: torch.Tensor | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:  # value: (batch, tokens)
        if self._prompt_seen:  # the first put() is the prompt, later ones are finished canvases
            self.finished_canvases.append(value)
            self.draft = None
        self._prompt_seen = True

    def put_draft(self, value: torch.Tensor) -> None:
        self.forward_passes += 1
        self.draft = value  # (batch, canvas)
        if self.cancelled is not None and self.cancelled():
            raise Cancelled
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _BudgetSpent

    def end(self) -> None:
        pass


class _EncoderTimer:
    """Accumulates time spent in the encoder (prefill) through forward hooks."""

    def __init__(self, encoder: torch.nn.Module):
        self.total = 0.0
        self._start = 0.0
        encoder.register_forward_pre_hook(self._pre)
        encoder.register_forward_hook(self._post)

    def _pre(self, *_: object) -> None:
        self._start = time.perf_counter()

    def _post(self, *_: object) -> None:
        self.total += time.perf_counter() - self._start


@dataclass
class _PromptCache:
    """The encoder KV cache of a request's prompt, kept for the next request on the same document."""

    ids: list[int]
    cache: DynamicCache


@dataclass
class _DocumentState:
    """What one document keeps between requests: its prompt's encoder cache and its last first canvas."""

    prompt: _PromptCache | None = None
    draft: Draft | None = None


@dataclass
class _Request:
    """One request's prepared parts, from ``Engine._prepare`` to ``Engine._collect``."""

    prefix: str  # healed: without ``piece``
    suffix: str
    prompt: list[int]
    piece: str  # the prompt's last token the canvas rewrites (token healing), or ""
    cache_key: str | None
    drafts_key: str | None
    cache: DynamicCache
    reused: int  # prompt tokens whose encoder KV came from the previous request
    seed: Seed | None
    seeded: int
    processors: LogitsProcessorList
    view: CodeDiffusionGemma
    sampler_config: StockSamplerConfig | CodeSamplerConfig
    canvas_tokens: int = 0  # tokens generate() returned per row, set by ``_collect``


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Engine:
    """Serves infill requests on one loaded model, one at a time (calls are serialized by a lock).

    With a ``cache_key`` (the server uses the document URI), the encoder KV cache of the last prompt
    is kept, and the next request only prefills what changed after the longest common token prefix:
    the prompt puts the suffix first, so typing at the cursor keeps everything up to the cursor.
    With ``warm_start``, the first canvas of the last request is kept too, and the next request's
    canvas starts from what is still valid of it (``warmstart.seed_from``).
    At most ``prompt_caches`` documents keep this state (least recently used first out).
    """

    MIN_REUSE = 4  # below this many shared tokens a fresh prefill is as cheap and simpler
    HEALED_PIECES = 256  # pieces whose allowed first tokens are remembered (``_tokens_starting_with``)

    def __init__(
        self,
        loaded: LoadedModel,
        prompt_caches: int = 8,
        warm_start: bool = True,
        prompt_format: str = "auto",
    ):
        self.loaded = loaded
        self.prompt_caches = prompt_caches
        self.warm_start = warm_start
        self._documents: OrderedDict[str, _DocumentState] = OrderedDict()  # least recently used first
        # work done, cancelled and budget-cut requests included: what the keystroke bench counts.
        # Every key exists from the start, so another thread can copy it while a request adds to it.
        self.totals: Counter[str] = Counter(dict.fromkeys(TOTALS, 0))
        self.model: CodeDiffusionGemma = loaded.model
        self.tokenizer = loaded.tokenizer
        self._lock = threading.Lock()
        self._views: dict[int, CodeDiffusionGemma] = {}
        self._pieces: list[str] | None = None  # each token's text, built on first use
        self._starting_with: dict[str, list[int]] = {}  # piece -> tokens that start with it
        self._newline_texts: dict[int, str] | None = None  # the pieces holding a line break
        self._encoder_timer = _EncoderTimer(self.model.model.encoder)
        gen = self.model.generation_config
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        self.eos_id = eos_ids[0]  # what ends a middle on a canvas (training's layout)
        self.end_ids = {self.pad_id, *eos_ids}
        sampler_config = getattr(gen, "sampler_config", None)
        self.default_entropy_bound = sampler_config.entropy_bound if sampler_config is not None else 0.1
        self.layout: PromptLayout = prompt_layout(self.tokenizer, prompt_format)
        self.tuned_for: Path | None = None  # the workspace these weights were tuned for (``load_engine``)
        if self.layout.format == "chat":  # the model ends its turn: the canvas's text ends there too
            turn_end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
            if isinstance(turn_end, int) and turn_end != self.tokenizer.unk_token_id:
                self.end_ids.add(turn_end)
        if self.layout.format == "plain":
            log.warning(
                "%s has neither FIM tokens nor a chat template: prompting with plain-text markers "
                "no model was trained on; completions will be poor",
                loaded.path,
            )

    @property
    def code_languages(self) -> list[str] | None:
        """The languages the checkpoint says it was trained on (``None``: a general model)."""
        return getattr(self.model.config, "code_languages", None)

    @property
    def reads_snippets(self) -> bool:
        """Whether the model was trained with other files' chunks before its prompt
        (``config.cross_file_context``, set by ``model/export.py``): an untrained one is only confused."""
        return bool(getattr(self.model.config, "cross_file_context", False)) and self.layout.format == "fim"

    @property
    def copies(self) -> bool:
        """Whether copies answer where they stand between the same lines as elsewhere (``anchored``)
        and can win over the model's text: measured on the shipped mask-noise model; a
        uniform-noise checkpoint (the real DiffusionGemma, no mask to score a rival with) answers
        with its own text."""
        return self.model.mask_token_id is not None

    @property
    def defaults(self) -> ServingDefaults:
        """Canvas and step caps from the checkpoint (see ``MASK_NOISE_STEPS``)."""
        return serving_defaults(
            self.model.config.canvas_length, self.model.noise_kind, self.model.generation_config
        )

    def _sampler_config(self, options: DecodeOptions, prefix: str) -> StockSamplerConfig | CodeSamplerConfig:
        bound = float(options.entropy_bound or self.default_entropy_bound)
        line_stop = self._line_stop(prefix) if options.first_line_only else None
        if options.mode == "adaptive" and self.model.noise_kind == "uniform":  # the real model's own sampler
            return StockSamplerConfig(entropy_bound=bound, line_stop=line_stop)
        return CodeSamplerConfig(entropy_bound=bound, mode=options.mode, line_stop=line_stop)

    def _line_stop(self, prefix: str) -> LineStop:
        """The first-line rule for a cursor after ``prefix`` (see ``postprocess.single_line``)."""
        if self._newline_texts is None:
            self._newline_texts = {i: text for i, text in enumerate(self._token_texts()) if "\n" in text}
        blank_line = not prefix.rpartition("\n")[2].strip()
        return LineStop(self._newline_texts, skip_blank_start=blank_line)

    def _token_texts(self) -> list[str]:
        if self._pieces is None:
            self._pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return self._pieces

    def _tokens_starting_with(self, piece: str) -> list[int]:
        """The non-special tokens whose text starts with ``piece``: what a healed canvas may start with.

        Remembered per piece: a scan of the vocabulary costs ~2 ms a request here and ~50 ms with
        the real checkpoint's 262k tokens, and typing inside one word asks for the same few pieces.
        """
        if (allowed := self._starting_with.get(piece)) is None:
            special = set(self.tokenizer.all_special_ids)
            texts = self._token_texts()
            allowed = [i for i, t in enumerate(texts) if t.startswith(piece) and i not in special]
            if len(self._starting_with) >= self.HEALED_PIECES:
                self._starting_with.pop(next(iter(self._starting_with)))  # the oldest
            self._starting_with[piece] = allowed
        return allowed

    def _heal_piece(self, prefix: str, suffix: str) -> str:
        """The prefix's last token, when the cursor is inside a word ('' otherwise): see ``StartsWith``.

        Inside a word means a word character before the cursor and none after it (a cursor in the
        middle of an identifier is an edit, not a completion). The line alone is tokenized: the
        byte-level pre-tokenizer splits at the line break, so its last token is the prompt's.
        """
        word = lambda c: c.isalnum() or c == "_"  # noqa: E731
        if not prefix or not word(prefix[-1]) or (suffix and word(suffix[0])):
            return ""
        ids = encode_text(self.tokenizer, prefix.rpartition("\n")[2])
        piece = self.tokenizer.decode(ids[-1:]) if ids else ""
        return piece if piece.strip() and prefix.endswith(piece) else ""

    def _view(self, canvas_length: int) -> CodeDiffusionGemma:
        """The model with ``config.canvas_length`` set for this request, sharing every weight."""
        if canvas_length == self.model.config.canvas_length:
            return self.model
        if canvas_length not in self._views:
            view = copy.copy(self.model)
            view.config = copy.copy(self.model.config)
            view.config.canvas_length = canvas_length
            self._views[canvas_length] = view
        return self._views[canvas_length]

    def infill(
        self,
        prefix: str,
        suffix: str,
        options: DecodeOptions | None = None,
        *,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        cache_key: str | None = None,
        rivals: Sequence[str] = (),
        copies_win: bool = False,
        language: str = "",
        path: str = "",
        snippets: Sequence[Snippet] = (),
    ) -> InfillResult:
        """Denoise the middle between ``prefix`` and ``suffix``: ``_prepare``, ``_generate``, ``_collect``.

        ``deadline`` is a ``time.monotonic()`` instant: once passed, the current draft is returned
        (``budget_exhausted``). ``cancelled`` is polled between steps and raises ``Cancelled``.
        ``cache_key`` reuses the encoder cache (and, with warm start, the canvas) of the previous
        request with the same key. ``rivals`` are other middles (a line copied from the file): the
        denoised one is kept unless a rival is more likely under the model (``_contest``), in
        which case that rival is the text and the denoised middle the first alternative. With
        ``copies_win`` the denoised middle does not compete: the likeliest rival is the text.
        ``language`` and ``path`` name the file in a chat prompt (``prompt.build_prompt``);
        ``snippets`` (other files' chunks) go before the FIM prompt.
        """
        options = options or DecodeOptions()
        monitor = _StepMonitor(deadline, cancelled)
        with self._lock:
            if cancelled is not None and cancelled():
                raise Cancelled
            started = time.perf_counter()
            self._encoder_timer.total = 0.0
            request = self._prepare(prefix, suffix, options, cache_key, (language, path, snippets), monitor)
            budget_exhausted = self._generate(request, options, monitor)
            rows, texts = self._collect(request, monitor)
            copied = False
            if rivals and not budget_exhausted:
                copied = self._contest(request, texts, rivals, options, monitor, copies_win)
            elapsed = time.perf_counter() - started
            prefill = self._encoder_timer.total
        passes = monitor.forward_passes
        canvas = request.canvas_tokens
        return InfillResult(
            text=texts[0],
            forward_passes=passes,
            tokens_per_forward=(min(len(rows[0]) + 1, canvas) / passes) if passes else math.nan,
            prefill_ms=prefill * 1000,
            denoise_ms=(elapsed - prefill) * 1000,
            ms=elapsed * 1000,
            prompt_tokens=len(request.prompt),
            budget_exhausted=budget_exhausted,
            token_ids=rows[0],
            reused_prompt_tokens=request.reused,
            alternatives=texts[1:],
            seeded_tokens=request.seeded,
            copied=copied,
        )

    def _prepare(
        self,
        prefix: str,
        suffix: str,
        options: DecodeOptions,
        cache_key: str | None,
        named: tuple[str, str, Sequence[Snippet]],
        monitor: _StepMonitor,
    ) -> _Request:
        """The prompt, the cached encoder state it reuses, the warm start or the healing, the processors."""
        if options.candidates > 1:
            cache_key = None  # a batch's cache is not the document's batch-1 cache
        seed = self._take_seed(cache_key, prefix, suffix)
        # a warm start already holds the model's own tokens from the cursor on: no healing then;
        # otherwise the canvas writes the piece again, whole, and starts before the cursor
        piece = self._heal_piece(prefix, suffix) if options.heal and seed is None else ""
        prefix = prefix[: len(prefix) - len(piece)]
        language, path, snippets = named  # what the prompt says besides the code: the file, other files
        prompt = build_prompt(
            self.tokenizer, prefix, suffix, self.layout, language=language, path=path, snippets=snippets
        ).ids
        torch.manual_seed(zlib.crc32(str(prompt).encode()))
        cache, reused = self._take_prompt_cache(cache_key, prompt)
        processors = LogitsProcessorList()
        if piece:
            allowed = self._tokens_starting_with(piece)
            processors.append(StartsWith(allowed, active=lambda: not monitor.finished_canvases))
        if options.candidates > 1:
            processors.append(DistinctStarts([*self.end_ids, *self.tokenizer.all_special_ids]))
        return _Request(
            prefix=prefix,
            suffix=suffix,
            prompt=prompt,
            piece=piece,
            cache_key=cache_key,
            drafts_key=None if piece else cache_key,  # a healed canvas cannot seed the next request
            cache=cache,
            reused=reused,
            seed=seed,
            seeded=0 if seed is None else seed.committed_within(options.canvas_length),
            processors=processors,
            view=self._view(options.canvas_length),
            sampler_config=self._sampler_config(options, prefix),
        )

    def _generate(self, request: _Request, options: DecodeOptions, monitor: _StepMonitor) -> bool:
        """transformers' ``generate()`` on the request; whether the latency budget cut it short."""
        steps = options.canvas_length if options.mode == "sequential" else options.max_steps
        rows = [request.prompt[request.reused :]] * options.candidates  # (candidates, new prompt tokens)
        start = {}
        if request.seed is not None:  # generate() takes a caller's first canvas as decoder_input_ids
            start["decoder_input_ids"] = self._seed_canvas(request.seed, options.canvas_length)
        try:
            request.view.generate(
                torch.tensor(rows, dtype=torch.long, device=self.loaded.device),
                cache=request.cache,
                max_new_tokens=options.canvas_length * options.max_canvases,
                max_denoising_steps=steps,
                sampler_config=request.sampler_config,
                logits_processor=request.processors,
                streamer=monitor,
                **start,
            )
            return False
        except _BudgetSpent:
            return True
        finally:
            self._keep_prompt_cache(request.cache_key, request.prompt, request.cache)
            self._keep_draft(request, monitor)
            self.totals.update(
                modelCalls=1,
                forwardPasses=monitor.forward_passes,
                promptTokens=len(request.prompt),
                reusedPromptTokens=request.reused,
                warmStarts=int(request.seeded > 0),
                seededTokens=request.seeded,
            )

    def _collect(self, request: _Request, monitor: _StepMonitor) -> tuple[list[list[int]], list[str]]:
        """Each row's tokens up to its end, and its text from the cursor on."""
        pieces = [*monitor.finished_canvases, *([monitor.draft] if monitor.draft is not None else [])]
        generated = torch.cat(pieces, dim=-1).tolist() if pieces else [[]]  # (candidates, tokens)
        request.canvas_tokens = len(generated[0])
        sampler = request.view.last_sampler
        if isinstance(sampler, CodeSampler) and sampler.line_stop is not None and sampler.line_cut:
            # past the first line the canvas holds padding, and the draft the model's unused guesses
            generated = [
                row if cut is None else row[:cut]
                for row, cut in zip(generated, sampler.line_cut, strict=True)
            ]
        rows = [self._cut_at_end(row) for row in generated]
        piece = request.piece
        # from the cursor on: a healed row starts with the piece the editor already has
        texts = [
            text[len(piece) :] if text.startswith(piece) else ""
            for text in self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        ]
        return rows, texts

    def _contest(
        self,
        request: _Request,
        texts: list[str],
        rivals: Sequence[str],
        options: DecodeOptions,
        monitor: _StepMonitor,
        copies_win: bool,
    ) -> bool:
        """Put the most likely of the model's text and the ``rivals`` first in ``texts``; whether a rival won.

        With ``copies_win`` the model's text is left out of the comparison: the likeliest rival
        wins (one rival: no pass at all). Where something is typed on the cursor line, a line of
        the code that starts with it was right more often than what the model preferred, on
        repositories it never saw and on the held-out standard library (docs/benchmarks.md).
        A mask-noise model only: the pseudo-likelihood masks positions (uniform noise has no mask).
        """
        rivals = [r for r in dict.fromkeys(rivals) if r.strip() and r.rstrip() != texts[0].rstrip()]
        if not rivals or self.model.mask_token_id is None:
            return False
        contenders = rivals if copies_win else [texts[0], *rivals]
        best = 0  # the first on a tie or without scores: the model's, else the nearest line
        if len(contenders) > 1:
            pieces = [request.piece + text for text in contenders]
            scores = self._likelihoods(request.cache, len(request.prompt), pieces, options.canvas_length)
            if scores is None and not copies_win:
                return False
            if scores is not None:
                monitor.forward_passes += 1
                self.totals["forwardPasses"] += 1
                best = max(range(len(scores)), key=scores.__getitem__)
        if not copies_win and best == 0:
            return False
        texts.insert(0, contenders[best])
        return True

    @torch.no_grad()
    def _likelihoods(
        self, cache: DynamicCache, prompt_length: int, texts: list[str], canvas_length: int
    ) -> list[float] | None:
        """Mean log p per token of ``text <eos>`` as a canvas after the prompt (-inf where it does not fit).

        A pseudo-likelihood in one batched forward pass: each text is laid on two canvases, one
        with its even positions masked, one with its odd ones, the rest of the canvas masked, so
        every token (and the EOS that ends the text) is predicted once from its neighbours on both
        sides, as the denoiser was trained to. Averaged over the text's tokens and its EOS, not
        summed: a sum prefers whatever is shortest (ranking the model's own batched candidates
        by the sum lost 2.7 points of edit similarity; the mean scored the rival 0.9 better than
        the sum, docs/benchmarks.md). Text ends are stripped of whitespace, as training middles
        end (a line without its line break). ``None`` when there is nothing to compare: the first
        text (the model's) spans canvases, or the cache cannot be cut back to the prompt (sliding
        layers past their window).
        """
        mask_id = self.model.mask_token_id
        encoded = [[*encode_text(self.tokenizer, text.rstrip()), self.eos_id] for text in texts]
        fitting = [n for n, ids in enumerate(encoded) if len(ids) <= canvas_length]  # the rest: -inf
        if len(fitting) < 2 or fitting[0] != 0:
            return None
        rows = [  # (2 * fitting, canvas): per text, its even positions masked, then its odd ones
            [
                mask_id if i % 2 == parity or i >= len(encoded[n]) else encoded[n][i]
                for i in range(canvas_length)
            ]
            for n in fitting
            for parity in (0, 1)
        ]
        prompt_cache = copy.deepcopy(cache)
        try:
            prompt_cache.crop(min(0, prompt_length - prompt_cache.get_seq_length()))
        except (RuntimeError, ValueError):
            return None
        prompt_cache.batch_select_indices(torch.tensor([0]))  # a candidates batch: all rows share the prompt
        prompt_cache.batch_repeat_interleave(len(rows))
        canvas = torch.tensor(rows, device=self.loaded.device)
        positions = prompt_length + torch.arange(canvas_length, device=canvas.device)
        logits = self.model(
            cache=prompt_cache, decoder_input_ids=canvas, decoder_position_ids=positions.expand(len(rows), -1)
        ).logits  # (2 * fitting, canvas, vocab)
        log_p = torch.log_softmax(logits.float(), dim=-1)
        scores = [-math.inf] * len(texts)
        for row, n in enumerate(fitting):
            scores[n] = fmean(float(log_p[2 * row + i % 2, i, token]) for i, token in enumerate(encoded[n]))
        return scores

    def describe(self, settings_canvas: int | None = None) -> str:
        """One line for the log: what is served, how, and how much memory it holds."""
        from diffgemma_ls.engine.quantize import describe_model

        report = describe_model(self.model)
        return (
            f"{self.loaded.path} on {self.loaded.device}: "
            f"{', '.join(f'{k} {v:,}' for k, v in report.params_by_dtype.items())}, quantization "
            f"{self.loaded.quantization}, {report.footprint_bytes / 1e6:.1f} MB resident, "
            f"{100 * report.quantized_fraction:.0f}% of text weights quantized, "
            f"noise {self.model.noise_kind}, prompt {self.layout.format}, "
            f"canvas {settings_canvas or self.defaults.canvas_length}"
        )

    def warm_up(self) -> None:
        """One tiny request, so the first real one does not pay torch's lazy initialization (~seconds)."""
        self.infill("", "", DecodeOptions(mode="fixed", max_steps=1))
        for key in self.totals:  # not a request: it counts nothing
            self.totals[key] = 0

    def forget(self, cache_key: str) -> None:
        """Drop a document's cached prompt and canvas (the document was closed)."""
        with self._lock:
            self._documents.pop(cache_key, None)

    @property
    def cached_documents(self) -> int:
        """Documents whose encoder cache is kept (for ``diffgemma/debugState``)."""
        return sum(state.prompt is not None for state in self._documents.values())

    def cache_keys(self) -> list[str]:
        """Keys with a kept encoder cache, least recently used first."""
        return [key for key, state in self._documents.items() if state.prompt is not None]

    def has_draft(self, key: str) -> bool:
        return (state := self._documents.get(key)) is not None and state.draft is not None

    def _state(self, key: str) -> _DocumentState:
        """The document's kept state, most recently used now; the least recent past ``prompt_caches`` go."""
        state = self._documents.setdefault(key, _DocumentState())
        self._documents.move_to_end(key)
        while len(self._documents) > self.prompt_caches:
            self._documents.popitem(last=False)
        return state

    def _take_prompt_cache(self, key: str | None, prompt: list[int]) -> tuple[DynamicCache, int]:
        """A cache holding the longest reusable prefix of ``prompt``, and its length."""
        state = self._documents.get(key) if key is not None else None
        entry = state.prompt if state is not None else None
        if state is not None:
            state.prompt = None  # in use: back once the request is done (``_keep_prompt_cache``)
        if entry is not None:
            # keep one token to encode: generate() needs a non-empty input
            common = min(_common_prefix(entry.ids, prompt), len(prompt) - 1)
            if common >= self.MIN_REUSE:
                try:
                    entry.cache.crop(common - entry.cache.get_seq_length())
                    return entry.cache, common
                except (RuntimeError, ValueError):  # sliding layers past their window cannot roll back
                    pass
        return DynamicCache(config=self.model.config.get_text_config(decoder=True)), 0

    def _keep_prompt_cache(self, key: str | None, prompt: list[int], cache: DynamicCache) -> None:
        """Store the cache cut back to the prompt (block-AR canvases were appended after it)."""
        if key is None or self.prompt_caches <= 0:
            return
        length = min(cache.get_seq_length(), len(prompt))
        try:
            cache.crop(length - cache.get_seq_length())
        except (RuntimeError, ValueError):
            return
        self._state(key).prompt = _PromptCache(prompt[:length], cache)

    def continues(self, cache_key: str, prefix: str, suffix: str) -> bool:
        """Whether a request at (``prefix``, ``suffix``) would start from the document's last canvas.

        The server runs such a request at once instead of debouncing it: most of its canvas is
        already decided, so it is cheap. Called off the model thread: it only reads the stored draft
        (immutable) and tokenizes.
        """
        return self._take_seed(cache_key, prefix, suffix) is not None

    def _take_seed(self, key: str | None, prefix: str, suffix: str) -> Seed | None:
        """What is still valid of the document's previous first canvas, as this request's start."""
        state = self._documents.get(key) if key is not None and self.warm_start else None
        draft = state.draft if state is not None else None
        if draft is None:
            return None
        return seed_from(
            draft,
            prefix,
            suffix,
            piece=lambda t: self.tokenizer.decode([t]),
            encode=lambda s: encode_text(self.tokenizer, s),
            end_ids=self.end_ids,
        )

    def _seed_canvas(self, seed: Seed, canvas_length: int) -> torch.Tensor:
        """(1, canvas): the seed's tokens, noise where it leaves a position open (mask or uniform)."""
        mask_id = self.model.mask_token_id
        if mask_id is None:  # uniform noise, as transformers' sampler starts its canvas
            canvas = torch.randint(self.model.config.get_text_config().vocab_size, (1, canvas_length))
        else:
            canvas = torch.full((1, canvas_length), mask_id, dtype=torch.long)
        for i, token in enumerate(seed.tokens[:canvas_length]):
            if token is not None:
                canvas[0, i] = token
        return canvas.to(self.loaded.device)

    def _keep_draft(self, request: _Request, monitor: _StepMonitor) -> None:
        """Keep the first canvas of a batch-1 request, finished or not, for the next warm start."""
        if request.drafts_key is None or not self.warm_start or self.prompt_caches <= 0:
            return
        sampler = request.view.last_sampler
        if monitor.finished_canvases:
            tokens = monitor.finished_canvases[0][0].tolist()
            committed = [True] * len(tokens)
        elif isinstance(sampler, CodeSampler) and sampler.canvas is not None:
            tokens, committed = sampler.canvas[0].tolist(), sampler.committed[0].tolist()
        elif monitor.draft is not None:  # transformers' own sampler: its latest canvas is the seed
            tokens = monitor.draft[0].tolist()
            committed = [True] * len(tokens)
        else:
            return
        cut = sampler.line_cut[0] if isinstance(sampler, CodeSampler) and sampler.line_cut else None
        if cut is not None:  # line mode padded the rest: open again, for the model to decide next time
            committed = [*committed[:cut], *[False] * (len(committed) - cut)]
        draft = Draft(request.prefix, request.suffix, tuple(tokens), tuple(committed))
        self._state(request.drafts_key).draft = draft

    def _cut_at_end(self, ids: list[int]) -> list[int]:
        for i, tid in enumerate(ids):
            if tid in self.end_ids:
                return ids[:i]
        return ids
