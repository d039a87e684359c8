"""Incremental scoring: which accounts a run's scoring must compute, and which it carries.

Each scoring records itself in ``score_state`` (migration 098): its ``as_of``, the
newest landing instant in the warehouse when it read it (``landed_through``: scoring reads
no clock), full or incremental, the settings'
and code's fingerprint and the model in force. The next scoring (:func:`decide`) is whole
when any of these holds, and says why:

- no scoring before (or the marts' newest snapshot is not the one recorded);
- an explicit ``as_of`` (``CHURN_RUN__AS_OF``, a back-fill), or one not after the last;
- the signal settings or the scoring code changed (``fingerprint``), or the model in force;
- the first scoring of a UTC day (the signals and features count whole days: a day moves
  every account's "days since", card expiry windows, the downgrade window);
- input every account reads changed (a digest of it is kept): prices, products,
  coupons, currency rates, quarantined input;
- more than ``run.incremental_max_share`` of the accounts would be computed anyway.

Otherwise it computes the accounts whose data landed after the last scoring's
``landed_through``:

- Stripe: every raw object and event landed since (``fetched_at``), mapped to its
  customer (its ``customer``; an invoice payment's invoice's, a refund's charge's, a
  detached payment method's customer from its history);
- Salesforce: Accounts whose owner or deletion differs from what the last scoring read
  (``score_sf_accounts``: the push's own updates land every pushed Account again), the
  Accounts of Contacts and Opportunities landed since (their ``AccountId``), the Accounts
  owned by a User landed since;
- usage samples loaded or restated since; links opened or closed since (a relinked
  customer's old and new Account both);

each customer as the account it keys to now and at the last scoring, and the accounts
with something due by the clock since the last scoring: a payment failure open in its
snapshot (its days and retries move on within the day), whole days since the last payment moving on, or a subscription's period end, trial end, cancellation,
pause end or end, a discount's end, or an invoice's next retry or due date between the two
instants. The other accounts' rows are carried to the new snapshot unchanged, with the
``as_of`` they were computed at in ``account_health.scored_as_of``.
``tests/job/test_incremental_scoring.py`` holds an incremental scoring's marts equal to a
full one's over a world after changes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb

from churn import __version__
from churn.settings import Settings

__all__ = [
    "SCORING_CODE_VERSION",
    "Decision",
    "decide",
    "fingerprint",
    "landed_through",
    "pushed_accounts",
    "record",
    "shared_digest",
]

#: Bumped when a change to the scoring code changes what an account's rows hold without a
#: change of settings or model: the next scoring is then whole. 2: score_usage_gaps
#: (migration 100) filled by a whole one; 3: ties broken by total orders (tied reasons,
#: same-second failures, the seat mean summed in decimals); 4: a card whose expiry month
#: is over is worded "expired", not "expires".
SCORING_CODE_VERSION = "4"

#: Stripe objects whose landing names a customer: raw table -> how its customer is found.
_PER_CUSTOMER_STRIPE = (
    "customer",
    "subscription",
    "invoice",
    "invoice_payment",
    "charge",
    "refund",
    "payment_intent",
    "payment_method",
    "discount",
)


@dataclass(frozen=True)
class Decision:
    """What a scoring computes: everything (``accounts`` None) or these accounts."""

    full: bool
    reason: str
    previous: datetime | None = None
    accounts: tuple[str, ...] | None = None


#: (table, column) of every landing instant a score's input carries.
_LANDED = (
    *((f"raw_stripe_{s}", "fetched_at") for s in _PER_CUSTOMER_STRIPE),
    ("raw_stripe_event", "fetched_at"),
    ("raw_sf_account", "fetched_at"),
    ("raw_sf_contact", "fetched_at"),
    ("raw_sf_opportunity", "fetched_at"),
    ("raw_sf_user", "fetched_at"),
    ("core_usage", "loaded_at"),
    ("core_usage_history", "replaced_at"),
    ("history_account_links", "valid_from"),
    ("history_account_links", "valid_to"),
)


def landed_through(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The newest landing instant of any input a score reads (None: nothing landed)."""
    parts = [
        f"SELECT max({column}) AS t FROM {table}"
        for table, column in _LANDED
        if _table_exists(con, table)
    ]
    rows = con.execute(f"SELECT max(t) FROM ({' UNION ALL '.join(parts)})").fetchall()
    value = rows[0][0]
    return value if isinstance(value, datetime) else None


def fingerprint(settings: Settings) -> str:
    """The signal settings and the scoring code's version, hashed."""
    text = f"{__version__}|{SCORING_CODE_VERSION}|{settings.signals.model_dump_json()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()
    return bool(rows[0][0])


