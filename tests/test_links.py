from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from churn.cli import app
from churn.pipelines.links import link_customers, match_customers, sf_id18
from churn.pipelines.push.sync import build_plan
from churn.pipelines.salesforce.extract import extract_salesforce
from churn.sandbox.salesforce.server import start_salesforce_server
from churn.settings import Settings, load_settings
from churn.signals.tables import Tables
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
            "account_id": ["001Ak00000ABCDEIA5", "001Ak00000abcdeIAA"],
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
            ("cus_18", "y", None, {"sf_account_id": " 001Ak00000ABCDEIA5 "}),
            ("cus_other", "z", None, {"sf_account_id": "001Ak00000ZZZZZ"}),
        ),
        accounts,
        metadata_keys=S.link_metadata_keys,
        personal_domains=S.personal_email_domains,
    )
    got = {r["customer_id"]: (r["account_id"], r["method"]) for r in out.iter_rows(named=True)}
    assert got == {
        "cus_15": ("001Ak00000abcdeIAA", "metadata"),  # 15-character Ids are case-sensitive
        "cus_18": ("001Ak00000ABCDEIA5", "metadata"),
        "cus_other": (None, "unmatched"),
    }


def _accounts(*rows: tuple[str, str | None, str | None]) -> pl.DataFrame:
    """Accounts (account_id, name, website_domain), no Stripe Customer field."""
    return pl.DataFrame(
        [
            {"account_id": a, "name": n, "website_domain": w, "stripe_customer_id": None}
            for a, n, w in rows
        ],
        schema={
            "account_id": pl.Utf8,
            "name": pl.Utf8,
            "website_domain": pl.Utf8,
            "stripe_customer_id": pl.Utf8,
        },
    )


def _links(
    customers: pl.DataFrame, accounts: pl.DataFrame, **kw: tuple[str, ...]
) -> dict[str, tuple[str | None, str, str | None]]:
    out = match_customers(
        customers,
        accounts,
        metadata_keys=kw.get("metadata_keys", S.link_metadata_keys),
        personal_domains=kw.get("personal_domains", S.personal_email_domains),
    )
    return {
        r["customer_id"]: (r["account_id"], r["method"], r["detail"])
        for r in out.iter_rows(named=True)
    }


def test_salesforce_id_forms() -> None:
    """The 18-character Id is the 15-character one plus 3 characters: each encodes, for one
    5-character chunk of the 15, which characters are upper case (bit i set for an upper-case
    letter at position i of the chunk), as an index into ``ABCDEFGHIJKLMNOPQRSTUVWXYZ012345``
    (Salesforce's 15-to-18 conversion as published, e.g. ``00558000001N0Ke`` ->
    ``00558000001N0KeAAK``, ``a0BA0000000L2ZC`` -> ``a0BA0000000L2ZCMA0``). So the 18-character
    Id is case-insensitive-safe: its suffix gives back the case of the first 15."""
    assert sf_id18("00558000001N0Ke") == "00558000001N0KeAAK"
    assert sf_id18("a0BA0000000L2ZC") == "a0BA0000000L2ZCMA0"
    assert sf_id18("AAaAAbbBBBCcCCC") == "AAaAAbbBBBCcCCC123"
    # 18 characters in any case: the case of the first 15 comes back from the suffix.
    assert sf_id18("a0BA0000000L2ZCMA0") == "a0BA0000000L2ZCMA0"
    assert sf_id18("A0BA0000000L2ZCMA0".lower()) == "a0BA0000000L2ZCMA0"
    assert sf_id18("A0BA0000000L2ZCMA0") == "a0BA0000000L2ZCMA0"
    assert sf_id18(" 00558000001n0keaak ") == "00558000001N0KeAAK"
    # Not an Id: wrong length, a character outside [A-Za-z0-9], a suffix character past 5.
    for bad in (
        "",
        "001",
        "001Ak00000ABCD",
        "001Ak00000ABCDEIA",
        "001Ak0000-ABCDE",
        "001Ak00000ABCDEIA9",
    ):
        assert sf_id18(bad) is None, bad


