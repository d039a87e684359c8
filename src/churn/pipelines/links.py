"""Identity: link each Stripe customer to one Salesforce Account.

Rules, first that finds a candidate wins: ``metadata`` (a configured metadata key holds a
live Account Id, in 15 or 18 characters, compared in the 18-character form),
``account_field`` (the Account's Stripe Customer Id field names the customer, alone or in a
comma-separated list), ``email_domain`` (billing-email domain = the Account's website
domain, both by registrable domain on the Public Suffix List; personal domains never match),
``name`` (exact normalised name). A rule finding several Accounts
gives a ``conflict`` (no link); none at all gives ``unmatched``. The matching is pure, over
polars frames; :func:`link_customers` reads and writes the warehouse around it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, lru_cache

import duckdb
import polars as pl
from publicsuffixlist import PublicSuffixList

from churn import __version__
from churn.settings import Settings
from churn.warehouse import transaction, utcnow

RULES = ("metadata", "account_field", "email_domain", "name")

#: Bumped when a change to the matching changes what it gives for the same input: the
#: next run matches again even though its input's digest is unchanged.
LINKS_CODE_VERSION = "1"
#: What the matching reads: the live customers and every Account (deleted ones too).
_CUSTOMERS = (
    "SELECT customer_id, name, email_domain, CAST(metadata AS VARCHAR) AS metadata"
    " FROM core_customers WHERE NOT is_deleted"
)
_ACCOUNTS = (
    "SELECT account_id, name, website_domain, stripe_customer_id, is_deleted,"
    " master_record_id FROM core_accounts"
)

#: A conflict's detail names at most this many Accounts, then how many more.
_DETAIL_IDS = 10
#: The 18-character Id's suffix alphabet: character i stands for the 5-bit number i.
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-5]{3})?")
#: Upper-case letters to "1", every other Id character to "0".
_UPPER_BITS = str.maketrans(
    {
        **{c: "0" for c in "abcdefghijklmnopqrstuvwxyz0123456789"},
        **dict.fromkeys("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "1"),
    }
)


@dataclass
class LinkReport:
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    links: pl.DataFrame = field(default_factory=pl.DataFrame)
    #: Accounts linked from several customers: account_id, customers (list).
    shared_accounts: pl.DataFrame = field(default_factory=pl.DataFrame)


def sf_id18(value: str | None) -> str | None:
    """A Salesforce record Id in its 18-character form, or None when it is not an Id.

    The 15-character Id is case-sensitive; the 18-character one adds three characters, one
    per 5-character chunk of the 15, whose bit i says the chunk's character i is an upper-
    case letter (the character is ``_SUFFIX[bits]``). So an 18-character Id in any case
    names one record: the suffix gives back the case of the first 15.
    """
    if value is None:
        return None
    text = value.strip()
    if not _ID_RE.fullmatch(text):
        return None
    head = text[:15]
    suffix = _suffix(head)
    if len(text) == 15 or text[15:] == suffix:
        return head + suffix
    suffix = text[15:].upper()
    out = []
    for k, code in enumerate(suffix):
        bits = _SUFFIX.index(code)
        chunk = head[5 * k : 5 * k + 5]
        out.append("".join(c.upper() if bits >> j & 1 else c.lower() for j, c in enumerate(chunk)))
    return "".join(out) + suffix


def _suffix(head: str) -> str:
    flags = head.translate(_UPPER_BITS)
    return "".join(_SUFFIX[int(flags[k + 4 : k - 1 if k else None : -1], 2)] for k in (0, 5, 10))


def _sf_id18(col: pl.Expr) -> pl.Expr:
    """The 18-character form; text that is no Id compares as itself (stripped)."""
    return pl.coalesce(_per_value(col, sf_id18), col.str.strip_chars())


@cache
def _psl() -> PublicSuffixList:
    # The list bundled with the package: never fetched at run time.
    return PublicSuffixList()


@lru_cache(maxsize=65_536)
def registrable_domain(host: str | None) -> str | None:
    """The domain a registrant holds (``eu.acme.com`` -> ``acme.com``, ``b.a.co.uk`` ->
    ``a.co.uk``) by the Public Suffix List, lower case; None for a public suffix itself or
    text that is no domain."""
    if host is None:
        return None
    text = host.strip().rstrip(".").lower()
    if not text or "." not in text or any(c.isspace() or c in "/@:" for c in text):
        return None
    return _psl().privatesuffix(text)


def _per_value(
    col: pl.Expr, fn: Callable[[str], str | None], known: Mapping[str, str | None] | None = None
) -> pl.Expr:
    """``fn`` once per distinct value of the column (domains and Ids repeat) that ``known``
    does not answer already."""
    given: Mapping[str, str | None] = known or {}

    def apply(series: pl.Series) -> pl.Series:
        values = series.drop_nulls().unique().to_list()
        mapping = {v: given[v] if v in given else fn(v) for v in values}
        return series.replace_strict(mapping, default=None, return_dtype=pl.Utf8)

    return col.map_batches(apply, return_dtype=pl.Utf8)


def _registrable(col: pl.Expr, known: Mapping[str, str | None] | None = None) -> pl.Expr:
    return _per_value(col, registrable_domain, known)


def normalise_name(col: pl.Expr) -> pl.Expr:
    """Lower case, punctuation dropped, whitespace collapsed."""
    return (
        col.str.to_lowercase()
        .str.replace_all(r"[^\p{L}\p{N}\s]", "")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def match_customers(
    customers: pl.DataFrame,
    accounts: pl.DataFrame,
    *,
    metadata_keys: tuple[str, ...],
    personal_domains: tuple[str, ...],
    registrable: Mapping[str, str | None] | None = None,
) -> pl.DataFrame:
    """One row per customer: customer_id, account_id (None unless linked), method, detail.

    ``registrable``: domains whose registrable domain is known already
    (:func:`registrable_domain`'s answers, as :func:`known_domains` keeps them); the
    others are looked up.

    ``customers``: customer_id, name, email_domain, metadata (JSON text).
    ``accounts``: account_id, name, website_domain, stripe_customer_id, and optionally
    is_deleted and master_record_id (deleted Accounts match nothing themselves; metadata
    naming one is followed to the survivor of its merges, or reported with the reason).
    """
    cust = customers.with_columns(
        pl.coalesce(
            [pl.col("metadata").str.json_path_match(f"$.{key}") for key in metadata_keys]
            or [pl.lit(None, pl.Utf8)]
        ).alias("meta_account"),
        normalise_name(pl.col("name")).alias("name_norm"),
        _registrable(pl.col("email_domain"), registrable).alias("domain"),
    )
    personal = sorted(
        {d.strip().lower() for d in personal_domains}
        | {r for d in personal_domains if (r := registrable_domain(d))}
    )
    # Billing email and website compare by registrable domain (eu.acme.com is acme.com);
    # a personal (free-mail) domain names no company on either side.
    if "is_deleted" not in accounts.columns:
        accounts = accounts.with_columns(is_deleted=pl.lit(False))
    if "master_record_id" not in accounts.columns:
        accounts = accounts.with_columns(master_record_id=pl.lit(None, pl.Utf8))
    every = accounts.select(
        "account_id",
        _sf_id18(pl.col("account_id")).alias("_id18"),
        pl.col("is_deleted").fill_null(False),
        _sf_id18(pl.col("master_record_id")).alias("_master18"),
    )
    acc = (
        accounts.filter(~pl.col("is_deleted").fill_null(False))
        .with_columns(
            normalise_name(pl.col("name")).alias("name_norm"),
            _registrable(pl.col("website_domain"), registrable).alias("domain"),
        )
        .select(
            "account_id",
            "name_norm",
            pl.when(pl.col("domain").is_in(personal))
            .then(None)
            .otherwise(pl.col("domain"))
            .alias("domain"),
            "stripe_customer_id",
        )
    )
    # The field may name several customers ("cus_A, cus_B"): people write lists, and so
    # does the push for an Account with two customers.
    acc_ids = acc.select(
        "account_id",
        pl.col("stripe_customer_id").str.split(",").list.eval(pl.element().str.strip_chars()),
    ).explode("stripe_customer_id")

    def cands(
        rank: int,
        method: str,
        left: pl.DataFrame,
        on_left: str,
        on_right: str,
        right: pl.DataFrame = acc,
    ) -> pl.DataFrame:
        # Per key its Accounts' count, the Account when one, the detail when several: many
        # customers and Accounts sharing a domain or name must not multiply into every pair.
        keyed = _summarise(
            right.select("account_id", pl.col(on_right).alias("_k")).filter(
                pl.col("_k").is_not_null() & (pl.col("_k") != "")
            ),
            "_k",
            method,
        )
        return (
            left.filter(pl.col(on_left).is_not_null() & (pl.col(on_left) != ""))
            .join(keyed, left_on=on_left, right_on="_k")
            .select(
                "customer_id",
                pl.lit(rank).alias("rank"),
                pl.lit(method).alias("method"),
                "_n",
                "_account",
                "_detail",
            )
        )

    # Salesforce shows a record's Id with 15 characters (case-sensitive: the UI, reports,
    # Classic URLs) or 18 (the API; case-insensitive-safe): metadata copied from either, in
    # any case for the 18, must match. Both sides compare in the 18-character form.
    meta = cust.filter(pl.col("meta_account").is_not_null()).with_columns(
        _sf_id18(pl.col("meta_account")).alias("_meta")
    )
    # Metadata may name an Account deleted since: one merged away links to the survivor
    # (MasterRecordId, through successive merges); one deleted outright is reported below.
    named = meta.join(every, left_on="_meta", right_on="_id18").select(
        "customer_id", "account_id", "is_deleted"
    )
    resolved = _follow_merges(named.filter(pl.col("is_deleted")), every)
    by_meta = pl.concat(
        [
            named.filter(~pl.col("is_deleted")).select("customer_id", "account_id"),
            resolved.filter(pl.col("account_id").is_not_null()).select("customer_id", "account_id"),
        ]
    )
    candidates = pl.concat(
        [
            _summarise(by_meta, "customer_id", "metadata").select(
                "customer_id",
                pl.lit(0).alias("rank"),
                pl.lit("metadata").alias("method"),
                "_n",
                "_account",
                "_detail",
            ),
            cands(1, "account_field", cust, "customer_id", "stripe_customer_id", acc_ids),
            cands(
                2,
                "email_domain",
                cust.filter(
                    ~pl.col("domain").is_in(personal)
                    & ~pl.col("email_domain").str.strip_chars().str.to_lowercase().is_in(personal)
                ),
                "domain",
                "domain",
            ),
            cands(3, "name", cust, "name_norm", "name_norm"),
        ]
    )
    best = (
        candidates.sort("customer_id", "rank").group_by("customer_id", maintain_order=True).first()
    )
    out = (
        cust.select("customer_id")
        .join(best, on="customer_id", how="left")
        .with_columns(n=pl.col("_n").fill_null(0))
        .select(
            "customer_id",
            pl.col("_account").alias("account_id"),
            pl.when(pl.col("n") == 0)
            .then(pl.lit("unmatched"))
            .when(pl.col("n") > 1)
            .then(pl.lit("conflict"))
            .otherwise(pl.col("method"))
            .alias("method"),
            pl.col("_detail").alias("detail"),
        )
        .join(resolved.select("customer_id", "_why", "_dead"), on="customer_id", how="left")
        .select(
            "customer_id",
            pl.when(pl.col("_dead")).then(None).otherwise(pl.col("account_id")).alias("account_id"),
            pl.when(pl.col("_dead") & (pl.col("method") != "unmatched"))
            .then(pl.lit("conflict"))
            .otherwise(pl.col("method"))
            .alias("method"),
            # A deleted target is the reason, with what a weaker rule found instead.
            pl.when(pl.col("_dead") & (pl.col("method") == "conflict"))
            .then(pl.col("_why") + pl.lit("; ") + pl.col("detail"))
            .when(pl.col("_dead") & (pl.col("method") != "unmatched"))
            .then(
                pl.col("_why")
                + pl.lit("; ")
                + pl.col("method")
                + pl.lit(": ")
                + pl.col("account_id")
            )
            .when(pl.col("_dead") | (pl.col("method") == "metadata"))
            .then(pl.col("_why"))
            .otherwise(pl.col("detail"))
            .alias("detail"),
        )
        .sort("customer_id")
    )
    return out


def _write_links(con: duckdb.DuckDBPyConnection, seen_at: datetime) -> None:
    """``new_links`` into history_account_links (a version per change) and
    core_account_links (linked_at kept while the Account stays), inside the caller's
    transaction."""
    changed = """
        SELECT n.customer_id FROM new_links n
        LEFT JOIN history_account_links h ON h.customer_id = n.customer_id AND h.valid_to IS NULL
        WHERE h.customer_id IS NULL OR h.account_id IS DISTINCT FROM n.account_id
          OR h.method IS DISTINCT FROM n.method OR h.detail IS DISTINCT FROM n.detail
    """
    con.execute(
        f"""UPDATE history_account_links SET valid_to = $seen_at
        WHERE valid_to IS NULL AND (customer_id IN ({changed})
          OR customer_id NOT IN (SELECT customer_id FROM new_links))""",
        {"seen_at": seen_at},
    )
    con.execute(
        """INSERT INTO history_account_links
        SELECT n.customer_id, $seen_at, NULL, n.account_id, n.method, n.detail
        FROM new_links n
        LEFT JOIN history_account_links h ON h.customer_id = n.customer_id AND h.valid_to IS NULL
        WHERE h.customer_id IS NULL""",
        {"seen_at": seen_at},
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _links_next AS
        SELECT n.customer_id, n.account_id, n.method, n.detail,
          CASE WHEN o.customer_id IS NOT NULL AND o.account_id IS NOT DISTINCT FROM n.account_id
               THEN o.linked_at ELSE $seen_at END AS linked_at,
          h.valid_from
        FROM new_links n
        JOIN history_account_links h ON h.customer_id = n.customer_id AND h.valid_to IS NULL
        LEFT JOIN core_account_links o ON o.customer_id = n.customer_id""",
        {"seen_at": seen_at},
    )
    # Only the rows that differ are replaced: deleting and inserting every customer's row
    # rewrote the table and its key each matching (a 1.3 s commit at 100,000 accounts,
    # where a few links change).
    con.execute(
        """DELETE FROM core_account_links o WHERE NOT EXISTS (
          SELECT 1 FROM _links_next n
          WHERE n.customer_id = o.customer_id
            AND n.account_id IS NOT DISTINCT FROM o.account_id
            AND n.method = o.method AND n.detail IS NOT DISTINCT FROM o.detail
            AND n.linked_at = o.linked_at AND n.valid_from IS NOT DISTINCT FROM o.valid_from)"""
    )
    con.execute(
        "INSERT INTO core_account_links BY NAME SELECT * FROM _links_next"
        " WHERE customer_id NOT IN (SELECT customer_id FROM core_account_links)"
    )
    con.execute("DROP TABLE _links_next")


