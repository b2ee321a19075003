"""The compliance review pages in a real headless Chromium (Debian's, driven by Playwright) against
the real service over HTTP on 127.0.0.1: sign-in, the ledger browser and its filters, dates in the
viewer's time zone, exports that verify offline, bank summaries, lineage, and the verification
banner naming the first bad entry after the database was tampered with."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import requests
from flask import Flask
from sqlalchemy import text

import crypto
from consortium.storage.database import Database
from fedfraud.ledger import check_export
from tests.bank_node.agent.fake_consortium import serve
from tests.consortium.conftest import Consortium, bearer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Screenshots of every page, for people to look at (the test run's output).
SCREENSHOTS = Path(os.environ.get("FEDFRAUD_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "out" / "test-output")) \
    / "compliance-pages"


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the page tests: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def site(app: Flask) -> Iterator[str]:
    """The test's app served over real HTTP."""
    with serve(SimpleNamespace(app=app)) as url:  # type: ignore[arg-type]
        yield url


def _published(consortium: Consortium, he: crypto.HEScheme) -> str:
    run_id = consortium.open_run()["run_id"]
    for bank in consortium.banks.values():
        assert bank.contribute(run_id, "r/n3", he.encrypt(np.arange(3.0))).status_code == 201
    for bank in consortium.banks.values():
        bank.propose(run_id, b'{"learner": {"trees": ["pages"]}}')
    assert consortium.run(run_id)["state"] == "completed"
    return run_id


