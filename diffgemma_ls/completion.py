"""One completion, start to end: context (tree-sitter) → engine (denoising) → post-processing.

Shared by the server, ``diffgemma-ls infill`` and the bench, so all three measure the same thing.
``plan`` runs on the caller's thread (cheap, pure); ``run`` runs on the model thread.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch

from diffgemma_ls.anchored import ANCHOR_WINDOW, anchored_completion
from diffgemma_ls.config import Settings, default_threads
from diffgemma_ls.context import InfillContext, extract_context
from diffgemma_ls.engine.infill import DecodeOptions, Engine, InfillResult, ServingDefaults
from diffgemma_ls.engine.loader import DEFAULT_MODEL, ModelLoadError, default_model_path, load_model
from diffgemma_ls.fill import breaks_syntax, discards_working_code, has_code
from diffgemma_ls.nearest_line import cursor_line_start, nearest_line_completion
from diffgemma_ls.postprocess import Completion, postprocess
from diffgemma_ls.prompt import token_counter
from diffgemma_ls.snippets import Snippet
from diffgemma_ls.tuned import tuned_weights
from diffgemma_ls.workspace import Workspace

log = logging.getLogger(__name__)

# Block completions continue over several canvases (block-autoregressive), as generate() does.
BLOCK_CANVASES = 3
# A fill may be longer than a block; its length is the model's (EOS ends it), this only caps it.
FILL_CANVASES = 6


@dataclass(frozen=True)
class CompletionRequest:
    context: InfillContext
    options: DecodeOptions
    context_ms: float
    rivals: tuple[str, ...] = ()  # middles the model's answer competes with (``Engine.infill``)
    copies_win: bool = False  # a rival wins over the model's answer (something is typed on the line)
    language: str = ""  # the client's language id and the file's path: a chat prompt names them
    path: str = ""
    snippets: tuple[Snippet, ...] = ()  # other files' chunks for the prompt
    copy: str = ""  # as you type, the anchored copy: the answer, without the model


@dataclass
class Outcome:
    completion: Completion | None
    result: InfillResult | None
    context_ms: float
    postprocess_ms: float = 0.0
    alternatives: list[Completion] = dataclasses.field(default_factory=list)  # distinct, not the first

    def timing_line(self) -> str:
        """Per-request timing for the log, in the spirit of llm-ls."""
        r = self.result
        if r is None:
            return f"context {self.context_ms:.1f} ms, no model call"
        return (
            f"context {self.context_ms:.1f} ms, prefill {r.prefill_ms:.1f} ms ({r.prompt_tokens} tokens), "
            f"denoise {r.denoise_ms:.1f} ms ({r.forward_passes} passes, {r.tokens_per_forward:.1f} tok/pass"
            f"{', budget spent' if r.budget_exhausted else ''}"
            f"{f', {r.seeded_tokens} seeded' if r.seeded_tokens else ''}"
            f"{', a copied line won' if r.copied else ''}), "
            f"postprocess {self.postprocess_ms:.1f} ms, "
            f"{len(self.completion.text) if self.completion else 0} chars"
        )


def load_engine(settings: Settings, workspaces: Sequence[str | Path] = ()) -> Engine:
    """The engine for the model the settings name (raises ``ModelLoadError`` with a user message).

    For the shipped model, the weights ``diffgemma-ls tune`` kept for the first of ``workspaces``
    that has them (``tuned.tuned_weights``), unless ``settings.tuned_weights`` is off;
    ``Engine.tuned_for`` then names that workspace. With ``settings.backend``, an ``HttpBackend``
    that prompts with ``settings.model``'s tokenizer (no weights are loaded).
    """
    if settings.backend:
        from diffgemma_ls.backend import load_backend

        return load_backend(settings.backend, settings.model, settings)  # type: ignore[return-value]
    torch.set_num_threads(settings.threads or default_threads())
    model, tuned_for = settings.model, None
    shipped = settings.tuned_weights and model in (None, "", DEFAULT_MODEL) and workspaces
    if shipped and (found := tuned_weights(workspaces, default_model_path())) is not None:
        tuned_for, weights = found
        model = str(weights)
    load = lambda name: load_model(  # noqa: E731
        name,
        quantize=settings.quantize,
        device=settings.device,
        allow_download=settings.allow_download,
        trust_remote_code=settings.trust_remote_code,
    )
    try:
        loaded = load(model)
    except ModelLoadError as exc:
        if tuned_for is None:
            raise
        log.warning("the tuned weights for %s do not load (%s); serving the shipped ones", tuned_for, exc)
        loaded, tuned_for = load(settings.model), None
    try:
        engine = Engine(
            loaded,
            prompt_caches=settings.prompt_caches,
            warm_start=settings.warm_start,
            prompt_format=settings.prompt_format,
        )
    except ValueError as exc:  # a prompt format the tokenizer cannot do
        raise ModelLoadError(str(exc)) from exc
    engine.tuned_for = tuned_for
    return engine


def decode_options(
    mode: str,
    settings: Settings,
    defaults: ServingDefaults,
    decode: str = "adaptive",
    steps: int | None = None,
    entropy_bound: float | None = None,
    candidates: int = 1,
) -> DecodeOptions:
    """One canvas for a line; several block-autoregressive canvases for a block; token healing on.

    What the settings leave unset comes from the checkpoint (``defaults``).
    """
    return DecodeOptions(
        mode=decode,
        canvas_length=settings.canvas_length or defaults.canvas_length,
        max_canvases=BLOCK_CANVASES if mode == "block" else 1,
        max_steps=steps or settings.max_steps or defaults.max_steps,
        entropy_bound=entropy_bound,
        candidates=candidates,
        first_line_only=mode == "line",
        heal=True,  # a cursor inside a word: token healing (docs/decisions.md)
    )


def plan(
    text: str,
    offset: int,
    language_id: str,
    settings: Settings,
    engine: Engine,
    *,
    invoked: bool = False,
    mode: str = "auto",
    uri: str = "",
    decode: str = "adaptive",
    steps: int | None = None,
    entropy_bound: float | None = None,
    candidates: int = 1,
    copy_rival: bool = True,
    workspace: Workspace | None = None,
) -> CompletionRequest | None:
    """Cut the context; ``None`` where no completion belongs (an explicit request still gets one).

    ``candidates`` > 1 decodes alternatives in the same batched run (the server asks for them on an
    explicit request). Without ``steps``, an as-you-type request (not ``invoked``) gets
    ``settings.typing_max_steps`` passes per canvas and an explicit one ``settings.max_steps``.
    With ``copy_rival``, an explicit line request whose neighbours stand around a line elsewhere in
    the document (or, with ``workspace``, its other files) gets that line (``anchored``); else the
    answer competes with the nearest matching line of the document (``nearest_line``), and with
    ``workspace`` also with the best matching line of the workspace's other files
    (``Workspace.nearest_line``). The bench turns it off to measure the model alone. As you type
    only the anchored copy applies, as the answer without the model (``settings.typing_copies``):
    the rivals' scoring pass would cost the keystroke budget (docs/benchmarks.md, keystroke replay).
    A ``workspace`` also gives a model that reads them (``Engine.reads_snippets``) the other files'
    best matching chunks, up to ``settings.cross_file_chars``, on every request.
    """
    started = time.perf_counter()
    tokenizer = engine.tokenizer
    context = extract_context(
        text,
        offset,
        language_id,
        token_counter(tokenizer),
        uri=uri,
    )
    if mode != "auto":
        context = dataclasses.replace(context, mode=mode)
    elif context.mode == "none":
        if not invoked:
            return None
        context = dataclasses.replace(context, mode="line")
    defaults = engine.defaults
    if invoked:
        steps = steps or settings.max_steps or defaults.max_steps
    else:
        steps = steps or settings.typing_max_steps or defaults.typing_max_steps
    options = decode_options(context.mode, settings, defaults, decode, steps, entropy_bound, candidates)
    rivals: tuple[str, ...] = ()
    copies_win = False
    anchored = ""
    path = _path_of(uri)
    if copy_rival and engine.copies and (invoked or settings.typing_copies):
        # between the same lines as elsewhere, the copy wins (docs/benchmarks.md, "Anchored copies")
        near = (
            text[max(0, offset - ANCHOR_WINDOW) : offset] + context.lead,
            text[offset : offset + ANCHOR_WINDOW],
        )
        block = context.mode == "block"
        anchored = (
            workspace.anchored(*near, exclude=path, block=block)
            if workspace is not None
            else anchored_completion(*near, block=block)
        )
    if copy_rival and invoked:
        # the whole document, not only the model's window: a copy needs no context budget
        typed, rest = text[:offset] + context.lead, text[offset:]
        if anchored:
            rivals, copies_win = (anchored,), True
        else:
            # the nearest line, of the file and of the workspace (three nearest distinct lines of
            # the file measured worse than one: 25.2% against 26.5%)
            copied = nearest_line_completion(typed, rest)
            elsewhere = workspace.nearest_line(typed, rest, exclude=path) if workspace is not None else ""
            rivals = tuple(dict.fromkeys(r for r in (copied, elsewhere) if r))
            # with something typed on the line, a copy beat the model's likelihood choice: +3.6
            # points of line exact match on unseen repositories, +1.6 on the held-out stdlib
            copies_win = bool(cursor_line_start(typed).strip())
    snippets: tuple[Snippet, ...] = ()
    if workspace is not None and engine.reads_snippets and settings.cross_file_chars > 0:
        found = workspace.snippets(context.prefix, context.suffix, path, settings.cross_file_chars)
        snippets = tuple(found)
    elapsed_ms = (time.perf_counter() - started) * 1000
    copy = "" if invoked else anchored  # an explicit request still gets the model's alternatives
    return CompletionRequest(
        context, options, elapsed_ms, rivals, copies_win, language_id, path, snippets, copy
    )


def _path_of(uri: str) -> str:
    """The file path a chat prompt names: a ``file:`` URI's path, else the URI as it is."""
    if uri.startswith("file://"):
        return unquote(urlparse(uri).path)
    return uri


