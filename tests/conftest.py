"""Shared pytest configuration: offline environment, slow-test gating, reference data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Fixture modules shared across test packages (servers, COG writers, Ray runtime, ...).
pytest_plugins: list[str] = [
    "tests.fixtures.servers",
    "tests.fixtures.cogs",
    "tests.fixtures.s3",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.ray_runtime",
    "tests.fixtures.crobim_data",
    "tests.fixtures.crobim_models",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: pass --runslow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (real rasters and STAC items); skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"reference data folder {SHARED_DATA} is absent (expected ../shared/data beside the checkout)"
        )
    return SHARED_DATA
