"""Samplers and stopping rules that plug into transformers' DiffusionGemma ``generate()``.

transformers ships one sampler (``EntropyBoundSampler``: start from uniform random tokens, accept the
lowest-entropy tokens under an entropy bound, re-noise the rest with uniform tokens) and one adaptive
stop (``StableAndConfidentStoppingCriteria``). The real checkpoint is served with exactly those.

``CodeSampler`` adds what serving code completions needs on top, as a subclass so that the
generate loop, caches, logits processors and block-autoregressive canvases stay transformers' own:

* absorbing ("mask") noise for models trained that way (recorded as ``config.noise_kind``): the
  canvas starts as ``<|mask|>`` and rejected positions go back to ``<|mask|>``;
* committed tokens stay committed, and accepted tokens are the argmax, so a request is deterministic;
* a schedule floor, so that the canvas is always fully decoded within the step cap (``fixed`` mode
  decodes exactly ``ceil(free / steps_left)`` tokens per step and never exits early);
* ``left_to_right`` order, one token per forward pass: the autoregressive-equivalent baseline;
* in ``adaptive`` mode, two neighbours unsure of the same token are not both committed in one pass
  (``_repeats``: the entropy bound takes them for independent, and they write it twice, ``is is``);
* once EOS (or PAD) is committed, every later position is PAD: the canvas is ``middle <eos> <pad>...``;
* with mask noise, every non-mask token of a starting canvas is committed (a warm start's seed);
* ``line_stop`` (line mode): once the committed run from the cursor holds the whole first line,
  everything after it is PAD and committed, so the request ends without decoding text that
  post-processing would cut off anyway.

Uniform-noise checkpoints (the real DiffusionGemma) keep transformers' ``EntropyBoundSampler``; for
line mode, ``StockSamplerConfig`` carries a ``LineStop`` to ``FirstLineStable``, a stopping rule that
ends the canvas once its first line is stable and confident, so a line request does not pay for a
256-token canvas's worth of denoising.

``DistinctStarts`` is a logits processor for batched candidates (rows = alternatives for one prompt);
``StartsWith`` one for token healing (the canvas's first token rewrites the prompt's cut-off last one).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaAdaptiveStopping,
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
    StableAndConfidentStoppingCriteria,
)

from diffgemma_ls.engine.kinds import DECODE_MODES, DecodeMode


@dataclass(frozen=True)
class LineStop:
    """Where the first line of a canvas ends, by the rule line-mode post-processing cuts with.

    ``newline_texts`` maps each token whose text holds a line break to that text (any other token
    is simply non-empty text). ``skip_blank_start`` is post-processing's rule for a cursor with only
    whitespace before it on its line: leading line breaks are dropped, so the line that counts is
    the first one with something on it.
    """

    newline_texts: Mapping[int, str]
    skip_blank_start: bool

    def line_end(self, tokens: Sequence[int], committed: Sequence[bool]) -> int | None:
        """Index of the token that ends the first line, if the committed run from position 0 reaches it."""
        started = not self.skip_blank_start
        for i, (token, done) in enumerate(zip(tokens, committed, strict=True)):
            if not done:
                return None
            text = self.newline_texts.get(token)
            if text is None:
                started = True
                continue
            if not started:
                text = text.lstrip("\n")
            if "\n" in text:
                return i
            started = started or bool(text)
        return None


@dataclass
class CodeSamplerConfig(EntropyBoundSamplerConfig):
    """``EntropyBoundSamplerConfig`` plus the decode mode (a subclass, so ``generate()`` validates it)."""

    mode: DecodeMode = "adaptive"
    line_stop: LineStop | None = None

    def to_dict(self) -> dict:
        """As saved and printed with a generation config: ``line_stop`` is per request, not a setting."""
        saved = {key: value for key, value in self.__dict__.items() if key != "line_stop"}
        return {**copy.deepcopy(saved), "_cls_name": type(self).__name__}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {self.mode!r}")


@dataclass
class StockSamplerConfig(EntropyBoundSamplerConfig):
    """transformers' own sampler's config, plus the line stop of a line request (``FirstLineStable``)."""

    line_stop: LineStop | None = None

    def to_dict(self) -> dict:
        """As transformers' own config: ``line_stop`` is per request, not a setting."""
        return {"entropy_bound": self.entropy_bound, "_cls_name": EntropyBoundSamplerConfig.__name__}


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., vocab) logits -> (...) entropy in nats, as ``Categorical(logits=...).entropy()``.

    Written out because ``Categorical`` costs 1.3 ms on a (1, 32, 4096) canvas on this CPU and this
    0.3 ms, once per forward pass. The probabilities come from ``softmax``, not ``log_p.exp()``:
    torch's ``exp`` takes a slow path on very negative inputs, and with mask noise most of a
    canvas's logits are ``NEVER`` (committed positions, the mask token): 2.4 ms on such a canvas.
    Log-probabilities are clamped as ``Categorical`` does, so a -inf logit contributes 0, not nan.
    """
    logits = logits.float()
    log_p = torch.log_softmax(logits, dim=-1).clamp(min=torch.finfo(torch.float32).min)
    return -(torch.softmax(logits, dim=-1) * log_p).sum(dim=-1)


class CodeSampler(EntropyBoundSampler):
    """Entropy-bound acceptance with committed tokens, a schedule floor and EOS handling (module doc)."""

    REPEAT_DOUBT = 0.5  # nats: neighbours this sure may repeat a token in one pass (_repeats)

    def __init__(
        self,
        config: CodeSamplerConfig,
        canvas_length: int,
        vocab_size: int,
        max_denoising_steps: int,
        *,
        mask_token_id: int | None,
        pad_token_id: int,
        eos_token_ids: list[int],
    ):
        super().__init__(config, canvas_length, vocab_size, max_denoising_steps)
        self.mode = config.mode
        self.line_stop = config.line_stop
        # per row, the first position padded by ``line_stop`` (None: not cut); a warm start must not
        # take that padding for the model's own answer
        self.line_cut: list[int | None] = []
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.end_ids = torch.tensor(sorted({*eos_token_ids, pad_token_id}))
        self.committed: torch.Tensor | None = None  # (batch, canvas) bool
        self.canvas: torch.Tensor | None = None  # (batch, canvas): the last accepted canvas

    def initialize_canvas(self, batch_size: int, device: torch.device) -> torch.LongTensor:
        self.committed = torch.zeros(batch_size, self.canvas_length, dtype=torch.bool, device=device)
        if self.mask_token_id is None:
            return super().initialize_canvas(batch_size, device)
        return torch.full(
            (batch_size, self.canvas_length), self.mask_token_id, dtype=torch.long, device=device
        )

    def accept_canvas(
        self,
        current_canvas: torch.LongTensor,
        denoiser_canvas: torch.LongTensor,
        logits: torch.Tensor,
        cur_step: int,
    ) -> torch.LongTensor:
        if self.committed is None or self.committed.shape != current_canvas.shape:
            self.committed = torch.zeros_like(current_canvas, dtype=torch.bool)
        if self.mask_token_id is not None:
            # absorbing noise: a token in the canvas is committed, including a warm start's seed
            self.committed = self.committed | (current_canvas != self.mask_token_id)
        free = ~self.committed  # (batch, canvas)
        n_free = free.sum(dim=-1, keepdim=True)  # (batch, 1)
        proposal = logits.argmax(dim=-1)  # (batch, canvas): greedy, so requests are deterministic

        if self.mode == "sequential":
            # leftmost free position: one token per forward pass, left to right
            first_free = torch.where(free, torch.arange(free.shape[-1], device=free.device), free.shape[-1])
            selected = (first_free == first_free.min(dim=-1, keepdim=True).values) & free
        else:
            entropy = token_entropy(logits).masked_fill(~free, math.inf)  # (batch, canvas)
            sorted_entropy, order = torch.sort(entropy, dim=-1)
            rank = torch.arange(order.shape[-1], device=order.device).expand_as(order)
            # schedule floor: what is still free must fit in the steps left (cur_step counts down to 1)
            floor = torch.ceil(n_free / int(cur_step)).long()  # (batch, 1)
            if self.mode == "fixed":
                take_sorted = rank < floor
            else:
                finite = sorted_entropy.masked_fill(torch.isinf(sorted_entropy), 0.0)
                within_bound = torch.cumsum(finite, dim=-1) - finite <= self.entropy_bound
                take_sorted = (within_bound | (rank < floor)) & (rank < n_free)
            selected = torch.zeros_like(free).scatter(-1, order, take_sorted)
            if self.mode == "adaptive" and int(cur_step) > 1:  # the last step must decide everything left
                selected = selected & ~self._repeats(selected, proposal, entropy)

        accepted = torch.where(selected, proposal, current_canvas)
        self.committed = self.committed | selected
        # everything after the first committed EOS/PAD is padding, committed at once
        is_end = self.committed & torch.isin(accepted, self.end_ids.to(accepted.device))
        after_end = (torch.cumsum(is_end.int(), dim=-1) - is_end.int()) > 0
        accepted = torch.where(after_end, torch.full_like(accepted, self.pad_token_id), accepted)
        self.committed = self.committed | after_end
        if self.line_stop is not None:
            after_line = self._after_first_line(accepted)
            accepted = accepted.masked_fill(after_line, self.pad_token_id)
            self.committed = self.committed | after_line
        self.accepted_token_mask = self.committed
        self.canvas = accepted
        return accepted

    def _repeats(self, selected: torch.Tensor, proposal: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """(batch, canvas): selections deferred because a neighbour selected too proposes the same token.

        Each position's proposal is a marginal: two neighbours both unsure where a token goes both
        propose it, and committing them in one pass writes it twice (``is is``, ``:::``). The less
        certain one waits a pass, and then sees the other. Not when both are sure (a real ``))``),
        and not for end tokens, which repeat by design (padding).
        """
        same = selected[:, 1:] & selected[:, :-1] & (proposal[:, 1:] == proposal[:, :-1])  # (batch, canvas-1)
        same = same & ~torch.isin(proposal[:, 1:], self.end_ids.to(proposal.device))
        same = same & (torch.maximum(entropy[:, 1:], entropy[:, :-1]) > self.REPEAT_DOUBT)
        right_less_sure = entropy[:, 1:] >= entropy[:, :-1]
        deferred = torch.zeros_like(selected)
        deferred[:, 1:] |= same & right_less_sure
        deferred[:, :-1] |= same & ~right_less_sure
        return deferred

    def _after_first_line(self, canvas: torch.LongTensor) -> torch.BoolTensor:
        """(batch, canvas): positions after a committed, complete first line."""
        after = torch.zeros_like(self.committed)
        self.line_cut = []
        for row, (tokens, committed) in enumerate(zip(canvas.tolist(), self.committed.tolist(), strict=True)):
            end = self.line_stop.line_end(tokens, committed)
            self.line_cut.append(None if end is None else end + 1)
            if end is not None:
                after[row, end + 1 :] = True
        return after

    def renoise_canvas(self, accepted_canvas: torch.LongTensor, cur_step: int) -> torch.LongTensor:
        if self.mask_token_id is None:
            return super().renoise_canvas(accepted_canvas, cur_step)
        return accepted_canvas.masked_fill(~self.committed, self.mask_token_id)

    @property
    def complete(self) -> torch.BoolTensor:
        """Per batch row: every canvas position committed, so another pass cannot change the result."""
        return self.committed.all(dim=-1)


class DistinctStarts:
    """Makes batch row r > 0 start with its r-th most likely token; row 0 is the plain answer.

    Rows of one prompt would decode to the same text (greedy acceptance, or a confident model's
    sampling), so on the first denoising step of the first canvas, row r's first position keeps only
    its r-th ranked token that is not an end or mask token. Its entropy is then zero, so every sampler
    accepts it first, and the rest of the row is decoded around it as usual. As a logits processor it
    comes before ``generate()``'s argmax, so the returned canvas holds it too.
    """

    def __init__(self, banned_ids: list[int]):
        self.banned_ids = torch.tensor(sorted(set(banned_ids)))
        self.done = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, cur_step: int) -> torch.Tensor:
        logits = scores  # (batch, canvas, vocab); generate() passes these names
        if self.done or logits.shape[0] < 2:
            return logits
        self.done = True
        first = logits[:, 0].clone()  # (batch, vocab)
        first[:, self.banned_ids.to(first.device)] = -math.inf
        rows = torch.arange(1, logits.shape[0], device=logits.device)
        chosen = first.argsort(dim=-1, descending=True)[rows, rows]  # (batch - 1,): rank r for row r
        logits = logits.clone()
        logits[rows, 0] = torch.finfo(logits.dtype).min
        logits[rows, 0, chosen] = 0.0
        return logits


class StartsWith:
    """Keeps the first canvas position to tokens whose text starts with ``piece`` (token healing).

    A cursor inside a word (``assert_e|``) ends the prompt in a token cut off mid-word, which the
    model has rarely seen continued (``e`` + ``qual``): it wrote ``l(res) == res. res)`` where the
    file had ``assert_equal(`` two lines up. The engine drops that last token from the prompt and
    lets the canvas write it again, whole (``equal``), under this constraint. It holds while
    ``active()`` (the first canvas is open): later canvases of a block are free. It comes before
    ``DistinctStarts``, so batched alternatives differ among the allowed tokens.
    """

    def __init__(self, allowed_ids: Sequence[int], active: Callable[[], bool]):
        self.allowed_ids = torch.tensor(sorted(set(allowed_ids)))
        self.active = active

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, cur_step: int) -> torch.Tensor:
        if not self.active():
            return scores
        logits = scores.clone()  # (batch, canvas, vocab)
        allowed = self.allowed_ids.to(logits.device)
        kept = logits[:, 0, allowed]
        logits[:, 0] = torch.finfo(logits.dtype).min
        logits[:, 0, allowed] = kept
        return logits


class FirstLineStable(DiffusionGemmaAdaptiveStopping):
    """Stops a row once its first line is stable and confident, or when ``base`` (the checkpoint's) fires.

    The line stop for uniform noise, where nothing is ever committed: the first line of the argmax
    canvas (up to its line break, by ``LineStop``'s rule, or up to an end token) must be the same
    as at the previous step, and its tokens' entropies must sum to at most the sampler's
    ``entropy_bound`` (stricter than the sampler's acceptance, which leaves the largest one out:
    one unsure token would pass that). Post-processing keeps that first line only, whatever the
    rest of the canvas holds.
    """

    def __init__(
        self,
        line_stop: LineStop,
        base: DiffusionGemmaAdaptiveStopping | None,
        entropy_bound: float,
        end_ids: Sequence[int],
    ):
        self.line_stop = line_stop
        self.base = base
        self.entropy_bound = entropy_bound
        self.end_ids = set(end_ids)
        self.previous: list[list[int]] | None = None

    def first_line_end(self, tokens: Sequence[int]) -> int | None:
        """Index of the token that ends the first line (a line break or an end token), if any."""
        end = next((i for i, token in enumerate(tokens) if token in self.end_ids), len(tokens))
        line_break = self.line_stop.line_end(tokens[:end], [True] * end)
        if line_break is not None:
            return line_break
        return end if end < len(tokens) else None

    def __call__(self, argmax_canvas: torch.LongTensor, logits: torch.Tensor, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(argmax_canvas.shape[0], dtype=torch.bool, device=argmax_canvas.device)
        if self.base is not None:
            done = done | self.base(argmax_canvas, logits, **kwargs)
        rows = argmax_canvas.tolist()  # (batch, canvas)
        entropy = token_entropy(logits)  # (batch, canvas)
        for row, tokens in enumerate(rows):
            end = self.first_line_end(tokens)
            if end is None or self.previous is None or self.previous[row][: end + 1] != tokens[: end + 1]:
                continue
            done[row] |= bool(entropy[row, : end + 1].sum() <= self.entropy_bound)
        self.previous = rows
        return done

    def reset(self) -> None:
        self.previous = None
        if self.base is not None:
            self.base.reset()


class CompleteOrStable(DiffusionGemmaAdaptiveStopping):
    """Stops a row once its canvas is fully committed, or when transformers' stable-and-confident rule fires.

    Without the first rule a fully decoded canvas would cost one more forward pass just to be seen as stable.
    """

    def __init__(self, sampler: CodeSampler, base: StableAndConfidentStoppingCriteria | None):
        self.sampler = sampler
        self.base = base

    def __call__(self, argmax_canvas: torch.LongTensor, logits: torch.Tensor, **kwargs) -> torch.BoolTensor:
        done = self.sampler.complete
        if self.base is not None:
            done = done | self.base(argmax_canvas, logits, **kwargs)
        return done

    def reset(self) -> None:
        if self.base is not None:
            self.base.reset()