def _summarise(pairs: pl.DataFrame, key: str, method: str) -> pl.DataFrame:
    """Per ``key`` of (account_id, key) pairs: _n Accounts, _account (when one), _detail (when
    several: the rule and at most ``_DETAIL_IDS`` Account Ids, then how many more)."""
    ids = pl.col("_ids").list.join(", ")
    return (
        pairs.group_by(key)
        .agg(
            pl.col("account_id").n_unique().alias("_n"),
            pl.col("account_id").unique().sort().head(_DETAIL_IDS).alias("_ids"),
        )
        .select(
            key,
            "_n",
            pl.when(pl.col("_n") == 1).then(pl.col("_ids").list.first()).alias("_account"),
            pl.when(pl.col("_n") > _DETAIL_IDS)
            .then(pl.format("{}: {} and {} more", pl.lit(method), ids, pl.col("_n") - _DETAIL_IDS))
            .when(pl.col("_n") > 1)
            .then(pl.format("{}: {}", pl.lit(method), ids))
            .alias("_detail"),
        )
    )


def _follow_merges(named: pl.DataFrame, every: pl.DataFrame) -> pl.DataFrame:
    """Customers whose metadata names a deleted Account: customer_id, account_id (the live
    survivor of its merges, else None), _why (the reason, in words), _dead (no survivor).

    A merge deletes the losing Accounts and sets their MasterRecordId to the winner, which
    may itself be merged later; a chain ends at a live Account, a deleted one with no
    MasterRecordId, an Id not in the warehouse, or a loop.
    """
    schema = {"customer_id": pl.Utf8, "account_id": pl.Utf8, "_why": pl.Utf8, "_dead": pl.Boolean}
    if named.is_empty():
        return pl.DataFrame(schema=schema)
    by18 = {
        id18: (account_id, bool(deleted), master)
        for account_id, id18, deleted, master in every.iter_rows()
    }
    to18 = {account_id: id18 for account_id, id18, _, _ in every.iter_rows()}
    rows = []
    for customer_id, start in named.select("customer_id", "account_id").iter_rows():
        account_id, deleted, master = by18[to18[start]]
        seen = {to18[start]}
        while deleted and master is not None and master in by18 and master not in seen:
            seen.add(master)
            account_id, deleted, master = by18[master]
        if not deleted:
            why, dead = f"metadata: {start} merged into {account_id}", False
        elif master is not None and master not in by18:
            why, dead = f"metadata: {start} merged into {master}, which is not known", True
        elif account_id == start:
            why, dead = f"metadata: {start} is deleted", True
        else:
            why, dead = f"metadata: {start} merged into {account_id}, which is deleted", True
        rows.append((customer_id, None if dead else account_id, why, dead))
    return pl.DataFrame(rows, schema=schema, orient="row")


