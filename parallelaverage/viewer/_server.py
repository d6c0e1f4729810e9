"""The viewer's HTTP server: a token-protected, read-only JSON API and one page.

Routes (all ``GET``; every request must carry the token)::

    /                               the page (static/index.html)
    /static/<file>                  its script and style sheet
    /api/functions                  functions with their job counts
    /api/jobs?function=&status=&arg.NAME=VALUE&warnings=1&offset=&limit=
                                    one page of the matching jobs, newest first
    /api/jobs/<name>                one job: record, runs, failures, result summary
    /api/jobs/<name>/output         the end of its standard output and error (text)
    /api/jobs/<name>/data.npz       its averaged result (mean, error, variance, ...)
    /api/jobs/<name>/data.csv       the same as CSV; ``?element=i`` for tuple results

The token comes as ``?token=``, as the cookie the first tokened request sets, or as
an ``Authorization: token ...`` header (for scripts). Login nodes are shared: any
user of the machine can reach 127.0.0.1, so the token, not the address, is what
keeps other people out.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import socket
import socketserver
import threading
from datetime import datetime, timezone
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from parallelaverage.jobdb import CorruptFileError, JobDatabase

from . import _details
from ._catalog import Catalog, JobQuery

__all__ = ["ViewerServer", "Handler"]

logger = logging.getLogger("parallelaverage.viewer")

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# The page loads nothing from elsewhere and runs no inline code: a value shown on
# it (an argument's repr, a traceback) can never become a script.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# Names under which the page may be reached: the machine itself, directly or
# through an SSH tunnel. Anything else is a DNS-rebinding attempt or a mistake.
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The files of ``static/`` by URL path, read once (they ship inside the package)."""
    assets: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("parallelaverage.viewer") / "static"
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1] if "." in item.name else ""
        if item.is_file() and suffix in _CONTENT_TYPES:
            assets[f"/static/{item.name}"] = (item.read_bytes(), _CONTENT_TYPES[suffix])
    if "/static/index.html" not in assets:
        raise RuntimeError(
            f"the viewer's page is missing from {folder}; the parallelaverage installation is "
            "incomplete: reinstall it (pip install --force-reinstall parallelaverage)"
        )
    assets["/"] = assets.pop("/static/index.html")
    return assets


class ViewerServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that knows its database, catalog, token and page.

    Args:
        address: ``(host, port)``; port 0 picks a free port.
        db: The database to show.
        token: The access token.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], db: JobDatabase, token: str) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.db = db
        self.catalog = Catalog(db)
        self.token = token
        self.token_bytes = token.encode()
        self.cookie_name = "parallelaverage-viewer-" + hashlib.sha256(self.token_bytes).hexdigest()[:12]
        self.assets = _load_assets()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (socket.getfqdn), which can
        # hang for many seconds on cluster nodes with a slow DNS; we need no name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def warm_up(self) -> threading.Thread:
        """Read every job's record in a background thread, so that the first page is quick."""
        thread = threading.Thread(target=self.catalog.load, name="parallelaverage-viewer-load", daemon=True)
        thread.start()
        return thread


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves one request of a :class:`ViewerServer`."""

    server: ViewerServer
    timeout = 120  # seconds before an idle kept-alive connection is closed, freeing its thread
    server_version = "parallelaverage-viewer"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # ------------------------------------------------------------ dispatch

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _refuse_method(self) -> None:
        if self._authorized():
            self._send_json(405, {"error": f"{self.command} is not supported: the viewer only reads"},
                            extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _handle(self) -> None:
        if not self._authorized():
            return
        url = urlsplit(self.path)
        path = unquote(url.path)
        params = parse_qs(url.query, keep_blank_values=True)
        try:
            self._route(path, params, first="token" in params)
        except LookupError as error:  # JobNotFoundError, or nothing to download
            self._send_json(404, {"error": _message(error)})
        except CorruptFileError as error:
            self._send_json(500, {"error": str(error)})
        except ValueError as error:
            self._send_json(400, {"error": str(error)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as error:  # report, keep serving
            logger.exception("viewer request %s failed", self.path)
            self._send_json(500, {"error": f"{type(error).__name__}: {error}"})

    def _route(self, path: str, params: dict[str, list[str]], first: bool) -> None:
        server = self.server
        if path in server.assets:
            body, content_type = server.assets[path]
            cookie = {}
            if first:  # later requests of the page (script, API) use the cookie
                cookie = {"Set-Cookie": f"{server.cookie_name}={server.token}; Path=/; HttpOnly; SameSite=Strict"}
            self._send(200, body, content_type, extra=cookie)
            return
        if path == "/api/functions":
            catalog = server.catalog
            self._send_json(200, {
                "path": str(server.db.path),
                "now": _now(),
                "total": len(catalog.summaries()),
                "functions": catalog.functions(),
                "problems": catalog.problems(),
            })
            return
        if path == "/api/jobs":
            query = JobQuery.from_params(params)
            catalog = server.catalog
            page = catalog.page(query)
            active = [job["job_name"] for job in page["jobs"] if job["active"]]
            if active and "loading" not in page:  # first things first: the next poll counts their runs
                catalog.refresh_live(active)
                page = catalog.page(query)
            self._send_json(200, {"now": _now(), **page})
            return
        parts = path.split("/")
        if len(parts) in (4, 5) and parts[:3] == ["", "api", "jobs"]:
            name = parts[3]
            if not server.db.is_job_name(name):
                self._send_json(404, {"error": f"{name!r} is not a job name; job names look like '12_simulate'"})
                return
            what = parts[4] if len(parts) == 5 else ""
            if what == "":
                details, job = _details.job_details(server.db, name)
                server.catalog.put(job.record)
                self._send_json(200, {"now": _now(), **details})
                return
            if what == "output":
                from parallelaverage.job import Job

                text = _details.output_tail(Job(server.db, server.db.load(name)))
                self._send(200, text.encode(), "text/plain; charset=utf-8")
                return
            if what in ("data.npz", "data.csv"):
                element = _element(params)
                result = _details.averaged_element(server.db, name, element)
                suffix = "" if element == 0 else f"-{element}"
                if what == "data.npz":
                    body, content_type, filename = _details.npz_bytes(result), "application/octet-stream", f"{name}{suffix}.npz"
                else:
                    body, content_type, filename = _details.csv_bytes(result), "text/csv; charset=utf-8", f"{name}{suffix}.csv"
                self._send(200, body, content_type,
                           extra={"Content-Disposition": f'attachment; filename="{filename}"'})
                return
        self._send_json(404, {"error": f"no such page: {path}"})

    # ------------------------------------------------------ access control

    def _authorized(self) -> bool:
        """Check the Host and the token; answer 403 (and return False) if either is wrong."""
        host = (self.headers.get("Host") or "").strip()
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
        if hostname.lower() not in _LOCAL_HOSTS:
            self._send_text(403, f"403 Forbidden: the viewer answers only to 127.0.0.1 or localhost, not to {host!r}\n")
            return False
        if self._token_matches():
            return True
        self._send_text(
            403,
            "403 Forbidden: this page needs the access token. Open the full URL that "
            "'parallelaverage view' printed (http://127.0.0.1:PORT/?token=...).\n",
        )
        return False

    def _token_matches(self) -> bool:
        expected = self.server.token_bytes
        candidates = parse_qs(urlsplit(self.path).query).get("token", [])
        authorization = self.headers.get("Authorization", "")
        if authorization.lower().startswith("token "):
            candidates.append(authorization[6:].strip())
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            cookie = SimpleCookie()
        if self.server.cookie_name in cookie:
            candidates.append(cookie[self.server.cookie_name].value)
        return any(hmac.compare_digest(c.encode("utf-8", "replace"), expected) for c in candidates)

    # ------------------------------------------------------------ replies

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json", extra)

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: Any) -> None:
        # Requests arrive every two seconds per open page: keep the terminal quiet.
        logger.debug("%s - %s", self.address_string(), format % args)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _element(params: dict[str, list[str]]) -> int:
    text = params.get("element", ["0"])[-1]
    try:
        element = int(text)
    except ValueError:
        raise ValueError(f"element={text!r}: must be the index of a tuple element (0, 1, ...)") from None
    if element < 0:
        raise ValueError(f"element={element}: must be 0 or more")
    return element


def _message(error: BaseException) -> str:
    # KeyError-like LookupErrors repr their message; show it plainly.
    return str(error.args[0]) if error.args and isinstance(error.args[0], str) else str(error)
