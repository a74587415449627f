"""``diffgemma-ls tune``: real training steps on a workspace, measured before and after, stored in the
user's cache (never the repository), resumed, kept only when better, and served for that workspace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffgemma_ls.completion import load_engine
from diffgemma_ls.config import Settings
from diffgemma_ls.engine.loader import default_model_path
from diffgemma_ls.tune import TuneError, tune
from diffgemma_ls.tuned import WEIGHTS, TuneRecord, tune_dir, tuned_weights, weights_id
from tests.test_robustness_support import RawServer, server_env


def make_repo(folder: Path, files: int = 8) -> Path:
    for i in range(files):
        body = "".join(
            f"def handler_{i}_{j}(request, session):\n"
            f"    payload = session.fetch(request.key_{j}, retries={j})\n"
            f"    return payload.decode('utf-8') if payload else None\n\n"
            for j in range(20)
        )
        (folder / "pkg").mkdir(parents=True, exist_ok=True)
        (folder / "pkg" / f"mod_{i}.py").write_text(f'"""Module {i}."""\n\n' + body)
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def test_tune_trains_measures_resumes_and_keeps_only_an_improvement(
    tmp_path: Path, cache: Path, random_model_dir: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    before_files = sorted(p for p in repo.rglob("*"))
    said: list[str] = []
    settings = Settings(threads=1)
    record = tune(repo, random_model_dir, 0.05, settings, say=said.append, heldout=6)
    folder = tune_dir(repo)
    assert folder.is_relative_to(cache / "diffgemma-ls" / "tuned")
    assert sorted(p for p in repo.rglob("*")) == before_files  # nothing written into the repository
    assert record.steps > 0 and record.tokens > 0 and record.train_files == 6 and record.heldout_files == 2
    assert record.before is not None and record.after is not None and record.before.tasks == 6
    assert record.kept == (record.after.similarity > record.before.similarity)
    assert (folder / WEIGHTS / "config.json").is_file() == record.kept
    assert any(line.startswith(("kept:", "not kept:")) for line in said)
    assert TuneRecord.load(folder) == record

    again = tune(repo, random_model_dir, 0.05, settings, say=said.append, heldout=6)
    assert any(line.startswith("resuming after") for line in said)
    assert again.steps > record.steps and len(again.history) == 2
    assert again.before == record.before  # the starting weights are measured once

    fresh = tune(repo, random_model_dir, 0.02, settings, fresh=True, say=said.append, heldout=6)
    assert fresh.steps < again.steps and len(fresh.history) == 1


def test_too_little_code_says_so(tmp_path: Path, cache: Path, random_model_dir: Path) -> None:
    (tmp_path / "one.py").write_text("x = 1\n")
    with pytest.raises(TuneError, match="too little code"):
        tune(tmp_path, random_model_dir, 0.05, Settings(threads=1))
    result = subprocess.run(
        [sys.executable, "-m", "diffgemma_ls", "tune", str(tmp_path)],
        capture_output=True,
        text=True,
        env=server_env(XDG_CACHE_HOME=str(cache)),
        timeout=120,
    )
    assert result.returncode == 2 and "too little code" in result.stderr
    assert not cache.exists() or not any(cache.rglob("record.json"))


def test_a_uniform_noise_checkpoint_is_refused(tmp_path: Path, cache: Path, uniform_model_dir: Path) -> None:
    with pytest.raises(TuneError, match="mask"):
        tune(make_repo(tmp_path), uniform_model_dir, 0.05, Settings(threads=1))


def keep_fake_tune(repo: Path, weights_from: Path, base: str) -> Path:
    """A kept tune of ``repo`` whose weights are ``weights_from``'s, made from weights ``base``."""
    folder = tune_dir(repo)
    shutil.copytree(weights_from, folder / WEIGHTS)
    TuneRecord(str(repo.resolve()), base, kept=True).save(folder)
    return folder / WEIGHTS


def test_kept_weights_serve_their_workspace_only(tmp_path: Path, cache: Path, random_model_dir: Path) -> None:
    repo, other = make_repo(tmp_path / "repo"), make_repo(tmp_path / "other")
    weights = keep_fake_tune(repo, random_model_dir, weights_id(default_model_path()))
    assert tuned_weights([other, repo], default_model_path()) == (repo, weights)
    engine = load_engine(Settings(threads=1), [repo])
    assert engine.tuned_for == repo and Path(engine.loaded.path) == weights.resolve()
    assert load_engine(Settings(threads=1, tuned_weights=False), [repo]).tuned_for is None
    assert load_engine(Settings(threads=1), [other]).tuned_for is None
    # a tune of other weights (an older shipped model) does not apply
    TuneRecord(str(repo.resolve()), "0" * 40, kept=True).save(tune_dir(repo))
    assert tuned_weights([repo], default_model_path()) is None

    TuneRecord(str(repo.resolve()), weights_id(default_model_path()), kept=True).save(tune_dir(repo))
    info = subprocess.run(
        [sys.executable, "-m", "diffgemma_ls", "info", "--json", "--workspace", str(repo)],
        capture_output=True,
        text=True,
        env=server_env(XDG_CACHE_HOME=str(cache)),
        timeout=120,
    )
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["tuned_for"] == str(repo)
    forget = subprocess.run(
        [sys.executable, "-m", "diffgemma_ls", "tune", str(repo), "--forget"],
        capture_output=True,
        text=True,
        env=server_env(XDG_CACHE_HOME=str(cache)),
        timeout=120,
    )
    assert forget.returncode == 0 and not tune_dir(repo).exists()


def test_broken_tuned_weights_fall_back_to_the_shipped_ones(tmp_path: Path, cache: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    weights = keep_fake_tune(repo, default_model_path(), weights_id(default_model_path()))
    for shard in weights.glob("*.safetensors"):
        shard.unlink()  # a tune killed while it swapped its folders
    engine = load_engine(Settings(threads=1), [repo])
    assert engine.tuned_for is None and Path(engine.loaded.path) == default_model_path().resolve()


async def test_the_server_serves_and_names_the_workspaces_tuned_weights(
    tmp_path: Path, cache: Path, random_model_dir: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    keep_fake_tune(repo, random_model_dir, weights_id(default_model_path()))
    server = await RawServer.start(env=server_env(XDG_CACHE_HOME=str(cache)))
    try:
        root = repo.as_uri()
        await server.initialize(rootUri=root, workspaceFolders=[{"uri": root, "name": "repo"}])
        status = await server.wait_for_state("ready", "error")
        assert status["state"] == "ready" and status["tunedFor"] == str(repo)
        uri = (repo / "pkg" / "new.py").as_uri()
        server.open(uri, "def handler(request, session):\n    payload = session.")
        answer = await server.inline(uri, 1, 22)
        assert "result" in answer
    finally:
        await server.close()
