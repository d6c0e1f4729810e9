"""The web viewer of a job database: ``parallelaverage view``, or :func:`serve` from Python.

A local web server on the loopback address shows the jobs under
``<path>/.parallelaverage``: the functions with their job counts, the jobs with
filters by argument value and status, the live progress of running jobs, a job's
failures with their tracebacks, and its averaged result as a plot or a table with
``.npz`` and CSV downloads. Everything it serves ships inside the package; the page
works offline.

Every request needs a random access token, printed with the URL on start (as in
Jupyter): on a cluster's login node any user can reach 127.0.0.1.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import secrets
import socket
import sys
import threading
import webbrowser

from parallelaverage.errors import say
from parallelaverage.jobdb import JobDatabase

from ._server import ViewerServer

__all__ = ["make_server", "serve", "ViewerServer"]

def make_server(path: str | os.PathLike[str] = ".", port: int = 0, *, host: str = "127.0.0.1",
                token: str | None = None) -> tuple[ViewerServer, str]:
    """Create the viewer's server for the database under ``path``, without serving yet.

    The server is bound (the port is taken) and starts reading the job records
    in a background thread, so that the first page is quick. Serve with
    ``server.serve_forever()`` (in a thread, to keep going); stop with
    ``server.shutdown()`` then ``server.server_close()``.

    Args:
        path: The directory whose ``.parallelaverage`` database to show.
        port: TCP port; 0 picks a free one.
        host: A loopback address: ``"127.0.0.1"`` (default), ``"::1"`` or ``"localhost"``.
        token: The access token; None makes a random one (use None but in tests).

    Returns:
        ``(server, url)``: the server and the URL to open, with the token,
        e.g. ``"http://127.0.0.1:8765/?token=..."``.

    Raises:
        ValueError: ``path`` is not a directory, ``port`` is out of range, ``host``
            is not a loopback address, or ``token`` is not URL-safe.
        PermissionError: ``path`` is not writable (the viewer stores the progress
            of running jobs, as a call would).
        OSError: The port is in use; the message says to pick another.
    """
    address = _loopback(host)
    if type(port) is not int or not 0 <= port <= 65535:
        raise ValueError(f"port={port!r}: must be an integer from 0 (any free port) to 65535")
    token = secrets.token_urlsafe(32) if token is None else token
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,}", token):
        raise ValueError("token: must be at least 8 characters of A-Z, a-z, 0-9, '-' and '_' "
                         "(or None for a random one)")
    db = JobDatabase(path)
    try:
        server = ViewerServer((address, port), db, token)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise OSError(error.errno, f"port {port} on {address} is in use (another viewer?); "
                          "pass another port, or 0 for any free port") from None
        raise
    server.warm_up()
    bound = server.server_address[1]
    url_host = f"[{address}]" if ":" in address else address
    return server, f"http://{url_host}:{bound}/?token={token}"


def serve(path: str | os.PathLike[str] = ".", port: int = 0, open_browser: bool = False,
          host: str = "127.0.0.1") -> None:
    """Serve the viewer of the database under ``path`` until interrupted (Ctrl+C).

    Prints the URL with its access token and, in an SSH session, how to reach it
    from one's own computer.

    Args:
        path: The directory whose ``.parallelaverage`` database to show.
        port: TCP port; 0 picks a free one.
        open_browser: Also open the URL in the default web browser.
        host: A loopback address (see :func:`make_server`).

    Raises:
        ValueError, PermissionError, OSError: as :func:`make_server`.

    Notes:
        On a cluster, run the viewer on the login node and forward its port over
        SSH (``ssh -N -L PORT:127.0.0.1:PORT login-node``); never bind it to a
        public address. Anyone with the URL (token included) can read your jobs'
        arguments and results: do not share it.
    """
    server, url = make_server(path, port, host=host)
    bound = server.server_address[1]
    say(f"viewer of the jobs in {server.db.root}")
    print(f"    {url}", flush=True)
    if os.environ.get("SSH_CONNECTION"):
        say(f"from your computer: ssh -N -L {bound}:127.0.0.1:{bound} {_user()}@{socket.gethostname()}"
            "  then open the URL above there")
    say("press Ctrl+C to stop")
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # after the terminal's ^C
        say("viewer stopped", file=sys.stderr)
    finally:
        server.server_close()


def _loopback(host: str) -> str:
    """The loopback address to bind, or a ValueError that says why not and what instead."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"host={host!r}: the viewer listens only on the loopback address (127.0.0.1 or ::1), "
            "where only this machine can reach it. To see a cluster's jobs from your computer, "
            "forward the port over SSH: ssh -N -L PORT:127.0.0.1:PORT login-node"
        )
    return str(address)


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return "you"
