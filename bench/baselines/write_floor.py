"""The write floor of a first apply on PostgreSQL.

    python bench/baselines/write_floor.py --size 100000 [--rounds 3]

Loads the benchmark population into a scratch schema, then, in a transaction
that is rolled back, per round: the hand-written compute+write baseline
(bench/baselines/postgresql.sql), and inserting the same (openid, tag) rows
from a precomputed table into tables declared exactly like the engine's
``tagdsl_memberships`` and ``tagdsl_changes`` (tagdsl/schema.py, with their
indexes), and into a table without indexes. Prints medians: what writing the
memberships and the audit rows costs before any rule is computed, against the
whole hand baseline (which writes one unindexed table and no audit log).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.schema import CreateIndex, CreateTable  # noqa: E402

import population  # noqa: E402
import run  # noqa: E402
from tagdsl.config import Config  # noqa: E402
from tagdsl.schema import build_tables  # noqa: E402

SCHEMA = "bench_write_floor"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = os.environ.get("TAGDSL_BENCH_POSTGRES_URL", run.PG_URL)
    dsn = base.replace("postgresql+psycopg://", "postgresql://")
    population.load_postgresql(dsn, SCHEMA, args.size)
    db = sa.create_engine(f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{SCHEMA}")
    tables = build_tables(Config())
    backend = run.Backend.__new__(run.Backend)
    backend.name = "postgresql"
    names = ["hand compute+write", "insert into tagdsl_memberships-shaped", "insert into tagdsl_changes-shaped",
             "insert into a table without indexes"]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    try:
        for _ in range(args.rounds):
            with db.connect() as conn:
                conn.exec_driver_sql("SET LOCAL jit = off")  # as apply does
                for t in (tables.memberships, tables.changes):
                    conn.exec_driver_sql(str(CreateTable(t).compile(db)))
                    for ix in t.indexes:
                        conn.exec_driver_sql(str(CreateIndex(ix).compile(db)))
                conn.exec_driver_sql("CREATE TABLE plain (openid varchar(64), tag varchar(128), source varchar(16), "
                                     "assigned_at timestamp, run_id bigint)")
                started = time.perf_counter()
                for stmt in run.hand_statements("postgresql"):
                    conn.execute(sa.text(stmt), backend.params(run.AS_OF) if ":as_of" in stmt else {})
                marks = [time.perf_counter()]
                for sql in (
                    "INSERT INTO tagdsl_memberships (openid, tag, source, assigned_at, run_id) "
                    "SELECT openid, tag, 'rule', now(), 1 FROM bench_hand_tags",
                    "INSERT INTO tagdsl_changes (run_id, openid, tag, action, reason) "
                    "SELECT 1, openid, tag, 'added', 'rule' FROM bench_hand_tags",
                    "INSERT INTO plain SELECT openid, tag, 'rule', now(), 1 FROM bench_hand_tags",
                ):
                    conn.exec_driver_sql(sql)
                    marks.append(time.perf_counter())
                rows = conn.exec_driver_sql("SELECT COUNT(*) FROM bench_hand_tags").scalar_one()
                conn.rollback()
            for name, (a, b) in zip(names, zip([started, *marks], marks)):
                seconds[name].append(b - a)
    finally:
        db.dispose()
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    median = {n: statistics.median(v) for n, v in seconds.items()}
    print(f"{args.size:,} followers, {rows:,} (openid, tag) rows, {args.rounds} rounds (medians)")
    for n in names:
        print(f"  {n:40} {median[n]:7.3f} s   ({', '.join(f'{x:.3f}' for x in seconds[n])})")
    writes = median[names[1]] + median[names[2]]
    print(f"memberships + audit rows alone: {writes:.3f} s = {writes / median[names[0]]:.2f}x the hand compute+write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
