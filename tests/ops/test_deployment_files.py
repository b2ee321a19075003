"""ops/ as a platform team would use it: the compose file, the systemd units and the TLS front
agree with each other and with the command line they start."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from consortium.api.schemas import MAX_WAIT_S
from consortium.config import ConsortiumConfig
from fedfraud.cli import main

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"
#: Where the units and the image put the repository.
INSTALLED = Path("/opt/fedfraud")
#: Room for an answer's receipt headers: two receipts whose proofs hold 32 hashes each (a log of
#: four billion entries), as base64 JSON, with their entries and checkpoints.
RECEIPT_HEADERS_MAX = 16 * 1024


def command_of(args: list[str]) -> click.Command:
    """The ``fedfraud`` command ``args`` would run, parsed as click parses it (unknown commands or
    options, or bad values, fail here)."""
    command: click.Command = main
    parent = None
    rest = list(args)
    while True:
        context = command.make_context(command.name or "fedfraud", rest, parent=parent)
        if not isinstance(command, click.Group):
            return command
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 9 puts them in args
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*context.protected_args, *context.args]
        name, sub, rest = command.resolve_command(context, remaining)
        assert sub is not None, f"no command {name!r} in {args}"
        command, parent = sub, context


def gunicorn_config(args: list[str]) -> Path:
    assert args[0].endswith("gunicorn") and args[1] == "-c", args
    path = Path(args[2])
    path = REPO / (path.relative_to(INSTALLED) if path.is_absolute() else path)
    assert path.is_file(), f"gunicorn config {args[2]} does not exist"
    return path


def default_port(config: Path, variable: str) -> int:
    match = re.search(rf'os\.environ\.get\("{variable}", "127\.0\.0\.1:(\d+)"\)', config.read_text())
    assert match, f"{config.name} has no default bind from {variable}"
    return int(match.group(1))


# ------------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((OPS / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def test_every_compose_service_runs_a_command_the_cli_or_gunicorn_accepts(compose: dict[str, Any]) -> None:
    ran = set()
    for name, service in compose["services"].items():
        command = service.get("command")
        if command is None:
            assert "image" in service and not service["image"].startswith("fedfraud"), name
            continue
        if command[0] == "fedfraud":
            ran.add(command_of(command[1:]).name)
        else:
            gunicorn_config(command)
    assert {"scheduler", "agent"} <= ran


def test_compose_ports_database_and_volumes_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    consortium = services["consortium"]
    env = consortium["environment"]
    # gunicorn binds where the TLS front's compose upstream sends requests.
    port = int(env["FEDFRAUD_BIND"].rsplit(":", 1)[1])
    upstream = (OPS / "nginx" / "fedfraud-upstream-compose.conf").read_text()
    assert f"server consortium:{port};" in upstream and str(port) in consortium["expose"]
    tls = services["tls"]
    mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in tls["volumes"]}
    assert mounted["/etc/nginx/conf.d/fedfraud-upstream.conf"] == "./nginx/fedfraud-upstream-compose.conf"
    for source in mounted.values():
        assert source.startswith("./secrets") or (OPS / source).is_file(), source
    # The database URL names the postgres service, its user and database.
    postgres = services["postgres"]["environment"]
    url = env["FEDFRAUD_DATABASE_URL"]
    assert url.startswith(f"postgresql://{postgres['POSTGRES_USER']}:") and url.endswith(
        f"@postgres:5432/{postgres['POSTGRES_DB']}")
    assert "postgres" in consortium["depends_on"]
    # What the consortium and its scheduler keep is on the volume they share.
    for name in ("consortium", "scheduler"):
        service = services[name]
        volumes = dict(volume.split(":", 1) for volume in service["volumes"])
        assert volumes.get("consortium-data") == "/var/lib/fedfraud"
        assert service["environment"]["FEDFRAUD_BLOB_DIR"].startswith("/var/lib/fedfraud/")
        assert service["environment"]["FEDFRAUD_DATABASE_URL"] == url
    # The bank's agent and scoring service share the node's state directory.
    agent = services["bank-agent"]["command"]
    state_dir = agent[agent.index("--state-dir") + 1]
    scoring = services["bank-scoring"]
    assert scoring["environment"]["FEDFRAUD_STATE_DIR"] == state_dir
    for name in ("bank-agent", "bank-scoring"):
        assert any(state_dir.startswith(v.split(":")[1]) for v in services[name]["volumes"]), name
    assert scoring["ports"] == [f"127.0.0.1:{scoring['environment']['FEDFRAUD_SCORING_BIND'].rsplit(':', 1)[1]}:8081"]
    assert set(compose["volumes"]) == {"postgres-data", "consortium-data", "bank-data"}


# ------------------------------------------------------------------------------------ systemd


Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A systemd unit: section, key, every value given (a key such as Environment= may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"not a unit line: {raw!r}"
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def units() -> dict[str, Unit]:
    return {path.name: parse_unit(path.read_text()) for path in sorted((OPS / "systemd").glob("*.service"))}


def one(unit: Unit, section: str, key: str) -> str:
    [value] = unit[section][key]
    return value


def test_every_unit_starts_a_command_the_cli_or_gunicorn_accepts_with_its_paths_writable() -> None:
    found = units()
    assert set(found) == {"fedfraud-consortium.service", "fedfraud-scheduler.service",
                          "fedfraud-bank-agent.service", "fedfraud-bank-scoring.service"}
    for name, unit in found.items():
        service = unit["Service"]
        assert one(unit, "Service", "WorkingDirectory") == str(INSTALLED)
        assert one(unit, "Service", "NoNewPrivileges") == "true", name
        assert one(unit, "Service", "ProtectSystem") == "strict", name
        writable = one(unit, "Service", "ReadWritePaths").split()
        environment = service.get("Environment", [])
        for line in [*service["ExecStart"], *service.get("ExecStartPre", [])]:
            args = shlex.split(line)
            assert args[0].startswith(str(INSTALLED / ".venv" / "bin")), name
            if args[0].endswith("/fedfraud"):
                command_of(args[1:])
                if "--state-dir" in args:
                    assert any(args[args.index("--state-dir") + 1].startswith(w) for w in writable), name
            else:
                gunicorn_config(args)
                # The workers' metric files live in the unit's own runtime directory.
                runtime = one(unit, "Service", "RuntimeDirectory")
                assert any(e.startswith(f"PROMETHEUS_MULTIPROC_DIR=/run/{runtime}/") for e in environment), name
    # The scheduler runs beside the service it schedules for, with the same settings.
    scheduler, consortium = found["fedfraud-scheduler.service"], found["fedfraud-consortium.service"]
    assert "fedfraud-consortium.service" in one(scheduler, "Unit", "Requires")
    assert scheduler["Service"]["EnvironmentFile"] == consortium["Service"]["EnvironmentFile"]
    # The bank's two services read one node.
    agent, scoring = found["fedfraud-bank-agent.service"], found["fedfraud-bank-scoring.service"]
    args = shlex.split(one(agent, "Service", "ExecStart"))
    assert f"FEDFRAUD_STATE_DIR={args[args.index('--state-dir') + 1]}" in scoring["Service"]["Environment"]
    assert "FEDFRAUD_LOG_FORMAT=json" in agent["Service"]["Environment"]


# ------------------------------------------------------------------------------------ TLS front


def test_the_tls_front_fits_the_service_behind_it() -> None:
    front = (OPS / "nginx" / "fedfraud-consortium.conf").read_text()
    upstream = (OPS / "nginx" / "fedfraud-upstream.conf").read_text()
    port = default_port(OPS / "gunicorn.conf.py", "FEDFRAUD_BIND")
    assert f"server 127.0.0.1:{port};" in upstream
    assert "proxy_pass http://fedfraud_consortium;" in front
    # Bodies up to the aggregator's own limit get through (it answers larger ones itself).
    body = re.search(r"client_max_body_size (\d+)m;", front)
    assert body and int(body.group(1)) * 1024 * 1024 >= ConsortiumConfig().MAX_CONTENT_LENGTH
    # A long poll ends before the proxy gives up on it.
    read = re.search(r"proxy_read_timeout (\d+)s;", front)
    assert read and int(read.group(1)) > MAX_WAIT_S + 30
    # The answer headers that carry ledger receipts fit the proxy's header buffer (its default,
    # 4 KiB, does not: two receipts of a private run's answer are 4 to 5 KiB with their proofs).
    headers = re.search(r"proxy_buffer_size (\d+)k;", front)
    assert headers and int(headers.group(1)) * 1024 >= RECEIPT_HEADERS_MAX
    assert re.search(r"ssl_protocols\s+TLSv1\.2 TLSv1\.3;", front)
    assert "X-Request-ID $http_x_request_id" in front
    mtls = (OPS / "nginx" / "fedfraud-mtls.conf").read_text()
    assert "ssl_verify_client optional;" in mtls and "$ssl_client_verify != SUCCESS" in mtls
    assert "include /etc/nginx/conf.d/fedfraud-mtls.conf;" in front