def plan_fill(
    text: str,
    start: int,
    end: int,
    language_id: str,
    settings: Settings,
    engine: Engine,
    *,
    uri: str = "",
    decode: str = "adaptive",
    steps: int | None = None,
    entropy_bound: float | None = None,
    candidates: int = 1,
    workspace: Workspace | None = None,
) -> CompletionRequest:
    """A fill regenerates ``text[start:end]``: the model sees the document without it, cursor at ``start``.

    ``candidates`` > 1 decodes alternatives in the same batched run, for ``choose_fill``;
    ``workspace`` gives the prompt other files' chunks, as in ``plan``.
    """
    request = plan(
        text[:start] + text[end:],
        start,
        language_id,
        settings,
        engine,
        invoked=True,
        mode="block",
        uri=uri,
        decode=decode,
        steps=steps,
        entropy_bound=entropy_bound,
        candidates=candidates,
        copy_rival=False,  # the region already there is the rival
        workspace=workspace,
    )
    assert request is not None  # invoked=True always plans a completion
    options = dataclasses.replace(request.options, max_canvases=FILL_CANVASES)
    # the code already there competes with the fill, judged by the model (``choose_fill_why``)
    region = text[start:end]
    rivals = (region,) if has_code(region, language_id, uri) else ()
    return dataclasses.replace(request, options=options, rivals=rivals)


