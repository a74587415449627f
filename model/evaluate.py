"""Held-out evaluation: masked-token accuracy and decode quality of a model folder or checkpoint.

Decode quality uses a small greedy infilling loop that follows the server's rule (start from an
all-mask canvas; each step run the decoder, commit some masked positions to their argmax, feed the
logits back as self-conditioning; stop when no mask remains; continue block-autoregressively if
the canvas ends without EOS). It exists until ``diffgemma_ls.engine`` lands, and to compare
commit orders:

- ``l2r``: the leftmost masked position, one per step (autoregressive order);
- ``entropy``: lowest-entropy masked positions under the entropy bound of
  ``EntropyBoundSampler`` (sum of accepted entropies minus their max <= bound), at least one;
- ``entropy_eos``: as ``entropy``, but a position whose argmax is EOS/PAD is only committable
  when it is the leftmost mask, so length is decided last (guards against the "EOS trap");
  committing EOS (or PAD) at j sets every position after j to PAD.

All three forbid EOS/PAD in the first ``--min-tokens`` positions (default 1): an undertrained
model's most confident prediction is an empty middle (measured: without it every rule returned
empty or one-token completions).

``engine:adaptive``, ``engine:fixed`` and ``engine:sequential`` decode through the server's
``diffgemma_ls.engine.Engine`` instead (model folders only).

Metrics on held-out line tails (the common completion): exact match and edit similarity
(1 - Levenshtein / max length), plus the mean number of decoder forwards.

    python -m model.evaluate model/default --rules l2r entropy entropy_eos --n 100
    python -m model.evaluate model/work/runs/long/checkpoint.pt --n 100
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache

from diffgemma_ls.engine.infill import DecodeOptions, Engine
from diffgemma_ls.engine.loader import load_model
from diffgemma_ls.engine.sampling import DECODE_MODES
from model.arch import build_model
from model.data import InfillSampler, load_texts
from model.train import WORK, evaluate, heldout_batches

RULES = ("l2r", "entropy", "entropy_eos")
ENGINE_MODES = tuple(f"engine:{m}" for m in DECODE_MODES)


@torch.no_grad()
def infill(
    model: DiffusionGemmaForBlockDiffusion,
    prompt: list[int],
    rule: str = "entropy_eos",
    canvas_len: int = 32,
    max_blocks: int = 1,
    entropy_bound: float = 0.5,
    min_tokens: int = 1,
) -> tuple[list[int], int]:
    """Greedy infilling of one prompt. Returns (middle token ids without EOS, decoder forwards)."""
    cfg = model.config
    mask_id, eos_id, pad_id = cfg.mask_token_id, cfg.text_config.eos_token_id, cfg.text_config.pad_token_id
    cache = DynamicCache(config=cfg.text_config)
    model.model.encoder(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
    n, out, forwards = len(prompt), [], 0
    for _ in range(max_blocks):
        canvas = torch.full((1, canvas_len), mask_id)
        sc = None
        while (canvas == mask_id).any():
            positions = torch.arange(n, n + canvas_len)[None]
            logits = model(
                cache=cache,
                decoder_input_ids=canvas,
                decoder_position_ids=positions,
                self_conditioning_logits=sc,
            ).logits  # (1, C, V)
            forwards += 1
            sc = logits
            logits = logits[0].clone()
            logits[:, mask_id] = -float("inf")
            if not out:  # a request wants a non-empty middle: no end before ``min_tokens``
                logits[:min_tokens, eos_id] = logits[:min_tokens, pad_id] = -float("inf")
            pred = logits.argmax(-1)  # (C,)
            ent = torch.distributions.Categorical(logits=logits).entropy()  # (C,)
            open_ = canvas[0] == mask_id
            first_open = int(open_.nonzero()[0])
            if rule == "l2r":
                chosen = [first_open]
            else:
                allowed = open_.clone()
                if rule == "entropy_eos":
                    ends = (pred == eos_id) | (pred == pad_id)
                    allowed &= ~ends
                    allowed[first_open] = True
                order = [int(i) for i in torch.argsort(ent) if allowed[i]]
                chosen, total = [], 0.0
                for i in order:  # EntropyBoundSampler's acceptance rule
                    if (
                        chosen
                        and total + ent[i].item() - max(ent[j].item() for j in [*chosen, i]) > entropy_bound
                    ):
                        break
                    chosen.append(i)
                    total += ent[i].item()
            for i in chosen:
                canvas[0, i] = pred[i]
                if pred[i] in (eos_id, pad_id):  # the canvas ends here: the rest is padding
                    canvas[0, i + 1 :] = torch.where(
                        canvas[0, i + 1 :] == mask_id, pad_id, canvas[0, i + 1 :]
                    )
        ids = canvas[0].tolist()
        ends = [i for i, t in enumerate(ids) if t in (eos_id, pad_id)]
        if ends:
            return out + ids[: ends[0]], forwards
        out += ids
        if len(out) < max_blocks * canvas_len:  # block-AR: the finished canvas joins the prompt
            model.model.encoder(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
            n += len(ids)
    return out, forwards


@torch.no_grad()
def latency(model: DiffusionGemmaForBlockDiffusion, prompt_len: int = 500, canvas_len: int = 32) -> dict:
    """Batch-1 CPU timings of the two kernels a completion is made of (median of 10)."""
    cfg = model.config
    ids = torch.randint(11, cfg.text_config.vocab_size, (1, prompt_len))
    canvas = torch.full((1, canvas_len), cfg.mask_token_id)
    positions = torch.arange(prompt_len, prompt_len + canvas_len)[None]
    prefill, step = [], []
    for _ in range(12):
        t0 = time.perf_counter()
        cache = DynamicCache(config=cfg.text_config)
        model.model.encoder(input_ids=ids, cache=cache, use_cache=True)
        t1 = time.perf_counter()
        model(cache=cache, decoder_input_ids=canvas, decoder_position_ids=positions)
        prefill.append(t1 - t0)
        step.append(time.perf_counter() - t1)
    return {
        f"prefill_{prompt_len}_ms": 1000 * sorted(prefill[2:])[5],
        f"denoise_step_{canvas_len}_ms": 1000 * sorted(step[2:])[5],
    }


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein(a, b) / max(len): 1.0 is identical."""
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def load(path: Path, tokenizer) -> DiffusionGemmaForBlockDiffusion:
    """A model folder (shipped, any dtype -> fp32) or a training checkpoint."""
    if path.is_dir():
        return DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()
    ckpt = torch.load(path, weights_only=False)
    model = build_model(tokenizer, ckpt["state"]["size"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def decode_metrics(model, tok, n: int, rule: str, engine=None, seed: int = 7, **kw) -> dict:
    """Line-tail metrics for one of ``RULES`` (this file's loop) or ``engine:<mode>`` (the server's)."""
    rng = random.Random(seed)
    sampler = InfillSampler(load_texts("val"), tok)
    em, es, fw, t0 = 0, 0.0, 0, time.time()
    for _ in range(n):
        ex = sampler.sample(rng, kind="line_tail")
        if rule.startswith("engine:"):
            res = engine.infill(ex.prefix, ex.suffix, DecodeOptions(mode=rule.split(":")[1], max_steps=32))
            got, forwards = res.text, res.forward_passes
        else:
            ids, forwards = infill(model, ex.prompt, rule=rule, **kw)
            got = tok.decode(ids)
        want = tok.decode(ex.middle)
        em += got == want
        es += edit_similarity(got, want)
        fw += forwards
    return {
        "rule": rule,
        "line_tail_exact_match": em / n,
        "line_tail_edit_sim": es / n,
        "forwards_per_line": fw / n,
        "ms_per_line": 1000 * (time.time() - t0) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="model folder or checkpoint.pt")
    ap.add_argument("--tokenizer", type=Path, help="defaults to the model folder, else model/work/tokenizer")
    ap.add_argument("--rules", nargs="+", default=["entropy_eos"], choices=RULES + ENGINE_MODES)
    ap.add_argument("--entropy-bound", type=float, default=0.5)
    ap.add_argument("--min-tokens", type=int, default=1, help="no EOS/PAD before this many tokens")
    ap.add_argument("--n", type=int, default=100, help="held-out line tails to decode")
    ap.add_argument("--heldout", type=int, default=128, help="held-out examples for masked accuracy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency", action="store_true", help="also time prefill and one denoising step")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    tok_path = args.tokenizer or (args.model if args.model.is_dir() else WORK / "tokenizer")
    tok = AutoTokenizer.from_pretrained(tok_path)
    model = load(args.model, tok)
    batches = heldout_batches(tok, args.heldout)  # the same held-out batches train.py evaluates on
    result = {"model": str(args.model), **evaluate(model, batches, tok.mask_token_id, tok.pad_token_id)}
    if args.latency:
        result["latency"] = {"threads": args.threads, **latency(model)}
    engine = Engine(load_model(str(args.model), device="cpu")) if args.model.is_dir() else None
    print(json.dumps(result), flush=True)
    for rule in args.rules:  # one line per rule as it finishes: decoding is slow on a busy CPU
        kw = {"entropy_bound": args.entropy_bound, "min_tokens": args.min_tokens}
        metrics = decode_metrics(model, tok, args.n, rule, engine, **kw)
        print(json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
