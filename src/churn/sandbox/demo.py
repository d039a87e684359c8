"""`churn sandbox serve` and `churn sandbox demo`: the world on loopback, the real job on it.

The demo generates (or reuses, cached under ``data/worlds/``) the default world, starts the
Stripe and Salesforce stand-ins on 127.0.0.1, runs ``churn run`` in process over HTTP with
the real SDKs, runs it again (which must push nothing new), and with ``check`` asserts the
result and measures how well the scores separate the world's churners.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churn.errors import SandboxError
from churn.pipelines import warehouse
from churn.pipelines.job import JobResult, run_job
from churn.sandbox.stripe_server import RunningStripe, start_stripe_server
from churn.sandbox.world import generate_world, write_world
from churn.settings import Settings, load_settings

DEFAULT_ACCOUNTS = 2_000
DEFAULT_SEED = 42
SF_OBJECTS = ("User", "Account", "Opportunity", "Contact")
# Fields a stand-in org fills itself; the world keeps them for other tools.
_SF_SYSTEM = {"attributes", "Id", "SystemModstamp", "IsDeleted"}


def world_folder(root: Path, accounts: int, seed: int, today: datetime) -> Path:
    return root / f"world-{accounts}-s{seed}-{today:%Y%m%d}"


def ensure_world(root: Path, accounts: int, seed: int, *, now: datetime | None = None) -> Path:
    """The cached world for (accounts, seed, day), generated on first use."""
    now = now or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    folder = world_folder(root, accounts, seed, now)
    if (folder / "world.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_world(generate_world(accounts, seed, now=now), tmp, seed=seed)
    tmp.rename(folder)
    return folder


def read_sf(folder: Path, sobject: str) -> list[dict[str, Any]]:
    path = folder / "salesforce" / f"{sobject}.jsonl.gz"
    if not path.exists():
        return []
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass
class Sandbox:
    folder: Path
    stripe: RunningStripe
    salesforce: Any  # churn.sandbox.salesforce_server.RunningSalesforce
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
        clean = [{k: v for k, v in row.items() if k not in _SF_SYSTEM and v is not None}
                 for row in rows]  # fmt: skip
        new_ids = running.seed(sobject, clean)
        with org.lock:
            store = org.records[sobject]
            for row, new in zip(rows, new_ids, strict=True):
                rec = store.pop(new)
                rec["Id"] = row["Id"]
                store[row["Id"]] = rec
                ids[row["Id"]] = row["Id"]
    return ids


@contextmanager
def serve_world(folder: Path, *, stripe_port: int = 0, sf_port: int = 0) -> Iterator[Sandbox]:
    """Both stand-ins on loopback, loaded with the world; stopped on exit."""
    from churn.sandbox.salesforce_server import start_salesforce_server

    with ExitStack() as stack:
        stripe = start_stripe_server(folder, port=stripe_port)
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
        first = run_job(settings)
        second = run_job(settings)
        checks, figures = check_demo(sandbox, settings, first, second)
    return sandbox, DemoReport([first, second], checks, figures)


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
        for obj in ("customer", "subscription", "invoice", "charge", "price", "product"):
            n, want = count(f"raw_stripe_{obj}"), int(manifest["counts"].get(obj, 0))
            checks.append((f"stripe {obj} landed", n >= want > 0, f"{n} of {want}"))
        for sobject in SF_OBJECTS:
            n = count(f"raw_sf_{sobject.lower()}")
            checks.append((f"salesforce {sobject} landed", n > 0, str(n)))
        n_usage = count("core_usage")
        checks.append(("usage landed", n_usage > 0, str(n_usage)))
        expected = con.execute(
            "SELECT count(DISTINCT coalesce(l.account_id, c.customer_id)) FROM core_customers c"
            " LEFT JOIN core_account_links l USING (customer_id)"
        ).fetchone()
        scored = count(
            "(SELECT DISTINCT account_id FROM account_health"
            " WHERE as_of = (SELECT max(as_of) FROM account_health))"
        )
        want_scored = int(expected[0]) if expected else 0
        checks.append(("every account scored", scored >= want_scored > 0,
                       f"{scored} of {want_scored}"))  # fmt: skip
        records = sandbox.salesforce.records
        field = settings.salesforce.task_external_id_field
        tasks = [t for t in records.get("Task", {}).values() if t.get(field)]
        accounts = [a for a in records.get("Account", {}).values() if a.get("Payment_Health__c")]
        checks.append(("Tasks pushed", len(tasks) > 0, str(len(tasks))))
        checks.append(("Account fields pushed", len(accounts) > 0, str(len(accounts))))
        push2 = next((s for s in second.steps if s.name == "push"), None)
        written = sum(v for k, v in (push2.counts if push2 else {}).items() if k != "planned")
        checks.append(("second run pushes nothing new",
                       push2 is not None and push2.status == "success" and written == 0,
                       json.dumps(push2.counts if push2 else None)))  # fmt: skip
        figures.update(separation(con, sandbox))
    finally:
        con.close()
    return checks, figures


def separation(con: Any, sandbox: Sandbox) -> dict[str, float]:
    """ROC AUC of the pushed risk score against who really churned (truth.csv)."""
    from sklearn.metrics import roc_auc_score

    with (sandbox.folder / "truth.csv").open() as fh:
        truth = list(csv.DictReader(fh))
    try:
        rows = con.execute(
            "SELECT account_id, risk_score FROM account_health"
            " WHERE as_of = (SELECT max(as_of) FROM account_health)"
        ).fetchall()
    except Exception:
        return {}
    risk = {str(a): float(r) for a, r in rows}
    y, s = [], []
    for t in truth:
        key = sandbox.sf_ids.get(t["account_id"] or "", t["customer_id"])
        if key in risk and t["churn_type"] != "scheduled":
            y.append(t["churned"] == "True")
            s.append(risk[key])
    if len(set(y)) < 2:
        return {}
    return {"risk_auc_vs_truth": round(float(roc_auc_score(y, s)), 3), "accounts": float(len(y))}
