"""Run untrusted Python (a model's completion inside a HumanEval test) in a limited child process.

Never in the bench's or the server's process: a completion may loop forever, allocate without
bound, fork, write files or open sockets. Each program runs as ``python -I -S`` (no user site,
no ``PYTHON*`` variables, no site-packages: HumanEval needs only the standard library) in a fresh
temporary directory as its working directory and ``HOME``, with:

- **time**: a wall-clock limit (the whole process group is killed) and ``RLIMIT_CPU`` a second
  above it, so a busy loop dies even if the parent does;
- **memory**: ``RLIMIT_AS``, so allocation fails with ``MemoryError`` rather than swapping;
- **files**: ``RLIMIT_FSIZE`` and no core dumps;
- **network**: a new, empty network namespace (``unshare -n``, or ``unshare -rn`` through a user
  namespace when not root) where no interface, not even loopback, is up. Where neither works
  (some containers forbid namespaces) a prelude replaces ``socket`` constructors with ones that
  raise, and the environment carries no proxy variables; that stops accidents, not an
  adversary, and ``network_isolation()`` says which one is in force (the report shows it).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from typing import Literal

Status = Literal["passed", "failed", "timeout"]

# Installed before the program runs; in force alone only where namespaces are unavailable.
_PRELUDE = """\
import socket as _socket_module

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the diffgemma-ls bench sandbox")

class _NoSocket(_socket_module.socket):
    def __init__(self, *args, **kwargs):
        _no_network()

for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "socketpair", "fromfd"):
    setattr(_socket_module, _name, _no_network)
_socket_module.socket = _NoSocket
del _socket_module, _name, _NoSocket, _no_network
"""
OUTPUT_CHARS = 2000


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    returncode: int | None
    output: str  # the end of stdout and stderr, for reading why it failed
    seconds: float


@cache
def _unshare_prefix() -> tuple[str, ...] | None:
    """The ``unshare`` command line that works here, or ``None``."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (("unshare", "-n"), ("unshare", "-rn")):
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


def network_isolation() -> str:
    """``"namespace"`` when programs run without any network, ``"prelude"`` otherwise."""
    return "namespace" if _unshare_prefix() is not None else "prelude"


def _limit(limits: Limits):
    """The ``preexec_fn``: limits set in the child, between fork and exec."""

    def apply() -> None:
        memory = limits.memory_mb * 2**20
        cpu = int(limits.seconds) + 1
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _environment(home: str) -> dict[str, str]:
    """A minimal environment: no proxies, no ``PYTHON*`` variables, nothing of the caller's."""
    return {"PATH": os.defpath, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}


def run_python(source: str, limits: Limits | None = None) -> SandboxResult:
    """Run ``source`` as a program; ``passed`` means it exited with status 0 within the limits."""
    limits = limits or Limits()
    with tempfile.TemporaryDirectory(prefix="diffgemma-bench-") as work:
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8", errors="replace") as fh:  # lone surrogates: "?"
            fh.write(_PRELUDE + "\n" + source)
        command = [*(_unshare_prefix() or ()), sys.executable, "-I", "-S", program]
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=work,
            env=_environment(work),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit(limits),
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        try:
            output, _ = process.communicate(timeout=limits.seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            output, _ = process.communicate()
            timed_out = True
        seconds = time.monotonic() - started
    text = output.decode("utf-8", errors="replace")[-OUTPUT_CHARS:]
    killed_by_cpu_limit = process.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    if timed_out or killed_by_cpu_limit:
        return SandboxResult("timeout", process.returncode, text, seconds)
    return SandboxResult("passed" if process.returncode == 0 else "failed", process.returncode, text, seconds)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
