"""The engine's choices and errors by name, importable without torch: the CLI and the server start fast.

``initialize`` must be answered at once and ``diffgemma-ls --help`` should not load torch; what
they need of the engine (the names of its modes, the exceptions they catch) lives here, and the
modules that do the work import it from here.
"""

from __future__ import annotations

from typing import Literal

Quantize = Literal["auto", "none", "8bit", "4bit"]
QUANTIZE_MODES: tuple[Quantize, ...] = ("auto", "none", "8bit", "4bit")
DEVICES = ("auto", "cpu", "cuda", "mps")
DecodeMode = Literal["adaptive", "fixed", "sequential"]
DECODE_MODES: tuple[DecodeMode, ...] = ("adaptive", "fixed", "sequential")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message is meant for the user."""


class Cancelled(Exception):
    """The request was cancelled (by the client or a newer request) between two denoising steps."""


class BackendUnavailable(RuntimeError):
    """The HTTP backend failed this request (down, an error, garbage): the request gets no answer."""
