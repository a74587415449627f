"""The adaptive debounce's rule: a multiple of the typist's own interval between keys, capped."""

from __future__ import annotations

import pytest

from diffgemma_ls.pace import CEILING_MS, MIN_SAMPLES, RATE, TypingPace


def typed(intervals_ms: list[float]) -> TypingPace:
    pace, now = TypingPace(), 100.0
    pace.edited(now)
    for gap in intervals_ms:
        now += gap / 1000
        pace.edited(now)
    return pace


def test_no_rhythm_yet_no_wait() -> None:
    assert TypingPace().delay_ms() == 0.0
    assert typed([100.0] * (MIN_SAMPLES - 1)).delay_ms() == 0.0


def test_waits_a_multiple_of_the_usual_interval() -> None:
    assert typed([100.0] * 8).delay_ms() == pytest.approx(RATE * 100)
    assert typed([90.0, 100.0, 400.0, 110.0, 95.0]).delay_ms() == pytest.approx(RATE * 100)  # median


def test_a_slow_typist_waits_at_most_the_ceiling() -> None:
    assert typed([400.0] * 8).delay_ms() == CEILING_MS


def test_pauses_are_not_pace() -> None:
    assert typed([100.0, 5000.0, 100.0, 100.0, 60_000.0]).delay_ms() == pytest.approx(RATE * 100)


def test_the_recent_rhythm_wins() -> None:
    assert typed([300.0] * 20 + [80.0] * 16).delay_ms() == pytest.approx(RATE * 80)
