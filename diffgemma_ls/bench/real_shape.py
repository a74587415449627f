"""Speed and memory of DiffusionGemma 26B-A4B's real architecture, with random weights, through this engine.

``python -m diffgemma_ls.bench.real_shape`` (a CUDA machine, ~2-5 minutes) builds
``google/diffusiongemma-26B-A4B-it``'s text model from its published config (``PUBLISHED_TEXT_CONFIG``)
with random weights made directly on the GPU (nothing downloads; the vision tower is not built, as the
server never loads it), in bf16 and with ``--quantize 4bit`` (NF4, bitsandbytes' CUDA kernels), and
runs the project's engine on 256-token canvases at the checkpoint's own schedule: 48 steps at most,
entropy bound 0.1, temperature 0.8 -> 0.4, the chat prompt. It prints ms per denoising pass, canvas
tokens per second and peak GPU memory, next to the published figures: 1,000+ tokens/s on one H100
(Google), and vLLM's 16 tokens per step, 145.7 ms per 256-token canvas (FP8, H100; vLLM blog,
2026-06-10), which the ``fixed 16`` rows are comparable to.

Random weights measure speed and memory, not quality: a random model is never confident, so the
stable-and-confident stop never fires and every adaptive canvas takes all 48 steps (a trained model
typically stops after 12-16), and its text is noise.

``--size tiny --device cpu`` runs the same code on a CPU-sized model of the same shape (CI does).

Sources of ``PUBLISHED_TEXT_CONFIG``: the checkpoint's ``config.json`` as republished with
``RedHatAI/diffusiongemma-26B-A4B-it-FP8-dynamic`` and ``nvidia/diffusiongemma-26B-A4B-it-NVFP4``
(identical in every architecture field); canvas 256 and the schedule from
``google/diffusiongemma-26B-A4B-it``'s ``generation_config.json``. The full-attention layers have no
``v_proj`` (keys double as values), which transformers' ``DiffusionGemmaTextConfig`` builds itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DiffusionGemmaConfig, DiffusionGemmaTextConfig, PreTrainedTokenizerFast
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from diffgemma_ls.engine.infill import DecodeOptions, Engine
from diffgemma_ls.engine.loader import LoadedModel
from diffgemma_ls.engine.model import minimal_vision_config
from diffgemma_ls.engine.quantize import QuantMode, describe_model
from diffgemma_ls.engine.streaming import StreamingLoader

PUBLISHED_TEXT_CONFIG = {
    "vocab_size": 262_144,
    "hidden_size": 2816,
    "intermediate_size": 2112,
    "moe_intermediate_size": 704,
    "num_hidden_layers": 30,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "num_global_key_value_heads": 2,
    "head_dim": 256,
    "global_head_dim": 512,
    "num_experts": 128,
    "top_k_experts": 8,
    "sliding_window": 1024,
    "max_position_embeddings": 262_144,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5,
    "final_logit_softcapping": 30.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
# Same structure (5 sliding : 1 full, keys as values in full layers, top-8 of many experts), CPU-sized.
TINY_TEXT_CONFIG = {
    **PUBLISHED_TEXT_CONFIG,
    "vocab_size": 4096,
    "hidden_size": 64,
    "intermediate_size": 48,
    "moe_intermediate_size": 16,
    "num_hidden_layers": 6,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_global_key_value_heads": 1,
    "head_dim": 32,
    "global_head_dim": 64,
    "num_experts": 16,
    "sliding_window": 128,
    "max_position_embeddings": 4096,
    "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
}
END_OF_TURN_ID = 106  # <turn|> in Gemma 4's vocabulary; <|turn> is 105
SCHEDULE = {"max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8, "stability_threshold": 1}
PUBLISHED = "published: 1,000+ tok/s on one H100 (Google); vLLM FP8 on H100: 16 tok/step, 145.7 ms/canvas"


def model_config(size: str) -> DiffusionGemmaConfig:
    text = DiffusionGemmaTextConfig(**(PUBLISHED_TEXT_CONFIG if size == "full" else TINY_TEXT_CONFIG))
    return DiffusionGemmaConfig(
        text_config=text,
        vision_config=minimal_vision_config(),  # never built: StreamingLoader drops the tower
        canvas_length=256,
        boi_token_id=255_999 if size == "full" else 4093,
        eoi_token_id=258_882 if size == "full" else 4094,
        image_token_id=258_880 if size == "full" else 4095,
        eos_token_id=[1, END_OF_TURN_ID],
    )


def stand_in_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Gemma 4's special ids and the shape of its chat template over a word-level vocabulary.

    The real tokenizer is not here; prompt length and the chat layout are what timing depends on.
    """
    specials = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 105: "<|turn>", 106: "<turn|>"}
    specials |= {107: "<|channel>", 108: "<channel|>"}
    vocab = {specials.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    fast.add_special_tokens({"additional_special_tokens": [specials[i] for i in (4, 105, 106, 107, 108)]})
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}"
        "{{ '<|turn>' + m['role'] + '\\n' + m['content'] + '<turn|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|turn>model\\n<|channel>thought\\n<channel|>' }}{% endif %}"
    )
    return fast


