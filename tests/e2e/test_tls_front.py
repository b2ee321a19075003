"""The consortium's TLS front (ops/nginx) run for real with Debian's nginx, in front of a real
aggregator: the files as shipped, with only their paths and ports changed for the test.

Certificates are made with the openssl command line: a server CA and the front's certificate for
127.0.0.1, the consortium's bank CA and a bank's client certificate, and a stranger's certificate
issued by nobody the front knows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from fedfraud.localnet import LocalConsortium, free_port, wait_for
from tests.e2e.test_http_federation import BANKS, TRAIN_START, bank_files, finish, set_up  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

OPS = Path(__file__).resolve().parents[2] / "ops" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture(scope="module")
def nginx() -> str:
    if not Path(NGINX).exists():
        pytest.fail("Debian's nginx is needed to run the TLS front: apt-get install nginx-light (.ci/run does)")
    return NGINX


# ------------------------------------------------------------------------------------ certificates

def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _authority(folder: Path, name: str, subject: str) -> None:
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={subject}", "-days", "2",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _issued(folder: Path, name: str, subject: str, authority: str, extensions: str) -> None:
    _openssl(folder, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={subject}")
    (folder / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
                                        f"authorityKeyIdentifier=keyid,issuer\n{extensions}\n")
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.crt", "-CAkey", f"{authority}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the front and its callers use, under the names ops/nginx gives them."""
    folder = tmp_path_factory.mktemp("tls")
    _authority(folder, "server-ca", "fedfraud test server CA")
    _issued(folder, "consortium", "127.0.0.1", "server-ca",
            "subjectAltName=IP:127.0.0.1\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth")
    _authority(folder, "banks-ca", "fedfraud test bank CA")
    _issued(folder, "bank", "bank-1", "banks-ca", "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth")
    _authority(folder, "stranger-ca", "somebody else")
    _issued(folder, "stranger", "bank-1", "stranger-ca",
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth")
    return folder


# ------------------------------------------------------------------------------------ the front

def _replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"ops/nginx no longer holds {old!r}: update this test with it"
    return text.replace(old, new)


@contextmanager
def front(nginx: str, tls: Path, folder: Path, upstream_port: int, *, mutual: bool) -> Iterator[tuple[str, str]]:
    """ops/nginx's front on two free ports of 127.0.0.1, passing to ``upstream_port``; with
    ``mutual``, its mutual-TLS include switched on as docs/operations.md says. Yields the HTTPS
    and the plain HTTP base URLs."""
    folder.mkdir()
    conf_d = folder / "conf.d"
    conf_d.mkdir()
    https_port, http_port = free_port(), free_port()
    text = (OPS / "fedfraud-consortium.conf").read_text()
    text = _replaced(text, "/etc/nginx/conf.d/", f"{conf_d}/")
    text = _replaced(text, "/etc/fedfraud/tls/", f"{tls}/")
    text = _replaced(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    text = _replaced(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    if mutual:
        text = _replaced(text, "# include ", "include ")
    (conf_d / "fedfraud-consortium.conf").write_text(text)
    (conf_d / "fedfraud-mtls.conf").write_text(
        _replaced((OPS / "fedfraud-mtls.conf").read_text(), "/etc/fedfraud/tls/", f"{tls}/"))
    (conf_d / "fedfraud-upstream.conf").write_text(
        _replaced((OPS / "fedfraud-upstream.conf").read_text(), "127.0.0.1:8080", f"127.0.0.1:{upstream_port}"))
    temporary = folder / "temp"
    temporary.mkdir()
    main = "\n".join([
        "user root;" if os.geteuid() == 0 else "",  # its workers read the test's private folders
        "worker_processes 1;",
        f"pid {folder}/nginx.pid;",
        f"error_log {folder}/error.log notice;",
        "events { worker_connections 256; }",
        "http {",
        *(f"    {kind}_temp_path {temporary}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        f"    include {conf_d}/fedfraud-consortium.conf;",
        "}",
    ])
    (folder / "nginx.conf").write_text(main + "\n")
    checked = subprocess.run([nginx, "-t", "-p", str(folder), "-c", str(folder / "nginx.conf")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"https://127.0.0.1:{https_port}"
    try:
        wait_for(lambda: _answers(base, tls), 30, "the TLS front")
        yield base, f"http://127.0.0.1:{http_port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(base: str, tls: Path) -> bool:
    try:
        return requests.get(f"{base}/v1/health", verify=tls / "server-ca.crt", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _get(base: str, path: str, tls: Path, token: str, cert: str | None = None) -> requests.Response:
    return requests.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, verify=tls / "server-ca.crt",
                        cert=None if cert is None else (str(tls / f"{cert}.crt"), str(tls / f"{cert}.key")), timeout=30)


# ------------------------------------------------------------------------------------ tests

def test_the_front_passes_the_api_over_tls_and_mutual_tls_admits_only_the_banks_certificates(
    consortium: LocalConsortium, nginx: str, tls: Path, tmp_path: Path
) -> None:
    token = consortium.bank_tokens["bank-1"]
    with front(nginx, tls, tmp_path / "tls-only", consortium.port, mutual=False) as (base, plain):
        assert _get(base, "/v1/ledger/key", tls, token).json()["public_key"]
        moved = requests.get(f"{plain}/v1/health", allow_redirects=False, timeout=10)
        assert moved.status_code == 301 and moved.headers["Location"].startswith("https://")
        # A body of 8 MiB, past nginx's default limit of 1 MiB, reaches the aggregator, which answers
        # it in its own JSON (an unknown run), not nginx's HTML 413.
        big = requests.put(f"{base}/v1/runs/no-such-run/contributions/r1", data=b"\0" * (8 << 20),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
                           verify=tls / "server-ca.crt", timeout=60)
        assert big.status_code == 404 and "message" in big.json(), big.text[:300]
    with front(nginx, tls, tmp_path / "mutual", consortium.port, mutual=True) as (base, _):
        assert _answers(base, tls)  # the health check needs no client certificate
        assert _get(base, "/v1/ledger/key", tls, token).status_code == 403
        assert _get(base, "/v1/ledger/key", tls, token, cert="stranger").status_code in (400, 403)
        admitted = _get(base, "/v1/ledger/key", tls, token, cert="bank")
        assert admitted.status_code == 200 and admitted.json()["public_key"]
        assert _get(base, "/v1/ledger/key", tls, "not-a-token", cert="bank").status_code == 401


def test_a_private_run_goes_through_the_mutual_tls_front(
    consortium: LocalConsortium, bank_files: dict[str, Path], nginx: str, tls: Path, tmp_path: Path
) -> None:
    """Every bank's agent reaches the consortium only through the front, with its client
    certificate and the server CA it trusts: a differentially private run completes, each bank
    checking the two receipts that come in a contribution's answer headers."""
    from bank_node.agent.state import AgentConfig, StateDir

    set_up(consortium)
    with front(nginx, tls, tmp_path / "mutual", consortium.port, mutual=True) as (base, _):
        for bank in BANKS:
            StateDir(consortium.state_dir(bank)).save_config(AgentConfig(url=base, bank_id=bank))
        consortium.env = {**consortium.env, "REQUESTS_CA_BUNDLE": str(tls / "server-ca.crt"),
                          "FEDFRAUD_CLIENT_CERT": str(tls / "bank.crt"), "FEDFRAUD_CLIENT_KEY": str(tls / "bank.key")}
        run_id = consortium.open_run("logreg", {"dp_epsilon": 4.0}, train_start=TRAIN_START)
        finish(consortium, {b: consortium.start_agent(b, bank_files[b], train_start=TRAIN_START) for b in BANKS})
    assert consortium.run(run_id)["state"] == "completed"
    for bank in BANKS:
        kept = [json.loads(p.read_text())["entry"] for p in (consortium.state_dir(bank) / "receipts").glob("*.json")]
        assert sum('"privacy.spent"' in entry for entry in kept) == 1
        assert sum('"contribution.accepted"' in entry for entry in kept) > 1
