"""Extract Salesforce objects into raw_sf_<object> and the typed core tables.

Each stream is read with ``queryAll`` (deleted rows included, IsDeleted tells) ordered by
SystemModstamp, Id, starting ``lookback_seconds`` before the stream's cursor; ``>=`` plus
the lookback makes rows sharing a SystemModstamp across a page boundary land on the next
run as well, and landing is an upsert by Id (newer-or-equal stamp wins), so the overlap
changes nothing. Each page lands, its core rows are rebuilt and the cursor moves in one
transaction: a run stopped anywhere (budget, kill) resumes from the last complete page.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import polars as pl
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import SalesforceError

from churn.errors import (
    ApiBudgetExhaustedError,
    ChurnError,
    ConfigError,
    SalesforceExtractError,
)
from churn.pipelines.salesforce.client import (
    BudgetedSession,
    error_codes,
    make_salesforce,
    query_pages,
    salesforce_errors,
)
from churn.pipelines.salesforce.reconcile import reconcile_deletions, reconcile_due
from churn.settings import Settings
from churn.warehouse import read_state, transaction, utcnow, write_state

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Stream:
    name: str  # also the raw table suffix: raw_sf_<name>
    sobject: str
    fields: tuple[str, ...]
    where: str = ""  # a fixed extra condition (identifiers only, no data)


@dataclass
class SalesforceExtractResult:
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    multi_currency: bool = False
    #: Sentences for the run summary (owned fields the org lacks), never customer data.
    notes: list[str] = field(default_factory=list)


def _ident(name: str, setting: str) -> str:
    if not _IDENT.match(name):
        raise ConfigError(f"{setting} is not a Salesforce field name")
    return name


def streams(
    settings: Settings,
    *,
    multi_currency: bool,
    dated_rates: bool = False,
    owned: tuple[str, ...] = (),
) -> list[Stream]:
    """The streams to read, with the configured custom field names; ``owned``: the Account
    fields the push writes that the org has, read back so the push compares against what
    Salesforce holds (unchanged values are not rewritten, a hand edit is put back)."""
    sf = settings.salesforce
    stripe_field = _ident(
        sf.account_stripe_customer_field, "SALESFORCE_ACCOUNT_STRIPE_CUSTOMER_FIELD"
    )
    task_field = _ident(sf.task_external_id_field, "SALESFORCE_TASK_EXTERNAL_ID_FIELD")
    cur = ("CurrencyIsoCode",) if multi_currency else ()
    # MasterRecordId: on an Account deleted by a merge, the Account that was kept.
    account = ["Id", "Name", "Website", "OwnerId", *cur, stripe_field, "MasterRecordId"]
    if settings.usage.account_field:
        account.append(_ident(settings.usage.account_field, "CHURN_USAGE__ACCOUNT_FIELD"))
    account.extend(_ident(name, "CHURN_PUSH__ACCOUNT_FIELDS") for name in owned)
    base = ("SystemModstamp", "IsDeleted")
    out = [
        Stream("user", "User", ("Id", "Name", "Email", "IsActive", *base)),
        Stream("account", "Account", (*dict.fromkeys(account), *base)),
        Stream(
            "opportunity",
            "Opportunity",
            (
                "Id",
                "AccountId",
                "Name",
                "StageName",
                "Amount",
                *cur,
                "CloseDate",
                "IsClosed",
                "IsWon",
                *base,
            ),
        ),
        Stream("contact", "Contact", ("Id", "AccountId", "Name", "Email", *base)),
        Stream(
            "task",
            "Task",
            ("Id", "WhatId", "OwnerId", "Subject", "Status", task_field, *base),
            where=f"{task_field} != null",
        ),
    ]
    if settings.push.billing_contact_roles:
        # The push's billing contact when no Contact's email is the Stripe customer's.
        out.append(
            Stream(
                "accountcontactrole",
                "AccountContactRole",
                ("Id", "AccountId", "ContactId", "Role", "IsPrimary", *base),
            )
        )
    if multi_currency:
        out.append(
            Stream(
                "currencytype",
                "CurrencyType",
                (
                    "Id",
                    "IsoCode",
                    "ConversionRate",
                    "DecimalPlaces",
                    "IsActive",
                    "IsCorporate",
                    "SystemModstamp",
                ),
            )
        )
    if multi_currency and dated_rates:
        # Advanced currency management: the rates by date range (no IsDeleted field on it).
        out.append(
            Stream(
                "datedconversionrate",
                "DatedConversionRate",
                ("Id", "IsoCode", "ConversionRate", "StartDate", "NextStartDate", "SystemModstamp"),
            )
        )
    return out


def parse_sf_datetime(text: str) -> datetime:
    """``2024-01-01T00:00:00.000+0000`` (the REST API) or ``...000Z`` (Bulk API 2.0's
    CSV) as naive UTC. A value without its offset is refused (ValueError): read as local
    time it would be wrong by the machine's zone."""
    # fromisoformat is C (about 1.3 us a value; strptime 8.7 us, 0.7 s of an 85,000-Account
    # read) and takes both offsets; it also takes a date alone, hence the check.
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"a Salesforce dateTime without its offset: {text!r}")
    return value.astimezone(UTC).replace(tzinfo=None)


