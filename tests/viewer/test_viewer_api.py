"""The viewer's HTTP API: a real server on a random port, over a database of real jobs."""

from __future__ import annotations

import csv
import dataclasses
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from parallelaverage import Job, _summary, load_job, parallel_average
from parallelaverage.jobdb import JobDatabase, call_key, new_record
from parallelaverage.results import AveragedResult
from parallelaverage.viewer import _details, make_server
from parallelaverage.viewer._catalog import Catalog, JobQuery, summarize

import viewer_models
from pa_testing import default_sigint
from viewer_testing import CORRELATIONS, start_viewer, stop_viewer


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get(viewer, path: str, **params) -> tuple[int, dict[str, str], bytes]:
    query = urllib.parse.urlencode([("token", viewer.token), *_pairs(params)])
    return fetch(f"{viewer.base}{path}{'&' if '?' in path else '?'}{query}")


def api(viewer, path: str, **params):
    status, _, body = get(viewer, path, **params)
    assert status == 200, body
    return json.loads(body)


def _pairs(params):
    for name, value in params.items():
        name = name.replace("__", ".")  # arg__T=... -> arg.T=...
        for item in value if isinstance(value, list) else [value]:
            yield name, item


def names_by_call(viewer) -> dict[str, str]:
    return {job["call"]: job["job_name"] for job in api(viewer, "/api/jobs")["jobs"]}


def correlation_call(L, T, field):
    return f"correlation(L={L}, T={T}, field={field})"


# ---------------------------------------------------------------- access

PROTECTED = ["/", "/static/viewer.js", "/static/viewer.css", "/api/functions", "/api/jobs",
             "/api/jobs/1_correlation", "/api/jobs/1_correlation/data.npz", "/api/jobs/1_correlation/output",
             "/no/such/page"]


@pytest.mark.parametrize("path", PROTECTED)
def test_every_request_without_the_right_token_is_refused(viewer, path):
    assert fetch(viewer.base + path)[0] == 403
    assert fetch(f"{viewer.base}{path}?token=wrong")[0] == 403
    assert fetch(viewer.base + path, {"Cookie": f"{viewer.server.cookie_name}=wrong"})[0] == 403
    assert fetch(viewer.base + path, {"Authorization": "token wrong"})[0] == 403
    status, _, body = fetch(viewer.base + path, method="POST")
    assert status == 403
    assert fetch(f"{viewer.base}{path}?token={viewer.token}")[0] != 403


def test_refusal_says_how_to_get_in(viewer):
    status, headers, body = fetch(viewer.base + "/")
    assert status == 403 and b"token" in body and "Set-Cookie" not in headers


def test_the_token_sets_a_cookie_that_lets_the_page_in(viewer):
    status, headers, body = fetch(viewer.url)
    assert status == 200 and b"static/viewer.js" in body
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name_value = cookie.split(";")[0]
    assert fetch(viewer.base + "/api/functions", {"Cookie": name_value})[0] == 200
    assert fetch(viewer.base + "/static/viewer.js", {"Cookie": f"other=1; {name_value}"})[0] == 200
    assert fetch(viewer.base + "/api/functions", {"Authorization": f"token {viewer.token}"})[0] == 200


def test_answers_only_to_local_host_names(viewer):
    port = viewer.server.server_address[1]
    for host, expected in [("evil.example", 403), (f"evil.example:{port}", 403), ("localhost:8080", 200),
                           (f"127.0.0.1:{port}", 200), ("[::1]:9000", 200)]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", f"/api/functions?token={viewer.token}", headers={"Host": host})
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == expected, host


def test_security_headers_and_read_only(viewer):
    status, headers, _ = fetch(viewer.url)
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    status, headers, body = fetch(viewer.url, method="POST")
    assert status == 405 and "read" in json.loads(body)["error"]


