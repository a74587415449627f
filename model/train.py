"""Train the default DiffusionGemma code model on CPU, for a wall-clock budget, resumably.

Each step samples B infilling examples (``diffgemma_ls/training/examples.py``; with
``--context-prob``, some with cross-file context from their package) at a canvas length C in
{16, 32, 64} and takes one step of the objective in ``diffgemma_ls/training/objective.py``. The
learning rate warms up, stays constant, then decays linearly over the last ``--decay-frac`` of the
budget (so the shipped weights are annealed even though the run length is set by the clock).

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
from tqdm import tqdm
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from diffgemma_ls.training.examples import Batch, InfillSampler, make_batch, packages
from diffgemma_ls.training.objective import LossWeights, evaluate, train_step
from model.arch import build_model
from model.data import load_files

WORK = Path(__file__).resolve().parent / "work"
CANVAS_LENGTHS = (16, 32, 64)
CANVAS_WEIGHTS = (0.25, 0.5, 0.25)


def heldout_batches(tok, n: int, context_prob: float = 0.0, pool: dict | None = None) -> list[Batch]:
    """The fixed held-out set: ``n`` examples from held-out files (seeded), canvas 32, full windows;
    with ``context_prob``, cross-file context from ``pool`` (the package's other files, any split)."""
    rng = random.Random(99)
    files = load_files("val")
    paths = [p for p, _ in files] if context_prob > 0 else None  # else the rng draws as before
    sampler = InfillSampler([t for _, t in files], tok, paths=paths, pool=pool, context_prob=context_prob)
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
    ap.add_argument("--context-prob", type=float, default=0.0, help="examples with cross-file context")
    ap.add_argument("--context-chars", type=int, default=768, help="the most cross-file context per example")
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

    weights = LossWeights(args.pad_weight, args.enc_weight, args.sc_prob)
    train_files = load_files("train")
    train_sampler = InfillSampler.of_files(
        train_files, tok, args.context_prob, vary_window=True, max_context_chars=args.context_chars
    )
    val_batches = heldout_batches(tok, args.eval_examples)
    # the same held-out cuts with every example given its package's context: what the context adds
    ctx_batches = (
        heldout_batches(tok, args.eval_examples, 1.0, packages(train_files + load_files("val")))
        if args.context_prob > 0
        else []
    )

    def log(row: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    if step0 > 0:  # where the resumed weights start, on this run's held-out sets
        metrics = evaluate(model, val_batches, mask_id, pad_id)
        if ctx_batches:
            metrics |= {f"ctx_{k}": v for k, v in evaluate(model, ctx_batches, mask_id, pad_id).items()}
        log({"kind": "eval", "step": step0, "tokens": state["tokens"], **metrics})
        print(f"eval step {step0}: {json.dumps(metrics)}")

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

        losses = train_step(model, opt, batch, gen, weights)
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
                **losses,
                "tok_per_s": tps,
            }
            log(row)
            bar.set_postfix_str(
                f"step {state['step']} diff {losses['diff_loss']:.3f} enc {losses['enc_loss']:.3f} "
                f"{tps:.0f} tok/s"
            )
        bar.n = int(time.time() - start)
        bar.refresh()

        done = time.time() - start >= budget
        if done or time.time() - last_eval > args.eval_minutes * 60:
            metrics = evaluate(model, val_batches, mask_id, pad_id)
            if ctx_batches:
                metrics |= {f"ctx_{k}": v for k, v in evaluate(model, ctx_batches, mask_id, pad_id).items()}
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
