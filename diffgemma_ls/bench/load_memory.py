"""Peak host memory of loading a DiffusionGemma checkpoint: this loader against ``from_pretrained``.

``python -m diffgemma_ls.bench.load_memory --out DIR`` writes a stock-shaped checkpoint with random
bf16 weights (DiffusionGemma 26B-A4B's structure, scaled to a few GB, in several shards; written one
tensor at a time, so writing it needs little memory), then loads it in a fresh process per row and
prints each process's peak resident memory (``ru_maxrss``) on the CPU:

* ``diffgemma-ls`` rows: ``load_model`` (shard by shard, quantizing as it reads; no vision tower);
* ``from_pretrained`` rows: what the loader did before, transformers' ``from_pretrained`` in fp32 and
  then, for 4bit, ``quantize_model`` in place.

Resident memory counts the memory-mapped shard pages read so far, so "near the largest shard plus
the model" is what the first kind should show.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import DiffusionGemmaConfig, DiffusionGemmaTextConfig

from diffgemma_ls.bench.real_shape import PUBLISHED_TEXT_CONFIG
from diffgemma_ls.engine.model import minimal_vision_config
from diffgemma_ls.engine.streaming import StreamingLoader

# ~1.5B parameters (3 GB in bf16): the real model's structure, narrower and with fewer experts
SCALED = {
    **PUBLISHED_TEXT_CONFIG,
    "vocab_size": 262_144,
    "hidden_size": 1024,
    "intermediate_size": 768,
    "moe_intermediate_size": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "num_global_key_value_heads": 1,
    "head_dim": 128,
    "global_head_dim": 256,
    "num_experts": 48,
    "max_position_embeddings": 8192,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 2,
}

_LOAD = """
import resource, sys, time
started = time.perf_counter()
kind, mode, path = sys.argv[1:4]
if kind == "diffgemma-ls":
    from diffgemma_ls.engine.loader import load_model
    model = load_model(path, device="cpu", quantize=mode).model
else:
    import torch
    from diffgemma_ls.engine.model import CodeDiffusionGemma
    from diffgemma_ls.engine.quantize import quantize_model
    model = CodeDiffusionGemma.from_pretrained(path, dtype=torch.float32)
    if mode != "none":
        quantize_model(model, mode)
from diffgemma_ls.engine.quantize import describe_model
footprint = describe_model(model).footprint_bytes
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, footprint, time.perf_counter() - started)
"""


def write_checkpoint(folder: Path, shards: int) -> int:
    """Random bf16 weights of the ``SCALED`` shape in ``shards`` files, with an index; returns bytes."""
    config = DiffusionGemmaConfig(
        text_config=DiffusionGemmaTextConfig(**SCALED),
        vision_config=minimal_vision_config(),
        canvas_length=256,
        boi_token_id=255_999,
        eoi_token_id=258_882,
        image_token_id=258_880,
    )
    loader = StreamingLoader(config, torch.bfloat16, "none")
    shapes = {
        name.replace("model.encoder.language_model.", "model.decoder.", 1): s
        for name, s in loader.weight_shapes().items()
    }
    total = sum(math.prod(s) * 2 for s in shapes.values())
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    weight_map, shard, size, index = {}, {}, 0, 1
    generator = torch.Generator().manual_seed(0)

    def flush() -> None:
        nonlocal shard, size, index
        name = f"model-{index:05d}-of-{shards:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size, index = {}, 0, index + 1

    for name, shape in shapes.items():
        shard[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        size += math.prod(shape) * 2
        if size >= total / shards and index < shards:
            flush()
    if shard:
        flush()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint (a few GB)")
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--modes", default="none,4bit")
    args = parser.parse_args(argv)
    if not (args.out / "model.safetensors.index.json").is_file():
        write_checkpoint(args.out, args.shards)
    from diffgemma_ls.engine.streaming import checkpoint_tensors

    tensors = checkpoint_tensors(args.out)
    shard_sizes: dict[Path, int] = {}
    for info in tensors.values():
        shard_sizes[info.shard] = shard_sizes.get(info.shard, 0) + info.nbytes
    print(
        f"checkpoint: {sum(shard_sizes.values()) / 2**30:.2f} GiB bf16 in {len(shard_sizes)} shards "
        f"(largest {max(shard_sizes.values()) / 2**30:.2f} GiB), "
        f"{sum(math.prod(i.shape) for i in tensors.values()) / 1e9:.2f}B parameters"
    )
    print("| loader | quantize | peak RSS GiB | model resident GiB | seconds |\n|---|---|--:|--:|--:|")
    for mode in args.modes.split(","):
        for kind in ("diffgemma-ls", "from_pretrained"):
            done = subprocess.run(
                [sys.executable, "-c", _LOAD, kind, mode, str(args.out)], capture_output=True, text=True
            )
            if done.returncode != 0:
                print(f"| {kind} | {mode} | failed: {done.stderr.strip().splitlines()[-1]} | | |")
                continue
            peak, footprint, seconds = (float(x) for x in done.stdout.split()[-3:])
            print(f"| {kind} | {mode} | {peak / 2**30:.2f} | {footprint / 2**30:.2f} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
