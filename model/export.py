"""Turn a training checkpoint into the shipped Hugging Face folder (default: ``model/default``).

The folder is what the server loads (``DiffusionGemmaForBlockDiffusion.from_pretrained`` and
``AutoTokenizer.from_pretrained``) and what ``model/train.py --resume model/default`` continues
from next session (weights only; ``training_state.json`` carries tokens seen and CPU time).

Weights are stored in 16 bits to halve the download; the server upcasts to fp32 on CPU (no fast
bf16/fp16 matmul on AVX2). fp16 keeps 3 more mantissa bits than bf16 and these small weights are
far from fp16's range limits, so fp16 is the closer copy; the export checks that the upcast
model reproduces the fp32 checkpoint's decoder argmax on held-out batches.

    python -m model.export model/work/runs/long/checkpoint.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

from diffgemma_ls.training.examples import InfillSampler, make_batch
from diffgemma_ls.training.objective import decode_logits, encode
from model.data import load_texts
from model.evaluate import load
from model.train import WORK

OUT = Path(__file__).resolve().parent / "default"
MAX_MB = 40

# Decode settings measured with model/evaluate.py (see model/README.md, "Decoding").
GENERATION = {
    "max_new_tokens": 32,
    "max_denoising_steps": 32,  # a 32-token canvas needs at most one commit per position
    # A sum of entropies (nats) per pass. Measured on the bench's 150 line/span/block tasks with the
    # 33.9M-token weights: bound 0.5 -> 16.1 passes, 22.8% edit sim; 10 -> 8.5 passes, 22.7%;
    # 20 -> 5.4, 21.8%; 50 -> 2.9, 20.8%. The model is rarely confident, so a low bound leaves
    # the schedule floor to decide (two positions a pass) and only spends passes.
    "entropy_bound": 10.0,
    "t_min": 0.95,  # ~1: entropies as measured; generate() requires t_min < t_max
    "t_max": 1.0,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
}


def generation_config(tok) -> DiffusionGemmaGenerationConfig:
    g = dict(GENERATION)
    return DiffusionGemmaGenerationConfig(
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=g.pop("entropy_bound")),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **g,
    )


@torch.no_grad()
def upcast_agreement(ref: DiffusionGemmaForBlockDiffusion, folder: Path, tok) -> dict:
    """Compare the reloaded 16-bit folder (upcast to fp32) with the fp32 model on held-out cuts."""
    shipped = DiffusionGemmaForBlockDiffusion.from_pretrained(folder, dtype=torch.float32).eval()
    rng = random.Random(5)
    sampler = InfillSampler(load_texts("val"), tok)
    batch = make_batch([sampler.sample(rng) for _ in range(16)], 32, rng, tok.pad_token_id, tok.eos_token_id)
    canvas = torch.full_like(batch.canvas, tok.mask_token_id)  # t = 1: the first denoising step
    out = []
    for model in (ref, shipped):
        _, cache = encode(model, batch)
        out.append(decode_logits(model, cache, batch, canvas))
    return {
        "argmax_agreement": (out[0].argmax(-1) == out[1].argmax(-1)).float().mean().item(),
        "max_abs_logit_diff": (out[0] - out[1]).abs().max().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--tokenizer", type=Path, default=WORK / "tokenizer")
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    model = load(args.checkpoint, tok)
    state = torch.load(args.checkpoint, weights_only=False)["state"]
    if args.out.exists():
        shutil.rmtree(args.out)
    model.generation_config = generation_config(tok)
    if state.get("args", {}).get("context_prob", 0) > 0:  # trained with other files' chunks
        model.config.cross_file_context = True
    copy.deepcopy(model).to(getattr(torch, args.dtype)).save_pretrained(args.out)
    tok.save_pretrained(args.out)
    keep = ("step", "tokens", "train_seconds", "size")
    (args.out / "training_state.json").write_text(json.dumps({k: state[k] for k in keep}, indent=1) + "\n")

    mb = sum(f.stat().st_size for f in args.out.iterdir()) / 1e6
    assert mb <= MAX_MB, f"{mb:.1f} MB > {MAX_MB} MB"
    check = upcast_agreement(model, args.out, tok)
    print(json.dumps({"out": str(args.out), "megabytes": round(mb, 2), "dtype": args.dtype, **check}))


if __name__ == "__main__":
    main()
