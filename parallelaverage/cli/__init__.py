"""The ``parallelaverage`` command (also ``python -m parallelaverage``): the job database from a terminal.

This module is the parser and the error boundary; the commands live in
``parallelaverage.cli.commands``. Exit codes: 0 ok, 1 a job failed or has missing
runs (``show``, ``wait``) or a runtime error, 2 a usage error (also an unknown job).
Errors are one line on standard error, ``parallelaverage: error: ...``; warnings of
the library are one line each, ``[parallelaverage] ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from parallelaverage.cli.commands import PROG, UsageError, run
from parallelaverage.errors import PREFIX, say
from parallelaverage.jobdb import JobNotFoundError

__all__ = ["main", "build_parser"]

TRACEBACK_ENV = "PARALLELAVERAGE_TRACEBACK"
"""Set to 1 to get the Python traceback of an unexpected error instead of one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at the command's help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _epilog(text: str) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip("\n"), "  ")


_COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("list the jobs, newest first",
             "parallelaverage list --function simulate --status completed --arg L=64"),
    "status": ("progress of the running jobs: runs done/failed/missing, rate, ETA",
               "parallelaverage status --watch"),
    "show": ("everything about one job: call, options, failures, result",
             "parallelaverage show 12_simulate    # or just: parallelaverage show 12"),
    "wait": ("show a progress bar until the job stops running; exit 1 if runs failed or are missing",
             "parallelaverage wait 12_simulate && echo all runs done"),
    "cancel": ("stop a running job (every launch and every process it started)",
               "parallelaverage cancel 12_simulate"),
    "resubmit": ("run the failed and missing runs of a job again",
                 "parallelaverage resubmit 12_simulate --tasks 8"),
    "cleanup": ("remove what no call can reach any more: crash leftovers, superseded jobs, snapshots",
                "parallelaverage cleanup --superseded --snapshots --dry-run"),
    "view": ("open the job database in a web browser (a local server with an access token)",
             "parallelaverage view --port 8765 --open"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``parallelaverage`` command."""
    parser = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look at and act on the jobs of a parallelaverage job database (<path>/.parallelaverage).",
        epilog=textwrap.dedent("""
            examples:
              parallelaverage list                  # the jobs here, newest first
              parallelaverage --path ~/runs status  # progress of the running jobs under ~/runs
              parallelaverage show 12 --json | jq .result

            exit codes:
              0  ok
              1  a job failed or has missing runs (show, wait), or an error
              2  a usage error (also an unknown job)
            """),
    )
    parser.add_argument("--path", default=".", metavar="DIR",
                        help="directory holding the job database (default: the current directory)")
    # --path also after the command; SUPPRESS keeps the value given before it
    common = _Parser(add_help=False)
    common.add_argument("--path", default=argparse.SUPPRESS, metavar="DIR",
                        help="directory holding the job database (default: the current directory)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub = {}
    for name, (summary, example) in _COMMANDS.items():
        sub[name] = commands.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + ".", parents=[common],
            epilog=_epilog(example), formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("show", "wait", "cancel", "resubmit"):
        sub[name].add_argument("job", metavar="JOB", help="a job name such as 12_simulate, or its number 12")
    for name in ("list", "show", "status"):
        sub[name].add_argument("--json", action="store_true", help="print JSON (keys in docs/cli.md)")

    lister = sub["list"]
    lister.add_argument("--function", metavar="NAME",
                        help="only jobs of this function (its name, or module.name)")
    lister.add_argument("--status", action="append", metavar="STATUS",
                        help="only jobs with this status (running, completed, ended, cancelled, "
                             "not_launched); repeat for several")
    lister.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                        help="only jobs whose argument NAME has VALUE (e.g. L=64, model=ising); repeatable")

    status = sub["status"]
    status.add_argument("jobs", nargs="*", metavar="JOB", help="these jobs (default: every running job)")
    status.add_argument("--watch", action="store_true", help="keep updating until no job runs")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between updates with --watch (default: 2)")

    resubmit = sub["resubmit"]
    resubmit.add_argument("--tasks", type=int, metavar="N",
                          help="MPI ranks for the new launch (default: as the last launch)")
    resubmit.add_argument("--include-crashed", action="store_true",
                          help="also re-run the runs that crashed their rank (left out by default)")
    resubmit.add_argument("--fresh-streams", action="store_true",
                          help="give the re-run runs new random streams (default: the same ones)")

    cleaner = sub["cleanup"]
    cleaner.add_argument("--superseded", action="store_true",
                         help="also remove jobs that a newer job of the same call replaced (do_submit)")
    cleaner.add_argument("--snapshots", action="store_true",
                         help="also remove per-rank snapshots of launches whose merged result is written")
    cleaner.add_argument("--reindex", action="store_true",
                         help="restore index entries of jobs that calls can no longer find (removed by hand)")
    cleaner.add_argument("--dry-run", action="store_true", help="only list what would be removed")

    viewer = sub["view"]
    viewer.add_argument("--port", type=int, metavar="N", help="port on 127.0.0.1 (default: any free port)")
    viewer.add_argument("--open", action="store_true", help="also open the page in a web browser")
    return parser


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A library warning as one ``[parallelaverage] ...`` line (its first line)."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    say(text.removeprefix(PREFIX).strip().rstrip(":"), file=sys.stderr)


def _expected(error: BaseException) -> bool:
    """Errors whose message is written for users (the library's errors name the fix)."""
    return isinstance(error, (UsageError, OSError, ValueError, JobNotFoundError)) and bool(str(error))


def _one_line(error: BaseException) -> str:
    """The error's message on one line; its type too when the message alone may not say much."""
    text = " ".join(str(error).split())
    if _expected(error):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it).

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        0 ok, 1 a job failed or has missing runs, or a runtime error, 2 a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2): argparse printed it
        return int(exit_.code or 0)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PREFIX} %(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("parallelaverage")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return run(args)
    except UsageError as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (jobs keep running; stop one with '{PROG} cancel JOB')", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `parallelaverage list | head`: the reader is gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        hint = "" if _expected(error) else f" (set {TRACEBACK_ENV}=1 to see the traceback)"
        print(f"{PROG}: error: {_one_line(error)}{hint}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
