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


def execute(url, sql):
    db = store.connect(url)
    try:
        with db.begin() as conn:
            conn.execute(sa.text(sql))
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


# -- the read-only difference (re-apply on PostgreSQL and SQLite) ---------------------------------------------

# 70 tags and a group: two mask words, so the per-word parts of the
# difference are exercised (63 tags to a word).
WIDE = "\n".join(f'tag "T{i:02d}" when age >= {i} {{ priority {i % 7} }}' for i in range(70)) + '''
group "G" exclusive {
  tag "G1" when age >= 40 { priority 1 }
  tag "G2" when age >= 0 { priority 1 }
}
tag "VIP" manual
'''


def run_sequence(url, diff_first):
    """First apply, changes in the store, a re-apply (dry, then real), a no-op
    re-apply; everything each step reports and writes."""
    config = Config(limits={"max_tags_per_follower": 100})
    rs = load_ruleset(texts={"w.tag": WIDE}, config=config)
    make_store(url, config, followers=[{"openid": o, "age": a} for o, a in
                                       (("a", 10), ("b", 50), ("c", 65), ("d", None), ("e", 30))],
               memberships=[{"openid": "a", "tag": "VIP", "source": "manual", "assigned_at": T0},
                            {"openid": "b", "tag": "T05", "source": "import", "assigned_at": T0}])
    out = []

    def step(as_of, dry_run=False):
        with Engine(config, url) as engine:
            engine.diff_first = diff_first
            r = engine.apply(rs, as_of=as_of, dry_run=dry_run)
        changes = set(query(url, "SELECT openid, tag, action, reason FROM tagdsl_changes WHERE run_id = :r",
                            {"r": r.run_id})) if r.run_id else set()
        run = query(url, "SELECT status, added, removed, dropped, followers FROM tagdsl_runs WHERE id = :r",
                    {"r": r.run_id}) if r.run_id else []
        out.append((r.added, r.removed, r.followers, r.dropped, {t: c.to_dict() for t, c in r.tags.items()},
                    held(url), changes, run))
        return r

    first = step(T0)
    assert (first.added, first.removed) == (11 + 51 + 66 + 31 + 4, 0)  # T00..T<age>, one of the group
    db = store.connect(url)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE followers SET age = 20 WHERE openid = 'a'"))
        conn.execute(sa.text("UPDATE followers SET age = 5 WHERE openid = 'b'"))
        conn.execute(sa.text("DELETE FROM followers WHERE openid = 'c'"))  # its rule tags go
        conn.execute(sa.text("INSERT INTO followers (openid, age) VALUES ('f', 69)"))
        for openid, tag, source in (("a", "旧规则", "rule"), ("ghost", "T01", "rule"), ("ghost", "VIP", "manual")):
            conn.execute(sa.text("INSERT INTO tagdsl_memberships (openid, tag, source, assigned_at) "
                                 "VALUES (:o, :t, :s, :a)"), {"o": openid, "t": tag, "s": source, "a": T0})
    db.dispose()
    dry = step(T0 + DAY, dry_run=True)
    again = step(T0 + DAY)
    # a: T11..T20; b: -T06..T50, G1 -> G2; c gone: -66 and G1; f: +70 and G1; ghost: -T01
    assert (dry.added, dry.removed) == (again.added, again.removed) == (10 + 1 + 71, 45 + 1 + 67 + 1)
    noop = step(T0 + 2 * DAY)
    assert (noop.added, noop.removed) == (0, 0)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_read_only_difference_reports_and_writes_what_the_other_paths_do(backend, tmp_path):
    with isolated_engine(backend, tmp_path) as (_e1, diff_url), isolated_engine(backend, tmp_path) as (_e2, url):
        by_diff = run_sequence(diff_url, diff_first=True)
        other = run_sequence(url, diff_first=False)
    assert by_diff == other
    final = by_diff[-1][5]
    # manual and imported memberships untouched; out-of-scope rule rows kept;
    # the rule rows of followers no longer in the followers table removed
    assert {("a", "VIP", "manual"), ("b", "T05", "import"), ("ghost", "VIP", "manual"),
            ("a", "旧规则", "rule")} <= final
    assert not {m for m in final if m[0] in ("c", "ghost") and m[2] == "rule"}
    assert ("f", "G1", "rule") in final and ("b", "G2", "rule") in final and ("b", "G1", "rule") not in final


