"""A consortium of real processes on 127.0.0.1: one aggregator and one agent per bank.

Used by the end-to-end tests and the HTTP benchmark. Everything goes through the ``fedfraud``
command line exactly as an operator and the banks' platform teams would run it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import requests

FEDFRAUD: tuple[str, ...] = (sys.executable, "-m", "fedfraud.cli")
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    """Run ``fedfraud ARGS`` and return its standard output; fail with its output otherwise."""
    done = subprocess.run([*FEDFRAUD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fedfraud {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.3) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class ProcessExitedError(RuntimeError):
    """A process exited while it was waited for; the message ends with the tail of its log."""


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float, what: str) -> None:
    """Wait until ``url`` answers 200; raise :class:`ProcessExitedError` at once if ``process``
    exits first, and ``TimeoutError`` after ``timeout`` seconds."""

    def answers() -> bool:
        if process.poll() is not None:
            raise ProcessExitedError(f"{what} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(answers, timeout, what, interval=0.2)


@dataclass
class LocalConsortium:
    """An aggregator process with its own database and blob folder under ``root``.

    Attributes
    ----------
    root
        Folder for the database, blobs, logs and the banks' state folders.
    port
        Where the aggregator listens on 127.0.0.1.
    env
        Environment of every process started (the ``FEDFRAUD_*`` settings).
    agent_options
        Options of ``fedfraud bank`` for every agent started (``-v``, ``--log-format json``).
    """

    root: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    operator_token: str = ""
    bank_tokens: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    agent_options: tuple[str, ...] = ()
    _logs: list[IO[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Absolute: the gunicorn aggregator runs in the folder itself, the CLI where it was called.
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.env:
            self.env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFRAUD_")}
            self.env["FEDFRAUD_DATABASE_URL"] = f"sqlite:///{self.root / 'consortium.db'}"
            self.env["FEDFRAUD_BLOB_DIR"] = str(self.root / "blobs")
            self.env["PYTHONUNBUFFERED"] = "1"

    @property
    def url(self) -> str:
        """Base URL of the aggregator."""
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run ``fedfraud ARGS`` with this consortium's environment (plus ``env``)."""
        return run_cli(*args, env={**self.env, **(env or {})})

    def initialise(self, banks: Sequence[str]) -> None:
        """Create the database, an operator token, and enrol ``banks`` (their tokens kept)."""
        self.cli("consortium", "init-db")
        self.operator_token = self.cli("consortium", "create-token", "--role", "operator").strip().splitlines()[-1]
        for bank in banks:
            self.bank_tokens[bank] = self.cli("consortium", "enrol-bank", bank, bank.title()).strip().splitlines()[-1]

    def _log(self, name: str) -> IO[bytes]:
        handle = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(handle)
        return handle

    def start(self, timeout: float = 60, *, launcher: Sequence[str] = FEDFRAUD, gunicorn_workers: int = 0) -> None:
        """Start the aggregator and wait until it answers its health check.

        ``launcher`` is the command that runs the ``fedfraud`` CLI (tests give one that sets
        the process's clock). With ``gunicorn_workers``, the production server runs it instead
        (``ops/gunicorn.conf.py``, that many worker processes)."""
        log = self._log("aggregator")
        if gunicorn_workers:
            ops = Path(__file__).resolve().parents[1] / "ops" / "gunicorn.conf.py"
            command = [str(Path(sys.executable).with_name("gunicorn")), "-c", str(ops)]
            env = {**self.env, "FEDFRAUD_BIND": f"127.0.0.1:{self.port}", "FEDFRAUD_WORKERS": str(gunicorn_workers)}
            self.process = subprocess.Popen(command, env=env, cwd=self.root, stdout=log, stderr=log)
        else:
            self.process = subprocess.Popen(
                [*launcher, "consortium", "serve", "--port", str(self.port)], env=self.env, stdout=log, stderr=log
            )
        wait_until_serving(f"{self.url}/v1/health", self.process, self.root / "aggregator.log", timeout, "the aggregator")

    def start_scheduler(self, *, launcher: Sequence[str] = FEDFRAUD) -> subprocess.Popen[bytes]:
        """Start ``fedfraud consortium scheduler`` (the nightly schedule's one process)."""
        log = self._log("scheduler")
        return subprocess.Popen([*launcher, "consortium", "scheduler"], env=self.env, stdout=log, stderr=log)

    def kill(self) -> None:
        """SIGKILL the aggregator: no chance to flush or clean up."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, *others: subprocess.Popen[bytes]) -> None:
        """Terminate ``others`` (agents, a scheduler) and then the aggregator (if running), and
        close the logs."""
        for process in others:
            process.terminate()
            process.wait(timeout=30)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request as the operator."""
        headers = {"Authorization": f"Bearer {self.operator_token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    # ------------------------------------------------------------------ banks

    def state_dir(self, bank: str) -> Path:
        """The bank's state folder (keys, token, secret context)."""
        return self.root / "banks" / bank

    def set_up_banks(self, banks: Sequence[str], *, scheme: str) -> None:
        """Enrol the banks' agents, agree the first roster (fingerprints exchanged as the banks'
        staff would read them out), then the key ceremony: the first generates, the others fetch."""
        fingerprints = {}
        for bank in banks:
            self.cli("bank", "enrol", "--state-dir", str(self.state_dir(bank)), "--url", self.url, "--bank-id", bank,
                     env={"FEDFRAUD_BANK_TOKEN": self.bank_tokens[bank]})
            fingerprints[bank] = self.cli("bank", "fingerprint", "--state-dir", str(self.state_dir(bank))).split(None, 1)[1].strip()

        def members(*others: str) -> list[str]:
            return [arg for other in others for arg in ("--member", f"{other}={fingerprints[other]}")]

        proposed = self.cli("bank", "roster", "propose", "--state-dir", str(self.state_dir(banks[0])), *members(*banks[1:]))
        digest = proposed.split("proposed: ", 1)[1].split()[0]
        for bank in banks[1:]:
            self.cli("bank", "roster", "approve", digest, "--state-dir", str(self.state_dir(bank)),
                     *members(*(other for other in banks if other != bank)))
        self.cli("bank", "ceremony", "--state-dir", str(self.state_dir(banks[0])), "--generate", "--scheme", scheme)
        for bank in banks[1:]:
            self.cli("bank", "ceremony", "--state-dir", str(self.state_dir(bank)), "--wait", "60")

    def start_agent(self, bank: str, data: Path, *, train_start: str, train_days: int = 7,
                    options: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """One ``fedfraud bank agent --once`` process for ``bank`` on its own transactions
        (``options``: more of the agent's options, ``--dask`` say)."""
        log = self._log(f"{bank}-agent")
        return subprocess.Popen(
            [*FEDFRAUD, "bank", *self.agent_options, "--retry-timeout", "120", "agent", "--state-dir",
             str(self.state_dir(bank)), "--data", str(data), "--train-start", train_start, "--train-days", str(train_days), "--once",
             "--poll-interval", "0.5", *options],
            env=self.env, stdout=log, stderr=log,
        )

    def start_store_agent(self, bank: str, *, poll_interval_s: float = 1.0) -> subprocess.Popen[bytes]:
        """A long-running ``fedfraud bank agent`` for ``bank``, training from its node's store."""
        log = self._log(f"{bank}-agent")
        return subprocess.Popen(
            [*FEDFRAUD, "bank", "--retry-timeout", "120", "agent", "--state-dir", str(self.state_dir(bank)),
             "--poll-interval", str(poll_interval_s)],
            env=self.env, stdout=log, stderr=log,
        )

    def agent_logs(self) -> str:
        """The tail of every agent's log, for failure messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*-agent.log")))

    # ------------------------------------------------------------------ runs

    def open_run(self, model: str, params: dict[str, Any], *, round_timeout_s: int = 600,
                 train_start: str | None = None, train_days: int = 7, window: dict[str, Any] | None = None) -> str:
        """Open a training run as the operator; return its id. With ``train_start``, the run's
        window trains on ``train_days`` from that day (no validation days, no label delay);
        ``window`` gives the whole window instead."""
        body: dict[str, Any] = {"model": model, "params": params, "round_timeout_s": round_timeout_s}
        if window is not None:
            body["window"] = window
        elif train_start is not None:
            as_of = date.fromisoformat(train_start) + timedelta(days=train_days)
            body["window"] = {"as_of": as_of.isoformat(), "train_days": train_days, "validation_days": 0,
                              "label_delay_days": 0}
        response = self.api("POST", "/v1/runs", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"opening a run failed: {response.status_code} {response.text}")
        return str(response.json()["run_id"])

    def run(self, run_id: str, *, rounds: bool = True) -> dict[str, Any]:
        """A run's state, as the operator sees it (``rounds=False``: without its rounds, as one
        polling for its end asks)."""
        return dict(self.api("GET", f"/v1/runs/{run_id}", params=None if rounds else {"rounds": "false"}).json())

    def released_rounds(self, run_id: str) -> int:
        """How many of the run's rounds released their sum (0 while the aggregator is down)."""
        try:
            rounds = self.run(run_id).get("rounds", [])
        except (requests.RequestException, ValueError):
            return 0
        return sum(1 for r in rounds if r.get("state") == "released")

    def published_model(self, run_id: str, timeout: float = 60) -> bytes:
        """The model file published for ``run_id`` (waits for it)."""

        def find() -> bytes | None:
            for model in self.api("GET", "/v1/models").json():
                if str(model.get("run_id")) == run_id:
                    return self.api("GET", f"/v1/models/{model['version']}/download").content
            return None

        return wait_for(find, timeout, f"the model of run {run_id}")
