"""One frozen settings object, loaded once and passed down explicitly.

Sources, later over earlier: defaults, an optional TOML file (``CHURN_CONFIG`` or the
``config_path`` argument), then environment variables:

- ``CHURN_DB``: the DuckDB file;
- ``STRIPE_<FIELD>`` for :class:`StripeSettings` (``STRIPE_API_KEY``, ``STRIPE_API_BASE``, ...);
- ``SALESFORCE_<FIELD>`` for :class:`SalesforceSettings`;
- ``CHURN_<SECTION>__<FIELD>`` for any other section, e.g.
  ``CHURN_SIGNALS__CARD_EXPIRY_HORIZON_DAYS=45``.

The TOML file uses the same names: top-level ``db``, then tables ``[stripe]``,
``[salesforce]``, ``[signals]``, ``[push]``, ``[case]``, ``[usage]``, ``[run]``,
``[alert]``, ``[webhook]``.

Secrets are :class:`pydantic.SecretStr`: masked in every repr, str and log line.
Errors name the variable (or TOML key) at fault, never its value.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from churn.errors import ConfigError
from churn.fields import ACCOUNT_FIELDS, account_field
from churn.signals import SIGNALS_BY_NAME, default_risk_weights, default_task_signals
from churn.signals.changes import KINDS as TIMELINE_KINDS

STRIPE_DEFAULT_API_BASE = "https://api.stripe.com"
#: Stripe's documented key prefixes: secret and restricted keys, test and live mode
#: ("Secret keys ... sk_test_ ... sk_live_"; restricted keys "rk_test_" / "rk_live_").
STRIPE_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
#: ``CHURN_*`` variables that are not settings but are read by the CLI's global options
#: (``--config``, ``--log-format``, ``--log-level``), the notebooks, the model's
#: command-line tools and the test suite (everything else named ``CHURN_*`` is a setting).
CHURN_TOOL_VARIABLES = frozenset(
    {
        "CHURN_CONFIG",
        "CHURN_LOG_FORMAT",
        "CHURN_LOG_LEVEL",
        "CHURN_CUTOFF",
        "CHURN_TRUTH",
        "CHURN_NOTEBOOK_OUT",
        "CHURN_HORIZON_DAYS",
        "CHURN_FAULT_TALLY_DIR",
    }
)
_EVERY = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_EVERY_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def every_seconds(text: str) -> float:
    """'15m' -> 900.0 seconds (``run.every``, ``--every``); ValueError when malformed."""
    match = _EVERY.match(text)
    if not match or int(match[1]) == 0:
        raise ValueError(f"must look like 30s, 15m, 1h or 1d, not {text[:20]!r}")
    return float(int(match[1]) * _EVERY_UNIT[match[2]])


#: The Account fields the push can own (keys of ``PushSettings.account_fields``).
ACCOUNT_FIELD_NAMES = tuple(f.name for f in ACCOUNT_FIELDS)


def _check_signals(names: Any, *, risk_only: bool) -> None:
    unknown = sorted(set(names) - set(SIGNALS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; known: {sorted(SIGNALS_BY_NAME)}")
    if risk_only:
        apart = sorted(n for n in names if not SIGNALS_BY_NAME[n].is_risk)
        if apart:
            raise ValueError(f"{apart} are not risk signals and carry no weight")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StripeSettings(_Section):
    """Stripe access and extract behaviour (env ``STRIPE_*``)."""

    api_key: SecretStr | None = None
    api_base: str = STRIPE_DEFAULT_API_BASE
    page_size: int = Field(100, ge=1, le=100)
    max_retries: int = Field(5, ge=0, le=20)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_max_seconds: float = Field(30.0, ge=0)
    timeout_seconds: float = Field(80.0, gt=0)
    #: Stripe keeps events for 30 days; a cursor older than this forces a reconciliation.
    event_retention_days: int = Field(30, ge=1)
    #: Re-list the mutable streams and diff at least this often (hours); 0 turns it off.
    reconcile_every_hours: float = Field(24.0, ge=0)
    #: A scheduled reconciliation re-lists invoices, charges and refunds created in the
    #: last this many days only (0: all); ``--reconcile`` and a stale cursor re-list all.
    reconcile_window_days: int = Field(60, ge=0)
    #: A backfill commits this many list pages per transaction (with their cursor).
    land_batch_pages: int = Field(10, ge=1)
    #: Events are applied this many pages per transaction (with their cursor). Each
    #: transaction lands into the keyed raw tables, whose conflict checks cost with the
    #: table's size, not the page's; a kill loses nothing but the work of the step.
    events_batch_pages: int = Field(50, ge=1)
    #: Requests a second to the account, all streams together (0: no limit). Stripe's
    #: rate limits page: "Global API rate limit: Live mode: 100 requests per second;
    #: Sandbox: 25 requests per second" (set 25 for a test-mode key's own account).
    rate_per_second: float = Field(100.0, ge=0)
    #: Requests a second to one endpoint (0: no limit): "API endpoints have a default
    #: limit of 25 requests per second" (docs.stripe.com/rate-limits).
    endpoint_rate_per_second: float = Field(25.0, ge=0)
    #: DuckDB's ``memory_limit`` during the Stripe extract (listing, events,
    #: reconciliation, and the rebuild of core and history in chunks), spilling past it
    #: to ``<warehouse>.tmp/``; restored after. Unless ``run.duckdb_memory_limit`` bounds
    #: the whole run. None: DuckDB's default (80% of the RAM).
    extract_memory_limit: str | None = Field(
        "256MB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"
    )
    #: The rebuild of core and history after an extract goes this many ids (of one
    #: stream) per transaction: memory follows the chunk, not the account.
    rebuild_chunk_ids: int = Field(10_000, ge=1)
    #: Streams a backfill lists at once (threads; the warehouse keeps one writer). Four
    #: endpoints at 25 a second make the global 100; more keep it full as streams end.
    concurrency: int = Field(6, ge=1, le=32)
    #: Each events read starts this many seconds before the cursor (ids de-duplicate).
    events_overlap_seconds: int = Field(300, ge=0)
    #: How the API lists events: Stripe lists newest first; ``auto`` reads it from the
    #: timestamps of each read (the order decides between events of the same second).
    events_order: Literal["auto", "newest_first", "oldest_first"] = "auto"
    #: Where the dashboard links a customer (``<dashboard_url>/customers/<id>``); unset:
    #: Stripe's Dashboard (``/test`` for a test key) or, with another ``api_base`` (the
    #: sandbox's stand-in), that address's ``/v1``.
    dashboard_url: str | None = None
    #: Webhook endpoint signing secrets (``STRIPE_WEBHOOK_SECRET``, comma-separated: during
    #: a secret roll Stripe signs with both, and either is accepted).
    webhook_secret: tuple[SecretStr, ...] = ()

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(part.strip() for part in v.split(",") if part.strip())
        return v

    @field_validator("api_key")
    @classmethod
    def _key_shape(cls, v: SecretStr | None) -> SecretStr | None:
        # The shape only: never the value, which may be a secret pasted in the wrong place.
        if v is not None and not v.get_secret_value().startswith(STRIPE_KEY_PREFIXES):
            raise ValueError("a Stripe key starts with sk_test_, sk_live_, rk_test_ or rk_live_")
        if v is not None and len(v.get_secret_value()) <= 8:
            raise ValueError("a Stripe key has characters after its prefix")
        return v

    @field_validator("api_base")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @property
    def key_mode(self) -> str | None:
        """``live`` or ``test`` from the key's prefix, None without a key."""
        if self.api_key is None:
            return None
        key = self.api_key.get_secret_value()
        if key.startswith(("sk_live_", "rk_live_")):
            return "live"
        if key.startswith(("sk_test_", "rk_test_")):
            return "test"
        return None


