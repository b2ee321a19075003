"""Backup and restore of a consortium: database, blob store and the ledger's signing key together.

A backup is a folder:

- ``manifest.json``: format, when, the Alembic revision, each table's rows and file digest, the
  blobs' count and bytes, the ledger's size and root;
- ``db/<table>.jsonl.gz``: every row of every table, one JSON object a line (datetimes in ISO
  form, binary in base64), read from one consistent snapshot (SQLite's online backup API; a
  repeatable-read transaction on PostgreSQL), so the ledger and the state it records agree;
- ``blobs/``: the blob store's files as they are named (by their SHA-256);
- ``ledger-signing.key`` and ``ledger-signing.key.head``: the consortium's signing key, and the
  newest log size and root it signed *as of the snapshot* (the live head file may already name a
  longer log, which the restored service would rightly take for entries cut from it).

Restore goes into an empty database (migrated to the backup's revision first, then to the newest),
an empty blob store and no signing key: it never merges into or overwrites a live consortium. Rows
are inserted in foreign-key order in one transaction, PostgreSQL's sequences are moved past them,
every blob is checked against its name and every table file against the manifest; the restored
ledger is verified from its first entry before the command reports success.

The backup holds the consortium's signing key and its tokens' hashes: keep it as the database is
kept (the folder is created 0700, its files 0600). It holds no bank's secret: none is ever on the
consortium's side.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, DateTime, Engine, LargeBinary, Table, func, insert, select, text

from consortium.storage.blobs import BlobStore, sha256_hex
from consortium.storage.database import make_engine
from consortium.storage.models import Base, LedgerEntry

__all__ = ["BackupError", "BackupManifest", "backup", "restore"]

FORMAT: Final = "fedfraud-consortium-backup/1"
BATCH: Final = 2000
#: Tables the migrations give a row of their own (the ledger's size, 0): replaced on restore.
SEEDED: Final = frozenset({"ledger_head"})
Progress = Callable[[str], None]


class BackupError(ValueError):
    """A backup cannot be taken or restored (the message says what and where)."""


@dataclass(frozen=True)
class BackupManifest:
    """What a backup holds."""

    document: dict[str, Any]

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        return dict(self.document["tables"])

    @property
    def ledger_size(self) -> int:
        return int(self.document["ledger"]["size"])

    @property
    def blobs(self) -> int:
        return int(self.document["blobs"]["count"])


def _quiet(_: str) -> None:
    return None


# ------------------------------------------------------------------------------------ rows


def _encoders(table: Table) -> dict[str, Callable[[Any], Any]]:
    out: dict[str, Callable[[Any], Any]] = {}
    for column in table.columns:
        if isinstance(column.type, DateTime):
            out[column.name] = lambda v: None if v is None else v.isoformat()
        elif isinstance(column.type, LargeBinary):
            out[column.name] = lambda v: None if v is None else base64.b64encode(bytes(v)).decode("ascii")
    return out


def _decoders(table: Table) -> dict[str, Callable[[Any], Any]]:
    out: dict[str, Callable[[Any], Any]] = {}
    for column in table.columns:
        if isinstance(column.type, DateTime):
            out[column.name] = lambda v: None if v is None else datetime.fromisoformat(v)
        elif isinstance(column.type, LargeBinary):
            out[column.name] = lambda v: None if v is None else base64.b64decode(v)
    return out


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection that sees one consistent state of the database for as long as it is held."""
    if engine.dialect.name == "sqlite":
        with tempfile.TemporaryDirectory(prefix="fedfraud-backup-") as folder:
            copy = Path(folder) / "snapshot.db"
            raw = engine.raw_connection()
            try:
                target = sqlite3.connect(copy)
                try:
                    raw.driver_connection.backup(target)  # type: ignore[union-attr]
                finally:
                    target.close()
            finally:
                raw.close()
            snapshot = make_engine(f"sqlite:///{copy}")
            try:
                with snapshot.connect() as connection:
                    yield connection
            finally:
                snapshot.dispose()
    else:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
            with connection.begin():
                yield connection


def _alembic_revision(connection: Connection) -> str:
    try:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    except Exception as exc:  # noqa: BLE001 - any failure means: not a migrated consortium database
        raise BackupError(f"the database holds no migrated consortium schema ({type(exc).__name__})") from None
    return str(revision)


def _private_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ backup


