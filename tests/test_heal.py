"""Token healing: a cursor inside a word has the prompt's last token rewritten, whole, by the canvas."""

from __future__ import annotations

import pytest
import torch

from diffgemma_ls.completion import plan, plan_fill
from diffgemma_ls.config import Settings
from diffgemma_ls.engine.infill import DecodeOptions, Engine
from diffgemma_ls.engine.loader import load_model
from diffgemma_ls.engine.sampling import StartsWith
from diffgemma_ls.prompt import build_prompt

# the cut of a held-out line tail the model got wrong without healing (``l(res) == res. res)``)
PREFIX = (
    "import numpy as np\n\n\ndef test():\n    res = np.cos(z)\n"
    "    assert_equal(res.imag, 0.0)\n    res = cospi(z)\n    assert_e"
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_model(None, device="cpu"))


def test_starts_with_keeps_only_allowed_first_tokens_while_active() -> None:
    scores = torch.randn(2, 4, 10)  # (batch, canvas, vocab)
    active = [True]
    processor = StartsWith([3, 7], active=lambda: active[0])
    out = processor(torch.zeros(2, 1), scores, 5)
    best = [3 if scores[r, 0, 3] > scores[r, 0, 7] else 7 for r in (0, 1)]
    assert out[:, 0].argmax(dim=-1).tolist() == best
    assert torch.equal(out[:, 0, [3, 7]], scores[:, 0, [3, 7]]) and torch.equal(out[:, 1:], scores[:, 1:])
    active[0] = False  # a later canvas of a block: free
    assert torch.equal(processor(torch.zeros(2, 1), scores, 5), scores)


@pytest.mark.parametrize(
    ("prefix", "suffix", "healed"),
    [
        (PREFIX, "\n", True),
        (PREFIX, "", True),
        (PREFIX, "qual(x)\n", False),  # inside an identifier: an edit, not a completion
        (PREFIX + "(", "\n", False),  # after punctuation the last token is whole
        (PREFIX + " ", "\n", False),
        ("", "\n", False),
    ],
)
def test_heal_piece_is_the_last_token_of_a_word_cut_at_the_cursor(
    engine: Engine, prefix: str, suffix: str, healed: bool
) -> None:
    piece = engine._heal_piece(prefix, suffix)
    assert bool(piece) == healed
    if healed:  # the prompt's own last prefix token, whatever the tokenizer made of the word
        prompt = build_prompt(engine.tokenizer, prefix, suffix)
        assert engine.tokenizer.decode(prompt.prefix[-1:]) == piece and prefix.endswith(piece)


def test_a_healed_canvas_starts_with_the_piece_and_the_answer_after_it(engine: Engine) -> None:
    piece = engine._heal_piece(PREFIX, "\n")
    healed = engine.infill(PREFIX, "\n", DecodeOptions(heal=True, first_line_only=True))
    first = engine.tokenizer.decode(healed.token_ids[:1])
    assert first.startswith(piece) and len(first) > len(piece)  # the word written whole
    written = engine.tokenizer.decode(healed.token_ids)
    assert healed.text == written[len(piece) :]  # from the cursor on: the editor has the piece
    plain = engine.infill(PREFIX, "\n", DecodeOptions(first_line_only=True))
    assert healed.prompt_tokens == plain.prompt_tokens - 1


def test_a_healed_request_leaves_no_canvas_to_warm_start_from(engine: Engine) -> None:
    """The healed canvas begins before the cursor; a seed taken from it would be shifted by the piece."""
    engine.infill(PREFIX, "\n", DecodeOptions(heal=True), cache_key="healed")
    assert not engine.has_draft("healed") and "healed" in engine.cache_keys()
    engine.infill(PREFIX, "\n", DecodeOptions(), cache_key="plain")
    assert engine.has_draft("plain")
    engine.forget("healed")
    engine.forget("plain")


def test_every_request_heals(engine: Engine) -> None:
    """As you type too, unless a warm start applies (``tests/test_server.py``: it takes precedence)."""
    text = PREFIX + "\n"
    asked = plan(text, len(PREFIX), "python", Settings(), engine, invoked=True)
    typing = plan(text, len(PREFIX), "python", Settings(), engine)
    assert asked is not None and typing is not None
    assert asked.options.heal and typing.options.heal
    assert plan_fill(text, len(PREFIX), len(PREFIX), "python", Settings(), engine).options.heal