def build_soql(stream: Stream, since: datetime | None, *, ordered: bool = True) -> str:
    """The stream's query; ``since`` (naive UTC) goes through format_soql.

    ``ordered=False`` for Bulk API 2.0: "Use of ORDER BY in a Bulk 2.0 query disables
    PKChunking for the query. With PKChunking disabled, the query takes longer to execute,
    and potentially results in query timeouts" (Salesforce, Troubleshooting Query
    Timeouts). A bulk read moves its cursor only once every page landed, so order does not
    matter there."""
    conds = [stream.where] if stream.where else []
    if since is not None:
        conds.append(format_soql("SystemModstamp >= {}", since.replace(tzinfo=UTC)))
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    order = " ORDER BY SystemModstamp, Id" if ordered else ""
    return f"SELECT {', '.join(stream.fields)} FROM {stream.sobject}{where}{order}"


def page_frame(records: list[dict[str, Any]], fetched_at: datetime) -> pl.DataFrame:
    """One page as the raw table's columns."""
    ids: list[str] = []
    payloads: list[str] = []
    stamps: list[datetime] = []
    deleted: list[bool] = []
    # A page's records share stamps (a data load, our own push: thousands to the second),
    # so each distinct stamp is parsed once.
    parsed: dict[str, datetime] = {}
    for rec in records:
        ids.append(str(rec["Id"]))
        payloads.append(json.dumps({k: v for k, v in rec.items() if k != "attributes"}))
        text = rec["SystemModstamp"]
        stamp = parsed.get(text)
        if stamp is None:
            stamp = parsed[text] = parse_sf_datetime(text)
        stamps.append(stamp)
        deleted.append(bool(rec.get("IsDeleted") or False))
    return pl.DataFrame(
        {
            "id": ids,
            "payload": payloads,
            "system_modstamp": stamps,
            "is_deleted": deleted,
            "fetched_at": [fetched_at] * len(ids),
        },
        schema={
            "id": pl.Utf8,
            "payload": pl.Utf8,
            "system_modstamp": pl.Datetime("us"),
            "is_deleted": pl.Boolean,
            "fetched_at": pl.Datetime("us"),
        },
    )