def test_refuses_public_addresses_and_busy_ports(tmp_path):
    with pytest.raises(ValueError, match="ssh -N -L"):
        make_server(tmp_path, host="0.0.0.0")
    with pytest.raises(ValueError, match="port=70000"):
        make_server(tmp_path, port=70000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            make_server(tmp_path, port=taken.getsockname()[1])


def test_each_viewer_has_its_own_random_token(tmp_path):
    first, url1 = make_server(tmp_path)
    second, url2 = make_server(tmp_path)
    try:
        token1, token2 = url1.split("token=")[1], url2.split("token=")[1]
        assert token1 != token2 and len(token1) >= 40
        assert url1.startswith("http://127.0.0.1:")
    finally:
        first.server_close()
        second.server_close()


# ----------------------------------------------------------------- lists

def test_functions_with_their_job_counts(viewer):
    data = api(viewer, "/api/functions")
    assert data["total"] == len(CORRELATIONS) + 5 and data["problems"] == []
    counts = {f["name"]: (f["jobs"], f["with_warnings"], f["active"]) for f in data["functions"]}
    assert counts == {"correlation": (len(CORRELATIONS), 0, 0), "energy": (2, 0, 0), "flaky": (1, 1, 0),
                      "observables": (1, 0, 0), "trajectory": (1, 0, 0)}
    assert data["functions"][0]["function"] == "viewer_models.correlation"
    assert data["path"] == str(viewer.path)


def test_jobs_newest_first_with_their_arguments_in_signature_order(viewer):
    data = api(viewer, "/api/jobs")
    indices = [job["index"] for job in data["jobs"]]
    assert indices == sorted(indices, reverse=True) and data["total"] == len(indices) == 10
    job = next(j for j in data["jobs"] if j["name"] == "correlation")
    assert job["parameters"] == ["L", "T", "field"]
    assert job["status"] == "completed" and job["n_successful"] == 40 and job["total_runs"] == 40
    assert job["submitted_at"].endswith("+00:00") and data["now"]


def test_filters_by_function_argument_value_status_and_warnings(viewer):
    correlation = "viewer_models.correlation"
    calls = lambda **p: sorted(j["call"] for j in api(viewer, "/api/jobs", **p)["jobs"])  # noqa: E731
    assert len(calls(function=correlation)) == len(CORRELATIONS)
    assert calls(function=correlation, arg__T="1.0") == [correlation_call(16, 1.0, 0.0), correlation_call(32, 1.0, 0.0)]
    assert calls(arg__T="1.0", arg__L="16") == [correlation_call(16, 1.0, 0.0)]
    assert len(calls(arg__T=["1.0", "2.0"])) == 3  # several values of one parameter: any of them
    assert calls(arg__beta="0.5") == ["energy(beta=0.5)"]
    assert calls(arg__nothing="1") == []
    assert len(calls(status="completed")) == 10 and calls(status="running,cancelled") == []
    assert calls(warnings="1") == ["flaky(fail_every=4)"]


def test_pages_and_bad_paging(viewer):
    everything = [j["job_name"] for j in api(viewer, "/api/jobs")["jobs"]]
    page = api(viewer, "/api/jobs", offset=2, limit=3)
    assert [j["job_name"] for j in page["jobs"]] == everything[2:5] and page["total"] == 10
    for bad in ({"limit": "0"}, {"limit": "x"}, {"offset": "-1"}, {"limit": "100000"}):
        status, _, body = get(viewer, "/api/jobs", **bad)
        assert status == 400 and next(iter(bad)) in json.loads(body)["error"]


def test_facets_count_the_values_of_each_parameter(viewer):
    facets = api(viewer, "/api/jobs", function="viewer_models.correlation")["facets"]
    assert [f["name"] for f in facets] == ["L", "T", "field"]
    by_name = {f["name"]: dict(map(tuple, f["values"])) for f in facets}
    assert by_name["L"] == {"32": 3, "16": 1, "64": 1} and by_name["T"]["1.0"] == 2


# --------------------------------------------------------------- details

def test_details_of_a_job_with_failed_runs(viewer):
    name = names_by_call(viewer)["flaky(fail_every=4)"]
    data = api(viewer, f"/api/jobs/{name}")
    assert data["state"]["successful"] == 9 and data["state"]["failed"] == 3 and data["state"]["missing"] == 0
    [group] = data["failures"]  # "run 0 ...", "run 4 ...", "run 8 ...": one error, numbers aside
    assert group["count"] == 3 and group["runs"] == [0, 4, 8]
    assert group["traceback"].startswith("Traceback") and "ValueError: run 0 hit an unstable configuration" in group["traceback"]
    [element] = data["result"]["elements"]
    assert element["mean"] == pytest.approx(np.mean([r for r in range(12) if r % 4])) and element["shape"] == []
    assert data["record"]["options"]["N_tasks"] == 2 and data["directory"].endswith(name)


def test_details_of_a_1d_result_for_its_plot(viewer):
    name = names_by_call(viewer)[correlation_call(32, 0.5, 0.0)]
    data = api(viewer, f"/api/jobs/{name}")
    result = load_job(name, viewer.path)
    [element] = data["result"]["elements"]
    series = element["series"]
    assert element["shape"] == [32] and element["count"] == 40 and series["x"] == list(range(32))
    np.testing.assert_allclose(series["mean"], result.data, rtol=1e-15)
    np.testing.assert_allclose(series["error"], result.estimated_error, rtol=1e-15)
    assert data["failures"] == [] and data["problems"] == []


def test_details_of_kept_outputs_and_of_tuples(viewer):
    names = names_by_call(viewer)
    assert api(viewer, f"/api/jobs/{names['trajectory(steps=10)']}")["result"] == {"kind": "outputs", "runs": 5}
    result = api(viewer, f"/api/jobs/{names['observables(L=8)']}")["result"]
    assert result["kind"] == "average" and result["tuple"] is True
    array, scalar, label = result["elements"]
    assert len(array["series"]["mean"]) == 8 and scalar["shape"] == [] and scalar["mean"] is not None
    assert (label["index"], label["averaged"], label["type"], label["text"]) == (2, False, "str", "'label'")


def test_one_result_schema_for_the_viewer_and_the_command_line(viewer):
    """The viewer's result is ``show --json``'s, each 1-D average with its plot data besides."""
    for name in names_by_call(viewer).values():
        shown = _summary.result_summary(Job.load(name, viewer.path).result(report=False))
        viewed = api(viewer, f"/api/jobs/{name}")["result"]
        if shown is not None and shown["kind"] == "average":
            for element in viewed["elements"]:
                assert (element["series"] is not None) == (element["averaged"] and len(element["shape"]) == 1)
                element["series"] = None
        assert viewed == shown, name


def test_results_with_nan_become_null_in_json():
    result = AveragedResult(np.array([1.0, np.nan, 3.0]), np.array([0.1, np.nan, np.inf]), np.array([1.0, 2.0, 3.0]),
                            successful_run_ids=[0], failed_run_ids=[], runs=None, job_name="1_f", count=1, total_weight=1.0)
    [summary] = _summary.result_summary(result, plot_points=100)["elements"]
    assert summary["series"]["mean"] == [1.0, None, 3.0] and summary["series"]["error"] == [0.1, None, None]
    assert (summary["min"], summary["max"], summary["error_max"]) == (1.0, 3.0, 0.1)
    json.dumps(summary, allow_nan=False)
    [scalar] = _summary.result_summary(AveragedResult(
        np.float64(2.0), np.float64(np.nan), np.float64(np.nan), successful_run_ids=[0], failed_run_ids=[], runs=None,
        job_name="1_f", count=1, total_weight=1.0))["elements"]
    assert (scalar["mean"], scalar["error"], scalar["variance"], scalar["series"]) == (2.0, None, None, None)


def test_unknown_and_invalid_job_names_are_404(viewer):
    for name in ["99_nothing", "..%2F..%2Fetc", "x", "1_correlation%2F..%2F..", "0_zero"]:
        status, _, body = get(viewer, f"/api/jobs/{name}")
        assert status == 404, name
        assert json.loads(body)["error"]


def test_output_of_a_job(viewer):
    name = names_by_call(viewer)["energy(beta=0.5)"]
    status, headers, body = get(viewer, f"/api/jobs/{name}/output")
    assert status == 200 and headers["Content-Type"].startswith("text/plain") and b"stdout.txt" in body


# ------------------------------------------------------------- downloads

def test_downloads_of_an_averaged_array_parse_with_numpy(viewer):
    name = names_by_call(viewer)[correlation_call(32, 1.0, 0.0)]
    result = load_job(name, viewer.path)
    status, headers, body = get(viewer, f"/api/jobs/{name}/data.npz")
    assert status == 200 and headers["Content-Disposition"] == f'attachment; filename="{name}.npz"'
    with np.load(io.BytesIO(body), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["mean"], result.data)
        np.testing.assert_array_equal(npz["error"], result.estimated_error)
        np.testing.assert_array_equal(npz["variance"], result.estimated_variance)
        assert npz["count"] == 40 and list(npz["successful_run_ids"]) == list(range(40))
    status, headers, body = get(viewer, f"/api/jobs/{name}/data.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    table = np.genfromtxt(io.StringIO(body.decode()), delimiter=",", names=True)
    assert table.dtype.names == ("index", "mean", "error", "variance")
    np.testing.assert_array_equal(table["index"], np.arange(32))
    np.testing.assert_array_equal(table["mean"], result.data)  # exact: numbers are written with repr
    np.testing.assert_array_equal(table["error"], result.estimated_error)


def test_downloads_of_scalars_and_tuple_elements(viewer):
    names = names_by_call(viewer)
    energy = load_job(names["energy(beta=1.0)"], viewer.path)
    rows = list(csv.reader(io.StringIO(get(viewer, f"/api/jobs/{names['energy(beta=1.0)']}/data.csv")[2].decode())))
    assert rows[0] == ["mean", "error", "variance"] and float(rows[1][0]) == energy.data
    observables = names["observables(L=8)"]
    _, scalar, _ = load_job(observables, viewer.path)
    status, headers, body = get(viewer, f"/api/jobs/{observables}/data.npz", element=1)
    assert status == 200 and f'filename="{observables}-1.npz"' in headers["Content-Disposition"]
    with np.load(io.BytesIO(body)) as npz:
        assert npz["mean"].shape == () and npz["mean"] == scalar.data
    for path, params, message in [
        (f"/api/jobs/{observables}/data.npz", {"element": 2}, "not averaged"),
        (f"/api/jobs/{observables}/data.npz", {"element": 3}, "3 elements"),
        (f"/api/jobs/{names['trajectory(steps=10)']}/data.csv", {}, "without averaging"),
        (f"/api/jobs/{names['energy(beta=1.0)']}/data.npz", {"element": 1}, "single result"),
    ]:
        status, _, body = get(viewer, path, **params)
        assert status == 404 and message in json.loads(body)["error"]
    assert get(viewer, f"/api/jobs/{observables}/data.npz", element="x")[0] == 400


# ---------------------------------------------------------- live updates

def test_progress_of_a_running_job_without_calling_it_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")  # a snapshot after every run
    slow = parallel_average(N_runs=6, N_tasks=1, queuing_system="local", path=tmp_path,
                            pickle_by_value=[viewer_models])(viewer_models.slow)
    assert slow(0.5) is None  # submitted; nobody calls it again
    viewer = start_viewer(tmp_path)
    viewer.server.catalog.live_interval_s = 0.1
    viewer.server.catalog.refresh_interval_s = 0.0
    seen = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            [job] = api(viewer, "/api/jobs")["jobs"]
            seen.append(job)
            if job["status"] == "completed":
                break
            time.sleep(0.1)
        functions = api(viewer, "/api/functions")["functions"]
    finally:
        stop_viewer(viewer)
    assert seen[-1]["status"] == "completed" and seen[-1]["n_successful"] == 6 and not seen[-1]["active"]
    running = [job for job in seen if job["status"] == "running"]
    assert running and all(job["active"] for job in running)
    assert any(0 < job["n_successful"] < 6 for job in running), [j["n_successful"] for j in seen]
    assert any(job.get("rate_per_s") for job in running)
    assert functions[0]["statuses"] == {"completed": 1}
    # the viewer stored what it counted, as a call would
    assert JobDatabase(tmp_path).load(seen[-1]["job_name"]).n_successful == 6


# ------------------------------------------------- the cache and its loading

def _f(L, T=1.0, *, seed=0):
    return L * T + seed


def _add_jobs(db: JobDatabase, start: int, stop: int, **changes) -> list[str]:
    names = []
    for i in range(start, stop):
        key = call_key(_f, (i,), {"T": 0.5 * (i % 3)}, N_runs=10)
        record, _ = db.get_or_create(key, lambda name: dataclasses.replace(
            new_record(key, name, code_hash="0" * 64, status="completed"), n_successful=10, n_not_ready=0, **changes))
        names.append(record.job_name)
    return names


def test_the_list_follows_changes_on_disk_and_reports_unreadable_jobs(tmp_path):
    db = JobDatabase(tmp_path)
    names = _add_jobs(db, 0, 3)
    viewer = start_viewer(tmp_path)
    viewer.server.catalog.refresh_interval_s = 0.0
    try:
        assert [j["job_name"] for j in api(viewer, "/api/jobs")["jobs"]] == names[::-1]
        db.update(names[0], status="cancelled", n_failed=2, n_successful=8)
        new = _add_jobs(db, 3, 4)
        jobs = api(viewer, "/api/jobs")["jobs"]
        assert [j["job_name"] for j in jobs] == new + names[::-1]
        assert (jobs[-1]["status"], jobs[-1]["n_failed"]) == ("cancelled", 2)
        broken = db.root / "77_broken"
        broken.mkdir()
        (broken / "job.json").write_text("{ not json")
        (db.root / "78_empty").mkdir()
        data = api(viewer, "/api/functions")
        assert [p["job_name"] for p in data["problems"]] == ["77_broken", "78_empty"]
        assert "77_broken" in data["problems"][0]["problem"] and data["total"] == 4
        db.remove(names[1])
        assert names[1] not in [j["job_name"] for j in api(viewer, "/api/jobs")["jobs"]]
        assert api(viewer, "/api/jobs", warnings="1")["total"] == 1
    finally:
        stop_viewer(viewer)


def test_the_newest_jobs_are_served_while_the_rest_load(tmp_path, monkeypatch):
    db = JobDatabase(tmp_path)
    names = _add_jobs(db, 0, 300)
    gate = threading.Event()
    reads = []
    real_read = Catalog._read

    def read_slowly(self, name, old=None):
        reads.append(name)
        if len(reads) > 150:
            gate.wait(30)  # hold the load halfway
        return real_read(self, name, old)

    monkeypatch.setattr(Catalog, "_read", read_slowly)
    catalog = Catalog(db)
    loader = threading.Thread(target=catalog.load)
    loader.start()
    try:
        while not catalog._load_lock.locked():
            time.sleep(0.001)
        early = catalog.page(JobQuery(limit=100))
        assert early["loading"]["of"] == 300 and 100 <= early["loading"]["read"] <= 151
        assert [j["job_name"] for j in early["jobs"]] == names[::-1][:100] and early["total"] == 300
        assert catalog.page(JobQuery(offset=100, limit=50))["jobs"][0]["job_name"] == names[::-1][100]
    finally:
        gate.set()
        loader.join()
    full = catalog.page(JobQuery(limit=100, arguments=(("T", frozenset({"0.5"})),)))
    assert "loading" not in full and full["total"] == 100
    assert [j["job_name"] for j in catalog.page(JobQuery(limit=1000))["jobs"]] == names[::-1]


def test_parameters_in_signature_order_from_the_record():
    def f(zeta, alpha, *rest, beta=2, **options):
        return zeta

    key = call_key(f, (1, "a, b=c", 3, 4), {"beta": 5, "x": [1, 2]}, N_runs=2)
    record = new_record(key, "1_f", code_hash="0" * 64)
    assert summarize(record)["parameters"] == ("zeta", "alpha", "*rest", "beta", "**options")
    swapped = dataclasses.replace(record, arguments_order=["beta", "zeta", "alpha", "*rest", "**options"])
    assert summarize(swapped)["parameters"] == ("beta", "zeta", "alpha", "*rest", "**options")  # not from the call


# ------------------------------------------------------------- serve()

def test_serve_prints_the_url_serves_and_stops_on_ctrl_c(tmp_path):
    _add_jobs(JobDatabase(tmp_path), 0, 2)
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from parallelaverage.viewer import serve; serve(sys.argv[1])", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}, preexec_fn=default_sigint,
    )
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        url = lines[1].strip()
        assert str(tmp_path) in lines[0] and url.startswith("http://127.0.0.1:") and "?token=" in url
        assert "Ctrl+C" in lines[2]
        status, _, body = fetch(url)
        assert status == 200 and b"parallelaverage" in body
        base = url.split("/?")[0]
        assert fetch(base + "/api/jobs")[0] == 403
        assert json.loads(fetch(url.replace("/?", "/api/jobs?"))[2])["total"] == 2
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "viewer stopped" in err


def test_statistics_are_summarised_for_the_viewer_and_the_command_line():
    from parallelaverage.stats import Batches, Histogram, LogBinning, Moments

    rng = np.random.default_rng(0)
    moments, histogram, batches = Moments(), Histogram(4, (0, 1), weighted=True), Batches(3)
    for run, x in enumerate(rng.random(30)):
        moments.add(x)
        histogram.add(x, 2.0)
        batches.add(x, key=run)
    histogram.add(7.0, 1.0)
    result = AveragedResult(np.float64(0.5), np.float64(0.05), np.float64(0.08), successful_run_ids=list(range(31)),
                            failed_run_ids=[], runs=None, job_name="1_f", count=31, total_weight=31.0,
                            statistics={"moments": moments, "histogram": histogram, "jackknife": batches,
                                        "autocorrelation": LogBinning()})
    [summary] = _summary.result_summary(result)["elements"]
    stats = summary["statistics"]
    assert set(stats) == {"moments", "histogram", "jackknife"}  # an empty one is left out
    assert stats["moments"]["skewness"] == pytest.approx(float(moments.skewness))
    assert stats["histogram"]["counts"] == histogram.counts.tolist() and stats["histogram"]["overflow"] == 1
    assert stats["histogram"]["weights"] == pytest.approx(histogram.weights.tolist())
    assert stats["histogram"]["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0] and stats["jackknife"]["counts"] == [10, 10, 10]
    json.dumps(summary, allow_nan=False)
