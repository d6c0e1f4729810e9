"""Fixtures of the viewer tests: a database of real jobs, and a viewer serving it."""

from __future__ import annotations

from pathlib import Path

import pytest

from viewer_testing import start_viewer, stop_viewer, submit_example_jobs


@pytest.fixture(scope="session")
def example_db(tmp_path_factory) -> Path:
    """A database with finished jobs of every kind (read-only for the tests)."""
    path = tmp_path_factory.mktemp("viewer-db")
    submit_example_jobs(path)
    return path


@pytest.fixture(scope="session")
def viewer(example_db):
    """A viewer of :func:`example_db`, serving in a thread."""
    running = start_viewer(example_db)
    yield running
    stop_viewer(running)
