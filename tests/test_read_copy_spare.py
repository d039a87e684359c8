"""The read copy written over the spare: only what changed, never a reader's file.

The version a publish supersedes is kept as the spare; the next publish writes its new
version over it, only the chunks that differ (``churn.warehouse.read_copy``)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn import warehouse
from churn.errors import WarehouseError
from churn.warehouse import read_copy


def _write(db: Path, sql: str) -> None:
    con = warehouse.connect(db)
    try:
        con.execute(sql)
    finally:
        con.close()


def _rows(db: Path) -> int:
    con = warehouse.connect_read_copy(db)
    try:
        return int(con.execute("SELECT count(*) FROM t").fetchall()[0][0])
    finally:
        con.close()


def _version(db: Path) -> Path:
    return warehouse.read_copy_path(db).resolve(strict=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    db = tmp_path / "churn.duckdb"
    # a few MB over many blocks, so a small change leaves most chunks as they were
    _write(db, "CREATE TABLE t AS SELECT range AS x, repeat('p', 50) || range AS pad"
               " FROM range(1000000)")  # fmt: skip
    return db


def test_the_next_version_is_the_spare_rewritten_where_it_changed(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warehouse.publish_read_copy(db)
    first = _version(db)
    _write(db, "INSERT INTO t VALUES (-1, 'one more')")
    warehouse.publish_read_copy(db)
    spare = read_copy.spare_path(db)
    assert not first.exists() and spare.exists()  # the superseded version is the spare
    inode = spare.stat().st_ino
    _write(db, "INSERT INTO t VALUES (-2, 'and another')")
    with caplog.at_level(logging.INFO, logger="churn.warehouse.read_copy"):
        warehouse.publish_read_copy(db)
    third = _version(db)
    assert third.stat().st_ino == inode  # the spare's file, not a new copy
    assert third.read_bytes() == db.read_bytes()
    assert _rows(db) == 1_000_002
    (record,) = [r for r in caplog.records if "written over the spare" in r.getMessage()]
    written, size, seconds = record.args  # type: ignore[misc]
    assert 0 < written < size / 2  # type: ignore[operator]
    assert seconds >= 0  # type: ignore[operator]
    versions = sorted(p.name for p in db.parent.glob("churn.read.v*.duckdb"))
    assert versions == [third.name]
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(".")) == [spare.name]


def test_a_warehouse_named_by_a_relative_path_keeps_its_spare(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CHURN_DB=data/churn.duckdb``, as the demo and most deployments name it."""
    monkeypatch.chdir(db.parent)
    relative = Path(db.name)
    warehouse.publish_read_copy(relative)
    warehouse.publish_read_copy(relative)
    assert read_copy.spare_path(db).exists()
    inode = read_copy.spare_path(db).stat().st_ino
    warehouse.publish_read_copy(relative)
    assert _version(db).stat().st_ino == inode


def test_a_spare_a_reader_still_holds_is_left_to_it(db: Path) -> None:
    """A dashboard page opened before the last publish holds the version that became the
    spare: DuckDB's lock on it says so, the reader keeps its file and the publish copies
    whole."""
    warehouse.publish_read_copy(db)
    reader = warehouse.connect_read_copy(db)  # becomes the spare at the next publish
    try:
        _write(db, "INSERT INTO t VALUES (-1, 'x')")
        warehouse.publish_read_copy(db)
        held = read_copy.spare_path(db).stat().st_ino
        _write(db, "DELETE FROM t WHERE x < 500000")
        warehouse.publish_read_copy(db)
        assert int(reader.execute("SELECT count(*) FROM t").fetchall()[0][0]) == 1_000_000
    finally:
        reader.close()
    assert _version(db).stat().st_ino != held
    assert _version(db).read_bytes() == db.read_bytes()
    assert _rows(db) == 500_000


def test_a_spare_locked_in_another_process_is_left_to_it(db: Path) -> None:
    import subprocess
    import sys

    warehouse.publish_read_copy(db)
    _write(db, "INSERT INTO t VALUES (-1, 'x')")
    warehouse.publish_read_copy(db)
    spare = read_copy.spare_path(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1],"
         " read_only=True); print('open', flush=True); sys.stdin.read()", str(spare)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        inode = spare.stat().st_ino
        warehouse.publish_read_copy(db)
        assert _version(db).stat().st_ino != inode
        assert _version(db).read_bytes() == db.read_bytes()
    finally:
        holder.communicate("")


