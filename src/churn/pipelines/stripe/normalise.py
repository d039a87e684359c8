"""``raw_stripe_*`` -> ``core_*``: typed rows from payloads of both API shapes, in SQL.

Each core table is brought up to date from its raw table in one statement (set-based,
inside the caller's transaction), for the objects landed since the last rebuild
(``stripe_dirty``) or, with ``full``, for every raw row. Shapes handled side by side:

- period dates on the subscription (older versions) or on its items (current);
- an invoice's subscription at top level (older) or under
  ``parent.subscription_details.subscription`` (current);
- a charge's invoice (older) or none (current);
- legacy Plans (``amount``, ``interval``) and Prices (``unit_amount``, ``recurring``);
- legacy card sources and PaymentMethods;
- ids or expanded objects wherever Stripe allows ``expand``.

A payload that cannot be normalised (a required field missing or of the wrong type)
goes to ``quarantine`` with the reason and is left out of core; the rest goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import duckdb

from churn.pipelines.stripe.streams import CORE_TABLES, ITEMS_JSON, CoreTable, Stream


@dataclass(frozen=True)
class Rule:
    stream: str
    reason: str
    #: SQL over ``payload`` that is TRUE when the payload cannot be normalised.
    broken: str


def _integer(json_expr: str, *, nullable: bool = False) -> str:
    """SQL: the JSON value is an integer (a JSON number without a fraction). The amounts
    Stripe documents as integers in minor units are never strings or decimals: a string
    ``"12.50"`` would otherwise be cast (and rounded, to 13) by ``TRY_CAST``."""
    kinds = "'UBIGINT', 'BIGINT'" + (", 'NULL'" if nullable else "")
    json_expr = f"({json_expr})"  # `->` binds looser than IS NULL
    absent = f"{json_expr} IS NULL OR " if nullable else ""
    return f"({absent}coalesce(json_type({json_expr}) IN ({kinds}), FALSE))"


_QUANTITY_IS_INTEGER = _integer("i->'$.quantity'")
#: The items as a list only where they are one (a rule's OR does not short-circuit: the
#: cast of an object would fail the whole statement).
_ITEMS = f"CASE WHEN json_type(payload->'$.items.data') = 'ARRAY' THEN {ITEMS_JSON} END"

#: Fields Stripe documents as integers (amounts in minor units, Unix timestamps, counts)
#: and as lists, per stream: any other JSON type cannot be normalised (a string "12.50"
#: would be cast and rounded, a list cast to a number fails the statement).
_INTEGERS = {
    "customer": ("created",),
    "subscription": ("created", "current_period_start", "current_period_end", "canceled_at",
                     "ended_at", "cancel_at", "trial_start", "trial_end", "start_date",
                     "billing_cycle_anchor"),
    "price": ("created",),
    "invoice": ("created", "amount_due", "amount_paid", "amount_remaining", "subtotal", "tax",
                "total", "attempt_count", "next_payment_attempt", "period_start", "period_end"),
    "charge": ("created", "amount", "amount_refunded"),
    "refund": ("created", "amount"),
}  # fmt: skip
_LISTS = {
    "subscription": ("items.data", "discounts"),
    "price": ("tiers",),
    "invoice": ("lines.data", "total_taxes", "discounts"),
}
_OBJECTS = {
    "subscription": ("items",),
    "price": ("recurring", "transform_quantity"),
    "invoice": ("lines",),
}


def typed(stream: str) -> str:
    """SQL: some field of the stream's payload has a type Stripe does not document.

    The fields' types come from one ``json_type(payload, [paths])``: the payload parsed
    once per row. A JSON function per field parses it once per field, and DuckDB keeps
    each call's parsed documents for a whole vector (2,048 rows): about 20 MB a call for
    1.4 KB invoices, 650 MB for the invoice's 15 fields, past any bounded memory limit."""
    fields = [
        *((f, "integer") for f in _INTEGERS.get(stream, ())),
        *((f, "ARRAY") for f in _LISTS.get(stream, ())),
        *((f, "OBJECT") for f in _OBJECTS.get(stream, ())),
    ]
    if not fields:
        return "FALSE"
    paths = "[" + ", ".join(f"'$.{f}'" for f, _ in fields) + "]"
    checks = []
    for k, (_, kind) in enumerate(fields, start=1):
        # absent: NULL (as payload->'$.f' IS NULL); a JSON null: 'NULL'
        if kind == "integer":
            checks.append(f"coalesce(_t[{k}] NOT IN ('UBIGINT', 'BIGINT', 'NULL'), FALSE)")
        else:
            checks.append(f"coalesce(_t[{k}] NOT IN ('{kind}', 'NULL'), FALSE)")
    # the list of types computed once, the checks over it in a lambda
    return f"list_transform([json_type(payload, {paths})], lambda _t: {' OR '.join(checks)})[1]"


