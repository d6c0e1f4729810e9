"""Shared test setup: make sure the tests exercise the installed, compiled package."""

from __future__ import annotations

import os

import parallelaverage
from parallelaverage import _kernels


def pytest_report_header(config):
    return (
        f"parallelaverage {parallelaverage.__version__} from {os.path.dirname(parallelaverage.__file__)}; "
        f"native kernels: {_kernels.NATIVE}"
    )


def pytest_configure(config):
    if os.environ.get("PARALLELAVERAGE_REQUIRE_NATIVE") == "1" and not _kernels.NATIVE:
        raise RuntimeError(
            "PARALLELAVERAGE_REQUIRE_NATIVE=1 but parallelaverage._native is not importable: "
            "run pytest (not 'python -m pytest') from the repository root after 'pip install .', "
            "so that the installed package, not the source tree, is imported"
        )
