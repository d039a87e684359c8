"""A small warehouse world for the push: Accounts, Users, the marts, as the extract and the
scoring leave them. Rows go in through SQL, as the real stages write them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import duckdb

AS_OF = datetime(2026, 11, 26, 6, 0, tzinfo=UTC).replace(tzinfo=None)  # naive UTC

# The marts as engineer "signals" defines them; created here only until their migration is
# merged (IF NOT EXISTS: theirs wins once it exists).
MART_DDL = """
CREATE TABLE IF NOT EXISTS account_health (
    account_id VARCHAR, as_of TIMESTAMP, payment_health VARCHAR, risk_score INTEGER,
    total_mrr BIGINT, currency VARCHAR, mrr_at_risk BIGINT, next_renewal_date DATE,
    days_since_last_payment INTEGER, subscription_count INTEGER, top_reasons JSON,
    stripe_customer_ids JSON
);
CREATE TABLE IF NOT EXISTS signal_events (
    account_id VARCHAR, signal VARCHAR, score DOUBLE, severity VARCHAR, reason VARCHAR,
    evidence JSON, as_of TIMESTAMP, episode_key VARCHAR
);
"""


def account_id(i: int) -> str:
    return f"001{i:015d}"


@dataclass
class World:
    con: duckdb.DuckDBPyConnection

    def users(self, users: Mapping[str, bool]) -> None:
        for user_id, active in users.items():
            self.con.execute(
                "INSERT OR REPLACE INTO core_users (user_id, name, is_active) VALUES (?, ?, ?)",
                [user_id, user_id, active],
            )

    def accounts(self, ids: Iterable[str], owner: str = "005000000000000OWN") -> None:
        rows = [(a, f"Account {a}", owner, AS_OF) for a in ids]
        self.con.executemany(
            "INSERT OR REPLACE INTO core_accounts (account_id, name, owner_id, system_modstamp) "
            "VALUES (?, ?, ?, ?)",
            rows,
        )

    def health(self, rows: Iterable[Mapping[str, Any]], as_of: datetime = AS_OF) -> None:
        self.con.execute(MART_DDL)
        self.con.execute("DELETE FROM account_health WHERE as_of = ?", [as_of])
        for r in rows:
            self.con.execute(
                "INSERT INTO account_health (account_id, as_of, payment_health, risk_score, "
                "total_mrr, currency, next_renewal_date, days_since_last_payment, "
                "subscription_count, top_reasons, stripe_customer_ids) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    r["account_id"],
                    as_of,
                    r.get("payment_health", "Healthy"),
                    r.get("risk_score", 10),
                    r.get("total_mrr", 10_000),
                    r.get("currency", "usd"),
                    r.get("next_renewal_date", date(2026, 12, 31)),
                    r.get("days_since_last_payment", 5),
                    r.get("subscription_count", 1),
                    json.dumps(r.get("top_reasons", [])),
                    json.dumps(r.get("stripe_customer_ids", ["cus_" + r["account_id"][-4:]])),
                ],
            )

    def signals(self, rows: Iterable[Mapping[str, Any]], as_of: datetime = AS_OF) -> None:
        self.con.execute(MART_DDL)
        self.con.execute("DELETE FROM signal_events WHERE as_of = ?", [as_of])
        for r in rows:
            self.con.execute(
                "INSERT INTO signal_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    r["account_id"],
                    r.get("signal", "payment_failure"),
                    r.get("score", 0.8),
                    r.get("severity", "high"),
                    r.get("reason", "Invoice failed"),
                    json.dumps(r.get("evidence", {})),
                    as_of,
                    r["episode_key"],
                ],
            )
