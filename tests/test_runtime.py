"""The runtime: apply (diff, audit, manual tags, limit, expiry, dry run, lint
refusal, lock), preview, explain, export, the store checks and the demo
population. Apply tests run on SQLite, and on PostgreSQL / MariaDB when
TAGDSL_TEST_POSTGRES_URL / TAGDSL_TEST_MYSQL_URL are set (tests/dbs.py)."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbs import BACKENDS, isolated_engine
from runtime import store
from runtime.demo import generate_population, load_population
from runtime.engine import AsOfError, Engine, limit_drops, resolve_as_of
from runtime.results import Drop, TagCount
from tagdsl import Config, RulesetError, TagDSLError, load_ruleset
from tagdsl.compile.python import compile_python

ROOT = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2026, 5, 1, 12, 0, 0)
DAY = dt.timedelta(days=1)
CONFIG = Config()

RULES = '''
tag "广州" when city == "广州" { priority 5 }
tag "有单" when count(orders) >= 1 { priority 9 }
tag "VIP" manual
audience "广州有单" = tag("广州") and tag("有单")
'''


# -- helpers -------------------------------------------------------------------------------------

_ENGINES: dict[str, sa.Engine] = {}  # one SQLAlchemy engine per test database, for the checks below


def _release(url):
    engine = _ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    with isolated_engine(request.param, tmp_path) as (_engine, url):
        yield url
        _release(url)


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    yield url
    _release(url)


def make_store(url, config=CONFIG, followers=(), orders=(), events=(), memberships=()):
    """Create the default store (and engine tables) at ``url`` and fill it."""
    db = store.connect(url, create=True)
    tables = store.create_store(db, config)
    with db.begin() as conn:
        for table, rows in ((tables.followers, followers), (tables.sources["orders"], orders),
                            (tables.sources["events"], events), (tables.memberships, memberships)):
            if rows:
                blank = {c.name: None for c in table.columns}
                conn.execute(sa.insert(table), [{**blank, **r} for r in rows])
    db.dispose()
    return tables


def execute(url, statement, params=None):
    if url not in _ENGINES:
        _ENGINES[url] = store.connect(url)
    with _ENGINES[url].begin() as conn:
        result = conn.execute(sa.text(statement) if isinstance(statement, str) else statement, params or {})
        return result.all() if result.returns_rows else None


def memberships(url, source=None):
    rows = execute(url, "SELECT openid, tag, source FROM tagdsl_memberships")
    return {(o, t) if source else (o, t, s) for o, t, s in rows if source in (None, s)}


def changes(url, run_id):
    rows = execute(url, "SELECT openid, tag, action, reason FROM tagdsl_changes WHERE run_id = :r", {"r": run_id})
    return {tuple(r) for r in rows}


def count_rows(url, table):
    return execute(url, f"SELECT COUNT(*) FROM {table}")[0][0]


def ruleset(text=RULES, config=CONFIG):
    return load_ruleset(texts={"t.tag": text}, config=config)


def order(openid, when=T0 - DAY, amount="10.00", **kw):
    return {"openid": openid, "created_at": when, "amount": Decimal(amount), **kw}


# -- apply: the diff ------------------------------------------------------------------------------

def test_apply_adds_then_removes_only_the_difference(url):
    make_store(url, followers=[{"openid": "a", "city": "广州"}, {"openid": "b", "city": "北京"}, {"openid": "c"}],
               orders=[order("b")])
    rs = ruleset()
    with Engine(CONFIG, url) as engine:
        first = engine.apply(rs, as_of=T0)
        assert memberships(url, "rule") == {("a", "广州"), ("b", "有单")}
        assert first.tags == {"广州": TagCount(1, 1, 0), "有单": TagCount(1, 1, 0)}
        assert first.followers == 3 and first.dropped == [] and first.run_id is not None
        assert changes(url, first.run_id) == {("a", "广州", "added", "rule"), ("b", "有单", "added", "rule")}

        execute(url, "UPDATE followers SET city = :c WHERE openid = :o", {"c": "北京", "o": "a"})
        execute(url, "UPDATE followers SET city = :c WHERE openid = :o", {"c": "广州", "o": "c"})
        execute(url, sa.insert(engine.tables.sources["orders"]).values(order("a")))
        second = engine.apply(rs, as_of=T0 + DAY)
    assert memberships(url, "rule") == {("c", "广州"), ("a", "有单"), ("b", "有单")}
    assert second.tags == {"广州": TagCount(1, 1, 1), "有单": TagCount(2, 1, 0)}
    # The audit log is exactly the difference.
    assert changes(url, second.run_id) == {("c", "广州", "added", "rule"), ("a", "广州", "removed", "rule"),
                                           ("a", "有单", "added", "rule")}
    # A membership that stayed keeps the as-of of the run that assigned it.
    assigned = execute(url, "SELECT assigned_at, run_id FROM tagdsl_memberships WHERE openid = 'b'")
    assert store_instant(assigned[0][0]) == T0 and assigned[0][1] == first.run_id
    runs = execute(url, "SELECT id, status, added, removed, followers FROM tagdsl_runs ORDER BY id")
    assert [tuple(r[1:]) for r in runs] == [("ok", 2, 0, 3), ("ok", 2, 1, 3)]
    definitions = execute(url, "SELECT name, kind, priority FROM tagdsl_tags ORDER BY priority")
    assert [tuple(r) for r in definitions] == [("VIP", "manual", 0), ("广州", "computed", 5), ("有单", "computed", 9)]


def store_instant(value):
    """A DateTime read back with raw SQL (SQLite gives text)."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)


