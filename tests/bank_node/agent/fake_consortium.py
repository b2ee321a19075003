"""A small stand-in for the consortium service, for the agent's unit tests.

It implements the rules of ``docs/consortium-api.md`` for the endpoints a bank uses, in memory:
bearer tokens bound to banks, one-time key registration, the public context (secret refused),
opaque sealed shares readable by their recipient only, signed contributions summed by
:class:`~consortium.secure_sum.SecureSum` (201, 409 on replay or a closed round, 202 while a
round is open, 409 once it failed), signed proposals published when every participant proposed
the same digest, and the JSON error shape. Faults can be injected (``fail_next``) and rounds
failed on demand (``fail_round``). The real service has its own tests; this is a test double.
"""

from __future__ import annotations

import base64
import json
import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

import crypto
from consortium.secure_sum import (
    InvalidContributionError,
    NoteError,
    NotAParticipantError,
    ReplayError,
    RoundClosedError,
    Round,
    RoundState,
    SecureSum,
    UnknownRoundError,
)
from crypto.scheme import CryptoError, PayloadError, read_header
from crypto.roster import Roster, RosterError, roster_message
from schemas.assessment import assessment_message
from schemas.round_key import parse_round_key
from crypto.signing import (
    SignatureError,
    context_message,
    contribution_message,
    note_message,
    proposal_message,
    share_message,
    verify,
)


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class FakeRun:
    run_id: str
    model: str
    params: dict[str, Any]
    participants: list[str]
    min_banks: int
    rounds: SecureSum | None = None
    state: str = "open"
    failure_reason: str = ""
    proposals: dict[str, bytes] = field(default_factory=dict)
    proposal_signatures: dict[str, str] = field(default_factory=dict)
    withdrawn: dict[str, str] = field(default_factory=dict)
    window: dict[str, Any] | None = None
    baseline_version: int | None = None
    promotion_tolerance: float = 0.005
    assessments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        rounds = []
        if self.rounds is not None:
            for key, current in self.rounds._rounds.items():
                rounds.append({"key": key, "state": current.state.value, "contributors": len(current.contributions)})
        return {
            "run_id": self.run_id,
            "model": self.model,
            "params": self.params,
            "participants": self.participants,
            "min_banks": self.min_banks,
            "round_timeout_s": 600,
            "state": self.state,
            "failure_reason": self.failure_reason or None,
            "rounds": rounds,
            "window": self.window,
            "withdrawn": self.withdrawn,
            "baseline_version": self.baseline_version,
            "promotion_tolerance": self.promotion_tolerance,
        }


@dataclass
class Fault:
    method: str
    path_prefix: str
    status: int
    times: int
    retry_after: float | None = None