def _sign_in(page: Any, site: str, token: str) -> None:
    page.goto(f"{site}/compliance/ledger")
    assert "/compliance/sign-in" in page.url
    page.get_by_label("Compliance token").fill(token)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def test_a_compliance_officer_signs_in_browses_filters_exports_and_signs_out(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, site: str, browser: Any,
    tmp_path: Path, app: Flask,
) -> None:
    run_id = _published(consortium, he_key)
    total = consortium.client.get("/v1/ledger/entries?limit=1", headers=bearer(compliance_token)).get_json()["total"]
    context = browser.new_context(timezone_id="Asia/Tokyo", locale="en-GB", accept_downloads=True,
                                  viewport={"width": 1366, "height": 768})
    page = context.new_page()

    # A bank's token does not open the pages; the message says why.
    _sign_in(page, site, consortium.bank("bank-1").token)
    assert "bank token" in page.locator("#sign-in-error").inner_text()
    _shot(page, "sign-in-refused")
    _sign_in(page, site, compliance_token)
    expect(page).to_have_url(re.compile(r"/compliance/ledger\??$"))
    banner = page.locator("#verification")
    assert banner.get_attribute("role") == "status"
    assert f"verified up to entry {total - 1}" in banner.inner_text()
    _shot(page, "ledger")
    rows = page.locator("#entries tbody tr")
    expect(rows).to_have_count(min(total, 100))
    # The service's clock says 2025-03-01 02:00 UTC: 11:00 in Tokyo, with the UTC text as the title.
    first_time = rows.first.locator("time")
    assert first_time.inner_text().startswith("2025-03-01 11:00:00")
    assert first_time.get_attribute("title") == "2025-03-01 02:00:00 UTC"
    # Every visible field has a label.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select')]
        .filter(el => !el.labels || el.labels.length === 0).map(el => el.name || el.id)""")
    assert unlabelled == []

    page.get_by_label("Bank").fill("bank-2")
    page.get_by_label("Event").select_option("contribution.accepted")
    # A click that navigates does not wait for the new page: the checks after it retry until it is there.
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"bank_id=bank-2&event=contribution\.accepted"))
    filtered = page.locator("#entries tbody tr")
    expect(filtered).to_have_count(1)
    assert "bank-2" in filtered.first.inner_text()
    assert "1 entries match the filters" in page.locator("#entries caption").inner_text()
    _shot(page, "ledger-filtered")

    with page.expect_download() as download:
        page.get_by_role("link", name="Export JSON Lines (with proofs)").click()
    saved = tmp_path / "ledger.jsonl"
    download.value.save_as(saved)
    key = consortium.client.get("/v1/ledger/key", headers=bearer(compliance_token)).get_json()["public_key"]
    outcome = check_export(saved, public_key=key)
    assert outcome.ok and outcome.log.size == total
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    with Database.engine_for(app).connect() as connection:
        stored = [dict(r) for r in connection.execute(text(
            "SELECT seq, event, bank_id, run_id, leaf_hash, signature FROM ledger_entries ORDER BY seq")).mappings()]
    assert [(int(r["index"]), r["event"], r["bank_id"] or None, r["run_id"] or None, r["entry_sha256_leaf"],
             r["checkpoint_signature"]) for r in exported] == [
        (r["seq"], r["event"], r["bank_id"], r["run_id"], r["leaf_hash"], r["signature"]) for r in stored]

    page.get_by_role("link", name="Banks").click()
    _shot(page, "banks")
    bank_row = page.locator("#banks tbody tr", has_text="bank-1")
    assert re.search(r"bank-1\s+Bank-1\s+1\s+1\s", bank_row.inner_text())  # one run, one contribution
    page.get_by_role("link", name="Models").click()
    _shot(page, "models")
    page.get_by_role("link", name="v1").click()
    _shot(page, "lineage")
    assert run_id in page.locator(".facts").inner_text()
    expect(page.locator("#rounds tbody tr")).to_have_count(3)

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/compliance/sign-in"))
    page.goto(f"{site}/compliance/banks")
    expect(page).to_have_url(re.compile(r"/compliance/sign-in"))
    context.close()


def test_the_banner_names_the_first_bad_entry_after_tampering(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, site: str, browser: Any, app: Flask
) -> None:
    _published(consortium, he_key)
    with Database.engine_for(app).begin() as connection:
        target = connection.execute(text("SELECT MIN(seq) FROM ledger_entries WHERE event = 'round.released'")).scalar_one()
        connection.execute(text("UPDATE ledger_entries SET body = replace(body, 'bank-3', 'bank-4') WHERE seq = :s"),
                           {"s": target})
    page = browser.new_page()
    _sign_in(page, site, compliance_token)
    banner = page.locator("#verification")
    assert banner.get_attribute("role") == "alert"
    assert f"Ledger broken at entry {target}" in banner.inner_text()
    _shot(page, "ledger-broken")
    page.close()


def test_sign_in_needs_the_forms_csrf_token_and_the_cookie_is_locked_down(
    compliance_token: str, site: str
) -> None:
    browser_like = requests.Session()
    refused = browser_like.post(f"{site}/compliance/sign-in", data={"token": compliance_token}, allow_redirects=False)
    assert refused.status_code == 400 and "CSRF" in refused.json()["message"]
    form = browser_like.get(f"{site}/compliance/sign-in")
    assert "default-src 'none'" in form.headers["Content-Security-Policy"]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    signed = browser_like.post(f"{site}/compliance/sign-in", data={"token": compliance_token, "csrf_token": csrf[1]},
                               allow_redirects=False)
    assert signed.status_code == 302
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and compliance_token not in cookie
    # Another site's form cannot sign the officer out (no CSRF token), nor come back after.
    assert browser_like.post(f"{site}/compliance/sign-out", allow_redirects=False).status_code == 400
    assert browser_like.get(f"{site}/compliance/ledger", allow_redirects=False).status_code == 200
    fresh = re.search(r'name="csrf_token" value="([^"]+)"', browser_like.get(f"{site}/compliance/sign-in").text)
    assert fresh is not None
    open_redirect = browser_like.post(f"{site}/compliance/sign-in?next=//evil.example/x",
                                      data={"token": compliance_token, "csrf_token": fresh[1]}, allow_redirects=False)
    assert open_redirect.headers["Location"].endswith("/compliance/ledger")


def test_behind_tls_the_session_cookie_is_https_only(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from consortium.app import create_app

    monkeypatch.setenv("FEDFRAUD_SESSION_COOKIE_SECURE", "true")
    secure = create_app(app_config)
    try:
        cookie = secure.test_client().get("/compliance/sign-in").headers["Set-Cookie"]
        assert "; Secure" in cookie and "HttpOnly" in cookie
    finally:
        Database.engine_for(secure).dispose()