def test_rerun_with_nothing_changed_writes_no_membership_or_change(url):
    make_store(url, followers=[{"openid": "a", "city": "广州"}, {"openid": "b"}], orders=[order("b")])
    rs = ruleset()
    with Engine(CONFIG, url) as engine:
        engine.apply(rs, as_of=T0)
        before = (memberships(url), count_rows(url, "tagdsl_changes"))
        again = engine.apply(rs, as_of=T0 + DAY)
    assert (again.added, again.removed) == (0, 0)
    assert again.tags == {"广州": TagCount(1, 0, 0), "有单": TagCount(1, 0, 0)}
    assert (memberships(url), count_rows(url, "tagdsl_changes")) == before
    # The run itself is recorded (documented in docs/api.md), with its counts.
    status, counts = execute(url, "SELECT status, counts FROM tagdsl_runs WHERE id = :r", {"r": again.run_id})[0]
    assert status == "ok"
    counts = counts if isinstance(counts, dict) else __import__("json").loads(counts)
    assert counts == {"广州": {"total": 1, "added": 0, "removed": 0}, "有单": {"total": 1, "added": 0, "removed": 0}}


def test_manual_and_imported_memberships_are_never_touched(url):
    kept = [
        {"openid": "a", "tag": "VIP", "source": "manual", "assigned_at": T0 - DAY},
        # b is not in 广州, but the tag was imported from WeChat: it stays.
        {"openid": "b", "tag": "广州", "source": "import", "assigned_at": T0 - DAY},
        {"openid": "b", "tag": "老标签", "source": "manual", "assigned_at": T0 - DAY},
        # A rule membership of a tag this ruleset does not define is out of its scope.
        {"openid": "b", "tag": "别的规则", "source": "rule", "assigned_at": T0 - DAY},
    ]
    make_store(url, followers=[{"openid": "a", "city": "广州"}, {"openid": "b", "city": "北京"}],
               memberships=kept)
    with Engine(CONFIG, url) as engine:
        result = engine.apply(ruleset(), as_of=T0)
    assert memberships(url) == {("a", "VIP", "manual"), ("b", "广州", "import"), ("b", "老标签", "manual"),
                                ("b", "别的规则", "rule"), ("a", "广州", "rule")}
    assert changes(url, result.run_id) == {("a", "广州", "added", "rule")}


LIMIT_RULES = '''
tag "A" when age >= 0 { priority 10 }
tag "B" when age >= 0 { priority 5 }
tag "C" when age >= 0 { priority 5 }
tag "D" when age >= 18 { priority 1 }
tag "VIP" manual
'''


def test_limit_drops_lowest_priority_and_reports_every_drop(url):
    config = Config(limits={"max_tags_per_follower": 3})
    make_store(url, config, followers=[{"openid": "x", "age": 30}, {"openid": "y", "age": 30},
                                       {"openid": "z", "age": 10}, {"openid": "w", "age": 30}],
               memberships=[{"openid": "y", "tag": "VIP", "source": "manual", "assigned_at": T0},
                            {"openid": "w", "tag": "A", "source": "import", "assigned_at": T0}])
    rs = ruleset(LIMIT_RULES, config)
    with Engine(config, url) as engine:
        result = engine.apply(rs, as_of=T0)
        explained = engine.explain("y", rs, as_of=T0)
    expected = [Drop("w", "D", 1), Drop("x", "D", 1), Drop("y", "C", 5), Drop("y", "D", 1)]
    assert result.dropped == expected
    assert result.to_dict()["dropped"][0] == {"openid": "w", "tag": "D", "priority": 1}
    stored = execute(url, "SELECT openid, tag, priority FROM tagdsl_drops WHERE run_id = :r", {"r": result.run_id})
    assert sorted(map(tuple, stored)) == [(d.openid, d.tag, d.priority) for d in expected]
    # x: A B C (D dropped); y: VIP counts, so A B (tie B/C: the later name goes);
    # z: A B C fit; w: imported A counts and is kept, B C computed, D dropped.
    assert memberships(url, "rule") == {("x", "A"), ("x", "B"), ("x", "C"), ("y", "A"), ("y", "B"),
                                        ("z", "A"), ("z", "B"), ("z", "C"), ("w", "A"), ("w", "B"), ("w", "C")}
    assert ("y", "VIP", "manual") in memberships(url) and ("w", "A", "import") in memberships(url)
    # explain shows the same decision for one follower.
    assert [(d.tag, d.priority) for d in explained.dropped] == [("C", 5), ("D", 1)]
    assert "drops the lowest priority: C (priority 5), D (priority 1)" in explained.render()


