"""`churn sandbox serve` and `churn sandbox demo`: the world on loopback, the real job on it.

The demo generates (or reuses, cached under ``data/worlds/``) the default world, starts the
Stripe and Salesforce stand-ins on 127.0.0.1, runs ``churn run`` in process over HTTP with
the real SDKs, runs it again (which must push nothing new), and with ``check`` asserts the
result and measures how well the scores separate the world's churners.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churn import warehouse
from churn.errors import SandboxError
from churn.job.run import JobResult, run_job
from churn.pipelines.stripe.streams import LISTED
from churn.sandbox.stripe.server import RunningStripe, start_stripe_server
from churn.sandbox.world import GENERATOR_VERSION, generate_world_to
from churn.settings import Settings, load_settings
from churn.signals import names_of

DEFAULT_ACCOUNTS = 2_000
DEFAULT_SEED = 42
SF_OBJECTS = ("User", "Account", "Opportunity", "Contact", "CurrencyType")
# Fields a stand-in org fills itself; the world keeps them for other tools.
_SF_SYSTEM = {"attributes", "Id", "SystemModstamp", "IsDeleted"}


def generator_digest() -> str:
    """A digest of the world generator's source: part of the cache key, so a world cached
    before any change to the generator is never served after it (a forgotten
    ``GENERATOR_VERSION`` bump hid one before)."""
    from churn.sandbox import world

    return hashlib.sha256(Path(world.__file__).read_bytes()).hexdigest()[:10]


def world_folder(root: Path, accounts: int, seed: int, today: datetime) -> Path:
    return root / (
        f"world-v{GENERATOR_VERSION}-{generator_digest()}-{accounts}-s{seed}-{today:%Y%m%d}"
    )


def ensure_world(root: Path, accounts: int, seed: int, *, now: datetime | None = None) -> Path:
    """The cached world for (accounts, seed, day), generated on first use."""
    now = now or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    folder = world_folder(root, accounts, seed, now)
    if (folder / "world.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    generate_world_to(tmp, accounts, seed, now=now)
    tmp.rename(folder)
    return folder


def read_records(folder: Path, system: str, name: str) -> list[dict[str, Any]]:
    """A world's ``<system>/<name>.jsonl.gz`` records (none when the file is absent)."""
    path = folder / system / f"{name}.jsonl.gz"
    if not path.exists():
        return []
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_stripe(folder: Path, obj: str) -> list[dict[str, Any]]:
    return read_records(folder, "stripe", obj)


def read_sf(folder: Path, sobject: str) -> list[dict[str, Any]]:
    return read_records(folder, "salesforce", sobject)


@dataclass
class Sandbox:
    folder: Path
    stripe: RunningStripe
    salesforce: Any  # churn.sandbox.salesforce.server.RunningSalesforce
    sf_ids: dict[str, str] = field(default_factory=dict)  # world Id -> stand-in Id

    def env(self) -> dict[str, str]:
        env = dict(self.stripe.settings_env())
        if self.salesforce is not None:
            env.update(self.salesforce.settings_env())
        env["CHURN_USAGE__FOLDER"] = str(self.folder / "usage")
        return env


def _load_salesforce(running: Any, folder: Path) -> dict[str, str]:
    """Seed the world's records, then give each the world's own Id.

    The world's Stripe customers name their Account Ids (metadata, the Account's Stripe
    field), so the stand-in's records keep the world's Ids rather than fresh ones.
    """
    ids: dict[str, str] = {}
    org = running.org
    for sobject in SF_OBJECTS:
        rows = read_sf(folder, sobject)
        if sobject == "CurrencyType":
            # The stand-in made the corporate currency itself; add the others.
            with org.lock:
                have = {r.get("IsoCode") for r in org.records.get("CurrencyType", {}).values()}
            rows = [r for r in rows if r.get("IsoCode") not in have]
        # seeded under the world's own Ids (the fresh Ids the org hands out later skip them)
        clean = [{k: v for k, v in row.items() if k not in _SF_SYSTEM and v is not None}
                 | {"Id": row["Id"]} for row in rows]  # fmt: skip
        running.seed(sobject, clean)
        with org.lock:
            store = org.records[sobject]
            for row in rows:
                # The world's own stamps, not the load time: serving the same world again
                # must not look to an incremental extract like 100,000 fresh edits.
                if row.get("SystemModstamp"):
                    rec = store[row["Id"]]
                    for stamp in ("SystemModstamp", "CreatedDate", "LastModifiedDate"):
                        rec[stamp] = row["SystemModstamp"]
                ids[row["Id"]] = row["Id"]
    return ids


