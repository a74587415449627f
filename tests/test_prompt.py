"""The FIM prompt: layout, and document text that spells a control token stays text."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from diffgemma_ls.prompt import EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, build_prompt
from tests import tiny


def test_suffix_first_then_prefix_then_the_middle_marker(tmp_path: Path) -> None:
    tok = tiny.build_tokenizer(tmp_path)
    prompt = build_prompt(tok, "def f(", "):\n")
    ids = tok.convert_tokens_to_ids
    assert prompt.ids[:2] == [tok.bos_token_id, ids(FIM_SUFFIX)]
    assert prompt.head[-1] == ids(FIM_PREFIX) and prompt.tail == [ids(FIM_MIDDLE)]
    assert tok.decode(prompt.prefix) == "def f("


def test_control_tokens_written_in_the_document_are_text(tmp_path: Path) -> None:
    """ML code writes "<eos>" and FIM markers in strings: they must not end or restructure the prompt."""
    tok: PreTrainedTokenizerFast = tiny.build_tokenizer(tmp_path)
    prefix = f'stop = "{EOS}"\nmarker = "{FIM_MIDDLE}'
    suffix = f'{FIM_PREFIX}"\n'
    prompt = build_prompt(tok, prefix, suffix)
    specials = {tok.convert_tokens_to_ids(t) for t in (EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX)}
    assert [i for i in prompt.ids if i in specials] == [
        tok.convert_tokens_to_ids(FIM_SUFFIX),
        tok.convert_tokens_to_ids(FIM_PREFIX),
        tok.convert_tokens_to_ids(FIM_MIDDLE),
    ]
    assert tok.decode(prompt.prefix) == prefix