def test_limit_removes_a_held_tag_with_reason_limit(url):
    roomy, tight = Config(limits={"max_tags_per_follower": 10}), Config(limits={"max_tags_per_follower": 3})
    make_store(url, roomy, followers=[{"openid": "x", "age": 30}])
    with Engine(roomy, url) as engine:
        engine.apply(ruleset(LIMIT_RULES, roomy), as_of=T0)
    assert memberships(url, "rule") == {("x", "A"), ("x", "B"), ("x", "C"), ("x", "D")}
    with Engine(tight, url) as engine:
        result = engine.apply(ruleset(LIMIT_RULES, tight), as_of=T0 + DAY)
    assert changes(url, result.run_id) == {("x", "D", "removed", "limit")}
    assert result.dropped == [Drop("x", "D", 1)] and result.tags["D"] == TagCount(0, 0, 1)


def test_limit_drops_agrees_with_the_documented_order():
    computed = {"甲": 5, "乙": 5, "丙": 9, "丁": 1}
    assert limit_drops(computed, set(), 2) == [("甲", 5), ("丁", 1)]  # 乙 < 甲 in code points
    assert limit_drops(computed, {"X", "Y"}, 3) == [("乙", 5), ("甲", 5), ("丁", 1)]
    assert limit_drops(computed, set(), None) == []
    assert limit_drops(computed, {"丙"}, 2) == [("甲", 5), ("丁", 1)]  # 丙 is held anyway


EXPIRY_RULES = 'tag "扫码活动" when exists(events where type == "scan") { expires 10d priority 3 }'


def test_expires_removes_after_d_and_blocks_until_the_condition_stops(url):
    make_store(url, followers=[{"openid": "a"}, {"openid": "b"}],
               events=[{"openid": "a", "type": "scan", "occurred_at": T0 - DAY},
                       {"openid": "b", "type": "scan", "occurred_at": T0 + 5 * DAY}])
    rs = ruleset(EXPIRY_RULES)
    with Engine(CONFIG, url) as engine:
        first = engine.apply(rs, as_of=T0)
        assert memberships(url, "rule") == {("a", "扫码活动")}
        engine.apply(rs, as_of=T0 + 6 * DAY)  # b qualifies from its own first assignment
        assert memberships(url, "rule") == {("a", "扫码活动"), ("b", "扫码活动")}
        quiet = engine.apply(rs, as_of=T0 + 10 * DAY - dt.timedelta(seconds=1))
        assert (quiet.added, quiet.removed) == (0, 0)

        expired = engine.apply(rs, as_of=T0 + 10 * DAY)  # exactly D after a's assignment
        assert changes(url, expired.run_id) == {("a", "扫码活动", "removed", "expired")}
        assert expired.expired == 1 and expired.tags["扫码活动"] == TagCount(1, 0, 1)
        block = execute(url, "SELECT openid, tag, assigned_at, expired_at FROM tagdsl_expirations")
        assert [(o, t, store_instant(s), store_instant(e)) for o, t, s, e in block] == [
            ("a", "扫码活动", T0, T0 + 10 * DAY)]

        held_back = engine.apply(rs, as_of=T0 + 11 * DAY)  # still holds, still blocked
        assert (held_back.added, held_back.removed) == (0, 0)
        assert memberships(url, "rule") == {("b", "扫码活动")}
        assert "扫码活动" in engine.explain("a", rs, as_of=T0 + 11 * DAY).blocked

        execute(url, "DELETE FROM events WHERE openid = 'a'")  # the condition stops holding
        engine.apply(rs, as_of=T0 + 12 * DAY)
        assert count_rows(url, "tagdsl_expirations") == 0

        execute(url, sa.insert(engine.tables.sources["events"]).values(
            openid="a", type="scan", occurred_at=T0 + 12 * DAY + dt.timedelta(hours=1)))
        anew = engine.apply(rs, as_of=T0 + 13 * DAY)  # ... and holds anew
        assert changes(url, anew.run_id) == {("a", "扫码活动", "added", "rule")}
        assigned = execute(url, "SELECT assigned_at FROM tagdsl_memberships WHERE openid = 'a'")
        assert store_instant(assigned[0][0]) == T0 + 13 * DAY
        # b's own clock: assigned at T0+6d, so it expires at T0+16d; a's new one runs from T0+13d.
        later = engine.apply(rs, as_of=T0 + 16 * DAY)
    assert changes(url, later.run_id) == {("b", "扫码活动", "removed", "expired")}
    assert first.tags["扫码活动"] == TagCount(1, 1, 0)


