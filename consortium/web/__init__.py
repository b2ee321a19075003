"""The compliance review pages: server-rendered, no build step.

Compliance staff sign in with their compliance token (kept only as a token id in a signed,
HttpOnly session cookie; every POST carries a CSRF token), then browse and filter the
contribution ledger, see on every page whether the stored log still verifies (and the first bad
entry if not), read per-bank summaries and model lineages, and export the log. Pages read what
the REST API reads; nothing here changes state but the session.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from marshmallow import ValidationError
from sqlalchemy import select
from wtforms.validators import ValidationError as CSRFValidationError

from consortium import ledger, publishing
from consortium.api.ledger import page, summaries_view
from consortium.api.models import lineage_view
from consortium.api.schemas import LedgerQuerySchema
from consortium.auth import hash_token
from consortium.errors import NotFound
from consortium.storage.database import db
from consortium.storage.models import Role, Token
from schemas.ledger import EVENTS

__all__ = ["init_web"]

F = TypeVar("F", bound=Callable[..., Any])

blp = Blueprint("compliance", __name__, url_prefix="/compliance", template_folder="templates",
                static_folder="static")

SESSION_HOURS = 8


def init_web(app: Flask) -> None:
    """Register the pages; the session key is derived from the ledger key unless ``SECRET_KEY``
    is set (one secret file to keep, and every worker signs cookies the same way)."""
    if not app.config.get("SECRET_KEY"):
        seed = bytes(ledger.ledger(app).key)
        app.config["SECRET_KEY"] = hmac.new(seed, b"fedfraud compliance session", hashlib.sha256).digest()
    # Flask has defaults for these (no SameSite, a month): the review pages' own choices win.
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
                      WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600)
    app.register_blueprint(blp)


@blp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                                   "img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                                                   "base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {"csrf_token": generate_csrf, "signed_in": "token_id" in session}


def signed_in(view: F) -> F:
    """Pages for a signed-in compliance officer; others go to the sign-in page. The token is
    checked at every request: a revoked token ends the session."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token_id = session.get("token_id")
        row = db.session.get(Token, token_id) if isinstance(token_id, int) else None
        if row is None or row.revoked_at is not None or row.role != Role.COMPLIANCE.value:
            session.clear()
            return redirect(url_for("compliance.sign_in", next=request.full_path))
        g.verification = ledger.verify_database(db.session)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _check_csrf() -> None:
    try:
        validate_csrf(request.form.get("csrf_token"))
    except (CSRFValidationError, CSRFError) as exc:
        abort(400, description=f"the form's CSRF token is missing or expired ({exc}); reload the page and retry")


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path of these pages."""
    if target and target.startswith("/compliance/") and not target.startswith("//"):
        return target
    return url_for("compliance.entries")


@blp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """The sign-in form: a compliance token, once; the cookie then holds its id only."""
    error = None
    if request.method == "POST":
        _check_csrf()
        token = (request.form.get("token") or "").strip()
        row = db.session.execute(select(Token).where(Token.token_sha256 == hash_token(token))).scalar_one_or_none() \
            if token else None
        if row is None or row.revoked_at is not None:
            error = "This token is unknown or revoked."
        elif row.role != Role.COMPLIANCE.value:
            error = f"This is a {row.role} token: the review pages take a compliance token."
        else:
            session.clear()
            session.permanent = True
            session["token_id"] = row.id
            return redirect(_safe_next(request.args.get("next")))
    return render_template("sign_in.html", error=error), 401 if error else 200


@blp.route("/sign-out", methods=["POST"])
def sign_out() -> Any:
    _check_csrf()
    session.clear()
    return redirect(url_for("compliance.sign_in"))


@blp.route("/")
@signed_in
def home() -> Any:
    return redirect(url_for("compliance.entries"))


@blp.route("/ledger")
@signed_in
def entries() -> Any:
    """The ledger browser: filters, a page of entries, links to the next page."""
    filters = {k: v for k, v in request.args.items() if v != "" and k in LedgerQuerySchema().fields}
    problems: dict[str, Any] = {}
    try:
        query = LedgerQuerySchema().load(filters)
    except ValidationError as exc:
        problems = exc.normalized_messages()
        query = LedgerQuerySchema().load({})
    listing = page(query)
    kept = {k: v for k, v in filters.items() if k not in ("after", "limit")}
    return render_template("ledger.html", listing=listing, filters=kept, problems=problems,
                           events=sorted(EVENTS), descriptions=EVENTS)


@blp.route("/ledger/export.<kind>")
@signed_in
def export(kind: str) -> Response:
    """The whole log as JSON Lines (what ``fedfraud ledger verify`` checks) or CSV."""
    if kind not in ("jsonl", "csv"):
        raise NotFound(f"no export as {kind!r}: jsonl or csv")
    return ledger.export_response(kind)


@blp.route("/banks")
@signed_in
def banks() -> Any:
    return render_template("banks.html", summaries=summaries_view())


@blp.route("/models")
@signed_in
def models() -> Any:
    return render_template("models.html", models=publishing.list_models(db.session))


@blp.route("/models/<int:version>")
@signed_in
def lineage(version: int) -> Any:
    return render_template("lineage.html", lineage=lineage_view(version))
