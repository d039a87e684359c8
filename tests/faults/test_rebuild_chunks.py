"""The rebuild of core and history in chunks of ids (pipelines/stripe/rebuild.py) gives the
tables one whole rebuild gives, and a `churn extract stripe` SIGKILLed between its chunks
heals on the rerun.

The world is small (25 accounts) and the chunks tiny (5 ids), so every stream, the
subscription history and the in-place histories each take several chunks.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from churn import warehouse
from churn.pipelines.stripe.extract import StripeExtractResult, extract_stripe, refresh_core
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.normalise import normalise, spans
from churn.pipelines.stripe.rebuild import Rebuilt, mark_all_dirty, rebuild_core
from churn.pipelines.stripe.streams import HISTORY_KEYS, STREAMS
from churn.sandbox.demo import Sandbox, ensure_world, serve_world
from churn.settings import load_settings
from faults import tally
from faults.child_env import sandbox_env
from faults.warehouse_compare import contents, difference
from stripe_extract.landed import read_commits

pytestmark = [pytest.mark.faults, pytest.mark.slow]

NOW = datetime(2026, 11, 2, tzinfo=UTC).replace(tzinfo=None)
CHUNK = 5
COMMITTED = b"rebuild chunk committed"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_world(tmp_path_factory.mktemp("chunks") / "worlds", 25, 5, now=NOW)


def _env(box: Sandbox, db: Path) -> dict[str, str]:
    return sandbox_env(
        box, db, STRIPE_REBUILD_CHUNK_IDS=str(CHUNK), STRIPE_RECONCILE_EVERY_HOURS="0"
    )


def _extract(box: Sandbox, db: Path, **env: str) -> StripeExtractResult:
    """One extract in this process (the rerun after a kill; ``env``: settings besides the
    file's); its result."""
    settings = load_settings(env={**_env(box, db), **env})
    con = warehouse.connect(db)
    try:
        return extract_stripe(settings, con, progress=False)
    finally:
        con.close()


def _cli(box: Sandbox, db: Path) -> subprocess.Popen[bytes]:
    # -v: the rebuild logs each committed chunk, which lets the kills land between them.
    return subprocess.Popen(
        [sys.executable, "-m", "churn", "-v", "extract", "stripe", "--no-progress"],
        env=_env(box, db), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture(scope="module")
def landed(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse the world's backfill landed (rebuilt in chunks of CHUNK ids)."""
    db = tmp_path_factory.mktemp("landed") / "w.duckdb"
    with serve_world(world) as box:
        _extract(box, db)
    return db


def _copy(db: Path, to: Path) -> Path:
    shutil.copy(db, to)
    return to


def test_a_chunked_rebuild_equals_a_whole_one(landed: Path, tmp_path: Path) -> None:
    """Whole (``full``): normalise and build_history in one transaction, against
    rebuild_core in chunks of 5 ids; then a rebuild of some objects only (every other
    object of each stream marked dirty), refresh_core against rebuild_core."""
    whole, chunked = _copy(landed, tmp_path / "whole.duckdb"), _copy(landed, tmp_path / "c.duckdb")
    con = warehouse.connect(whole)
    try:
        with warehouse.transaction(con):
            normalise(con, "r", full=True)
            build_history(con, full=True)
    finally:
        con.close()
    con = warehouse.connect(chunked)
    try:
        with warehouse.transaction(con):
            mark_all_dirty(con)
        rebuild_core(con, "r", chunk=CHUNK)
        assert con.execute("SELECT count(*) FROM stripe_dirty").fetchall() == [(0,)]
    finally:
        con.close()
    want = contents(whole)
    assert sum(len(rows) for rows in want.values()) > 500
    assert difference(want, contents(chunked)) == (0, 0, {})
    # Some objects only: every other id of each stream pending, the rest as they were.
    for db in (whole, chunked):
        con = warehouse.connect(db)
        try:
            with warehouse.transaction(con):
                for stream in STREAMS:
                    con.execute(
                        f"INSERT INTO stripe_dirty SELECT '{stream.name}', id FROM ("
                        f"SELECT id, row_number() OVER (ORDER BY id) AS n FROM {stream.table})"
                        " WHERE n % 2 = 0"
                    )
                # the pending ones' derived rows gone stale: the rebuild must redo them
                con.execute(
                    "DELETE FROM history_subscriptions WHERE subscription_id IN "
                    "(SELECT id FROM stripe_dirty WHERE stream = 'subscription')"
                )
            subs = spans(
                con, "subscription", "SELECT id FROM stripe_dirty WHERE stream = 'subscription'",
                CHUNK,
            )  # fmt: skip
            assert len(subs) > 2  # several chunks, not one
            if db == whole:
                with warehouse.transaction(con):
                    refresh_core(con, "r")
            else:
                rebuild_core(con, "r", chunk=CHUNK)
        finally:
            con.close()
    got_whole, got_chunked = contents(whole), contents(chunked)
    for db in (whole, chunked):
        assert _repeated_keys(db) == {}
    assert difference(want, got_whole) == (0, 0, {})
    assert difference(got_whole, got_chunked) == (0, 0, {})
    # contents() leaves out the history's valid_from/valid_to (they differ between two
    # extracts); here the raw rows are the same, so they must be equal too
    assert _rows(whole, "history_subscriptions") == _rows(chunked, "history_subscriptions")


def _repeated_keys(db: Path) -> dict[str, int]:
    """By core or history table, how many rows share their key (``CoreTable.unique``,
    ``HISTORY_KEYS``) with another: neither has a key constraint (migration 115), one row
    each is the rebuild's to hold."""
    keys = {c.name: c.unique or (c.key,) for stream in STREAMS for c in stream.core}
    keys.update(HISTORY_KEYS)
    con = warehouse.connect(db, read_only=True)
    try:
        found = {}
        for table, columns in keys.items():
            ((total, distinct),) = con.execute(
                f"SELECT count(*), count(DISTINCT ({', '.join(columns)})) FROM {table}"
            ).fetchall()
            if total != distinct:
                found[table] = total - distinct
        return found
    finally:
        con.close()


def _rows(db: Path, table: str) -> list[tuple[object, ...]]:
    con = warehouse.connect(db, read_only=True)
    try:
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    finally:
        con.close()


def _kill_after(box: Sandbox, db: Path, chunks: int) -> int:
    """SIGKILL the extract right after its ``chunks``-th committed rebuild chunk; returns
    how many it committed (fewer when it ended first)."""
    process = _cli(box, db)
    seen = read_commits(process, chunks, COMMITTED)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=600)  # a guard against a hang, not a speed check
    return seen


def test_a_kill_during_a_chunked_rebuild_heals(world: Path, tmp_path: Path) -> None:
    """Killed after the 1st chunk (a stream's core), in the middle, and near the end (the
    histories); the rerun lands nothing new and rebuilds from ``stripe_dirty``, which a
    kill leaves whole: the tables equal a clean extract's."""
    clean = tmp_path / "clean.duckdb"
    with serve_world(world) as box:
        process = _cli(box, clean)
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        total = err.count(COMMITTED)
        _extract(box, clean)  # a rerun after a clean run changes nothing either
    assert total > 20, total
    want = contents(clean)
    for k, after in enumerate((1, total // 2, total - 2)):
        db = tmp_path / f"kill{k}.duckdb"
        with serve_world(world) as box:
            seen = _kill_after(box, db, after)
            assert seen == after
            con = warehouse.connect(db)
            try:
                pending = con.execute("SELECT count(*) FROM stripe_dirty").fetchall()[0][0]
            finally:
                con.close()
            assert pending > 0  # killed inside the rebuild: still all pending
            _extract(box, db)
        lost, extra, tables = difference(want, contents(db))
        tally.record(kills=1, runs_healed=1, rows_lost=lost, duplicates=extra)
        assert (lost, extra) == (0, 0), (after, tables)


def test_the_rebuild_runs_under_the_extract_memory_limit(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STRIPE_EXTRACT_MEMORY_LIMIT holds DuckDB in the rebuild too (it was restored before
    it), spilling beside the warehouse; the connection's own limit is back after."""
    from churn.pipelines.stripe import extract

    seen: list[tuple[object, ...]] = []

    def spy(con: Any, *args: Any, **kwargs: Any) -> Rebuilt:
        seen.extend(
            con.execute(
                "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
            ).fetchall()
        )
        return rebuild_core(con, *args, **kwargs)

    monkeypatch.setattr(extract, "rebuild_core", spy)
    db = tmp_path / "w.duckdb"
    with serve_world(world) as box:
        settings = load_settings(env={**_env(box, db), "STRIPE_EXTRACT_MEMORY_LIMIT": "200MB"})
        con = warehouse.connect(db)
        try:
            before = con.execute("SELECT current_setting('memory_limit')").fetchall()
            extract_stripe(settings, con, progress=False)
            after = con.execute("SELECT current_setting('memory_limit')").fetchall()
        finally:
            con.close()
    ((limit, spill),) = seen
    assert limit == "190.7 MiB"  # DuckDB shows 200MB (10^6 bytes) in MiB
    assert spill == str(tmp_path / "w.duckdb.tmp")
    assert after == before


def test_a_full_extract_marks_every_object_above_the_extract_limit(
    world: Path, landed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``churn extract stripe --full``: every raw object marked pending (one transaction,
    millions of keyed rows at 100,000 accounts: out of the extract's 256MB within 32 s)
    at the connection's own limit, then the rebuild under the extract's; the tables are a
    clean extract's."""
    from churn.pipelines.stripe import extract

    real = extract.mark_all_dirty
    limits: list[str] = []

    def spy(con: Any) -> None:
        limits.extend(
            r[0] for r in con.execute("SELECT current_setting('memory_limit')").fetchall()
        )
        real(con)
        ((pending, raw),) = con.execute(
            "SELECT (SELECT count(*) FROM stripe_dirty), (SELECT count(*) FROM"
            " raw_stripe_customer) + (SELECT count(*) FROM raw_stripe_invoice)"
        ).fetchall()
        assert pending > raw > 0  # every object, not only those the listing changed

    monkeypatch.setattr(extract, "mark_all_dirty", spy)
    db = _copy(landed, tmp_path / "full.duckdb")
    with serve_world(world) as box:
        settings = load_settings(env={**_env(box, db), "STRIPE_EXTRACT_MEMORY_LIMIT": "200MB"})
        con = warehouse.connect(db)
        try:
            own = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
            result = extract_stripe(settings, con, progress=False, full=True)
        finally:
            con.close()
    assert limits == [own] and own != "190.7 MiB"
    assert "rebuild_out_of_memory" not in result.counts
    assert difference(contents(landed), contents(db)) == (0, 0, {})


def test_a_rebuild_out_of_memory_is_redone_under_the_connections_limit(
    world: Path,
    landed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DuckDB's "Out of Memory" in the rebuild under STRIPE_EXTRACT_MEMORY_LIMIT (here
    injected in the first subscription-history chunk, after the core chunks committed):
    the rebuild is done again without it, the run succeeds and counts it, and the
    tables equal an extract's that met no such error."""
    import duckdb

    from churn.pipelines.stripe import rebuild

    real = rebuild.build_subscription_span
    calls = {"n": 0}

    def once(con: Any, span: Any, **how: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise duckdb.OutOfMemoryException("Out of Memory Error: injected")
        real(con, span, **how)

    monkeypatch.setattr(rebuild, "build_subscription_span", once)
    db = tmp_path / "w.duckdb"
    log = caplog.at_level(logging.WARNING, logger="churn.pipelines.stripe.rebuild")
    with serve_world(world) as box, log:
        result = _extract(box, db)
    assert result.counts.get("rebuild_out_of_memory") == 1
    # where it met the limit, for whoever bounds that step next
    assert any(
        "out of memory in history of subscriptions, chunk" in r.getMessage() for r in caplog.records
    )
    lost, extra, tables = difference(contents(landed), contents(db))
    tally.record(faults_injected=1, runs_healed=1, rows_lost=lost, duplicates=extra)
    assert (lost, extra) == (0, 0), tables


def test_a_core_chunk_out_of_memory_is_done_in_halves_under_the_limit(
    world: Path,
    landed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every core chunk of more than two ids "out of memory" (injected): each is rolled
    back and done again in halves, under the extract's limit all along, never redone
    without it; the tables equal an extract's that met no such error. (A 100,000-account
    rebuild met DuckDB's limit in one chunk, and the whole rebuild redone unbounded
    peaked at 2,951 MB.)"""
    import duckdb

    from churn.pipelines.stripe import normalise as stripe_normalise
    from churn.pipelines.stripe import rebuild

    real = stripe_normalise.normalise_span
    done: list[int] = []
    limits: set[str] = set()

    def small_only(con: Any, stream: Any, span: Any, run_id: Any = None) -> None:
        ((n, limit),) = con.execute(
            "SELECT count(*), current_setting('memory_limit') FROM stripe_dirty "
            f"WHERE stream = '{stream.name}' AND {span.dirty('id')}"
        ).fetchall()
        limits.add(limit)
        if n > 2:
            raise duckdb.OutOfMemoryException("Out of Memory Error: injected")
        real(con, stream, span, run_id)
        done.append(n)

    monkeypatch.setattr(rebuild, "normalise_span", small_only)
    db = tmp_path / "w.duckdb"
    log = caplog.at_level(logging.INFO, logger="churn.pipelines.stripe.rebuild")
    with serve_world(world) as box, log:
        result = _extract(box, db, STRIPE_EXTRACT_MEMORY_LIMIT="200MB")
    split = result.counts.get("rebuild_chunks_split", 0)
    # chunks of 5 ids: each split at least once, and no chunk done of more than 2 ids
    assert split >= len([n for n in done if n]) // 2 > 0
    assert max(done) <= 2
    assert "rebuild_out_of_memory" not in result.counts
    assert limits == {"190.7 MiB"}  # every attempt under the extract's limit
    assert any("done in halves" in r.getMessage() for r in caplog.records)
    lost, extra, tables = difference(contents(landed), contents(db))
    tally.record(faults_injected=split, runs_healed=1, rows_lost=lost, duplicates=extra)
    assert (lost, extra) == (0, 0), tables


def test_an_out_of_memory_while_landing_is_healed(
    world: Path, landed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB out of memory in one landing transaction of the backfill (what a
    100,000-account listing met once under the 256MB limit): the writer checkpoints and
    lands the rolled-back batch again; the run succeeds, says so in its counts, and the
    warehouse equals a clean extract's."""
    import duckdb

    from churn.pipelines.stripe import extract

    real = extract._Run._land_pages
    calls: list[str] = []

    def once(self: Any, stream: Any, pages: Any, **kw: Any) -> int:
        calls.append(stream.name)
        if len(calls) == 3:
            raise duckdb.OutOfMemoryException("Out of Memory Error: injected")
        return real(self, stream, pages, **kw)

    monkeypatch.setattr(extract._Run, "_land_pages", once)
    real_unbounded = extract.memory_unbounded
    lifted: list[tuple[object, ...]] = []

    @contextlib.contextmanager
    def unbounded(con: Any, then: str | None) -> Iterator[None]:
        with real_unbounded(con, then):
            lifted.append((then, *con.execute("SELECT current_setting('memory_limit')").fetchone()))
            yield

    monkeypatch.setattr(extract, "memory_unbounded", unbounded)
    db = tmp_path / "oom.duckdb"
    with serve_world(world) as box:
        result = _extract(box, db)
    assert len(calls) > 3
    assert result.counts.get("landing_out_of_memory") == 1
    # the heal's checkpoint above the extract's limit (one that cannot pin a block is
    # fatal), which holds again after it
    assert len(lifted) == 1 and lifted[0][0] == "256MB" and lifted[0][1] != "244.1 MiB"
    tally.record(faults_injected=1, runs_healed=1)
    assert difference(contents(landed), contents(db)) == (0, 0, {})


def test_a_backfill_meeting_stored_ids_lands_those_batches_the_general_way(
    landed: Path, world: Path, tmp_path: Path
) -> None:
    """A backfill's batches go in by plain inserts (their ids are new); where one holds an
    id stored already (here: a customer an earlier listing landed, older), DuckDB refuses
    the insert by the key, the batch's transaction is rolled back and the batch lands the
    general way, newer over older. The run succeeds, counts the batch, and the warehouse
    equals a clean extract's."""
    import json

    from churn.pipelines.stripe.land import Version, land

    src = warehouse.connect(landed, read_only=True)
    try:
        ((payload,),) = src.execute(
            "SELECT payload::VARCHAR FROM raw_stripe_customer ORDER BY id LIMIT 1"
        ).fetchall()
    finally:
        src.close()
    db = tmp_path / "stored.duckdb"
    con = warehouse.connect(db)
    try:
        then = datetime(2020, 1, 1, tzinfo=UTC).replace(tzinfo=None)
        land(con, "customer", [(json.loads(payload), Version("list", then, 0, "", None))], then)
    finally:
        con.close()
    with serve_world(world) as box:
        result = _extract(box, db)
    assert result.counts.get("batches_with_stored_ids") == 1
    tally.record(faults_injected=1, runs_healed=1)
    assert difference(contents(landed), contents(db)) == (0, 0, {})