def decide(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime,
    model_version: str | None,
) -> Decision:
    """Whole or which accounts (module docstring)."""
    if not settings.run.incremental_scoring:
        return Decision(True, "incremental scoring off")
    if settings.run.as_of is not None:
        return Decision(True, "an explicit as_of")
    last = con.execute(
        "SELECT as_of, landed_through, kind, fingerprint, model_version, shared_digest"
        " FROM score_state"
        " ORDER BY as_of DESC LIMIT 1"
    ).fetchall()
    if not last:
        return Decision(True, "no scoring before")
    prev, started, _, printed, prev_model, digest = last[0]
    if started is None:
        return Decision(True, "nothing had landed at the last scoring")
    newest = con.execute("SELECT max(as_of) FROM account_health").fetchall()[0][0]
    if newest != prev:
        return Decision(True, "the marts' newest snapshot is not the last scoring's")
    if as_of <= prev:
        return Decision(True, "as_of not after the last scoring")
    if printed != fingerprint(settings):
        return Decision(True, "settings or scoring code changed")
    if prev_model != model_version:
        return Decision(True, "the model in force changed")
    full_day = con.execute("SELECT max(as_of) FROM score_state WHERE kind = 'full'").fetchall()[0][
        0
    ]
    if full_day is None or full_day.date() != as_of.date():
        return Decision(True, "the first scoring of the day")
    shared = _shared_changed(digest, shared_digest(con))
    if shared:
        return Decision(True, f"{shared} changed")
    accounts = _changed_accounts(con, started, prev, as_of)
    total = con.execute("SELECT count(*) FROM account_health WHERE as_of = ?", [prev]).fetchall()[
        0
    ][0]
    if total and len(accounts) > settings.run.incremental_max_share * total:
        return Decision(True, f"{len(accounts):,} of {total:,} accounts changed")
    return Decision(False, "changed accounts", prev, tuple(accounts))


#: Input every account may read: a change of any scores every account.
_SHARED_TABLES = (
    ("core_prices", "Stripe prices"),
    ("core_products", "Stripe products"),
    ("core_coupons", "Stripe coupons"),
    ("core_currency_rates", "currency rates"),
    ("core_currency_rate_versions", "currency rates"),
    ("core_dated_conversion_rates", "currency rates"),
)

#: Columns of a shared table that no score reads and that move without its content: a
#: Salesforce record's ``SystemModstamp`` changes when it is saved again unchanged (the
#: sandbox's org restamps its corporate CurrencyType at every start), which must not
#: score every account. The rates a score reads are the code, rate, activity and dates.
_NOT_READ = {
    "core_currency_rates": ("system_modstamp",),
    "core_dated_conversion_rates": ("system_modstamp",),
}


def shared_digest(con: duckdb.DuckDBPyConnection) -> str:
    """A digest of the input every account reads, table by table (``name=md5;...``)."""
    parts = []
    for table, _ in _SHARED_TABLES:
        if _table_exists(con, table):
            skip = _NOT_READ.get(table, ())
            rows = f"(SELECT * EXCLUDE ({', '.join(skip)}) FROM {table})" if skip else table
            row = con.execute(
                f"SELECT md5(COALESCE(string_agg(t::VARCHAR, '|' ORDER BY t::VARCHAR), ''))"
                f" FROM {rows} t"
            ).fetchall()[0]
            parts.append(f"{table}={row[0]}")
    q = con.execute("SELECT count(*), max(quarantined_at) FROM quarantine").fetchall()[0]
    parts.append(f"quarantine={q[0]}:{q[1]}")
    return ";".join(parts)


def _shared_changed(before: str, now: str) -> str | None:
    old = dict(p.split("=", 1) for p in before.split(";") if "=" in p)
    for part in now.split(";"):
        name, value = part.split("=", 1)
        if old.get(name) != value:
            words = dict(_SHARED_TABLES).get(name, "quarantined input")
            return words
    return None


def _obj_id(field: str) -> str:
    """SQL: the id in an object's ``field`` (a string, or an expanded object's ``id``)."""
    return (
        f"COALESCE(json_extract_string(obj, '$.{field}.id'), json_extract_string(obj, '$.{field}'))"
    )


