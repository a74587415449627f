"""The training objective of the shipped code model, one optimizer step at a time.

One step (shapes: B batch, S padded prompt length, C canvas length, V vocab, H hidden):

1. encoder: causal pass over the FIM prompt (B, S) -> hidden (B, S, H) and the KV cache;
   encoder loss = next-token cross-entropy of ``lm_head(hidden)`` on real prompt tokens (dense
   signal from every context token; same weights as the decoder, DiffusionGemma ties them);
2. corrupt the clean canvas (B, C) with absorbing noise: t ~ U(0, 1] per row, each position
   replaced by ``<|mask|>`` with probability t (the server's sampler starts from an all-mask
   canvas and re-masks, so this is the same process);
3. self-conditioning: a no-grad decoder pass gives logits (B, C, V); a random share of the rows
   get them as ``self_conditioning_logits`` (``generate()`` feeds the previous step's logits from
   step 2 on, and nothing at step 1, so both cases are trained);
4. decoder loss = cross-entropy on masked positions only; PAD targets down-weighted (the "EOS
   trap": padding is the easiest prediction and would otherwise dominate the loss);
5. loss = decoder loss + ``enc_weight`` * encoder loss; AdamW step, gradients clipped at 1.

Shared by ``model/train.py`` (the default model from scratch) and ``diffgemma-ls tune``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache

from diffgemma_ls.training.examples import Batch


@dataclass(frozen=True)
class LossWeights:
    pad_weight: float = 0.1  # PAD targets' weight in the decoder loss
    enc_weight: float = 0.5  # the encoder's next-token loss, relative to the decoder's
    sc_prob: float = 0.5  # rows that get self-conditioning logits


def softcap(model: DiffusionGemmaForBlockDiffusion, logits: torch.Tensor) -> torch.Tensor:
    """The logit soft-capping ``DiffusionGemmaForBlockDiffusion.forward`` applies to decoder logits."""
    cap = model.final_logit_softcapping
    return torch.tanh(logits.float() / cap) * cap


def encode(model: DiffusionGemmaForBlockDiffusion, batch: Batch) -> tuple[torch.Tensor, DynamicCache]:
    """Causal encoder pass: hidden states (B, S, H) and the KV cache the decoder reads."""
    cache = DynamicCache(config=model.config.text_config)
    out = model.model.encoder(input_ids=batch.enc_ids, cache=cache, use_cache=True)
    return out.last_hidden_state, cache


def encoder_loss(model: DiffusionGemmaForBlockDiffusion, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Next-token loss on the prompt: position j predicts token j+1, real tokens only."""
    S = batch.enc_ids.shape[1]
    valid = torch.arange(S - 1)[None, :] < (batch.enc_len[:, None] - 1)  # (B, S-1)
    logits = softcap(model, model.lm_head(hidden[:, :-1][valid]))  # (N, V)
    return F.cross_entropy(logits, batch.enc_ids[:, 1:][valid])


def decode_logits(
    model: DiffusionGemmaForBlockDiffusion,
    cache: DynamicCache,
    batch: Batch,
    canvas: torch.Tensor,
    sc_logits: torch.Tensor | None = None,
    sc_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoder pass over a (noisy) canvas (B, C) -> logits (B, C, V), per-row positions and masks."""
    B, S = batch.enc_ids.shape
    C = canvas.shape[1]
    cache_mask = torch.arange(S)[None, :] < batch.enc_len[:, None]  # (B, S): hide right padding
    mask = torch.cat([cache_mask, torch.ones(B, C, dtype=torch.bool)], dim=1)  # (B, S+C)
    positions = batch.enc_len[:, None] + torch.arange(C)[None, :]  # (B, C): n_i .. n_i+C-1
    return model(
        cache=cache,
        decoder_input_ids=canvas,
        decoder_attention_mask=mask,
        decoder_position_ids=positions,
        self_conditioning_logits=sc_logits,
        self_conditioning_mask=sc_mask,
    ).logits


def corrupt(canvas: torch.Tensor, t: torch.Tensor, mask_id: int, gen: torch.Generator) -> torch.Tensor:
    """Absorbing noise: each position -> mask with prob t (B,); at least one masked per row."""
    B, C = canvas.shape
    masked = torch.rand(B, C, generator=gen) < t[:, None]
    masked[torch.arange(B), torch.randint(0, C, (B,), generator=gen)] = True
    return masked


def diffusion_loss(
    logits: torch.Tensor, canvas: torch.Tensor, masked: torch.Tensor, pad_id: int, pad_weight: float
) -> torch.Tensor:
    """Cross-entropy on masked positions; PAD targets down-weighted (see module docstring)."""
    ce = F.cross_entropy(logits.transpose(1, 2), canvas, reduction="none")  # (B, C)
    w = masked.float() * torch.where(canvas == pad_id, pad_weight, 1.0)
    return (ce * w).sum() / w.sum()


@torch.no_grad()
def evaluate(model: DiffusionGemmaForBlockDiffusion, batches: list[Batch], mask_id: int, pad_id: int) -> dict:
    """Held-out masked-token accuracy at t=1.0 / t=0.5 (no self-conditioning) and encoder loss.

    Accuracy counts non-PAD targets (content and EOS), so predicting padding everywhere scores 0.
    """
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    stats = {"acc_t1.0": [0, 0], "acc_t0.5": [0, 0]}
    enc_losses = []
    for batch in batches:
        hidden, cache = encode(model, batch)
        enc_losses.append(encoder_loss(model, hidden, batch).item())
        for t in (1.0, 0.5):
            masked = corrupt(batch.canvas, torch.full((batch.canvas.shape[0],), t), mask_id, gen)
            noisy = torch.where(masked, mask_id, batch.canvas)
            pred = decode_logits(model, cache, batch, noisy).argmax(-1)
            scored = masked & (batch.canvas != pad_id)
            stats[f"acc_t{t}"][0] += (pred == batch.canvas)[scored].sum().item()
            stats[f"acc_t{t}"][1] += scored.sum().item()
    model.train()
    return {k: hit / max(n, 1) for k, (hit, n) in stats.items()} | {
        "val_enc_loss": sum(enc_losses) / len(enc_losses)
    }


def train_step(
    model: DiffusionGemmaForBlockDiffusion,
    opt: torch.optim.Optimizer,
    batch: Batch,
    gen: torch.Generator,
    weights: LossWeights,
) -> dict[str, float]:
    """One optimizer step on ``batch`` (see the module docstring); the losses, for the log."""
    mask_id, pad_id = model.config.mask_token_id, model.config.text_config.pad_token_id
    B, C = batch.canvas.shape
    hidden, cache = encode(model, batch)  # (B, S, H)
    enc_loss = encoder_loss(model, hidden, batch)
    t = torch.rand(B, generator=gen).clamp_min(1.0 / C)  # (B,) noise level in (0, 1]
    masked = corrupt(batch.canvas, t, mask_id, gen)  # (B, C) bool
    noisy = torch.where(masked, mask_id, batch.canvas)  # (B, C)
    with torch.no_grad():
        sc_logits = decode_logits(model, cache, batch, noisy)  # (B, C, V)
    sc_mask = torch.rand(B, generator=gen) < weights.sc_prob  # (B,) rows that get self-conditioning
    logits = decode_logits(model, cache, batch, noisy, sc_logits, sc_mask)  # (B, C, V)
    diff_loss = diffusion_loss(logits, batch.canvas, masked, pad_id, weights.pad_weight)
    loss = diff_loss + weights.enc_weight * enc_loss

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return {"loss": loss.item(), "diff_loss": diff_loss.item(), "enc_loss": enc_loss.item()}
