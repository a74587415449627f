"""Typed settings and their one schema: CLI flags form the base, the client's ``diffgemma`` section overrides.

``SCHEMA`` is the single description of every setting (client key, CLI flag, bounds, choices, what
it does); validation, the CLI flags (``add_flags``) and the README's settings table
(``settings_table``) come from it, and a test checks the VS Code extension's
``contributes.configuration`` and the Neovim README against it. Defaults are ``Settings``' own.

Client input is untrusted and often hand-edited: every bad value is reported (one message listing
all of them) and replaced by the base value, never raised.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, Literal

from diffgemma_ls.engine.kinds import DEVICES, QUANTIZE_MODES
from diffgemma_ls.prompt import PROMPT_FORMATS

SECTION = "diffgemma"


def default_threads() -> int:
    """Leave one core to the editor where there are several."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass(frozen=True)
class Settings:
    """What the server serves and how; ``SCHEMA`` documents each field."""

    model: str | None = None  # None: the shipped default model
    quantize: str = "auto"
    device: str = "auto"
    prompt_format: str = "auto"
    canvas_length: int | None = None  # None: from the checkpoint (``Engine.defaults``)
    max_steps: int | None = None
    typing_max_steps: int | None = None
    latency_budget_ms: int = 1000
    debounce_ms: int | Literal["auto"] = 0
    candidates: int = 3
    languages: tuple[str, ...] = ()
    workspace_context: bool = True
    workspace_max_files: int = 2000
    cross_file_chars: int = 768
    tuned_weights: bool = True
    threads: int = 0  # 0: default_threads()
    allow_download: bool = False
    prompt_caches: int = 8
    typeahead: bool = True
    prefetch: bool = True
    warm_start: bool = True
    typing_copies: bool = True
    trust_remote_code: bool = False
    backend: str | None = None
    backend_model: str | None = None
    backend_api_key_env: str | None = None

    @property
    def model_key(self) -> tuple[str | None, ...]:
        """Settings whose change means rebuilding the engine (the prompt format is resolved at load)."""
        backend = (self.backend, self.backend_model, self.backend_api_key_env)
        return (self.model, self.quantize, self.device, self.prompt_format, *backend)


Kind = Literal["text", "choice", "int", "bool", "list"]


@dataclass(frozen=True)
class Option:
    """One setting: where it can be set, what values it takes, what it does (``doc``, for users)."""

    field: str
    kind: Kind
    doc: str
    client_key: str | None = None  # None: command line only
    flag: str | None = None  # None: client only
    choices: tuple[str, ...] = ()
    bounds: tuple[int, int] | None = None
    words: tuple[str, ...] = ()  # strings an int setting also takes ("auto")
    nullable: bool = False  # None (the client's null) means "the default"

    @property
    def default(self) -> Any:
        value = next(f.default for f in fields(Settings) if f.name == self.field)
        return None if value is MISSING else value


MAX_CANDIDATES = 8  # alternatives per explicit request: each is one more batch row