@torch.no_grad()
def random_model(size: str, device: torch.device, quantize: QuantMode) -> LoadedModel:
    """Random N(0, 0.02) weights made on ``device`` one tensor at a time, quantized as they come."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loader = StreamingLoader(model_config(size), dtype, quantize)
    generator = torch.Generator(device=device).manual_seed(0)
    shapes = loader.weight_shapes()
    tensors = (
        (n, torch.randn(s, device=device, dtype=dtype, generator=generator) * 0.02) for n, s in shapes.items()
    )
    model = loader.load(tensors, device)
    gen = model.generation_config
    for key, value in SCHEDULE.items():
        setattr(gen, key, value)
    gen.sampler_config = EntropyBoundSamplerConfig(entropy_bound=0.1)
    gen.confidence_threshold, gen.pad_token_id, gen.eos_token_id = 0.005, 0, [1, END_OF_TURN_ID]
    tokenizer = stand_in_tokenizer(model.config.text_config.vocab_size)
    return LoadedModel(model, tokenizer, f"random {size}", "", device, quantize)


@dataclass
class Row:
    quantize: str
    decode: str
    requests: int
    passes_per_canvas: float
    ms_per_pass: float
    canvas_ms: float
    tokens_per_s: float
    prefill_ms: float
    prompt_tokens: int
    peak_memory_gb: float
    weights_gb: float


def _prompt_text(words: int) -> tuple[str, str]:
    """A prefix and suffix of code-like words, ~3/4 before the cursor (the server's 384 + 128 budget)."""
    source = Path(__file__).read_text().split()
    text = " ".join((source * (1 + words // len(source)))[:words])
    cut = len(text) * 3 // 4
    return text[:cut], text[cut:]


def measure(
    loaded: LoadedModel, quantize: str, requests: int, prompt_words: int, steps: int, device: torch.device
) -> list[Row]:
    engine = Engine(loaded, prompt_caches=0, warm_start=False, prompt_format="chat")
    engine.warm_up()
    prefix, suffix = _prompt_text(prompt_words)
    weights_gb = describe_model(loaded.model).footprint_bytes / 1e9
    rows = []
    for decode, options in (
        (f"adaptive {steps}", DecodeOptions(canvas_length=256, max_steps=steps)),
        (f"fixed {min(16, steps)}", DecodeOptions(mode="fixed", canvas_length=256, max_steps=min(16, steps))),
    ):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = [
            engine.infill(prefix, suffix + str(i), options, language="python") for i in range(requests)
        ]
        passes = sum(r.forward_passes for r in results)
        denoise = sum(r.denoise_ms for r in results)
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
        rows.append(
            Row(
                quantize=quantize,
                decode=decode,
                requests=requests,
                passes_per_canvas=passes / requests,
                ms_per_pass=denoise / passes,
                canvas_ms=denoise / requests,
                tokens_per_s=256 * requests / (denoise / 1000),
                prefill_ms=sum(r.prefill_ms for r in results) / requests,
                prompt_tokens=results[0].prompt_tokens,
                peak_memory_gb=peak,
                weights_gb=weights_gb,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--quantize", default="none,4bit", help="comma-separated: none (bf16 on CUDA), 8bit, 4bit"
    )
    parser.add_argument("--requests", type=int, default=3, help="requests per row (after one warm-up)")
    parser.add_argument("--prompt-words", type=int, default=500, help="prompt length, in words")
    parser.add_argument("--steps", type=int, default=48, help="adaptive step cap (the checkpoint's: 48)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "real_shape: no CUDA GPU here (use --size tiny --device cpu for the CPU-sized run)",
            file=sys.stderr,
        )
        return 1
    rows: list[Row] = []
    for quantize in args.quantize.split(","):
        started = time.perf_counter()
        loaded = random_model(args.size, device, quantize)  # type: ignore[arg-type]
        print(f"built {args.size} {quantize} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows += measure(loaded, quantize, args.requests, args.prompt_words, args.steps, device)
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"DiffusionGemma 26B-A4B architecture ({args.size}), random weights, {name}; {PUBLISHED}")
    header = (
        "| quantize | decode | passes/canvas | ms/pass | ms/canvas | canvas tok/s | prefill ms | peak GB |"
    )
    print(header)
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r.quantize} | {r.decode} | {r.passes_per_canvas:.1f} | {r.ms_per_pass:.1f} | "
            f"{r.canvas_ms:.0f} | {r.tokens_per_s:.0f} | {r.prefill_ms:.0f} ({r.prompt_tokens} tokens) | "
            f"{r.peak_memory_gb:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