def test_metadata_account_id_in_any_form_and_case() -> None:
    """Metadata pasted from the UI (15 characters, case-sensitive) or the API (18), or an 18-
    character Id lower-cased by a tool (it is case-insensitive-safe), names the same Account;
    a 15-character Id in another case is another record."""
    accounts = _accounts(
        ("001Ak00000ABCDEIA5", "Upper", None), ("001Ak00000abcdeIAA", "Lower", None)
    )
    got = _links(
        _customers(
            ("cus_15_upper", "a", None, {"sf_account_id": "001Ak00000ABCDE"}),
            ("cus_15_lower", "b", None, {"sf_account_id": "001Ak00000abcde"}),
            ("cus_18_lowercased", "c", None, {"sf_account_id": "001ak00000abcdeia5"}),
            ("cus_18_uppercased", "d", None, {"sf_account_id": "001AK00000ABCDEIAA"}),
            ("cus_15_other_case", "e", None, {"sf_account_id": "001AK00000abcde"}),
        ),
        accounts,
    )
    assert got == {
        "cus_15_upper": ("001Ak00000ABCDEIA5", "metadata", None),
        "cus_15_lower": ("001Ak00000abcdeIAA", "metadata", None),
        "cus_18_lowercased": ("001Ak00000ABCDEIA5", "metadata", None),
        "cus_18_uppercased": ("001Ak00000abcdeIAA", "metadata", None),
        "cus_15_other_case": (None, "unmatched", None),
    }


def test_email_domain_matches_website_by_registrable_domain() -> None:
    """A subdomain belongs to its registrable domain (publicsuffixlist, on the bundled Public
    Suffix List: ``privatesuffix("www.example.com")`` is ``"example.com"``, "the shortest
    domain assigned for a registrant"), so ``eu.acme.com`` is ``acme.com``; a multi-part
    public suffix keeps its registrants apart (``a.co.uk`` and ``b.co.uk`` are two companies),
    and a domain that is itself a public suffix identifies nobody."""
    accounts = _accounts(
        ("001A", "Acme", "acme.com"),
        ("001B", "A Ltd", "www.a.co.uk"),
        ("001C", "B Ltd", "b.co.uk"),
        ("001D", "Gov", "co.uk"),
        ("001E", "Shop", "shop.example.myshopify.com"),
        ("001F", "Other shop", "other.myshopify.com"),
    )
    got = _links(
        _customers(
            ("cus_eu", "x", "eu.acme.com", None),
            ("cus_mail", "x", "MAIL.Eu.Acme.COM", None),
            ("cus_a", "x", "billing.a.co.uk", None),
            ("cus_b", "x", "b.co.uk", None),
            ("cus_c", "x", "c.co.uk", None),
            ("cus_suffix", "x", "co.uk", None),
            ("cus_shop", "x", "example.myshopify.com", None),
        ),
        accounts,
    )
    assert got == {
        "cus_eu": ("001A", "email_domain", None),
        "cus_mail": ("001A", "email_domain", None),
        "cus_a": ("001B", "email_domain", None),
        "cus_b": ("001C", "email_domain", None),
        "cus_c": (None, "unmatched", None),
        "cus_suffix": (None, "unmatched", None),
        # myshopify.com is a public suffix (the list's private section): each shop is its own.
        "cus_shop": ("001E", "email_domain", None),
    }


def test_personal_domains_never_link_by_domain() -> None:
    """Free-mail domains name no company, under any subdomain or case, and an Account whose
    website is one (people type gmail.com there too) is never matched by domain."""
    accounts = _accounts(("001G", "Gee", "gmail.com"), ("001O", "Oh", "www.outlook.com"))
    got = _links(
        _customers(
            ("cus_gmail", "x", "gmail.com", None),
            ("cus_gmail_upper", "x", "GMail.com", None),
            ("cus_outlook", "x", "outlook.com", None),
            ("cus_outlook_sub", "x", "eu.outlook.com", None),
        ),
        accounts,
    )
    assert {c: m for c, (_, m, _) in got.items()} == dict.fromkeys(got, "unmatched")


