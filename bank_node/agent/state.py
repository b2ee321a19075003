"""The agent's state directory: what a bank node keeps between restarts.

======================  ==========================================================  ======
file                    what                                                        mode
======================  ==========================================================  ======
``config.json``         consortium URL and this bank's id                           0600
``token``               the bank's bearer token, as given by the operator           0600
``bank.keys``           Ed25519 signing and X25519 box private keys (64 bytes)      0600
``roster.json``         the pinned roster, its signatures, versions pinned before   0600
``he-secret.ctx``       the consortium's HE secret context (after the ceremony)     0600
``runs.json``           runs this bank finished: proposed digest, failure, model    0600
``models/``             published models downloaded from the consortium
======================  ==========================================================  ======

Every file is written atomically (temporary file, fsync, rename), so a crash leaves the old
content or the new, never half of either; the directory itself is created 0700.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import FedfraudInputError

__all__ = ["AgentConfig", "StateDir", "write_private"]

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable and writable by the owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # O_CREAT's mode does not apply to a leftover temp file
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class AgentConfig:
    """Where the consortium is and who this bank is."""

    url: str
    bank_id: str


class StateDir:
    """Read and write the agent's files under one directory.

    Parameters
    ----------
    root
        The directory; created (0700) on first write.
    """

    CONFIG = "config.json"
    TOKEN = "token"
    KEYS = "bank.keys"
    ROSTER = "roster.json"
    SECRET_CONTEXT = "he-secret.ctx"
    RUNS = "runs.json"
    CURRENT = "current_models.json"
    MODELS = "models"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"<StateDir {self.root}>"

    def path(self, name: str) -> Path:
        """Absolute path of a file in the state directory."""
        return self.root / name

    def ensure(self) -> None:
        """Create the directory (owner only) if needed."""
        self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)

    def write_secret(self, name: str, data: bytes) -> Path:
        """Write a file that only the owner may read."""
        self.ensure()
        path = self.path(name)
        write_private(path, data)
        return path

    def read_secret(self, name: str) -> bytes | None:
        """Content of a private file, or None if absent; warns if others may read it."""
        path = self.path(name)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            return None
        if mode & 0o077:
            log.warning("state file readable by others, tighten it: path=%s mode=%o", path, mode)
        return path.read_bytes()

    # ------------------------------------------------------------------ enrolment settings

    def save_config(self, config: AgentConfig) -> None:
        """Store the consortium URL and the bank id."""
        body = json.dumps({"url": config.url, "bank_id": config.bank_id}, indent=2).encode()
        self.write_secret(self.CONFIG, body)

    def load_config(self) -> AgentConfig:
        """The stored settings; :class:`FedfraudInputError` before ``enrol``."""
        raw = self.read_secret(self.CONFIG)
        if raw is None:
            raise FedfraudInputError(
                f"{self.root} holds no enrolment: run `fedfraud bank enrol` first",
                {"state_dir": ["not enrolled"]},
            )
        document = json.loads(raw)
        return AgentConfig(url=str(document["url"]), bank_id=str(document["bank_id"]))

    def save_token(self, token: str) -> None:
        """Store the bearer token (0600)."""
        self.write_secret(self.TOKEN, token.strip().encode("utf-8"))

    def load_token(self) -> str:
        """The stored bearer token; :class:`FedfraudInputError` before ``enrol``."""
        raw = self.read_secret(self.TOKEN)
        if raw is None or not raw.strip():
            raise FedfraudInputError(
                f"{self.root} holds no token: run `fedfraud bank enrol` first", {"state_dir": ["no token"]}
            )
        return raw.decode("utf-8").strip()

    # ---------------------------------------------------------------------- HE secret key

    def save_secret_context(self, context: bytes) -> Path:
        """Store the HE secret context (0600)."""
        return self.write_secret(self.SECRET_CONTEXT, context)

    def load_secret_context(self) -> bytes | None:
        """The stored HE secret context, or None before the ceremony."""
        return self.read_secret(self.SECRET_CONTEXT)

    # ---------------------------------------------------------------------------- runs

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run id to what this bank recorded about it."""
        raw = self.read_secret(self.RUNS)
        return {} if raw is None else dict(json.loads(raw))

    def run_record(self, run_id: str) -> dict[str, Any] | None:
        """What this bank recorded about one run, if anything."""
        return self.runs().get(run_id)

    def update_run(self, run_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``fields`` into a run's record and store it."""
        runs = self.runs()
        record = {**runs.get(run_id, {}), **fields}
        runs[run_id] = record
        self.write_secret(self.RUNS, json.dumps(runs, indent=2, sort_keys=True).encode())
        return record

    def current_models(self) -> dict[str, dict[str, Any]]:
        """Per model family, the version the consortium serves now (as the agent last read it)."""
        raw = self.read_secret(self.CURRENT)
        return {} if raw is None else dict(json.loads(raw))

    def save_current_models(self, current: Mapping[str, Mapping[str, Any]]) -> None:
        """Record the consortium's current version of each family."""
        self.write_secret(self.CURRENT, json.dumps(current, indent=2, sort_keys=True).encode())

    # -------------------------------------------------------------------------- models

    def served_model(self, family: str) -> dict[str, Any] | None:
        """The run record of the model of ``family`` this node serves: among the promoted models
        its agent verified and kept, the one the consortium serves now (an operator may have rolled
        back to an earlier one), else the newest; None when it keeps none yet."""
        kept = self.kept_models(family)
        if not kept:
            return None
        serving = str(self.current_models().get(family, {}).get("version", ""))
        chosen = [r for r in kept if str(r["version"]) == serving]
        return chosen[0] if chosen else kept[0]

    def kept_models(self, family: str) -> list[dict[str, Any]]:
        """The run records of the promoted models of ``family`` its agent verified and kept,
        newest version first."""
        kept = [
            {**record, "run_id": run_id} for run_id, record in self.runs().items()
            if record.get("status") == "published" and record.get("model") == family and record.get("promoted")
            and record.get("matches_proposal") and record.get("model_file")
        ]
        return sorted(kept, key=lambda r: int(str(r["version"])) if str(r["version"]).isdigit() else -1, reverse=True)

    def model_path(self, version: str, model: str) -> Path:
        """Where a downloaded model is kept."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{version}-{model}")
        return self.root / self.MODELS / f"{safe}.json"

    def save_model(self, version: str, model: str, body: bytes) -> Path:
        """Store a published model file."""
        path = self.model_path(version, model)
        path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        write_private(path, body)
        return path
