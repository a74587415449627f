"""``DiffusionGemmaForBlockDiffusion`` with the noise kind its checkpoint was trained with.

Any DiffusionGemma checkpoint loads through this class (same weights, same config, same ``generate()``).
What it adds is read from the checkpoint's config, so the real model and the shipped code model
share every line of the serving path:

* ``config.noise_kind``: ``"uniform"`` (DiffusionGemma's own; the default when absent) or ``"mask"``
  (absorbing noise with ``config.mask_token_id``, which the shipped default model is trained with);
* for mask noise, the logits use the absorbing-diffusion parameterization (MDLM's "SUBS"): the mask
  token is never predicted and a committed (unmasked) canvas token predicts itself with certainty.
  That keeps ``generate()``'s final argmax canvas equal to what was committed and makes the
  stable-and-confident stop see zero entropy on committed positions;
* ``_prepare_sampler`` / ``_prepare_diffusion_stopping_criteria`` build ``CodeSampler`` and its stop
  rule when a ``CodeSamplerConfig`` is passed, and transformers' own sampler otherwise (with
  ``FirstLineStable`` around the checkpoint's stop for a line request);
* ``_denoising_step`` is transformers' own, minus the canvas-wide multinomial draw that
  ``CodeSampler`` never reads (its accepted tokens are the argmax).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Cache, DiffusionGemmaForBlockDiffusion, LogitsProcessorList
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaAdaptiveStopping,
    DiffusionGemmaGenerationConfig,
    EntropyBoundSampler,
    StableAndConfidentStoppingCriteria,
)
from transformers.models.gemma4 import Gemma4VisionConfig

from diffgemma_ls.engine.sampling import CodeSampler, CodeSamplerConfig, CompleteOrStable, FirstLineStable

NOISE_KINDS = ("uniform", "mask")
# Finite, so temperature scaling and entropy stay finite (finfo.min / 0.4 would overflow to -inf).
NEVER = -1e9


def minimal_vision_config() -> Gemma4VisionConfig:
    """The smallest vision tower DiffusionGemma's config accepts, for text-only code models."""
    return Gemma4VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=16,
    )