def input_digest(settings: Settings, con: duckdb.DuckDBPyConnection) -> str:
    """A digest of what the matching reads: the rows (an order-free sum of row hashes, and
    their count), the matching settings, the code's and the suffix list's versions."""
    rows = con.execute(
        f"""SELECT (SELECT count(*) || ':' || COALESCE(sum(hash(c)::HUGEINT), 0)
                    FROM ({_CUSTOMERS}) c),
                   (SELECT count(*) || ':' || COALESCE(sum(hash(a)::HUGEINT), 0)
                    FROM ({_ACCOUNTS}) a)"""
    ).fetchall()
    text = "|".join(
        (
            __version__,
            LINKS_CODE_VERSION,
            _psl_version(),
            json.dumps(list(settings.salesforce.link_metadata_keys)),
            json.dumps(list(settings.salesforce.personal_email_domains)),
            *map(str, rows[0]),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()


def known_domains(
    con: duckdb.DuckDBPyConnection, domains: pl.Series
) -> tuple[dict[str, str | None], pl.DataFrame]:
    """The registrable domain of each of ``domains``: those ``link_domains`` holds for this
    Public Suffix List version, the others looked up now; and the looked-up ones (domain,
    registrable), for :func:`_write_domains`."""
    known: dict[str, str | None] = dict(
        con.execute(
            "SELECT domain, registrable FROM link_domains WHERE psl_version = ?", [_psl_version()]
        ).fetchall()
    )
    new = [d for d in domains.drop_nulls().unique().to_list() if d not in known]
    looked = {d: registrable_domain(d) for d in new}
    known.update(looked)
    frame = pl.DataFrame(
        {"domain": list(looked), "registrable": list(looked.values())},
        schema={"domain": pl.Utf8, "registrable": pl.Utf8},
    )
    return known, frame


def _write_domains(con: duckdb.DuckDBPyConnection) -> None:
    """Keep the domains looked up (``new_domains``, registered), dropping another list
    version's; the caller's transaction."""
    version = _psl_version()
    con.execute("DELETE FROM link_domains WHERE psl_version <> ?", [version])
    con.execute(
        "INSERT INTO link_domains SELECT n.domain, n.registrable, ? FROM new_domains n"
        " WHERE n.domain NOT IN (SELECT domain FROM link_domains)",
        [version],
    )


@cache
def _psl_version() -> str:
    try:
        return importlib.metadata.version("publicsuffixlist")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def link_customers(
    settings: Settings, con: duckdb.DuckDBPyConnection, *, now: datetime | None = None
) -> LinkReport:
    """Rebuild core_account_links from core_customers and core_accounts, and version the
    changes in history_account_links (``now``, default the clock: when they were seen)."""
    seen_at = now or utcnow()
    digest = input_digest(settings, con)
    stored = con.execute("SELECT digest FROM link_state").fetchall()
    # The same input gives the same links, which _write_links would leave as they are:
    # a run where no customer or Account changed what the rules read skips the matching.
    if not stored or stored[0][0] != digest:
        # Deleted Accounts too: metadata naming one is followed through its merges.
        customers, accounts = con.sql(_CUSTOMERS).pl(), con.sql(_ACCOUNTS).pl()
        known, new_domains = known_domains(
            con, pl.concat([customers["email_domain"], accounts["website_domain"]])
        )
        links = match_customers(
            customers,
            accounts,
            metadata_keys=settings.salesforce.link_metadata_keys,
            personal_domains=settings.salesforce.personal_email_domains,
            registrable=known,
        )
        con.register("new_links", links.to_arrow())
        con.register("new_domains", new_domains.to_arrow())
        try:
            with transaction(con):
                _write_links(con, seen_at)
                _write_domains(con)
                con.execute("INSERT OR REPLACE INTO link_state VALUES (1, ?, ?)", [digest, seen_at])
        finally:
            con.unregister("new_links")
            con.unregister("new_domains")
    links = con.sql(
        "SELECT customer_id, account_id, method, detail, linked_at, valid_from"
        " FROM core_account_links ORDER BY customer_id"
    ).pl()
    shared = (
        links.filter(pl.col("account_id").is_not_null())
        .group_by("account_id")
        .agg(pl.col("customer_id").sort().alias("customers"))
        .filter(pl.col("customers").list.len() > 1)
        .sort("account_id")
    )
    counts = {
        m: int(links.filter(pl.col("method") == m).height)
        for m in (*RULES, "unmatched", "conflict")
    }
    counts["matched"] = sum(counts[m] for m in RULES)
    counts["shared_accounts"] = shared.height
    return LinkReport(counts=counts, links=links, shared_accounts=shared)
