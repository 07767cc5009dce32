"""Fixtures of the datasource tests: an offline, quiet Hugging Face setup, the tiny tabular
dataset (tables.py) and a user's loader module."""

from __future__ import annotations

import textwrap
from pathlib import Path

import datasets
import flwr_datasets.common.telemetry
import pytest

from fedfish import datasource
from tests.datasource.tables import LOADER_MODULE, Tabular, write_tabular


@pytest.fixture(autouse=True)
def _offline_quiet_hf(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """HF cache in a temp dir, no progress bars, no flwr-datasets telemetry, fresh caches."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-cache")
    monkeypatch.setattr(flwr_datasets.common.telemetry, "FLWR_TELEMETRY_ENABLED", "0")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    datasource.clear_cache()
    if bars:
        datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Tabular:
    """200 train / 40 test rows: 6 float features, 4 classes, 8 writers (25 train rows each)."""
    return write_tabular(tmp_path_factory.mktemp("tabular"))


@pytest.fixture
def loader_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module, importable as ``user_loaders``."""
    (tmp_path / "user_loaders.py").write_text(textwrap.dedent(LOADER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_loaders"