@contextmanager
def serve_world(
    folder: Path,
    *,
    stripe_port: int = 0,
    sf_port: int = 0,
    stripe_rate: float | None = None,
    stripe_endpoint_rate: float | None = None,
) -> Iterator[Sandbox]:
    """Both stand-ins on loopback, loaded with the world; stopped on exit. With
    ``stripe_rate`` (and ``stripe_endpoint_rate``) the Stripe stand-in answers 429 past
    those rates, as Stripe does past its documented limits."""
    from churn.sandbox.salesforce.server import start_salesforce_server

    with ExitStack() as stack:
        stripe = start_stripe_server(
            folder,
            port=stripe_port,
            rate_per_second=stripe_rate,
            endpoint_rate_per_second=stripe_endpoint_rate,
        )
        stack.callback(stripe.stop)
        sf = start_salesforce_server(port=sf_port, api_budget=1_000_000)
        stack.callback(sf.stop)
        try:
            ids = _load_salesforce(sf, folder)
        except Exception as exc:
            raise SandboxError(f"cannot load the world's Salesforce records: {exc}") from exc
        yield Sandbox(folder, stripe, sf, ids)


def demo_settings(sandbox: Sandbox, db: Path) -> Settings:
    return load_settings(env={**sandbox.env(), "CHURN_DB": str(db)})


@dataclass
class DemoReport:
    runs: list[JobResult]
    checks: list[tuple[str, bool, str]]
    figures: dict[str, float]

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)


def run_demo(
    data: Path, *, accounts: int = DEFAULT_ACCOUNTS, seed: int = DEFAULT_SEED, fresh: bool = True
) -> tuple[Sandbox | None, DemoReport]:
    folder = ensure_world(data / "worlds", accounts, seed)
    db = data / "demo.duckdb"
    if fresh:
        for p in (db, db.with_name(db.name + ".wal")):
            p.unlink(missing_ok=True)
    with serve_world(folder) as sandbox:
        settings = demo_settings(sandbox, db)
        # Both runs score as of the same instant: the rerun must push nothing when nothing
        # changed, and time is an input too (an account's days since its last payment
        # moves on at the time of day it paid, so two runs seconds apart can differ by a
        # day for one of 2,000 accounts, honestly).
        pinned = settings.with_overrides(run={"as_of": warehouse.utcnow().replace(microsecond=0)})
        first = run_job(pinned)
        second = run_job(pinned)
        checks, figures = check_demo(sandbox, pinned, first, second)
        hook_checks, hook_figures = webhook_step(sandbox, settings)
        checks += hook_checks
        figures.update(hook_figures)
    return sandbox, DemoReport([first, second], checks, figures)


def linked_live_subscriptions(
    db: Path, live: Iterable[tuple[str, str | None]]
) -> list[tuple[str, str]]:
    """Of the ``live`` subscriptions (subscription, customer), in their order, those whose
    customer is linked to an Account that has no Task yet, with the Account; one per
    Account. The demo takes its live subscriptions from the world it serves, the bench
    (the stand-ins in a process of their own) from the warehouse."""
    con = warehouse.connect(db, read_only=True)
    try:
        links = dict(
            con.execute(
                "SELECT customer_id, account_id FROM core_account_links"
                " WHERE account_id IS NOT NULL"
            ).fetchall()
        )
        tasked = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT fields->>'WhatId' FROM push_state WHERE sobject = 'Task'"
            ).fetchall()
        }
    finally:
        con.close()
    out: dict[str, str] = {}
    for sub_id, customer in live:
        account = links.get(customer)
        if account and account not in tasked and account not in out:
            out[account] = sub_id
    return [(sub, account) for account, sub in out.items()]


