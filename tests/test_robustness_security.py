"""Security boundaries the server side can prove.

* No network: the server runs with a hook that refuses and records any non-loopback connect.
* The workspace cannot configure the server: the model (and everything else) comes only from the
  command line, ``initializationOptions``, ``didChangeConfiguration`` and ``workspace/configuration``.
  The server never opens a file of the workspace it serves (an audit hook records every open under
  it), so ``.vscode/settings.json`` or a ``pyproject.toml`` cannot point it at a model; the VS Code
  extension makes ``model`` machine-scoped on its side. ``trustRemoteCode``/``allowDownload`` are not
  client settings at all: only the person starting the server can pass those flags.
* Checkpoints: safetensors only (a pickle next to them is never unpickled), a checkpoint's own code
  never runs without ``--trust-remote-code``.
* ``--tcp`` listens on 127.0.0.1 unless told otherwise, and warns when told otherwise.
* The log holds no document text unless verbose logging is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import shutil
import socket
import sys
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
    assert not open_log.exists(), open_log.read_text()  # not a single workspace file was opened
    logged = log_file.read_text()
    assert "completion" in logged  # the log is there and in use
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


async def _start_tcp(spec: str, log_file: Path, random_model_dir: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        CONSOLE_SCRIPT,
        "--tcp",
        spec,
        "--model",
        str(random_model_dir),
        "--threads",
        "1",
        "--log-file",
        str(log_file),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=server_env(),
    )


async def _until(check, timeout: float = 120) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.2)

    await asyncio.wait_for(poll(), timeout)


async def test_tcp_binds_loopback_by_default_and_warns_otherwise(
    random_model_dir: Path, tmp_path: Path
) -> None:
    """Both servers start at once (each start imports torch); the public one is stopped once it warned."""
    port = _free_port()
    default_log, public_log = tmp_path / "default.log", tmp_path / "public.log"
    default = await _start_tcp(str(port), default_log, random_model_dir)
    public = await _start_tcp(f"0.0.0.0:{_free_port()}", public_log, random_model_dir)
    try:
        await _until(lambda: _listening(port))
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, and nothing else
        await _until(lambda: public_log.exists() and "listening on 0.0.0.0" in public_log.read_text())
        assert "anyone who can reach this address" in public_log.read_text()
        assert "listening on" not in default_log.read_text()
    finally:
        for process in (default, public):
            if process.returncode is None:
                process.kill()
            await process.wait()


@pytest.mark.parametrize("spec", ["0", "127.0.0.1:70000", "host:", ":x"])
def test_tcp_rejects_bad_addresses(spec: str) -> None:
    from diffgemma_ls.cli import parse_tcp

    with pytest.raises(ValueError):
        parse_tcp(spec)
