#!/usr/bin/env python3
"""Membership calls of `tagdsl sync wechat-mp` for 100,000 followers, against the minimum.

The minimum for an official account is Σ over tags of ⌈added/50⌉ + ⌈removed/50⌉ (batchtagging
and batchuntagging take at most 50 openids).  The bench runs the real sync (library entry point,
the same code as the CLI) against the fake WeChat server over HTTP, with a SQLite store:

1. a first sync of 8 tags onto an empty account;
2. an incremental sync after the store changed (tags gained and lost members);
3. a sync right after a complete one (nothing to do);
4. optionally (--faults) the incremental sync again under injected faults, where retried calls
   are the only excess.

Usage: python bench/sync_calls.py [--followers 100000] [--faults 0.1]
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakewechat import FakeWeChat  # noqa: E402

from runtime.sync import RetryPolicy, sync  # noqa: E402
from tagdsl import load_ruleset  # noqa: E402
from tagdsl.config import Config, DatabaseSection, WechatMPSection  # noqa: E402
from tagdsl.schema import build_tables  # noqa: E402

RULES = """
tag "新客" when count(orders) == 0
tag "老客" when count(orders) >= 1
tag "沉睡唤醒" when days_since(last_active_at) >= 90
tag "高价值" when sum(orders.amount) >= 5000
tag "广州" when city == "广州"
tag "上海" when city == "上海"
tag "活动参与" manual
tag "VIP手工" manual
"""
SHARES = {"新客": 0.30, "老客": 0.50, "沉睡唤醒": 0.20, "高价值": 0.023, "广州": 0.087, "上海": 0.06,
          "活动参与": 0.11, "VIP手工": 0.004}
MEMBERSHIP = ("tags/members/batchtagging", "tags/members/batchuntagging")
READS = ("token", "tags/get", "user/get", "user/tag/get")


def minimum(before: dict[str, set], after: dict[str, set]) -> int:
    return sum(math.ceil(len(after.get(t, set()) - before.get(t, set())) / 50)
               + math.ceil(len(before.get(t, set()) - after.get(t, set())) / 50) for t in SHARES)


def write_store(engine: sa.Engine, tables, members: dict[str, set]) -> None:
    m = tables.memberships
    now = dt.datetime(2026, 5, 1)
    with engine.begin() as conn:
        conn.execute(sa.delete(m))
        for tag, ids in members.items():
            source = "manual" if tag in ("活动参与", "VIP手工") else "rule"
            rows = [{"openid": o, "tag": tag, "source": source, "assigned_at": now} for o in ids]
            for start in range(0, len(rows), 20_000):
                conn.execute(sa.insert(m), rows[start:start + 20_000])


def platform(fake: FakeWeChat) -> dict[str, set]:
    return {name: fake.mp_members(tid) for name, tid in fake.mp_tags().items() if name in SHARES}


def step(label: str, fake: FakeWeChat, config: Config, env: dict, ruleset, want: dict[str, set],
         retry: RetryPolicy) -> None:
    before = platform(fake)
    fake.reset_counters()
    started = time.perf_counter()
    report = sync("wechat_mp", config, ruleset=ruleset, environ=env, retry=retry)
    elapsed = time.perf_counter() - started
    made = sum(fake.calls[e] for e in MEMBERSHIP)
    ok = sum(fake.ok_calls[e] for e in MEMBERSHIP)
    floor = minimum(before, want)
    exact = platform(fake) == {t: want.get(t, set()) for t in SHARES}
    reads = ", ".join(f"{e} {fake.calls[e]}" for e in READS if fake.calls[e])
    faults = sum(fake.faults_injected.values())
    print(f"{label:<34} membership calls {made:>6} (applied {ok:>6}) minimum {floor:>6}  "
          f"excess {made - floor:>4}  exact={exact}  status={report.status}  {elapsed:6.1f} s")
    print(f"{'':<34} reads: {reads}" + (f"; injected faults {faults}" if faults else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--followers", type=int, default=100_000)
    ap.add_argument("--faults", type=float, default=0.1, help="fault share for step 4 (0 skips it)")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)

    with tempfile.TemporaryDirectory() as tmp, FakeWeChat() as fake:
        openids = fake.add_followers(a.followers)
        config = Config(database=DatabaseSection(url=f"sqlite:///{tmp}/bench.db"),
                        wechat_mp=WechatMPSection(appid=fake.appid, api_base_url=fake.base_url))
        env = {"WECHAT_APP_SECRET": fake.secret}
        engine = sa.create_engine(config.database_url)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # one commit per acknowledged batch
        tables = build_tables(config)
        tables.metadata.create_all(engine, tables=[tables.memberships])
        ruleset = load_ruleset(config=config, texts={"bench.tag": RULES})
        retry = RetryPolicy(base_delay=0.01, max_delay=0.1)

        want = {tag: set(rng.sample(openids, int(a.followers * share))) for tag, share in SHARES.items()}
        print(f"{a.followers:,} followers, {len(SHARES)} tags, "
              f"{sum(len(v) for v in want.values()):,} memberships in the store")
        write_store(engine, tables, want)
        step("1. first sync (empty account)", fake, config, env, ruleset, want, retry)

        for tag, ids in want.items():  # the store changes: ~3 % leave, ~2 % join
            members = list(ids)
            leave = set(rng.sample(members, len(members) // 33))
            join = set(rng.sample(openids, a.followers // 50)) - ids
            want[tag] = (ids - leave) | join
        write_store(engine, tables, want)
        step("2. incremental sync", fake, config, env, ruleset, want, retry)
        step("3. sync right after a complete one", fake, config, env, ruleset, want, retry)

        if a.faults > 0:
            for tag, ids in want.items():
                want[tag] = set(list(ids)[len(ids) // 40:]) | set(rng.sample(openids, a.followers // 100))
            write_store(engine, tables, want)
            share = a.faults / 5
            fake.configure_faults({"busy": share, "expired": share, "drop": share, "drop_after": share,
                                   "slow": share}, seed=a.seed, slow_delay=0.3)
            step(f"4. incremental, {a.faults:.0%} faults", fake, config, env, ruleset, want,
                 RetryPolicy(base_delay=0.01, max_delay=0.1, timeout=(5, 0.2)))
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
