"""A small warehouse world for the push: Accounts, Users, the marts, as the extract and the
scoring leave them. Rows go in through SQL, as the real stages write them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

AS_OF = datetime(2026, 11, 26, 6, 0, tzinfo=UTC).replace(tzinfo=None)  # naive UTC
RENEWAL = datetime(2026, 12, 31, 9, 30, tzinfo=UTC).replace(tzinfo=None)

# The marts as engineer "signals" defines them; created here only until their migration is
# merged (IF NOT EXISTS: theirs wins once it exists).
MART_DDL = """
CREATE TABLE IF NOT EXISTS signal_events (
    account_id VARCHAR NOT NULL, signal VARCHAR NOT NULL, score DOUBLE NOT NULL,
    severity VARCHAR NOT NULL, reason VARCHAR NOT NULL, evidence JSON,
    as_of TIMESTAMP NOT NULL, episode_key VARCHAR NOT NULL, PRIMARY KEY (as_of, episode_key)
);
CREATE TABLE IF NOT EXISTS account_health (
    account_id VARCHAR NOT NULL, as_of TIMESTAMP NOT NULL, payment_health VARCHAR NOT NULL,
    risk_score INTEGER NOT NULL, known_churn BOOLEAN NOT NULL, churn_effective_at TIMESTAMP,
    reporting_currency VARCHAR NOT NULL, total_mrr_minor BIGINT, mrr_at_risk_minor BIGINT,
    next_renewal_at TIMESTAMP, last_successful_payment_at TIMESTAMP,
    days_since_last_payment INTEGER, subscription_count INTEGER NOT NULL, top_reasons JSON,
    stripe_customer_ids JSON, PRIMARY KEY (as_of, account_id)
);
"""


#: The ``kill_push`` fixture (conftest): ``kill_push(sf, sobject, nth=4)`` runs ``churn
#: push`` in a process of its own and SIGKILLs it while the org holds its nth record.
KillPush = Callable[..., None]


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
                "known_churn, total_mrr_minor, reporting_currency, next_renewal_at, "
                "days_since_last_payment, subscription_count, top_reasons, "
                "stripe_customer_ids) VALUES (?, ?, ?, ?, false, ?, ?, ?, ?, ?, ?, ?)",
                [
                    r["account_id"],
                    as_of,
                    r.get("payment_health", "Healthy"),
                    r.get("risk_score", 10),
                    r.get("total_mrr", 10_000),
                    r.get("currency", "USD"),
                    r.get("next_renewal_date", RENEWAL),
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
