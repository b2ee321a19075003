"""The services' access log: one JSON object per request, whatever the request held, and never
a header (so never a token)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from fedfraud.gunicorn_logs import ACCESS_LOG_FORMAT, JsonAccessLogger

TOKEN = "fft_s3cr3t-token-value"


def _logged(tmp_path: Path, path: str, access_log_format: str = ACCESS_LOG_FORMAT) -> list[str]:
    log_file = tmp_path / "access.log"
    cfg = Config()
    cfg.set("accesslog", str(log_file))
    cfg.set("access_log_format", access_log_format)
    logger = JsonAccessLogger(cfg)
    response = SimpleNamespace(status="201 CREATED", sent=1234, headers=[("Content-Type", "application/json")])
    request = SimpleNamespace(headers=[("AUTHORIZATION", f"Bearer {TOKEN}"), ("X-NOTE", 'a "quoted" \\ value')])
    environ = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "PATH_INFO": path, "RAW_URI": path,
               "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": "", "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    logger.access(response, request, environ, timedelta(milliseconds=2, microseconds=345))
    for handler in logger.access_log.handlers:
        handler.flush()
    return log_file.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("path", ["/v1/score", '/v1/runs/"quoted"\\back\\slash', "/v1/runs/tab\there\nnewline\x01"])
def test_each_request_is_one_json_object_with_what_happened_and_no_header(tmp_path: Path, path: str) -> None:
    lines = _logged(tmp_path, path)
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["type"] == "access" and entry["path"] == path and entry["method"] == "POST"
    assert entry["status"] == 201 and entry["bytes"] == "1234" and entry["duration_us"] == 2345
    assert TOKEN not in lines[0]


def test_a_format_naming_a_header_gets_it_escaped_too(tmp_path: Path) -> None:
    # An operator's own format may name a request header; it must stay valid JSON as well.
    lines = _logged(tmp_path, "/v1/health", '{"path": "%(U)s", "note": "%({x-note}i)s"}')
    assert json.loads(lines[0]) == {"path": "/v1/health", "note": 'a "quoted" \\ value'}
