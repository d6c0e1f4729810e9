"""The viewer end to end in a real headless Chromium: Debian's ``chromium``, driven by
Playwright for Python through ``executable_path`` (no browser download).

Skipped with the reason when Chromium or Playwright is missing, except when ``CI=true``:
there a missing browser fails the test. ``PARALLELAVERAGE_SCREENSHOT=path.png`` saves a
screenshot of the page (the one in docs/_static/viewer.png).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from parallelaverage import parallel_average

import viewer_models
from viewer_testing import CORRELATIONS, start_viewer, stop_viewer

CHROMIUM = os.environ.get("PARALLELAVERAGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT_ENV = "PARALLELAVERAGE_SCREENSHOT"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture says so, and skips or fails
    expect = sync_playwright = None


def _missing() -> list[str]:
    missing = []
    if sync_playwright is None:
        missing.append("Playwright for Python is not installed (pip install playwright; "
                       "no 'playwright install': the test uses the system's Chromium)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium; "
                       "or set PARALLELAVERAGE_CHROMIUM)")
    return missing


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (no cookies) that fails the test on any script error or console error,
    which includes a violation of the page's Content-Security-Policy."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)  # no wait_for_function: the page's CSP forbids eval, rightly
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    yield page
    context.close()
    assert not errors, errors


def rows(page):
    return page.locator("#jobs tbody tr.job")


def test_filter_open_a_job_see_its_plot_and_download_it(viewer, page, browser):
    page.goto(viewer.url)
    page.wait_for_selector("#jobs tbody tr.job")
    assert rows(page).count() == len(CORRELATIONS) + 5
    assert "token" not in page.url  # moved into a cookie, out of the address bar
    page.wait_for_selector("#connection.live")

    # the functions with their job counts
    item = page.locator('#functions li[data-function="viewer_models.correlation"]')
    assert item.locator(".fn-count").inner_text() == str(len(CORRELATIONS))
    item.click()
    expect(rows(page)).to_have_count(len(CORRELATIONS))
    assert [th.inner_text() for th in page.locator("#jobs thead th").all()][1:4] == ["L", "T", "field"]

    # click a keyword argument's value: only its jobs remain; values that differ between them are highlighted
    page.locator('#jobs button.value[data-param="T"][data-value="1.0"]').first.click()
    expect(rows(page)).to_have_count(2)
    assert page.locator('#chips .chip[data-param="T"]').inner_text().startswith("T = 1.0")
    assert set(page.locator('#jobs button.value[data-param="T"]').all_inner_texts()) == {"1.0"}
    assert all("differs" in c for c in page.locator('#jobs button.value[data-param="L"]').evaluate_all("b => b.map(x => x.className)"))
    assert not any("differs" in c for c in page.locator('#jobs button.value[data-param="T"]').evaluate_all("b => b.map(x => x.className)"))
    assert "arg.T=1.0" in page.url

    # open the job with L=32: its details and the plot of its mean with the error band
    row = rows(page).filter(has=page.locator('button.value[data-param="L"][data-value="32"]'))
    job_name = row.get_attribute("data-job")
    row.click()
    details = page.locator("#details")
    details.locator("svg.plot path.mean").wait_for()
    assert details.locator("h2").inner_text().startswith(job_name)
    assert "correlation(L=32, T=1.0, field=0.0)" in details.locator(".call").inner_text()
    curve = details.locator("svg.plot path.mean").get_attribute("d")
    assert len(re.findall(r"[ML]", curve)) == 32  # one vertex per element of the result
    assert details.locator("svg.plot path.band").get_attribute("d").endswith("Z")
    assert "40 successful" in details.locator(".counts").inner_text()

    # the .npz download, through the browser and its cookie
    with page.expect_download() as download:
        details.locator("a", has_text=".npz").click()
    with np.load(download.value.path(), allow_pickle=False) as npz:
        assert npz["mean"].shape == (32,) and npz["count"] == 40

    # a request without the token is refused, in a browser without the cookie
    stranger = browser.new_context()
    try:
        response = stranger.new_page().goto(viewer.base + "/")
        assert response.status == 403 and "token" in response.text()
        assert stranger.request.get(viewer.base + "/api/jobs").status == 403
        assert stranger.request.get(f"{viewer.base}/api/jobs/{job_name}/data.npz").status == 403
    finally:
        stranger.close()


def test_failed_runs_with_their_traceback_and_a_table_for_scalars(viewer, page):
    page.goto(viewer.url + "#warnings=1")
    expect(rows(page)).to_have_count(1)
    row = rows(page).first
    assert "3 failed" in row.locator("td.warnings").inner_text()
    row.click()
    failure = page.locator("#details details.failure").first
    failure.wait_for()
    assert "ValueError: run 0 hit an unstable configuration" in failure.locator("summary").inner_text()
    assert "3 runs: 0, 4, 8" in failure.locator("summary").inner_text()
    assert "Traceback" in failure.locator("pre.traceback").inner_text()
    assert "±" in page.locator("#details table.scalars td.mean").inner_text()


def test_a_tuple_result_and_kept_outputs(viewer, page):
    """The result is drawn from the keys of ``show --json``: per element of a tuple, and for kept outputs."""
    page.goto(viewer.url)
    page.wait_for_selector("#jobs tbody tr.job")
    rows(page).filter(has_text="observables(L=8)").click()
    elements = page.locator("#details .element")
    expect(elements).to_have_count(2)  # the two averaged ones; the third is kept from the last run
    assert [h.inner_text() for h in page.locator("#details h4").all()] == ["element 0", "element 1", "element 2"]
    elements.nth(0).locator("svg.plot path.mean").wait_for()
    assert "±" in elements.nth(1).locator("td.mean").inner_text()
    assert "not averaged, from the last run: 'label'" in page.locator("#details").inner_text()
    rows(page).filter(has_text="trajectory(steps=10)").click()
    expect(page.locator("#details")).to_contain_text("The outputs of 5 runs are kept, not averaged.")


def test_screenshot_for_the_docs(viewer, page):
    """Writes the screenshot when PARALLELAVERAGE_SCREENSHOT names a file."""
    path = os.environ.get(SCREENSHOT_ENV)
    if not path:
        pytest.skip(f"set {SCREENSHOT_ENV}=docs/_static/viewer.png to write the screenshot")
    page.goto(viewer.url)
    page.wait_for_selector("#jobs tbody tr.job")
    page.locator('#functions li[data-function="viewer_models.correlation"]').click()
    L, T, field = CORRELATIONS[-1]
    row = rows(page).filter(has=page.locator(f'button.value[data-param="field"][data-value="{field}"]'))
    row.click()
    page.locator("#details svg.plot path.mean").wait_for()
    page.locator("#details svg.plot").hover(position={"x": 180, "y": 120})
    page.wait_for_timeout(300)
    page.screenshot(path=path)
    assert os.path.getsize(path) < 300_000


def test_live_progress_without_reloading(tmp_path, monkeypatch, page):
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")
    slow = parallel_average(N_runs=8, N_tasks=1, queuing_system="local", path=tmp_path,
                            pickle_by_value=[viewer_models])(viewer_models.slow)
    assert slow(0.4) is None  # submitted; nobody calls it again
    viewer = start_viewer(tmp_path)
    viewer.server.catalog.live_interval_s = 0.5
    try:
        page.goto(viewer.url)
        page.wait_for_selector("#jobs tbody tr.job")
        page.evaluate("window.loads = (window.loads || 0) + 1")  # gone if the page reloads
        progress = rows(page).first.locator(".progress-text")
        seen = set()
        for _ in range(240):
            seen.add(progress.inner_text())
            if rows(page).first.locator(".badge").inner_text() == "completed":
                break
            page.wait_for_timeout(250)
        assert rows(page).first.locator(".badge").inner_text() == "completed"
        assert progress.inner_text() == "8/8"
        assert any(text not in ("0/8", "8/8") for text in seen), seen  # seen part way
        assert page.evaluate("window.loads") == 1
    finally:
        stop_viewer(viewer)


def test_the_histogram_and_the_statistics_of_a_scalar_result(tmp_path, page):
    """statistics=("histogram:...", "moments"): bars over the bins, and a row per number."""
    magnetisation = parallel_average(N_runs=40, N_tasks=1, seed=1, queuing_system="local", path=tmp_path,
                                     statistics=("histogram:bins=8,range=(-1,1)", "moments"),
                                     pickle_by_value=[viewer_models])(viewer_models.energy)
    from parallelaverage import wait

    result = wait(magnetisation)(0.5)
    viewer = start_viewer(tmp_path)
    try:
        page.goto(viewer.url)
        page.wait_for_selector("#jobs tbody tr.job")
        rows(page).first.click()
        details = page.locator("#details")
        details.locator("svg.plot.histogram rect.hist-bar").first.wait_for()
        assert details.locator("svg.plot.histogram rect.hist-bar").count() == int(np.count_nonzero(result.histogram.counts))
        assert "histogram of 40 runs" in details.inner_text()
        table = details.locator("table.statistics").inner_text()
        assert "skewness" in table and "excess kurtosis" in table
    finally:
        stop_viewer(viewer)
