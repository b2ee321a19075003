"""A typed HTTP client of the consortium API (``docs/consortium-api.md``), bank side.

One method per endpoint the bank uses. Every error answer becomes a
:class:`~bank_node.agent.errors.ConsortiumError` subclass; network failures and 5xx answers are
retried with bounded exponential backoff and jitter, other answers never are. Retrying an upload
is safe because the consortium refuses a second copy with 409, which the callers expect.

The bearer token lives in the session's headers only: it is not an attribute, not in ``repr``,
and not in any log line or error message.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import requests

from bank_node.agent.errors import (
    ConsortiumError,
    UnavailableError,
    error_from_response,
)
from bank_node.agent.resources import (
    AggregateStatus,
    BankInfo,
    Contributed,
    ModelInfo,
    RelayedRoster,
    RunInfo,
    SignedBytes,
    items_of,
)
from bank_node.agent.retry import RetryPolicy
from crypto.signing import SIGNATURE_HEADER
from schemas.logs import REQUEST_ID_HEADER, new_request_id

__all__ = ["SIGNATURE_HEADER", "ConsortiumClient"]

log = logging.getLogger(__name__)
T = TypeVar("T")

OCTET_STREAM = "application/octet-stream"
#: Exceptions of ``requests`` after which the same request may well succeed.
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class ConsortiumClient:
    """Talk to the consortium aggregator as one bank.

    Parameters
    ----------
    base_url
        The service root, e.g. ``https://consortium.example:8443`` (no ``/v1``).
    token
        This bank's bearer token.
    timeout
        Connect and read timeouts of one request, in seconds.
    retry
        Backoff for network errors and 5xx answers.
    session
        A ``requests.Session`` to use (tests, custom TLS); a new one by default.
    sleep, clock
        Injected for tests.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None,
        timeout: tuple[float, float] = (10.0, 120.0),
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        client_cert: tuple[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"consortium URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = "fedfraud-bank-agent/1"
        if client_cert is not None:  # mutual TLS with the consortium's front (ops/nginx/fedfraud-mtls.conf)
            self._session.cert = client_cert
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        return f"<ConsortiumClient {self.base_url}>"

    def close(self) -> None:
        """Release the session's connections."""
        self._session.close()

    # ------------------------------------------------------------------------ service, banks

    def list_banks(self) -> list[BankInfo]:
        """``GET /v1/banks``: enrolled banks with their public keys."""
        document = self._json("GET", "/v1/banks")
        return _parse("GET /v1/banks", lambda: [BankInfo.from_json(r) for r in items_of(document, "banks")])

    def register_keys(self, bank_id: str, *, signing_key: str, box_key: str) -> None:
        """``PUT /v1/banks/{bank_id}/keys`` with base64 public keys; 409 if already registered."""
        self._request("PUT", f"/v1/banks/{_segment(bank_id)}/keys", json={"signing_key": signing_key, "box_key": box_key})

    # ------------------------------------------------------------------------- key ceremony

    def sign_roster(self, document: bytes, *, signature: str) -> RelayedRoster:
        """``POST /v1/roster``: approve a roster document (posting it if new)."""
        response = self._request("POST", "/v1/roster", data=document, signature=signature)
        return _parse("POST /v1/roster", lambda: RelayedRoster.from_json(_json_body(response)))

    def list_rosters(self, since: int = 0) -> list[RelayedRoster]:
        """``GET /v1/roster?since=N``: relayed roster documents newer than version ``since``."""
        document = self._json("GET", "/v1/roster", params={"since": str(since)})
        return _parse("GET /v1/roster", lambda: [RelayedRoster.from_json(r) for r in items_of(document, "rosters")])

    def put_public_context(self, context: bytes, *, signature: str, roster_digest: str) -> None:
        """``PUT /v1/keys/context``: a public HE context made for the roster ``roster_digest``."""
        self._request("PUT", "/v1/keys/context", data=context, signature=signature,
                      headers={"X-Fedfraud-Roster": roster_digest})

    def get_public_context(self) -> SignedBytes:
        """``GET /v1/keys/context``: the current context, its publisher, signature and roster;
        :class:`NotFoundError` before the ceremony."""
        response = self._request("GET", "/v1/keys/context")
        return SignedBytes(
            body=response.content,
            signer=response.headers.get("X-Fedfraud-Publisher", ""),
            signature=response.headers.get(SIGNATURE_HEADER, ""),
            key_id=response.headers.get("X-Fedfraud-Key-Id", ""),
            roster_digest=response.headers.get("X-Fedfraud-Roster", ""),
        )

    def put_share(self, bank_id: str, sealed: bytes, *, signature: str) -> None:
        """``PUT /v1/keys/shares/{bank_id}``: the secret context sealed to that bank's box key."""
        self._request("PUT", f"/v1/keys/shares/{_segment(bank_id)}", data=sealed, signature=signature)

    def get_share(self, bank_id: str) -> SignedBytes:
        """``GET /v1/keys/shares/{bank_id}``: the current key's sealed share and who signed it;
        :class:`NotFoundError` until posted."""
        response = self._request("GET", f"/v1/keys/shares/{_segment(bank_id)}")
        return SignedBytes(
            body=response.content,
            signer=response.headers.get("X-Fedfraud-Publisher", ""),
            signature=response.headers.get(SIGNATURE_HEADER, ""),
            key_id=response.headers.get("X-Fedfraud-Key-Id", ""),
        )

    # ----------------------------------------------------------------------------- runs

    def list_runs(self, state: str | None = "open") -> list[RunInfo]:
        """``GET /v1/runs?state=...``."""
        params = {"state": state} if state else None
        document = self._json("GET", "/v1/runs", params=params)
        return _parse("GET /v1/runs", lambda: [RunInfo.from_json(r) for r in items_of(document, "runs")])

    def get_run(self, run_id: str) -> RunInfo:
        """``GET /v1/runs/{run_id}``."""
        document = self._json("GET", f"/v1/runs/{_segment(run_id)}")
        return _parse(f"GET /v1/runs/{run_id}", lambda: RunInfo.from_json(document))

    def put_contribution(self, run_id: str, round_key: str, payload: bytes, *, signature: str,
                         wait_s: float = 0.0) -> Contributed:
        """``PUT /v1/runs/{run_id}/contributions/{round_key}``; 409 on a replay or closed round.

        With ``wait_s``, the consortium answers with the round's sum if it is released within
        that time (in the result), else as without. The result carries the ledger's receipt of
        the contribution when the consortium gives one, and in a private run the receipt of
        its privacy spend (not yet verified)."""
        path = f"/v1/runs/{_segment(run_id)}/contributions/{_round_path(round_key)}"
        response = self._request("PUT", path, data=payload, signature=signature,
                                 params={"wait": f"{wait_s:.3f}"} if wait_s > 0 else None)
        if response.status_code != 200:
            document = _json_body(response)
            receipt, privacy_receipt = document.get("receipt"), document.get("privacy_receipt")
            return Contributed(released=None, receipt=receipt if isinstance(receipt, dict) else None,
                               privacy_receipt=privacy_receipt if isinstance(privacy_receipt, dict) else None)
        named = response.headers.get("X-Fedfraud-Contributors", "")
        return Contributed(
            released=AggregateStatus(payload=response.content, contributors=frozenset(n for n in named.split(",") if n)),
            receipt=_header_receipt(response.headers.get(RECEIPT_HEADER)),
            privacy_receipt=_header_receipt(response.headers.get(PRIVACY_RECEIPT_HEADER)))

    # ---------------------------------------------------------------------------- ledger

    def ledger_key(self) -> dict[str, str]:
        """``GET /v1/ledger/key``: the ledger's origin and public key; 404 before the ledger existed."""
        document = self._json("GET", "/v1/ledger/key")
        return _parse("GET /v1/ledger/key", lambda: {"origin": str(document["origin"]),
                                                     "public_key": str(document["public_key"])})

    def ledger_rotations(self) -> list[tuple[int, str]]:
        """The index and text of every entry that rotated the ledger's key, oldest first (not yet
        verified); none from a consortium of a version that could not rotate it."""
        document = self._json("GET", "/v1/ledger/key")
        return _parse("GET /v1/ledger/key", lambda: [(int(r["index"]), str(r["entry"]))
                                                     for r in document.get("rotations", [])])

    def ledger_checkpoint(self) -> dict[str, Any]:
        """``GET /v1/ledger/checkpoint``: the newest signed checkpoint (not yet verified)."""
        return dict(self._json("GET", "/v1/ledger/checkpoint"))

    def ledger_inclusion(self, index: int, size: int) -> dict[str, Any]:
        """``GET /v1/ledger/proofs/inclusion``: the proof that entry ``index`` is in the log of
        ``size`` entries, with that size's checkpoint."""
        return dict(self._json("GET", "/v1/ledger/proofs/inclusion", params={"index": index, "size": size}))

    def ledger_inclusions(self, indices: Sequence[int], size: int) -> dict[str, Any]:
        """``POST /v1/ledger/proofs/inclusions``: the proofs that each of ``indices`` (at most
        1,000) is in the log of ``size`` entries, in the order asked, with that size's checkpoint.
        A consortium of a version without it answers 404 (:class:`NotFoundError`)."""
        return dict(self._json("POST", "/v1/ledger/proofs/inclusions", json={"indices": list(indices), "size": size}))

    def ledger_consistency(self, old: int, new: int) -> dict[str, Any]:
        """``GET /v1/ledger/proofs/consistency``: the proof that the log of ``old`` entries is a
        prefix of the log of ``new``, with the checkpoint of ``new``."""
        return dict(self._json("GET", "/v1/ledger/proofs/consistency", params={"old": old, "new": new}))

    def get_aggregate(self, run_id: str, round_key: str, *, wait_s: float = 0.0) -> AggregateStatus:
        """``GET /v1/runs/{run_id}/aggregates/{round_key}``: the sum, or progress while open.

        Parameters
        ----------
        wait_s
            Long poll: the consortium answers an open round when it closes or after this long.

        Raises
        ------
        ConflictError
            409: the round failed.
        """
        path = f"/v1/runs/{_segment(run_id)}/aggregates/{_round_path(round_key)}"
        response = self._request("GET", path, params={"wait": f"{wait_s:.3f}"} if wait_s > 0 else None)
        if response.status_code == 202:
            progress = _json_body(response)
            return AggregateStatus(
                payload=None,
                contributed=int(progress.get("contributed", 0)),
                participants=int(progress.get("participants", 0)),
            )
        named = response.headers.get("X-Fedfraud-Contributors", "")
        return AggregateStatus(
            payload=response.content, contributors=frozenset(name for name in named.split(",") if name)
        )

    def put_note(self, run_id: str, round_key: str, note: bytes, *, signature: str,
                 wait_s: float = 0.0) -> list[dict[str, Any]] | None:
        """``PUT /v1/runs/{run_id}/notes/{round_key}``: this bank's signed note to a released round;
        with ``wait_s``, the round's notes once every summed bank posted (or after that long)."""
        path = f"/v1/runs/{_segment(run_id)}/notes/{_round_path(round_key)}"
        response = self._request("PUT", path, data=note, signature=signature,
                                 params={"wait": f"{wait_s:.3f}"} if wait_s > 0 else None)
        if response.status_code != 200:
            return None
        document = _json_body(response)
        return _parse("PUT notes", lambda: [dict(item) for item in items_of(document, "notes")])

    def get_notes(self, run_id: str, round_key: str, *, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """``GET /v1/runs/{run_id}/notes/{round_key}``: the notes posted so far (base64, signed);
        with ``wait_s``, answered once every summed bank posted or after that long."""
        document = self._json("GET", f"/v1/runs/{_segment(run_id)}/notes/{_round_path(round_key)}",
                              params={"wait": f"{wait_s:.3f}"} if wait_s > 0 else None)
        return _parse("GET notes", lambda: [dict(item) for item in items_of(document, "notes")])

    def put_assessment(self, run_id: str, document: bytes, *, signature: str) -> None:
        """``PUT /v1/runs/{run_id}/assessments``: this bank's signed assessment (before its proposal)."""
        self._request("PUT", f"/v1/runs/{_segment(run_id)}/assessments", data=document, signature=signature)

    def withdraw(self, run_id: str, reason: str) -> None:
        """``POST /v1/runs/{run_id}/withdrawals``: this bank cannot take part, and why."""
        self._request("POST", f"/v1/runs/{_segment(run_id)}/withdrawals", json={"reason": reason[:500]})

    def post_proposal(self, run_id: str, model: bytes, *, signature: str) -> dict[str, Any]:
        """``POST /v1/runs/{run_id}/proposals``: the finished model, signed."""
        response = self._request("POST", f"/v1/runs/{_segment(run_id)}/proposals", data=model, signature=signature)
        return _json_body(response)

    # ---------------------------------------------------------------------------- models

    def list_models(self) -> list[ModelInfo]:
        """``GET /v1/models``: published models."""
        document = self._json("GET", "/v1/models")
        return _parse("GET /v1/models", lambda: [ModelInfo.from_json(r) for r in items_of(document, "models")])

    def current_models(self) -> dict[str, dict[str, Any]]:
        """``GET /v1/models/current``: per family, the version it serves now (the last promoted
        one, or one an operator rolled back to), since when and why."""
        document = self._json("GET", "/v1/models/current")

        def parse() -> dict[str, dict[str, Any]]:
            return {str(row["family"]): {"version": str(row["version"]), "since": str(row["since"]),
                                         "reason": str(row["reason"])} for row in document}

        return _parse("GET /v1/models/current", parse)

    def get_model(self, version: str) -> ModelInfo:
        """``GET /v1/models/{version}``: one published model's metadata; 404 if none."""
        document = self._json("GET", f"/v1/models/{_segment(version)}")
        return _parse(f"GET /v1/models/{version}", lambda: ModelInfo.from_json(document))

    def download_model(self, version: str) -> bytes:
        """``GET /v1/models/{version}/download``: the model file."""
        return self._request("GET", f"/v1/models/{_segment(version)}/download").content

    # ---------------------------------------------------------------------------- plumbing

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ConsortiumError(
                f"{method} {path}: the consortium answered {response.status_code} with a body that is not JSON",
                status=response.status_code,
            ) from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        signature: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request, retrying transient failures; return any answer below 400."""
        headers = dict(headers or {})
        # One name for the request and its retries: the consortium logs it with every line.
        request_id = headers.setdefault(REQUEST_ID_HEADER, new_request_id())
        if data is not None:
            headers["Content-Type"] = OCTET_STREAM
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        url = self.base_url + path
        started = self._clock()
        failures = 0
        while True:
            retry_after: float | None = None
            try:
                response = self._session.request(
                    method, url, data=data, json=json, params=params, headers=headers, timeout=self.timeout
                )
            except _TRANSIENT as exc:
                error: ConsortiumError = UnavailableError(
                    f"{method} {path}: cannot reach the consortium at {self.base_url} ({type(exc).__name__})"
                )
            except requests.RequestException as exc:
                raise ConsortiumError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            else:
                log.debug("consortium request", extra={"method": method, "path": path, "status": response.status_code,
                                                        "request_id": request_id})
                if response.status_code < 400:
                    return response
                error = error_from_response(response.status_code, response.content, fallback=response.reason)
                error.request_id = request_id
                if not error.retryable:
                    log.debug("consortium refused a request", extra={
                        "method": method, "path": path, "status": response.status_code, "request_id": request_id})
                    raise error
                retry_after = _retry_after(response)
            failures += 1
            pause = self.retry.delay(failures)
            if retry_after is not None:
                pause = max(pause, min(retry_after, self.retry.max_delay_s))
            elapsed = self._clock() - started
            if failures >= self.retry.max_attempts or elapsed + pause > self.retry.total_timeout_s:
                error.message = f"{error.message} (gave up after {failures} attempts in {elapsed:.1f}s)"
                raise error
            log.warning(
                "consortium request failed, retrying: %s %s status=%s attempt=%d pause_s=%.2f request=%s",
                method, path, error.status, failures, pause, request_id, extra={"request_id": request_id},
            )
            self._sleep(pause)


def _parse(what: str, read: Callable[[], T]) -> T:
    try:
        return read()
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConsortiumError(f"{what}: unexpected answer from the consortium ({exc})") from None


def _segment(value: str) -> str:
    return quote(value, safe="")


def _round_path(round_key: str) -> str:
    # A round key's '/' separates its segments in the URL too (``gbdt/tree-0/level-1``).
    return quote(round_key, safe="/")


def _json_body(response: requests.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: rare from our service; the backoff applies


RECEIPT_HEADER = "X-Fedfraud-Receipt"
PRIVACY_RECEIPT_HEADER = "X-Fedfraud-Privacy-Receipt"


def _header_receipt(value: str | None) -> dict[str, Any] | None:
    """A receipt sent as a header (base64 JSON), or None if absent or unreadable."""
    if not value:
        return None
    try:
        document = json.loads(base64.b64decode(value, validate=True))
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
