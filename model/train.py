"""Train the default DiffusionGemma code model on CPU, for a wall-clock budget, resumably.

One step (shapes: B batch, S padded prompt length, C canvas length, V vocab, H hidden):

1. sample B infilling examples and a canvas length C in {16, 32, 64} (model/data.py);
2. encoder: causal pass over the FIM prompt (B, S) -> hidden (B, S, H) and the KV cache;
   encoder loss = next-token cross-entropy of ``lm_head(hidden)`` on real prompt tokens (dense
   signal from every context token; same weights as the decoder, DiffusionGemma ties them);
3. corrupt the clean canvas (B, C) with absorbing noise: t ~ U(0, 1] per row, each position
   replaced by ``<|mask|>`` with probability t (the server's sampler starts from an all-mask
   canvas and re-masks, so this is the same process);
4. self-conditioning: a no-grad decoder pass gives logits (B, C, V); half of the rows get them as
   ``self_conditioning_logits`` (``generate()`` feeds the previous step's logits from step 2 on,
   and nothing at step 1, so both cases are trained);
5. decoder loss = cross-entropy on masked positions only; PAD targets weighted by ``--pad-weight``
   (the "EOS trap": padding is the easiest prediction and would otherwise dominate the loss);
6. loss = decoder loss + ``--enc-weight`` * encoder loss; AdamW; lr warmup, constant, linear decay
   over the last ``--decay-frac`` of the budget (so the shipped weights are annealed even though
   the run length is set by the clock).

    python -m model.train --size s256x4 --budget-minutes 60 --name long
    python -m model.train --name long --resume --budget-minutes 90     # continue model/work/runs/long
    python -m model.train --name next --resume model/default --budget-minutes 600  # from shipped
    python -m model.train --name long --resume model/work/runs/sweep-s256x4/checkpoint.pt ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache

from model.arch import build_model
from model.data import Batch, InfillSampler, load_texts, make_batch

WORK = Path(__file__).resolve().parent / "work"
CANVAS_LENGTHS = (16, 32, 64)
CANVAS_WEIGHTS = (0.25, 0.5, 0.25)


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


def heldout_batches(tok, n: int) -> list[Batch]:
    """The fixed held-out set: ``n`` examples from held-out files (seeded), canvas 32, full windows."""
    rng = random.Random(99)
    sampler = InfillSampler(load_texts("val"), tok)
    examples = [sampler.sample(rng) for _ in range(n)]
    return [
        make_batch(examples[i : i + 16], 32, rng, tok.pad_token_id, tok.eos_token_id) for i in range(0, n, 16)
    ]


def lr_at(frac: float, step: int, args: argparse.Namespace) -> float:
    """Warmup (steps), constant, then linear decay to 10% over the last ``decay_frac`` of the budget."""
    warm = min(1.0, (step + 1) / args.warmup)
    decay = min(1.0, (1.0 - frac) / args.decay_frac) if args.decay_frac > 0 else 1.0
    return args.lr * warm * (0.1 + 0.9 * max(0.0, decay))


def save_checkpoint(path: Path, model, opt, state: dict) -> None:
    """Atomic: write to a temp file, then rename, so a kill mid-write never corrupts the last one."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, tmp)
    os.replace(tmp, path)


