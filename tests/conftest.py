"""Shared test setup: make sure the tests exercise the installed, compiled package."""

from __future__ import annotations

import os

import pytest

import parallelaverage
from parallelaverage import _kernels, _momentkernels
from parallelaverage.backends import slurm as slurm_backend


def pytest_report_header(config):
    return (
        f"parallelaverage {parallelaverage.__version__} from {os.path.dirname(parallelaverage.__file__)}; "
        f"native kernels: {_kernels.NATIVE}, moments {_momentkernels.NATIVE}"
    )


def pytest_configure(config):
    if os.environ.get("PARALLELAVERAGE_REQUIRE_NATIVE") == "1" and not (_kernels.NATIVE and _momentkernels.NATIVE):
        raise RuntimeError(
            "PARALLELAVERAGE_REQUIRE_NATIVE=1 but parallelaverage._native or _native_moments is not importable: "
            "run pytest (not 'python -m pytest') from the repository root after 'pip install .', "
            "so that the installed package, not the source tree, is imported"
        )


@pytest.fixture(autouse=True)
def fresh_slurm_memory(monkeypatch):
    """Each test is a process that has asked SLURM nothing yet: the queue watcher and
    what sbatch refusals taught are per process."""
    monkeypatch.setattr(slurm_backend, "_WATCHER", None)
    monkeypatch.setattr(slurm_backend, "_SUBMITS", slurm_backend._SubmitMemory())
