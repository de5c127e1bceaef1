"""The witness over HTTP (c2sp.org/tlog-witness): `POST /add-checkpoint` answered by
gpdpr.transparency.witness.add_checkpoint, so witness software that speaks the protocol can
co-sign our checkpoints and this witness can serve other logs. The server only maps a request to
that function and its refusals to status codes; requests are served one at a time, since each
reads and replaces the witness's kept checkpoint."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from gpdpr.errors import UserError
from gpdpr.transparency.witness import Conflict, Witness, WitnessRefused, add_checkpoint

PATH = "/add-checkpoint"
MAX_BODY = 16_384  # a checkpoint and 64 proof hashes fit in a quarter of this
READ_SECONDS = 10  # a client that sends its body slower is cut off


def check_url(url: str) -> str:
    """A witness's base URL as the log will POST to it (no trailing slash), or UserError: http
    or https, a host, no credentials, query or fragment, nothing but printable ASCII."""
    if not url.isascii() or not url.isprintable() or " " in url:
        raise UserError(f"the witness URL {url!r} holds spaces or characters a URL may not")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise UserError(f"the witness URL {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UserError(f"the witness URL {url!r} must start with https:// (or http://)")
    if not parts.hostname:
        raise UserError(f"the witness URL {url!r} names no host")
    if "@" in parts.netloc:
        raise UserError(f"the witness URL {url!r} holds credentials: give it without them")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UserError(f"the witness URL {url!r} has a query or fragment: give its base URL")
    return url.rstrip("/")


def server(witness: Witness, host: str, port: int) -> ThreadingHTTPServer:
    """A server for the witness, bound and not yet serving (call serve_forever)."""
    serial = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_SECONDS
        server_version = "gpdpr-witness"

        def do_POST(self) -> None:
            if self.path != PATH:
                self._answer(404, b"not found: POST the request to /add-checkpoint\n")
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, b"a Content-Length is required\n")
                return
            if length < 0 or length > MAX_BODY:
                self._answer(413, f"the body is limited to {MAX_BODY} bytes\n".encode())
                return
            body = self.rfile.read(length)
            try:
                with serial:
                    signature = add_checkpoint(witness, body, int(time.time()))
            except Conflict as conflict:
                self._answer(409, f"{conflict.size}\n".encode(), "text/x.tlog.size")
            except WitnessRefused as refused:
                self._answer(refused.status, f"{refused}\n".encode())
            except UserError as exc:  # the witness's own folder is unreadable
                self._answer(500, f"{exc}\n".encode())
            else:
                self._answer(200, signature.line().encode())

        def do_GET(self) -> None:
            self._answer(404, b"not found: POST the request to /add-checkpoint\n")

        def _answer(
            self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

    made = ThreadingHTTPServer((host, port), Handler)
    made.daemon_threads = True
    return made