def test_dry_run_reports_the_same_and_writes_nothing(url):
    make_store(url, followers=[{"openid": "a", "city": "广州"}, {"openid": "b"}], orders=[order("b")])
    rs = ruleset()
    with Engine(CONFIG, url) as engine:
        dry = engine.apply(rs, as_of=T0, dry_run=True)
        assert dry.run_id is None and dry.dry_run
        assert count_rows(url, "tagdsl_runs") == 0 and memberships(url) == set()
        real = engine.apply(rs, as_of=T0)
        assert dry.tags == real.tags and dry.to_dict()["run_id"] is None
        execute(url, "UPDATE followers SET city = NULL")
        snapshot = [count_rows(url, t) for t in ("tagdsl_runs", "tagdsl_changes", "tagdsl_memberships")]
        preview = engine.apply(rs, as_of=T0 + DAY, dry_run=True)
        assert preview.tags["广州"] == TagCount(0, 0, 1)
        assert [count_rows(url, t) for t in ("tagdsl_runs", "tagdsl_changes", "tagdsl_memberships")] == snapshot


def test_dry_run_on_a_fresh_sqlite_store_creates_no_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    db = store.connect(url, create=True)
    build = store.build_tables(CONFIG)
    build.metadata.create_all(db, tables=[build.followers, *build.sources.values()])
    db.dispose()
    with Engine(CONFIG, url) as engine:
        engine.apply(ruleset(), as_of=T0, dry_run=True)
    assert not any(name.startswith("tagdsl_") for name in sa.inspect(sa.create_engine(url)).get_table_names())


def test_a_ruleset_with_lint_errors_is_refused_before_any_write(url, tmp_path):
    make_store(url, followers=[{"openid": "a", "city": "广州"}])
    bad = tmp_path / "bad.tag"
    bad.write_text('tag "广州" when cty == "广州"\n', encoding="utf-8")
    with Engine(CONFIG, url) as engine:
        with pytest.raises(RulesetError) as info:
            engine.apply([bad], as_of=T0)
    assert str(info.value).startswith(f"{bad}:1:") or ":1:" in str(info.value)
    assert "TD201" in str(info.value) and info.value.exit_code == 1
    assert count_rows(url, "tagdsl_runs") == 0 and memberships(url) == set()


def test_a_second_apply_fails_clearly_while_another_holds_the_lock(url):
    make_store(url, followers=[{"openid": "a", "city": "广州"}])
    rs = ruleset()
    holder = store.connect(url)
    conn = store.write_connection(holder, 5)
    try:
        with store.apply_lock(conn, CONFIG.database.table_prefix, 5):
            with Engine(CONFIG, url, lock_timeout=0.2) as engine:
                with pytest.raises(store.LockTimeout, match="another apply is running"):
                    engine.apply(rs, as_of=T0)
            conn.rollback()
    finally:
        conn.close()
        holder.dispose()
    assert count_rows(url, "tagdsl_runs") == 0
    # Released: the next apply runs.
    with Engine(CONFIG, url, lock_timeout=0.2) as engine:
        assert engine.apply(rs, as_of=T0).added == 1


def test_a_waiting_apply_runs_once_the_lock_is_released(sqlite_url):
    make_store(sqlite_url, followers=[{"openid": "a", "city": "广州"}])
    holder = store.connect(sqlite_url)
    conn = store.write_connection(holder, 5)
    outcome = {}

    def second():
        with Engine(CONFIG, sqlite_url, lock_timeout=30) as engine:
            outcome["result"] = engine.apply(ruleset(), as_of=T0)

    with store.apply_lock(conn, "tagdsl_", 5):
        worker = threading.Thread(target=second)
        worker.start()
        conn.rollback()
    worker.join(60)
    conn.close()
    holder.dispose()
    assert outcome["result"].added == 1


# -- preview ------------------------------------------------------------------------------------------

