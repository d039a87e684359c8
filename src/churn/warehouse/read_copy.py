"""The read copy: a consistent snapshot of the warehouse that readers open while a run writes.

DuckDB lets one process write a file, or many processes read it, never both: a dashboard
holding the file open would stop ``churn run`` (and a run would stop the dashboard with a
lock error). So the job publishes a copy after each run, and readers open only the copy.

Publishing happens with the job's lock held and its connection closed (DuckDB checkpoints
on close, so the file holds every committed change and no write-ahead log): the file is
copied to a new version beside it (``churn.read.v<UTC stamp>-<pid>.duckdb``), flushed to
disk, and the read copy ``churn.read.duckdb``, a symbolic link, is ``os.replace``-d to
point at it. The swap is atomic on POSIX: a reader resolves the previous version or the new
one, never half of one. Every superseded version is then removed: a reader holding one
open keeps reading its unlinked file, and a reader that resolved the link just before the
swap but had not opened the version yet finds it gone and resolves the link again
(:func:`connect_read_copy`). What a publisher killed part-way left (a half-written
``.<version>.tmp``, a ``.<link>.<pid>.link``, a version never linked) is removed by the
next publish once that publisher's process is gone. So a warehouse has one version beside
it, not one per run (a bench at 10,000 accounts: 290 MB each).

Versions have their own names because DuckDB shares one database per path within a
process: a Streamlit server reopening the same name while another session still held it
would be handed the old version.

A file copy was chosen over exporting tables (Parquet, ``COPY FROM DATABASE``): it costs a
sequential read and write of the file, done in the kernel (about 1 s per GB), keeps every
table and index the readers may want (notebooks too), and needs no schema of its own to
keep in step.

**The spare.** A whole copy writes the whole file and flushes it to disk each run, though
a run of a few changes rewrites a small share of the warehouse's blocks (at 100,000
accounts a 2.5 GB file: about 4 s of a 15 s incremental run; over the spare 0.6-1.0 s,
570-630 MB written). So the version a publish supersedes is kept as the spare
(``.<db stem>.read.spare.duckdb``), and the next publish writes its new version over the
spare: it compares the two files chunk by chunk and writes only the chunks that differ, so
the flush writes what changed. The spare is first renamed
to the new version's temporary name (a reader that resolved it since then finds it gone
and resolves the link again), then locked the way DuckDB locks what it opens: a reader
still holding it (a dashboard page opened before the last publish) holds DuckDB's lock, so
the publish lets the reader keep that file (unlinked) and copies whole. The price is a
third copy of the warehouse on disk between runs (the whole copy needed it only while it
was written); ``run.read_copy_spare = false`` gives it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import struct
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from churn.errors import WarehouseError

log = logging.getLogger(__name__)

__all__ = [
    "connect_read_copy",
    "copy_whole",
    "publish_read_copy",
    "read_copy_path",
    "spare_path",
]


def copy_whole(source: Path, target: Path, tmp: Path | None = None) -> None:
    """Copy the file ``source`` to ``target``, whole or not at all: into ``tmp`` beside it
    (default ``.<target name>.<pid>.tmp``), flushed to disk, then renamed onto ``target``
    (atomic on POSIX). The read copy's versions and ``churn backup`` are written so. Raises
    OSError, the temporary file removed."""
    tmp = tmp or target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        # shutil.copyfile copies in the kernel where it can (sendfile on Linux): a quarter
        # of the CPU and wall of a copy through Python buffers (278 MB at 10,000 accounts:
        # 0.13 against 0.5-1.0 CPU seconds on the bench machine)
        shutil.copyfile(source, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def read_copy_path(db: Path | str) -> Path:
    """Where the read copy of ``db`` lives: ``data/churn.duckdb`` -> ``data/churn.read.duckdb``."""
    db = Path(db)
    return db.with_name(f"{db.stem}.read{db.suffix or '.duckdb'}")


def spare_path(db: Path | str) -> Path:
    """The superseded version kept to write the next one over (see the module)."""
    db = Path(db)
    return db.with_name(f".{db.stem}.read.spare{db.suffix or '.duckdb'}")


#: The chunk compared and, where it differs, written: four of DuckDB's 256 KiB blocks.
_CHUNK = 1 << 20

#: Linux's open-file-description lock; where the platform has none (macOS), no spare is
#: written over (a process-owned lock would not see this process's own readers).
_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)


def _refresh(spare: Path, source: Path, tmp: Path) -> int | None:
    """Make ``spare`` a copy of ``source`` at ``tmp`` by writing only the chunks that
    differ, flushed to disk; returns the bytes written, or None when the spare is gone or
    a reader holds it (then it is left to that reader, unlinked, and nothing is at
    ``tmp``). Raises OSError, ``tmp`` removed."""
    if _OFD_SETLK is None:
        return None  # no way to tell a reader's file here: copy whole
    try:
        os.rename(spare, tmp)  # off its name first: no reader can find it from here on
    except FileNotFoundError:
        return None
    try:
        fd = os.open(tmp, os.O_RDWR)
        try:
            if not _lock(fd):
                tmp.unlink()  # a reader's: it keeps reading its file
                return None
            written = _write_changes(source, fd)
            os.fsync(fd)
        finally:
            os.close(fd)  # and the lock with it
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return written


def _lock(fd: int) -> bool:
    """Take a write lock on the whole file, or say a reader holds one. DuckDB locks a file
    it opens (``fcntl``; a shared lock when read-only) for as long as it holds it; an open
    file description's lock (``F_OFD_SETLK``) conflicts with it even within this process,
    where a process-owned lock would not."""
    if _OFD_SETLK is None:
        return False
    try:
        fcntl.fcntl(fd, _OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError:
        return False
    return True


def _write_changes(source: Path, fd: int) -> int:
    """Write into ``fd`` the chunks of ``source`` that differ from what ``fd`` holds at the
    same offset, and cut or extend it to ``source``'s size; returns the bytes written."""
    new, old = bytearray(_CHUNK), bytearray(_CHUNK)
    offset = written = 0
    with open(source, "rb", buffering=0) as src:
        while n := src.readinto(new):
            held = os.preadv(fd, [old], offset)
            if held != n or (new != old if n == _CHUNK else new[:n] != old[:n]):
                os.pwrite(fd, memoryview(new)[:n], offset)
                written += n
            offset += n
    os.ftruncate(fd, offset)
    return written


