"""The model's one worker thread: jobs run in order, in-flight requests are keyed and cancellable.

The event loop owns the protocol and the documents; the model lives on this thread, which loads it
and runs every denoising request, so no request blocks the loop. Each in-flight request has a key
(a document URI, or the URI plus ``#fill``/``#prefetch`` so that those coexist with its inline
completion) and a ``threading.Event`` that the engine polls between denoising steps: a newer
request with the same key, ``cancel(key)`` or ``cancel_all()`` sets it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ModelScheduler:
    """Runs model jobs on one thread (see the module docstring)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffgemma-model")
        self._inflight: dict[str, threading.Event] = {}
        self._queued = 0  # submitted, not started: what debugState calls the model queue
        self._lock = threading.Lock()

    def submit(self, job: Callable[..., T], *args: object) -> Future[T]:
        """Queue ``job(*args)``; counted as queued until it starts or is cancelled unstarted."""

        def started() -> T:
            with self._lock:
                self._queued -= 1
            return job(*args)

        def done(future: Future[T]) -> None:
            if future.cancelled():  # never started: ``started`` did not count it out
                with self._lock:
                    self._queued -= 1

        with self._lock:
            self._queued += 1
        future = self._executor.submit(started)
        future.add_done_callback(done)
        return future

    async def call(self, job: Callable[..., T], *args: object) -> T:
        """Run ``job(*args)`` on the model thread and wait for it (loading, warming up, a request)."""
        return await asyncio.wrap_future(self.submit(job, *args))

    async def run(self, key: str, job: Callable[[Callable[[], bool]], T]) -> T:
        """Run ``job(cancelled)`` as the in-flight request ``key``, superseding the previous one.

        ``cancelled()`` turns true once this request is superseded or cancelled; the job raises
        whatever it raises then (the engine: ``Cancelled``).
        """
        if (previous := self._inflight.get(key)) is not None:
            previous.set()
        cancel = threading.Event()
        self._inflight[key] = cancel
        try:
            return await self.call(job, cancel.is_set)
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            if self._inflight.get(key) is cancel:
                del self._inflight[key]

    def cancel(self, key: str) -> None:
        if (event := self._inflight.pop(key, None)) is not None:
            event.set()

    def cancel_all(self) -> None:
        for event in self._inflight.values():
            event.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def queued(self) -> int:
        return self._queued

    def shutdown(self) -> None:
        self.cancel_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
