"""`churn backup PATH`: a consistent copy of the warehouse, taken under the run lock.

The DuckDB file holds what cannot be rebuilt from Stripe and Salesforce: ``push_state``
(what the service last told Salesforce, the Tasks CSMs deleted), ``push_log``,
``run_log``, the stored models and the history of things that change in place. Lose it
and the next run rewrites every Account it cannot read back and recreates Tasks CSMs
deleted.

The job's lock is taken (no run writes meanwhile), the warehouse is opened, migrated,
checkpointed and closed, then copied to ``PATH`` through a temporary file, fsync and an
atomic rename. Restore: stop the schedule, copy it back to ``CHURN_DB``. (DuckDB's
``EXPORT DATABASE`` is not offered: its ``IMPORT DATABASE`` fails on this warehouse's
views over views, e.g. "Table with name account_link_versions does not exist".)
"""

from __future__ import annotations

from pathlib import Path

from churn import warehouse
from churn.errors import ConfigError, WarehouseError
from churn.job.run import lock_path_for, run_lock
from churn.settings import Settings


def backup(settings: Settings, path: Path) -> Path:
    """Copy the warehouse to the new file ``path``; returns it."""
    path = Path(path)
    db = Path(settings.db)
    if path.exists():
        raise ConfigError(f"backup target {path} exists; choose a new name")
    if not db.exists():
        raise ConfigError(f"no warehouse at {db} (CHURN_DB) to back up")
    path.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(lock_path_for(settings)):
        con = warehouse.connect(db)
        try:
            con.execute("CHECKPOINT")
        finally:
            con.close()
        try:
            warehouse.copy_whole(db, path)
        except OSError as exc:
            raise WarehouseError(f"cannot write the backup {path}: {exc.strerror}") from exc
    return path