def test_a_publish_that_fails_part_way_over_the_spare_leaves_the_read_copy_and_the_next_completes(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse.publish_read_copy(db)
    _write(db, "INSERT INTO t VALUES (-1, 'x')")
    warehouse.publish_read_copy(db)
    before = _version(db)
    _write(db, "INSERT INTO t VALUES (-2, 'y')")

    def full_disk(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(read_copy.os, "pwrite", full_disk)
        with pytest.raises(WarehouseError, match="No space left"):
            warehouse.publish_read_copy(db)
    assert _version(db) == before and _rows(db) == 1_000_001  # readers see the last one
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(".")) == []
    warehouse.publish_read_copy(db)  # no spare left: a whole copy
    assert _rows(db) == 1_000_002
    assert _version(db).read_bytes() == db.read_bytes()


def test_without_the_spare_each_version_is_a_whole_copy_and_none_is_kept(db: Path) -> None:
    warehouse.publish_read_copy(db)
    warehouse.publish_read_copy(db)
    assert read_copy.spare_path(db).exists()
    _write(db, "INSERT INTO t VALUES (-1, 'x')")
    warehouse.publish_read_copy(db, spare=False)
    assert not read_copy.spare_path(db).exists()
    assert [p.name for p in db.parent.glob("churn.read.v*.duckdb")] == [_version(db).name]
    assert _rows(db) == 1_000_001


@settings(max_examples=200, deadline=None)
@given(
    old=st.binary(max_size=40),
    new=st.binary(max_size=40),
    flips=st.lists(st.integers(min_value=0, max_value=39), max_size=4),
)
def test_the_spare_ends_byte_for_byte_the_source(
    tmp_path_factory: pytest.TempPathFactory, old: bytes, new: bytes, flips: list[int]
) -> None:
    """Any sizes (shorter, longer, across chunk ends; chunks of 8 bytes here) and any
    differences: the spare ends as the source, and only differing chunks are written."""
    folder = tmp_path_factory.mktemp("spare")
    source, spare = folder / "source", folder / "spare"
    # the new bytes mostly the old ones with a few flipped, as a run leaves a warehouse
    body = bytearray(old)
    for i in flips:
        if i < len(body):
            body[i] ^= 0xFF
    body += new
    source.write_bytes(bytes(body))
    spare.write_bytes(old)
    original = read_copy._CHUNK
    read_copy._CHUNK = 8
    try:
        fd = os.open(spare, os.O_RDWR)
        try:
            written = read_copy._write_changes(source, fd)
        finally:
            os.close(fd)
    finally:
        read_copy._CHUNK = original
    assert spare.read_bytes() == bytes(body)
    differing = sum(
        1 for at in range(0, len(body), 8) if bytes(body[at : at + 8]) != old[at : at + 8]
    )
    assert written == sum(
        len(body[at : at + 8])
        for at in range(0, len(body), 8)
        if bytes(body[at : at + 8]) != old[at : at + 8]
    )
    assert written <= len(body) and (differing == 0) == (written == 0)


def test_without_open_file_description_locks_each_version_is_a_whole_copy(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has no ``F_OFD_SETLK``: a reader of the spare in this process could not be
    told, so the spare is never written over."""
    monkeypatch.setattr(read_copy, "_OFD_SETLK", None)
    warehouse.publish_read_copy(db)
    warehouse.publish_read_copy(db)
    inode = read_copy.spare_path(db).stat().st_ino
    warehouse.publish_read_copy(db)
    assert _version(db).stat().st_ino != inode
    assert _version(db).read_bytes() == db.read_bytes()


def test_duckdb_locks_what_it_opens_read_only(tmp_path: Path) -> None:
    """What the spare's check stands on: a read-only DuckDB connection holds a lock on
    its file for as long as it is open (if a DuckDB release stopped doing so, a publish
    could write over a file a reader reads)."""
    path = tmp_path / "x.duckdb"
    duckdb.connect(str(path)).close()
    fd = os.open(path, os.O_RDWR)
    try:
        con = duckdb.connect(str(path), read_only=True)
        assert not read_copy._lock(fd)
        con.close()
        assert read_copy._lock(fd)
    finally:
        os.close(fd)
