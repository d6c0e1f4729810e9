"""The viewer at 10,000 jobs: how soon the first page is there, and what a list request costs.

Usage::

    python bench/viewer.py [--jobs 10000] [--reps 30] [--dir PATH] [--no-browser]

Creates a database of ``--jobs`` jobs through the public job-database API (statuses
and run counts varied, 20 of the newest still running), then measures:

* ``first_page_http``: a fresh viewer (nothing cached; the server is created at the
  start of the clock) to the page, its script and style sheet and the first
  ``/api/jobs`` page answered, over HTTP; ``all_records_http`` until
  ``/api/functions`` is answered too, which needs every record read.
* ``first_page_browser``: the same in headless Chromium (Debian's ``chromium``,
  through Playwright), until the first table row is on the screen; skipped
  without them or with ``--no-browser``.
* ``list``: one ``/api/jobs`` request of 100 jobs on a warm viewer; ``list_rescan``
  the same when every request also looks for changed ``job.json`` files (the viewer
  does so at most once a second); ``list_filtered`` with a function and an
  argument filter; ``functions``: ``/api/functions``.

Baseline in the same run: :meth:`JobDatabase.jobs`, which reads every ``job.json``
(what a viewer without its cache would do on each request). The target is a first
page in at most 1 s at 10,000 jobs.

Prints a table, then one JSON line of the figures (milliseconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

try:
    from parallelaverage.jobdb import JobDatabase, call_key, code_hash, new_record
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from parallelaverage.jobdb import JobDatabase, call_key, code_hash, new_record
from parallelaverage.viewer import make_server

TARGET_FIRST_PAGE_MS = 1000.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def simulate(L: int, T: float = 2.5, *, seed: int = 0) -> float:
    """The benchmark's stand-in user function."""
    return L * T + seed


CODE_HASH = code_hash(simulate)