def plot(log_path: Path, png: Path) -> None:
    """Learning curve: train losses and held-out accuracies against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path) as fh:
        rows = [json.loads(line) for line in fh]
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "eval"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("diff_loss", "enc_loss"):
        a.plot([r["tokens"] / 1e6 for r in train], [r[key] for r in train], label=f"train {key}", lw=0.8)
    a.plot(
        [r["tokens"] / 1e6 for r in val], [r["val_enc_loss"] for r in val], "o-", label="held-out enc_loss"
    )
    a.set_xlabel("tokens seen (M)")
    a.set_ylabel("loss")
    a.legend()
    for key in ("acc_t1.0", "acc_t0.5"):
        b.plot([r["tokens"] / 1e6 for r in val], [r[key] for r in val], "o-", label=f"held-out {key}")
    b.set_xlabel("tokens seen (M)")
    b.set_ylabel("masked-token accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="long", help="run directory under model/work/runs/")
    ap.add_argument("--size", default="s256x4", help="preset in model/arch.py (new runs only)")
    ap.add_argument("--tokenizer", type=Path, default=WORK / "tokenizer")
    ap.add_argument(
        "--resume",
        nargs="?",
        const="last",
        help="'last' (this run's checkpoint), a checkpoint.pt, or a shipped model folder",
    )
    ap.add_argument("--budget-minutes", type=float, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--decay-frac", type=float, default=0.15)
    ap.add_argument("--pad-weight", type=float, default=0.1)
    ap.add_argument("--enc-weight", type=float, default=0.5)
    ap.add_argument("--sc-prob", type=float, default=0.5)
    ap.add_argument("--ckpt-minutes", type=float, default=10.0)
    ap.add_argument("--eval-minutes", type=float, default=10.0)
    ap.add_argument("--eval-examples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    run = WORK / "runs" / args.name
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run / "checkpoint.pt", run / "log.jsonl"
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    mask_id, pad_id, eos_id = tok.mask_token_id, tok.pad_token_id, tok.eos_token_id

    # state carried across resumes: step, tokens seen, wall-clock seconds spent in training steps
    state = {"step": 0, "tokens": 0, "train_seconds": 0.0, "size": args.size}
    torch.manual_seed(args.seed)
    resume = ckpt_path if args.resume == "last" else Path(args.resume) if args.resume else None
    if resume is not None and resume.is_dir():  # a shipped folder: weights only, optimizer restarts
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(resume, dtype=torch.float32)
        prior = json.loads((resume / "training_state.json").read_text())
        state |= {k: prior[k] for k in ("step", "tokens", "train_seconds", "size")}
    ckpt = torch.load(resume, weights_only=False) if resume is not None and resume.is_file() else None
    if ckpt is not None:  # a training checkpoint: weights + optimizer
        state = {k: v for k, v in ckpt["state"].items() if k != "args"}
    if resume is None or ckpt is not None:
        model = build_model(tok, state["size"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
    step0 = state["step"]
    rng = random.Random(args.seed * 1000 + step0)  # resumed runs draw fresh examples
    gen = torch.Generator().manual_seed(args.seed * 1000 + step0)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f}M, size {state['size']}, resuming at step {step0}")

    train_sampler = InfillSampler(load_texts("train"), tok, vary_window=True)
    val_batches = heldout_batches(tok, args.eval_examples)

    def log(row: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    start = time.time()
    budget = args.budget_minutes * 60
    last_ckpt = last_eval = start
    model.train()
    bar = tqdm(total=int(budget), unit="s", bar_format="{l_bar}{bar}| {n:.0f}/{total}s {postfix}")
    window_tokens, window_start = 0, time.time()
    while (elapsed := time.time() - start) < budget:
        step_start = time.time()
        step = state["step"]
        lr = lr_at(elapsed / budget, step - step0, args)
        for g in opt.param_groups:
            g["lr"] = lr
        C = rng.choices(CANVAS_LENGTHS, CANVAS_WEIGHTS)[0]
        batch = make_batch([train_sampler.sample(rng) for _ in range(args.batch)], C, rng, pad_id, eos_id)
        B = batch.canvas.shape[0]

        hidden, cache = encode(model, batch)  # (B, S, H)
        enc_loss = encoder_loss(model, hidden, batch)
        t = torch.rand(B, generator=gen).clamp_min(1.0 / C)  # (B,) noise level in (0, 1]
        masked = corrupt(batch.canvas, t, mask_id, gen)  # (B, C) bool
        noisy = torch.where(masked, mask_id, batch.canvas)  # (B, C)
        with torch.no_grad():
            sc_logits = decode_logits(model, cache, batch, noisy)  # (B, C, V)
        sc_mask = torch.rand(B, generator=gen) < args.sc_prob  # (B,) rows that get self-conditioning
        logits = decode_logits(model, cache, batch, noisy, sc_logits, sc_mask)  # (B, C, V)
        diff_loss = diffusion_loss(logits, batch.canvas, masked, pad_id, args.pad_weight)
        loss = diff_loss + args.enc_weight * enc_loss

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        n_tok = int(batch.enc_len.sum()) + B * C
        state["step"] += 1
        state["tokens"] += n_tok
        state["train_seconds"] += time.time() - step_start
        window_tokens += n_tok
        if state["step"] % 10 == 0:
            now = time.time()
            tps = window_tokens / (now - window_start)
            window_tokens, window_start = 0, now
            row = {
                "kind": "train",
                "step": state["step"],
                "tokens": state["tokens"],
                "train_hours": state["train_seconds"] / 3600,
                "lr": lr,
                "loss": loss.item(),
                "diff_loss": diff_loss.item(),
                "enc_loss": enc_loss.item(),
                "tok_per_s": tps,
            }
            log(row)
            bar.set_postfix_str(
                f"step {state['step']} diff {diff_loss.item():.3f} enc {enc_loss.item():.3f} {tps:.0f} tok/s"
            )
        bar.n = int(time.time() - start)
        bar.refresh()

        done = time.time() - start >= budget
        if done or time.time() - last_eval > args.eval_minutes * 60:
            metrics = evaluate(model, val_batches, mask_id, pad_id)
            log({"kind": "eval", "step": state["step"], "tokens": state["tokens"], **metrics})
            plot(log_path, run / "learning_curve.png")
            tqdm.write(f"eval step {state['step']}: {json.dumps(metrics)}")
            last_eval = time.time()
        if done or time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_checkpoint(ckpt_path, model, opt, state | {"args": vars(args)})
            last_ckpt = time.time()
    bar.close()
    print(json.dumps({"done": True, **state}))


if __name__ == "__main__":
    main()
