"""A dishonest operator in front of the real aggregator: an HTTP proxy that forwards every request
a bank's agent makes and rewrites the answers to contributions.

The operator runs the consortium's machines, so it can answer a bank whatever it likes; what it
cannot do is sign a ledger entry the bank would accept as recording a spend it did not make. The
proxy plays the two answers that leave the bank's privacy spend unrecorded as far as the bank can
see, while the real aggregator stores every contribution:

``replay``
    every contribution is answered 409, as a replay of one stored before, without the receipt of
    the bank's privacy spend (a real replay's answer carries it);
``no-receipt``
    every contribution is answered as stored, with its own receipt but without that of the spend.
"""

from __future__ import annotations

import json
import re
import threading
from http import HTTPStatus
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import requests
from werkzeug.serving import WSGIRequestHandler, make_server

Mode = Literal["replay", "no-receipt"]

_CONTRIBUTION = re.compile(r"^/v1/runs/[^/]+/contributions/")
#: Headers that belong to one connection, not to the message forwarded.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}
_PRIVACY_HEADER = "X-Fedfraud-Privacy-Receipt"


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class OperatorProxy:
    """Forwards to ``upstream``; answers contributions as ``mode`` says. ``rewritten`` counts the
    contributions it answered falsely."""

    def __init__(self, upstream: str, mode: Mode) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = mode
        self.rewritten = 0
        self._session = requests.Session()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_") and key[5:].replace("_", "-").lower() not in _HOP}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        upstream = self._session.request(environ["REQUEST_METHOD"], f"{self.upstream}{path}" + (f"?{query}" if query else ""),
                                         data=body, headers=headers, timeout=120)
        status, content = upstream.status_code, upstream.content
        answer = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP]
        if environ["REQUEST_METHOD"] == "PUT" and _CONTRIBUTION.match(path) and status in (200, 201):
            with self._lock:
                self.rewritten += 1
            answer = [(k, v) for k, v in answer if k.lower() != _PRIVACY_HEADER.lower()]
            if self.mode == "replay":
                status = 409
                content = json.dumps({"code": 409, "status": "Conflict", "errors": {},
                                      "message": "this bank already contributed to this round"}).encode()
                answer = [(k, v) for k, v in answer if k.lower() != "content-type"]
                answer.append(("Content-Type", "application/json"))
            elif status == 201:
                document = json.loads(content)
                document["privacy_receipt"] = None
                content = json.dumps(document).encode()
        answer.append(("Content-Length", str(len(content))))
        start_response(f"{status} {HTTPStatus(status).phrase}", answer)
        return [content]


@contextmanager
def operator_proxy(upstream: str, mode: Mode) -> Iterator[tuple[str, OperatorProxy]]:
    """Serve an :class:`OperatorProxy` on a free port of 127.0.0.1; yield its URL and itself."""
    proxy = OperatorProxy(upstream, mode)
    server = make_server("127.0.0.1", 0, proxy, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", proxy
    finally:
        server.shutdown()
        thread.join(timeout=10)