def _core_sql(stream: str, settings: Settings) -> tuple[str, list[Any]] | None:
    """SQL rebuilding the core rows of the ids in ``sf_page`` from the raw table."""
    j = "json_extract_string(payload, ?)"
    if stream == "account":
        return (
            f"""INSERT OR REPLACE INTO core_accounts (account_id, name, website, website_domain,
              owner_id, stripe_customer_id, currency_iso_code, system_modstamp, is_deleted,
              master_record_id)
            SELECT id, {j}, {j},
              nullif(regexp_extract(lower({j}), '^(?:[a-z]+://)?(?:www\\.)?([^/:?#\\s]+)', 1), ''),
              {j}, {j}, {j}, system_modstamp, is_deleted, {j}
            FROM raw_sf_account WHERE id IN (SELECT id FROM sf_page)""",
            [
                "$.Name",
                "$.Website",
                "$.Website",
                "$.OwnerId",
                f"$.{settings.salesforce.account_stripe_customer_field}",
                "$.CurrencyIsoCode",
                "$.MasterRecordId",
            ],
        )
    if stream == "user":
        return (
            f"""INSERT OR REPLACE INTO core_users
            SELECT id, {j}, {j}, CAST({j} AS BOOLEAN), system_modstamp, is_deleted
            FROM raw_sf_user WHERE id IN (SELECT id FROM sf_page)""",
            ["$.Name", "$.Email", "$.IsActive"],
        )
    if stream == "opportunity":
        return (
            f"""INSERT OR REPLACE INTO core_opportunities
            SELECT id, {j}, {j}, {j}, CAST({j} AS DECIMAL(18, 2)), {j}, CAST({j} AS DATE),
              CAST({j} AS BOOLEAN), CAST({j} AS BOOLEAN), system_modstamp, is_deleted
            FROM raw_sf_opportunity WHERE id IN (SELECT id FROM sf_page)""",
            [
                "$.AccountId",
                "$.Name",
                "$.StageName",
                "$.Amount",
                "$.CurrencyIsoCode",
                "$.CloseDate",
                "$.IsClosed",
                "$.IsWon",
            ],
        )
    if stream == "contact":
        return (
            f"""INSERT OR REPLACE INTO core_contacts
            SELECT id, {j}, {j}, {j}, system_modstamp, is_deleted
            FROM raw_sf_contact WHERE id IN (SELECT id FROM sf_page)""",
            ["$.AccountId", "$.Name", "$.Email"],
        )
    if stream == "accountcontactrole":
        return (
            f"""INSERT OR REPLACE INTO core_account_contact_roles
            SELECT id, {j}, {j}, {j}, coalesce(CAST({j} AS BOOLEAN), FALSE), system_modstamp,
              is_deleted
            FROM raw_sf_accountcontactrole WHERE id IN (SELECT id FROM sf_page)""",
            ["$.AccountId", "$.ContactId", "$.Role", "$.IsPrimary"],
        )
    if stream == "datedconversionrate":
        return (
            f"""INSERT OR REPLACE INTO core_dated_conversion_rates
            SELECT id, upper({j}), CAST({j} AS DECIMAL(18, 9)), CAST({j} AS DATE),
              CAST({j} AS DATE), system_modstamp, is_deleted
            FROM raw_sf_datedconversionrate WHERE id IN (SELECT id FROM sf_page)""",
            ["$.IsoCode", "$.ConversionRate", "$.StartDate", "$.NextStartDate"],
        )
    if stream == "currencytype":
        return (
            f"""INSERT OR REPLACE INTO core_currency_rates
            SELECT upper({j}), CAST({j} AS DECIMAL(18, 9)), CAST({j} AS INTEGER),
              coalesce(CAST({j} AS BOOLEAN), FALSE), coalesce(CAST({j} AS BOOLEAN), TRUE),
              system_modstamp
            FROM raw_sf_currencytype WHERE id IN (SELECT id FROM sf_page) AND NOT is_deleted""",
            ["$.IsoCode", "$.ConversionRate", "$.DecimalPlaces", "$.IsCorporate", "$.IsActive"],
        )
    return None


