"""Held-out evaluation of a model folder or training checkpoint: masked-token accuracy and line tails.

Line tails are decoded by the server's own ``diffgemma_ls.engine.Engine`` (``--modes`` adaptive,
fixed, sequential), so what is measured here is what the server does; a checkpoint is wrapped as a
loaded model without exporting it. Metrics: exact match and edit similarity (the bench's
``edit_similarity``), plus the mean number of decoder forwards.

    python -m model.evaluate model/default --modes adaptive sequential --n 100
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

from diffgemma_ls.bench.metrics import edit_similarity
from diffgemma_ls.engine.infill import DecodeOptions, Engine
from diffgemma_ls.engine.loader import LoadedModel, load_model
from diffgemma_ls.engine.model import CodeDiffusionGemma
from diffgemma_ls.engine.sampling import DECODE_MODES
from diffgemma_ls.training.examples import InfillSampler
from diffgemma_ls.training.objective import evaluate
from model.arch import build_model
from model.data import load_texts
from model.train import WORK, heldout_batches


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


def load(path: Path, tokenizer) -> DiffusionGemmaForBlockDiffusion:
    """A model folder (shipped, any dtype -> fp32) or a training checkpoint."""
    if path.is_dir():
        return DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()
    ckpt = torch.load(path, weights_only=False)
    model = build_model(tokenizer, ckpt["state"]["size"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def decode_metrics(engine: Engine, tok, n: int, mode: str, seed: int = 7) -> dict:
    """Line-tail metrics of the engine decoding in ``mode``."""
    rng = random.Random(seed)
    sampler = InfillSampler(load_texts("val"), tok)
    em, es, fw, t0 = 0, 0.0, 0, time.time()
    for _ in range(n):
        ex = sampler.sample(rng, kind="line_tail")
        res = engine.infill(ex.prefix, ex.suffix, DecodeOptions(mode=mode, max_steps=32))
        want = tok.decode(ex.middle)
        em += res.text == want
        es += edit_similarity(res.text, want)
        fw += res.forward_passes
    return {
        "mode": mode,
        "line_tail_exact_match": em / n,
        "line_tail_edit_sim": es / n,
        "forwards_per_line": fw / n,
        "ms_per_line": 1000 * (time.time() - t0) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="model folder or checkpoint.pt")
    ap.add_argument("--tokenizer", type=Path, help="defaults to the model folder, else model/work/tokenizer")
    ap.add_argument("--modes", nargs="+", default=["adaptive"], choices=DECODE_MODES)
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
    if args.model.is_dir():
        loaded = load_model(str(args.model), device="cpu")
    else:  # the same weights in the engine's class, which reads the checkpoint's noise kind
        served = CodeDiffusionGemma(model.config).eval()
        served.load_state_dict(model.state_dict())
        loaded = LoadedModel(served, tok, str(args.model), str(args.model), torch.device("cpu"), "none")
    engine = Engine(loaded)
    print(json.dumps(result), flush=True)
    for mode in args.modes:  # one line per mode as it finishes: decoding is slow on a busy CPU
        print(json.dumps(decode_metrics(engine, tok, args.n, mode)), flush=True)


if __name__ == "__main__":
    main()