def webhook_step(
    sandbox: Sandbox, settings: Settings, *, timeout_seconds: float = 60.0
) -> tuple[list[tuple[str, bool, str]], dict[str, float]]:
    """Near real time: a payment fails in the Stripe stand-in, which delivers the signed
    webhooks to the receiver (`churn webhook serve`, in process on loopback); the worker
    lands them and pushes the Account's Payment Health and a Task. Returns the check and
    the seconds from the failure to the Task in the Salesforce stand-in."""
    import secrets
    import time

    from churn.job.webhook import receiver
    from churn.sandbox.stripe.webhooks import WebhookSender, fail_payment, live_subscriptions

    world = sandbox.stripe.world
    found = linked_live_subscriptions(
        settings.db,
        ((sub, (world.get(sub) or {}).get("customer")) for sub in live_subscriptions(world)),
    )
    if not found:
        return [("webhook: a failed payment reaches Salesforce", False, "no linked account")], {}
    sub_id, account = found[0]
    secret = "whsec_" + secrets.token_hex(16)
    hooked = settings.with_overrides(
        stripe={"webhook_secret": [secret]}, webhook={"port": 0, "poll_seconds": 0.05}
    )
    field = settings.salesforce.task_external_id_field
    sender = WebhookSender()
    seconds = float("nan")
    task: dict[str, Any] | None = None
    with receiver(hooked, port=0) as rx:
        sender.register(rx.url, secret)
        sender.start()
        rx.ready.wait(timeout_seconds)  # the worker has loaded the model in force
        try:
            started = time.perf_counter()
            _, events = fail_payment(world, sub_id)
            sender.send(events)
            while time.perf_counter() - started < timeout_seconds:
                with sandbox.salesforce.org.lock:
                    task = next(
                        (dict(t) for t in sandbox.salesforce.records.get("Task", {}).values()
                         if t.get("WhatId") == account and t.get(field)),
                        None,
                    )  # fmt: skip
                if task is not None:
                    seconds = time.perf_counter() - started
                    break
                time.sleep(0.05)
        finally:
            sender.stop()
    health = sandbox.salesforce.records.get("Account", {}).get(account, {}).get("Payment_Health__c")
    ok = task is not None and health == "Failed"
    detail = (
        f"Task and Payment Health {health} in {seconds:.1f}s"
        if task is not None
        else f"no Task within {timeout_seconds:.0f}s"
    )
    return [("webhook: a failed payment reaches Salesforce", ok, detail)], (
        {"webhook_seconds_to_task": round(seconds, 2)} if task is not None else {}
    )