def _all_accounts(*rows: tuple[str, str | None, bool, str | None]) -> pl.DataFrame:
    """Accounts live and deleted: account_id, stripe_customer_id, is_deleted, master_record_id."""
    return pl.DataFrame(
        [
            {
                "account_id": a,
                "name": None,
                "website_domain": None,
                "stripe_customer_id": f,
                "is_deleted": d,
                "master_record_id": m,
            }
            for a, f, d, m in rows
        ],
        schema={
            "account_id": pl.Utf8,
            "name": pl.Utf8,
            "website_domain": pl.Utf8,
            "stripe_customer_id": pl.Utf8,
            "is_deleted": pl.Boolean,
            "master_record_id": pl.Utf8,
        },
    )


def test_metadata_naming_a_merged_or_deleted_account() -> None:
    """A merge keeps one Account and deletes the others: "When a record is deleted after
    losing a merge operation, its MasterRecordId field is set to the ID of the winning
    record", and "You can use queryAll() to view records that have been deleted during a
    merge" (Salesforce: Triggers and Merge Statements; merge()). Metadata naming a merged-away
    Account links to the survivor (through successive merges); naming a deleted Account is
    reported, never passed over silently to a weaker rule."""
    accounts = _all_accounts(
        ("001000000000001AAA", None, False, None),  # survivor
        ("001000000000002AAA", None, True, "001000000000001AAA"),  # merged into 1
        ("001000000000003AAA", None, True, "001000000000002AAA"),  # merged into 2, then 1
        ("001000000000004AAA", None, True, None),  # deleted
        ("001000000000005AAA", "cus_deleted_and_field", False, None),
        ("001000000000006AAA", None, True, "001000000000007AAA"),  # merged into a deleted one
        ("001000000000007AAA", None, True, None),
        ("001000000000008AAA", "cus_field_on_deleted", True, None),
    )
    got = _links(
        _customers(
            ("cus_merged", "a", None, {"sf_account_id": "001000000000002AAA"}),
            ("cus_merged_15", "b", None, {"sf_account_id": "001000000000002"}),
            ("cus_merged_twice", "c", None, {"sf_account_id": "001000000000003AAA"}),
            ("cus_deleted", "d", None, {"sf_account_id": "001000000000004AAA"}),
            ("cus_deleted_and_field", "e", None, {"sf_account_id": "001000000000004AAA"}),
            ("cus_merged_into_deleted", "f", None, {"sf_account_id": "001000000000006AAA"}),
            ("cus_field_on_deleted", "g", None, None),
        ),
        accounts,
    )
    one = "001000000000001AAA"
    assert got == {
        "cus_merged": (one, "metadata", "metadata: 001000000000002AAA merged into " + one),
        "cus_merged_15": (one, "metadata", "metadata: 001000000000002AAA merged into " + one),
        "cus_merged_twice": (one, "metadata", "metadata: 001000000000003AAA merged into " + one),
        "cus_deleted": (None, "unmatched", "metadata: 001000000000004AAA is deleted"),
        "cus_deleted_and_field": (
            None,
            "conflict",
            "metadata: 001000000000004AAA is deleted; account_field: 001000000000005AAA",
        ),
        "cus_merged_into_deleted": (
            None,
            "unmatched",
            "metadata: 001000000000006AAA merged into 001000000000007AAA, which is deleted",
        ),
        # A deleted Account's own fields link nobody.
        "cus_field_on_deleted": (None, "unmatched", None),
    }


