"""A scoped score (``compute(accounts=...)``, the webhook worker's and the incremental
run's) equals the same accounts' rows of a full score: several worlds and seeds, subsets
picked by hypothesis, with the churn model in force (trained once at the score's date)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from churn import warehouse
from churn.job.scoring import MARTS, compute
from churn.settings import Settings

pytestmark = pytest.mark.slow

NOW = datetime(2026, 11, 30, tzinfo=UTC)
AS_OF = (NOW - timedelta(days=3)).replace(tzinfo=None)
#: Probabilities closer than this are one score (the time-travel test's tolerance: the
#: linear candidate computes in float32, and its last bits depend on the rows predicted
#: together).
PROBABILITY_TOLERANCE = 1e-6


@dataclass
class Scored:
    db: Path
    full: dict[str, pl.DataFrame]
    accounts: list[str]


def _build(tmp: Path, seed: int, n: int) -> Scored:
    from churn.sandbox.timetravel import EXTRACT_STEPS, _run, train_once_and_store
    from churn.sandbox.world import generate_world, write_world

    folder = tmp / f"world-{seed}"
    write_world(generate_world(n, seed=seed, now=NOW), folder, seed=seed)
    db = tmp / f"w{seed}.duckdb"
    _run(folder, db, AS_OF, EXTRACT_STEPS)
    train_once_and_store(db, (db,), AS_OF)
    con = warehouse.connect(db, read_only=True)
    try:
        full = compute(con, Settings(), AS_OF)
    finally:
        con.close()
    accounts = sorted(set(full["account_health"]["account_id"].to_list()))
    return Scored(db, full, accounts)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Scored]]:
    tmp = tmp_path_factory.mktemp("scoped")
    yield [_build(tmp, 3, 150), _build(tmp, 11, 100)]


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    keys = [c for c in ("account_id", "signal", "episode_key", "currency", "month") if c in frame]
    return frame.sort(keys, nulls_last=True)


def assert_same_rows(
    scoped: dict[str, pl.DataFrame], full: dict[str, pl.DataFrame], accounts: list[str]
) -> None:
    for name in MARTS:
        want = _sorted(full[name].filter(pl.col("account_id").is_in(accounts)))
        got = _sorted(scoped[name])
        assert_frame_equal(got, want, check_exact=False, rel_tol=0, abs_tol=PROBABILITY_TOLERANCE)


def test_the_worlds_have_linked_accounts_of_several_customers_and_model_scores(
    worlds: list[Scored],
) -> None:
    """The subsets below are drawn from worlds that exercise what scoping must keep:
    accounts of several customers, accounts keyed by a customer id (unlinked), every mart
    filled and the model's probability present."""
    for w in worlds:
        health = w.full["account_health"]
        assert health.filter(pl.col("churn_probability").is_not_null()).height > 0
        assert any(a.startswith("cus_") for a in w.accounts)
        assert any(not a.startswith("cus_") for a in w.accounts)
        for name in MARTS:
            assert w.full[name].height > 0, name
        con = warehouse.connect(w.db, read_only=True)
        try:
            several = con.execute(
                "SELECT count(*) FROM (SELECT account_id FROM history_account_links"
                " WHERE account_id IS NOT NULL GROUP BY 1 HAVING count(DISTINCT customer_id) > 1)"
            ).fetchone()
        finally:
            con.close()
        assert several is not None and several[0] > 0


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_scoped_score_equals_those_accounts_rows_of_a_full_score(
    worlds: list[Scored], data: st.DataObject
) -> None:
    w = data.draw(st.sampled_from(worlds), label="world")
    picked = data.draw(
        st.lists(st.sampled_from(w.accounts), min_size=1, max_size=25, unique=True),
        label="accounts",
    )
    # an id no account has: scoped away, no row, no error
    accounts = [*picked, "001_not_an_account"]
    con = warehouse.connect(w.db, read_only=True)
    try:
        scoped = compute(con, Settings(), AS_OF, accounts=accounts)
    finally:
        con.close()
    assert_same_rows(scoped, w.full, accounts)
    assert scoped["account_health"].height == len(picked)


def test_the_accounts_of_one_world_scored_in_parts_equal_the_full_score(
    worlds: list[Scored],
) -> None:
    """The accounts of one world split into eight parts, each scored on its own, the rows
    put together: the full score."""
    from churn.job.model import load_in_force

    w = worlds[0]
    con = warehouse.connect(w.db, read_only=True)
    try:
        model = load_in_force(con, AS_OF)
        groups = [w.accounts[k::8] for k in range(8)]
        parts = [compute(con, Settings(), AS_OF, accounts=g, model=model) for g in groups]
    finally:
        con.close()
    joined = {name: pl.concat([p[name] for p in parts], how="vertical") for name in MARTS}
    assert_same_rows(joined, w.full, w.accounts)