# -- the schema check: one catalog query per store ---------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_the_schema_check_names_what_is_missing_and_accepts_a_view(backend, tmp_path):
    config = Config()
    with isolated_engine(backend, tmp_path) as (_e, url):
        make_store(url, config, followers=[{"openid": "x", "age": 30}])
        db = store.connect(url)
        try:
            store.check_schema(db, config)  # everything there
            with db.begin() as conn:
                conn.execute(sa.text("CREATE VIEW members AS SELECT * FROM followers"))
                conn.execute(sa.text("CREATE TABLE other_orders (openid VARCHAR(64), created_at TIMESTAMP)"))
            store.check_schema(db, Config(followers={"table": "members"}))
            shown = store.redact_url(url)
            with pytest.raises(store.StoreError) as info:
                store.check_schema(db, Config(followers={"table": "nobody"}))
            assert str(info.value) == (f"table `nobody` not found in {shown} "
                                       "(configured as [followers] table in tagdsl.toml)")
            with pytest.raises(store.StoreError) as info:
                store.check_schema(db, Config(sources={"orders": {"table": "other_orders", "time": "created_at",
                                                                  "fields": {"amount": "decimal"}}}))
            assert str(info.value) == (f"column `other_orders.amount` not found in {shown} "
                                       "(configured as sources.orders.fields.amount in tagdsl.toml)")
        finally:
            db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tags_held_from_other_sources_are_found_on_either_side_of_rule(backend, tmp_path):
    # Sources sort before ('import', 'manual') and after ('sync', 'wechat')
    # 'rule' in the (tag, source) index the walk uses; rule-only tags are not found.
    config = Config(limits={"max_tags_per_follower": 6})
    rows = [("a", "A", "rule"), ("a", "B", "rule"), ("b", "B", "rule"), ("a", "VIP", "manual"),
            ("b", "老客", "import"), ("c", "X", "wechat"), ("c", "C", "rule"), ("c", "C", "sync")]
    with isolated_engine(backend, tmp_path) as (_e, url):
        make_store(url, config, followers=[{"openid": o, "age": 30} for o in "abc"],
                   memberships=[{"openid": o, "tag": t, "source": s, "assigned_at": T0} for o, t, s in rows])
        with Engine(config, url) as engine, engine.db.connect() as conn:
            assert sorted(engine._tags_held_otherwise(conn)) == sorted(["VIP", "老客", "X", "C"])
            rs = load_ruleset(texts={"t.tag": RULES}, config=config)
            # at most 4 computed tags: c's 2 tags from other sources fit in 6, a third does not
            assert not engine._limit_can_bind(conn, rs, 6)
            assert engine._limit_can_bind(conn, rs, 5)
        # c's C is held from `sync`, so its computed tags add 3 to its 2: 5 fit in 5
        assert apply(url, Config(limits={"max_tags_per_follower": 5})).dropped == []
        # with 4, everyone is one over and loses the lowest priority computed tag
        tight = apply(url, Config(limits={"max_tags_per_follower": 4}), T0 + DAY)
        assert [(d.openid, d.tag) for d in tight.dropped] == [("a", "G1"), ("b", "G1"), ("c", "G1")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_audit_table_is_keyed_only_where_the_backend_needs_it(backend, tmp_path):
    # PostgreSQL and SQLite: no surrogate key (PostgreSQL's run index is a
    # BRIN); MySQL: an AUTO_INCREMENT primary key. Either way a tag's history
    # reads in order by run.
    config = Config()
    with isolated_engine(backend, tmp_path) as (_e, url):
        make_store(url, config, followers=[{"openid": "a", "age": 30}])
        apply(url, config)
        execute(url, "UPDATE followers SET age = 10 WHERE openid = 'a'")
        make_store(url, config, followers=[{"openid": "b", "age": 20}])
        apply(url, config, T0 + DAY)
        assert query(url, "SELECT openid, tag, action FROM tagdsl_changes WHERE tag = 'G1' "
                          "ORDER BY run_id, openid") == [
            ("a", "G1", "added"), ("a", "G1", "removed"), ("b", "G1", "added")]
        db = store.connect(url)
        try:
            insp = sa.inspect(db)
            columns = [c["name"] for c in insp.get_columns("tagdsl_changes")]
            key = insp.get_pk_constraint("tagdsl_changes")["constrained_columns"]
            if backend == "mysql":
                assert columns[0] == "id" and key == ["id"]
                assert query(url, "SELECT extra FROM information_schema.columns WHERE table_schema = DATABASE() "
                                  "AND table_name = 'tagdsl_changes' AND column_name = 'id'") == [("auto_increment",)]
            else:
                assert "id" not in columns and key == []
            if backend == "postgresql":
                assert query(url, "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
                                  "WHERE c.oid = 'ix_tagdsl_changes_run'::regclass") == [("brin",)]
        finally:
            db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_whose_audit_table_has_an_id_column_still_applies(backend, tmp_path):
    # Stores created by earlier versions: `tagdsl_changes` with an
    # autoincrement `id` primary key and a B-tree run index.
    config = Config()
    old = sa.MetaData()
    sa.Table("tagdsl_changes", old,
             sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
             sa.Column("run_id", sa.BigInteger, nullable=False), sa.Column("openid", sa.String(64), nullable=False),
             sa.Column("tag", sa.String(128), nullable=False), sa.Column("action", sa.String(16), nullable=False),
             sa.Column("reason", sa.String(16)), sa.Index("ix_tagdsl_changes_run", "run_id"),
             mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin")
    with isolated_engine(backend, tmp_path) as (engine, url):
        old.create_all(engine)
        make_store(url, config, followers=[{"openid": o, "age": 20} for o in "ab"])
        first = apply(url, config)
        execute(url, "UPDATE followers SET age = 10 WHERE openid = 'a'")
        second = apply(url, config, T0 + DAY)
        assert (first.added, second.added, second.removed) == (8, 1, 1)
        rows = query(url, "SELECT id, run_id, openid, tag, action FROM tagdsl_changes ORDER BY id")
        assert len({r[0] for r in rows}) == len(rows) == 10  # every row got its own id
        assert sorted(r[1:] for r in rows if r[1] == second.run_id) == [
            (second.run_id, "a", "G1", "removed"), (second.run_id, "a", "G2", "added")]


def index_definitions(url):
    return query(url, "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisprimary FROM pg_index "
                      "WHERE indrelid = 'tagdsl_memberships'::regclass ORDER BY 1")


def statements_of(engine):
    seen = []
    sa.event.listen(engine.db, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))
    return seen


def test_a_bulk_first_apply_rebuilds_the_membership_indexes_as_they_were(tmp_path):
    config = Config()
    with isolated_engine("postgresql", tmp_path) as (_e, url):
        make_store(url, config, followers=[{"openid": f"f{i}", "age": 20} for i in range(50)],
                   memberships=[{"openid": "f1", "tag": "VIP", "source": "manual", "assigned_at": T0}])
        execute(url, "CREATE INDEX mine ON tagdsl_memberships (run_id) WHERE source = 'rule'")
        before = index_definitions(url)
        assert len(before) == 3 and sum(primary for *_, primary in before) == 1
        with Engine(config, url) as engine:
            engine.REBUILD_MIN_ROWS = 10
            seen = statements_of(engine)
            result = engine.apply(load_ruleset(texts={"t.tag": RULES}, config=config), as_of=T0)
        assert result.added == 200
        assert sum(s.startswith("DROP INDEX") for s in seen) == 2  # the (tag, source) index and `mine`
        assert index_definitions(url) == before
        assert ("f1", "VIP", "manual") in held(url) and len(held(url)) == 201
        # Nothing to rebuild for: the next apply changes nothing and keeps every index.
        with Engine(config, url) as engine:
            engine.REBUILD_MIN_ROWS = 10
            seen = statements_of(engine)
            assert engine.apply(load_ruleset(texts={"t.tag": RULES}, config=config), as_of=T0 + DAY).added == 0
        assert not [s for s in seen if "INDEX" in s or "CONSTRAINT" in s]


def test_a_failed_bulk_apply_leaves_the_indexes_and_memberships_untouched(tmp_path):
    config = Config()
    with isolated_engine("postgresql", tmp_path) as (_e, url):
        make_store(url, config, followers=[{"openid": f"f{i}", "age": 20} for i in range(50)],
                   memberships=[{"openid": "f1", "tag": "VIP", "source": "manual", "assigned_at": T0}])
        before, kept = index_definitions(url), held(url)
        with Engine(config, url) as engine:
            engine.REBUILD_MIN_ROWS = 10

            def fail_on_audit(conn, cursor, statement, *args):
                if statement.startswith("INSERT INTO tagdsl_changes"):
                    raise RuntimeError("the audit insert failed")

            sa.event.listen(engine.db, "before_cursor_execute", fail_on_audit)
            with pytest.raises(Exception, match="the audit insert failed"):
                engine.apply(load_ruleset(texts={"t.tag": RULES}, config=config), as_of=T0)
        assert index_definitions(url) == before and held(url) == kept


def test_no_rebuild_when_the_table_is_referenced_or_already_larger(tmp_path):
    config = Config()
    with isolated_engine("postgresql", tmp_path) as (_e, url):
        make_store(url, config, followers=[{"openid": f"f{i}", "age": 20} for i in range(50)],
                   memberships=[{"openid": f"f{i}", "tag": f"M{j}", "source": "manual", "assigned_at": T0}
                                for i in range(50) for j in range(5)])
        with Engine(config, url) as engine:  # 200 to add, 250 held
            engine.REBUILD_MIN_ROWS = 10
            seen = statements_of(engine)
            assert engine.apply(load_ruleset(texts={"t.tag": RULES}, config=config), as_of=T0).added == 200
        assert not [s for s in seen if s.startswith(("DROP INDEX", "ALTER TABLE"))]
    with isolated_engine("postgresql", tmp_path) as (_e, url):
        make_store(url, config, followers=[{"openid": f"f{i}", "age": 20} for i in range(50)])
        execute(url, "CREATE TABLE notes (openid varchar(64), tag varchar(128), source varchar(16), "
                     "FOREIGN KEY (openid, tag, source) REFERENCES tagdsl_memberships)")
        with Engine(config, url) as engine:
            engine.REBUILD_MIN_ROWS = 10
            seen = statements_of(engine)
            assert engine.apply(load_ruleset(texts={"t.tag": RULES}, config=config), as_of=T0).added == 200
        assert not [s for s in seen if s.startswith(("DROP INDEX", "ALTER TABLE"))]


def test_postgresql_sessions_get_room_for_the_temporary_tables(tmp_path):
    with isolated_engine("postgresql", tmp_path) as (_e, url):
        db = store.connect(url)
        try:
            with db.connect() as conn:
                assert conn.exec_driver_sql("SHOW temp_buffers").scalar_one() == "256MB"
        finally:
            db.dispose()


def test_postgresql_membership_keys_sort_bytewise_and_older_stores_still_apply(tmp_path):
    # New stores: the memberships' key columns use the "C" collation (their
    # primary key builds twice as fast in bulk). Stores created before keep
    # the database's collation, and joins across both kinds still work.
    config = Config()
    for collation in ("C", "default"):
        with isolated_engine("postgresql", tmp_path) as (engine, url):
            if collation == "default":
                old = sa.MetaData()
                sa.Table("tagdsl_memberships", old,
                         sa.Column("openid", sa.String(64), primary_key=True),
                         sa.Column("tag", sa.String(128), primary_key=True),
                         sa.Column("source", sa.String(16), primary_key=True),
                         sa.Column("assigned_at", sa.DateTime, nullable=False), sa.Column("run_id", sa.BigInteger),
                         sa.Index("ix_tagdsl_memberships_tag", "tag", "source"))
                old.create_all(engine)
            make_store(url, config, followers=[{"openid": o, "age": 20} for o in "ab"],
                       memberships=[{"openid": "b", "tag": "VIP", "source": "manual", "assigned_at": T0}])
            assert query(url, "SELECT column_name, collation_name FROM information_schema.columns "
                              "WHERE table_schema = current_schema() AND table_name = 'tagdsl_memberships' "
                              "AND collation_name IS NOT NULL "
                              "ORDER BY column_name") == (
                [("openid", "C"), ("source", "C"), ("tag", "C")] if collation == "C" else [])
            assert apply(url, config).added == 8
            execute(url, "UPDATE followers SET age = 10 WHERE openid = 'a'")
            assert (apply(url, config, T0 + DAY).removed, apply(url, config, T0 + 2 * DAY).added) == (1, 0)
            with Engine(config, url) as engine_:
                (tmp_path / "t.tag").write_text(RULES, encoding="utf-8")
                assert engine_.preview('tag("VIP") and tag("G1")', as_of=T0, ruleset=[tmp_path / "t.tag"]).count == 1