@pytest.mark.slow
def test_merged_account_extracted_and_followed(tmp_path: Path) -> None:
    """End to end on the Salesforce stand-in: a merge deletes the loser with MasterRecordId
    set (Salesforce: "When a record is deleted after losing a merge operation, its
    MasterRecordId field is set to the ID of the winning record"); the extract (queryAll)
    lands it and the links follow the customer's metadata to the Account kept."""
    with start_salesforce_server() as running:
        kept, lost, gone = running.seed(
            "Account", [{"Name": "Acme"}, {"Name": "Acme (dup)"}, {"Name": "Gone"}]
        )
        settings = load_settings(
            env={**running.settings_env(), "CHURN_DB": str(tmp_path / "w.duckdb")}
        )
        con = connect(settings.db)
        extract_salesforce(settings, con, progress=False)
        running.merge("Account", kept, [lost])
        running.delete("Account", gone)
        extract_salesforce(settings, con, progress=False)
        assert con.execute(
            "SELECT account_id, is_deleted, master_record_id FROM core_accounts ORDER BY name"
        ).fetchall() == [(kept, False, None), (lost, True, kept), (gone, True, None)]
        con.execute(
            "INSERT INTO core_customers (customer_id, name, email_domain, metadata) VALUES"
            f" ('cus_1', 'x', NULL, '{{\"sf_account_id\": \"{lost[:15]}\"}}'),"
            f" ('cus_2', 'y', NULL, '{{\"sf_account_id\": \"{gone}\"}}')"
        )
        link_customers(settings, con)
        assert con.execute(
            "SELECT customer_id, account_id, method, detail FROM core_account_links ORDER BY 1"
        ).fetchall() == [
            ("cus_1", kept, "metadata", f"metadata: {lost} merged into {kept}"),
            ("cus_2", None, "unmatched", f"metadata: {gone} is deleted"),
        ]


def test_rerun_after_the_push_keeps_every_link(tmp_path: Path) -> None:
    """The push writes the Account's Stripe Customer Id field; the next run reads it back.
    An Account whose field named a customer with no subscription in force (canceled) and
    which also had a customer linked by metadata got the field rewritten to the metadata
    customer alone (account_health lists customers with subscriptions in force), so the
    next run linked the canceled one by email domain instead: the demo's second run moved 5
    links from account_field to email_domain. A rerun without changes gives the same links."""
    db = tmp_path / "w.duckdb"
    con = connect(db)
    con.execute(
        "INSERT INTO core_accounts (account_id, name, website_domain, stripe_customer_id) VALUES"
        " ('001A', 'Acme', 'acme.io', 'cus_old'), ('001B', 'Beta', 'beta.io', NULL)"
    )
    con.execute(
        "INSERT INTO core_customers (customer_id, name, email_domain, metadata) VALUES"
        " ('cus_old', 'Acme', 'acme.io', NULL),"
        " ('cus_new', 'Acme', 'acme.io', '{\"sf_account_id\": \"001A\"}'),"
        " ('cus_guess', 'Acme', 'acme.io', NULL),"
        " ('cus_beta', 'Beta', 'beta.io', NULL)"
    )
    settings = Settings(db=db)
    link_customers(settings, con)
    before = con.execute(
        "SELECT customer_id, account_id, method FROM core_account_links ORDER BY 1"
    ).fetchall()
    assert before == [
        ("cus_beta", "001B", "email_domain"),
        ("cus_guess", "001A", "email_domain"),
        ("cus_new", "001A", "metadata"),
        ("cus_old", "001A", "account_field"),
    ]
    # The scoring's account_health: customers with a subscription in force only.
    con.execute(
        "INSERT INTO account_health (account_id, as_of, payment_health, risk_score, known_churn,"
        " reporting_currency, subscription_count, stripe_customer_ids) VALUES"
        " ('001A', TIMESTAMP '2026-01-01', 'Healthy', 10, FALSE, 'USD', 2,"
        '  \'["cus_guess", "cus_new"]\'),'
        " ('001B', TIMESTAMP '2026-01-01', 'Healthy', 10, FALSE, 'USD', 1, '[\"cus_beta\"]')"
    )
    field = settings.salesforce.account_stripe_customer_field
    pushed = {
        c.record_key: c.fields[field]
        for c in build_plan(settings, con).changes
        if c.action == "update_account" and field in c.fields
    }
    # Guessed links are not written; what the field said stays.
    assert pushed == {"001A": "cus_new, cus_old"}
    for account_id, value in pushed.items():
        con.execute(
            "UPDATE core_accounts SET stripe_customer_id = ? WHERE account_id = ?",
            [value, account_id],
        )
    link_customers(settings, con)
    after = con.execute(
        "SELECT customer_id, account_id, method FROM core_account_links ORDER BY 1"
    ).fetchall()
    assert after == before