class CodeDiffusionGemma(DiffusionGemmaForBlockDiffusion):
    """DiffusionGemma whose sampler matches the noise it was trained with (see module docstring)."""

    last_sampler: EntropyBoundSampler | None = None  # the sampler of the latest generate() call

    @property
    def noise_kind(self) -> str:
        kind = getattr(self.config, "noise_kind", "uniform")
        if kind not in NOISE_KINDS:
            raise ValueError(f"config.noise_kind must be one of {NOISE_KINDS}, got {kind!r}")
        return kind

    @property
    def mask_token_id(self) -> int | None:
        return getattr(self.config, "mask_token_id", None) if self.noise_kind == "mask" else None

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        canvas = kwargs.get("decoder_input_ids")
        mask_id = self.mask_token_id
        if mask_id is None or canvas is None:
            return outputs
        logits = outputs.logits  # (batch, canvas, vocab), float32
        logits[..., mask_id] = NEVER
        committed = canvas != mask_id  # (batch, canvas)
        if committed.any():
            one_hot = torch.full_like(logits, NEVER)
            one_hot.scatter_(-1, canvas.unsqueeze(-1), 0.0)
            outputs.logits = torch.where(committed.unsqueeze(-1), one_hot, logits)
        return outputs

    def _prepare_sampler(self, generation_config: DiffusionGemmaGenerationConfig) -> EntropyBoundSampler:
        config = generation_config.sampler_config
        if not isinstance(config, CodeSamplerConfig):
            sampler = super()._prepare_sampler(generation_config)
        else:
            eos = generation_config.eos_token_id
            sampler = CodeSampler(
                config,
                canvas_length=self.config.canvas_length,
                vocab_size=self.config.text_config.vocab_size,
                max_denoising_steps=generation_config.max_denoising_steps,
                mask_token_id=self.mask_token_id,
                pad_token_id=generation_config.pad_token_id,
                eos_token_ids=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            )
        # generate() builds the stop rule right after the sampler, and the engine reads the sampler's
        # final state (committed tokens, line cut) after generate() returns, under its lock
        self.last_sampler = sampler
        return sampler

    def _prepare_diffusion_stopping_criteria(self, generation_config: DiffusionGemmaGenerationConfig):
        base = super()._prepare_diffusion_stopping_criteria(generation_config)
        sampler = self.last_sampler
        if not isinstance(sampler, CodeSampler):
            line_stop = getattr(generation_config.sampler_config, "line_stop", None)
            if line_stop is None:
                return base
            eos = generation_config.eos_token_id
            ends = [
                generation_config.pad_token_id,
                *([] if eos is None else [eos] if isinstance(eos, int) else eos),
            ]
            return FirstLineStable(line_stop, base, sampler.entropy_bound, ends)
        if sampler.mode == "fixed":
            return None  # exactly max_denoising_steps passes; the schedule completes the canvas at the last
        if sampler.mode == "sequential":
            return CompleteOrStable(sampler, None)  # the baseline stops at EOS only, like autoregression
        if base is not None and self._acceptance_covers(sampler, base):
            return CompleteOrStable(sampler, None)
        return CompleteOrStable(sampler, base)

    @staticmethod
    def _acceptance_covers(sampler: CodeSampler, base: StableAndConfidentStoppingCriteria) -> bool:
        """Whether any canvas the stable-and-confident rule stops is already complete in the same step.

        With mask noise, committed positions have zero entropy, so "confident" (mean entropy below the
        threshold) means the free positions' entropies sum below ``threshold * canvas_length``; an
        entropy bound at least that accepts them all in the same step, before the rule looks. The rule
        would then only cost its own entropy pass (~1 ms a step on this CPU): never a pass earlier on
        the bench's 120 line and block tasks, at 16 steps or 4.
        """
        covered = base.confidence_threshold * sampler.canvas_length
        return sampler.mask_token_id is not None and sampler.entropy_bound >= covered

    def _denoising_step(self, **kwargs):
        if not isinstance(kwargs["sampler"], CodeSampler):
            return super()._denoising_step(**kwargs)
        return self._greedy_denoising_step(**kwargs)

    def _greedy_denoising_step(
        self,
        decoder_forward: Callable,
        current_canvas: torch.Tensor,
        argmax_canvas: torch.Tensor,
        input_ids: torch.LongTensor,
        decoder_position_ids: torch.LongTensor,
        self_conditioning_logits: torch.Tensor,
        mask_mapping: dict[str, torch.Tensor],
        cache: Cache,
        finished_denoising: torch.Tensor,
        cur_step: int,
        sampler: CodeSampler,
        logits_processor: LogitsProcessorList,
        diffusion_stopping_criteria: DiffusionGemmaAdaptiveStopping | None,
        **model_kwargs,
    ):
        """transformers' ``_denoising_step`` (5.23), step for step, without its multinomial draw.

        transformers samples every canvas position from the softmax each pass, for its own sampler
        to accept from; ``CodeSampler`` accepts argmax tokens and never reads the draw, which costs
        2.6 ms of a ~20 ms pass on a (32, 4096) canvas on this CPU (``torch.multinomial`` draws an
        exponential per vocabulary entry). Same outputs: a test decodes through both, on the installed
        transformers.
        """
        cur_step = torch.tensor(cur_step, device=current_canvas.device, dtype=torch.int32)
        if current_canvas.is_cuda:  # as transformers, for CUDA graphs; on CPU it costs ~0.8 s of imports
            torch.compiler.cudagraph_mark_step_begin()
        decoder_outputs = decoder_forward(
            decoder_input_ids=current_canvas,
            self_conditioning_logits=self_conditioning_logits,
            decoder_attention_mask=mask_mapping,
            cache=cache,
            decoder_position_ids=decoder_position_ids,
            **model_kwargs,
        )
        processed_logits = logits_processor(input_ids, decoder_outputs.logits, cur_step=cur_step)
        new_argmax_canvas = torch.argmax(processed_logits, dim=-1)  # (batch, canvas)
        accepted_canvas = sampler.accept_canvas(current_canvas, new_argmax_canvas, processed_logits, cur_step)
        accepted_canvas = accepted_canvas.clone()  # the clones too: a compiled sampler reuses its outputs
        new_current_canvas = sampler.renoise_canvas(accepted_canvas, cur_step).clone()
        if diffusion_stopping_criteria is not None:
            if finished_denoising.any():  # a finished row keeps its results
                done = finished_denoising[:, None]  # (batch, 1)
                new_argmax_canvas = torch.where(done, argmax_canvas, new_argmax_canvas)
                new_current_canvas = torch.where(done, current_canvas, new_current_canvas)
                processed_logits = torch.where(done[..., None], self_conditioning_logits, processed_logits)
            finished_denoising |= diffusion_stopping_criteria(new_argmax_canvas, processed_logits)
        self_conditioning_logits = processed_logits.to(self.model.decoder.embed_tokens.weight.dtype)
        return new_current_canvas, new_argmax_canvas, self_conditioning_logits, finished_denoising
