"""The completion service: what an inline completion, a prefetch and a fill do between LSP and the model.

Given its parts by constructor (as Tabby's agent is): the documents, the model scheduler, the
typing-ahead cache, the typing pace, and a ``Serving`` snapshot (settings, engine, languages) that
the server swaps when settings or the model change. It never touches the protocol: handlers turn
its answers into LSP types, and ``report`` is how it tells the user about a crash (once per kind).

Keys: every model request of a document uses the document's URI as the engine's cache key (its
encoder cache and warm start), whichever in-flight key it runs under (``uri``, ``uri#prefetch``,
``uri#fill``), so a prefetch reuses what the completion before it left, and closing the document
frees it all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffgemma_ls.config import Settings
from diffgemma_ls.documents import DocumentStore
from diffgemma_ls.engine.kinds import BackendUnavailable, Cancelled
from diffgemma_ls.fill import trim_selection
from diffgemma_ls.pace import TypingPace
from diffgemma_ls.scheduler import ModelScheduler
from diffgemma_ls.typeahead import TypeAhead
from diffgemma_ls.workspace import Workspace

if TYPE_CHECKING:  # imported once a model is loaded (torch): ``initialize`` does not wait for them
    from diffgemma_ls.completion import CompletionRequest, Outcome
    from diffgemma_ls.engine.infill import Engine
    from diffgemma_ls.postprocess import Completion

log = logging.getLogger(__name__)

FILL_KEY = "#fill"  # in-flight key suffix: a fill and an inline completion of one document coexist
PREFETCH_KEY = "#prefetch"  # likewise a prefetch: a request for another state cancels it explicitly
FILL_BUDGET_FACTOR = 5  # a fill may take several canvases: this many latency budgets


class Superseded(Exception):
    """The request was superseded by a newer one, cancelled, or debounced away: answer RequestCancelled."""


@dataclass(frozen=True)
class Serving:
    """What the service serves with; replaced whole when settings or the model change."""

    settings: Settings
    engine: Engine | None = None  # None while loading or after a load error
    languages: tuple[str, ...] = ()

    def enabled(self, language_id: str) -> bool:
        return self.engine is not None and (
            language_id in self.languages or language_id in self.settings.languages
        )


@dataclass(frozen=True)
class Answer:
    """A completion for a document state: the text, and where it was computed (for the edit range)."""

    completion: Completion
    text: str
    offset: int


class CompletionService:
    def __init__(
        self,
        documents: DocumentStore,
        scheduler: ModelScheduler,
        typeahead: TypeAhead,
        pace: TypingPace,
        report: Callable[[str, str], None],
    ):
        self.documents = documents
        self.scheduler = scheduler
        self.typeahead = typeahead
        self.pace = pace
        self.report = report  # (message, kind): shown to the user once per kind
        self.serving = Serving(Settings())
        self.stats: Counter[str] = Counter()  # cache hits etc., for diffgemma/debugState and the benches
        self.last_latency_ms: float | None = None  # of the last model-answered completion
        self.model_answers = 0  # completions the model answered (not the caches): a new latency
        self.workspace: Workspace | None = None  # the workspace folders' lines, once scanned
        # per document: (text, cursor offset, task) of the prefetch running after an accept
        self._prefetches: dict[str, tuple[str, int, asyncio.Task]] = {}

    @property
    def prefetching(self) -> int:
        return len(self._prefetches)

    def serve(self, serving: Serving) -> None:
        """New settings or a new model; a new model's answers are not the old one's."""
        if serving.engine is not self.serving.engine:
            self.typeahead = TypeAhead()
        self.serving = serving

    async def complete(self, uri: str, line: int, character: int, invoked: bool) -> list[Answer]:
        """Best first; an explicit (``invoked``) request also gets the alternatives of one batched run.

        Raises ``Superseded`` when a newer request or a keystroke took over.
        """
        started = time.monotonic()
        serving = self.serving
        if uri not in self.documents:
            return []
        doc = self.documents.get(uri)
        if serving.engine is None or not serving.enabled(doc.language_id):
            return []
        text = doc.text  # the snapshot this request answers for, whatever edits arrive meanwhile
        offset = doc.offset_at(line, character)
        if (prefetch := self._prefetch_for(uri, text, offset)) is not None:
            await asyncio.wait({prefetch})  # the model is already computing this very answer
        settings = serving.settings
        ahead = self.typeahead.lookup(uri, text, offset) if settings.typeahead else None
        if ahead is not None:
            self.stats["prefetchHits" if ahead.prefetched else "typeaheadHits"] += 1
            log.info(
                "completion from the %s, no model call",
                "prefetch" if ahead.prefetched else "typing-ahead cache",
            )
            return [Answer(ahead.completion, text, offset)]
        from diffgemma_ls.completion import plan

        candidates = settings.candidates if invoked else 1
        workspace = self.workspace if settings.workspace_context else None
        request = plan(
            text,
            offset,
            doc.language_id,
            settings,
            serving.engine,
            invoked=invoked,
            candidates=candidates,
            uri=uri,
            workspace=workspace,
        )
        if request is None:
            return []
        delay_ms = self.pace.delay_ms() if settings.debounce_ms == "auto" else settings.debounce_ms
        context = request.context
        if not invoked and delay_ms > 0 and not serving.engine.continues(uri, context.prefix, context.suffix):
            await self._debounce(uri, doc.version, delay_ms)
        outcome = await self._run(uri, uri, request, started + settings.latency_budget_ms / 1000)
        if outcome is None:
            return []
        self.last_latency_ms = round((time.monotonic() - started) * 1000, 1)
        self.model_answers += 1
        if request.copy:
            self.stats["copies"] += 1
        if outcome.completion is None:
            return []
        self.typeahead.remember(uri, text, offset, outcome.completion)
        return [
            Answer(completion, text, offset) for completion in (outcome.completion, *outcome.alternatives)
        ]

    def prefetch_after_accept(self, uri: str) -> None:
        """After a change that accepted the shown completion, compute the next one right away.

        The editor asks at the new cursor as soon as the accepted text is in; by then the answer is
        on its way or done (llama.vim's speculative next request). Any other change cancels it.
        """
        if (pending := self._prefetches.pop(uri, None)) is not None:
            pending[2].cancel()
        serving = self.serving
        settings = serving.settings
        if not (settings.prefetch and settings.typeahead) or serving.engine is None:
            return
        doc = self.documents.get(uri)
        offset = self.typeahead.accepted_at(uri, doc.text)
        if offset is None or not serving.enabled(doc.language_id):
            return
        from diffgemma_ls.completion import plan

        self.typeahead.forget(uri)
        workspace = self.workspace if settings.workspace_context else None
        request = plan(
            doc.text, offset, doc.language_id, settings, serving.engine, uri=uri, workspace=workspace
        )
        if request is None:
            return
        self.stats["prefetches"] += 1
        task = asyncio.ensure_future(self._prefetch(uri, doc.text, offset, request))
        self._prefetches[uri] = (doc.text, offset, task)

    async def _prefetch(self, uri: str, text: str, offset: int, request: CompletionRequest) -> None:
        deadline = time.monotonic() + self.serving.settings.latency_budget_ms / 1000
        try:
            outcome = await self._run(uri + PREFETCH_KEY, uri, request, deadline)
        except Superseded:
            return
        finally:
            if (pending := self._prefetches.get(uri)) is not None and pending[2] is asyncio.current_task():
                del self._prefetches[uri]
        if outcome is not None and outcome.completion is not None:
            self.typeahead.remember(uri, text, offset, outcome.completion, prefetched=True)

    def _prefetch_for(self, uri: str, text: str, offset: int) -> asyncio.Future | None:
        """The running prefetch for exactly this document state, if any."""
        pending = self._prefetches.get(uri)
        if pending is None or pending[0] != text or pending[1] != offset:
            return None
        return pending[2]

    async def _debounce(self, uri: str, version: int, delay_ms: float) -> None:
        """Wait ``delay_ms``; raise ``Superseded`` if the document changed meanwhile.

        While someone types faster than a completion takes, every model run would be cancelled by the
        next keystroke after doing some passes: waiting first drops those runs before any work.
        """
        await asyncio.sleep(delay_ms / 1000)
        if uri not in self.documents or self.documents.get(uri).version != version:
            self.stats["debounced"] += 1
            raise Superseded("superseded by a keystroke while debouncing")

    async def _run(self, key: str, uri: str, request: CompletionRequest, deadline: float) -> Outcome | None:
        """Run one request as in-flight ``key``, with the document ``uri``'s caches.

        Raises ``Superseded`` when superseded or cancelled; ``None`` when the run crashed (the
        user is told once per kind of error).
        """
        from diffgemma_ls.completion import run

        engine = self.serving.engine
        assert engine is not None

        def job(cancelled: Callable[[], bool]) -> Outcome:
            return run(engine, request, deadline=deadline, cancelled=cancelled, cache_key=uri)

        try:
            outcome = await self.scheduler.run(key, job)
        except Cancelled:
            raise Superseded("superseded by a newer request or cancelled") from None
        except BackendUnavailable:  # said once, by the status notification (``HttpBackend.on_status``)
            return None
        except Exception as exc:  # a crash inside one denoising run fails that request only
            log.exception("completion failed")
            self.report(f"completion failed: {type(exc).__name__}: {exc}", type(exc).__name__)
            return None
        log.info("%s %s", "fill" if key.endswith(FILL_KEY) else "completion", outcome.timing_line())
        return outcome

    async def fill(self, uri: str, start: int, end: int) -> tuple[tuple[int, int, str] | None, str]:
        """Regenerate ``[start, end)``: the (start, end, text) to apply, or ``None`` and why not.

        ``None`` too when the document changed meanwhile: the range no longer means what it meant.
        """
        serving = self.serving
        if uri not in self.documents:
            return None, "the document is not open"
        doc = self.documents.get(uri)
        if serving.engine is None:
            return None, "the model is not loaded"
        if not serving.enabled(doc.language_id):
            return None, f"the model does not complete {doc.language_id}"
        from diffgemma_ls.completion import choose_fill_why, plan_fill

        text, version = doc.text, doc.version
        start, end = trim_selection(text, start, end)
        settings = serving.settings
        request = plan_fill(
            text,
            start,
            end,
            doc.language_id,
            settings,
            serving.engine,
            uri=uri,
            candidates=settings.candidates,
            workspace=self.workspace if settings.workspace_context else None,
        )
        budget = FILL_BUDGET_FACTOR * settings.latency_budget_ms / 1000
        outcome = await self._run(uri + FILL_KEY, uri, request, time.monotonic() + budget)
        if outcome is None:
            return None, "the model failed (see the log)"
        chosen, why = choose_fill_why(outcome, text, start, end, doc.language_id, uri)
        if chosen is None:
            log.info("fill of %s changes nothing: %s", uri, why)
            return None, why
        if uri not in self.documents or self.documents.get(uri).version != version:
            return None, "the document changed while the model worked"
        return (start, end, chosen.text), ""

    def forget(self, uri: str) -> None:
        """A document closed: its requests, its caches (on the model thread, which owns them), its answers."""
        for key in (uri, uri + PREFETCH_KEY, uri + FILL_KEY):
            self.scheduler.cancel(key)
        if (engine := self.serving.engine) is not None:
            self.scheduler.submit(engine.forget, uri)
        self.typeahead.forget(uri)
        if (pending := self._prefetches.pop(uri, None)) is not None:
            pending[2].cancel()
