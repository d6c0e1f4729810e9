"""Helpers of the viewer tests: the example jobs, and a viewer serving in a thread."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from parallelaverage import parallel, parallel_average, wait
from parallelaverage.viewer import make_server

import viewer_models

CORRELATIONS = [(32, 0.5, 0.0), (32, 1.0, 0.0), (32, 2.0, 0.0), (16, 1.0, 0.0), (64, 3.0, 0.4)]  # (L, T, field)


@dataclass
class Viewer:
    """A running viewer: its URL with the token, its address without, the token."""

    server: object
    url: str
    base: str
    token: str
    path: Path


def submit_example_jobs(path: Path) -> None:
    """Submit every example job at once, then wait for all of them (a few seconds)."""
    options = dict(queuing_system="local", path=path, pickle_by_value=[viewer_models])
    correlation = parallel_average(N_runs=40, N_tasks=2, **options)(viewer_models.correlation)
    energy = parallel_average(N_runs=20, N_tasks=1, **options)(viewer_models.energy)
    flaky = parallel_average(N_runs=12, N_tasks=2, **options)(viewer_models.flaky)
    trajectory = parallel(N_runs=5, N_tasks=1, **options)(viewer_models.trajectory)
    observables = parallel_average(N_runs=10, N_tasks=1, average_results=[0, 1], **options)(viewer_models.observables)
    calls = [(correlation, (L,), {"T": T, "field": field}) for L, T, field in CORRELATIONS]
    calls += [(energy, (0.5,), {}), (energy, (1.0,), {}), (flaky, (4,), {}), (trajectory, (10,), {}),
              (observables, (8,), {})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the failed runs of flaky warn
        for function, args, kwargs in calls:
            function(*args, **kwargs)
        for function, args, kwargs in calls:
            wait(function)(*args, **kwargs)


def start_viewer(path: Path) -> Viewer:
    server, url = make_server(path)
    threading.Thread(target=server.serve_forever, name="viewer", daemon=True).start()
    base, token = url.split("/?token=")
    return Viewer(server, url, base, token, path)


def stop_viewer(viewer: Viewer) -> None:
    viewer.server.shutdown()
    viewer.server.server_close()
