"""Train the byte-level BPE tokenizer of the default model on the training corpus.

Byte-level so any text (tabs, unicode, odd bytes) round-trips; the special tokens of
``diffgemma_ls.prompt.SPECIAL_TOKENS`` come first, at ids 0..10, because the model config and the
prompt builder rely on pad=0, eos=1, bos=2, mask=3. The vocab size trades compression (tokens per
byte: shorter sequences, cheaper training and inference) against embedding parameters, which in a
~5M-parameter model are a large share: ``--vocab`` can be given several times to measure.

    python -m model.tokenizer --vocab 4096 --vocab 6144 --vocab 8192   # measure, pick
    python -m model.tokenizer --vocab 6144 --save model/work/tokenizer  # also count corpus tokens
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from diffgemma_ls.prompt import BOS, EOS, MASK, PAD, SPECIAL_TOKENS

CORPUS = Path(__file__).resolve().parent / "work" / "corpus"
ROUND_TRIP = "def f(x):\n\tif x:\n\t\treturn 'héllo → 世界 🐍'\r\n    return None  # ∑\n"


def read_texts(split: str) -> list[str]:
    with open(CORPUS / f"{split}.jsonl") as fh:
        return [json.loads(line)["text"] for line in fh]


def train(texts: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The Hugging Face wrapper the server loads with ``AutoTokenizer.from_pretrained``."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        mask_token=MASK,
        additional_special_tokens=list(SPECIAL_TOKENS[4:]),
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def bytes_per_token(tok: Tokenizer, texts: list[str]) -> float:
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return sum(len(t.encode()) for t in texts) / n_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, action="append", required=True)
    ap.add_argument("--sample-mb", type=float, default=40.0, help="training text sampled from the corpus")
    ap.add_argument("--save", type=Path, help="save the (single) tokenizer here and count corpus tokens")
    args = ap.parse_args()

    rng = random.Random(0)
    texts = read_texts("train")
    rng.shuffle(texts)
    sample, size = [], 0
    for t in texts:
        if size > args.sample_mb * 1e6:
            break
        sample.append(t)
        size += len(t)
    val = read_texts("val")
    for vocab in args.vocab:
        tok = train(sample, vocab)
        print(json.dumps({"vocab": vocab, "val_bytes_per_token": round(bytes_per_token(tok, val), 3)}))
    if args.save:
        hf = wrap(tok)
        hf.save_pretrained(args.save)
        loaded = AutoTokenizer.from_pretrained(args.save)
        assert loaded.decode(loaded.encode(ROUND_TRIP, add_special_tokens=False)) == ROUND_TRIP
        assert [loaded.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
        ids = (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id, loaded.mask_token_id)
        assert ids == (0, 1, 2, 3)
        counts = {
            split: sum(len(e.ids) for e in tok.encode_batch(read_texts(split), add_special_tokens=False))
            for split in ("train", "val")
        }
        (args.save / "corpus_tokens.json").write_text(json.dumps(counts))
        print(json.dumps({"corpus_tokens": counts}))


if __name__ == "__main__":
    main()