def backup(engine: Engine, blob_dir: Path, key_file: Path, out: Path, *,
           progress: Progress = _quiet) -> BackupManifest:
    """Write a backup of the consortium at ``engine``/``blob_dir``/``key_file`` into ``out``.

    Raises
    ------
    BackupError
        ``out`` exists and is not empty, the database is not a consortium's, or the key is missing.
    """
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty: a backup goes into a new folder")
    if not key_file.is_file():
        raise BackupError(f"no ledger signing key at {key_file}: is this the consortium's configuration?")
    _private_folder(out)
    _private_folder(out / "db")
    tables: dict[str, dict[str, Any]] = {}
    with _snapshot(engine) as connection:
        revision = _alembic_revision(connection)
        for table in Base.metadata.sorted_tables:
            path = out / "db" / f"{table.name}.jsonl.gz"
            encoders = _encoders(table)
            rows = 0
            with gzip.open(path, "wt", encoding="utf-8") as stream:
                query = select(table).order_by(*table.primary_key.columns).execution_options(yield_per=BATCH)
                for row in connection.execute(query).mappings():
                    record = {k: encoders[k](v) if k in encoders else v for k, v in row.items()}
                    stream.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
                    rows += 1
            os.chmod(path, 0o600)
            tables[table.name] = {"rows": rows, "sha256": _file_sha256(path)}
            progress(f"{table.name}: {rows} rows")
        last = connection.execute(select(LedgerEntry.seq, LedgerEntry.root).order_by(LedgerEntry.seq.desc())
                                  .limit(1)).first()
        signing = _current_key(connection)
    ledger = {"size": 0, "root": None} if last is None else {"size": int(last.seq) + 1, "root": str(last.root)}

    count = size = 0
    _private_folder(out / "blobs")
    for path in sorted(blob_dir.rglob("*")) if blob_dir.is_dir() else []:
        if not path.is_file() or path.name.startswith("."):
            continue
        target = out / "blobs" / path.name[:2] / path.name
        _private_folder(target.parent)
        shutil.copyfile(path, target)
        os.chmod(target, 0o600)
        count, size = count + 1, size + target.stat().st_size
    progress(f"blobs: {count} files, {size:,} bytes")

    _write_private(out / key_file.name, _key_for_snapshot(key_file, signing))
    if ledger["size"]:
        head = json.dumps({"size": ledger["size"], "root": ledger["root"]}).encode()
        _write_private(out / (key_file.name + ".head"), head)
    document = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "alembic_revision": revision, "tables": tables, "blobs": {"count": count, "bytes": size},
                "ledger": ledger, "key_file": key_file.name}
    _write_private(out / "manifest.json", json.dumps(document, indent=2, sort_keys=True).encode())
    return BackupManifest(document)


def _current_key(connection: Connection) -> str | None:
    """The public key that signs the snapshot's newest entries: entry 0's, or the last rotation's
    (the restore verifies the whole chain)."""
    from schemas.ledger import ROTATION, key_named, parse_entry

    rows = connection.execute(select(LedgerEntry.body).where(LedgerEntry.event.in_(("ledger.started", ROTATION)))
                              .order_by(LedgerEntry.seq)).scalars()
    key = None
    for body in rows:
        key = key_named(parse_entry(body), trusted=True) or key
    return key


def _key_for_snapshot(key_file: Path, signing: str | None) -> bytes:
    """The key file's bytes that sign the snapshot's log: the key file's, or, when the snapshot
    holds a rotation whose new key has not replaced the file yet, the one staged beside it."""
    from nacl.signing import SigningKey

    from consortium.ledger import staged_key_path

    found = []
    for path in (key_file, staged_key_path(key_file)):
        if path.is_file():
            raw = path.read_bytes()
            public = base64.b64encode(bytes(SigningKey(base64.b64decode(raw.strip())).verify_key)).decode()
            if signing is None or public == signing:
                return raw
            found.append(public)
    raise BackupError(f"the ledger is signed by key {signing}, which no key file at {key_file} holds "
                      f"(found {', '.join(found) or 'none'}): a backup would restore a consortium that can sign nothing")


# ------------------------------------------------------------------------------------ restore


