"""Security boundaries the server side can prove.

* No network: the server runs with a hook that refuses and records any non-loopback connect.
* The workspace cannot configure the server: the model (and everything else) comes only from the
  command line, ``initializationOptions``, ``didChangeConfiguration`` and ``workspace/configuration``.
  Of the workspace it serves, the server opens source files only (their lines are copy rivals; an
  audit hook records every open under it), never ``.vscode/settings.json``, a ``pyproject.toml`` or
  any other file that could point it at a model; the VS Code
  extension makes ``model`` machine-scoped on its side. ``trustRemoteCode``/``allowDownload`` are not
  client settings at all: only the person starting the server can pass those flags.
* Checkpoints: safetensors only (a pickle next to them is never unpickled), a checkpoint's own code
  never runs without ``--trust-remote-code``.
* ``--tcp`` listens on 127.0.0.1 unless told otherwise, and warns when told otherwise.
* The log holds no document text unless verbose logging is on.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from diffgemma_ls.engine.loader import ModelLoadError, load_model
from tests.test_robustness_support import RawServer, install_hooks, server_env

MARKER = "SECRET_MARKER_7f3a9c"  # document text that must never reach the log
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("diffgemma-ls"))  # what the editors start


class _WritesFile:
    """Unpickling this creates a file: what a malicious pickle checkpoint could do, harmlessly."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_checkpoint_code_and_pickles_never_run(random_model_dir: Path, tmp_path: Path) -> None:
    """A checkpoint that ships code (auto_map) and a pickle beside its safetensors: neither executes."""
    model = tmp_path / "model"
    shutil.copytree(random_model_dir, model)
    ran = tmp_path / "checkpoint-code-ran"
    (model / "evil.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    unpickled = tmp_path / "pickle-ran"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesFile(unpickled)))
    with contextlib.suppress(ModelLoadError):  # refusing is fine too; running the code is not
        load_model(str(model), device="cpu")
    assert not ran.exists() and not unpickled.exists()


async def test_no_network_no_workspace_files_no_document_text_in_the_log(
    random_model_dir: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    (workspace / ".vscode").mkdir(parents=True)
    evil_model = tmp_path / "evil-model"
    (workspace / ".vscode" / "settings.json").write_text(
        json.dumps({"diffgemma.model": str(evil_model), "diffgemma.trustRemoteCode": True})
    )
    (workspace / "pyproject.toml").write_text(f'[tool.diffgemma]\nmodel = "{evil_model}"\n')
    (workspace / ".diffgemma.json").write_text(json.dumps({"model": str(evil_model)}))
    (workspace / "main.py").write_text(f"# {MARKER}\n")
    net_log, open_log, log_file = tmp_path / "net.log", tmp_path / "open.log", tmp_path / "server.log"
    env = server_env(
        install_hooks(tmp_path / "hooks"),
        DIFFGEMMA_TEST_NET_LOG=str(net_log),
        DIFFGEMMA_TEST_OPEN_LOG=str(open_log),
        DIFFGEMMA_TEST_WATCH=str(workspace),
    )
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # prove it without the usual safety net
        env.pop(offline, None)
    server = await RawServer.start(
        "--model",
        str(random_model_dir),
        "--log-file",
        str(log_file),
        env=env,
        cwd=workspace,
        program=[CONSOLE_SCRIPT],
    )
    try:
        root = workspace.as_uri()
        await server.initialize(
            {"diffgemma": {"trustRemoteCode": True, "allowDownload": True}},
            rootUri=root,
            workspaceFolders=[{"uri": root, "name": "workspace"}],
        )
        status = await server.wait_for_state("ready", "error")
        assert status["state"] == "ready" and status["model"] == str(random_model_dir)
        (settings_problem,) = [m for m in server.shown_messages() if "invalid settings" in m]
        assert "trustRemoteCode: unknown setting" in settings_problem
        assert "allowDownload: unknown setting" in settings_problem

        uri = (workspace / "main.py").as_uri()
        text = f"import os\n\n# {MARKER}\ndef main():\n    path = \n    print('{MARKER}')\n"
        server.open(uri, text)
        assert "result" in await server.inline(uri, 4, 11)
        change = {"range": {"start": {"line": 4, "character": 11}, "end": {"line": 4, "character": 11}}}
        server.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [change | {"text": MARKER}]},
        )
        assert "result" in await server.inline(uri, 4, 11 + len(MARKER))
        # faults that make pygls log what it received: a malformed open and a malformed request
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "version": "x", "text": MARKER}})
        bad = await server.request(
            "textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "text": MARKER}
        )
        assert bad["error"]["code"] == -32602

        # paths in settings are validated: a NUL byte or a non-string is refused, the model stays
        for model in ("/tmp/x\x00y", ["a"], "x" * 5000):
            server.notify("workspace/didChangeConfiguration", {"settings": {"diffgemma": {"model": model}}})
        await server.wait_for(
            lambda: len([m for m in server.shown_messages() if "diffgemma.model" in m]) == 3
        )
        assert (await server.debug_state(uri))["documents"] == 1
        statuses = [n["params"]["state"] for n in server.notifications if n["method"] == "diffgemma/status"]
        assert statuses.count("loading") == 1 and statuses[-1] == "ready"  # no reload was attempted
    finally:
        await server.close()
    assert not net_log.exists(), net_log.read_text()
    opened = set(open_log.read_text().splitlines()) if open_log.exists() else set()
    assert opened <= {str(workspace / "main.py")}, opened  # source files only: nothing that configures
    logged = log_file.read_text()
    assert "completion" in logged  # the log is there and in use
    assert "workspace: 1 source files from 1 folder(s)" in logged  # main.py: read for its lines
    assert MARKER not in logged


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as the kernel lists them) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


