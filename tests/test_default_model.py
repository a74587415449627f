"""The shipped default model: present, small, loadable offline, and packaged into the wheel."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from diffgemma_ls.engine.infill import DecodeOptions, Engine
from diffgemma_ls.engine.loader import default_model_path, load_model

ROOT = Path(__file__).resolve().parents[1]


def test_default_model_is_small_and_complete() -> None:
    folder = default_model_path()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), name
    assert sum(f.stat().st_size for f in folder.iterdir()) < 40 * 2**20


def test_default_model_loads_offline_and_denoises(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine(load_model(None, device="cpu"))
    config = engine.model.config
    assert config.noise_kind == "mask" and config.code_languages == ["python"]
    result = engine.infill("def add(a, b):\n    return ", "\n", DecodeOptions(max_steps=8))
    assert 1 <= result.forward_passes <= 8


def test_wheel_ships_the_default_model(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("diffgemma_ls-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert f"diffgemma_ls/default_model/{name}" in names
    # installed (the unpacked wheel, without the editable install's .pth finder: -S), the package
    # finds its own copy, not the checkout's
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    found = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "from diffgemma_ls.engine.loader import default_model_path as p; print(p())",
        ],
        env={"PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,  # not the checkout, which `python -c` would put first on the path
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert Path(found.stdout.strip()) == site / "diffgemma_ls" / "default_model"