PEOPLE = [
    {"openid": "p1", "city": "广州", "gender": 1}, {"openid": "p2", "city": "广州", "gender": 2},
    {"openid": "p3", "city": "广州", "gender": 2}, {"openid": "p4", "city": "北京", "gender": 2},
    {"openid": "p5", "city": None, "gender": 1}, {"openid": "p6", "city": "北京", "gender": None},
]
PEOPLE_ORDERS = [order("p2"), order("p3"), order("p3"), order("p4"), order("p6", when=T0 + DAY)]


def test_preview_counts_equal_a_hand_count(url, tmp_path):
    make_store(url, followers=PEOPLE, orders=PEOPLE_ORDERS)
    rules = tmp_path / "rules.tag"
    rules.write_text(RULES, encoding="utf-8")
    with Engine(CONFIG, url) as engine:
        result = engine.preview('tag("有单") and gender == 2', as_of=T0, sample=2, by="city", ruleset=[rules])
        audience = engine.preview("广州有单", as_of=T0, ruleset=[rules])
    buyers = {o["openid"] for o in PEOPLE_ORDERS if o["created_at"] <= T0}  # p6's order is after as-of
    hand = sorted(p["openid"] for p in PEOPLE if p["openid"] in buyers and p["gender"] == 2)
    assert hand == ["p2", "p3", "p4"]
    data = result.to_dict()
    assert list(data) == ["count", "total", "share", "sample", "by"]
    assert (data["count"], data["total"], data["share"]) == (3, 6, 0.5)
    assert data["sample"] == hand[:2]
    assert data["by"] == [
        {"value": "广州", "count": 2, "total": 3, "share": 0.6667},
        {"value": "北京", "count": 1, "total": 2, "share": 0.5},
        {"value": None, "count": 0, "total": 1, "share": 0.0},
    ]
    assert (audience.count, audience.total, audience.to_dict()["by"], audience.sample) == (2, 6, None, [])


def _count_shape(statements: list[str]) -> str:
    """Which shape of count preview ran (the last statement counts)."""
    count = statements[-1]
    if " IN (SELECT" in count and "GROUP BY" in count:
        return "driving"
    return "lateral" if "LATERAL" in count else "grouped"


# (audience, the per-follower shape it takes). `driving`: a conjunct needs rows
# of one source, so the count starts from that source's rows of the narrowed
# followers; `lateral`: every source probed per narrowed follower.
PER_FOLLOWER_AUDIENCES = [
    ('gender == 2 and count(orders within 20d) >= 1 and not exists(events within 7d)', "driving"),
    ('city == "广州" and sum(orders.amount) >= 10 and count(orders) < 2', "driving"),
    ('gender is not missing and tag("有单") and not tag("VIP") and count(orders) == 1', "driving"),
    ('age is missing and last(orders.created_at) > now() - 10d', "driving"),
    # count == 0 and a missing sum hold without rows: no source drives
    ('city == "北京" and count(orders within 20d) == 0 and not exists(events)', "lateral"),
    ('gender == 1 and (sum(orders.amount) is missing or sum(orders.amount) < 5)', "lateral"),
    # another conjunct reads a follower field: the followers table is needed
    ('gender == 2 and count(orders) >= 1 and (city == "广州" or exists(events))', "lateral"),
    ('gender == 2 and count(orders) >= 1 and sum(orders.amount) > age', "lateral"),
]


def thirty_followers(url, tmp_path):
    """A store of 30 followers (q0..q29) with orders, events and one manual
    VIP tag, for comparing count shapes; returns the ruleset file."""
    people = [{"openid": f"q{i}", "city": ["广州", "北京", None][i % 3], "gender": i % 3,
               "age": None if i % 4 == 0 else 20 + i} for i in range(30)]
    orders = ([order(f"q{i}", when=T0 - dt.timedelta(days=i), amount=f"{i}.50") for i in range(0, 30) if i % 7]
              + [order(f"q{i}", when=T0 + DAY) for i in range(0, 30, 4)]  # after as-of: not seen
              + [order(f"q{i}", when=T0 - dt.timedelta(days=400), amount="99") for i in range(0, 30, 5)])
    events = [{"openid": f"q{i}", "occurred_at": T0 - dt.timedelta(days=i % 9), "type": "text", "key": None}
              for i in range(0, 30, 2)]
    make_store(url, followers=people, orders=orders, events=events,
               memberships=[{"openid": "q2", "tag": "VIP", "source": "manual", "assigned_at": T0}])
    rules = tmp_path / "rules.tag"
    rules.write_text(RULES, encoding="utf-8")
    return rules