#: A CurrencyType rate as seen: a new version, from its SystemModstamp, whenever it
#: differs from the last version kept (rates over time where the org keeps no dates).
_RATE_VERSIONS = """
    INSERT INTO core_currency_rate_versions
    WITH seen AS (
        SELECT upper(json_extract_string(payload, '$.IsoCode')) AS iso_code,
               CAST(json_extract_string(payload, '$.ConversionRate') AS DECIMAL(18, 9))
                   AS conversion_rate, system_modstamp AS seen_from
        FROM raw_sf_currencytype WHERE id IN (SELECT id FROM sf_page) AND NOT is_deleted
    ), last AS (
        SELECT iso_code, arg_max(conversion_rate, seen_from) AS conversion_rate,
               max(seen_from) AS seen_from
        FROM core_currency_rate_versions GROUP BY iso_code
    )
    SELECT s.iso_code, s.conversion_rate, s.seen_from FROM seen s LEFT JOIN last l USING (iso_code)
    WHERE s.iso_code IS NOT NULL AND s.conversion_rate IS NOT NULL
      AND (l.iso_code IS NULL OR (l.conversion_rate <> s.conversion_rate
                                  AND s.seen_from > l.seen_from))
    ON CONFLICT DO NOTHING
"""


def land_page(
    con: duckdb.DuckDBPyConnection,
    stream: str,
    frame: pl.DataFrame,
    settings: Settings,
    *,
    move_cursor: bool = True,
) -> datetime | None:
    """Upsert one page into raw and core and move the cursor, in one transaction."""
    if frame.is_empty():
        return None
    top = frame["system_modstamp"].max()
    assert isinstance(top, datetime)
    con.register("sf_page", frame.to_arrow())
    try:
        with transaction(con):
            # raw_sf_* other than account carry no key (CREATE TABLE AS), so no ON CONFLICT:
            # replace the rows this page supersedes (newer-or-equal stamp), add the new ones.
            con.execute(
                f"""DELETE FROM raw_sf_{stream} WHERE id IN (
                  SELECT p.id FROM sf_page p JOIN raw_sf_{stream} r USING (id)
                  WHERE p.system_modstamp >= r.system_modstamp)"""
            )
            con.execute(
                f"""INSERT INTO raw_sf_{stream} BY NAME SELECT * FROM sf_page
                WHERE id NOT IN (SELECT id FROM raw_sf_{stream})"""
            )
            core = _core_sql(stream, settings)
            if core is not None:
                con.execute(core[0], core[1])
            if stream == "currencytype":
                con.execute(_RATE_VERSIONS)
            if move_cursor:
                _move_cursor(con, stream, top)
    finally:
        con.unregister("sf_page")
    return top


def _move_cursor(con: duckdb.DuckDBPyConnection, stream: str, top: datetime) -> None:
    con.execute(
        """INSERT INTO sync_state (stream, cursor, cursor_ts, updated_at)
        VALUES (?, NULL, ?, ?)
        ON CONFLICT (stream) DO UPDATE SET
          cursor_ts = greatest(sync_state.cursor_ts, excluded.cursor_ts),
          updated_at = excluded.updated_at""",
        [f"salesforce.{stream}", top, utcnow()],
    )


def _cursor(con: duckdb.DuckDBPyConnection, stream: str) -> datetime | None:
    state = read_state(con, f"salesforce.{stream}")
    return state.cursor_ts if state else None


