"""The libnetwork plugin protocol's wire: JSON over HTTP/1.1 POSTs on a unix socket.

Docker discovers a plugin by its socket (/run/docker/plugins/<name>.sock), POSTs
/Plugin.Activate, then /NetworkDriver.<Verb> and /IpamDriver.<Verb> with a JSON body, and
reads a JSON answer. A failure is HTTP 500 with `{"Err": "<message>"}`: Docker shows the
message to the user (`docker: Error response from daemon: ...`), so it must say what to do.

Nothing leaves here as a traceback: a DockerError or CniError becomes its message; anything
else is logged with its traceback here and answered as "internal error" with its text. Every
request body is untrusted (anything that can open the socket may POST): it must be a JSON
object of bounded size, and the handlers check each field they read (requests.py).
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from overlay.errors import CniError

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20  # a request is a few hundred bytes; a megabyte is plenty

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class DockerError(Exception):
    """A refusal Docker shows its user: the message says what is wrong and what to do."""


def error_message(exc: BaseException) -> str:
    """What `{"Err": ...}` says for a failure: our own errors as they are, anything else as an
    internal error (with its text, never its traceback)."""
    if isinstance(exc, DockerError):
        return str(exc)
    if isinstance(exc, CniError):
        return f"{exc.msg}: {exc.details}" if exc.details else exc.msg
    return f"internal error in the overlay plugin: {type(exc).__name__}: {exc} (see the agent log)"


def dispatch(routes: dict[str, Handler], path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) for one POST: the whole protocol without the socket."""
    handler = routes.get(path)
    if handler is None:
        return 404, {"Err": f"{path} is not a verb of this plugin (it serves "
                            + ", ".join(sorted(routes)) + ")"}
    try:
        request = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return 500, {"Err": f"{path}: the request body is not JSON ({exc})"}
    if not isinstance(request, dict):
        return 500, {"Err": f"{path}: the request body must be a JSON object"}
    try:
        return 200, handler(request)
    except (DockerError, CniError) as exc:
        log.info("%s refused: %s", path, error_message(exc))
        return 500, {"Err": error_message(exc)}
    except Exception as exc:  # noqa: BLE001 - the boundary: log it, answer with its text
        log.exception("%s failed", path)
        return 500, {"Err": error_message(exc)}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    routes: dict[str, Handler]


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self._answer(413, {"Err": f"request body must be at most {MAX_BODY} bytes"})
            return
        body = self.rfile.read(int(length))
        status, answer = dispatch(self.server.routes, self.path, body)
        self._answer(status, answer)

    def _answer(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("docker plugin: " + format, *args)


class PluginServer:
    """The socket, served on threads of its own until stop()."""

    def __init__(self, path: str, routes: dict[str, Handler]) -> None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # left by an agent that was killed
        self._path = path
        self._server = _Server(path, _RequestHandler)
        os.chmod(path, 0o600)  # root only, as the CNI socket: it attaches containers
        self._server.routes = routes
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="docker-plugin")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        try:
            os.unlink(self._path)
        except OSError:
            pass