def test_preview_per_follower_shapes_count_what_the_other_shape_counts(tmp_path):
    # PostgreSQL: when few followers pass an audience's field conditions,
    # preview reads the sources for those followers only instead of a pass
    # over all of them; chosen by the planner's estimates, so only on
    # analysed tables.
    with isolated_engine("postgresql", tmp_path) as (_e, url):
        rules = thirty_followers(url, tmp_path)
        with Engine(CONFIG, url) as engine:
            seen = []
            sa.event.listen(engine.db, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))
            engine.PROBE_COST_IN_ROWS = 0
            never_analysed = engine.preview(PER_FOLLOWER_AUDIENCES[0][0], as_of=T0, ruleset=[rules])
            assert _count_shape(seen) == "grouped"  # no estimates yet: one pass over each source
            execute(url, "ANALYZE")
            counts = []
            for audience, shape in PER_FOLLOWER_AUDIENCES:
                seen.clear()
                engine.PROBE_COST_IN_ROWS = 0
                probed = engine.preview(audience, as_of=T0, ruleset=[rules])
                assert _count_shape(seen) == shape, audience
                engine.PROBE_COST_IN_ROWS = 10**9
                passed = engine.preview(audience, as_of=T0, ruleset=[rules])
                if shape == "lateral":
                    assert _count_shape(seen) == "grouped", audience
                assert (probed.count, probed.total) == (passed.count, passed.total), audience
                assert probed.total == 30
                counts.append(probed.count)
    assert counts[0] == never_analysed.count
    # By hand: gender 2 is q2, q5, …, q29; orders within 20 days are q1..q19 but not q7, q14.
    recent_events = {f"q{i}" for i in range(0, 30, 2) if i % 9 < 7}
    first = [f"q{i}" for i in range(2, 30, 3) if i < 20 and i % 7 and f"q{i}" not in recent_events]
    assert counts[0] == len(first) == 4
    assert all(c > 0 for c in counts), counts


def test_sqlite_preview_aggregates_only_for_the_narrowed_followers_when_few_pass(tmp_path):
    # SQLite: when at most half of the (first rows of the) followers pass the
    # audience's field conjuncts, each source is aggregated for them only.
    # (audience, aggregated for the narrowed followers only): every follower
    # has a gender, 22 of 30 an age: not narrow enough
    audiences = [(a, "gender is not missing" not in a) for a, _shape in PER_FOLLOWER_AUDIENCES] + [
        ('gender == 2 and last(orders.amount) >= 5', True),  # a value at the last time: a second pass
        ('age is not missing and count(orders) >= 1', False)]
    with isolated_engine("sqlite", tmp_path) as (_e, url):
        rules = thirty_followers(url, tmp_path)
        with Engine(CONFIG, url) as engine:
            seen = []
            sa.event.listen(engine.db, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))
            for audience, narrow in audiences:
                seen.clear()
                narrowed = engine.preview(audience, as_of=T0, ruleset=[rules])
                assert (" IN (SELECT" in seen[-1]) == narrow, audience
                engine.NARROWED_SHARE = -1  # never
                seen.clear()
                plain = engine.preview(audience, as_of=T0, ruleset=[rules])
                assert " IN (SELECT" not in seen[-1]
                engine.NARROWED_SHARE = Engine.NARROWED_SHARE
                assert (narrowed.count, narrowed.total) == (plain.count, plain.total), audience
                assert plain.total == 30 and plain.count > 0, audience


def test_preview_expression_errors_point_into_the_expression(sqlite_url, tmp_path):
    make_store(sqlite_url, followers=PEOPLE)
    rules = tmp_path / "rules.tag"
    rules.write_text(RULES, encoding="utf-8")
    with Engine(CONFIG, sqlite_url) as engine:
        with pytest.raises(RulesetError) as info:
            engine.preview('count(orders) >= 1 and cty == "广州"', ruleset=[rules])
        assert str(info.value).startswith("<expr>:1:24: TD201")
        with pytest.raises(RulesetError, match=r"^<expr>:1:\d+: TD204"):
            engine.preview('tag("广洲")', ruleset=[rules])
        with pytest.raises(TagDSLError, match="single condition"):
            engine.preview('true tag "x" when true', ruleset=[rules])
        with pytest.raises(TagDSLError, match="unknown follower field `town`"):
            engine.preview('city == "广州"', by="town", ruleset=[rules])


# -- explain, export ---------------------------------------------------------------------------------------

