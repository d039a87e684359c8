"""A rebuild's spans of ids (``churn.pipelines.stripe.normalise.Span``).

A span bounded on a column an index leads with (``indexed``) is compared as UTF-8 bytes:
the same rows as the plain comparison, without DuckDB loading the index whole (it does
for a range it tries on the index, and keeps it loaded for the connection, counted
against the memory limit: 150 MB of indexes after a rebuild at 100,000 accounts, which
left the history's preparation out of memory under 256MB).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn.pipelines.stripe.normalise import Span, halve, row_spans, spans

# Ids as any text: Stripe's are ASCII, but a span must hold whatever the table holds.
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(_TEXT, max_size=12),
    lo=st.none() | _TEXT,
    hi=st.none() | _TEXT,
)
def test_indexed_bounds_hold_the_same_ids(ids: list[str], lo: str | None, hi: str | None) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id VARCHAR)")
    if ids:
        con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in ids])
    span = Span("invoice", lo, hi)
    plain = con.execute(f"SELECT id FROM t WHERE {span.bounds('id')} ORDER BY id").fetchall()
    indexed = con.execute(
        f"SELECT id FROM t WHERE {span.bounds('id', indexed=True)} ORDER BY id"
    ).fetchall()
    assert indexed == plain
    # and the rule itself: inside means lo <= id < hi, by code point (UTF-8 byte) order
    want = sorted(
        i for i in ids if (lo is None or i.encode() >= lo.encode())
        and (hi is None or i.encode() < hi.encode())
    )  # fmt: skip
    assert [r[0] for r in indexed] == sorted(want, key=str.encode)


def _art_bytes(con: duckdb.DuckDBPyConnection) -> int:
    rows = con.execute(
        "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'ART_INDEX'"
    ).fetchall()
    return int(rows[0][0])


def test_a_span_over_an_indexed_column_leaves_the_index_on_disk(tmp_path: Path) -> None:
    """Every span of a uniquely indexed table of 200,000 ids, landed page by page, read
    in a fresh connection: nothing of the index is loaded (the plain comparison loaded 14
    MB of it at the first span: see the module docstring; with the ``stripe_dirty``
    semi-join beside it, as ``Span.dirty`` reads, it did at 700,000 ids, not at these
    200,000)."""
    db = str(tmp_path / "w.duckdb")
    con = duckdb.connect(db)
    con.execute("CREATE TABLE raw_stripe_invoice (id VARCHAR, payload VARCHAR)")
    con.execute("CREATE UNIQUE INDEX raw_stripe_invoice_id ON raw_stripe_invoice(id)")
    for start in range(0, 200_000, 10_000):  # page by page, as a backfill lands them
        con.execute(
            "INSERT INTO raw_stripe_invoice SELECT 'in_' || md5(i::VARCHAR), repeat('x', 200) "
            f"FROM range({start}, {start + 10_000}) r(i)"
        )
    con.execute("CREATE TABLE stripe_dirty (stream VARCHAR, id VARCHAR)")
    con.execute("INSERT INTO stripe_dirty SELECT 'invoice', id FROM raw_stripe_invoice")
    con.close()
    con = duckdb.connect(db)
    try:
        every = spans(con, "invoice", "SELECT id FROM stripe_dirty", 20_000)
        assert len(every) == 10
        assert _art_bytes(con) == 0
        total = 0
        for span in every:
            ((n, size),) = con.execute(
                "SELECT count(*), sum(length(payload)) FROM raw_stripe_invoice "
                f"WHERE {span.bounds('id', indexed=True)}"
            ).fetchall()
            total += n
            assert size == 200 * n
        assert total == 200_000
        assert _art_bytes(con) == 0
    finally:
        con.close()


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(_TEXT, max_size=12, unique=True),
    lo=st.none() | _TEXT,
    hi=st.none() | _TEXT,
)
def test_a_span_halved_holds_its_ids_in_two_nonempty_halves(
    ids: list[str], lo: str | None, hi: str | None
) -> None:
    """What a rebuild chunk out of memory is done again as: two spans that keep the
    span's own ends and between them hold its ids, each some; none for fewer than two."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id VARCHAR)")
    if ids:
        con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in ids])
    span = Span("invoice", lo, hi)

    def inside(s: Span) -> list[str]:
        return [
            r[0]
            for r in con.execute(f"SELECT id FROM t WHERE {s.bounds('id')} ORDER BY id").fetchall()
        ]

    halves = halve(con, span, "SELECT id FROM t")
    if len(inside(span)) < 2:
        assert halves is None
        return
    assert halves is not None
    first, second = halves
    assert (first.stream, first.lo, second.hi) == ("invoice", lo, hi)
    assert first.hi == second.lo
    assert inside(first) and inside(second)
    assert inside(first) + inside(second) == inside(span)