RULES: tuple[Rule, ...] = (
    *(
        Rule(stream, "a field of another type than Stripe documents", typed(stream))
        for stream in ("customer", "subscription", "price", "invoice", "charge", "refund")
    ),
    Rule("customer", "id is not a customer id", "NOT starts_with(id, 'cus_')"),
    Rule(
        "subscription",
        "no customer or status",
        "stripe_id(payload->'$.customer') IS NULL OR payload->>'$.status' IS NULL",
    ),
    Rule(
        "subscription",
        "items missing or an item without price or plan",
        f"json_type(payload->'$.items.data') IS DISTINCT FROM 'ARRAY' OR "
        f"list_bool_or(list_transform({_ITEMS}, lambda i: coalesce(stripe_id(i->'$.price'), "
        f"stripe_id(i->'$.plan')) IS NULL))",
    ),
    Rule(
        "subscription",
        "an item quantity is not an integer",
        f"list_bool_or(list_transform({_ITEMS}, lambda i: i->>'$.quantity' IS NOT NULL "
        f"AND NOT {_QUANTITY_IS_INTEGER}))",
    ),
    # "quantity: The quantity of the plan to which the customer should be subscribed"
    # (the Subscription Item object): a count of seats or units, never below zero.
    Rule(
        "subscription",
        "an item quantity is negative",
        f"list_bool_or(list_transform({_ITEMS}, lambda i: "
        f"TRY_CAST(i->>'$.quantity' AS BIGINT) < 0))",
    ),
    Rule(
        "price",
        "no currency, or an amount that is not an integer",
        "payload->>'$.currency' IS NULL OR NOT "
        + _integer("coalesce(payload->'$.unit_amount', payload->'$.amount')", nullable=True),
    ),
    # "unit_amount: A non-negative integer in cents representing how much to charge."
    Rule(
        "price",
        "a negative amount",
        "TRY_CAST(coalesce(payload->>'$.unit_amount', payload->>'$.amount') AS BIGINT) < 0",
    ),
    # "recurring.interval: The frequency at which a subscription is billed. One of day,
    # week, month or year." (the Price object); anything else cannot be made monthly.
    Rule(
        "price",
        "recurring interval is not day, week, month or year",
        "coalesce(payload->>'$.recurring.interval', payload->>'$.interval') NOT IN "
        "('day', 'week', 'month', 'year') OR coalesce(TRY_CAST(coalesce("
        "payload->>'$.recurring.interval_count', payload->>'$.interval_count') AS BIGINT), 1) < 1",
    ),
    # A tiered price's tiers, when known (expanded), each carry a unit or a flat amount
    # ("tiers.flat_amount ... tiers.unit_amount": a tier with neither prices nothing).
    Rule(
        "price",
        "tiered, with a tier that has no amount",
        "payload->>'$.billing_scheme' = 'tiered' AND json_type(payload->'$.tiers') = 'ARRAY' "
        "AND (json_array_length(payload->'$.tiers') = 0 OR list_bool_or(list_transform("
        "CAST(payload->'$.tiers' AS JSON[]), lambda t: coalesce(t->>'$.unit_amount', "
        "t->>'$.unit_amount_decimal', t->>'$.flat_amount', t->>'$.flat_amount_decimal') "
        "IS NULL)))",
    ),
    Rule(
        "invoice",
        "no currency, or an amount that is not an integer",
        "payload->>'$.currency' IS NULL OR NOT "
        + _integer("payload->'$.amount_due'", nullable=True),
    ),
    Rule(
        "charge",
        "no currency, or an amount that is missing or not an integer",
        "payload->>'$.currency' IS NULL OR NOT " + _integer("payload->'$.amount'"),
    ),
    Rule(
        "refund",
        "amount missing or not an integer",
        "NOT " + _integer("payload->'$.amount'"),
    ),
)


