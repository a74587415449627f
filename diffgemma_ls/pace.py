"""The adaptive debounce (``debounceMs: "auto"``): wait for a pause in the typist's own rhythm.

While someone types faster than a completion takes, a request started at once is cancelled by the
next keystroke after burning forward passes that nobody sees. Tabby's agent waits a multiple of the
typist's average interval between keys; so does this: an as-you-type request waits ``RATE`` times
the median of the recent intervals, so it runs once the typing pauses and not between two keys of a
burst. The wait is capped (``CEILING_MS``): a slow typist leaves the model time between keys anyway,
and a pause should not cost more than a fraction of a completion. Gaps longer than ``TYPING_MS``
are pauses, not pace, and are not counted. Pure: the caller passes the clock.
"""

from __future__ import annotations

import statistics
from collections import deque

RATE = 1.5
CEILING_MS = 250.0
TYPING_MS = 1000.0
WINDOW = 16  # intervals remembered
MIN_SAMPLES = 3  # fewer: no rhythm known yet, no wait


class TypingPace:
    """Intervals between the user's edits (in any document: one person types) and the wait they imply."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._intervals: deque[float] = deque(maxlen=WINDOW)

    def edited(self, now: float) -> None:
        """Record an edit at ``now`` (seconds, monotonic)."""
        if self._last is not None and (gap_ms := (now - self._last) * 1000) <= TYPING_MS:
            self._intervals.append(gap_ms)
        self._last = now

    def delay_ms(self) -> float:
        """How long an as-you-type request should wait before the model runs."""
        if len(self._intervals) < MIN_SAMPLES:
            return 0.0
        return min(CEILING_MS, RATE * statistics.median(self._intervals))