class SalesforceSettings(_Section):
    """Salesforce access (env ``SALESFORCE_*``): a session, a password login or OAuth."""

    instance_url: str | None = None
    session_id: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    security_token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    #: JWT bearer flow: the PEM private key whose certificate the external client app
    #: holds; with ``client_id`` (the consumer key) and ``username`` (the run-as user).
    private_key_file: Path | None = None
    #: ``login`` for production, ``test`` for sandboxes, or a My Domain host
    #: (``acme.my.salesforce.com``; required by the client-credentials flow).
    domain: str = "login"
    api_version: str = "62.0"
    #: A PEM bundle to trust in addition to the system's (the sandbox's own CA).
    ca_bundle: Path | None = None
    #: Stop before the org's remaining daily API calls fall below this many.
    api_reserve: int = Field(500, ge=0)
    #: List every stream's live Ids this often (hours; 0: never) to find records purged
    #: from the recycle bin, which the incremental extract cannot see.
    reconcile_every_hours: float = Field(168.0, ge=0)
    #: Retries of a call Salesforce answers 502/503/504 or that fails to connect (every
    #: call this service makes is idempotent: queries, and upserts by Id or external id).
    max_retries: int = Field(4, ge=0)
    #: Overlap each incremental query with the last cursor by this many seconds.
    lookback_seconds: int = Field(300, ge=0)
    #: Above this many rows, an extract query goes through Bulk API 2.0.
    bulk_threshold: int = Field(10_000, ge=1)
    #: Rows per Bulk API 2.0 results page (maxRecords).
    bulk_page_size: int = Field(50_000, ge=1)
    #: Custom field names this service reads and writes.
    account_stripe_customer_field: str = account_field("stripe_customer_id").api_name
    task_external_id_field: str = "Churn_Episode_Key__c"
    #: Stripe customer metadata keys that may hold the Salesforce Account Id (first wins).
    link_metadata_keys: tuple[str, ...] = ("salesforce_account_id", "sf_account_id")
    #: Email domains that never identify a company (no domain match on these).
    personal_email_domains: tuple[str, ...] = (
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "hotmail.com",
        "outlook.com",
        "live.com",
        "icloud.com",
        "me.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "gmx.com",
        "gmx.de",
        "mail.com",
        "yandex.com",
        "qq.com",
        "163.com",
        "msn.com",
    )

    @field_validator("link_metadata_keys", "personal_email_domains", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        # Environment variables carry lists as comma-separated text.
        if isinstance(v, str):
            return tuple(part.strip() for part in v.split(",") if part.strip())
        return v

    @property
    def configured(self) -> bool:
        return bool(
            (self.instance_url and self.session_id)
            or (self.username and self.password)
            or (self.client_id and self.client_secret)
            or (self.client_id and self.username and self.private_key_file)
        )


class UsageSettings(_Section):
    """The product usage feed: active seats per account per sample day, any cadence."""

    #: A folder of CSV or Parquet files: columns account_id (or customer_id), day, active_seats.
    folder: Path | None = None
    #: Alternatively, a Salesforce Account field holding active seats.
    account_field: str | None = None


class SignalSettings(_Section):
    """Windows and thresholds of the five signals and the risk score."""

    card_expiry_horizon_days: int = Field(60, ge=1)
    downgrade_window_days: int = Field(90, ge=1)
    seat_window_days: int = Field(30, ge=1)
    seat_low_utilization: float = Field(0.5, ge=0, le=1)
    seat_expansion_utilization: float = Field(0.9, ge=0)
    count_temporary_discounts: bool = False
    reporting_currency: str = "USD"
    churn_horizon_days: int = Field(90, ge=1)
    #: A downgrade counts when MRR (or seats) fall by at least this share over the window.
    downgrade_min_drop: float = Field(0.05, ge=0, le=1)
    #: Both seat signals (low use, expansion) need usage samples covering at least this many
    #: days of the window (a daily row covers its day; a sparser sample covers the days until
    #: the next, at most one cadence step) and at least ``seat_min_samples`` samples.
    seat_min_days: int = Field(7, ge=1)
    seat_min_samples: int = Field(2, ge=1)
    #: A sparse feed's window stretches to ``seat_min_samples`` x its cadence, never past this.
    seat_max_window_days: int = Field(92, ge=1)
    #: How many tries the account's retry policy makes for an invoice (Smart Retries or a
    #: custom schedule, Billing > Revenue recovery > Retries): the last is payment_failure's
    #: ``final`` stage and the top of its score ramp. Stripe: "The recommended default is 8
    #: tries within 2 weeks" (docs.stripe.com/payments/off-session-payments/smart-retries).
    payment_retry_attempts: int = Field(8, ge=1, le=50)
    #: Risk-score weight of each risk signal (0..1); expansion and known churn are apart.
    #: Defaults to each signal's own weight in the registry; a mapping given replaces it.
    risk_weights: dict[str, float] = Field(default_factory=default_risk_weights)
    #: How many months back ``mrr_movements`` goes on each run.
    movements_months: int = Field(24, ge=1, le=240)
    #: Fallback rates (units per one unit of the corporate currency, like Salesforce's
    #: CurrencyType) for currencies missing from core_currency_rates, e.g. {"EUR": "0.92"}.
    currency_rates: dict[str, str] = Field(default_factory=dict)
    #: The churn-risk model (churn.signals.model): it is trained only when the usable
    #: snapshots (horizon ended by the cutoff, known churn apart) hold at least this many
    #: churners; below it the rule-based risk score stays in force.
    model_min_churners: int = Field(50, ge=1)
    #: Days between training snapshots over the warehouse's history.
    model_snapshot_every_days: int = Field(14, ge=1)
    #: Training rows kept at most (whole accounts sampled, all their snapshots), to bound memory.
    model_max_training_rows: int = Field(1_000_000, ge=1_000)
    #: ``churn run`` trains a new version when the newest one's cutoff is this many days
    #: older than the instant it scores (and promotes it only when its back-test is no
    #: worse than the one in force); 0: never in the run, only ``churn model train``.
    model_retrain_every_days: int = Field(7, ge=0)

    @field_validator("risk_weights")
    @classmethod
    def _risk_signals(cls, v: dict[str, float]) -> dict[str, float]:
        _check_signals(v, risk_only=True)
        if any(not 0 <= w <= 1 for w in v.values()):
            raise ValueError("weights are between 0 and 1")
        return v

    @field_validator("currency_rates", mode="before")
    @classmethod
    def _rates_exact(cls, v: Any) -> Any:
        # stored as exact decimal strings, so no float reaches the money arithmetic
        from decimal import Decimal, InvalidOperation

        if not isinstance(v, Mapping):
            return v
        out = {}
        for code, rate in v.items():
            try:
                value = Decimal(str(rate))
            except InvalidOperation:
                raise ValueError(f"rate of {code} is not a number") from None
            if not str(code).isalpha() or value <= 0 or value != round(value, 9):
                raise ValueError(f"rate of {code}: a positive number with at most 9 decimals")
            out[str(code).upper()] = str(value)
        return out


class TimelineSettings(_Section):
    """Plan changes on the Account timeline: each one a completed Task on the Account
    (upgrades, downgrades, seat and plan changes, a cancellation scheduled or withdrawn, a
    payment recovered), upserted by a change key in the Task external-id field."""

    #: The kinds of change logged (drop one to stop logging it; [] turns the timeline off):
    #: upgrade, downgrade, seat_change, plan_change, cancellation_scheduled,
    #: cancellation_withdrawn, payment_recovered.
    kinds: tuple[str, ...] = TIMELINE_KINDS
    #: Only changes this many days back from the run's as_of are logged: a first run does
    #: not back-fill years of history onto the timeline (0: none).
    window_days: int = Field(30, ge=0, le=3660)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(v) - set(TIMELINE_KINDS))
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; known: {list(TIMELINE_KINDS)}")
        return v


