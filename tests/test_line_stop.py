"""Line mode ends a canvas once its first line is decoded (``LineStop``), on rules and real passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffgemma_ls.engine.infill import DecodeOptions, Engine, _StepMonitor
from diffgemma_ls.engine.loader import load_model
from diffgemma_ls.engine.sampling import CodeSamplerConfig, LineStop
from diffgemma_ls.postprocess.single_line import keep_first_line
from diffgemma_ls.prompt import build_prompt
from tests import tiny

# token ids of a made-up vocabulary: 1 "x", 2 "\n", 3 "\n\n", 4 "\n    y", 5 "z\n"
TEXTS = {2: "\n", 3: "\n\n", 4: "\n    y", 5: "z\n"}


@pytest.mark.parametrize(
    ("tokens", "committed", "skip_blank_start", "end"),
    [
        ([1, 2, 1], [True, True, False], False, 1),
        ([1, 5, 1], [True, True, True], False, 1),  # a token that ends the line after text
        ([1, 2, 1], [False, True, True], False, None),  # the run from the cursor is not complete
        ([1, 1, 1], [True, True, True], False, None),  # no line break yet
        ([3, 1, 2], [True, True, True], True, 2),  # blank start skipped, as post-processing does
        ([3, 1, 2], [True, True, True], False, 0),
        ([4, 2], [True, True], True, 1),  # "\n    y": the break is leading, the text starts the line
        ([2, 3, 2], [True, True, True], True, None),  # only blank lines so far
    ],
)
def test_line_end(tokens: list[int], committed: list[bool], skip_blank_start: bool, end: int | None) -> None:
    assert LineStop(TEXTS, skip_blank_start).line_end(tokens, committed) == end


@pytest.mark.parametrize("skip_blank_start", [False, True])
def test_line_end_agrees_with_post_processing(skip_blank_start: bool) -> None:
    """Whatever follows the token that ends the line, the first line post-processing keeps is the same."""
    texts = {0: "a", 1: "x", **TEXTS}
    ctx = type("Ctx", (), {"mode": "line", "line_prefix": "    " if skip_blank_start else "f("})()
    stop = LineStop(TEXTS, skip_blank_start)
    for tokens in ([3, 0, 5, 0], [0, 4, 2, 1], [2, 2, 0, 2], [4, 0, 3], [1, 5]):
        end = stop.line_end(tokens, [True] * len(tokens))
        assert end is not None
        full = "".join(texts[t] for t in tokens)
        cut = "".join(texts[t] for t in tokens[: end + 1]) + "q\nq"
        assert keep_first_line(full, ctx) == keep_first_line(cut, ctx)


def _denoise(engine: Engine, line_stop: LineStop | None) -> tuple[list[int], int]:
    """A real generate() on a canvas seeded with "x\\n": the sampler's last canvas and the passes."""
    model, tok = engine._view(16), engine.tokenizer  # a 16-token canvas
    x, newline = tok.encode(tiny.CONSTANT_TOKEN)[0], tok.encode("\n")[0]
    canvas = torch.full((1, 16), model.config.mask_token_id)  # (1, C)
    canvas[0, :2] = torch.tensor([x, newline])
    monitor = _StepMonitor(deadline=None, cancelled=None)  # counts passes, as for any request
    model.generate(
        torch.tensor([build_prompt(tok, "def f():\n    ", "\n").ids]),
        decoder_input_ids=canvas,
        max_new_tokens=16,
        max_denoising_steps=16,
        sampler_config=CodeSamplerConfig(entropy_bound=0.1, mode="sequential", line_stop=line_stop),
        streamer=monitor,
    )
    return model.last_sampler.canvas[0].tolist(), monitor.forward_passes


def test_a_decoded_first_line_ends_the_canvas(constant_model_dir: Path) -> None:
    engine = Engine(load_model(str(constant_model_dir), device="cpu"))
    x, newline = (engine.tokenizer.encode(text)[0] for text in (tiny.CONSTANT_TOKEN, "\n"))
    pad = engine.pad_id
    stopped, stopped_passes = _denoise(engine, LineStop({newline: "\n"}, skip_blank_start=False))
    assert stopped == [x, newline] + [pad] * 14 and stopped_passes == 1
    assert engine._view(16).last_sampler.line_cut == [2]
    full, full_passes = _denoise(engine, None)
    assert full == [x, newline] + [x] * 14 and full_passes == 14  # one pass per open position


def test_line_mode_keeps_the_first_line_in_fewer_passes() -> None:
    """On the shipped model: line stop changes no first line and never costs a pass."""
    engine = Engine(load_model(None, device="cpu"))
    source = (Path(__file__).resolve().parents[1] / "diffgemma_ls" / "prompt.py").read_text()
    saved = 0
    for cut in range(200, len(source), len(source) // 12):
        prefix, rest = source[:cut], source[cut:]
        suffix = rest[rest.find("\n") :]
        ctx = type("Ctx", (), {"mode": "line", "line_prefix": prefix.rpartition("\n")[2]})()
        plain = engine.infill(prefix, suffix, DecodeOptions())
        line = engine.infill(prefix, suffix, DecodeOptions(first_line_only=True))
        assert keep_first_line(line.text, ctx) == keep_first_line(plain.text, ctx)
        assert line.forward_passes <= plain.forward_passes
        saved += plain.forward_passes - line.forward_passes
    assert saved > 0