def _at(con: duckdb.DuckDBPyConnection, t: datetime) -> dict[str, tuple[str | None, str]]:
    rows = con.execute(
        "SELECT customer_id, account_id, method FROM account_links_as_of(?)", [t]
    ).fetchall()
    assert len(rows) == len({r[0] for r in rows}), "one link per customer at any instant"
    return {r[0]: (r[1], r[2]) for r in rows}


def test_links_are_versioned_from_when_they_were_seen(tmp_path: Path) -> None:
    """Point in time: a score as of T reads the links known at T. Each change of a
    customer's link (Account, rule, reason) opens a version in history_account_links from
    the link step that saw it; a rerun without change opens none. The first version a
    customer has holds back to before it was seen (nothing else was ever known: as the
    subscription history's first listed state does), so a back-fill on a new warehouse
    still links. core_account_links.linked_at is when the customer was first linked to its
    current Account and stays put across reruns."""
    t1, t2, t3, t4 = (datetime(2026, 3, d, 12) for d in (1, 2, 3, 4))  # noqa: DTZ001
    db = tmp_path / "w.duckdb"
    con = connect(db)
    con.execute(
        "INSERT INTO core_accounts (account_id, name, website_domain, stripe_customer_id) VALUES"
        " ('001A', 'Acme', 'acme.io', NULL), ('001B', 'Beta', 'beta.io', NULL)"
    )
    con.execute(
        "INSERT INTO core_customers (customer_id, name, email_domain, metadata) VALUES"
        " ('cus_1', 'x', 'acme.io', NULL), ('cus_2', 'y', NULL, NULL),"
        " ('cus_3', 'z', 'beta.io', NULL)"
    )
    settings = Settings(db=db)
    link_customers(settings, con, now=t1)
    link_customers(settings, con, now=t2)  # nothing changed
    con.execute(
        'UPDATE core_customers SET metadata = \'{"sf_account_id": "001B"}\''
        " WHERE customer_id = 'cus_1'"
    )
    con.execute("UPDATE core_accounts SET stripe_customer_id = 'cus_2' WHERE account_id = '001A'")
    link_customers(settings, con, now=t3)
    con.execute("UPDATE core_customers SET is_deleted = TRUE WHERE customer_id = 'cus_3'")
    link_customers(settings, con, now=t4)
    assert con.execute(
        "SELECT customer_id, valid_from, valid_to, account_id, method"
        " FROM history_account_links ORDER BY 1, 2"
    ).fetchall() == [
        ("cus_1", t1, t3, "001A", "email_domain"),
        ("cus_1", t3, None, "001B", "metadata"),
        ("cus_2", t1, t3, None, "unmatched"),
        ("cus_2", t3, None, "001A", "account_field"),
        ("cus_3", t1, t4, "001B", "email_domain"),
    ]
    assert con.execute(
        "SELECT customer_id, account_id, linked_at, valid_from FROM core_account_links ORDER BY 1"
    ).fetchall() == [("cus_1", "001B", t3, t3), ("cus_2", "001A", t3, t3)]
    before_first_run = datetime(2025, 1, 1)  # noqa: DTZ001
    assert _at(con, before_first_run) == {
        "cus_1": ("001A", "email_domain"),
        "cus_2": (None, "unmatched"),
        "cus_3": ("001B", "email_domain"),
    }
    assert _at(con, t2) == _at(con, before_first_run)
    assert _at(con, t3) == {
        "cus_1": ("001B", "metadata"),
        "cus_2": ("001A", "account_field"),
        "cus_3": ("001B", "email_domain"),
    }
    assert _at(con, t4) == {"cus_1": ("001B", "metadata"), "cus_2": ("001A", "account_field")}