def check_demo(
    sandbox: Sandbox, settings: Settings, first: JobResult, second: JobResult
) -> tuple[list[tuple[str, bool, str]], dict[str, float]]:
    """What CI asserts about a demo: streams, scores, the push, and an idempotent rerun."""
    checks: list[tuple[str, bool, str]] = []
    figures: dict[str, float] = {}
    con = warehouse.connect(settings.db, read_only=True)
    try:

        def count(table: str) -> int:
            try:
                row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
            except Exception:
                return -1
            return int(row[0]) if row else 0

        manifest = json.loads((sandbox.folder / "world.json").read_text())
        for obj in (s.name for s in LISTED):
            n, want = count(f"raw_stripe_{obj}"), int(manifest["counts"].get(obj, 0))
            checks.append((f"stripe {obj} landed", n >= want > 0, f"{n} of {want}"))
        # Payment methods come embedded as customers' defaults (no call per customer), so
        # the cards a customer replaced before the backfill are not expected.
        defaults = {
            pm
            for c in read_stripe(sandbox.folder, "customer")
            if (pm := (c.get("invoice_settings") or {}).get("default_payment_method"))
        }
        n = count("raw_stripe_payment_method")
        checks.append(("stripe default payment methods landed", n >= len(defaults) > 0,
                       f"{n} of {len(defaults)} defaults"))  # fmt: skip
        for sobject in SF_OBJECTS:
            # every record of the world (the org holds a few of its own too: its user)
            n, want = count(f"raw_sf_{sobject.lower()}"), len(read_sf(sandbox.folder, sobject))
            checks.append((f"salesforce {sobject} landed", n >= want > 0, f"{n} of {want}"))
        n_usage = count("core_usage")
        checks.append(("usage landed", n_usage > 0, str(n_usage)))
        # Every account with a live subscription gets a health row (fully churned ones
        # need none): counted as the live accounts missing from the latest scoring.
        live = (
            "SELECT DISTINCT coalesce(l.account_id, s.customer_id) AS account_id"
            " FROM core_subscriptions s LEFT JOIN core_account_links l USING (customer_id)"
            " WHERE s.status <> 'canceled'"
        )
        latest = (
            "SELECT DISTINCT account_id FROM account_health"
            " WHERE as_of = (SELECT max(as_of) FROM account_health)"
        )
        n_live = count(f"({live})")
        missing = count(f"({live} EXCEPT {latest})")
        checks.append(("every account scored", n_live > 0 and missing == 0,
                       f"{n_live - missing} of {n_live} live accounts"))  # fmt: skip
        no_mrr = count(f"(SELECT 1 FROM account_health WHERE total_mrr_minor IS NULL"
                       f" AND account_id IN ({latest}))")  # fmt: skip
        checks.append(("every MRR converted to the reporting currency", no_mrr == 0,
                       f"{no_mrr} accounts without a rate"))  # fmt: skip
        records = sandbox.salesforce.records
        field = settings.salesforce.task_external_id_field
        tasks = [t for t in records.get("Task", {}).values() if t.get(field)]
        accounts = [a for a in records.get("Account", {}).values() if a.get("Payment_Health__c")]
        checks.append(("Tasks pushed", len(tasks) > 0, str(len(tasks))))
        checks.append(("Account fields pushed", len(accounts) > 0, str(len(accounts))))
        push1 = next((s for s in first.steps if s.name == "push"), None)
        push2 = next((s for s in second.steps if s.name == "push"), None)
        counts2 = push2.counts if push2 else {}
        # The Tasks the first run's cap (max_new_tasks_per_run) left for later are the
        # second run's to create; nothing else is new.
        deferred = (push1.counts if push1 else {}).get("deferred_tasks", 0)
        written = sum(v for k, v in counts2.items() if k in ("update_account", "update_task",
                                                              "close_task", "log_timeline"))  # fmt: skip
        # Plan changes on the Account timeline, per run (the rerun logs none: same as_of).
        figures["timeline_records_first_run"] = float(
            (push1.counts if push1 else {}).get("log_timeline", 0)
        )
        figures["timeline_records_second_run"] = float(counts2.get("log_timeline", 0))
        ok = (push2 is not None and push2.status == "success" and written == 0
              and counts2.get("create_task", 0) <= deferred)  # fmt: skip
        detail = json.dumps(counts2 if push2 else None)
        if push2 is not None and written:
            # Which fields the rerun wrote (names, never values): what a flaky rerun needs
            # to be traced from CI's log alone.
            names = con.execute(
                "SELECT DISTINCT action || ':' || unnest(json_keys(fields)) FROM push_log"
                " WHERE action <> 'create_task' AND run_id = (SELECT run_id FROM run_log"
                " WHERE command = 'push' ORDER BY started_at DESC LIMIT 1) ORDER BY 1"
            ).fetchall()
            detail += f"; fields written: {', '.join(n for (n,) in names)}"
            # and what the rerun read and scored (counts only)
            for step in second.steps:
                if step.name in ("stripe", "salesforce", "links", "score"):
                    detail += f"; {step.name}: {json.dumps(step.counts, sort_keys=True)}"
        checks.append(("second run pushes nothing new but the Tasks the cap deferred", ok,
                       detail))  # fmt: skip
    finally:
        con.close()
    figures.update(backtest_separation(settings, sandbox))
    return checks, figures