def _linked(db: Path) -> Path | None:
    """The version the read copy's link names (a name beside ``db``), if any."""
    try:
        name = os.readlink(read_copy_path(db))
    except OSError:
        return None
    return db.with_name(name) if os.sep not in name else None


def _versions(db: Path) -> list[Path]:
    """The published versions of ``db``'s read copy, oldest first (names sort by time)."""
    return sorted(db.parent.glob(f"{db.stem}.read.v*{db.suffix or '.duckdb'}"))


def _pid_of(name: str) -> int | None:
    """The publisher's process id in a version's (or its temporary file's, or a link's)
    name: ``churn.read.v<stamp>-<pid>.duckdb``, ``.churn.read.duckdb.<pid>.link``."""
    match = _PID.search(name)
    return int(match.group(1) or match.group(2)) if match else None


_PID = re.compile(r"-(\d+)\.[^.]+(?:\.tmp)?$|\.(\d+)\.link$")


def _gone(pid: int | None) -> bool:
    """Whether the process that wrote a file is this one or no longer runs (its leftovers
    are then safe to remove); a file whose name names no process is left alone."""
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's live process
    return False


def _sweep(db: Path, current: Path, keep: int) -> None:
    """Remove the superseded versions (all but ``current`` and the ``keep - 1`` newest
    others) and the temporary files of publishers no longer running."""
    suffix = db.suffix or ".duckdb"
    older = [v for v in _versions(db) if v.name != current.name]
    for old in older[: max(len(older) - (keep - 1), 0)]:
        if _gone(_pid_of(old.name)):
            old.unlink(missing_ok=True)  # a reader holding it open keeps reading it
    target = read_copy_path(db)
    leftovers = [
        *db.parent.glob(f".{db.stem}.read.v*{suffix}.tmp"),
        *db.parent.glob(f".{target.name}.*.link"),
    ]
    for path in leftovers:
        if _gone(_pid_of(path.name)):
            path.unlink(missing_ok=True)