def test_linked_at_stays_when_only_the_rule_changes(tmp_path: Path) -> None:
    """A link found again by another rule is the same link: linked_at keeps its first time,
    the version (valid_from) records the change."""
    t1, t2 = datetime(2026, 3, 1), datetime(2026, 3, 2)  # noqa: DTZ001
    db = tmp_path / "w.duckdb"
    con = connect(db)
    con.execute(
        "INSERT INTO core_accounts (account_id, name, website_domain) VALUES ('001A', 'Acme', 'acme.io')"
    )
    con.execute(
        "INSERT INTO core_customers (customer_id, name, email_domain) VALUES ('cus_1', 'x', 'acme.io')"
    )
    settings = Settings(db=db)
    link_customers(settings, con, now=t1)
    con.execute("UPDATE core_accounts SET stripe_customer_id = 'cus_1'")
    link_customers(settings, con, now=t2)
    assert con.execute(
        "SELECT account_id, method, linked_at, valid_from FROM core_account_links"
    ).fetchall() == [("001A", "account_field", t1, t2)]


def test_many_customers_and_accounts_on_one_domain_stay_small() -> None:
    """Customers and Accounts sharing a domain are a conflict per customer, computed per
    domain (not per pair: 3,000 x 3,000 pairs would be 9 million rows), whose detail names
    ten Accounts and how many more."""
    n = 3_000
    accounts = _accounts(*((f"001{i:012d}AAA", f"A{i}", f"site{i}.shared.com") for i in range(n)))
    customers = _customers(*((f"cus_{i}", f"C{i}", f"x{i}.shared.com", None) for i in range(n)))
    out = match_customers(customers, accounts, metadata_keys=(), personal_domains=())
    assert out["method"].unique().to_list() == ["conflict"]
    detail = out["detail"][0]
    assert detail.startswith("email_domain: 001000000000000AAA, ")
    assert detail.endswith(f" and {n - 10} more") and detail.count("AAA") == 10


def test_signals_can_read_links_as_of_through_tables(tmp_path: Path) -> None:
    """What a signal would write to read links point in time: the macro with ``$as_of``
    through Tables (one SELECT), and the join on the view for a query with many instants."""
    t1, t2 = datetime(2026, 3, 1), datetime(2026, 3, 5)  # noqa: DTZ001
    db = tmp_path / "w.duckdb"
    con = connect(db)
    con.execute(
        "INSERT INTO core_accounts (account_id, name, website_domain) VALUES"
        " ('001A', 'Acme', 'acme.io'), ('001B', 'Beta', NULL)"
    )
    con.execute(
        "INSERT INTO core_customers (customer_id, name, email_domain) VALUES ('cus_1', 'x', 'acme.io')"
    )
    settings = Settings(db=db)
    link_customers(settings, con, now=t1)
    con.execute("UPDATE core_accounts SET stripe_customer_id = 'cus_1' WHERE account_id = '001B'")
    link_customers(settings, con, now=t2)
    tables = Tables(con)
    sql = (
        "SELECT COALESCE(l.account_id, c.customer_id) AS account_id FROM core_customers c"
        " LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = c.customer_id"
    )
    assert tables.frame(sql, {"as_of": datetime(2026, 3, 3)})["account_id"].to_list() == ["001A"]  # noqa: DTZ001
    assert tables.frame(sql, {"as_of": t2})["account_id"].to_list() == ["001B"]
    many = tables.frame(
        "SELECT p.t, l.account_id FROM (VALUES (TIMESTAMP '2020-01-01'), (TIMESTAMP '2026-03-04'),"
        " (TIMESTAMP '2026-03-06')) p(t)"
        " LEFT JOIN account_link_versions l ON l.customer_id = 'cus_1'"
        "  AND l.in_force_from <= p.t AND (l.valid_to IS NULL OR l.valid_to > p.t) ORDER BY p.t"
    )
    assert many["account_id"].to_list() == ["001A", "001A", "001B"]


