"""Faults: broken checkpoints, a model too large for the machine, and a crash inside a denoising run.

Loader faults run in-process (no server start needed to read an error message); the memory limit runs
the loader in a subprocess under ``RLIMIT_AS``, so nothing here can reach the real OOM killer; the
crash is injected into the real server from outside (``tests/test_robustness_support.py`` hooks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffgemma_ls.engine.loader import ModelLoadError, load_model
from tests.test_robustness_support import RawServer, install_hooks, server_env

URI = "file:///faults/main.py"
TEXT = "import os\n\n\ndef main():\n    path = \n    print(path)\n"
FAULTY_KEYSTROKES = 6


def _copy(model: Path, folder: Path) -> Path:
    shutil.copytree(model, folder)
    return folder


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


@pytest.fixture(scope="module")
def broken_models(random_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken-models")
    truncated = _copy(random_model_dir, root / "truncated")
    weights = _weights(truncated)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    wrong = root / "wrong-architecture"
    wrong.mkdir()
    (wrong / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 1})
    )
    (wrong / "model.safetensors").write_bytes(_weights(random_model_dir).read_bytes())
    pickled = _copy(random_model_dir, root / "pickle-only")
    _weights(pickled).rename(pickled / "pytorch_model.bin")
    no_config = _copy(random_model_dir, root / "no-config")
    (no_config / "config.json").unlink()
    return {
        "missing": root / "does-not-exist",
        "truncated": truncated,
        "wrong-architecture": wrong,
        "pickle-only": pickled,
        "no-config": no_config,
        "a-file": weights,
    }


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing", "is not a folder"),
        ("truncated", "cannot load the model"),
        ("wrong-architecture", "not DiffusionGemma"),
        ("pickle-only", "no .safetensors weights"),
        ("no-config", "has no config.json"),
        ("a-file", "is not a folder"),
    ],
)
def test_broken_checkpoints_fail_with_a_clear_error(
    broken_models: dict[str, Path], case: str, says: str
) -> None:
    with pytest.raises(ModelLoadError) as error:
        load_model(str(broken_models[case]), device="cpu")
    assert says in str(error.value)
    assert str(broken_models[case].name) in str(error.value)  # the message says which model


_UNDER_LIMIT = """
import json, resource, sys
from diffgemma_ls.engine.loader import ModelLoadError, _proc_status_kib, load_model

room = int(sys.argv[3])
limit = _proc_status_kib("VmSize") * 1024 + room
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
results = {}
for name in sys.argv[1:3]:
    try:
        load_model(name, device="cpu")
        results[name] = "loaded"
    except ModelLoadError as exc:
        results[name] = str(exc)
print(json.dumps(results))
"""


def test_model_too_large_is_refused_before_allocating(random_model_dir: Path, tmp_path: Path) -> None:
    """Under an address-space limit, a checkpoint that cannot fit is refused by size, not by the OOM killer.

    The large checkpoint is sparse (an 8 GiB tensor in its header, nothing on disk); the small one loads
    under the same limit, so the refusal is the size check and not a limit too tight to load anything.
    """
    large = _copy(random_model_dir, tmp_path / "large")
    header = json.dumps(
        {"extra.weight": {"dtype": "F16", "shape": [1 << 30, 4], "data_offsets": [0, 8 << 30]}}
    )
    with open(large / "model-extra.safetensors", "wb") as f:  # a valid header, sparse data
        f.write(len(header).to_bytes(8, "little") + header.encode())
        f.truncate(8 + len(header) + (8 << 30))
    room = 1 << 30  # 1 GiB of address space beyond what the interpreter and torch already map
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_LIMIT, str(large), str(random_model_dir), str(room)],
        capture_output=True,
        text=True,
        timeout=180,
        env=server_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert "GiB is free" in results[str(large)] and "--quantize 4bit" in results[str(large)]
    assert results[str(random_model_dir)] == "loaded"


async def test_crash_inside_denoising_fails_that_request_and_is_told_once(
    constant_model_dir: Path, broken_models: dict[str, Path], tmp_path: Path
) -> None:
    """Faults in forward passes: each request is answered, the user hears once, serving resumes.

    The same server then gets a broken checkpoint by configuration (told once, answered empty) and the
    good one back (serving again): a fault never takes the process down.
    """
    trigger = tmp_path / "fail-now"
    env = server_env(install_hooks(tmp_path / "hooks"), DIFFGEMMA_TEST_FAIL_FILE=str(trigger))
    server = await RawServer.start("--model", str(constant_model_dir), env=env)
    try:
        await server.initialize()
        assert (await server.wait_for_state("ready", "error"))["state"] == "ready"
        server.open(URI, TEXT)
        assert "result" in await server.inline(URI, 4, 11)
        trigger.write_text("")
        for keystroke in range(FAULTY_KEYSTROKES):
            server.notify(
                "textDocument/didChange",
                {
                    "textDocument": {"uri": URI, "version": keystroke + 2},
                    "contentChanges": [
                        {
                            "range": {
                                "start": {"line": 4, "character": 11},
                                "end": {"line": 4, "character": 11},
                            },
                            "text": " ",
                        }
                    ],
                },
            )
            answer = await server.inline(URI, 4, 12 + keystroke)
            assert answer.get("result", {}).get("items") == [], answer  # failed: an empty answer
        faults = len(trigger.read_text())
        assert faults >= FAULTY_KEYSTROKES
        failures = [m for m in server.shown_messages() if "completion failed" in m]
        assert len(failures) == 1, failures  # told once, not on every keystroke
        assert "RuntimeError" in failures[0]
        trigger.unlink()
        answer = await server.inline(URI, 4, 11 + FAULTY_KEYSTROKES)
        assert answer["result"]["items"], answer  # serving again

        server.notify(
            "workspace/didChangeConfiguration",
            {"settings": {"diffgemma": {"model": str(broken_models["truncated"])}}},
        )
        await server.wait_for_state("error")
        for _ in range(3):
            assert (await server.inline(URI, 4, 11))["result"]["items"] == []
        assert len([m for m in server.shown_messages() if "cannot load the model" in m]) == 1
        server.notify(
            "workspace/didChangeConfiguration",
            {"settings": {"diffgemma": {"model": str(constant_model_dir)}}},
        )
        await server.wait_for_state("ready")
        assert (await server.inline(URI, 4, 11))["result"]["items"]
        state = await server.debug_state()
        assert state["inflight"] == 0 and state["pendingFutures"] == 0, state
        print(f"robustness: {faults} forward-pass faults injected, 1 message shown")
    finally:
        await server.close()