def test_explain_shows_values_and_rejects_an_unknown_openid(sqlite_url, tmp_path):
    make_store(sqlite_url, followers=PEOPLE, orders=PEOPLE_ORDERS,
               memberships=[{"openid": "p2", "tag": "VIP", "source": "manual", "assigned_at": T0}])
    rules = tmp_path / "rules.tag"
    rules.write_text(RULES, encoding="utf-8")
    with Engine(CONFIG, sqlite_url) as engine:
        explained = engine.explain("p2", [rules], as_of=T0)
        text = explained.render()
        assert 'city = "广州" == "广州" ✓' in text and "count(orders) = 1 ≥ 1 ✓" in text
        assert explained.holding == {"广州", "有单"} and explained.stored == {"VIP": ["manual"]}
        data = explained.to_dict()
        assert data["limit"]["protected"] == ["VIP"] and data["assigned"] == ["广州", "有单"]
        with pytest.raises(store.StoreError, match="follower `nobody` not found in table `followers`"):
            engine.explain("nobody", [rules], as_of=T0)


def test_export_rows_and_audience(sqlite_url, tmp_path):
    make_store(sqlite_url, followers=PEOPLE, orders=PEOPLE_ORDERS,
               memberships=[{"openid": "p1", "tag": "VIP", "source": "manual", "assigned_at": T0}])
    rules = tmp_path / "rules.tag"
    rules.write_text(RULES, encoding="utf-8")
    with Engine(CONFIG, sqlite_url) as engine:
        engine.apply([rules], as_of=T0)
        everything = list(engine.export())
        assert everything == [
            {"openid": "p1", "tag": "VIP", "source": "manual"}, {"openid": "p1", "tag": "广州", "source": "rule"},
            {"openid": "p2", "tag": "广州", "source": "rule"}, {"openid": "p2", "tag": "有单", "source": "rule"},
            {"openid": "p3", "tag": "广州", "source": "rule"}, {"openid": "p3", "tag": "有单", "source": "rule"},
            {"openid": "p4", "tag": "有单", "source": "rule"}]
        assert [r["openid"] for r in engine.export(tag="有单")] == ["p2", "p3", "p4"]
        assert list(engine.export(audience="广州有单", ruleset=[rules], as_of=T0)) == [{"openid": "p2"},
                                                                                      {"openid": "p3"}]
        with pytest.raises(TagDSLError, match="no tag `不存在`"):
            list(engine.export(tag="不存在"))
        with pytest.raises(TagDSLError, match="unknown audience `nope`"):
            engine.export(audience="nope", ruleset=[rules])


# -- the store: schema, values, connections ----------------------------------------------------------------

def test_missing_table_and_column_are_named(sqlite_url):
    partial = Config(sources={"orders": {"table": "orders", "time": "created_at",
                                         "fields": {"amount": {"type": "decimal", "scale": 2},
                                                    "category": "string"}},
                              "events": {"table": "events", "time": "occurred_at",
                                         "fields": {"type": "string", "key": "string"}}})
    make_store(sqlite_url, partial, followers=[{"openid": "a"}])
    with Engine(CONFIG, sqlite_url) as engine:
        with pytest.raises(store.StoreError) as info:
            engine.apply(ruleset(), as_of=T0)
    assert str(info.value) == (f"column `orders.promo` not found in {sqlite_url} "
                               "(configured as sources.orders.fields.promo in tagdsl.toml)")
    renamed = Config(followers={"table": "members"})
    with Engine(renamed, sqlite_url) as engine, pytest.raises(store.StoreError, match="table `members` not found"):
        engine.preview("age >= 18")


def test_an_unreadable_timestamp_is_one_clear_error(sqlite_url):
    make_store(sqlite_url, followers=[{"openid": "a"}])
    execute(sqlite_url, "UPDATE followers SET last_active_at = 'yesterday'")
    with Engine(CONFIG, sqlite_url) as engine:
        with pytest.raises(store.StoreError, match=r"cannot read `followers.last_active_at` of follower `a`: "
                                                   r"'yesterday' is not a valid datetime"):
            engine.load_follower("a")