def _links_world(db: Path) -> duckdb.DuckDBPyConnection:
    con = connect(db)
    con.execute(
        "INSERT INTO core_accounts (account_id, name, website_domain, stripe_customer_id) VALUES"
        " ('001A', 'Acme', 'acme.io', NULL), ('001B', 'Beta', 'beta.io', NULL),"
        " ('001C', 'Gamma', 'gamma.io', 'cus_4')"
    )
    con.execute(
        "INSERT INTO core_customers (customer_id, name, email_domain, metadata) VALUES"
        " ('cus_1', 'x', 'acme.io', NULL), ('cus_2', 'Beta', NULL, NULL),"
        " ('cus_3', 'z', 'beta.io', NULL), ('cus_4', 'w', NULL, NULL)"
    )
    return con


#: Edits between runs: a column the matching reads, one it does not, a deletion, a merge.
_EDITS = (
    "UPDATE core_customers SET currency = 'eur' WHERE customer_id = 'cus_1'",
    "UPDATE core_accounts SET website_domain = 'beta.io' WHERE account_id = '001A'",
    'UPDATE core_customers SET metadata = \'{"sf_account_id": "001C"}\''
    " WHERE customer_id = 'cus_2'",
    "UPDATE core_accounts SET stripe_customer_id = NULL WHERE account_id = '001C'",
    "UPDATE core_customers SET is_deleted = TRUE WHERE customer_id = 'cus_3'",
    "UPDATE core_accounts SET is_deleted = TRUE, master_record_id = '001B'"
    " WHERE account_id = '001C'",
    "UPDATE core_customers SET name = 'Gamma' WHERE customer_id = 'cus_4'",
)


def test_unchanged_input_skips_the_matching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose customers and Accounts hold what the last matching read (in the columns
    it reads) gives the same links, so it does not match again (at 100,000 accounts the
    matching is seconds of every run); any change of such a column, of the matching's
    settings, or a warehouse whose link_state was lost, matches again."""
    import churn.pipelines.links as links

    calls: list[int] = []
    real = links.match_customers

    def counted(*args: object, **kwargs: object) -> pl.DataFrame:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(links, "match_customers", counted)
    db = tmp_path / "w.duckdb"
    con = _links_world(db)
    settings = Settings(db=db)
    first = link_customers(settings, con)
    again = link_customers(settings, con)
    assert len(calls) == 1
    assert again.counts == first.counts and again.links.equals(first.links)
    con.execute(_EDITS[0])  # currency: not read by any rule
    link_customers(settings, con)
    assert len(calls) == 1
    con.execute(_EDITS[1])  # a website domain
    link_customers(settings, con)
    assert len(calls) == 2
    other = Settings(db=db, salesforce={"personal_email_domains": ["acme.io"]})
    link_customers(other, con)
    assert len(calls) == 3
    link_customers(other, con)
    assert len(calls) == 3
    con.execute("DELETE FROM link_state")
    link_customers(other, con)
    assert len(calls) == 4


def test_skipping_gives_what_matching_again_gives(tmp_path: Path) -> None:
    """After each edit, a warehouse whose runs may skip holds the same links and versions
    as one made to match at every run."""
    skipping, matching = _links_world(tmp_path / "a.duckdb"), _links_world(tmp_path / "b.duckdb")
    settings = Settings(db=tmp_path / "a.duckdb")
    for day, edit in enumerate(("SELECT 1", "SELECT 1", *_EDITS), start=1):
        now = datetime(2026, 3, day, 12)  # noqa: DTZ001
        for con in (skipping, matching):
            con.execute(edit)
        matching.execute("DELETE FROM link_state")
        link_customers(settings, skipping, now=now)
        link_customers(settings, matching, now=now)
        for table in ("core_account_links", "history_account_links"):
            query = f"SELECT * FROM {table} ORDER BY ALL"
            assert skipping.execute(query).fetchall() == matching.execute(query).fetchall(), edit


def test_domains_looked_up_once_are_kept_for_the_next_matching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each matching looked every customer's and Account's domain up in the Public Suffix
    List again (0.7 s of 1.35 s at 100,000 accounts); ``link_domains`` keeps the answers,
    per list version, and a matching looks up only the domains it has not seen."""
    import churn.pipelines.links as links

    looked: list[str] = []
    real = links.registrable_domain

    def counted(host: str | None) -> str | None:
        looked.append(str(host))
        return real(host)

    monkeypatch.setattr(links, "registrable_domain", counted)
    db = tmp_path / "w.duckdb"
    con = _links_world(db)
    settings = Settings(db=db)
    personal = set(settings.salesforce.personal_email_domains)  # a setting, judged each time
    first = link_customers(settings, con)
    assert sorted(set(looked) - personal) == ["acme.io", "beta.io", "gamma.io"]
    kept = con.execute("SELECT domain, registrable FROM link_domains ORDER BY 1").fetchall()
    assert kept == [("acme.io", "acme.io"), ("beta.io", "beta.io"), ("gamma.io", "gamma.io")]
    looked.clear()
    con.execute(
        "UPDATE core_accounts SET website_domain = 'www.delta.co.uk' WHERE account_id = '001C'"
    )
    link_customers(settings, con)
    assert [d for d in looked if d not in personal] == ["www.delta.co.uk"]  # the rest: the table
    assert ("www.delta.co.uk", "delta.co.uk") in con.execute(
        "SELECT domain, registrable FROM link_domains"
    ).fetchall()
    # what the table answers is what the list answers: the same links as a first matching
    fresh = _links_world(tmp_path / "fresh.duckdb")
    fresh.execute(
        "UPDATE core_accounts SET website_domain = 'www.delta.co.uk' WHERE account_id = '001C'"
    )
    assert (
        link_customers(settings, con)
        .links.drop("linked_at", "valid_from")
        .equals(link_customers(settings, fresh).links.drop("linked_at", "valid_from"))
    )
    assert first.counts["email_domain"] >= 1