@dataclass
class _TcpServers:
    port: int  # the default server's port
    default_log: Path
    public_log: Path
    processes: list[subprocess.Popen]


def _start_tcp(spec: str, log_file: Path, model: Path) -> subprocess.Popen:
    command = [
        CONSOLE_SCRIPT,
        "--tcp",
        spec,
        "--model",
        str(model),
        "--threads",
        "1",
        "--log-file",
        str(log_file),
    ]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=server_env(),
    )


def _kill_once_warned(process: subprocess.Popen, log_file: Path) -> None:
    """Stop the server told to listen on every address as soon as it warned: it serves nobody."""
    while process.poll() is None:
        if log_file.exists() and "listening on" in log_file.read_text():
            process.kill()
        time.sleep(0.1)


@pytest.fixture(scope="module", autouse=True)
def tcp_servers(random_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TcpServers]:
    """Started first, so their imports of torch overlap the module's other tests instead of adding up."""
    logs = tmp_path_factory.mktemp("tcp")
    servers = _TcpServers(_free_port(), logs / "default.log", logs / "public.log", [])
    servers.processes.append(_start_tcp(str(servers.port), servers.default_log, random_model_dir))
    public = _start_tcp(f"0.0.0.0:{_free_port()}", servers.public_log, random_model_dir)
    servers.processes.append(public)
    threading.Thread(target=_kill_once_warned, args=(public, servers.public_log), daemon=True).start()
    yield servers
    for process in servers.processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_tcp_binds_loopback_by_default_and_warns_otherwise(tcp_servers: _TcpServers) -> None:
    deadline = time.monotonic() + 120
    while not _listening(tcp_servers.port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _listening(tcp_servers.port) == ["0100007F"]  # 127.0.0.1, and nothing else
    assert tcp_servers.processes[1].wait(120) is not None
    public = tcp_servers.public_log.read_text()
    assert "listening on 0.0.0.0" in public and "anyone who can reach this address" in public
    assert "listening on" not in tcp_servers.default_log.read_text()


@pytest.mark.parametrize("spec", ["0", "127.0.0.1:70000", "host:", ":x"])
def test_tcp_rejects_bad_addresses(spec: str) -> None:
    from diffgemma_ls.cli import parse_tcp

    with pytest.raises(ValueError):
        parse_tcp(spec)