def test_connection_errors_are_one_line_without_the_password(tmp_path):
    with pytest.raises(store.StoreError) as info:
        store.connect("postgresql+psycopg://tagdsl:s3cret-pw@127.0.0.1:1/nowhere")
    message = str(info.value)
    assert message.startswith("cannot reach database postgresql+psycopg://tagdsl:***@127.0.0.1:1/nowhere")
    assert "s3cret" not in message and "\n" not in message
    with pytest.raises(store.StoreError, match="does not exist"):
        store.connect(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(store.StoreError, match="invalid database URL"):
        store.connect("not a url")
    assert store.redact_url("mysql+pymysql://root:pw@host/db") == "mysql+pymysql://root:***@host/db"


@pytest.mark.parametrize("text, expected", [
    ("2026-05-01", dt.datetime(2026, 5, 1)),
    ("2026-05-01T09:30:00", dt.datetime(2026, 5, 1, 9, 30)),
    ("2026-05-01 09:30", dt.datetime(2026, 5, 1, 9, 30)),
    ("2026-05-01T01:30:00+00:00", dt.datetime(2026, 5, 1, 9, 30)),
    ("2026-05-01T01:30:00Z", dt.datetime(2026, 5, 1, 9, 30)),
    (dt.date(2026, 5, 1), dt.datetime(2026, 5, 1)),
])
def test_as_of_is_naive_project_time(text, expected):
    assert resolve_as_of(text, CONFIG.tz) == expected


@pytest.mark.parametrize("text", ["2026-13-01", "tomorrow", "2026/05/01", "20260501", ""])
def test_a_bad_as_of_is_refused(text):
    with pytest.raises(AsOfError, match="invalid as-of"):
        resolve_as_of(text, CONFIG.tz)


# -- the demo population -------------------------------------------------------------------------------

def test_population_is_deterministic_and_shaped_like_real_data():
    first = list(generate_population(2000, seed=11, as_of=T0))
    assert first == list(generate_population(2000, seed=11, as_of=T0))
    assert [f.follower for f in generate_population(20, seed=12, as_of=T0)] != [f.follower for f in first[:20]]
    followers = [f.follower for f in first]
    orders = [o for f in first for o in f.orders]
    events = [e for f in first for e in f.events]
    assert len({f["openid"] for f in followers}) == 2000
    assert all(len(f["openid"]) == 28 and f["openid"].startswith("o") for f in followers)
    share = lambda items, pred: sum(1 for x in items if pred(x)) / len(items)  # noqa: E731
    assert 0.05 < share(followers, lambda f: f["city"] is None) < 0.25
    assert 0.15 < share(followers, lambda f: f["age"] is None) < 0.4
    assert share(first, lambda f: not f.orders) > 0.45  # most have no order ...
    assert max(len(f.orders) for f in first) >= 11  # ... a few have many
    assert any(o["amount"] % 1 for o in orders) and all(o["amount"] == o["amount"].quantize(Decimal("0.01"))
                                                        for o in orders)
    assert {"护肤", "彩妆", "母婴", "食品", "服饰"} <= {o["category"] for o in orders}
    assert 0.05 < share(orders, lambda o: o["promo"]) < 0.6
    assert any(o["created_at"] and o["created_at"] > T0 for o in orders)  # clock skew exists
    kinds = {(e["type"], e["key"]) for e in events}
    assert ("menu_click", "会员中心") in kinds and ("text", "1") in kinds
    assert {"scan", "subscribe", "unsubscribe"} <= {e["type"] for e in events}
    quiet = [(T0 - f["last_active_at"]).days for f in followers if f["last_active_at"]]
    assert min(quiet) <= 7 and max(quiet) >= 365 and share(quiet, lambda d: d < 30) > 0.2
    assert {f["subscribe_scene"] for f in followers} >= {"ADD_SCENE_QR_CODE", "ADD_SCENE_SEARCH"}
    assert any((f["qr_scene_str"] or "").startswith("store") for f in followers)


def test_apply_agrees_with_the_in_memory_evaluator_on_the_demo_population(url):
    """The shipped rulesets on a loaded synthetic population: what apply
    stored for every follower is what the evaluator computes from the same
    rows read back (SQLite keeps timestamps as text, amounts as REAL)."""
    make_store(url)
    db = store.connect(url)
    loaded = load_population(db, generate_population(150, seed=5, as_of=T0), CONFIG)
    db.dispose()
    assert loaded.followers == 150
    with Engine(CONFIG, url) as engine:
        rs = engine.load_ruleset(ROOT / "rulesets")
        result = engine.apply(rs, as_of=T0)
        stored: dict[str, set] = {}
        for row in engine.export():
            stored.setdefault(row["openid"], set()).add(row["tag"])
        evaluator = compile_python(rs, CONFIG)
        openids = [r[0] for r in execute(url, "SELECT openid FROM followers")]
        # The whole population at once: rfm.tag ranks followers (quintile).
        computed = evaluator.tags_many([engine.load_follower(openid) for openid in openids], T0)
        for openid in openids:
            holding = computed[openid]
            lost = {t for t, _ in limit_drops({t: rs.tags[t].priority for t in holding}, set(), 20)}
            assert stored.get(openid, set()) == holding - lost, openid
    assert result.added == sum(len(v) for v in stored.values()) > 150


# -- docs/api.md -------------------------------------------------------------------------------------------

def test_the_api_example_in_the_docs_runs(tmp_path):
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "example.py").write_text(example, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TAGDSL_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "'已购买': {'total':" in done.stdout and "of 500" in done.stdout
    assert 'tag "已购买" ✓' in done.stdout
