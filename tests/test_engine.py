"""The engine on real forward passes of tiny DiffusionGemma checkpoints."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from diffgemma_ls.engine.infill import Cancelled, DecodeOptions, Engine
from diffgemma_ls.engine.loader import ModelLoadError, load_model
from diffgemma_ls.engine.model import NEVER, CodeDiffusionGemma
from diffgemma_ls.engine.sampling import CodeSampler, CodeSamplerConfig, token_entropy
from diffgemma_ls.prompt import build_prompt, encode_text
from tests import tiny

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def engine(random_model_dir: Path) -> Engine:
    return Engine(load_model(str(random_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def constant_engine(constant_model_dir: Path) -> Engine:
    return Engine(load_model(str(constant_model_dir), device="cpu"))


def test_constant_model_fills_the_canvas_with_its_token(constant_engine: Engine) -> None:
    result = constant_engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=16, max_steps=8))
    assert result.text == tiny.CONSTANT_TOKEN * 16
    assert 1 <= result.forward_passes <= 8
    assert result.tokens_per_forward == pytest.approx(16 / result.forward_passes)
    assert result.prefill_ms > 0 and result.denoise_ms > 0
    assert result.prompt_tokens > 5


def test_block_autoregressive_canvases_continue(constant_engine: Engine) -> None:
    result = constant_engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=8, max_canvases=3))
    assert result.text == tiny.CONSTANT_TOKEN * 24


def test_candidates_are_one_batched_run_with_distinct_starts(constant_engine: Engine) -> None:
    """Row 0 is the plain answer; greedy rows would all equal it, so the others start differently."""
    single = constant_engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=16, max_steps=8))
    batch = constant_engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=16, max_steps=8, candidates=3))
    assert batch.text == single.text
    assert len(batch.alternatives) == 2
    assert batch.text not in batch.alternatives and batch.alternatives[0] != batch.alternatives[1]
    assert all(alt.endswith(tiny.CONSTANT_TOKEN * 8) for alt in batch.alternatives)  # then decoded as usual
    assert batch.forward_passes <= 8  # one run: passes are counted per step, not per row


def test_fixed_mode_takes_exactly_the_steps(engine: Engine) -> None:
    for steps in (1, 3, 5):
        result = engine.infill(PREFIX, SUFFIX, DecodeOptions(mode="fixed", canvas_length=16, max_steps=steps))
        assert result.forward_passes == steps


def test_token_entropy_is_the_categorical_entropy() -> None:
    logits = torch.randn(2, 8, 64) * 4
    logits[0, 0] = NEVER  # the model's never-predicted tokens and committed positions
    logits[0, 0, 3] = 0.0
    logits[1, 1, :10] = -torch.inf  # a logits processor's ban
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(token_entropy(logits), expected, atol=1e-5)
    assert token_entropy(logits)[0, 0] == 0.0


def _unsure_of(token: int, vocab: int = 16) -> torch.Tensor:
    """Logits that prefer ``token`` with ~1.5 nats of doubt."""
    logits = torch.zeros(vocab)
    logits[token] = 2.0
    return logits


def test_neighbours_do_not_commit_the_same_unsure_token_in_one_pass() -> None:
    sampler = CodeSampler(
        CodeSamplerConfig(entropy_bound=100.0),
        canvas_length=4,
        vocab_size=16,
        max_denoising_steps=4,
        mask_token_id=15,
        pad_token_id=0,
        eos_token_ids=[1],
    )
    canvas = torch.full((1, 4), 15)
    logits = torch.stack([_unsure_of(5), _unsure_of(7), _unsure_of(7), _unsure_of(1)])[None]
    logits[0, 1, 7] += 0.1  # position 1 is the surer of the two 7s
    first = sampler.accept_canvas(canvas, canvas, logits, cur_step=4)
    assert first[0].tolist() == [5, 7, 15, 1] and sampler.committed[0].tolist() == [True, True, False, True]
    sure = torch.full((1, 4, 16), -30.0)
    sure[0, :, 7] = 0.0  # sure of 7 everywhere: a real run of 7s
    sampler.committed = None
    assert sampler.accept_canvas(canvas, canvas, sure, cur_step=4)[0].tolist() == [7, 7, 7, 7]
    sampler.committed = None  # the last step decides everything left, repeats included
    assert sampler.accept_canvas(canvas, canvas, logits, cur_step=1)[0].tolist() == [5, 7, 7, 1]


def test_sequential_mode_commits_one_token_per_pass(constant_engine: Engine) -> None:
    result = constant_engine.infill(PREFIX, SUFFIX, DecodeOptions(mode="sequential", canvas_length=8))
    assert result.forward_passes == 8
    assert result.text == tiny.CONSTANT_TOKEN * 8


def test_adaptive_decodes_in_fewer_passes_than_sequential(constant_engine: Engine) -> None:
    adaptive = constant_engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=16, max_steps=16))
    sequential = constant_engine.infill(PREFIX, SUFFIX, DecodeOptions(mode="sequential", canvas_length=16))
    assert adaptive.text == sequential.text
    assert adaptive.forward_passes < sequential.forward_passes


@pytest.mark.parametrize("engine_fixture", ["engine", "constant_engine"])
def test_skipping_the_confidence_rule_changes_no_decode(
    engine_fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under mask noise, acceptance commits what stable-and-confident would stop (``_acceptance_covers``)."""
    engine: Engine = request.getfixturevalue(engine_fixture)
    requests = [(PREFIX, SUFFIX, steps) for steps in (2, 4, 16)] + [("x = ", "\n", 16), ("", "", 8)]

    def decode_all() -> list[tuple[str, int]]:
        results = []
        for prefix, suffix, steps in requests:
            options = DecodeOptions(canvas_length=16, max_steps=steps, entropy_bound=10.0)
            results.append(engine.infill(prefix, suffix, options))
        return [(r.text, r.forward_passes) for r in results]

    skipped = decode_all()
    monkeypatch.setattr(CodeDiffusionGemma, "_acceptance_covers", staticmethod(lambda *_: False))
    assert decode_all() == skipped