class PushSettings(_Section):
    """The push to Salesforce."""

    collection_size: int = Field(200, ge=1, le=200)
    bulk_threshold: int = Field(2_000, ge=1)
    #: A risk score moves in Salesforce only when it changes by more than this.
    risk_score_margin: int = Field(5, ge=0, le=100)
    fallback_owner_id: str | None = None
    escalate_after_hours: int = Field(24, ge=1)
    outreach_after_hours: int = Field(72, ge=1)
    allow_test_data_in_production: bool = False
    #: Account fields the service owns: logical name -> Salesforce field API name (default:
    #: every field of ``churn.fields.ACCOUNT_FIELDS``). Only these are ever written; drop an
    #: entry to stop writing that field.
    account_fields: dict[str, str] = Field(
        default_factory=lambda: {f.name: f.api_name for f in ACCOUNT_FIELDS}
    )
    #: Signals whose episodes become Tasks for the owner; defaults to the registry's
    #: choice (``seat_expansion``, an upsell lead, is left out: add it to route it too).
    task_signals: tuple[str, ...] = Field(default_factory=default_task_signals)
    #: Stripe's dunning: how many attempts it makes in all (Billing > Revenue recovery),
    #: for episodes whose evidence does not name it (``final_attempt``, written by
    #: payment_failure from ``signals.payment_retry_attempts``).
    dunning_attempts: int = Field(4, ge=1)
    #: Flag an executive sponsor this many hours before Stripe's final retry.
    sponsor_before_final_retry_hours: int = Field(48, ge=1)
    #: Due date of a Task for a signal without an escalation ladder, in days from as_of.
    task_due_days: int = Field(3, ge=0)
    #: The billing contact of a payment failure (the Task's WhoId, the Case's ContactId)
    #: is the Account's Contact whose email is the Stripe customer's; else one whose
    #: AccountContactRole Role is one of these, in this order (then the primary one). Empty:
    #: no fallback, and AccountContactRole is not read.
    billing_contact_roles: tuple[str, ...] = ()
    #: The org's Task Status values for a Task the service opens and one it closes (an
    #: org with its own Status picklist maps them here; ``churn doctor`` checks them).
    task_status_open: str = "Not Started"
    task_status_closed: str = "Completed"
    #: The service's priorities (High, Normal, Low) -> the org's Task Priority values.
    task_priorities: dict[str, str] = Field(
        default_factory=lambda: {"High": "High", "Normal": "Normal", "Low": "Low"}
    )
    #: At most this many new Tasks in one push, the most urgent first; the rest are
    #: created by the next runs (0: no cap). A first run over a large book would otherwise
    #: open every Task at once.
    max_new_tasks_per_run: int = Field(100, ge=0)
    timeline: TimelineSettings = TimelineSettings()

    @field_validator("task_signals")
    @classmethod
    def _tasked_signals(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        _check_signals(v, risk_only=False)
        return v

    @field_validator("task_priorities")
    @classmethod
    def _service_priorities(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = set(v) - {"High", "Normal", "Low"}
        if unknown:
            raise ValueError(
                f"keys are the service's priorities High, Normal, Low; not {sorted(unknown)}"
            )
        return {"High": "High", "Normal": "Normal", "Low": "Low"} | v

    @field_validator("account_fields", "task_priorities", mode="before")
    @classmethod
    def _json_from_env(cls, v: Any) -> Any:
        # An environment variable carries the mapping as a JSON object.
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("account_fields")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = set(v) - set(ACCOUNT_FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown logical field(s) {sorted(unknown)}")
        return v


class CaseSettings(_Section):
    """The Salesforce Case opened per payment-failure episode (``CHURN_CASE__*``): one per
    failed invoice, upserted by its external id, closed when the invoice is paid, voided or
    marked uncollectible. Status, Origin and Priority values are checked against the
    org's picklists by ``churn doctor`` and before the push writes a Case."""

    #: When the Case opens on the escalation ladder: ``escalation`` (after
    #: ``push.escalate_after_hours``, 24 h by default, or at once for a decline Stripe will
    #: not retry), ``outreach`` (after ``push.outreach_after_hours``), or ``off``.
    open_at: Literal["off", "escalation", "outreach"] = "escalation"
    #: The Case's External ID field (deployed by salesforce/force-app), one value per episode.
    external_id_field: str = "Churn_Case_Key__c"
    #: The org's Case Status values for a Case the service opens and one it closes.
    status_open: str = "New"
    status_closed: str = "Closed"
    #: Case Origin (a picklist; a new org has Phone, Email, Web).
    origin: str = "Web"
    #: The service's priorities (High, Normal, Low) -> the org's Case Priority values (a new
    #: org has High, Medium, Low).
    priorities: dict[str, str] = Field(
        default_factory=lambda: {"High": "High", "Normal": "Medium", "Low": "Low"}
    )
    #: Owner of new Cases: a User or a queue Id (00G...); unset: the Account's owner.
    owner_id: str | None = None
    #: The Case record type Id (012...), for an org with Case record types; unset: default.
    record_type_id: str | None = None

    @field_validator("priorities", mode="before")
    @classmethod
    def _json_priorities(cls, v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("priorities")
    @classmethod
    def _service_levels(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = set(v) - {"High", "Normal", "Low"}
        if unknown:
            raise ValueError(
                f"keys are the service's priorities High, Normal, Low; not {sorted(unknown)}"
            )
        return {"High": "High", "Normal": "Medium", "Low": "Low"} | v

    @property
    def stage(self) -> int | None:
        """The escalation rung at which the Case opens (None: off)."""
        return {"escalation": 1, "outreach": 2}.get(self.open_at)


class RunSettings(_Section):
    """The scheduled job."""

    every: str = "15m"
    lock_path: Path | None = None
    #: Score as of this instant instead of now (``CHURN_RUN__AS_OF``, ``churn run
    #: --as-of``): a back-fill, or a sandbox world whose ``now`` is not today. A date
    #: means its midnight UTC; an offset is converted to UTC. A back-fill older than the
    #: latest scoring is not pushed: Salesforce keeps the newer state.
    as_of: datetime | None = None
    #: The marts keep every run's snapshot for this many days back from the newest, then
    #: the last snapshot of each UTC day (``churn.job.retention``); 0 keeps one a day.
    keep_every_snapshot_days: int = Field(2, ge=0)
    #: DuckDB's own bounds for the job's connection: ``memory_limit`` (e.g. ``2GB``; past
    #: it DuckDB spills to a temp folder beside the file) and worker ``threads``. Unset,
    #: DuckDB takes 80% of the machine's memory and one thread per core.
    duckdb_memory_limit: str | None = Field(
        None, pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"
    )
    duckdb_threads: int | None = Field(None, ge=1, le=256)
    #: DuckDB's ``memory_limit`` while a model trains or is evaluated (the features' SQL
    #: over every snapshot, then the fit), spilling past it beside the file; restored
    #: after. Unless ``duckdb_memory_limit`` bounds the whole run. None: the connection's.
    #: Without it the blocks the features read stay cached beside the fit: a training at
    #: 100,000 accounts peaked at 4.5 GB, 2.9 GB of it DuckDB's.
    model_memory_limit: str | None = Field(
        "1GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"
    )
    #: A partial run (some steps landed, or the API budget stopped one) exits 3, which
    #: systemd and cron count as a failure; true makes it exit 0 (still ``partial`` in
    #: run_log, and still alerted).
    partial_is_success: bool = False
    #: Score only the accounts whose data changed since the last scoring (and those with
    #: something due by the clock: an open episode, a period, trial or retry ending), the
    #: others' rows carried to the new snapshot with the instant they were scored
    #: (``account_health.scored_as_of``); whole when the settings, the model or the code
    #: changed, on the first run of each UTC day, and when more than
    #: ``incremental_max_share`` of the accounts changed (``churn.job.incremental``).
    incremental_scoring: bool = True
    incremental_max_share: float = Field(0.3, ge=0.0, le=1.0)
    #: Keep the read copy a run supersedes as the spare the next run writes its read copy
    #: over, only the chunks that changed (``churn.warehouse.read_copy``): a third copy of
    #: the warehouse on disk between runs; false copies the whole file each run.
    read_copy_spare: bool = True

    @field_validator("every")
    @classmethod
    def _every_shape(cls, v: str) -> str:
        every_seconds(v)
        return v

    @field_validator("as_of", mode="before")
    @classmethod
    def _as_of_utc(cls, v: Any) -> Any:
        if isinstance(v, str) and len(v.strip()) == 10:
            v = v.strip() + "T00:00:00"
        if isinstance(v, date) and not isinstance(v, datetime):
            v = datetime.combine(v, time())
        if isinstance(v, str):
            try:
                v = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("an ISO date or date-time, e.g. 2026-09-01") from None
        if isinstance(v, datetime) and v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        return v

    def step_memory_limit(self, limit: str | None) -> str | None:
        """The DuckDB limit a step sets for itself (``limit``), or None when
        ``duckdb_memory_limit`` bounds the whole run already."""
        return None if self.duckdb_memory_limit is not None else limit


class AlertSettings(_Section):
    """Where a failed or partial run, or one whose push Salesforce partly rejected, is
    reported: a small JSON POST (run id, status, exit code, the step that failed, counts
    of rejections by error code; never customer data)."""

    #: An https (or loopback http) address to POST to, e.g. a Slack or Teams incoming
    #: webhook or your alerting's; unset: no alerts. A secret: such URLs carry a token.
    webhook_url: SecretStr | None = None
    #: Seconds to wait for the receiver; an alert that fails is logged, never fails a run.
    timeout_seconds: float = Field(10.0, gt=0)
    #: Also alert when Salesforce rejected records of a run that otherwise succeeded.
    on_rejections: bool = True

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a loopback receiver)")
        return v


class WebhookSettings(_Section):
    """The Stripe webhook receiver and its worker (``CHURN_WEBHOOK__*``)."""

    #: Loopback by default: TLS is terminated by a reverse proxy in front of it.
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    #: The SQLite spool the receiver writes and the worker drains; default beside CHURN_DB
    #: (``<db>.webhook-spool.sqlite``).
    spool_path: Path | None = None
    #: A delivery's signature timestamp may be at most this old (Stripe's SDKs: 300 s).
    tolerance_seconds: int = Field(300, ge=1)
    #: Bodies above this size are refused before anything is parsed.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    #: Events a worker micro-batch takes from the spool at most.
    batch_size: int = Field(500, ge=1)
    #: How often an idle worker looks at the spool, and retries a held run lock (seconds).
    poll_seconds: float = Field(0.2, gt=0)
    #: Run the worker inside ``churn webhook serve`` (otherwise ``churn webhook work``).
    worker_in_serve: bool = True


class Settings(_Section):
    """Everything the service reads from its environment, validated once."""

    db: Path = Path("data/churn.duckdb")
    stripe: StripeSettings = StripeSettings()
    salesforce: SalesforceSettings = SalesforceSettings()
    usage: UsageSettings = UsageSettings()
    signals: SignalSettings = SignalSettings()
    push: PushSettings = PushSettings()
    case: CaseSettings = CaseSettings()
    run: RunSettings = RunSettings()
    alert: AlertSettings = AlertSettings()
    webhook: WebhookSettings = WebhookSettings()

    def with_overrides(self, **sections: Mapping[str, Any] | Any) -> Settings:
        """A copy with some fields replaced, validated again (for CLI options and tests)."""
        data = self.model_dump()
        for key, value in sections.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return _validate(data, {})


_PREFIXED_SECTIONS = {"STRIPE_": "stripe", "SALESFORCE_": "salesforce"}
_SECTIONS = (
    "stripe", "salesforce", "usage", "signals", "push", "case", "run", "alert", "webhook",
)  # fmt: skip


def load_settings(
    env: Mapping[str, str] | None = None, config_path: Path | str | None = None
) -> Settings:
    """Load and validate settings from a TOML file and the environment.

    Raises :class:`ConfigError` naming the variable at fault.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    path = config_path or env.get("CHURN_CONFIG")
    if path:
        data, origin = _read_toml(Path(path))
    for name, value in env.items():
        target = _env_target(name)
        if target is None:
            _refuse_unknown(name)
            continue
        section, field = target
        if section is None:
            data[field] = value
            origin[(field,)] = name
        elif "__" in field:
            # a group inside a section: CHURN_PUSH__TIMELINE__KINDS -> [push.timeline] kinds
            group, _, leaf = field.partition("__")
            inner = data.setdefault(section, {}).setdefault(group, {})
            if isinstance(inner, dict):
                inner[leaf] = _from_env(section, leaf, value, name, group)
            origin[(section, group, leaf)] = name
        else:
            data.setdefault(section, {})[field] = _from_env(section, field, value, name)
            origin[(section, field)] = name
    return _validate(data, origin)


def _from_env(section: str, field: str, value: str, name: str, group: str | None = None) -> Any:
    """A mapping or list setting from one variable: JSON, or a list as ``a,b,c``.
    ``group``: the field is in that group of the section (``[push.timeline]``)."""
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    if group is not None:
        inner = model.model_fields.get(group)
        model = inner.annotation if inner else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return value  # refused by validation, naming the variable
    info = model.model_fields.get(field)
    kind = getattr(info.annotation, "__origin__", info.annotation) if info else None
    if kind not in (dict, list, tuple):
        return value
    text = value.strip()
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"{name} is not valid JSON") from None
    if kind is dict:
        return value  # refused by validation, naming the variable
    return [part.strip() for part in text.split(",") if part.strip()]


def _env_target(name: str) -> tuple[str | None, str] | None:
    if name == "CHURN_DB":
        return None, "db"
    for prefix, section in _PREFIXED_SECTIONS.items():
        if name.startswith(prefix):
            field = name[len(prefix) :].lower()
            return (section, field) if field in _fields(section) else None
    if name.startswith("CHURN_") and "__" in name:
        section, _, field = name[len("CHURN_") :].lower().partition("__")
        if section in _SECTIONS:
            return section, field
    return None


def _refuse_unknown(name: str) -> None:
    """A ``CHURN_*`` variable that is neither a setting nor a tool's is a typo: refused.

    ``CHURN_<SECTION>__<FIELD>`` with an unknown section, or a ``CHURN_`` name without the
    double underscore (``CHURN_DB`` and the tools' variables apart), would otherwise be
    ignored silently and the default used. ``STRIPE_*`` and ``SALESFORCE_*`` are shared with
    other tools (Stripe's CLI reads ``STRIPE_API_KEY`` too) and stay unchecked.
    """
    if not name.startswith("CHURN_") or name in CHURN_TOOL_VARIABLES:
        return
    if "__" in name:
        section = name[len("CHURN_") :].lower().partition("__")[0]
        known = ", ".join(s for s in _SECTIONS if s not in _PREFIXED_SECTIONS.values())
        raise ConfigError(
            f"invalid settings: {name}: unknown section {section[:30]!r} (known: {known})"
        )
    raise ConfigError(
        f"invalid settings: {name}: not a setting (settings are CHURN_DB and "
        "CHURN_<SECTION>__<FIELD>, e.g. CHURN_RUN__EVERY)"
    )


def _fields(section: str) -> set[str]:
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return set(model.model_fields)


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} (CHURN_CONFIG) does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    origin: dict[tuple[str, ...], str] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub in value:
                origin[(key, sub)] = f"{path}: [{key}] {sub}"
        else:
            origin[(key,)] = f"{path}: {key}"
    return raw, origin


def _validate(data: dict[str, Any], origin: dict[tuple[str, ...], str]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(part) for part in err["loc"])
            where = origin.get(loc) or _env_name(loc)
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def _env_name(loc: tuple[str, ...]) -> str:
    if loc == ("db",):
        return "CHURN_DB"
    if len(loc) >= 2 and loc[0] in ("stripe", "salesforce"):
        return f"{loc[0].upper()}_{loc[1].upper()}"
    if len(loc) >= 2:
        return "CHURN_" + "__".join(part.upper() for part in loc[:3])
    return ".".join(loc)
