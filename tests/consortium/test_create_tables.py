"""Two processes of one node that start together both create the tables: the one that loses the
race must carry on, not die with "table ... already exists" (seen with a gunicorn scoring service
and a second process on one store)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Column, Index, Integer, MetaData, Table, create_engine, inspect
from sqlalchemy.exc import OperationalError

from consortium.storage.database import create_tables


def _metadata() -> tuple[MetaData, Index]:
    metadata = MetaData()
    table = Table("things", metadata, Column("id", Integer, primary_key=True), Column("day", Integer))
    return metadata, Index("ix_things_day", table.c.day)


def test_the_loser_of_a_creation_race_carries_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metadata, index = _metadata()
    engine = create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    real = MetaData.create_all
    calls = []

    def racing(self: MetaData, bind: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:  # the other process created the table between our look and our CREATE
            real(self, bind, **kwargs)  # type: ignore[arg-type]
            raise OperationalError("CREATE TABLE things", {}, sqlite3.OperationalError("table things already exists"))
        real(self, bind, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MetaData, "create_all", racing)
    create_tables(metadata, engine, index)
    assert len(calls) == 2
    assert "things" in inspect(engine).get_table_names()
    assert [i["name"] for i in inspect(engine).get_indexes("things")] == ["ix_things_day"]


def test_other_database_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metadata, _ = _metadata()
    engine = create_engine(f"sqlite:///{tmp_path / 'node.db'}")

    def broken(self: MetaData, bind: object, **kwargs: object) -> None:
        raise OperationalError("CREATE TABLE things", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(MetaData, "create_all", broken)
    with pytest.raises(OperationalError, match="disk I/O error"):
        create_tables(metadata, engine)


def test_many_processes_creating_at_once_all_succeed(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        metadata, index = _metadata()
        engine = create_engine(f"sqlite:///{tmp_path / 'node.db'}", connect_args={"timeout": 10})
        barrier.wait()
        try:
            create_tables(metadata, engine, index)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
