from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from churn.cli import app
from churn.pipelines.links import link_customers, match_customers
from churn.settings import Settings
from churn.warehouse import connect

S = Settings().salesforce


def _customers(*rows: tuple[str, str | None, str | None, dict[str, str] | None]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "customer_id": c,
                "name": n,
                "email_domain": d,
                "metadata": json.dumps(m) if m else None,
            }
            for c, n, d, m in rows
        ],
        schema={
            "customer_id": pl.Utf8,
            "name": pl.Utf8,
            "email_domain": pl.Utf8,
            "metadata": pl.Utf8,
        },
    )


ACCOUNTS = pl.DataFrame(
    {
        "account_id": ["001A", "001B", "001C", "001D", "001E"],
        "name": ["Acme, Inc.", "Globex", "Initech", "Twin Co", "Twin  co"],
        "website_domain": ["acme.io", "globex.com", "shared.io", "shared.io", None],
        "stripe_customer_id": [None, "cus_field", None, None, None],
    }
)


def _match(customers: pl.DataFrame) -> dict[str, tuple[str | None, str, str | None]]:
    out = match_customers(
        customers,
        ACCOUNTS,
        metadata_keys=S.link_metadata_keys,
        personal_domains=S.personal_email_domains,
    )
    return {
        r["customer_id"]: (r["account_id"], r["method"], r["detail"])
        for r in out.iter_rows(named=True)
    }


def test_each_rule_in_priority_order() -> None:
    got = _match(
        _customers(
            ("cus_meta", "Globex", "globex.com", {"sf_account_id": "001A"}),
            ("cus_field", "Acme Inc", "acme.io", None),
            ("cus_domain", "Something Else", "ACME.io", None),
            ("cus_name", "ACME inc", None, None),
            ("cus_none", "Nobody", "nobody.org", {"other": "x"}),
            ("cus_badmeta", "Nobody", None, {"salesforce_account_id": "001ZZZ"}),
        )
    )
    assert got["cus_meta"] == ("001A", "metadata", None)
    assert got["cus_field"] == ("001B", "account_field", None)
    assert got["cus_domain"] == ("001A", "email_domain", None)
    assert got["cus_name"] == ("001A", "name", None)
    assert got["cus_none"] == (None, "unmatched", None)
    assert got["cus_badmeta"] == (None, "unmatched", None)


def test_account_field_may_list_several_customers() -> None:
    """The push writes "cus_A, cus_B" for an Account with two customers; the next run must
    read both back as account_field links (the demo's second run once re-sent them)."""
    accounts = ACCOUNTS.with_columns(
        stripe_customer_id=pl.when(pl.col("account_id") == "001C")
        .then(pl.lit("cus_one, cus_two ,cus_three"))
        .otherwise(pl.col("stripe_customer_id"))
    )
    out = match_customers(
        _customers(
            ("cus_one", None, None, None),
            ("cus_two", None, None, None),
            ("cus_three", None, None, None),
            ("cus_on", None, None, None),
        ),
        accounts,
        metadata_keys=(),
        personal_domains=(),
    )
    got = {r["customer_id"]: (r["account_id"], r["method"]) for r in out.iter_rows(named=True)}
    assert got == {
        "cus_one": ("001C", "account_field"),
        "cus_two": ("001C", "account_field"),
        "cus_three": ("001C", "account_field"),
        "cus_on": (None, "unmatched"),
    }


def test_metadata_key_order_is_a_setting() -> None:
    customers = _customers(
        ("c1", None, None, {"salesforce_account_id": "001B", "sf_account_id": "001A"})
    )
    first = match_customers(
        customers, ACCOUNTS, metadata_keys=("sf_account_id",), personal_domains=()
    )
    assert first["account_id"].to_list() == ["001A"]
    none = match_customers(customers, ACCOUNTS, metadata_keys=("crm_id",), personal_domains=())
    assert none["method"].to_list() == ["unmatched"]


def test_ties_are_conflicts_and_personal_domains_never_match() -> None:
    got = _match(
        _customers(
            ("cus_tie_domain", "Zzz", "shared.io", None),
            ("cus_tie_name", "twin co.", None, None),
            ("cus_gmail", "Zzz", "gmail.com", None),
        )
    )
    assert got["cus_tie_domain"] == (None, "conflict", "email_domain: 001C, 001D")
    assert got["cus_tie_name"] == (None, "conflict", "name: 001D, 001E")
    gmail_acc = ACCOUNTS.with_columns(pl.lit("gmail.com").alias("website_domain"))
    out = match_customers(
        _customers(("cus_gmail", "Zzz", "gmail.com", None)),
        gmail_acc.head(1),
        metadata_keys=(),
        personal_domains=S.personal_email_domains,
    )
    assert out["method"].to_list() == ["unmatched"]


def test_link_customers_writes_links_and_cli_prints_tables(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    con = connect(db)
    con.execute(
        "INSERT INTO core_accounts (account_id, name, website_domain, stripe_customer_id) VALUES"
        " ('001A', 'Acme', 'acme.io', NULL), ('001B', 'Beta', 'beta.io', NULL)"
    )
    con.execute(
        "INSERT INTO core_customers (customer_id, name, email_domain, metadata) VALUES"
        " ('cus_1', 'x', 'acme.io', NULL), ('cus_2', 'Acme', NULL, NULL),"
        " ('cus_3', 'q', 'gmail.com', '{\"sf_account_id\": \"001B\"}'), ('cus_4', 'none', NULL, NULL)"
    )
    report = link_customers(Settings(db=db), con)
    assert report.counts["matched"] == 3 and report.counts["unmatched"] == 1
    assert report.shared_accounts["customers"].to_list() == [["cus_1", "cus_2"]]
    rows = con.execute(
        "SELECT customer_id, account_id, method FROM core_account_links ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("cus_1", "001A", "email_domain"),
        ("cus_2", "001A", "name"),
        ("cus_3", "001B", "metadata"),
        ("cus_4", None, "unmatched"),
    ]
    con.close()
    result = CliRunner().invoke(app, ["--db", str(db), "links"])
    assert result.exit_code == 0, result.output
    assert "cus_1, cus_2" in result.output and "cus_4" in result.output


def test_metadata_account_id_matches_in_15_or_18_characters() -> None:
    """Salesforce's UI and reports show 15-character Ids, the API 18: people paste either
    into Stripe metadata, and both name the same Account."""
    accounts = pl.DataFrame(
        {
            "account_id": ["001Ak00000ABCDEIAX", "001Ak00000abcdeIAX"],
            "name": ["Upper", "Lower"],
            "website_domain": [None, None],
            "stripe_customer_id": [None, None],
        },
        schema={
            "account_id": pl.Utf8,
            "name": pl.Utf8,
            "website_domain": pl.Utf8,
            "stripe_customer_id": pl.Utf8,
        },
    )
    out = match_customers(
        _customers(
            ("cus_15", "x", None, {"sf_account_id": "001Ak00000abcde"}),
            ("cus_18", "y", None, {"sf_account_id": " 001Ak00000ABCDEIAX "}),
            ("cus_other", "z", None, {"sf_account_id": "001Ak00000ZZZZZ"}),
        ),
        accounts,
        metadata_keys=S.link_metadata_keys,
        personal_domains=S.personal_email_domains,
    )
    got = {r["customer_id"]: (r["account_id"], r["method"]) for r in out.iter_rows(named=True)}
    assert got == {
        "cus_15": ("001Ak00000abcdeIAX", "metadata"),  # 15-character Ids are case-sensitive
        "cus_18": ("001Ak00000ABCDEIAX", "metadata"),
        "cus_other": (None, "unmatched"),
    }