def fill(db: JobDatabase, n_jobs: int) -> None:
    """``n_jobs`` jobs with varied statuses; the 20 newest are running."""
    for i in range(n_jobs):
        key = call_key(simulate, (16 * (1 + i % 8),), {"T": round(1.0 + (i // 8) % 50 * 0.05, 2), "seed": i}, N_runs=100)
        running = i >= n_jobs - 20
        failed = 0 if running else (i % 7 == 0) * (i % 5)
        done = (i % 100) if running else 100 - failed - (i % 11 == 0) * 10
        status = "running" if running else ("ended" if done + failed < 100 else "completed")

        def make(name: str, key=key, status=status, done=done, failed=failed):
            record = new_record(key, name, code_hash=CODE_HASH, options={"N_tasks": 4}, status=status, queue="local")
            return dataclasses.replace(record, n_successful=done, n_failed=failed, n_not_ready=100 - done - failed)

        db.get_or_create(key, make)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def serve(path: Path):
    server, url = make_server(path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, url


def stop(server) -> None:
    server.shutdown()
    server.server_close()


def first_page_http(path: Path) -> tuple[float, float]:
    """Seconds from creating a viewer to the first page of jobs (page, script, style
    sheet, ``/api/jobs``), and to everything (``/api/functions`` too, which needs every record)."""
    start = time.perf_counter()
    server, url = serve(path)
    base, token = url.split("/?token=")
    get(url)
    for asset in ("static/viewer.js", "static/viewer.css", "api/jobs?offset=0&limit=100"):
        get(f"{base}/{asset}{'&' if '?' in asset else '?'}token={token}")
    first = time.perf_counter() - start
    get(f"{base}/api/functions?token={token}")
    everything = time.perf_counter() - start
    stop(server)
    return first, everything


def first_page_browser(path: Path, reps: int) -> tuple[list[float], list[float]] | None:
    """Seconds to the first job row in Chromium: fresh viewers, then reloads of a warm one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not os.path.exists(CHROMIUM):
        return None
    cold, warm = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(reps):
            page = browser.new_page()
            start = time.perf_counter()
            server, url = serve(path)
            page.goto(url)
            page.wait_for_selector("#jobs tbody tr.job")
            cold.append(time.perf_counter() - start)
            for _ in range(3):
                start = time.perf_counter()
                page.reload()
                page.wait_for_selector("#jobs tbody tr.job")
                warm.append(time.perf_counter() - start)
            rows = page.locator("#jobs tbody tr.job").count()
            assert rows == 100, f"the first page shows {rows} jobs, expected 100"
            page.close()
            stop(server)
        browser.close()
    return cold, warm


def time_requests(url: str, reps: int) -> list[float]:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        get(url)
        samples.append(time.perf_counter() - start)
    return samples


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="database size (default 10000)")
    parser.add_argument("--reps", type=int, default=30, help="samples per warm figure (default 30)")
    parser.add_argument("--dir", default=None, help="folder for the temporary database (default: system temp)")
    parser.add_argument("--no-browser", action="store_true", help="skip the measurement in Chromium")
    args = parser.parse_args()
    if args.jobs < 100 or args.reps < 5:
        parser.error("--jobs must be at least 100 and --reps at least 5")

    folder = Path(tempfile.mkdtemp(prefix="pa-bench-viewer-", dir=args.dir))
    try:
        db = JobDatabase(folder)
        start = time.perf_counter()
        fill(db, args.jobs)
        fill_s = time.perf_counter() - start

        baseline = [0.0] * 3
        for i in range(3):
            start = time.perf_counter()
            assert len(db.jobs()) == args.jobs
            baseline[i] = time.perf_counter() - start

        cold = [first_page_http(folder) for _ in range(3)]
        cold_http, cold_all = [c[0] for c in cold], [c[1] for c in cold]
        browser = None if args.no_browser else first_page_browser(folder, 3)

        server, url = serve(folder)
        base, token = url.split("/?token=")
        get(f"{base}/api/jobs?token={token}")  # warm
        list_url = f"{base}/api/jobs?offset=0&limit=100&token={token}"
        listing = time_requests(list_url, args.reps)
        filtered = time_requests(f"{base}/api/jobs?function={__name__}.simulate&arg.T=1.5&limit=100&token={token}", args.reps)
        functions = time_requests(f"{base}/api/functions?token={token}", args.reps)
        server.catalog.refresh_interval_s = 0.0
        rescan = time_requests(list_url, args.reps)
        page = json.loads(get(list_url))
        stop(server)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert page["total"] == args.jobs and len(page["jobs"]) == 100

    figures = {
        "bench": "viewer",
        "jobs": args.jobs,
        "reps": args.reps,
        "first_page_http_ms": round(ms(cold_http), 1),
        "all_records_http_ms": round(ms(cold_all), 1),
        "first_page_browser_ms": round(ms(browser[0]), 1) if browser else None,
        "reload_browser_ms": round(ms(browser[1]), 1) if browser else None,
        "list_ms": round(ms(listing), 2),
        "list_rescan_ms": round(ms(rescan), 2),
        "list_filtered_ms": round(ms(filtered), 2),
        "functions_ms": round(ms(functions), 2),
        "baseline_jobs_listing_ms": round(ms(baseline), 1),
        "fill_ms_per_job": round(fill_s / args.jobs * 1e3, 3),
    }
    worst_first = max(v for v in (figures["first_page_http_ms"], figures["first_page_browser_ms"]) if v is not None)
    figures["meets_target"] = worst_first <= TARGET_FIRST_PAGE_MS

    print(f"viewer of {args.jobs:,} jobs, medians, ms (target: first page <= {TARGET_FIRST_PAGE_MS:.0f} ms)")
    rows = [
        ("first page, fresh viewer, HTTP", "first_page_http_ms"),
        ("  and the function counts (every record)", "all_records_http_ms"),
        ("first page, fresh viewer, Chromium", "first_page_browser_ms"),
        ("reload of the page, Chromium", "reload_browser_ms"),
        ("/api/jobs, 100 jobs", "list_ms"),
        ("/api/jobs, with a rescan of job.json", "list_rescan_ms"),
        ("/api/jobs, function + argument filter", "list_filtered_ms"),
        ("/api/functions", "functions_ms"),
        ("baseline: JobDatabase.jobs()", "baseline_jobs_listing_ms"),
    ]
    for label, key in rows:
        value = figures[key]
        print(f"  {label:42}{'skipped' if value is None else f'{value:10.1f}':>10}")
    print(f"filling {args.jobs:,} jobs took {fill_s:.1f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