def publish_read_copy(db: Path | str, *, keep: int = 1, spare: bool = True) -> Path:
    """Copy the closed warehouse ``db`` to a new version and point the read copy at it;
    returns the read copy's path. Superseded versions are removed but the ``keep - 1``
    newest (1: only the one the link names), and what killed publishers left behind.

    With ``spare`` the new version is written over the spare where there is one (only
    the chunks that changed), and the version the link named before becomes the spare;
    without it the spare is removed (see the module).

    The caller must hold the job's lock and have closed its connection, so nothing writes
    ``db`` while it is copied.
    """
    db = Path(db)
    wal = db.with_name(db.name + ".wal")
    if wal.exists() and wal.stat().st_size > 0:
        # Closed cleanly, DuckDB leaves no log; one here means a connection is still open.
        raise WarehouseError(f"{db} has a write-ahead log: close it before publishing")
    target = read_copy_path(db)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    version = db.with_name(f"{db.stem}.read.v{stamp}-{os.getpid()}{db.suffix or '.duckdb'}")
    # The temporary file's name ends as the version's does: a killed publisher's is found
    # by the version pattern (_sweep).
    tmp = version.with_name(f".{version.name}.tmp")
    link = target.with_name(f".{target.name}.{os.getpid()}.link")
    previous = _linked(db)
    try:
        if not spare:
            spare_path(db).unlink(missing_ok=True)
        started = time.perf_counter()
        written = _refresh(spare_path(db), db, tmp) if spare else None
        if written is None:
            copy_whole(db, version, tmp)
        else:
            os.replace(tmp, version)
            log.info(
                "read copy: %d of %d bytes written over the spare in %.1f s",
                written,
                version.stat().st_size,
                time.perf_counter() - started,
            )
        link.unlink(missing_ok=True)
        link.symlink_to(version.name)
        os.replace(link, target)  # atomic: readers resolve the old version or the new
        if spare and previous is not None:
            # A reader that resolved it just before the swap finds it gone and resolves
            # the link again, as when a superseded version is removed.
            with contextlib.suppress(FileNotFoundError):
                os.replace(previous, spare_path(db))
    except OSError as exc:
        link.unlink(missing_ok=True)
        raise WarehouseError(f"cannot publish the read copy {target}: {exc.strerror}") from exc
    _sweep(db, version, keep)
    return target


def connect_read_copy(db: Path | str) -> duckdb.DuckDBPyConnection:
    """Open the read copy of ``db`` read-only (never the file a run writes).

    The link is resolved first and the version opened by its own name: DuckDB shares one
    database per path within a process, so opening the link's name would hand a new
    reader the version an older connection still holds. A version removed between the
    resolve and the open (a publish swapped the link meanwhile and removed it) is not an
    error: the link is resolved again.
    """
    path = read_copy_path(db)
    for _ in range(_REOPENS):
        try:
            version = path.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            raise WarehouseError(
                f"no read copy {path} yet: it is published at the end of each `churn run`"
            ) from None
        try:
            con = duckdb.connect(str(version), read_only=True)
        except duckdb.Error as exc:
            if not version.exists():
                continue  # superseded and removed since the resolve: the link names another
            raise WarehouseError(f"cannot open the read copy {path}: {exc}") from exc
        con.execute("SET TimeZone = 'UTC'")
        return con
    raise WarehouseError(f"cannot open the read copy {path}: it kept being replaced")


#: How many times a reader resolves the link again when the version it named was removed.
_REOPENS = 5