_SCOPE = "__SCOPE__"


def _ok(stream: str) -> str:
    """Raw rows of a stream in scope (``__SCOPE__``) that are not quarantined."""
    return (
        f"(SELECT * FROM raw_stripe_{stream} r WHERE {_SCOPE} AND NOT EXISTS (SELECT 1 "
        f"FROM quarantine q WHERE q.source = 'stripe' AND q.stream = '{stream}' "
        f"AND q.object_id = r.id))"
    )


def parsed_once(exprs: list[str], doc: str = "payload") -> tuple[list[str], str]:
    """``exprs`` with each ``payload->'path'`` read from one ``json_extract(payload,
    [paths])`` (``_v``) and each ``payload->>'path'`` from one ``json_extract_string``
    (``_s``): the payload parsed twice per row, not once per field (DuckDB keeps each
    JSON call's parsed documents for a vector: 20 MB or more a call, 25 calls a table).
    Returns the expressions and the select list that adds ``_v`` and ``_s`` ('' if
    none), to select them from. ``doc``: the JSON column read (``payload``)."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(doc)}\s*(->>|->)\s*'([^']*)'")
    paths: dict[str, list[str]] = {"->": [], "->>": []}
    for expr in exprs:
        for op, path in pattern.findall(expr):
            if path not in paths[op]:
                paths[op].append(path)

    def field(match: re.Match[str]) -> str:
        op, path = match[1], match[2]
        return f"{'_v' if op == '->' else '_s'}[{paths[op].index(path) + 1}]"

    out = [pattern.sub(field, expr) for expr in exprs]
    lists = [
        f"{fn}({doc}, [{', '.join(literal(p) for p in paths[op])}]) AS {alias}"
        for op, fn, alias in (("->", "json_extract", "_v"), ("->>", "json_extract_string", "_s"))
        if paths[op]
    ]
    return out, ", ".join(lists)


def _statement(stream: Stream, core: CoreTable, scope: str) -> str:
    """INSERT ... SELECT filling ``core`` by column name from the stream's rows in scope."""
    names = ", ".join(name for name, _ in core.columns)
    exprs_once, lists = parsed_once([expr for _, expr in core.columns])
    exprs = ",\n               ".join(
        f"{expr} AS {name}" for (name, _), expr in zip(core.columns, exprs_once, strict=True)
    )
    source = core.source.replace("{ok}", _ok(stream.name)).replace(_SCOPE, scope)
    if lists:
        source = f"FROM (SELECT *, {lists} {source})"
    qualify = f"\n        QUALIFY {core.qualify}" if core.qualify else ""
    return f"INSERT INTO {core.name} ({names})\n        SELECT {exprs}\n        {source}{qualify}"


def dirty(stream: str, column: str = "id") -> str:
    """SQL: ``column`` names an object of ``stream`` landed since the last rebuild."""
    return f"{column} IN (SELECT d.id FROM stripe_dirty d WHERE d.stream = '{stream}')"


def dirty_ids(stream: str) -> str:
    """SQL: the ids of ``stream`` landed since the last rebuild (a column ``id``)."""
    return f"SELECT id FROM stripe_dirty WHERE stream = '{stream}'"


