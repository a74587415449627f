"""Config of the default model: a small ``DiffusionGemmaForBlockDiffusion`` for Python code.

Same classes and loading path as the 26B checkpoint, scaled to train and serve on 2 CPU cores:

- encoder and decoder share all text weights (DiffusionGemma ties them), so the parameter count
  is one transformer stack plus the self-conditioning MLP;
- every layer but the last is ``sliding_attention`` with a window (1024) longer than any prompt
  the server sends, i.e. full attention with the local RoPE and a separate V projection; the last
  layer is forced to ``full_attention`` by the config (it uses ``global_head_dim``, partial
  "proportional" RoPE and K=V), so we keep exactly one of those;
- the MoE path is always built by the layer code. One expert with top-1 routing is a plain second
  MLP: several small experts cost a Python loop per expert on CPU (slower per token) for a quality
  gain that only shows at scales we cannot train here;
- the vision tower is the minimal one the config requires; the image token ids point at the
  placeholder special tokens so they can never collide with code tokens.

Custom attributes recorded on the config (they survive save/load): ``noise_kind`` (the sampler at
inference must match the training corruption), ``mask_token_id`` and ``code_languages``.
"""

from __future__ import annotations

from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig

from diffgemma_ls.engine.model import minimal_vision_config
from diffgemma_ls.prompt import BOI, EOI, IMAGE, MASK

# name -> (hidden, layers, heads, kv_heads, head_dim, mlp, moe_mlp)
SIZES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "s256x4": (256, 4, 4, 2, 64, 512, 256),
    "s320x3": (320, 3, 5, 1, 64, 768, 384),
    "s192x6": (192, 6, 3, 1, 64, 384, 192),
}
SLIDING_WINDOW = 1024


def build_config(tokenizer, size: str, canvas_length: int = 32) -> DiffusionGemmaConfig:
    hidden, layers, heads, kv, head_dim, mlp, moe = SIZES[size]
    text = DiffusionGemmaTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        global_head_dim=head_dim,
        max_position_embeddings=4096,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        num_experts=1,
        top_k_experts=1,
        moe_intermediate_size=moe,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    vision = minimal_vision_config()
    config = DiffusionGemmaConfig(
        text_config=text,
        vision_config=vision,
        boi_token_id=tokenizer.convert_tokens_to_ids(BOI),
        eoi_token_id=tokenizer.convert_tokens_to_ids(EOI),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        canvas_length=canvas_length,
    )
    config.noise_kind = "mask"
    config.mask_token_id = tokenizer.convert_tokens_to_ids(MASK)
    config.code_languages = ["python"]
    return config


def build_model(tokenizer, size: str) -> DiffusionGemmaForBlockDiffusion:
    return DiffusionGemmaForBlockDiffusion(build_config(tokenizer, size))