def backtest_separation(settings: Settings, sandbox: Sandbox, days: int = 90) -> dict[str, float]:
    """ROC AUC of the risk score at ``now - days`` against who churned after it (truth.csv).

    Scored on a copy of the demo warehouse (signals read history, so a past date can be
    re-scored), over the accounts live at that date; scheduled-but-not-yet-ended
    cancellations count as churn.
    """
    import tempfile

    from sklearn.metrics import roc_auc_score

    from churn.job.scoring import score

    manifest = json.loads((sandbox.folder / "world.json").read_text())
    now = int(manifest["now"])
    as_of_ts = now - days * 86_400
    as_of = datetime.fromtimestamp(as_of_ts, UTC).replace(tzinfo=None)
    with tempfile.TemporaryDirectory(prefix="churn-backtest-") as tmp:
        copy = Path(tmp) / "backtest.duckdb"
        shutil.copy(settings.db, copy)
        con = warehouse.connect(copy)
        try:
            score(settings.with_overrides(db=copy), con, as_of=as_of, incremental=False)
            rows = con.execute(
                "SELECT h.account_id, h.risk_score, coalesce(max(e.score), 0), h.known_churn"
                " FROM account_health h LEFT JOIN signal_events e"
                "   ON e.account_id = h.account_id AND e.as_of = h.as_of"
                f" AND e.signal NOT IN ({', '.join(repr(n) for n in names_of('expansion'))})"
                " WHERE h.as_of = ? GROUP BY ALL",
                [as_of],
            ).fetchall()
            created = dict(
                con.execute("SELECT customer_id, epoch(created_at) FROM core_customers").fetchall()
            )
        finally:
            con.close()
    risk = {str(a): (float(r), float(m), bool(k)) for a, r, m, k in rows}
    with (sandbox.folder / "truth.csv").open() as fh:
        truth = list(csv.DictReader(fh))
    y: list[bool] = []
    r_score: list[float] = []
    s_score: list[float] = []
    known: list[bool] = []
    seen: set[str] = set()
    for t in truth:
        key = t["account_id"] or t["customer_id"]
        churn_at = int(t["churn_at"]) if t["churn_at"] else None
        if key in seen or key not in risk or (churn_at is not None and churn_at <= as_of_ts):
            continue
        if float(created.get(t["customer_id"], now)) > as_of_ts:
            continue
        seen.add(key)
        y.append(churn_at is not None)
        r_score.append(risk[key][0])
        s_score.append(risk[key][1])
        known.append(risk[key][2])
    # The latent part: accounts that had not scheduled a cancellation at as_of, where the
    # score has to predict rather than report.
    latent = [(t, r) for t, r, k in zip(y, r_score, known, strict=True) if not k]
    if len(set(y)) < 2:
        return {"backtest_accounts": float(len(y))}
    return {
        "backtest_days": float(days),
        "backtest_accounts": float(len(y)),
        "backtest_churned": float(sum(y)),
        "risk_score_auc_vs_truth": round(float(roc_auc_score(y, r_score)), 3),
        # What a CSM sees: known churn first, then the predicted score.
        "known_churn_or_risk_auc_vs_truth": round(
            float(
                roc_auc_score(y, [101.0 if k else r for r, k in zip(r_score, known, strict=True)])
            ),
            3,
        ),
        "max_signal_auc_vs_truth": round(float(roc_auc_score(y, s_score)), 3),
        "known_churn_accounts": float(sum(known)),
        "risk_score_auc_without_known_churn": (
            round(float(roc_auc_score([t for t, _ in latent], [r for _, r in latent])), 3)
            if len({t for t, _ in latent}) == 2
            else float("nan")
        ),
    }