def literal(text: str) -> str:
    """SQL: ``text`` as a string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Span:
    """The ids of one stream from ``lo`` (included) to ``hi`` (excluded), ``None`` open:
    one chunk of a rebuild. The bounds are literals, so DuckDB filters the table scan by
    them (zone maps, and the other columns read only for the rows inside), and a chunk
    costs what its rows cost, not what the table holds.

    Or, with ``rows``, the stream's raw rows from rowid ``rows[0]`` (included) to
    ``rows[1]`` (excluded, ``None`` open), in the table's own order (:func:`row_spans`):
    ``lo`` and ``hi`` are then unused."""

    stream: str
    lo: str | None = None
    hi: str | None = None
    rows: tuple[int, int | None] | None = None
    #: With ``rows``: every raw row of the stream is pending (a backfill, a whole
    #: rebuild), so the span's rows need no look-up in ``stripe_dirty``.
    all_pending: bool = False

    def raw_scope(self) -> str:
        """SQL over ``raw_stripe_<stream>`` (its own columns, unqualified): its rows in the
        span whose object landed since the last rebuild."""
        if self.rows is None:
            return self.dirty("id", indexed=True)
        first, end = self.rows
        within = f"rowid >= {int(first)}" + ("" if end is None else f" AND rowid < {int(end)}")
        return f"({within})" if self.all_pending else f"({within} AND {dirty(self.stream)})"

    def bounds(self, column: str, *, indexed: bool = False) -> str:
        """SQL: ``column`` inside the span (TRUE when it is open at both ends).

        ``indexed``: an index leads with ``column`` (the raw tables' ids, the events'
        objects, a primary key's first column). Compared as UTF-8 bytes then, which is
        the same order (DuckDB compares text byte by byte), but no range DuckDB tries on
        the index: for that it loads the index whole (32 MB per 700,000 invoice ids),
        held until the connection closes and counted against the memory limit, so a
        rebuild at 100,000 accounts ended with 150 MB of indexes loaded and the history
        out of memory. Zone maps are no loss there: those tables are in listing or event
        order, not id order; the others (core, history) are written span by span and
        keep the plain comparison their zone maps skip by."""
        if self.rows is not None:
            raise ValueError("a span of raw rows has no id bounds: use dirty() or raw_scope()")
        col = f"encode({column})" if indexed else column
        parts = []
        if self.lo is not None:
            parts.append(f"{col} >= {_bound(self.lo, indexed)}")
        if self.hi is not None:
            parts.append(f"{col} < {_bound(self.hi, indexed)}")
        return " AND ".join(parts) or "TRUE"

    def dirty(self, column: str = "id", *, indexed: bool = False) -> str:
        """SQL: ``column`` names an object of the stream landed since the last rebuild,
        inside the span (open at both ends: :func:`dirty`); ``indexed`` as for
        :meth:`bounds`."""
        if self.rows is not None:
            return f"{column} IN (SELECT id FROM raw_stripe_{self.stream} WHERE {self.raw_scope()})"
        if self.lo is None and self.hi is None:
            return dirty(self.stream, column)
        return (
            f"({self.bounds(column, indexed=indexed)} AND {column} IN (SELECT d.id FROM "
            f"stripe_dirty d WHERE d.stream = {literal(self.stream)} AND {self.bounds('d.id')}))"
        )


def _bound(text: str, indexed: bool) -> str:
    return f"encode({literal(text)})" if indexed else literal(text)


def spans(
    con: duckdb.DuckDBPyConnection, stream: str, ids: str, size: int
) -> list[Span]:  # fmt: skip
    """``ids`` (SQL selecting a column ``id``) cut into spans of at most ``size`` ids, in
    id order; none when it selects none. The first span is open below and the last above,
    so together they hold every id, whatever lands between."""
    starts = [str(v) for v in _every_nth(con, "id", f"({ids}) WHERE id IS NOT NULL", size)]
    return [
        Span(stream, None if k == 0 else lo, starts[k + 1] if k + 1 < len(starts) else None)
        for k, lo in enumerate(starts)
    ]


def _every_nth(con: duckdb.DuckDBPyConnection, column: str, rows: str, n: int) -> list[Any]:
    """The 1st, (n+1)-th, (2n+1)-th ... value of ``column`` over ``rows`` (SQL after FROM:
    a table or subquery and its WHERE), in ``column``'s order: where spans of n start."""
    return [
        r[0]
        for r in con.execute(
            f"SELECT {column} FROM (SELECT {column}, row_number() OVER (ORDER BY {column}) AS n"
            f" FROM {rows}) WHERE (n - 1) % {int(n)} = 0 ORDER BY {column}"
        ).fetchall()
    ]


def _middle(con: duckdb.DuckDBPyConnection, column: str, rows: str) -> Any | None:
    """The middle value of ``column`` over ``rows`` (as for :func:`_every_nth`), the first
    of the upper half; None when they hold fewer than two."""
    row = con.execute(
        f"SELECT {column} FROM (SELECT {column}, row_number() OVER (ORDER BY {column}) AS n,"
        f" count(*) OVER () AS c FROM {rows}) WHERE c > 1 AND n = c // 2 + 1"
    ).fetchone()
    return None if row is None else row[0]


def pending_counts(con: duckdb.DuckDBPyConnection, stream: str) -> tuple[int, int, int]:
    """Of ``stream``: its ids pending in ``stripe_dirty``, how many of them have their raw
    row, and the raw rows stored. Every raw row is pending when the last two are equal
    (a backfill's, until its rebuild)."""
    table = f"raw_stripe_{stream}"
    ((pending, landed, stored),) = con.execute(
        f"SELECT (SELECT count(*) FROM stripe_dirty WHERE stream = {literal(stream)}),"
        f" (SELECT count(*) FROM {table} WHERE {dirty(stream)}), (SELECT count(*) FROM {table})"
    ).fetchall()
    return int(pending), int(landed), int(stored)


def row_spans(con: duckdb.DuckDBPyConnection, stream: str, size: int) -> list[Span] | None:
    """The objects of ``stream`` landed since the last rebuild, cut into spans of at most
    ``size`` of its raw rows in the table's own order (rowid), when every one of them has
    its raw row and there is more than one span's worth (a backfill, a whole rebuild);
    None otherwise, for the caller to cut by id (:func:`spans`). The first span is open
    below and the last above.

    Why: a raw table is in landing order, which is no order of ids, so a span of ids has
    its rows in every row group, and DuckDB reads the span's payloads out of the whole
    payload column (at 100,000 accounts the 700,000 invoices' 1 GB of JSON, for each of
    70 spans: 0.17 s a span, a core rebuild of 193 s); a span of rowids reads its own row
    groups. Each raw table holds one row per id (its key), so a span of rows is a span of
    ids, and the table does not change while the rebuild runs (the run's only writer)."""
    table = f"raw_stripe_{stream}"
    pending, landed, stored = pending_counts(con, stream)
    if pending <= size or pending != landed:
        return None  # one span anyway, or ids with no raw row, which no rowid span holds
    every = landed == stored
    starts = [int(v) for v in _every_nth(con, "rowid", f"{table} WHERE {dirty(stream)}", size)]
    return [
        Span(
            stream,
            rows=(0 if k == 0 else first, starts[k + 1] if k + 1 < len(starts) else None),
            all_pending=every,
        )
        for k, first in enumerate(starts)
    ]


def halve(con: duckdb.DuckDBPyConnection, span: Span, ids: str) -> tuple[Span, Span] | None:
    """``span`` cut in two at its middle id (of ``ids``, the SQL it was cut from), each
    half keeping the span's open end; None when it holds fewer than two ids. For a chunk
    that met the memory limit: the halves hold every id the span held, whatever lands.
    A span of rows (:func:`row_spans`) is cut at its middle row (``ids`` unused)."""
    if span.rows is not None:
        first, end = span.rows
        at = _middle(con, "rowid", f"raw_stripe_{span.stream} WHERE {span.raw_scope()}")
        if at is None:
            return None
        cut = int(at)
        every = span.all_pending
        return (
            Span(span.stream, rows=(first, cut), all_pending=every),
            Span(span.stream, rows=(cut, end), all_pending=every),
        )
    at = _middle(con, "id", f"({ids}) WHERE id IS NOT NULL AND {span.bounds('id')}")
    if at is None:
        return None
    middle = str(at)
    return Span(span.stream, span.lo, middle), Span(span.stream, middle, span.hi)


def normalise_span(
    con: duckdb.DuckDBPyConnection, stream: Stream, span: Span, run_id: str | None
) -> None:
    """The quarantine and the core tables of ``stream``'s dirty objects inside ``span``,
    as :func:`normalise` makes them for all; the caller's transaction."""
    con.execute(
        "DELETE FROM quarantine WHERE source = 'stripe' AND stream = ? AND "
        + span.dirty("object_id"),
        [stream.name],
    )
    _quarantine_stream(con, stream.name, span.raw_scope(), run_id)
    for core in stream.core:
        con.execute(f"DELETE FROM {core.name} WHERE {span.dirty(core.key)}")
        con.execute(_statement(stream, core, span.raw_scope()))


def _quarantine_stream(
    con: duckdb.DuckDBPyConnection, stream: str, scope: str, run_id: str | None
) -> None:
    """Quarantine the payloads of ``stream`` in ``scope`` that break a rule, each with the
    first rule it breaks in :data:`RULES`' order (one row per object: the key). One pass
    over the stream's rows for all its rules: a statement per rule read the raw table once
    per rule (five times for subscriptions), about a second of a 1% run at 100,000
    accounts."""
    rules = [r for r in RULES if r.stream == stream]
    if not rules:
        return
    # CASE takes the first WHEN that holds; a NULL test is not TRUE (as coalesce(.., FALSE))
    reason = "CASE " + " ".join(f"WHEN ({r.broken}) THEN {literal(r.reason)}" for r in rules)
    con.execute(
        f"""
        INSERT INTO quarantine
        -- materialised first: DuckDB would otherwise test every row's JSON
        WITH scoped AS MATERIALIZED (SELECT * FROM raw_stripe_{stream} WHERE {scope}),
        judged AS (SELECT id, payload, {reason} END AS reason FROM scoped)
        SELECT 'stripe', '{stream}', id, reason, payload, ?, now()::TIMESTAMP
        FROM judged
        WHERE reason IS NOT NULL
        ON CONFLICT DO NOTHING
        """,
        [run_id],
    )


#: The streams that have rules, in their first rule's order.
_RULED = tuple(dict.fromkeys(r.stream for r in RULES))


def quarantine(con: duckdb.DuckDBPyConnection, run_id: str | None, *, full: bool = False) -> int:
    """Re-derive Stripe's quarantine rows (of the dirty objects, or all); returns how many."""
    if full:
        con.execute("DELETE FROM quarantine WHERE source = 'stripe'")
    else:
        con.execute(
            "DELETE FROM quarantine WHERE source = 'stripe' AND (stream, object_id) IN "
            "(SELECT stream, id FROM stripe_dirty)"
        )
    for stream in _RULED:
        _quarantine_stream(con, stream, "TRUE" if full else dirty(stream), run_id)
    row = con.execute("SELECT count(*) FROM quarantine WHERE source = 'stripe'").fetchone()
    return int(row[0]) if row else 0


def normalise(
    con: duckdb.DuckDBPyConnection, run_id: str | None = None, *, full: bool = False
) -> int:
    """Bring the Stripe core tables up to date; returns how many payloads are quarantined.

    Only the objects in ``stripe_dirty`` are redone (``full``: every raw row). The caller
    empties ``stripe_dirty`` once the history is rebuilt too (same transaction).
    """
    quarantined = quarantine(con, run_id, full=full)
    for stream, core in CORE_TABLES:
        if full:
            con.execute(f"DELETE FROM {core.name}")
            con.execute(_statement(stream, core, "TRUE"))
        else:
            con.execute(f"DELETE FROM {core.name} WHERE {dirty(stream.name, core.key)}")
            con.execute(_statement(stream, core, dirty(stream.name, "id")))
    return quarantined
