"""Keystroke replay mechanics on the tiny constant model (always 32 ``x``): real server, real LSP."""

from __future__ import annotations

from pathlib import Path

from diffgemma_ls.bench.keystrokes import replay, summarize

BEFORE, AFTER = "def f():\n", "\n    return z\n"
SPAN = "    z = " + "x" * 80  # what the typist types; the model's 32 x fit it twice


async def test_replay_accepts_answers_that_fit_and_the_server_prefetches(constant_model_dir: Path) -> None:
    work = [(BEFORE + AFTER, len(BEFORE), SPAN)]
    result = await replay(str(constant_model_dir), [], work, interval_s=0.4)
    # two Tabs: 32 x, then 31 (inside the word of x the canvas rewrites the last one: token healing)
    assert result.accepted_chars >= 63, result.accepted_chars
    assert result.keystrokes < len(SPAN)  # an accept is one keystroke for many characters
    assert result.stats["prefetches"] >= 1 and result.stats["prefetchHits"] >= 1, result.stats
    row = summarize("all caches", result, (0, 0))
    assert row["accepted"] >= 63 / len(SPAN) and row["prefetch_hit_rate"] > 0
    assert 0 < row["shown"] <= row["answered"]

    off = await replay(str(constant_model_dir), ["--no-prefetch"], work, interval_s=0.4)
    assert off.accepted_chars >= 63 and off.stats.get("prefetches", 0) == 0, off.stats