def _rows_world(stored: list[str], pending: list[str]) -> duckdb.DuckDBPyConnection:
    """A raw invoice table of ``stored`` ids in that (landing) order, one row each, and
    ``pending`` of them (or others) in ``stripe_dirty``; both as the warehouse has them."""
    con = duckdb.connect()
    con.execute("CREATE TABLE raw_stripe_invoice (id VARCHAR PRIMARY KEY, payload VARCHAR)")
    con.execute("CREATE TABLE stripe_dirty (stream VARCHAR, id VARCHAR, PRIMARY KEY (stream, id))")
    if stored:
        con.executemany("INSERT INTO raw_stripe_invoice VALUES (?, 'x')", [(i,) for i in stored])
    if pending:
        con.executemany("INSERT INTO stripe_dirty VALUES ('invoice', ?)", [(i,) for i in pending])
    return con


def _held(con: duckdb.DuckDBPyConnection, span: Span) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            f"SELECT id FROM raw_stripe_invoice WHERE {span.raw_scope()} ORDER BY rowid"
        ).fetchall()
    ]


_IDS = st.lists(st.text("abcdef", min_size=1, max_size=3), unique=True, max_size=40)


@settings(max_examples=300, deadline=None)
@given(stored=_IDS, share=st.integers(0, 3), extra=_IDS, size=st.integers(1, 7))
def test_spans_of_raw_rows_hold_every_pending_object_once(
    stored: list[str], share: int, extra: list[str], size: int
) -> None:
    """``row_spans``: the pending objects of a stream in spans of raw rows, in the raw
    table's own order (a backfill's spans of ids each read the whole payload column).
    Together the spans hold every pending object exactly once, each at most ``size``, and
    no object that is not pending; with an object pending that has no raw row, or one span's
    worth or fewer, there are none (the caller cuts by id). A span halved holds the same
    objects in two."""
    # every pending (share 0), every other, every third..., plus ids no raw row holds
    pending = [i for k, i in enumerate(stored) if share == 0 or k % (share + 1) == 0]
    orphans = [i for i in extra if i not in stored][:1] if share == 3 else []
    con = _rows_world(stored, pending + orphans)
    got = row_spans(con, "invoice", size)
    if orphans or len(pending) <= size:
        assert got is None
        return
    assert got is not None
    held = [_held(con, s) for s in got]
    assert sorted(i for h in held for i in h) == sorted(pending)
    assert all(0 < len(h) <= size for h in held)
    # in the table's order: each span's rows come after the previous span's
    order = {i: k for k, i in enumerate(stored)}
    flat = [order[i] for h in held for i in h]
    assert flat == sorted(flat)
    assert all(s.all_pending == (len(pending) == len(stored)) for s in got)
    # the derived tables' rows are found by the same objects
    for span, h in zip(got, held, strict=True):
        core = con.execute(
            f"SELECT id FROM raw_stripe_invoice WHERE {span.dirty('id')} ORDER BY rowid"
        ).fetchall()
        assert [r[0] for r in core] == h
        halves = halve(con, span, "unused")
        if len(h) < 2:
            assert halves is None
            continue
        assert halves is not None
        a, b = (_held(con, x) for x in halves)
        assert a and b and a + b == h


def test_a_span_of_raw_rows_has_no_id_bounds() -> None:
    """Its ids are no range: asked for one, it refuses instead of giving every id."""
    with pytest.raises(ValueError, match="no id bounds"):
        Span("invoice", rows=(0, 10)).bounds("id")
