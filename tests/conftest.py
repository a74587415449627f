"""Shared fixtures: tiny DiffusionGemma checkpoints built once per test session (nothing downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tiny


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights, mask noise: for loading, protocol and timing tests (its text is noise)."""
    return tiny.build_tiny_model(tmp_path_factory.mktemp("random-model"))


@pytest.fixture(scope="session")
def uniform_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights with DiffusionGemma's own uniform noise: the real checkpoint's sampler path."""
    return tiny.build_tiny_model(tmp_path_factory.mktemp("uniform-model"), noise_kind="uniform")


@pytest.fixture(scope="session")
def constant_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained for seconds to fill every canvas position with ``tiny.CONSTANT_TOKEN``."""
    return tiny.train_constant_model(tmp_path_factory.mktemp("constant-model"))