def extracted_before(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether Accounts have been read whole before (a complete read sets the watermark):
    the next extract reads the changes since."""
    return _watermark(con, "account") is not None


def _watermark(con: duckdb.DuckDBPyConnection, stream: str) -> datetime | None:
    state = read_state(con, f"salesforce.{stream}")
    mark = (state.details or {}).get("watermark") if state else None
    return datetime.fromisoformat(mark) if mark else None


def _set_watermark(con: duckdb.DuckDBPyConnection, stream: str, mark: datetime) -> None:
    """After a complete read: everything stamped before ``mark`` has been seen."""
    con.execute(
        "UPDATE sync_state SET details = json_merge_patch(coalesce(details, '{}'),"
        " json_object('watermark', ?)) WHERE stream = ?",
        [mark.isoformat(), f"salesforce.{stream}"],
    )


def since_for(
    cursor: datetime | None, watermark: datetime | None, lookback: int
) -> datetime | None:
    """Where the next read starts: ``lookback`` before the newest stamp seen (a record
    committed late with an older stamp is caught), but never before the watermark, the
    start of the last complete read minus ``lookback``. Without it, a burst of records
    stamped together (a data load, our own push) would be re-read by every run for as long
    as nothing newer arrived."""
    if cursor is None:
        return None
    since = cursor - timedelta(seconds=lookback)
    return max(since, watermark) if watermark is not None else since


def extract_stream(
    sf: Salesforce, con: duckdb.DuckDBPyConnection, stream: Stream, settings: Settings
) -> int:
    """Read one stream page by page from its cursor; returns rows landed."""
    lookback = settings.salesforce.lookback_seconds
    since = since_for(_cursor(con, stream.name), _watermark(con, stream.name), lookback)
    landed, began = _read_stream(sf, con, stream, settings, since)
    if began is not None:
        # The org's own clock when the read began (no skew with ours to reason about).
        _set_watermark(con, stream.name, began - timedelta(seconds=lookback))
    return landed


def _read_stream(
    sf: Salesforce,
    con: duckdb.DuckDBPyConnection,
    stream: Stream,
    settings: Settings,
    since: datetime | None,
) -> tuple[int, datetime | None]:
    """Read every row of ``soql``; returns the rows landed and the org's clock as the first
    answer came (its Date header, one second early to cover its rounding down)."""
    landed, began = 0, None
    soql = build_soql(stream, since)
    with salesforce_errors(f"Salesforce stream {stream.name}"):
        for page in query_pages(sf, soql, include_deleted=True):
            if began is None:
                answered = getattr(sf.session, "server_time", None)
                began = answered - timedelta(seconds=1) if isinstance(answered, datetime) else None
                # The first page's totalSize tells the size: no COUNT() call (a second scan
                # of the same rows, and one more API call per stream per run). Above the
                # threshold the page is dropped and a Bulk API 2.0 job reads everything.
                if int(page.get("totalSize") or 0) > settings.salesforce.bulk_threshold:
                    bulk = build_soql(stream, since, ordered=False)
                    return extract_stream_bulk(sf, con, stream, settings, bulk), began
            frame = page_frame(page.get("records", []), utcnow())
            land_page(con, stream.name, frame, settings)
            landed += frame.height
    return landed, began


def _bulk_value(text: str) -> Any:
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    return text


def extract_stream_bulk(
    sf: Salesforce, con: duckdb.DuckDBPyConnection, stream: Stream, settings: Settings, soql: str
) -> int:
    """One Bulk API 2.0 queryAll job; the cursor moves only once every result page landed."""
    job = sf.restful("jobs/query", method="POST", json={"operation": "queryAll", "query": soql})
    job_id = str((job or {})["id"])
    delay = 0.05
    while True:
        info = sf.restful(f"jobs/query/{job_id}") or {}
        state = info.get("state")
        if state == "JobComplete":
            break
        if state in ("Failed", "Aborted"):
            raise SalesforceExtractError(
                f"Salesforce stream {stream.name}: bulk query job {job_id} {state}: {info.get('errorMessage')}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    landed, top, locator = 0, None, ""
    url = f"{sf.base_url}jobs/query/{job_id}/results"
    while locator != "null":
        params: dict[str, Any] = {"maxRecords": settings.salesforce.bulk_page_size}
        if locator:
            params["locator"] = locator
        records, locator = _bulk_page(sf, url, params, stream, job_id, settings)
        page_top = land_page(
            con, stream.name, page_frame(records, utcnow()), settings, move_cursor=False
        )
        landed += len(records)
        if page_top is not None and (top is None or page_top > top):
            top = page_top
    if top is not None:
        with transaction(con):
            _move_cursor(con, stream.name, top)
    return landed


def described_fields(sf: Salesforce, sobject: str) -> set[str] | None:
    """The field names describe lists for ``sobject`` (None when describe is refused)."""
    try:
        described = sf.restful(f"sobjects/{sobject}/describe")
    except SalesforceError:
        return None
    return {str(f.get("name")) for f in (described or {}).get("fields", [])}


def only_described(stream: Stream, names: set[str] | None) -> Stream:
    """The stream without the fields its object does not have (User has no IsDeleted:
    users are deactivated, never deleted)."""
    if names is None:
        return stream
    kept = tuple(f for f in stream.fields if f in names)
    return Stream(stream.name, stream.sobject, kept, stream.where)


_USER_FIELDS_STATE = "salesforce.user.fields"


def _user_fields(
    sf: Salesforce, con: duckdb.DuckDBPyConnection, *, refresh: bool
) -> set[str] | None:
    """User's fields as describe last gave them (asked again when ``refresh``)."""
    state = read_state(con, _USER_FIELDS_STATE)
    if state is not None and state.cursor and not refresh:
        return set(state.cursor.split(","))
    names = described_fields(sf, "User")
    if names is not None:
        with transaction(con):
            write_state(con, _USER_FIELDS_STATE, cursor=",".join(sorted(names)))
    return names


def _bulk_page(
    sf: Salesforce,
    url: str,
    params: dict[str, Any],
    stream: Stream,
    job_id: str,
    settings: Settings,
) -> tuple[list[dict[str, Any]], str]:
    """One page of a Bulk API 2.0 query's results and the next locator. A page with fewer
    rows than its ``Sforce-NumberOfRecords`` (cut short on its way) is asked for again."""
    what = f"Salesforce stream {stream.name}: bulk results of job {job_id}"
    for attempt in range(settings.salesforce.max_retries + 1):
        response = sf.session.get(url, params=params, headers=sf.headers, timeout=300)
        if response.status_code != 200:
            raise SalesforceExtractError(f"{what}: HTTP {response.status_code}")
        # The CSV comes as text/csv with no charset, where requests would guess ISO-8859-1;
        # Salesforce writes it in UTF-8 ("Files must be in UTF-8 format", Bulk API 2.0).
        try:
            text = response.content.decode("utf-8")
            rows = list(csv.DictReader(io.StringIO(text), strict=True))
        except (UnicodeDecodeError, csv.Error):
            rows = None
        declared = response.headers.get("Sforce-NumberOfRecords", "")
        complete = (
            rows is not None
            and (not declared.isdigit() or len(rows) == int(declared))
            and all(None not in row.values() and None not in row for row in rows)
        )
        if complete and rows is not None:
            records = [{k: _bulk_value(v) for k, v in row.items()} for row in rows]
            return records, response.headers.get("Sforce-Locator", "null")
        if attempt < settings.salesforce.max_retries and isinstance(sf.session, BudgetedSession):
            sf.session._wait(attempt, None)
    raise SalesforceExtractError(f"{what}: the page came cut short {attempt + 1} times")


def account_field_names(sf: Salesforce) -> set[str]:
    """The Account fields the integration user sees (one describe)."""
    try:
        described = sf.restful("sobjects/Account/describe")
    except SalesforceError as exc:
        raise SalesforceExtractError(
            f"Salesforce describe Account failed: {error_codes(exc)}"
        ) from None
    return {str(f.get("name")) for f in (described or {}).get("fields", [])}


def detect_multi_currency(sf: Salesforce) -> bool:
    """Multi-currency orgs have CurrencyIsoCode on Account (describe tells)."""
    return "CurrencyIsoCode" in account_field_names(sf)


def owned_fields_present(settings: Settings, names: set[str]) -> tuple[tuple[str, ...], list[str]]:
    """The owned Account fields (as mapped) the org has, and those it lacks."""
    lower = {n.lower(): n for n in names}
    present, missing = [], []
    for api_name in dict.fromkeys(settings.push.account_fields.values()):
        if api_name.lower() in lower:
            present.append(lower[api_name.lower()])
        else:
            missing.append(api_name)
    return tuple(present), missing


_DATED_STATE = "salesforce.datedconversionrate.available"


def _dated_rates_known(con: duckdb.DuckDBPyConnection) -> bool | None:
    """Whether the org had DatedConversionRate when last asked (None: never asked)."""
    state = read_state(con, _DATED_STATE)
    return None if state is None else state.cursor == "yes"


def detect_dated_rates(sf: Salesforce) -> bool:
    """Advanced currency management: DatedConversionRate "is not available in
    single-currency organizations, nor is it available if the organization doesn't have
    advanced currency management enabled", so its describe answers NOT_FOUND there."""
    try:
        sf.restful("sobjects/DatedConversionRate/describe")
    except SalesforceError as exc:
        if getattr(exc, "status", None) == 404:
            return False
        raise SalesforceExtractError(
            f"Salesforce describe DatedConversionRate failed: {error_codes(exc)}"
        ) from None
    return True


def extract_salesforce(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    progress: bool = True,
    sf: Salesforce | None = None,
    reconcile: bool = False,
) -> SalesforceExtractResult:
    """Extract every stream; raises ApiBudgetExhaustedError after landing what it could."""
    session = BudgetedSession(
        settings.salesforce.api_reserve, max_retries=settings.salesforce.max_retries
    )
    if sf is None:
        if not settings.salesforce.configured:
            raise ConfigError(
                "Salesforce is not configured: set SALESFORCE_INSTANCE_URL and"
                " SALESFORCE_SESSION_ID, or SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET"
            )
        sf = make_salesforce(settings.salesforce, session)
    elif isinstance(sf.session, BudgetedSession):
        session = sf.session
    start_calls = session.calls
    result = SalesforceExtractResult()
    try:
        names = account_field_names(sf)
        result.multi_currency = "CurrencyIsoCode" in names
        owned, missing = owned_fields_present(settings, names)
        if missing:
            result.notes.append(
                f"Salesforce: {len(missing)} owned Account field(s) not in the org or not"
                f" visible, not read back: {', '.join(missing)} (churn doctor)"
            )
        # Whether the org has DatedConversionRate, as last found: asked again (one
        # describe) on the first run and with each deletion reconcile, after the streams.
        known = _dated_rates_known(con)
        dated = result.multi_currency and bool(known)
        chosen = streams(
            settings, multi_currency=result.multi_currency, dated_rates=dated, owned=owned
        )
        recheck = reconcile or reconcile_due(con, settings, utcnow())
        # Users: select only the fields User has (no IsDeleted: users are deactivated,
        # never deleted). Describe tells, on the first run and with each reconcile.
        user_fields = _user_fields(sf, con, refresh=recheck)
        chosen = [only_described(s, user_fields) if s.name == "user" else s for s in chosen]
        for stream in chosen:
            result.counts[stream.name] = extract_stream(sf, con, stream, settings)
            if progress:
                print(f"salesforce {stream.name}: {result.counts[stream.name]} rows")
        if result.multi_currency and (known is None or recheck):
            found = detect_dated_rates(sf)
            with transaction(con):
                write_state(con, _DATED_STATE, cursor="yes" if found else "no")
            if found and not dated:
                extra = streams(settings, multi_currency=True, dated_rates=True, owned=owned)[-1]
                result.counts[extra.name] = extract_stream(sf, con, extra, settings)
                chosen.append(extra)
        if recheck:
            result.counts.update(
                reconcile_deletions(
                    sf, con, settings, [(s.name, s.sobject, s.where) for s in chosen]
                )
            )
    except ApiBudgetExhaustedError as exc:
        result.api_calls = session.calls - start_calls
        done = ", ".join(f"{k}={v}" for k, v in result.counts.items()) or "nothing"
        stopped = ApiBudgetExhaustedError(f"{exc}; landed before stopping: {done}")
        stopped.api_calls = result.api_calls
        raise stopped from None
    except ChurnError as exc:
        # A failed step reports the calls it made (run_log, the summary).
        exc.api_calls = session.calls - start_calls
        raise
    result.api_calls = session.calls - start_calls
    if session.remaining is not None:
        # The org's daily budget left, from the last answer's Sforce-Limit-Info: what
        # `churn status` shows as the budget.
        result.counts["api_remaining"] = session.remaining
    return result