SCHEMA: tuple[Option, ...] = (
    Option(
        "model",
        "text",
        "model folder or Hugging Face id (looked up in the local cache only, unless `--allow-download`)",
        "model",
        "--model",
        nullable=True,
    ),
    Option(
        "quantize",
        "choice",
        "weights in 4 or 8 bits (bitsandbytes); `auto`: 4bit on CUDA, none elsewhere",
        "quantize",
        "--quantize",
        QUANTIZE_MODES,
    ),
    Option("device", "choice", "where the model runs", "device", "--device", DEVICES),
    Option(
        "prompt_format",
        "choice",
        "`auto`: `fim` where the tokenizer has FIM tokens (the shipped model), else `chat` (DiffusionGemma)",
        "promptFormat",
        "--prompt-format",
        PROMPT_FORMATS,
    ),
    Option(
        "canvas_length",
        "int",
        "tokens per canvas (a block continues over up to 3); the shipped model's 32, DiffusionGemma's 256",
        "canvasLength",
        bounds=(4, 1024),
        nullable=True,
    ),
    Option(
        "max_steps",
        "int",
        "denoising passes per canvas of an explicit request; the shipped model 16, DiffusionGemma its own 48",
        "maxSteps",
        bounds=(1, 1024),
        nullable=True,
    ),
    Option(
        "typing_max_steps",
        "int",
        "the same as you type, so that one is ready between two keys; the shipped model 3, DiffusionGemma 48",
        "typingMaxSteps",
        "--typing-max-steps",
        bounds=(1, 1024),
        nullable=True,
    ),
    Option(
        "latency_budget_ms",
        "int",
        "past it (ms), the current draft is answered if it survives post-processing",
        "latencyBudgetMs",
        bounds=(10, 600_000),
    ),
    Option(
        "debounce_ms",
        "int",
        "an as-you-type request waits this long (ms), dropped if a key comes; `auto`: 1.5x your pace, <= 250",
        "debounceMs",
        "--debounce-ms",
        bounds=(0, 5_000),
        words=("auto",),
    ),
    Option(
        "typing_copies",
        "bool",
        "as you type, a line (or block) that stands between the same lines as elsewhere in the file or "
        "workspace is the answer, without the model",
        "typingCopies",
        "--no-typing-copies",
    ),
    Option(
        "candidates",
        "int",
        "alternatives on an explicit request and per fill, decoded as one batch",
        "candidates",
        bounds=(1, MAX_CANDIDATES),
    ),
    Option("languages", "list", "language ids to complete beyond the model's own", "languages"),
    Option(
        "workspace_context",
        "bool",
        "the workspace's other files as context: their lines are copied where they stand between the "
        "same lines, else their best matching line is offered on an explicit request, and, for a model "
        "trained for it, their best matching chunks go in the prompt",
        "workspaceContext",
    ),
    Option(
        "workspace_max_files",
        "int",
        "source files of the workspace folders kept for that (git-ignored ones never)",
        "workspaceMaxFiles",
        bounds=(0, 100_000),
    ),
    Option(
        "cross_file_chars",
        "int",
        "the most characters of other files' chunks in a prompt (0: none)",
        "crossFileChars",
        bounds=(0, 16_000),
    ),
    Option(
        "tuned_weights",
        "bool",
        "serve the shipped model's weights that `diffgemma-ls tune` kept for the workspace, if any",
        "tunedWeights",
        "--no-tuned-weights",
    ),
    Option(
        "threads", "int", "CPU threads for the model; 0: cores - 1", "threads", "--threads", bounds=(0, 512)
    ),
    Option(
        "backend",
        "text",
        "an OpenAI-compatible server (vLLM) to complete with instead of a local model; `--model` then "
        "names only the tokenizer to prompt with",
        "backend",
        "--backend",
        nullable=True,
    ),
    Option(
        "backend_model",
        "text",
        "the model name to ask the backend for (default: the first in its `/v1/models`)",
        "backendModel",
        "--backend-model",
        nullable=True,
    ),
    Option(
        "backend_api_key_env",
        "text",
        "the environment variable that holds the backend's API key (the key itself is never a setting)",
        "backendApiKeyEnv",
        "--backend-api-key-env",
        nullable=True,
    ),
    Option("allow_download", "bool", "let a Hugging Face id download", flag="--allow-download"),
    Option("trust_remote_code", "bool", "run a checkpoint's own code", flag="--trust-remote-code"),
    Option(
        "prompt_caches",
        "int",
        "documents whose encoder cache is kept (0: off)",
        flag="--prompt-caches",
        bounds=(0, 1024),
    ),
    Option("typeahead", "bool", "reuse a shown completion while its text is typed", flag="--no-typeahead"),
    Option("prefetch", "bool", "compute the next completion once one is accepted", flag="--no-prefetch"),
    Option(
        "warm_start", "bool", "start a canvas from what is still valid of the last", flag="--no-warm-start"
    ),
)
OPTIONS = {option.field: option for option in SCHEMA}
CLIENT_KEYS = {option.client_key: option.field for option in SCHEMA if option.client_key}
# what every command takes, and what only the server does
MODEL_FLAGS = (
    "model",
    "quantize",
    "device",
    "prompt_format",
    "threads",
    "allow_download",
    "tuned_weights",
    "trust_remote_code",
    "backend",
    "backend_model",
    "backend_api_key_env",
)
SERVER_FLAGS = (
    "prompt_caches",
    "typeahead",
    "prefetch",
    "warm_start",
    "typing_copies",
    "debounce_ms",
    "typing_max_steps",
)


def validate_setting(name: str, value: Any) -> Any:
    """Return the value in its settings type, or raise ValueError with a message for the user."""
    option = OPTIONS[name]
    if option.nullable and value in (None, ""):
        return None
    if option.kind == "text":
        if not isinstance(value, str) or "\x00" in value or len(value) > 4096:
            raise ValueError("must be a folder path or a Hugging Face model id")
        return value
    if option.kind == "choice":
        if value not in option.choices:
            raise ValueError(f"must be one of {', '.join(option.choices)}")
        return value
    if option.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError('must be a list of language ids, e.g. ["python", "go"]')
        return tuple(value)
    if option.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if value in option.words:
        return value
    low, high = option.bounds or (0, 2**31)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        also = "".join(f' or "{word}"' for word in option.words)
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


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: tuple[str, ...]) -> None:
    """The CLI flags of these settings, checked as the client's values are (``validate_setting``)."""
    for name in names:
        option = OPTIONS[name]
        assert option.flag is not None, name
        if option.kind == "bool":
            off = option.flag.startswith("--no-")
            action = "store_false" if off else "store_true"
            parser.add_argument(option.flag, dest=name, action=action, default=None, help=option.doc)
            continue
        shown = f" (default: {option.default})" if option.default not in (None, "", 0, ()) else ""
        parser.add_argument(
            option.flag,
            dest=name,
            type=_flag_type(name),
            choices=option.choices or None,
            metavar=None if option.choices else name.upper().split("_")[-1],
            help=option.doc.replace("%", "%%") + shown,
        )


def _flag_type(name: str):
    def parse(text: str) -> Any:
        option = OPTIONS[name]
        value: Any = int(text) if option.kind == "int" and text.lstrip("-").isdigit() else text
        try:
            return validate_setting(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def settings_from_cli(args: argparse.Namespace) -> Settings:
    """The base settings from parsed CLI flags (a flag not given is ``None``: the default)."""
    given = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings(**{name: value for name, value in given.items() if value is not None})


def settings_table() -> str:
    """The README's table of settings, from ``SCHEMA``."""
    rows = ["| client key | CLI flag | default | meaning |", "|---|---|---|---|"]
    for option in SCHEMA:
        if option.client_key is None:
            continue
        default = option.default
        shown = "from the checkpoint" if option.nullable and default is None else f"`{default!r}`"
        if option.kind == "list":
            shown = "`[]`"
        elif option.kind == "bool":
            shown = f"`{str(default).lower()}`"
        if option.field == "model":
            shown = "the shipped code model"
        flag = f"`{option.flag}`" if option.flag else ""
        rows.append(f"| `{option.client_key}` | {flag} | {shown.replace(chr(39), chr(34))} | {option.doc} |")
    return "\n".join(rows)
