"""Every query the dashboard runs, in one place: pure functions of a read-only connection
and filter values, returning polars frames. Pages only lay them out.

The connection is to the read copy (:mod:`churn.warehouse.read_copy`), never the file a
run writes. Money stays integer minor units here; pages format it (``dashboard.format``).
Columns that arrive with later migrations are read with fallbacks, so an older warehouse
still opens: ``expected_mrr_at_risk_minor`` falls back to ``mrr_at_risk_minor``,
``churn_probability`` and ``model_version`` to NULL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import polars as pl

from churn.signals import names_of
from churn.signals.money import exponent

__all__ = [
    "EXPANSION_UPLIFT",
    "MRR_BANDS",
    "WorklistFilters",
    "account_customers",
    "account_ids",
    "account_mrr_history",
    "account_overview",
    "account_seats",
    "account_signal_history",
    "account_timeline",
    "api_calls",
    "cohort_retention",
    "expansion_leads",
    "failed_payments",
    "filter_options",
    "freshness",
    "health_over_time",
    "latest_as_of",
    "link_problems",
    "link_summary",
    "movements_by_month",
    "mrr_at_risk_by_signal",
    "portfolio_summary",
    "push_rejections",
    "quarantine_summary",
    "reporting_currency",
    "runs",
    "score_breakdown",
    "worklist",
    "worklist_totals",
]

#: MRR bands in whole units of the reporting currency: (key, low inclusive, high exclusive).
MRR_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("under 1,000", 0, 1_000),
    ("1,000 to 5,000", 1_000, 5_000),
    ("5,000 to 20,000", 5_000, 20_000),
    ("20,000 and over", 20_000, None),
)
#: An expansion lead's potential: this share more seats (at least one) at today's price
#: per seat, or this share of MRR for an account without seats.
EXPANSION_UPLIFT = 0.2


@dataclass(frozen=True)
class WorklistFilters:
    """The worklist's filters; empty means no filter on that column."""

    owners: tuple[str, ...] = ()  # Salesforce User Ids
    signals: tuple[str, ...] = ()
    payment_health: tuple[str, ...] = ()
    mrr_band: str | None = None  # a key of MRR_BANDS
    currencies: tuple[str, ...] = ()  # billing currencies (upper case)
    renewal_within_days: int | None = None
    known_churn: bool = False  # the scheduled cancellations, shown apart


def _frame(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object] | None = None
) -> pl.DataFrame:
    frame = pl.from_arrow(con.sql(sql, params=params or {}).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchall()
    return bool(rows and rows[0][0])


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
    ).fetchall()
    return {str(r[0]) for r in rows}