@pytest.mark.parametrize("engine_fixture", ["engine", "constant_engine"])
def test_skipping_the_multinomial_draw_changes_no_decode(
    engine_fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CodeDiffusionGemma``'s step without the draw decodes as transformers' own step does."""
    engine: Engine = request.getfixturevalue(engine_fixture)
    options = [
        DecodeOptions(canvas_length=16, max_steps=4),
        DecodeOptions(canvas_length=16, max_steps=16, entropy_bound=10.0),
        DecodeOptions(mode="fixed", canvas_length=16, max_steps=3),
        DecodeOptions(mode="sequential", canvas_length=8),
        DecodeOptions(canvas_length=16, max_steps=4, candidates=3),
        DecodeOptions(canvas_length=16, max_steps=3, first_line_only=True),
        DecodeOptions(canvas_length=8, max_steps=4, max_canvases=2),
    ]

    def decode_all() -> list[tuple[str, list[str], int]]:
        results = [engine.infill(PREFIX, SUFFIX, option) for option in options]
        return [(r.text, r.alternatives, r.forward_passes) for r in results]

    greedy = decode_all()
    upstream = DiffusionGemmaForBlockDiffusion._denoising_step
    monkeypatch.setattr(CodeDiffusionGemma, "_denoising_step", upstream)
    assert decode_all() == greedy


@pytest.mark.parametrize("model_fixture", ["random_model_dir", "uniform_model_dir"])
def test_same_request_same_completion(model_fixture: str, request: pytest.FixtureRequest) -> None:
    engine = Engine(load_model(str(request.getfixturevalue(model_fixture)), device="cpu"))
    first = engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=16, max_steps=4))
    engine.infill("other", "request", DecodeOptions(canvas_length=16, max_steps=4))
    again = engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=16, max_steps=4))
    assert first.token_ids == again.token_ids


def test_canvas_length_per_request_leaves_the_model_config_alone(engine: Engine) -> None:
    before = engine.model.config.canvas_length
    result = engine.infill(PREFIX, SUFFIX, DecodeOptions(mode="sequential", canvas_length=before + 8))
    assert engine.model.config.canvas_length == before
    assert result.forward_passes <= before + 8


def test_cancellation_stops_between_steps(engine: Engine) -> None:
    polls = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) > 2  # the check before starting, then after each pass

    with pytest.raises(Cancelled):
        engine.infill(
            PREFIX, SUFFIX, DecodeOptions(mode="fixed", canvas_length=16, max_steps=10), cancelled=cancelled
        )
    assert len(polls) == 3


def test_spent_budget_returns_the_current_draft(constant_engine: Engine) -> None:
    result = constant_engine.infill(
        PREFIX, SUFFIX, DecodeOptions(mode="sequential", canvas_length=16), deadline=time.monotonic()
    )
    assert result.budget_exhausted
    assert result.forward_passes == 1
    assert result.text == tiny.CONSTANT_TOKEN * 16  # the whole draft, though one token was committed


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantized_model_loads_and_completes(random_model_dir: Path, mode: str) -> None:
    engine = Engine(load_model(str(random_model_dir), device="cpu", quantize=mode))
    assert engine.loaded.quantization == mode
    result = engine.infill(PREFIX, SUFFIX, DecodeOptions(canvas_length=16, max_steps=4))
    assert 1 <= result.forward_passes <= 4


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a folder"):
        load_model(str(tmp_path / "nope"), device="cpu")


def test_uncached_hub_id_is_not_downloaded() -> None:
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("google/diffusiongemma-26B-A4B-it", device="cpu")


def test_corrupt_weights_are_a_clear_error(random_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(random_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        load_model(str(broken), device="cpu")


def test_wrong_architecture_is_a_clear_error(random_model_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "gpt2"
    shutil.copytree(random_model_dir, other)
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(ModelLoadError, match="'gpt2' model, not DiffusionGemma"):
        load_model(str(other), device="cpu")


def test_pickle_only_checkpoint_is_refused(random_model_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(random_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"no \.safetensors"):
        load_model(str(pickled), device="cpu")


def test_prompt_cache_reuses_the_encoder_and_answers_the_same(random_model_dir: Path) -> None:
    options = DecodeOptions(canvas_length=16, max_steps=4)
    cold = Engine(load_model(str(random_model_dir), device="cpu"), prompt_caches=0)
    warm = Engine(load_model(str(random_model_dir), device="cpu"), prompt_caches=2, warm_start=False)
    prefix = PREFIX + "return a"
    first = warm.infill(PREFIX, SUFFIX, options, cache_key="doc")
    assert first.reused_prompt_tokens == 0
    typed = warm.infill(prefix, SUFFIX, options, cache_key="doc")  # the user typed at the cursor
    fresh = cold.infill(prefix, SUFFIX, options, cache_key="doc")
    assert typed.reused_prompt_tokens >= len(SUFFIX) // 4  # everything up to the cursor was kept
    assert fresh.reused_prompt_tokens == 0
    assert typed.token_ids == fresh.token_ids
    for key in ("a", "b", "c"):
        warm.infill(PREFIX, SUFFIX, options, cache_key=key)
    assert len(warm.cache_keys()) == 2  # bounded, least recently used out
    warm.forget("c")
    assert warm.cache_keys() == ["b"]


SEQUENTIAL = DecodeOptions(mode="sequential", canvas_length=16)  # one pass per open position


def test_warm_start_seeds_the_rest_of_the_previous_canvas(constant_model_dir: Path) -> None:
    """Typing the first token of the last answer leaves 15 of 16 tokens valid: one pass decides the rest."""
    warm = Engine(load_model(str(constant_model_dir), device="cpu"))
    first = warm.infill(PREFIX, SUFFIX, SEQUENTIAL, cache_key="doc")
    assert first.forward_passes == 16 and first.seeded_tokens == 0
    typed = warm.infill(PREFIX + tiny.CONSTANT_TOKEN, SUFFIX, SEQUENTIAL, cache_key="doc")
    cold = warm.infill(PREFIX + tiny.CONSTANT_TOKEN, SUFFIX, SEQUENTIAL)
    assert typed.seeded_tokens == 15 and typed.forward_passes == 1
    assert typed.text == cold.text and cold.forward_passes == 16
    assert warm.totals["warmStarts"] == 1 and warm.totals["seededTokens"] == 15
    other = warm.infill(PREFIX + "y", SUFFIX, SEQUENTIAL, cache_key="doc")  # not what the canvas said
    assert other.seeded_tokens == 0 and other.forward_passes == 16


def test_a_cancelled_request_leaves_its_committed_tokens_to_the_next(constant_model_dir: Path) -> None:
    warm = Engine(load_model(str(constant_model_dir), device="cpu"))
    steps = iter(range(100))
    with pytest.raises(Cancelled):  # cancelled after its third pass
        warm.infill(PREFIX, SUFFIX, SEQUENTIAL, cancelled=lambda: next(steps) >= 3, cache_key="doc")
    again = warm.infill(PREFIX, SUFFIX, SEQUENTIAL, cache_key="doc")
    assert again.seeded_tokens == 3 and again.forward_passes == 13
    assert again.text == tiny.CONSTANT_TOKEN * 16
    assert warm.totals["forwardPasses"] == 3 + 13  # the cancelled request's work is counted too
    warm.forget("doc")
    assert warm.infill(PREFIX, SUFFIX, SEQUENTIAL, cache_key="doc").seeded_tokens == 0


def test_warm_start_off_starts_from_noise(constant_model_dir: Path) -> None:
    cold = Engine(load_model(str(constant_model_dir), device="cpu"), warm_start=False)
    cold.infill(PREFIX, SUFFIX, SEQUENTIAL, cache_key="doc")
    typed = cold.infill(PREFIX + tiny.CONSTANT_TOKEN, SUFFIX, SEQUENTIAL, cache_key="doc")
    assert typed.seeded_tokens == 0 and typed.forward_passes == 16


def test_warm_start_with_transformers_own_sampler(uniform_model_dir: Path) -> None:
    """Uniform noise (the real checkpoint's): the seed replaces random tokens in the first canvas."""
    engine = Engine(load_model(str(uniform_model_dir), device="cpu"))
    options = DecodeOptions(canvas_length=16, max_steps=4)
    first = engine.infill(PREFIX, SUFFIX, options, cache_key="doc")
    again = engine.infill(PREFIX, SUFFIX, options, cache_key="doc")
    assert first.seeded_tokens == 0 and again.seeded_tokens > 0
    assert again.forward_passes >= 1 and isinstance(again.text, str)


def test_as_you_type_requests_take_fewer_passes_than_explicit_ones(engine: Engine) -> None:
    """``typing_max_steps`` caps an as-you-type request's passes; an explicit one gets ``max_steps``."""
    from diffgemma_ls.completion import plan, run
    from diffgemma_ls.config import Settings

    settings = Settings(max_steps=16, typing_max_steps=3, canvas_length=16)
    text = PREFIX + "\n"
    typing = plan(text, len(PREFIX), "python", settings, engine)
    asked = plan(text, len(PREFIX), "python", settings, engine, invoked=True)
    assert typing is not None and asked is not None
    assert (typing.options.max_steps, asked.options.max_steps) == (3, 16)
    result = run(engine, typing).result
    assert result is not None and 1 <= result.forward_passes <= 3 * typing.options.max_canvases  # per canvas


def _half_masked_log_likelihood(
    engine: Engine, prefix: str, suffix: str, text: str, canvas_length: int
) -> float:
    """The rival score from first principles: a fresh prefill, one batch-1 pass per half, the mean."""
    model, tok = engine.model, engine.tokenizer
    prompt = build_prompt(tok, prefix, suffix).ids
    ids = [*encode_text(tok, text.rstrip()), engine.eos_id]
    picked = []
    for parity in (0, 1):
        canvas = torch.full((1, canvas_length), model.mask_token_id)
        for i, token in enumerate(ids):
            if i % 2 != parity:
                canvas[0, i] = token
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        model.model.encoder(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
        with torch.no_grad():
            logits = model(
                cache=cache,
                decoder_input_ids=canvas,
                decoder_position_ids=len(prompt) + torch.arange(canvas_length)[None],
            ).logits
        log_p = torch.log_softmax(logits.float(), dim=-1)
        picked += [float(log_p[0, i, t]) for i, t in enumerate(ids) if i % 2 == parity]
    return sum(picked) / len(picked)


@pytest.mark.parametrize("candidates", [1, 3])
def test_a_rival_wins_only_when_the_model_finds_it_more_likely(engine: Engine, candidates: int) -> None:
    options = DecodeOptions(canvas_length=16, max_steps=4, candidates=candidates)
    own = engine.infill(PREFIX, SUFFIX, options)
    rivals = ["return a + b", "x", "print(a, b) if a else b"]
    result = engine.infill(PREFIX, SUFFIX, options, rivals=rivals)
    assert result.forward_passes == own.forward_passes + 1  # one batched pass scores them all
    scores = [_half_masked_log_likelihood(engine, PREFIX, SUFFIX, t, 16) for t in [own.text, *rivals]]
    best = max(range(len(scores)), key=scores.__getitem__)
    assert result.copied == (best > 0)
    if best > 0:
        assert result.text == rivals[best - 1] and result.alternatives == [own.text, *own.alternatives]
    else:
        assert result.text == own.text and result.alternatives == own.alternatives


def test_where_copies_win_the_likeliest_rival_is_the_answer(engine: Engine) -> None:
    """The model's text leaves the contest: one rival wins with no pass, of two the likelier does."""
    options = DecodeOptions(canvas_length=16, max_steps=4)
    own = engine.infill(PREFIX, SUFFIX, options)
    one = engine.infill(PREFIX, SUFFIX, options, rivals=["x"], copies_win=True)
    assert (one.text, one.copied, one.forward_passes) == ("x", True, own.forward_passes)
    assert one.alternatives == [own.text, *own.alternatives]
    rivals = ["return a + b", "print(a, b) if a else b"]
    two = engine.infill(PREFIX, SUFFIX, options, rivals=rivals, copies_win=True)
    scores = [_half_masked_log_likelihood(engine, PREFIX, SUFFIX, t, 16) for t in rivals]
    assert two.text == rivals[scores.index(max(scores))] and two.copied
    assert two.forward_passes == own.forward_passes + 1


def test_a_rival_equal_to_the_answer_keeps_the_answer(engine: Engine) -> None:
    options = DecodeOptions(canvas_length=16, max_steps=4)
    own = engine.infill(PREFIX, SUFFIX, options)
    result = engine.infill(PREFIX, SUFFIX, options, rivals=[own.text])
    assert (result.text, result.copied, result.forward_passes) == (own.text, False, own.forward_passes)


def test_an_answer_spanning_canvases_has_no_rival(constant_engine: Engine) -> None:
    """16 constant tokens fill the canvas, no room for EOS: nothing to compare, no extra pass."""
    options = DecodeOptions(canvas_length=16, max_steps=8)
    own = constant_engine.infill(PREFIX, SUFFIX, options)
    result = constant_engine.infill(PREFIX, SUFFIX, options, rivals=["x"])
    assert (result.text, result.copied, result.forward_passes) == (own.text, False, own.forward_passes)


def test_line_and_block_requests_have_the_nearest_line_as_rival(engine: Engine) -> None:
    from diffgemma_ls.completion import plan, plan_fill
    from diffgemma_ls.config import Settings

    text = "class P:\n    def __init__(self, x, y):\n        self.x = x\n        self.\n"
    at = text.index("self.\n") + len("self.")
    request = plan(text, at, "python", Settings(), engine, invoked=True)
    assert request is not None and request.rivals == ("x = x",) and request.copies_win
    blank = text.replace("        self.\n", "        \n")
    at_blank = blank.index("        \n") + len("        ")
    on_blank = plan(blank, at_blank, "python", Settings(), engine, invoked=True)
    assert on_blank is not None and on_blank.rivals and not on_blank.copies_win  # nothing typed
    off = plan(text, at, "python", Settings(), engine, invoked=True, copy_rival=False)
    assert off is not None and off.rivals == ()
    typing = plan(text, at, "python", Settings(), engine)  # as you type: no pass to spare
    assert typing is not None and typing.rivals == ()
    assert plan_fill(text, at, at, "python", Settings(), engine).rivals == ()  # a body, not a line