def choose_fill(
    outcome: Outcome, text: str, start: int, end: int, language_id: str, uri: str = ""
) -> Completion | None:
    """The fill to apply, or ``None``: see ``choose_fill_why``."""
    return choose_fill_why(outcome, text, start, end, language_id, uri)[0]


def choose_fill_why(
    outcome: Outcome, text: str, start: int, end: int, language_id: str, uri: str = ""
) -> tuple[Completion | None, str]:
    """The fill to apply (the first candidate that is code, changes the region, keeps the syntax and
    keeps working code), or ``None`` and why nothing changes.

    Candidates in order: the plain answer, then the batched alternatives. Nothing changes when the
    model finds the code already there more likely than its own (the region competed as a rival:
    ``plan_fill``), when a candidate is only comments or placeholders (``fill.has_code``), leaves the
    region as it is, adds syntax errors (``fill.breaks_syntax``), or throws away working code for a
    trivial line (``fill.discards_working_code``).
    """
    region = text[start:end]
    if outcome.result is not None and outcome.result.copied:
        return None, "the model finds the code already there more likely than any fill"
    first = [outcome.completion] if outcome.completion is not None else []
    discarding = False
    for candidate in [*first, *outcome.alternatives]:
        if candidate.text == region or not has_code(candidate.text, language_id, uri):
            continue
        if discards_working_code(region, candidate.text, language_id, uri):
            discarding = True
            continue
        if not breaks_syntax(text, start, end, candidate.text, language_id, uri):
            return candidate, ""
    if discarding:
        return None, "every candidate that parses throws away the working code for a trivial line"
    return None, "no candidate is code that changes the region and parses"