def _changed_accounts(
    con: duckdb.DuckDBPyConnection, since: datetime, prev: datetime, as_of: datetime
) -> list[str]:
    touched = " UNION ALL ".join(
        f"SELECT '{s}' AS object_type, id AS object_id, payload::JSON AS obj"
        f" FROM raw_stripe_{s} WHERE fetched_at > $since"
        for s in _PER_CUSTOMER_STRIPE
    )
    sf_children = " UNION ".join(
        f"SELECT json_extract_string(payload::JSON, '$.{key}') FROM raw_sf_{obj}"
        " WHERE fetched_at > $since"
        for obj, key in (("contact", "AccountId"), ("opportunity", "AccountId"))
        if _table_exists(con, f"raw_sf_{obj}")
    )
    sql = f"""
    WITH touched AS (
      {touched}
      UNION ALL
      SELECT object_type, object_id, payload::JSON -> '$.data.object' AS obj
      FROM raw_stripe_event WHERE fetched_at > $since
    ),
    customers AS (
      SELECT {_obj_id("customer")} AS customer_id FROM touched
      UNION SELECT object_id FROM touched WHERE object_type = 'customer'
      UNION SELECT i.customer_id FROM touched
        JOIN core_invoices i ON i.invoice_id = {_obj_id("invoice")}
      UNION SELECT c.customer_id FROM touched
        JOIN core_charges c ON c.charge_id = {_obj_id("charge")}
      UNION SELECT s.customer_id FROM touched
        JOIN core_subscriptions s ON s.subscription_id = {_obj_id("subscription")}
      UNION SELECT h.customer_id FROM touched
        JOIN history_payment_methods h ON h.payment_method_id = touched.object_id
        WHERE touched.object_type IN ('payment_method', 'card', 'source')
      UNION SELECT customer_id FROM history_account_links
        WHERE valid_from > $since OR valid_to > $since
      -- usage keyed by a customer id
      UNION SELECT account_id FROM core_usage WHERE loaded_at > $since
      UNION SELECT account_id FROM core_usage_history WHERE replaced_at > $since
    ),
    accounts AS (
      -- an Account's owner or deletion as the last scoring read it (not its landing time:
      -- the push's own updates land every pushed Account again)
      -- or its currency (the push converts its Currency fields to it)
      SELECT account_id AS id FROM core_accounts a FULL JOIN score_sf_accounts s USING (account_id)
      WHERE a.owner_id IS DISTINCT FROM s.owner_id OR a.is_deleted IS DISTINCT FROM s.is_deleted
         OR upper(a.currency_iso_code) IS DISTINCT FROM upper(s.currency_iso_code)
      {"UNION " + sf_children if sf_children else ""}
      UNION SELECT a.account_id FROM core_accounts a
        JOIN raw_sf_user u ON u.id = a.owner_id WHERE u.fetched_at > $since
      UNION SELECT account_id FROM core_usage WHERE loaded_at > $since
      UNION SELECT account_id FROM core_usage_history WHERE replaced_at > $since
      -- each changed customer as the account it keys to now and at the last scoring
      UNION SELECT COALESCE(l.account_id, c.customer_id) FROM customers c
        LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = c.customer_id
      UNION SELECT COALESCE(l.account_id, c.customer_id) FROM customers c
        LEFT JOIN account_links_as_of($prev) l ON l.customer_id = c.customer_id
      -- due by the clock: an open episode, or an instant passed since the last scoring
      -- a payment failure open in the last snapshot: its days and retries move on
      UNION SELECT account_id FROM signal_events
        WHERE as_of = $prev AND signal = 'payment_failure'
      -- the whole days since the last payment (a pushed field) move on at its time of day
      UNION SELECT account_id FROM account_health
        WHERE as_of = $prev AND last_successful_payment_at IS NOT NULL
          AND (epoch_us(CAST($as_of AS TIMESTAMP)) - epoch_us(last_successful_payment_at))
              // 86400000000 IS DISTINCT FROM days_since_last_payment
      UNION SELECT COALESCE(l.account_id, d.customer_id) FROM (
        SELECT customer_id FROM history_subscriptions
        WHERE valid_to IS NULL AND (
             current_period_end > $prev AND current_period_end <= $as_of
          OR trial_end > $prev AND trial_end <= $as_of
          OR cancel_at > $prev AND cancel_at <= $as_of
          OR pause_resumes_at > $prev AND pause_resumes_at <= $as_of
          OR ended_at > $prev AND ended_at <= $as_of
          OR valid_from > $prev AND valid_from <= $as_of)
        UNION SELECT s.customer_id FROM core_subscription_discounts d
          JOIN core_subscriptions s USING (subscription_id)
          WHERE d.ends_at > $prev AND d.ends_at <= $as_of
             OR d.starts_at > $prev AND d.starts_at <= $as_of
        UNION SELECT customer_id FROM core_invoices
          WHERE next_payment_attempt > $prev AND next_payment_attempt <= $as_of
             OR due_date > $prev AND due_date <= $as_of
      ) d LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = d.customer_id
    )
    SELECT DISTINCT id FROM accounts WHERE id IS NOT NULL ORDER BY 1
    """
    rows = con.execute(sql, {"since": since, "prev": prev, "as_of": as_of}).fetchall()
    return [str(r[0]) for r in rows]


