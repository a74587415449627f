"""End to end in a real VS Code (code-server, headless Chromium): the packaged extension starts the server,
ghost text from the model appears, Tab accepts it, and the saved file holds it; a selected function body
filled from the editor's context menu is replaced by the model's fill, and the file still parses.

The browser side is tests/editors/vscode_driver.cjs (playwright-core); editors/setup.sh installs it all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.editors.conftest import (
    DEPS,
    LATENCY_BUDGET_MS,
    REPO,
    expected_completion,
    expected_fill,
    missing_tool,
    parses,
    server_command,
)

HARNESS = DEPS / "harness"
CODE_SERVER = HARNESS / "node_modules" / ".bin" / "code-server"
NODE = DEPS / "node24" / "node_modules" / "node" / "bin" / "node"
VSIX = REPO / "editors" / "vscode" / "diffgemma.vsix"
DRIVER = Path(__file__).with_name("vscode_driver.cjs")
ARTIFACTS = DEPS / "artifacts"  # screenshots, one per test

BEFORE = "import os\n\n\ndef main():\n    \n    print(path)\n"
LINE = 5  # 1-based: the empty body line
TYPED = "path = "
AFTER_TYPING = BEFORE.replace("\n    \n", f"\n    {TYPED}\n", 1)
FILL_BEFORE = "def area(w, h):\n    result = w * h\n    return result\n\n\nprint(area(2, 3))\n"
TIMEOUT_S = 150


@dataclass
class CodeServer:
    url: str
    workspace: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tools() -> str:
    """The Chromium to drive, after checking everything else the test needs is there."""
    chromium = shutil.which("chromium")
    for needed, what in ((CODE_SERVER, "code-server"), (NODE, "Node 24"), (VSIX, "the packaged extension")):
        if not needed.exists():
            missing_tool(f"{what} not found at {needed}")
    if chromium is None:
        missing_tool("chromium not found (apt-get install chromium)")
    return chromium


def _machine_settings(model_dir: Path, server_log: Path) -> dict[str, object]:
    """Machine-scoped settings: code-server (a remote) reads them from its Machine settings only."""
    return {
        "diffgemma.server.command": server_command(model_dir, server_log),
        "diffgemma.model": str(model_dir),
    }


def _user_settings() -> dict[str, object]:
    return {
        "diffgemma.latencyBudgetMs": LATENCY_BUDGET_MS,
        "editor.inlineSuggest.enabled": True,
        "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
        "editor.suggestOnTriggerCharacters": False,
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "security.workspace.trust.enabled": False,
        "telemetry.telemetryLevel": "off",
        "update.mode": "none",
        "extensions.autoCheckUpdates": False,
        "extensions.autoUpdate": False,
        "extensions.ignoreRecommendations": True,
        "chat.disableAIFeatures": True,
        "files.autoSave": "off",
    }


@pytest.fixture
def code_server(tmp_path: Path, editor_model_dir: Path) -> Iterator[CodeServer]:
    _tools()
    home, tmp, data, extensions = (tmp_path / d for d in ("home", "tmp", "data", "extensions"))
    workspace = tmp_path / "workspace"
    for d in (home, tmp, data / "User", data / "Machine", extensions, workspace / ".vscode"):
        d.mkdir(parents=True)
    (workspace / "example.py").write_text(BEFORE)
    (workspace / "fill.py").write_text(FILL_BEFORE)
    # a cloned repository cannot choose the model: `diffgemma.model` is machine-scoped
    (workspace / ".vscode" / "settings.json").write_text(json.dumps({"diffgemma.model": "/workspace/evil"}))
    server_log = tmp_path / "server.log"
    (data / "User" / "settings.json").write_text(json.dumps(_user_settings()))
    (data / "Machine" / "settings.json").write_text(
        json.dumps(_machine_settings(editor_model_dir, server_log))
    )
    port = _free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"bind-addr: 127.0.0.1:{port}\nauth: none\ncert: false\n")

    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "PATH": f"{NODE.parent}:{os.environ['PATH']}"}
    dirs = ["--user-data-dir", str(data), "--extensions-dir", str(extensions)]
    subprocess.run(
        [str(CODE_SERVER), *dirs, "--install-extension", str(VSIX)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = tmp_path / "code-server.log"
    flags = ["--auth", "none", "--bind-addr", f"127.0.0.1:{port}", "--disable-telemetry"]
    flags += ["--disable-update-check", "--disable-workspace-trust"]
    process = subprocess.Popen(
        [str(CODE_SERVER), "--config", str(config), *dirs, *flags, str(workspace)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the extension host outlives the browser
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process)
        yield CodeServer(url, workspace, server_log)
    finally:
        _stop_group(process)
        if server_log.exists():
            print("--- server log (tail) ---\n" + "\n".join(server_log.read_text().splitlines()[-30:]))


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """TERM, then KILL what is left of the group (the extension host and the language server)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "code-server exited"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("code-server did not start listening")


