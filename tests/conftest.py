"""Shared fixtures. The oracle of the official BEATs code is read from ../shared/oracle."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("BEATS_ORACLE_DIR", REPO.parent / "shared" / "oracle"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (fairseq-hydra-train, subprocesses)")


@pytest.fixture(scope="session")
def oracle():
    """Loader for the oracle files: ``oracle('inputs')`` -> dict."""
    if not ORACLE.is_dir():
        pytest.fail(f"oracle folder {ORACLE} not found: clone the repo next to shared/ or set BEATS_ORACLE_DIR")

    def load(name):
        return torch.load(ORACLE / f"{name}.pt", weights_only=True)

    load.dir = ORACLE
    return load
