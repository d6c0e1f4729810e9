"""How the command line writes for people: tables, ages, run ids, result lines.

Everything here turns data (records, the summaries of ``_summary``) into text; nothing
reads the job database.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from parallelaverage._display import format_mean_error

__all__ = ["age", "when", "table", "ids_text", "result_lines", "launches_text", "crash_lines", "pairs_text",
           "indent"]

_SHOWN_IDS = 10  # run ids listed before "..."


def age(iso: str) -> str:
    """``"5 min ago"`` for an ISO-8601 time."""
    try:
        then = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    s = max((datetime.now(timezone.utc) - then).total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return f"{int(s)} s ago"


def when(iso: str) -> str:
    """An ISO-8601 time in the local time zone with its age: ``"2026-05-09 09:35:25 CEST (5 min ago)"``."""
    try:
        then = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return iso
    return f"{then.astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')} ({age(iso)})"


def table(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]) for row in rows)


def ids_text(ids: list[Any]) -> str:
    """The first run ids, e.g. ``"3, 7, (0, 2), ..."`` (JSON lists shown as tuples)."""
    shown = ", ".join(str(tuple(i) if isinstance(i, list) else i) for i in ids[:_SHOWN_IDS])
    return shown + (", ..." if len(ids) > _SHOWN_IDS else "")


def _number(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4g}"


def result_lines(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, text)`` lines describing a result summary (``_summary.result_summary``)."""
    if summary is None:
        return [("result", "none yet (no run has finished)")]
    if summary["kind"] == "outputs":
        return [("result", f"the outputs of {summary['runs']} runs (kept, not averaged)")]
    lines = []
    for i, element in enumerate(summary["elements"]):
        name = f"result[{i}]" if summary["tuple"] else "result"
        if not element["averaged"]:
            text = f"{element['type']} (not averaged: the value of the last run)"
        elif element["shape"] == []:
            mean = math.nan if element["mean"] is None else element["mean"]
            error = math.nan if element["error"] is None else element["error"]
            text = f"{format_mean_error(mean, error)}  ({element['count']} runs)"
        else:
            shape = str(tuple(element["shape"]))
            text = (f"shape {shape}, mean from {_number(element['min'])} to {_number(element['max'])}, "
                    f"error up to {_number(element['error_max'])}  ({element['count']} runs)")
        lines.append((name, text))
    return lines


def launches_text(launches: list[dict[str, Any]]) -> str:
    """``"1 ended (exit code 11), 2 running"``: each launch's phase and exit code."""
    return ", ".join(f"{launch['launch']} {launch['phase'].replace('_', ' ')}"
                     + (f" (exit code {launch['exit_code']})" if launch["exit_code"] is not None else "")
                     for launch in launches) or "-"


def crash_lines(crashes: list[dict[str, Any]], resubmit: str) -> list[tuple[str, str]]:
    """``("crashed", "run 17 crashed the rank (rank 1, signal 11, SIGSEGV) in launch 1 (exit code 11)")``
    lines (``_summary.crash_summary``), and how to run them again (``resubmit``)."""
    if not crashes:
        return []
    lines: list[tuple[str, str]] = []
    for crash in crashes[:_SHOWN_IDS]:
        code = crash["launch_exit_code"]
        lines.append(("" if lines else "crashed", f"{crash['message']} in launch {crash['launch']}"
                      + (f" (exit code {code})" if code is not None else "")))
    if len(crashes) > _SHOWN_IDS:
        lines.append(("", f"... and {len(crashes) - _SHOWN_IDS} more"))
    lines.append(("", f"(resubmit leaves them out: they would probably crash again; to run them too: "
                      f"{resubmit} --include-crashed)"))
    return lines


def pairs_text(pairs: list[tuple[str, str]]) -> str:
    """``name  text`` lines with the names padded to one width."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.ljust(width)}  {text}" for name, text in pairs)


def indent(text: str) -> str:
    """Every line indented by four spaces (tracebacks under their heading)."""
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())
