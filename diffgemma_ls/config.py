"""Typed settings: CLI flags form the base, the client's ``diffgemma`` section overrides them.

Client input is untrusted and often hand-edited: every bad value is reported (one message listing
all of them) and replaced by the base value, never raised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from diffgemma_ls.engine.loader import DEVICES, QUANTIZE_MODES
from diffgemma_ls.prompt import PROMPT_FORMATS

SECTION = "diffgemma"


def default_threads() -> int:
    """Leave one core to the editor where there are several."""
    return max(1, (os.cpu_count() or 1) - 1)


MAX_CANDIDATES = 8  # alternatives per explicit request: each is one more batch row


@dataclass(frozen=True)
class Settings:
    """What the server serves and how. Field names are the CLI's; ``CLIENT_KEYS`` maps the client's."""

    model: str | None = None  # None: the shipped default model
    quantize: str = "auto"  # 4bit on CUDA, none elsewhere
    device: str = "auto"
    prompt_format: str = "auto"  # fim where the tokenizer has FIM tokens, else chat (prompt.py)
    # None: from the checkpoint (``Engine.defaults``: the shipped model 32 tokens, 16 passes, and 3
    # as you type, so one finishes between keys; a uniform-noise checkpoint its own canvas and cap)
    canvas_length: int | None = None
    max_steps: int | None = None
    typing_max_steps: int | None = None
    latency_budget_ms: int = 1000
    # an as-you-type request waits this long (ms), and a keystroke meanwhile drops it unrun; "auto":
    # 1.5x the typist's recent interval between keys, at most 250 ms (pace.py)
    debounce_ms: int | Literal["auto"] = 0
    candidates: int = 3  # alternatives on an explicit (Invoked) request, from one batched run
    languages: tuple[str, ...] = ()  # extra languages opted into, beyond the model's own
    threads: int = 0  # 0: default_threads()
    allow_download: bool = False
    # keystroke caches (CLI only, for measuring each one's effect): encoder caches kept, typing-ahead,
    # the next answer computed right after an accept, canvases seeded from the previous one
    prompt_caches: int = 8
    typeahead: bool = True
    prefetch: bool = True
    warm_start: bool = True
    trust_remote_code: bool = False

    @property
    def model_key(self) -> tuple[str | None, str, str, str]:
        """Settings whose change means rebuilding the engine (the prompt format is resolved at load)."""
        return (self.model, self.quantize, self.device, self.prompt_format)


CLIENT_KEYS = {
    "model": "model",
    "quantize": "quantize",
    "device": "device",
    "promptFormat": "prompt_format",
    "canvasLength": "canvas_length",
    "maxSteps": "max_steps",
    "typingMaxSteps": "typing_max_steps",
    "latencyBudgetMs": "latency_budget_ms",
    "debounceMs": "debounce_ms",
    "candidates": "candidates",
    "languages": "languages",
    "threads": "threads",
}


_BOUNDS = {
    "canvas_length": (4, 1024),
    "max_steps": (1, 1024),
    "typing_max_steps": (1, 1024),
    "latency_budget_ms": (10, 600_000),
    "debounce_ms": (0, 5_000),
    "candidates": (1, MAX_CANDIDATES),
    "threads": (0, 512),
}


def validate_setting(name: str, value: Any) -> Any:
    """Return the value in its settings type, or raise ValueError with a message for the user."""
    if name == "model":
        if value is None or value == "":
            return None
        if not isinstance(value, str) or "\x00" in value or len(value) > 4096:
            raise ValueError("must be a folder path or a Hugging Face model id")
        return value
    if name == "quantize":
        if value not in QUANTIZE_MODES:
            raise ValueError(f"must be one of {', '.join(QUANTIZE_MODES)}")
        return value
    if name == "device":
        if value not in DEVICES:
            raise ValueError(f"must be one of {', '.join(DEVICES)}")
        return value
    if name == "prompt_format":
        if value not in PROMPT_FORMATS:
            raise ValueError(f"must be one of {', '.join(PROMPT_FORMATS)}")
        return value
    if name == "languages":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError('must be a list of language ids, e.g. ["python", "go"]')
        return tuple(value)
    if name == "debounce_ms" and value == "auto":
        return value
    low, high = _BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        also = ' or "auto"' if name == "debounce_ms" else ""
        raise ValueError(f"must be a whole number from {low} to {high}{also}")
    return value


def merge_client_settings(base: Settings, client: Any) -> tuple[Settings, list[str]]:
    """Apply the client's ``diffgemma`` section to ``base``; return the result and the problems found.

    Unknown keys are reported too, since they are usually typos of real ones.
    """
    if client is None:
        return base, []
    if not isinstance(client, dict):
        return base, [f"settings '{SECTION}' must be an object, got {type(client).__name__}"]
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in client.items():
        name = CLIENT_KEYS.get(key)
        if name is None:
            problems.append(f"{SECTION}.{key}: unknown setting")
            continue
        if value is None:
            continue  # unset in the client: keep the CLI's value
        try:
            changes[name] = validate_setting(name, value)
        except ValueError as exc:
            problems.append(f"{SECTION}.{key} = {value!r}: {exc}")
    return replace(base, **changes), problems


def settings_from_cli(**flags: Any) -> Settings:
    """Build the base settings from parsed CLI flags (``None`` means not given)."""
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in flags.items() if k in known and v is not None})