def test_domains_of_another_list_version_are_not_used(tmp_path: Path) -> None:
    """A row judged by another version of the Public Suffix List is looked up again and
    replaced: the list's rules change between its versions."""
    from churn.pipelines.links import _psl_version

    db = tmp_path / "w.duckdb"
    con = _links_world(db)
    # an answer no list gives (acme.io no domain at all): its customer would link nowhere
    con.execute("INSERT INTO link_domains VALUES ('acme.io', NULL, 'an older list')")
    report = link_customers(Settings(db=db), con)
    assert report.links.filter(pl.col("customer_id") == "cus_1")["account_id"].to_list() == ["001A"]
    versions = con.execute("SELECT DISTINCT psl_version FROM link_domains").fetchall()
    assert versions == [(_psl_version(),)]
    # the same wrong answer under this version is read (so the table is what is used)
    con.execute("UPDATE link_domains SET registrable = NULL WHERE domain = 'acme.io'")
    con.execute("DELETE FROM link_state")
    again = link_customers(Settings(db=db), con)
    assert again.links.filter(pl.col("customer_id") == "cus_1")["method"].to_list() == ["unmatched"]


def test_a_matching_rewrites_only_the_links_that_changed(tmp_path: Path) -> None:
    """Every matching deleted and inserted every customer's row of core_account_links (the
    table and its key rewritten: a 1.3 s commit at 100,000 accounts for a few changes);
    an unchanged link's row now stays where it is."""
    db = tmp_path / "w.duckdb"
    con = _links_world(db)
    settings = Settings(db=db)
    link_customers(settings, con, now=datetime(2026, 3, 1))  # noqa: DTZ001
    rowids = dict(con.execute("SELECT customer_id, rowid FROM core_account_links").fetchall())
    con.execute("UPDATE core_customers SET name = 'Gamma' WHERE customer_id = 'cus_4'")
    con.execute("UPDATE core_accounts SET stripe_customer_id = NULL WHERE account_id = '001C'")
    link_customers(settings, con, now=datetime(2026, 3, 2))  # noqa: DTZ001
    after = dict(con.execute("SELECT customer_id, rowid FROM core_account_links").fetchall())
    assert {c for c in rowids if after[c] == rowids[c]} == {"cus_1", "cus_2", "cus_3"}
    assert con.execute(
        "SELECT account_id, method FROM core_account_links WHERE customer_id = 'cus_4'"
    ).fetchall() == [("001C", "name")]
