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
from hypothesis import given, settings
from hypothesis import strategies as st

from churn.pipelines.stripe.normalise import Span, halve, spans

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
