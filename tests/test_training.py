"""Training examples and the objective shared by ``model/train.py`` and ``diffgemma-ls tune``."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from diffgemma_ls.prompt import FILE_SEP, build_prompt
from diffgemma_ls.training.examples import InfillSampler, make_batch
from diffgemma_ls.training.objective import LossWeights, train_step

FILES = [
    (
        f"pkg/mod_{i}.py",
        "".join(f"def fetch_{i}_{j}(session, key):\n    return session.get(key, {j})\n\n" for j in range(30)),
    )
    for i in range(4)
] + [("other/tool.py", "import sys\n\nprint(sys.argv)\n" * 20)]


def sampler(tok, context_prob: float) -> InfillSampler:
    return InfillSampler.of_files(FILES, tok, context_prob)


def test_examples_are_the_servers_prompts_and_real_cuts(random_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    rng = random.Random(0)
    plain = sampler(tok, 0.0)
    for kind in ("line_tail", "line", "block", "span"):
        example = plain.sample(rng, kind=kind)
        assert (
            example.prompt == build_prompt(tok, example.prefix, example.suffix).ids and not example.snippets
        )
        document = example.prefix + tok.decode(example.middle) + example.suffix
        assert any(document in text for _, text in FILES)


def test_context_comes_from_the_same_package_never_the_file_itself(random_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    rng = random.Random(1)
    with_context = sampler(tok, 1.0)
    seen = 0
    for _ in range(40):
        example = with_context.sample(rng)
        if not example.snippets:
            continue
        seen += 1
        assert example.prompt[1] == tok.convert_tokens_to_ids(FILE_SEP)
        assert (
            example.prompt == build_prompt(tok, example.prefix, example.suffix, snippets=example.snippets).ids
        )
        assert all(s.path.startswith("pkg/") for s in example.snippets)
        own = next(p for p, t in FILES if example.prefix in t)
        assert all(s.path != own for s in example.snippets)
        assert sum(len(s.text) for s in example.snippets) <= with_context.max_context_chars
    assert seen >= 20


def test_a_few_steps_on_one_batch_lower_its_loss(random_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(random_model_dir, dtype=torch.float32).train()
    rng = random.Random(2)
    batch = make_batch(
        [sampler(tok, 0.5).sample(rng) for _ in range(4)], 16, rng, tok.pad_token_id, tok.eos_token_id
    )
    assert batch.canvas.shape == (4, 16) and batch.enc_ids.shape[0] == 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [
        train_step(model, opt, batch, torch.Generator().manual_seed(0), LossWeights()) for _ in range(15)
    ]
    assert losses[-1]["loss"] < losses[0]["loss"] and all(step["enc_loss"] > 0 for step in losses)
