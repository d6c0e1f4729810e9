"""Pictures: ``plot_average`` on matplotlib, and the notebook's HTML view of an ``AveragedResult``."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import AveragedResult, parallel_average, wait
from parallelaverage._display import format_mean_error

THIS = sys.modules[__name__]


def noisy_curve(L):
    return np.linspace(0.0, 1.0, L) + pa.rng().standard_normal(L)


def make_result(data, error, job_name="7_simulate", successful=10, failed=0):
    data = np.asarray(data, dtype=float)
    return AveragedResult(data, np.asarray(error, dtype=float), np.asarray(error, dtype=float) ** 2 * successful,
                          successful_run_ids=list(range(successful)),
                          failed_run_ids=list(range(successful, successful + failed)),
                          runs=None, job_name=job_name, count=successful, total_weight=float(successful))


@pytest.fixture(scope="module")
def curve_result(tmp_path_factory):
    """A real averaged 1-D result, through mpiexec."""
    path = tmp_path_factory.mktemp("pictures")
    job = parallel_average(N_runs=12, N_tasks=2, queuing_system="local", path=path, pickle_by_value=[THIS])(noisy_curve)
    return wait(job)(L=25)


@pytest.mark.parametrize("mean, error, text", [
    (1.23456, 0.0012, "1.2346 ± 0.0012"),
    (2.5, 0.18, "2.50 ± 0.18"),
    (123456.7, 0.5, "123456.70 ± 0.50"),
    (6.02214e23, 1.1e21, "(6.022 ± 0.011)e+23"),
    (1.5e-8, 2.0e-10, "(1.500 ± 0.020)e-08"),
    (5.0, 300.0, "5 ± 300"),
    (0.0, 0.05, "0.000 ± 0.050"),
    (3.25, float("nan"), "3.25 ± nan"),
    (1.0, 0.0, "1 ± 0"),
    (float("inf"), 1.0, "inf ± 1"),
])
def test_format_mean_error(mean, error, text):
    assert format_mean_error(mean, error) == text


def test_html_of_a_real_1d_result(curve_result):
    page = curve_result._repr_html_()
    assert "<code>1_noisy_curve</code>" in page and ">12</td>" in page and "(25,)" in page
    svg = re.search(r"<svg.*</svg>", page, re.S).group(0)
    root = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    path = root.find(f"{ns}path").get("d")
    assert path.startswith("M") and path.count("L") == 24, "one point per element"
    band = root.find(f"{ns}polygon").get("points").split()
    assert len(band) == 50, "upper edge forth, lower edge back"
    # the plot is the data: the topmost point of the line is the largest mean
    ys = [float(p.split(",")[1]) for p in path[1:].replace("L", " ").split()]
    assert int(np.argmin(ys)) == int(np.argmax(curve_result.data))
    ET.fromstring(f"<div>{page}</div>")  # the whole fragment is well-formed too


def test_html_of_a_scalar_and_of_other_shapes():
    scalar = make_result(2.5, 0.18, failed=2)._repr_html_()
    assert "2.50 ± 0.18" in scalar and "10 (2 failed)" in scalar and "<svg" not in scalar
    matrix = make_result(np.ones((3, 4)), np.full((3, 4), 0.1))._repr_html_()
    assert "(3, 4)" in matrix and "<svg" not in matrix
    single = make_result([1.0], [0.1])._repr_html_()
    assert "<svg" not in single
    one_run = make_result(np.arange(5.0), np.full(5, np.nan), successful=1)._repr_html_()
    assert "<svg" in one_run and "<polygon" not in one_run, "no band without an error"
    gaps = make_result([1.0, np.nan, 3.0, 4.0], [0.1, 0.1, 0.1, 0.1])._repr_html_()
    path = re.search(r'<path d="([^"]*)"', gaps).group(1)
    assert path.count("M") == 2, "a nan breaks the line"
    nothing = make_result([np.nan, np.nan], [np.nan, np.nan])._repr_html_()
    assert "<svg" not in nothing


def test_html_is_escaped():
    page = make_result(1.0, 0.1, job_name="<script>alert(1)</script>")._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_large_results_are_thinned_for_the_plot():
    page = make_result(np.sin(np.linspace(0, 10, 100_000)), np.full(100_000, 0.01))._repr_html_()
    path = re.search(r'<path d="([^"]*)"', page).group(1)
    assert path.count("L") < 500 and len(page) < 40_000


def test_existing_behaviour_is_kept():
    result = make_result([1.0, 2.0], [0.1, 0.2])
    assert repr(result).startswith("AveragedResult(job='7_simulate', runs=10")
    assert np.allclose(result + 1, [2.0, 3.0]) and result[1] == 2.0 and len(result) == 2


def test_plot_average_draws_line_and_band(curve_result):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.linspace(0.0, 1.0, 25)
    fig, ax = plt.subplots()
    try:
        line, band = pa.plot_average(x, curve_result, ax=ax, label="L=25", color="C3", alpha=0.2, linestyle="--")
        assert np.array_equal(line.get_xdata(), x) and np.allclose(line.get_ydata(), curve_result.data)
        assert line.get_label() == "L=25" and line.get_linestyle() == "--"
        assert band.get_alpha() == 0.2
        assert np.allclose(band.get_facecolor()[0][:3], matplotlib.colors.to_rgb("C3"))
        vertices = band.get_paths()[0].vertices
        mean, error = curve_result.data, curve_result.estimated_error
        assert vertices[:, 1].max() == pytest.approx((mean + error).max())
        assert vertices[:, 1].min() == pytest.approx((mean - error).min())
        fig.savefig(__import__("io").BytesIO(), format="png")  # renders
        plt.figure()
        line, _ = pa.plot_average(None, curve_result)  # the current axes, x = 0, 1, 2...
        assert np.array_equal(line.get_xdata(), np.arange(25)) and line.axes is plt.gca()
    finally:
        plt.close("all")


def test_plot_average_rejects_wrong_shapes(curve_result):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match=r"x has shape \(3,\) but the result has shape \(25,\)"):
        pa.plot_average([1, 2, 3], curve_result)
    with pytest.raises(ValueError, match=r"1-D results; this one has shape \(3, 4\)"):
        pa.plot_average(None, make_result(np.ones((3, 4)), np.ones((3, 4))))


def test_plot_average_without_matplotlib_names_the_extra():
    # a fresh interpreter in which matplotlib cannot be imported
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import numpy as np, parallelaverage as pa\n"
            "from parallelaverage import AveragedResult\n"
            "r = AveragedResult(np.zeros(3), np.zeros(3), np.zeros(3), successful_run_ids=[0], failed_run_ids=[],"
            " runs=None, job_name='1_f', count=1, total_weight=1.0)\n"
            "try:\n    pa.plot_average(None, r)\nexcept ImportError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert "pip install parallelaverage[plot]" in done.stdout, done.stderr


def test_plot_histogram_draws_steps_and_error_bars():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from parallelaverage.stats import Histogram

    per_element, weighted = Histogram(5, (0, 1)), Histogram(5, (0, 1), weighted=True)
    rng = np.random.default_rng(0)
    for x in rng.random((200, 3)):
        per_element.add(x)
        weighted.add(x[0], weight=2.0)
    result = make_result(np.zeros(3), np.zeros(3))
    result.statistics = {"histogram": per_element}
    fig, ax = plt.subplots()
    try:
        stairs, bars = pa.plot_histogram(result, ax=ax, element=1, label="element 1", color="C2")
        values, edges, _ = stairs.get_data()  # values, edges, baseline
        assert np.array_equal(values, per_element.counts[1]) and np.array_equal(edges, per_element.edges)
        (caps,) = bars.lines[2]
        assert len(caps.get_segments()) == 5 and stairs.get_label() == "element 1"
        stairs, bars = pa.plot_histogram(weighted, ax=ax, density=True, errors=False)
        assert bars is None and np.sum(stairs.get_data()[0]) * 0.2 == pytest.approx(1.0)
        fig.savefig(__import__("io").BytesIO(), format="png")  # renders
        with pytest.raises(ValueError, match="element="):
            pa.plot_histogram(result, ax=ax)
        with pytest.raises(pa.StatisticNotCollectedError, match="histogram"):
            pa.plot_histogram(make_result(np.zeros(3), np.zeros(3)), ax=ax)
    finally:
        plt.close("all")