def record(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime,
    landed: datetime | None,
    decision: Decision,
    model_version: str | None,
    computed: int,
) -> None:
    """Write ``score_state`` (and the accounts an incremental scoring computed) in the
    caller's transaction."""
    con.execute("DELETE FROM score_state WHERE as_of = ?", [as_of])
    con.execute(
        "INSERT INTO score_state VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [as_of, landed, "full" if decision.full else "incremental", decision.reason,
         fingerprint(settings), model_version, shared_digest(con), computed],
    )  # fmt: skip
    con.execute("DELETE FROM score_sf_accounts")
    con.execute(
        "INSERT INTO score_sf_accounts BY NAME"
        " SELECT account_id, owner_id, is_deleted, currency_iso_code FROM core_accounts"
    )
    con.execute("DELETE FROM score_state_accounts")
    if not decision.full and decision.accounts:
        con.execute(
            "INSERT INTO score_state_accounts SELECT ?, unnest(?::VARCHAR[])",
            [as_of, list(decision.accounts)],
        )


def pushed_accounts(
    con: duckdb.DuckDBPyConnection, account_fields: Mapping[str, str] | None = None
) -> Sequence[str] | None:
    """The accounts the push plans after the newest scoring: None (all) after a full one;
    after an incremental one, those it computed, the Salesforce Accounts landed since the
    scoring before read that hold other values than the push recorded (:func:`_edited`),
    and those with an open Task of the service (a ladder moves by the clock) or a change
    Salesforce refused last time. ``account_fields``: the fields the push owns
    (``push.account_fields``: logical name -> Salesforce name); None compares every field
    pushed."""
    rows = con.execute("SELECT as_of, kind FROM score_state ORDER BY as_of DESC LIMIT 1").fetchall()
    if not rows or rows[0][1] != "incremental":
        return None
    newest = con.execute("SELECT max(as_of) FROM account_health").fetchall()[0][0]
    if newest != rows[0][0]:
        return None
    before = con.execute(
        "SELECT landed_through FROM score_state ORDER BY as_of DESC LIMIT 1 OFFSET 1"
    ).fetchall()
    if not before or before[0][0] is None:
        return None
    ids = con.execute(
        """
        SELECT account_id FROM score_state_accounts WHERE as_of = $as_of
        UNION SELECT fields->>'WhatId' FROM push_state WHERE sobject = 'Task' AND status = 'open'
        UNION SELECT CASE WHEN s.sobject = 'Account' THEN s.record_key ELSE s.fields->>'WhatId' END
          FROM push_state s JOIN (
            SELECT sobject, record_key FROM push_log
            QUALIFY row_number() OVER (PARTITION BY sobject, record_key
                                       ORDER BY logged_at DESC) = 1 AND NOT success
          ) f USING (sobject, record_key)
        """,
        {"as_of": rows[0][0]},
    ).fetchall()
    accounts = {str(r[0]) for r in ids if r[0] is not None}
    owned = None if account_fields is None else set(account_fields.values())
    return sorted(accounts | _edited(con, rows[0][0], before[0][0], owned))


def _edited(
    con: duckdb.DuckDBPyConnection, as_of: datetime, since: datetime, owned: set[str] | None
) -> set[str]:
    """Accounts of the ``as_of`` snapshot (the only ones a plan has values for) whose
    Salesforce Account landed after ``since`` holding owned fields that differ from what the
    push recorded (``push_state``), or that it never wrote: an edit in Salesforce of a
    field the push owns, which the plan then restores. The push's own updates land every
    Account it wrote again (its SystemModstamp moved), and the extract's lookback lands
    recent ones again, holding the values recorded: those are left out, since the plan
    finds them unchanged. An owner, a deletion or a CurrencyIsoCode changed makes the
    account a scoring change already (``score_sf_accounts``)."""
    # the push's own comparison of values (canon: 42.0 from Salesforce is 42 pushed),
    # reached at call time as the run's steps reach the pipelines
    canon = importlib.import_module("churn.pipelines.push.plan").canon
    landed = con.execute(
        "SELECT r.id, r.payload, s.fields FROM raw_sf_account r"
        " LEFT JOIN push_state s ON s.sobject = 'Account' AND s.record_key = r.id"
        " WHERE r.fetched_at > $since"
        " AND r.id IN (SELECT account_id FROM account_health WHERE as_of = $as_of)",
        {"since": since, "as_of": as_of},
    ).fetchall()
    edited: set[str] = set()
    for account_id, payload, fields in landed:
        if fields is None or payload is None:
            edited.add(str(account_id))
            continue
        held, pushed = json.loads(payload), json.loads(fields)
        if any(
            name in held and canon(held[name]) != value
            for name, value in pushed.items()
            if owned is None or name in owned
        ):
            edited.add(str(account_id))
    return edited