def run(
    engine: Engine,
    request: CompletionRequest,
    *,
    deadline: float | None = None,
    cancelled: Callable[[], bool] | None = None,
    cache_key: str | None = None,
) -> Outcome:
    """Denoise and post-process; raises ``Cancelled`` if cancelled between steps.

    ``cache_key`` (a document URI) lets the engine reuse the previous request's encoder cache.
    """
    ctx = request.context
    chat = engine.layout.format == "chat"
    if request.copy:
        started = time.perf_counter()
        completion = postprocess(request.copy, ctx, chat=chat)
        return Outcome(completion, None, request.context_ms, (time.perf_counter() - started) * 1000)
    result = engine.infill(
        ctx.prefix,
        ctx.suffix,
        request.options,
        deadline=deadline,
        cancelled=cancelled,
        cache_key=cache_key,
        rivals=request.rivals,
        copies_win=request.copies_win,
        language=request.language,
        path=request.path,
        snippets=request.snippets,
    )
    started = time.perf_counter()
    completion = postprocess(result.text, ctx, chat=chat)
    alternatives: list[Completion] = []
    for text in result.alternatives:
        other = postprocess(text, ctx, chat=chat)
        if other is not None and other != completion and other not in alternatives:
            alternatives.append(other)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return Outcome(completion, result, request.context_ms, elapsed_ms, alternatives)


def complete_text(
    engine: Engine,
    prefix: str,
    suffix: str,
    language_id: str,
    mode: str,
    settings: Settings,
    *,
    decode: str = "adaptive",
    steps: int | None = None,
    entropy_bound: float | None = None,
    deadline: float | None = None,
    candidates: int | None = None,
    copy_rival: bool = True,
    workspace: Workspace | None = None,
    path: str = "",
) -> Outcome:
    """Complete between ``prefix`` and ``suffix`` as if the cursor sat there in one document.

    ``mode`` is a completion mode (``auto``, ``line``, ``block``) or ``fill``: what the server's
    "Fill with DiffusionGemma" does with a region cut out between ``prefix`` and ``suffix``, the
    chosen candidate included (``settings.candidates`` of them unless ``candidates`` is given).
    A completion decodes ``candidates`` rows, one unless given; ``copy_rival`` and ``workspace`` as
    in ``plan``; ``path`` is the file's (a chat prompt names it; the workspace skips it).
    """
    if mode == "fill":
        text, at = prefix + suffix, len(prefix)
        knobs = {"decode": decode, "steps": steps, "entropy_bound": entropy_bound}
        rows = candidates or settings.candidates
        request = plan_fill(
            text,
            at,
            at,
            language_id,
            settings,
            engine,
            candidates=rows,
            workspace=workspace,
            uri=path,
            **knobs,
        )
        outcome = run(engine, request, deadline=deadline)
        return dataclasses.replace(outcome, completion=choose_fill(outcome, text, at, at, language_id))
    request = plan(
        prefix + suffix,
        len(prefix),
        language_id,
        settings,
        engine,
        invoked=True,
        mode=mode,
        decode=decode,
        steps=steps,
        entropy_bound=entropy_bound,
        candidates=candidates or 1,
        copy_rival=copy_rival,
        workspace=workspace,
        uri=path,
    )
    assert request is not None  # invoked=True always plans a completion
    return run(engine, request, deadline=deadline)
