"""The faster apply paths give the same results as the general one.

On PostgreSQL, an apply where neither `expires` nor the per-follower limit can
act runs as one statement (data-modifying CTEs); elsewhere, or when they can
act, through scratch tables. The limit is skipped only when it provably cannot
drop anything (at most one tag per exclusive group plus one per other computed
tag, plus the tags held from other sources, fits). These tests pin the
boundary and the writes of the one-statement path; they run on SQLite, and on
PostgreSQL / MariaDB when TAGDSL_TEST_POSTGRES_URL / TAGDSL_TEST_MYSQL_URL are set.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from dbs import BACKENDS, isolated_engine
from runtime import store
from runtime.engine import Engine
from runtime.results import Drop, TagCount
from tagdsl import Config, load_ruleset

T0 = dt.datetime(2026, 5, 1, 12, 0, 0)
DAY = dt.timedelta(days=1)

# At most 4 computed tags per follower: A, B, C and one of the exclusive group.
RULES = '''
tag "A" when age >= 0 { priority 10 }
tag "B" when age >= 0 { priority 5 }
tag "C" when age >= 0 { priority 3 }
group "G" exclusive {
  tag "G1" when age >= 18 { priority 1 }
  tag "G2" when age >= 0 { priority 1 }
}
tag "VIP" manual
tag "老客" manual
'''


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    with isolated_engine(request.param, tmp_path) as (_engine, url):
        yield url


def make_store(url, config, followers=(), memberships=(), expirations=()):
    db = store.connect(url, create=True)
    tables = store.create_store(db, config)
    with db.begin() as conn:
        for table, rows in ((tables.followers, followers), (tables.memberships, memberships),
                            (tables.expirations, expirations)):
            if rows:
                blank = {c.name: None for c in table.columns}
                conn.execute(sa.insert(table), [{**blank, **r} for r in rows])
    db.dispose()


def query(url, sql, params=None):
    db = store.connect(url)
    try:
        with db.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params or {})]
    finally:
        db.dispose()


def held(url):
    return set(query(url, "SELECT openid, tag, source FROM tagdsl_memberships"))


def apply(url, config, as_of=T0, dry_run=False):
    with Engine(config, url) as engine:
        return engine.apply(load_ruleset(texts={"t.tag": RULES}, config=config), as_of=as_of, dry_run=dry_run)


def test_a_limit_exactly_filled_drops_nothing_and_one_more_tag_drops_the_lowest(url):
    config = Config(limits={"max_tags_per_follower": 5})
    manual = {"openid": "m", "tag": "VIP", "source": "manual", "assigned_at": T0}
    make_store(url, config, followers=[{"openid": "x", "age": 30}, {"openid": "m", "age": 30}],
               memberships=[manual])
    # 4 computed + 1 manual = 5: exactly the limit, nobody loses a tag.
    first = apply(url, config)
    assert first.dropped == []
    assert {(o, t) for o, t, s in held(url) if s == "rule"} == {
        (o, t) for o in "xm" for t in ("A", "B", "C", "G1")}
    # A second tag from another source puts m one over: the lowest priority
    # computed tag goes (G1 and C: G1 has priority 1), with reason `limit`.
    db = store.connect(url)
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO tagdsl_memberships (openid, tag, source, assigned_at) "
                             "VALUES ('m', '老客', 'import', :t)"), {"t": T0})
    db.dispose()
    second = apply(url, config, T0 + DAY)
    assert second.dropped == [Drop("m", "G1", 1)]
    assert second.tags["G1"] == TagCount(1, 0, 1)
    assert query(url, "SELECT openid, tag, action, reason FROM tagdsl_changes WHERE run_id = :r",
                 {"r": second.run_id}) == [("m", "G1", "removed", "limit")]
    assert ("m", "VIP", "manual") in held(url) and ("m", "老客", "import") in held(url)


def test_the_diff_path_writes_memberships_changes_and_counts(url):
    config = Config(limits={"max_tags_per_follower": 20})
    make_store(
        url, config,
        followers=[{"openid": "adult", "age": 30}, {"openid": "kid", "age": 10}, {"openid": "gone"}],
        memberships=[
            {"openid": "gone", "tag": "A", "source": "rule", "assigned_at": T0 - DAY},  # no age now: removed
            {"openid": "kid", "tag": "G1", "source": "rule", "assigned_at": T0 - DAY},  # G2 now: swap
            {"openid": "kid", "tag": "A", "source": "rule", "assigned_at": T0 - DAY},  # still holds: untouched
            {"openid": "kid", "tag": "VIP", "source": "manual", "assigned_at": T0 - DAY},
            {"openid": "gone", "tag": "G1", "source": "import", "assigned_at": T0 - DAY},  # not a rule row
            {"openid": "gone", "tag": "旧规则", "source": "rule", "assigned_at": T0 - DAY},  # out of scope
        ],
        # expiry state of a tag that no longer expires is cleared
        expirations=[{"openid": "kid", "tag": "A", "assigned_at": T0 - 30 * DAY, "expired_at": T0 - DAY}])
    before = held(url)
    preview = apply(url, config, dry_run=True)
    assert held(url) == before and preview.run_id is None
    result = apply(url, config)
    assert (preview.added, preview.removed) == (result.added, result.removed) == (7, 2)
    assert held(url) == {
        ("adult", "A", "rule"), ("adult", "B", "rule"), ("adult", "C", "rule"), ("adult", "G1", "rule"),
        ("kid", "A", "rule"), ("kid", "B", "rule"), ("kid", "C", "rule"), ("kid", "G2", "rule"),
        ("kid", "VIP", "manual"), ("gone", "G1", "import"), ("gone", "旧规则", "rule"),
    }
    assert set(query(url, "SELECT openid, tag, action, reason FROM tagdsl_changes WHERE run_id = :r",
                     {"r": result.run_id})) == {
        ("adult", "A", "added", "rule"), ("adult", "B", "added", "rule"), ("adult", "C", "added", "rule"),
        ("adult", "G1", "added", "rule"), ("kid", "B", "added", "rule"), ("kid", "C", "added", "rule"),
        ("kid", "G2", "added", "rule"), ("gone", "A", "removed", "rule"), ("kid", "G1", "removed", "rule"),
    }
    assert result.tags["A"] == TagCount(2, 1, 1) and result.tags["G2"] == TagCount(1, 1, 0)
    assert query(url, "SELECT COUNT(*) FROM tagdsl_expirations") == [(0,)]
    run = query(url, "SELECT status, added, removed, followers FROM tagdsl_runs WHERE id = :r", {"r": result.run_id})
    assert run == [("ok", result.added, result.removed, 3)]
    # Nothing changed: nothing written.
    again = apply(url, config, T0 + DAY)
    assert (again.added, again.removed) == (0, 0)
    assert query(url, "SELECT COUNT(*) FROM tagdsl_changes WHERE run_id = :r", {"r": again.run_id}) == [(0,)]
