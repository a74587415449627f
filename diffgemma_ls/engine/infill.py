"""The infill engine: prefix + suffix in, middle text out, through DiffusionGemma's own ``generate()``.

What it adds around ``generate()``: the FIM prompt, a per-request canvas length (a shallow view of the
model with its own config, so no config shared between requests is mutated), a wall-clock budget and
a cancellation check between denoising steps (a streamer's ``put_draft`` hook, which ``generate()``
calls after every step), per-request timings, and a deterministic seed taken from the prompt.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LogitsProcessorList
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from diffgemma_ls.engine.loader import LoadedModel
from diffgemma_ls.engine.model import CodeDiffusionGemma
from diffgemma_ls.engine.sampling import DECODE_MODES, CodeSamplerConfig, DecodeMode, DistinctStarts
from diffgemma_ls.prompt import build_prompt


class Cancelled(Exception):
    """The request was cancelled (by the client or a newer request) between two denoising steps."""


class _BudgetSpent(Exception):
    """Raised inside ``generate()`` when the latency budget is gone; the latest draft is kept."""


@dataclass(frozen=True)
class DecodeOptions:
    """How to denoise one request.

    ``max_steps`` caps forward passes per canvas in ``adaptive`` mode and is the exact count in ``fixed``;
    ``sequential`` takes one pass per token. ``max_canvases`` > 1 continues block-autoregressively.
    ``candidates`` > 1 denoises that many alternatives as one batch (``InfillResult.alternatives``).
    """

    mode: DecodeMode = "adaptive"
    canvas_length: int = 32
    max_canvases: int = 1
    max_steps: int = 16
    entropy_bound: float | None = None
    candidates: int = 1

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
    At most ``prompt_caches`` documents keep a cache (least recently used first out).
    """

    MIN_REUSE = 4  # below this many shared tokens a fresh prefill is as cheap and simpler

    def __init__(self, loaded: LoadedModel, prompt_caches: int = 8):
        self.loaded = loaded
        self.prompt_caches = prompt_caches
        self._prompt_cache: OrderedDict[str, _PromptCache] = OrderedDict()
        self.model: CodeDiffusionGemma = loaded.model
        self.tokenizer = loaded.tokenizer
        self._lock = threading.Lock()
        self._views: dict[int, CodeDiffusionGemma] = {}
        self._encoder_timer = _EncoderTimer(self.model.model.encoder)
        gen = self.model.generation_config
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.end_ids = {self.pad_id, *([eos] if isinstance(eos, int) else eos)}
        sampler_config = getattr(gen, "sampler_config", None)
        self.default_entropy_bound = sampler_config.entropy_bound if sampler_config is not None else 0.1

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
    ) -> InfillResult:
        """Denoise the middle between ``prefix`` and ``suffix``.

        ``deadline`` is a ``time.monotonic()`` instant: once passed, the current draft is returned
        (``budget_exhausted``). ``cancelled`` is polled between steps and raises ``Cancelled``.
        ``cache_key`` reuses the encoder cache of the previous request with the same key.
        """
        options = options or DecodeOptions()
        prompt = build_prompt(self.tokenizer, prefix, suffix).ids
        monitor = _StepMonitor(deadline, cancelled)
        bound = float(options.entropy_bound or self.default_entropy_bound)
        if options.mode == "adaptive" and self.model.noise_kind == "uniform":
            sampler_config = EntropyBoundSamplerConfig(entropy_bound=bound)  # the real model's own sampler
        else:
            sampler_config = CodeSamplerConfig(entropy_bound=bound, mode=options.mode)
        steps = options.canvas_length if options.mode == "sequential" else options.max_steps
        with self._lock:
            if cancelled is not None and cancelled():
                raise Cancelled
            started = time.perf_counter()
            self._encoder_timer.total = 0.0
            torch.manual_seed(zlib.crc32(str(prompt).encode()))
            if options.candidates > 1:
                cache_key = None  # a batch's cache is not the document's batch-1 cache
            cache, reused = self._take_prompt_cache(cache_key, prompt)
            rows = [prompt[reused:]] * options.candidates  # (candidates, new prompt tokens)
            input_ids = torch.tensor(rows, dtype=torch.long, device=self.loaded.device)
            processors = LogitsProcessorList()
            if options.candidates > 1:
                processors.append(DistinctStarts([*self.end_ids, *self.tokenizer.all_special_ids]))
            budget_exhausted = False
            try:
                self._view(options.canvas_length).generate(
                    input_ids,
                    past_key_values=cache,
                    max_new_tokens=options.canvas_length * options.max_canvases,
                    max_denoising_steps=steps,
                    sampler_config=sampler_config,
                    logits_processor=processors,
                    streamer=monitor,
                )
            except _BudgetSpent:
                budget_exhausted = True
            finally:
                self._keep_prompt_cache(cache_key, prompt, cache)
            elapsed = time.perf_counter() - started
            prefill = self._encoder_timer.total
        pieces = [*monitor.finished_canvases, *([monitor.draft] if monitor.draft is not None else [])]
        generated = torch.cat(pieces, dim=-1).tolist() if pieces else [[]]  # (candidates, tokens)
        middle, *others = (self._cut_at_end(row) for row in generated)
        generated = generated[0]
        passes = monitor.forward_passes
        return InfillResult(
            text=self.tokenizer.decode(middle, skip_special_tokens=True),
            forward_passes=passes,
            tokens_per_forward=(min(len(middle) + 1, len(generated)) / passes) if passes else math.nan,
            prefill_ms=prefill * 1000,
            denoise_ms=(elapsed - prefill) * 1000,
            ms=elapsed * 1000,
            prompt_tokens=len(prompt),
            budget_exhausted=budget_exhausted,
            token_ids=middle,
            reused_prompt_tokens=reused,
            alternatives=[self.tokenizer.decode(ids, skip_special_tokens=True) for ids in others],
        )

    def warm_up(self) -> None:
        """One tiny request, so the first real one does not pay torch's lazy initialization (~seconds)."""
        self.infill("", "", DecodeOptions(mode="fixed", max_steps=1))

    def forget(self, cache_key: str) -> None:
        """Drop a document's cached prompt (the document was closed)."""
        with self._lock:
            self._prompt_cache.pop(cache_key, None)

    def _take_prompt_cache(self, key: str | None, prompt: list[int]) -> tuple[DynamicCache, int]:
        """A cache holding the longest reusable prefix of ``prompt``, and its length."""
        entry = self._prompt_cache.pop(key, None) if key is not None else None
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
        self._prompt_cache[key] = _PromptCache(prompt[:length], cache)
        while len(self._prompt_cache) > self.prompt_caches:
            self._prompt_cache.popitem(last=False)

    def _cut_at_end(self, ids: list[int]) -> list[int]:
        for i, tid in enumerate(ids):
            if tid in self.end_ids:
                return ids[:i]
        return ids