class FakeConsortium:
    """The fake service's state and its Flask app."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tokens: dict[str, str] = {}
        self.banks: dict[str, dict[str, Any]] = {}
        self.public_context: bytes | None = None
        self.context_publisher: str | None = None
        self.context_headers: dict[str, str] = {}
        self.shares: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.rosters: dict[str, dict[str, Any]] = {}
        self.note_signatures: dict[tuple[str, str, str], str] = {}
        self.runs: dict[str, FakeRun] = {}
        self.models: list[dict[str, Any]] = []
        self.model_files: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []
        self.app = self._create_app()

    # ------------------------------------------------------------------ test controls

    def enrol(self, bank_id: str) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = bank_id
            self.banks[bank_id] = {"bank_id": bank_id, "name": bank_id.title(), "signing_key": None, "box_key": None}
        return token

    def open_run(self, model: str, params: dict[str, Any], *, participants: list[str] | None = None,
                 min_banks: int = 3, window: dict[str, Any] | None = None,
                 baseline_version: int | None | str = "current") -> str:
        """Open a run; its baseline is the family's newest model, as the real consortium's current
        model, unless the test names one (or None)."""
        with self.lock:
            run_id = f"run-{len(self.runs) + 1}"
            members = participants or sorted(b for b, info in self.banks.items() if info["box_key"])
            if baseline_version == "current":
                family = [m["version"] for m in self.models if m["family"] == model]
                baseline_version = family[-1] if family else None
            assert baseline_version is None or isinstance(baseline_version, int)
            self.runs[run_id] = FakeRun(run_id, model, params, members, min_banks, window=window,
                                        baseline_version=baseline_version)
            return run_id

    def fail_next(self, method: str, path_prefix: str, status: int, *, times: int = 1,
                  retry_after: float | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(method, path_prefix, status, times, retry_after))

    def fail_round(self, run_id: str, key: str) -> None:
        """Close a round at its 'deadline' (with too few contributions it fails, and its run).
        ``key`` is the algorithm's key; the length the banks add to it (``/n...``) is found."""
        with self.lock:
            run = self.runs[run_id]
            assert run.rounds is not None
            wire = next((k for k in run.rounds.keys() if k == key or k.rsplit("/", 1)[0] == key), key)
            closed = run.rounds.close(wire)
            if closed.state is RoundState.FAILED:
                run.state, run.failure_reason = "failed", f"round {key!r} failed: {closed.reason}"

    def count(self, method: str, path_part: str, status: int) -> int:
        with self.lock:
            return sum(1 for m, p, s in self.requests if m == method and path_part in p and s == status)

    # ---------------------------------------------------------------------- the app

    def _create_app(self) -> Flask:
        app = Flask("fake_consortium")
        fake = self

        @app.errorhandler(HttpError)
        def http_error(exc: HttpError) -> tuple[Response, int]:
            names = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                     409: "Conflict", 422: "Unprocessable Entity", 503: "Service Unavailable"}
            body = {"code": exc.status, "status": names.get(exc.status, "Error"), "message": exc.message,
                    "errors": {}, **exc.extra}
            return jsonify(body), exc.status

        @app.before_request
        def inject_faults() -> tuple[Response, int] | None:
            with fake.lock:
                for fault in fake.faults:
                    if fault.times > 0 and request.method == fault.method and request.path.startswith(fault.path_prefix):
                        fault.times -= 1
                        response = jsonify({"code": fault.status, "status": "Injected", "message": "injected fault",
                                            "errors": {}})
                        if fault.retry_after is not None:
                            response.headers["Retry-After"] = str(fault.retry_after)
                        return response, fault.status
            return None

        @app.after_request
        def record(response: Response) -> Response:
            with fake.lock:
                fake.requests.append((request.method, request.path, response.status_code))
            return response

        def caller() -> str:
            header = request.headers.get("Authorization", "")
            token = header.removeprefix("Bearer ").strip()
            if not header.startswith("Bearer ") or token not in fake.tokens:
                raise HttpError(401, "missing or unknown token")
            return fake.tokens[token]

        def check_signature(bank: str, message: bytes) -> None:
            try:
                verify(fake.banks[bank]["signing_key"], message, request.headers.get("X-Fedfraud-Signature"))
            except SignatureError as exc:
                raise HttpError(400, str(exc)) from None

        def run_of(run_id: str) -> FakeRun:
            if run_id not in fake.runs:
                raise HttpError(404, f"no run {run_id!r}")
            return fake.runs[run_id]

        def round_of(run: FakeRun, key: str) -> tuple[SecureSum, Round]:
            try:
                if run.rounds is not None:
                    return run.rounds, run.rounds.get(key)
            except UnknownRoundError:
                pass
            raise HttpError(404, f"no round {key!r}")

        def participant(run: FakeRun) -> str:
            bank = caller()
            if bank not in run.participants:
                raise HttpError(403, f"bank {bank!r} is not a participant of run {run.run_id!r}")
            return bank

        @app.get("/v1/health")
        def health() -> Any:
            return {"status": "ok", "database": "ok"}

        @app.get("/v1/banks")
        def list_banks() -> Any:
            caller()
            with fake.lock:
                return jsonify(list(fake.banks.values()))

        @app.put("/v1/banks/<bank_id>/keys")
        def register_keys(bank_id: str) -> Any:
            if caller() != bank_id:
                raise HttpError(403, "a bank registers its own keys only")
            body = request.get_json()
            with fake.lock:
                bank = fake.banks[bank_id]
                if bank["signing_key"]:
                    raise HttpError(409, f"bank {bank_id!r} already registered its keys")
                bank.update(signing_key=body["signing_key"], box_key=body["box_key"])
                return jsonify(bank), 200

        @app.post("/v1/roster")
        def sign_roster() -> Any:
            bank = caller()
            data = request.get_data()
            check_signature(bank, roster_message(bank, data))
            try:
                roster = Roster.from_bytes(data)
            except RosterError as exc:
                raise HttpError(422, str(exc)) from None
            with fake.lock:
                entry = fake.rosters.setdefault(
                    roster.digest, {"version": roster.version, "digest": roster.digest,
                                    "document": data.decode(), "proposed_by": bank, "signatures": {}})
                entry["signatures"][bank] = request.headers["X-Fedfraud-Signature"]
                return jsonify(_roster_view(entry))

        @app.get("/v1/roster")
        def list_rosters() -> Any:
            caller()
            since = int(request.args.get("since", "0"))
            with fake.lock:
                entries = sorted((e for e in fake.rosters.values() if e["version"] > since), key=lambda e: e["version"])
                return jsonify([_roster_view(e) for e in entries])

        @app.put("/v1/keys/context")
        def put_context() -> Any:
            bank = caller()
            data = request.get_data()
            roster_digest = request.headers.get("X-Fedfraud-Roster", "")
            check_signature(bank, context_message(bank, roster_digest, data))
            try:
                context = crypto.load_context(data, require_public=True)
            except CryptoError as exc:
                raise HttpError(422, f"not a public context: {exc}") from None
            with fake.lock:
                if fake.public_context is not None and fake.context_headers.get("X-Fedfraud-Roster") == roster_digest:
                    raise HttpError(409, "the consortium already holds an HE context for this roster")
                fake.public_context, fake.context_publisher = data, bank
                fake.context_headers = {
                    "X-Fedfraud-Publisher": bank, "X-Fedfraud-Signature": request.headers["X-Fedfraud-Signature"],
                    "X-Fedfraud-Roster": roster_digest, "X-Fedfraud-Key-Id": context.key_id,
                }
            return "", 201

        @app.get("/v1/keys/context")
        def get_context() -> Any:
            if fake.public_context is None:
                raise HttpError(404, "no HE context yet")
            return Response(fake.public_context, mimetype="application/octet-stream", headers=fake.context_headers)

        @app.put("/v1/keys/shares/<bank_id>")
        def put_share(bank_id: str) -> Any:
            publisher = caller()
            if publisher != fake.context_publisher:
                raise HttpError(403, "only the bank that published the context posts shares")
            key_id = fake.context_headers["X-Fedfraud-Key-Id"]
            data = request.get_data()
            check_signature(publisher, share_message(publisher, bank_id, key_id, data))
            with fake.lock:
                held = fake.shares.get(bank_id)
                if held is not None and held[1]["X-Fedfraud-Key-Id"] == key_id:
                    raise HttpError(409, f"a share for {bank_id!r} was already posted")
                fake.shares[bank_id] = (data, {"X-Fedfraud-Publisher": publisher, "X-Fedfraud-Key-Id": key_id,
                                               "X-Fedfraud-Signature": request.headers["X-Fedfraud-Signature"]})
            return "", 201

        @app.get("/v1/keys/shares/<bank_id>")
        def get_share(bank_id: str) -> Any:
            if caller() != bank_id:
                raise HttpError(403, "a bank reads its own share only")
            held = fake.shares.get(bank_id)
            if held is None or held[1]["X-Fedfraud-Key-Id"] != fake.context_headers.get("X-Fedfraud-Key-Id"):
                raise HttpError(404, f"no share for {bank_id!r} yet")
            return Response(held[0], mimetype="application/octet-stream", headers=held[1])

        @app.get("/v1/runs")
        def list_runs() -> Any:
            caller()
            wanted = request.args.get("state")
            with fake.lock:
                return jsonify([r.to_json() for r in fake.runs.values() if wanted in (None, r.state)])

        @app.get("/v1/runs/<run_id>")
        def get_run(run_id: str) -> Any:
            caller()
            with fake.lock:
                return jsonify(run_of(run_id).to_json())

        @app.put("/v1/runs/<run_id>/contributions/<path:key>")
        def contribute(run_id: str, key: str) -> Any:
            with fake.lock:
                run = run_of(run_id)
                bank = participant(run)
                data = request.get_data()
                check_signature(bank, contribution_message(run_id, key, bank, data))
                if run.state != "open":
                    raise HttpError(409, f"run {run_id!r} is {run.state}")
                if run.rounds is None:
                    assert fake.public_context is not None
                    run.rounds = SecureSum(context=crypto.load_context(fake.public_context, require_public=True),
                                           min_banks=run.min_banks)
                try:
                    n_values = read_header(data).n_values
                except PayloadError as exc:
                    raise HttpError(422, str(exc)) from None
                if key not in run.rounds.keys():
                    expected = parse_round_key(key).expected(run.participants)
                    run.rounds.open(key, participants=expected, n_values=n_values)
                try:
                    run.rounds.contribute(key, bank, data)
                except (ReplayError, RoundClosedError) as exc:
                    raise HttpError(409, str(exc)) from None
                except NotAParticipantError as exc:
                    raise HttpError(403, str(exc)) from None
                except InvalidContributionError as exc:
                    raise HttpError(422, str(exc)) from None
            return jsonify({"round_key": key, "bank_id": bank}), 201

        @app.get("/v1/runs/<run_id>/aggregates/<path:key>")
        def aggregate(run_id: str, key: str) -> Any:
            with fake.lock:
                run = run_of(run_id)
                participant(run)
                _, current = round_of(run, key)
                if current.state is RoundState.FAILED:
                    raise HttpError(409, f"round {key!r} failed: {current.reason}", state="failed",
                                    dropped=sorted(current.dropped))
                if current.state is RoundState.OPEN:
                    return jsonify({"state": "open", "contributed": len(current.contributions),
                                    "participants": len(current.participants)}), 202
                response = Response(current.aggregate, mimetype="application/octet-stream")
                response.headers["X-Fedfraud-Contributors"] = ",".join(sorted(current.summed))
                return response

        @app.put("/v1/runs/<run_id>/notes/<path:key>")
        def post_note(run_id: str, key: str) -> Any:
            with fake.lock:
                run = run_of(run_id)
                bank = participant(run)
                data = request.get_data()
                check_signature(bank, note_message(run_id, key, bank, data))
                sums, _ = round_of(run, key)
                try:
                    sums.post_note(key, bank, data)
                except NoteError as exc:
                    raise HttpError(409, str(exc)) from None
                fake.note_signatures[(run_id, key, bank)] = request.headers.get("X-Fedfraud-Signature", "")
            return jsonify({"round_key": key, "bank_id": bank}), 201

        @app.get("/v1/runs/<run_id>/notes/<path:key>")
        def get_notes(run_id: str, key: str) -> Any:
            with fake.lock:
                run = run_of(run_id)
                participant(run)
                notes = round_of(run, key)[1].notes
                return jsonify({"notes": [
                    {"bank_id": bank, "note": base64.b64encode(note).decode(), "signature": fake.note_signatures.get((run_id, key, bank), "")}
                    for bank, note in sorted(notes.items())
                ]})

        @app.post("/v1/runs/<run_id>/withdrawals")
        def withdraw(run_id: str) -> Any:
            with fake.lock:
                run = run_of(run_id)
                bank = participant(run)
                run.withdrawn[bank] = str((request.get_json() or {}).get("reason", ""))
                if len(run.participants) - len(run.withdrawn) < run.min_banks:
                    run.state, run.failure_reason = "failed", "too few banks can take part"
                return jsonify({"run_id": run_id, "state": run.state, "withdrawn": run.withdrawn})

        @app.put("/v1/runs/<run_id>/assessments")
        def post_assessment(run_id: str) -> Any:
            with fake.lock:
                run = run_of(run_id)
                bank = participant(run)
                data = request.get_data()
                check_signature(bank, assessment_message(run_id, bank, data))
                run.assessments[bank] = json.loads(data)
            return jsonify({"run_id": run_id, "bank_id": bank}), 201

        @app.post("/v1/runs/<run_id>/proposals")
        def propose(run_id: str) -> Any:
            with fake.lock:
                run = run_of(run_id)
                bank = participant(run)
                data = request.get_data()
                check_signature(bank, proposal_message(run_id, bank, data))
                if bank in run.proposals:
                    raise HttpError(409, f"bank {bank!r} already proposed a model for run {run_id!r}")
                run.proposals[bank] = data
                run.proposal_signatures[bank] = request.headers["X-Fedfraud-Signature"]
                digests = {hashlib.sha256(p).hexdigest() for p in run.proposals.values()}
                if set(run.proposals) == set(run.participants) and len(digests) == 1:
                    version = str(len(fake.models) + 1)
                    digest = digests.pop()
                    fake.models.append({"version": int(version), "run_id": run_id, "family": run.model,
                                        "digest": digest, "created_at": "2024-01-01T00:00:00Z",
                                        "banks": sorted(run.participants),
                                        "proposals": [{"bank_id": b, "signature": sig}
                                                      for b, sig in sorted(run.proposal_signatures.items())]})
                    fake.model_files[version] = data
                    run.state = "completed"
            return jsonify({"run_id": run_id, "bank_id": bank, "digest": hashlib.sha256(data).hexdigest()}), 201

        @app.get("/v1/models")
        def list_models() -> Any:
            with fake.lock:
                return jsonify(list(fake.models))

        @app.get("/v1/models/current")
        def current_models() -> Any:  # the newest model of each family (every model promoted here)
            with fake.lock:
                newest = {m["family"]: m for m in fake.models}
            return jsonify([{"family": f, "version": m["version"], "since": m["created_at"], "reason": "promoted"}
                            for f, m in sorted(newest.items())])

        @app.get("/v1/models/<int:version>")
        def get_model(version: int) -> Any:
            with fake.lock:
                found = [m for m in fake.models if m["version"] == version]
            if not found:
                raise HttpError(404, f"no published model version {version}")
            return jsonify(found[0])

        @app.get("/v1/models/<version>/download")
        def download(version: str) -> Any:
            if version not in fake.model_files:
                raise HttpError(404, f"no model {version!r}")
            return Response(fake.model_files[version], mimetype="application/octet-stream")

        return app


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def _roster_view(entry: dict[str, Any]) -> dict[str, Any]:
    signatures = [{"bank_id": b, "signature": sig} for b, sig in sorted(entry["signatures"].items())]
    return {**entry, "signatures": signatures, "proposed_at": "2026-01-01T00:00:00Z"}


@contextmanager
def serve(fake: FakeConsortium) -> Iterator[str]:
    """Serve the fake over real HTTP on a free local port; yield its base URL."""
    server = make_server("127.0.0.1", 0, fake.app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-consortium", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
