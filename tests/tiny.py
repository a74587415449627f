"""Tiny DiffusionGemma checkpoints built inside the tests: nothing downloads.

``build_tiny_model`` saves random weights (enough for shapes, loading, timing and protocol tests);
``train_constant_model`` trains one for a few seconds until it fills every canvas position with
``CONSTANT_TOKEN``, so tests that need visible text know what the model says (a run of ``x``) and
that it survives post-processing. ``build_stock_model`` saves one shaped like
``google/diffusiongemma-26B-A4B-it`` (the stock class and config fields, uniform noise, 8 experts
top-2, canvas 256, a Gemma-4-like tokenizer with a chat template and no FIM tokens unless asked,
its generation config), to check that the real checkpoint is served as it should be.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaTextConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from diffgemma_ls.engine.model import CodeDiffusionGemma, minimal_vision_config
from diffgemma_ls.prompt import (
    BOI,
    BOS,
    EOI,
    EOS,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    IMAGE,
    MASK,
    PAD,
    SPECIAL_TOKENS,
    build_prompt,
)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nimport sys\n\nprint(os.getcwd())\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
    "result = [x * 2 for x in values if x > 0]\n",
    "function f(a) { return a.map((x) => x + 1); }\n",
    'func main() {\n\tfmt.Println("hi")\n}\n',
    "fn main() { let v: Vec<u8> = vec![]; }\n",
    "héllo = '世界 🎉'\n",
]
# Fills every canvas position: learnable in seconds (position-independent), and visibly not noise.
CONSTANT_TOKEN = "x"


def build_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, mask_token=MASK
    )
    fast.save_pretrained(folder)
    return fast


def tiny_config(tokenizer: PreTrainedTokenizerFast, noise_kind: str = "mask", canvas_length: int = 16):
    ids = tokenizer.convert_tokens_to_ids
    text = DiffusionGemmaTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=32,
        num_experts=2,
        top_k_experts=1,
        moe_intermediate_size=64,
        max_position_embeddings=4096,
        sliding_window=128,
        pad_token_id=ids(PAD),
        eos_token_id=ids(EOS),
        bos_token_id=ids(BOS),
    )
    vision = minimal_vision_config()
    config = DiffusionGemmaConfig(
        text_config=text,
        vision_config=vision,
        canvas_length=canvas_length,
        boi_token_id=ids(BOI),
        eoi_token_id=ids(EOI),
        image_token_id=ids(IMAGE),
    )
    config.noise_kind = noise_kind
    config.mask_token_id = ids(MASK)
    config.code_languages = ["python"]
    return config


def build_tiny_model(folder: Path, noise_kind: str = "mask", seed: int = 0) -> Path:
    """Random weights, saved as a loadable checkpoint (safetensors, tokenizer, generation config)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(folder)
    model = CodeDiffusionGemma(tiny_config(tokenizer, noise_kind)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(folder)
    return folder


def train_constant_model(folder: Path, steps: int = 60) -> Path:
    """A mask-noise model trained until any prompt infills ``CONSTANT_TOKEN``s (seconds on CPU)."""
    build_tiny_model(folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model = CodeDiffusionGemma.from_pretrained(folder)
    model.train()
    torch.manual_seed(0)
    canvas_len = model.config.canvas_length
    target = torch.full((canvas_len,), tokenizer.convert_tokens_to_ids(CONSTANT_TOKEN))  # (C,)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        text = CORPUS[step % len(CORPUS)]
        cut = (step * 7) % len(text)
        prompt = torch.tensor([build_prompt(tokenizer, text[:cut], text[cut:]).ids])  # (1, P)
        t = torch.rand(1).clamp(min=0.2)
        masked = torch.rand(canvas_len) < t  # (C,)
        masked[step % canvas_len] = True
        canvas = torch.where(masked, model.config.mask_token_id, target).unsqueeze(0)  # (1, C)
        self_conditioning = None
        if step % 2:  # as at inference after the first step: condition on a previous prediction
            with torch.no_grad():
                self_conditioning = model(input_ids=prompt, decoder_input_ids=canvas).logits
        out = model(input_ids=prompt, decoder_input_ids=canvas, self_conditioning_logits=self_conditioning)
        loss = torch.nn.functional.cross_entropy(out.logits[0][masked], target[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    return folder


# Gemma 4's special tokens as google-deepmind/gemma lists them (pad 0, eos 1, bos 2, unk 3, <mask> 4),
# then the turn and thinking-channel markers of its chat template; ids after 4 are not Gemma's.
GEMMA_SPECIALS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<|turn>",
    "<turn|>",
    "<|channel>",
    "<channel|>",
)
GEMMA_MEDIA = ("<|image|>", "<|image>", "<image|>")
# The shape of Gemma 4's own template (google/gemma-4 chat_template.jinja): bos, one block per turn,
# the model's turn, and with thinking off (its default) an empty thought channel.
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<|turn>' + role + '\\n' + (message['content'] | trim) + '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}"
    "{%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}"
    "{%- endif -%}"
)


def build_stock_tokenizer(folder: Path, fim: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Gemma 4's special tokens and chat template; FIM tokens only if ``fim``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*GEMMA_SPECIALS, *GEMMA_MEDIA, *((FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE) if fim else ())]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        mask_token="<mask>",
        extra_special_tokens=specials[5:],
    )
    fast.chat_template = GEMMA_CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_stock_model(folder: Path, fim: bool = False, seed: int = 0) -> Path:
    """Random weights in the stock class, configured as the real checkpoint is (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_stock_tokenizer(folder, fim)
    ids = tokenizer.convert_tokens_to_ids
    text = DiffusionGemmaTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=64,
        num_global_key_value_heads=1,
        num_experts=8,
        top_k_experts=2,
        moe_intermediate_size=32,
        max_position_embeddings=4096,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = DiffusionGemmaConfig(
        text_config=text,
        vision_config=minimal_vision_config(),
        canvas_length=256,
        boi_token_id=ids("<|image>"),
        eoi_token_id=ids("<image|>"),
        image_token_id=ids("<|image|>"),
        eos_token_id=[1, ids("<turn|>")],
    )
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    gen = model.generation_config
    gen.max_denoising_steps, gen.max_new_tokens = 48, 256
    gen.t_min, gen.t_max, gen.stability_threshold, gen.confidence_threshold = 0.4, 0.8, 1, 0.005
    gen.sampler_config = EntropyBoundSamplerConfig(entropy_bound=0.1)
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = 0, 2, [1, ids("<turn|>")]
    model.save_pretrained(folder, max_shard_size="200KB")  # several shards, as the real one has
    return folder