def read_manifest(folder: Path) -> BackupManifest:
    """The manifest of the backup in ``folder``, checked against the files beside it."""
    try:
        document = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise BackupError(f"{folder} holds no manifest.json: not a consortium backup") from None
    except ValueError as exc:
        raise BackupError(f"{folder / 'manifest.json'} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BackupError(f"{folder} is not a backup this version reads (format {FORMAT})")
    known = {table.name for table in Base.metadata.sorted_tables}
    if set(document["tables"]) != known:
        raise BackupError(f"the backup's tables ({', '.join(sorted(document['tables']))}) are not this "
                          f"version's ({', '.join(sorted(known))})")
    for name, entry in document["tables"].items():
        path = folder / "db" / f"{name}.jsonl.gz"
        if not path.is_file() or _file_sha256(path) != entry["sha256"]:
            raise BackupError(f"{path} is missing or damaged: its SHA-256 is not the manifest's")
    return BackupManifest(document)


def restore(engine: Engine, blob_dir: Path, key_file: Path, folder: Path, *,
            progress: Progress = _quiet) -> BackupManifest:
    """Restore the backup in ``folder`` into an empty database, blob store and key location.

    Raises
    ------
    BackupError
        The backup is damaged or of another format; the database, blob store or key is not empty.
    """
    from consortium.storage.migrate import upgrade

    manifest = read_manifest(folder)
    if key_file.exists():
        raise BackupError(f"a ledger signing key exists at {key_file}: restore into a consortium that has none "
                          "(move it away if it is to be replaced)")
    if blob_dir.is_dir() and any(p.is_file() for p in blob_dir.rglob("*")):
        raise BackupError(f"the blob store {blob_dir} is not empty: restore into an empty one")
    try:
        upgrade(engine, manifest.document["alembic_revision"])
    except Exception as exc:  # noqa: BLE001 - alembic raises several kinds; all mean this target will not do
        raise BackupError(f"the database cannot take the backup's schema (revision "
                          f"{manifest.document['alembic_revision']}): {type(exc).__name__}: {exc}; restore into a "
                          "new, empty database") from None
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if table.name not in SEEDED and connection.execute(select(func.count()).select_from(table)).scalar_one():
                raise BackupError(f"the database is not empty (table {table.name} has rows): restore into an "
                                  "empty one")
        for table in Base.metadata.sorted_tables:
            if table.name in SEEDED:
                connection.execute(table.delete())  # the migrations' own row, replaced by the backup's
            decoders = _decoders(table)
            rows = 0
            batch: list[dict[str, Any]] = []
            with gzip.open(folder / "db" / f"{table.name}.jsonl.gz", "rt", encoding="utf-8") as stream:
                for line in stream:
                    record = json.loads(line)
                    batch.append({k: decoders[k](v) if k in decoders else v for k, v in record.items()})
                    if len(batch) == BATCH:
                        connection.execute(insert(table), batch)
                        rows, batch = rows + len(batch), []
            if batch:
                connection.execute(insert(table), batch)
                rows += len(batch)
            if rows != manifest.tables[table.name]["rows"]:
                raise BackupError(f"{table.name}: {rows} rows read, the manifest says "
                                  f"{manifest.tables[table.name]['rows']}")
            progress(f"{table.name}: {rows} rows")
        if engine.dialect.name == "postgresql":
            _move_sequences(connection)
    upgrade(engine)

    store = BlobStore(blob_dir)
    count = 0
    for path in sorted((folder / "blobs").rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if sha256_hex(data) != path.name:
                raise BackupError(f"blob {path.name} of the backup is damaged: its SHA-256 does not match")
            store.put(data)
            count += 1
    if count != manifest.blobs:
        raise BackupError(f"{count} blobs in the backup, the manifest says {manifest.blobs}")
    progress(f"blobs: {count} files")

    key_file.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key_file, (folder / manifest.document["key_file"]).read_bytes())
    head = folder / (manifest.document["key_file"] + ".head")
    if head.is_file():
        _write_private(key_file.with_name(key_file.name + ".head"), head.read_bytes())
    return manifest


def _move_sequences(connection: Connection) -> None:
    """Move PostgreSQL's id sequences past the restored rows (inserting explicit ids does not)."""
    for table in Base.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True or (column.autoincrement == "auto" and column.type.python_type is int
                                                and len(table.primary_key.columns) == 1):
                sequence = connection.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                              {"t": table.name, "c": column.name}).scalar_one()
                if sequence is not None:
                    connection.execute(text(f'SELECT setval(:s, COALESCE((SELECT MAX("{column.name}") FROM '
                                            f'"{table.name}"), 0) + 1, false)'), {"s": sequence})