def latest_as_of(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The instant of the latest scoring (None before the first)."""
    rows = con.execute("SELECT max(as_of) FROM account_health").fetchall()
    return rows[0][0] if rows else None


def reporting_currency(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.execute(
        "SELECT any_value(reporting_currency) FROM account_health"
        " WHERE as_of = (SELECT max(as_of) FROM account_health)"
    ).fetchall()
    return str(rows[0][0]) if rows and rows[0][0] else "USD"


_LATEST = "(SELECT max(as_of) FROM account_health)"


def _expected(cols: set[str]) -> str:
    """Expected MRR at risk (migration 085), else the rule-based MRR at risk."""
    if "expected_mrr_at_risk_minor" in cols:
        return "COALESCE(expected_mrr_at_risk_minor, mrr_at_risk_minor, 0)"
    return "COALESCE(mrr_at_risk_minor, 0)"


def _health_select(con: duckdb.DuckDBPyConnection, where: str = "TRUE") -> str:
    """The latest account_health rows that match ``where`` (over account_health's columns
    and ``expected``, the expected MRR at risk), with names, owners, signals, billing
    currencies and open Tasks joined to those rows only."""
    cols = _columns(con, "account_health")
    expected = _expected(cols)
    prob = "h.churn_probability" if "churn_probability" in cols else "CAST(NULL AS DOUBLE)"
    model = "h.model_version" if "model_version" in cols else "CAST(NULL AS VARCHAR)"
    return f"""
      WITH h0 AS (SELECT *, CAST({expected} AS BIGINT) AS expected FROM account_health
                  WHERE as_of = {_LATEST}),
      h AS MATERIALIZED (SELECT * FROM h0 WHERE {where}),
      sig AS (
        SELECT account_id, list(DISTINCT signal ORDER BY signal) AS signals
        FROM signal_events WHERE as_of = {_LATEST}
          AND account_id IN (SELECT account_id FROM h)
        GROUP BY account_id),
      tasks AS (
        SELECT account_id, count(*) AS open_tasks,
               string_agg(DISTINCT split_part(subject, ': ', 1), '; ') AS task_stage
        FROM (SELECT fields->>'WhatId' AS account_id, fields->>'Subject' AS subject
              FROM push_state WHERE sobject = 'Task' AND status = 'open')
        WHERE account_id IN (SELECT account_id FROM h) GROUP BY 1),
      cur AS (
        SELECT account_id, list(DISTINCT upper(currency) ORDER BY upper(currency)) AS currencies
        FROM account_mrr WHERE as_of = {_LATEST}
          AND account_id IN (SELECT account_id FROM h)
        GROUP BY account_id)
      SELECT h.account_id, COALESCE(a.name, h.account_id) AS account_name,
        a.owner_id, COALESCE(u.name, a.owner_id) AS owner_name,
        h.payment_health, h.risk_score, {prob} AS churn_probability,
        {model} AS model_version, h.known_churn, h.churn_effective_at,
        h.reporting_currency, h.total_mrr_minor,
        h.expected AS expected_mrr_at_risk_minor,
        h.next_renewal_at, h.last_successful_payment_at, h.days_since_last_payment,
        COALESCE(CAST(h.top_reasons AS VARCHAR[]), []) AS top_reasons,
        COALESCE(CAST(h.stripe_customer_ids AS VARCHAR[]), []) AS stripe_customer_ids,
        COALESCE(sig.signals, []) AS signals,
        COALESCE(cur.currencies, []) AS currencies,
        CAST(COALESCE(tasks.open_tasks, 0) AS BIGINT) AS open_tasks, tasks.task_stage,
        h.as_of
      FROM h
      LEFT JOIN core_accounts a ON a.account_id = h.account_id
      LEFT JOIN core_users u ON u.user_id = a.owner_id
      LEFT JOIN sig ON sig.account_id = h.account_id
      LEFT JOIN tasks ON tasks.account_id = h.account_id
      LEFT JOIN cur ON cur.account_id = h.account_id
    """


def _worklist_where(
    con: duckdb.DuckDBPyConnection, filters: WorklistFilters
) -> tuple[str, dict[str, object]]:
    """The filters as one predicate over the latest health rows, and its parameters."""
    where = ["known_churn = $known"]
    params: dict[str, object] = {"known": filters.known_churn}
    if not filters.known_churn:
        where.append("(expected > 0 OR risk_score > 0 OR payment_health <> 'Healthy')")
    if filters.owners:
        where.append(
            "account_id IN (SELECT account_id FROM core_accounts"
            " WHERE list_contains($owners, owner_id))"
        )
        params["owners"] = list(filters.owners)
    if filters.signals:
        where.append(
            f"account_id IN (SELECT account_id FROM signal_events WHERE as_of = {_LATEST}"
            " AND list_contains($signals, signal))"
        )
        params["signals"] = list(filters.signals)
    if filters.payment_health:
        where.append("list_contains($health, payment_health)")
        params["health"] = list(filters.payment_health)
    if filters.currencies:
        where.append(
            f"account_id IN (SELECT account_id FROM account_mrr WHERE as_of = {_LATEST}"
            " AND list_contains($currencies, upper(currency)))"
        )
        params["currencies"] = [c.upper() for c in filters.currencies]
    if filters.renewal_within_days is not None:
        where.append(
            "next_renewal_at >= as_of AND next_renewal_at < as_of + to_days(CAST($days AS INTEGER))"
        )
        params["days"] = filters.renewal_within_days
    if filters.mrr_band is not None:
        band = {key: (lo, hi) for key, lo, hi in MRR_BANDS}[filters.mrr_band]
        scale = 10 ** exponent(reporting_currency(con))
        where.append("total_mrr_minor >= $lo")
        params["lo"] = band[0] * scale
        if band[1] is not None:
            where.append("total_mrr_minor < $hi")
            params["hi"] = band[1] * scale
    return " AND ".join(where), params


def worklist(
    con: duckdb.DuckDBPyConnection,
    filters: WorklistFilters = WorklistFilters(),
    limit: int | None = None,
) -> pl.DataFrame:
    """Accounts ranked by expected MRR at risk (then MRR, then Id), filtered, the first
    ``limit`` (all when None).

    Known churn is apart: ``filters.known_churn`` False gives the predicted risk (accounts
    with no risk and nothing at stake are left out), True the scheduled cancellations.
    Every filter applies to the health rows before anything is joined to them.
    """
    where, params = _worklist_where(con, filters)
    sql = f"""
      SELECT * FROM ({_health_select(con, where)}) w
      ORDER BY expected_mrr_at_risk_minor DESC, total_mrr_minor DESC NULLS LAST, account_id
      LIMIT $limit
    """
    return _frame(con, sql, {**params, "limit": limit})


def worklist_totals(
    con: duckdb.DuckDBPyConnection, filters: WorklistFilters = WorklistFilters()
) -> dict[str, int]:
    """For the whole filtered list: accounts, expected MRR at risk, MRR, payment failed."""
    where, params = _worklist_where(con, filters)
    expected = _expected(_columns(con, "account_health"))
    rows = con.execute(
        f"""SELECT count(*), COALESCE(sum({expected}), 0), COALESCE(sum(total_mrr_minor), 0),
                   count(*) FILTER (payment_health = 'Failed')
            FROM (SELECT *, {expected} AS expected FROM account_health
                  WHERE as_of = {_LATEST}) h0
            WHERE {where}""",
        params,
    ).fetchall()
    accounts, at_risk, mrr, failed = (int(v) for v in rows[0])
    return {"accounts": accounts, "expected_mrr_at_risk_minor": at_risk,
            "total_mrr_minor": mrr, "failed": failed}  # fmt: skip


def filter_options(con: duckdb.DuckDBPyConnection) -> dict[str, pl.DataFrame]:
    """The values each worklist filter offers, from the latest scoring."""
    return {
        "owners": _frame(
            con,
            """SELECT DISTINCT a.owner_id, COALESCE(u.name, a.owner_id) AS owner_name
               FROM account_health h JOIN core_accounts a USING (account_id)
               LEFT JOIN core_users u ON u.user_id = a.owner_id
               WHERE h.as_of = (SELECT max(as_of) FROM account_health)
                 AND a.owner_id IS NOT NULL
               ORDER BY owner_name""",
        ),
        "signals": _frame(
            con,
            """SELECT DISTINCT signal FROM signal_events
               WHERE as_of = (SELECT max(as_of) FROM account_health) ORDER BY signal""",
        ),
        "payment_health": _frame(
            con,
            """SELECT DISTINCT payment_health FROM account_health
               WHERE as_of = (SELECT max(as_of) FROM account_health) ORDER BY 1""",
        ),
        "currencies": _frame(
            con,
            """SELECT DISTINCT upper(currency) AS currency FROM account_mrr
               WHERE as_of = (SELECT max(as_of) FROM account_health) ORDER BY 1""",
        ),
    }


# --- the account page ------------------------------------------------------------------


def account_ids(
    con: duckdb.DuckDBPyConnection, limit: int = 500, include: str | None = None
) -> pl.DataFrame:
    """The ``limit`` accounts with the most MRR at risk (known churn first) and ``include``
    (an account asked for by its Id), with their names, for the account picker."""
    return _frame(
        con,
        f"""SELECT h.account_id, COALESCE(a.name, h.account_id) AS account_name
            FROM account_health h LEFT JOIN core_accounts a USING (account_id)
            WHERE h.as_of = {_LATEST}
            ORDER BY h.account_id = $include DESC, h.known_churn DESC,
                     COALESCE(h.mrr_at_risk_minor, 0) DESC, h.account_id
            LIMIT $limit""",
        {"limit": limit + 1, "include": include or ""},
    )


def account_overview(con: duckdb.DuckDBPyConnection, account_id: str) -> pl.DataFrame:
    """The account's latest health row, as the worklist shows it (empty when unknown)."""
    return _frame(
        con, f"SELECT * FROM ({_health_select(con, 'account_id = $a')}) w", {"a": account_id}
    )


_CUSTOMERS = """
  SELECT customer_id FROM core_account_links WHERE account_id = $a
  UNION SELECT $a WHERE $a LIKE 'cus_%'
"""


def account_customers(con: duckdb.DuckDBPyConnection, account_id: str) -> list[str]:
    """The Stripe customers linked to the account (the account itself when unlinked)."""
    rows = con.execute(_CUSTOMERS + " ORDER BY 1", {"a": account_id}).fetchall()
    return [str(r[0]) for r in rows]


def failed_payments(con: duckdb.DuckDBPyConnection, account_id: str) -> pl.DataFrame:
    """The account's failed charges, oldest first."""
    return _frame(
        con,
        f"""SELECT created_at AS happened_at, charge_id, amount AS amount_minor, upper(currency) AS currency,
                   COALESCE(failure_message, decline_code, failure_code, 'declined') AS why
            FROM core_charges WHERE customer_id IN ({_CUSTOMERS}) AND status = 'failed'
            ORDER BY created_at, charge_id""",
        {"a": account_id},
    )


def account_timeline(con: duckdb.DuckDBPyConnection, account_id: str) -> pl.DataFrame:
    """What happened to the account, oldest first: payments, failures and retries, plan and
    seat changes, scheduled cancellations and withdrawals, Tasks pushed, escalated, closed.

    Columns: happened_at, kind, what, amount_minor (or NULL), currency (or NULL).
    """
    sql = f"""
      WITH cust AS ({_CUSTOMERS}),
      ch AS (
        SELECT c.*, COALESCE(c.invoice_id, i.invoice_id) AS inv
        FROM core_charges c
        LEFT JOIN core_invoices i ON c.invoice_id IS NULL
             AND i.payment_intent_id IS NOT NULL AND i.payment_intent_id = c.payment_intent_id
        WHERE c.customer_id IN (SELECT customer_id FROM cust)),
      -- A charge's invoice when the shapes link it; otherwise a run of charges of one
      -- customer and amount in which each follows a failure is one invoice's attempts.
      runs AS (
        SELECT *, sum(CASE WHEN prev IS DISTINCT FROM 'failed' THEN 1 ELSE 0 END)
                    OVER (PARTITION BY customer_id, amount, currency ORDER BY created_at,
                          charge_id) AS run
        FROM (SELECT *, lag(status) OVER (PARTITION BY customer_id, amount, currency
                                          ORDER BY created_at, charge_id) AS prev FROM ch)),
      charges AS (
        SELECT created_at AS happened_at, status, amount, currency,
               row_number() OVER (PARTITION BY COALESCE(inv, customer_id || ':' || amount
                                  || ':' || currency || ':' || run)
                                  ORDER BY created_at, charge_id) AS attempt,
               COALESCE(failure_message, decline_code, failure_code) AS why
        FROM runs),
      payments AS (
        SELECT happened_at,
          CASE WHEN status = 'failed' THEN (CASE WHEN attempt > 1 THEN 'Retry failed'
                                                 ELSE 'Payment failed' END)
               WHEN attempt > 1 THEN 'Retry succeeded' ELSE 'Payment' END AS kind,
          CASE WHEN status = 'failed'
               THEN 'Attempt ' || attempt || ' declined' || COALESCE(': ' || why, '')
               WHEN attempt > 1 THEN 'Paid on attempt ' || attempt
               ELSE 'Paid' END AS what,
          amount AS amount_minor, upper(currency) AS currency
        FROM charges WHERE status IN ('failed', 'succeeded')),
      subs AS (
        SELECT h.*, lag(h.cancel_at_period_end OR h.cancel_at IS NOT NULL) OVER w AS was_cancelling,
               lag(h.status) OVER w AS prev_status
        FROM history_subscriptions h
        WHERE h.customer_id IN (SELECT customer_id FROM cust)
        WINDOW w AS (PARTITION BY h.subscription_id ORDER BY h.valid_from)),
      sub_events AS (
        SELECT valid_from AS happened_at, 'Cancellation scheduled' AS kind,
               'Cancellation scheduled, ends '
                 || strftime(COALESCE(cancel_at, current_period_end), '%Y-%m-%d') AS what
        FROM subs WHERE (cancel_at_period_end OR cancel_at IS NOT NULL)
          AND NOT COALESCE(was_cancelling, FALSE) AND status <> 'canceled'
        UNION ALL
        SELECT valid_from, 'Cancellation withdrawn', 'Scheduled cancellation withdrawn'
        FROM subs WHERE was_cancelling AND NOT (cancel_at_period_end OR cancel_at IS NOT NULL)
          AND status <> 'canceled'
        UNION ALL
        SELECT valid_from, 'Subscription ended', 'Subscription ended'
        FROM subs WHERE status = 'canceled' AND COALESCE(prev_status, '') <> 'canceled'
        UNION ALL
        SELECT valid_from, 'Status', 'Subscription ' || replace(status, '_', ' ')
        FROM subs WHERE prev_status IS NOT NULL AND status <> prev_status
          AND status IN ('past_due', 'unpaid', 'paused')),
      instants AS (
        SELECT DISTINCT i.subscription_id, i.valid_from AS t
        FROM history_subscription_items i
        JOIN (SELECT DISTINCT subscription_id FROM history_subscriptions
              WHERE customer_id IN (SELECT customer_id FROM cust)) s USING (subscription_id)),
      plan_at AS (
        SELECT n.subscription_id, n.t,
               string_agg(DISTINCT COALESCE(pr.nickname, pd.name, i.price_id), ', ') AS plan,
               sum(COALESCE(i.quantity, 1)) AS seats
        FROM instants n JOIN history_subscription_items i
          ON i.subscription_id = n.subscription_id AND i.valid_from <= n.t
         AND (i.valid_to IS NULL OR i.valid_to > n.t)
        LEFT JOIN core_prices pr ON pr.price_id = i.price_id
        LEFT JOIN core_products pd ON pd.product_id = pr.product_id
        GROUP BY ALL),
      plan_changes AS (
        SELECT t, plan, seats, lag(plan) OVER w AS prev_plan, lag(seats) OVER w AS prev_seats
        FROM plan_at WINDOW w AS (PARTITION BY subscription_id ORDER BY t)),
      plan_events AS (
        SELECT t AS happened_at,
          CASE WHEN prev_plan IS NULL THEN 'Subscribed'
               WHEN plan <> prev_plan THEN 'Plan change' ELSE 'Seat change' END AS kind,
          CASE WHEN prev_plan IS NULL THEN 'Subscribed to ' || plan || ', ' || seats || ' seats'
               WHEN plan <> prev_plan THEN 'Plan ' || prev_plan || ' -> ' || plan
                    || ' (' || prev_seats || ' -> ' || seats || ' seats)'
               ELSE 'Seats ' || prev_seats || ' -> ' || seats END AS what
        FROM plan_changes
        WHERE prev_plan IS NULL OR plan <> prev_plan OR seats <> prev_seats),
      task_keys AS (
        SELECT record_key FROM push_state WHERE sobject = 'Task' AND fields->>'WhatId' = $a),
      task_events AS (
        SELECT logged_at AS happened_at,
          CASE WHEN NOT success THEN 'Task rejected'
               WHEN action = 'create_task' THEN 'Task pushed'
               WHEN action = 'close_task' THEN 'Task closed'
               WHEN action = 'log_timeline' THEN 'Timeline record pushed'
               ELSE 'Task escalated' END AS kind,
          CASE WHEN NOT success THEN COALESCE(error_code, '') || ': ' || COALESCE(error_message, '')
               ELSE COALESCE(fields->>'Subject', fields->>'Status', 'updated') END AS what
        FROM push_log WHERE sobject = 'Task' AND record_key IN (SELECT record_key FROM task_keys)
          AND (action <> 'update_task' OR NOT success
               OR fields->>'Subject' IS NOT NULL OR fields->>'Priority' IS NOT NULL))
      SELECT happened_at, kind, what, amount_minor, currency FROM payments
      UNION ALL SELECT happened_at, kind, what, NULL, NULL FROM sub_events
      UNION ALL SELECT happened_at, kind, what, NULL, NULL FROM plan_events
      UNION ALL SELECT happened_at, kind, what, NULL, NULL FROM task_events
      ORDER BY happened_at, kind
    """
    return _frame(con, sql, {"a": account_id})


def account_mrr_history(con: duckdb.DuckDBPyConnection, account_id: str) -> pl.DataFrame:
    """The account's MRR at the end of each month with a movement (latest scoring)."""
    return _frame(
        con,
        """SELECT month, movement, start_mrr_minor, end_mrr_minor, amount_minor, reporting_currency
           FROM mrr_movements
           WHERE as_of = (SELECT max(as_of) FROM account_health) AND account_id = $a
           ORDER BY month""",
        {"a": account_id},
    )


def account_seats(con: duckdb.DuckDBPyConnection, account_id: str, days: int = 120) -> pl.DataFrame:
    """Active seats (usage feed) against seats held, per sampled day in the last ``days``.

    The feed keys a row by Salesforce Account Id or by Stripe customer id; the seat signal
    maps the latter to the Account through the links, and so does this (summed per day
    over the Account's customers, as the signal sums them)."""
    return _frame(
        con,
        f"""WITH cust AS ({_CUSTOMERS}),
            subs AS (SELECT DISTINCT subscription_id FROM history_subscriptions
                     WHERE customer_id IN (SELECT customer_id FROM cust)),
            u AS (SELECT day, sum(active_seats)::BIGINT AS active_seats FROM core_usage
                  WHERE (account_id = $a OR account_id IN (SELECT customer_id FROM cust))
                    AND day > (SELECT CAST(max(as_of) AS DATE) FROM account_health) - $days
                  GROUP BY day)
            SELECT u.day, u.active_seats,
                   (SELECT sum(COALESCE(i.quantity, 0)) FROM history_subscription_items i
                    WHERE i.subscription_id IN (SELECT subscription_id FROM subs)
                      AND i.valid_from <= CAST(u.day AS TIMESTAMP) + INTERVAL 1 DAY
                      AND (i.valid_to IS NULL OR i.valid_to > CAST(u.day AS TIMESTAMP)
                           + INTERVAL 1 DAY))::BIGINT AS seats_held
            FROM u ORDER BY u.day""",
        {"a": account_id, "days": days},
    )


def account_signal_history(con: duckdb.DuckDBPyConnection, account_id: str) -> pl.DataFrame:
    """Each signal episode of the account: first and last scoring it appeared in, latest reason."""
    return _frame(
        con,
        """SELECT signal, episode_key, min(as_of) AS first_seen, max(as_of) AS last_seen,
                  arg_max(severity, as_of) AS severity, arg_max(score, as_of) AS score,
                  arg_max(reason, as_of) AS reason,
                  max(as_of) = (SELECT max(as_of) FROM account_health) AS open
           FROM signal_events WHERE account_id = $a
           GROUP BY signal, episode_key ORDER BY first_seen DESC, signal""",
        {"a": account_id},
    )


def score_breakdown(
    con: duckdb.DuckDBPyConnection, account_id: str, weights: dict[str, float]
) -> pl.DataFrame:
    """The signals behind the latest score: each one's score, weight and share of the risk
    (``weight x score``; the risk is ``1 - prod(1 - weight x score)``)."""
    frame = _frame(
        con,
        """SELECT signal, score, severity, reason FROM signal_events
           WHERE account_id = $a AND as_of = (SELECT max(as_of) FROM account_health)
           ORDER BY score DESC, signal""",
        {"a": account_id},
    )
    return frame.with_columns(
        weight=pl.col("signal").replace_strict(weights, default=0.0, return_dtype=pl.Float64)
    ).with_columns(contribution=pl.col("weight") * pl.col("score"))


# --- portfolio ------------------------------------------------------------------------


def movements_by_month(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """MRR movements of the latest scoring summed per month and kind (reporting currency)."""
    return _frame(
        con,
        """SELECT month, movement, CAST(sum(amount_minor) AS BIGINT) AS amount_minor,
                  count(*) AS accounts
           FROM mrr_movements WHERE as_of = (SELECT max(as_of) FROM account_health)
           GROUP BY month, movement ORDER BY month, movement""",
    )


def portfolio_summary(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Per month: MRR at its start and end, each movement, gross and net MRR churn, net
    revenue retention and the quick ratio.

    MRR at a month's end is today's MRR (the latest account_health) less the movements of
    the months after it, so the movements of a month are exactly its MRR change.
    """
    return _frame(
        con,
        """WITH mv AS (
             SELECT month,
               sum(amount_minor) FILTER (movement = 'new') AS new_minor,
               sum(amount_minor) FILTER (movement = 'expansion') AS expansion_minor,
               sum(amount_minor) FILTER (movement = 'reactivation') AS reactivation_minor,
               -sum(amount_minor) FILTER (movement = 'contraction') AS contraction_minor,
               -sum(amount_minor) FILTER (movement = 'churn') AS churn_minor,
               sum(amount_minor) AS change_minor
             FROM mrr_movements WHERE as_of = (SELECT max(as_of) FROM account_health)
             GROUP BY month),
           now AS (SELECT COALESCE(sum(total_mrr_minor), 0) AS mrr FROM account_health
                   WHERE as_of = (SELECT max(as_of) FROM account_health)),
           m AS (
             SELECT mv.*,
               (SELECT mrr FROM now)
                 - COALESCE(sum(change_minor) OVER (ORDER BY month DESC ROWS BETWEEN
                     UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS end_minor
             FROM mv)
           SELECT month,
             CAST(end_minor - change_minor AS BIGINT) AS start_mrr_minor,
             CAST(end_minor AS BIGINT) AS end_mrr_minor,
             CAST(COALESCE(new_minor, 0) AS BIGINT) AS new_minor,
             CAST(COALESCE(expansion_minor, 0) AS BIGINT) AS expansion_minor,
             CAST(COALESCE(reactivation_minor, 0) AS BIGINT) AS reactivation_minor,
             CAST(COALESCE(contraction_minor, 0) AS BIGINT) AS contraction_minor,
             CAST(COALESCE(churn_minor, 0) AS BIGINT) AS churn_minor,
             CAST(change_minor AS BIGINT) AS change_minor,
             (COALESCE(churn_minor, 0) + COALESCE(contraction_minor, 0))
               / nullif(end_minor - change_minor, 0) AS gross_mrr_churn,
             (COALESCE(churn_minor, 0) + COALESCE(contraction_minor, 0)
               - COALESCE(expansion_minor, 0) - COALESCE(reactivation_minor, 0))
               / nullif(end_minor - change_minor, 0) AS net_mrr_churn,
             (end_minor - change_minor + COALESCE(expansion_minor, 0)
               + COALESCE(reactivation_minor, 0) - COALESCE(contraction_minor, 0)
               - COALESCE(churn_minor, 0)) / nullif(end_minor - change_minor, 0) AS nrr,
             (COALESCE(new_minor, 0) + COALESCE(expansion_minor, 0)
               + COALESCE(reactivation_minor, 0))
               / nullif(COALESCE(churn_minor, 0) + COALESCE(contraction_minor, 0), 0)
               AS quick_ratio
           FROM m ORDER BY month""",
    )


def mrr_at_risk_by_signal(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Expected MRR at risk of the accounts each signal fires for (an account with two
    signals counts under both), and how many accounts."""
    expected = _expected(_columns(con, "account_health"))
    return _frame(
        con,
        f"""WITH h AS (SELECT account_id, {expected} AS expected FROM account_health
                       WHERE as_of = {_LATEST} AND {expected} > 0),
            s AS (SELECT DISTINCT account_id, signal FROM signal_events
                  WHERE as_of = {_LATEST} AND NOT list_contains($expansion, signal))
            SELECT s.signal, count(*) AS accounts,
                   CAST(sum(h.expected) AS BIGINT) AS expected_mrr_at_risk_minor
            FROM s JOIN h USING (account_id)
            GROUP BY s.signal ORDER BY expected_mrr_at_risk_minor DESC, s.signal""",
        {"expansion": list(names_of("expansion"))},
    )


def health_over_time(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Accounts per Payment Health at each scoring."""
    return _frame(
        con,
        """SELECT as_of, payment_health, count(*) AS accounts FROM account_health
           GROUP BY ALL ORDER BY as_of, payment_health""",
    )


def cohort_retention(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """MRR retained by start-month cohort: cohort, months since start, share of the
    cohort's first-month MRR (accounts whose first MRR falls in the movements' window)."""
    return _frame(
        con,
        f"""WITH mv AS (SELECT * FROM mrr_movements WHERE as_of = {_LATEST}),
           starts AS (SELECT account_id, min(month) AS cohort FROM mv WHERE movement = 'new'
                      GROUP BY account_id),
           -- per cohort and month: the MRR change and accounts gained or lost; an account
           -- starts at zero in its cohort month, so running sums are its MRR and count
           per AS (SELECT s.cohort, mv.month, sum(mv.amount_minor) AS change,
                          count(*) FILTER (mv.start_mrr_minor = 0)
                            - count(*) FILTER (mv.end_mrr_minor = 0) AS gained
                   FROM mv JOIN starts s USING (account_id) WHERE mv.month >= s.cohort
                   GROUP BY ALL),
           months AS (SELECT DISTINCT month FROM mv),
           grid AS (SELECT c.cohort, m.month FROM (SELECT DISTINCT cohort FROM starts) c
                    JOIN months m ON m.month >= c.cohort),
           run AS (SELECT g.cohort, g.month,
                          sum(COALESCE(p.change, 0)) OVER w AS mrr,
                          sum(COALESCE(p.gained, 0)) OVER w AS accounts
                   FROM grid g LEFT JOIN per p USING (cohort, month)
                   WINDOW w AS (PARTITION BY g.cohort ORDER BY g.month))
           SELECT cohort, CAST(datediff('month', cohort, month) AS INTEGER) AS month_index,
                  CAST(accounts AS BIGINT) AS accounts, CAST(mrr AS BIGINT) AS mrr_minor,
                  mrr / nullif(first_value(mrr) OVER (PARTITION BY cohort ORDER BY month), 0)
                    AS retained
           FROM run ORDER BY cohort, month""",
    )


# --- expansion leads ------------------------------------------------------------------


def expansion_leads(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> pl.DataFrame:
    """Accounts to grow, apart from the risk worklist, by the MRR they could add.

    Two kinds: the expansion signals (every purchased seat in use), and steady payers
    (Payment Health Healthy, no risk, no failed charge in 180 days) whose MRR grew in the
    last three months. Potential: ``EXPANSION_UPLIFT`` more seats (at least one) at today's
    price per seat, or that share of MRR without seats.
    """
    candidates = f"""NOT known_churn AND total_mrr_minor > 0 AND account_id IN (
        SELECT account_id FROM signal_events
        WHERE as_of = {_LATEST} AND list_contains($expansion, signal)
        UNION SELECT account_id FROM mrr_movements
        WHERE as_of = {_LATEST} AND movement = 'expansion'
          AND month >= date_trunc('month', {_LATEST}) - INTERVAL 2 MONTH)"""
    sql = f"""
      WITH w AS ({_health_select(con, candidates)}),
      seats AS (
        SELECT account_id, any_value(reason) AS reason,
               max(CAST(json_extract(evidence, '$.purchased_seats') AS BIGINT)) AS seats
        FROM signal_events WHERE as_of = (SELECT max(as_of) FROM account_health)
          AND list_contains($expansion, signal)
        GROUP BY account_id),
      grew AS (
        SELECT account_id, CAST(sum(amount_minor) AS BIGINT) AS grew_minor FROM mrr_movements
        WHERE as_of = (SELECT max(as_of) FROM account_health)
          AND movement = 'expansion'
          AND month >= date_trunc('month', (SELECT max(as_of) FROM account_health))
                       - INTERVAL 2 MONTH
        GROUP BY account_id),
      failed AS (
        SELECT DISTINCT COALESCE(l.account_id, c.customer_id) AS account_id
        FROM core_charges c LEFT JOIN core_account_links l USING (customer_id)
        WHERE c.status = 'failed'
          AND c.created_at >= (SELECT max(as_of) FROM account_health) - INTERVAL 180 DAY),
      leads AS (
        SELECT w.*, s.seats, g.grew_minor,
          CASE WHEN s.account_id IS NOT NULL THEN 'All seats in use'
               ELSE 'Steady payer, MRR grew' END AS lead,
          s.reason AS why
        FROM w LEFT JOIN seats s USING (account_id) LEFT JOIN grew g USING (account_id)
        WHERE NOT w.known_churn AND w.total_mrr_minor > 0
          AND (s.account_id IS NOT NULL
               OR (g.grew_minor > 0 AND w.payment_health = 'Healthy' AND w.risk_score = 0
                   AND w.account_id NOT IN (SELECT account_id FROM failed))))
      SELECT account_id, account_name, owner_id, owner_name, lead, why, payment_health,
             reporting_currency, total_mrr_minor, seats, grew_minor, next_renewal_at,
             stripe_customer_ids,
             CAST(CASE WHEN seats > 0
                  THEN round(total_mrr_minor / seats * greatest(1, ceil(seats * $uplift)))
                  ELSE round(total_mrr_minor * $uplift) END AS BIGINT) AS potential_mrr_minor
      FROM leads
      ORDER BY potential_mrr_minor DESC, account_id
      LIMIT $limit
    """
    return _frame(
        con,
        sql,
        {"expansion": list(names_of("expansion")), "uplift": EXPANSION_UPLIFT, "limit": limit},
    )


# --- pipeline health ------------------------------------------------------------------


def runs(con: duckdb.DuckDBPyConnection, limit: int = 20) -> pl.DataFrame:
    """The latest runs: when, how long, outcome, API calls, error, notes."""
    notes = "notes" if "notes" in _columns(con, "run_log") else "NULL"
    return _frame(
        con,
        f"""SELECT run_id, command, started_at, finished_at, status,
                   date_diff('millisecond', started_at, finished_at) / 1000.0 AS seconds,
                   (SELECT CAST(sum(CAST(v AS BIGINT)) AS BIGINT)
                    FROM (SELECT unnest(map_values(CAST(api_calls AS MAP(VARCHAR, BIGINT)))) v))
                     AS api_calls,
                   error, CAST({notes} AS VARCHAR) AS notes
            FROM run_log ORDER BY started_at DESC LIMIT $limit""",
        {"limit": limit},
    )


def api_calls(con: duckdb.DuckDBPyConnection, limit: int = 20) -> pl.DataFrame:
    """API calls per step of the latest runs (the budget each system's calls use)."""
    return _frame(
        con,
        """WITH r AS (SELECT run_id, started_at, CAST(api_calls AS MAP(VARCHAR, BIGINT)) AS m
                      FROM run_log WHERE api_calls IS NOT NULL
                      ORDER BY started_at DESC LIMIT $limit)
           SELECT run_id, started_at, unnest(map_keys(m)) AS step,
                  unnest(map_values(m)) AS calls
           FROM r ORDER BY started_at, step""",
        {"limit": limit},
    )


def freshness(con: duckdb.DuckDBPyConnection, now: datetime) -> pl.DataFrame:
    """Every stream's cursor and when it last moved, with its age in hours at ``now``."""
    return _frame(
        con,
        """SELECT stream, cursor_ts, updated_at,
                  date_diff('minute', updated_at, CAST($now AS TIMESTAMP)) / 60.0 AS age_hours
           FROM sync_state ORDER BY age_hours DESC, stream""",
        {"now": now},
    )


def push_rejections(con: duckdb.DuckDBPyConnection, limit: int = 100) -> pl.DataFrame:
    """Records Salesforce refused, newest first, with its message verbatim."""
    return _frame(
        con,
        """SELECT logged_at, sobject, record_key, action, error_code, error_message
           FROM push_log WHERE NOT success ORDER BY logged_at DESC LIMIT $limit""",
        {"limit": limit},
    )


def quarantine_summary(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return _frame(
        con,
        """SELECT source, stream, reason, count(*) AS objects, max(quarantined_at) AS latest
           FROM quarantine GROUP BY ALL ORDER BY objects DESC, source, stream""",
    )


def link_summary(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Stripe customers by how they were linked to an Account."""
    return _frame(
        con,
        """SELECT method, count(*) AS customers FROM core_account_links
           GROUP BY method ORDER BY customers DESC""",
    )


def link_problems(con: duckdb.DuckDBPyConnection, limit: int = 200) -> pl.DataFrame:
    """Unmatched and conflicting customer links, with why."""
    return _frame(
        con,
        """SELECT customer_id, method, detail, linked_at FROM core_account_links
           WHERE method IN ('unmatched', 'conflict') ORDER BY method, customer_id LIMIT $limit""",
        {"limit": limit},
    )