def drive(code_server: CodeServer, model_dir: Path, tmp_path: Path, **job: object) -> dict[str, object]:
    """Run tests/editors/vscode_driver.cjs on ``job`` (its kind, file and steps) and return what it saw."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    job |= {
        "harness": str(HARNESS),
        "chromium": _tools(),
        "url": code_server.url,
        "folder": str(code_server.workspace),
        "modelName": model_dir.name,
        "screenshot": str(ARTIFACTS / f"vscode-e2e-{job['kind']}.png"),
        "timeoutMs": TIMEOUT_S * 1000 // 2,
        "ghostTimeoutMs": 60_000,
    }
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    run = subprocess.run(
        [str(NODE), str(DRIVER), str(job_file)], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert run.stdout.strip(), run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"screenshot: {job['screenshot']}\nseen: {seen}")
    assert seen["error"] is None, seen["error"]
    return seen


def test_ghost_text_in_vscode(code_server: CodeServer, editor_model_dir: Path, tmp_path: Path) -> None:
    offset = AFTER_TYPING.index(TYPED) + len(TYPED)
    expected = expected_completion(editor_model_dir, AFTER_TYPING, offset)
    seen = drive(
        code_server,
        editor_model_dir,
        tmp_path,
        kind="ghost",
        file="example.py",
        waitForLine="print(path)",
        line=LINE,
        typed=TYPED,
        expected=expected,
    )

    # the status bar shows the user's model (not the workspace's) with the last latency
    assert editor_model_dir.name in seen["statusBar"] and "ms" in seen["statusBar"]
    # the ghost text is the server's answer for this position
    assert seen["ghostText"].strip() == expected.strip()
    on_disk = (code_server.workspace / "example.py").read_text()
    assert on_disk == AFTER_TYPING[:offset] + expected + AFTER_TYPING[offset:]
    server_log = code_server.log.read_text()
    assert "completion" in server_log and "/workspace/evil" not in server_log


def test_fill_selection_in_vscode(code_server: CodeServer, editor_model_dir: Path, tmp_path: Path) -> None:
    start = FILL_BEFORE.index("    result")
    end = FILL_BEFORE.index("\n\n\n") + 1  # lines 2-3, as Shift+Down twice from column 1 selects them
    expected = expected_fill(editor_model_dir, FILL_BEFORE, start, end)
    seen = drive(
        code_server,
        editor_model_dir,
        tmp_path,
        kind="fill",
        file="fill.py",
        waitForLine="print(area",
        line=2,
        selectLines=2,
        rightClickOn="result = w",
    )

    assert seen["contextMenu"]
    on_disk = (code_server.workspace / "fill.py").read_text()
    assert on_disk == expected != FILL_BEFORE
    assert on_disk.startswith("def area(w, h):\n    ") and on_disk.endswith("\n\n\nprint(area(2, 3))\n")
    assert parses(on_disk), on_disk
