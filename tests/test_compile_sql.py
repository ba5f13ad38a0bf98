"""The SQL compiler (tagdsl/compile/sql.py) on real databases.

Every test runs on SQLite, and on PostgreSQL / MariaDB (or MySQL) when
TAGDSL_TEST_POSTGRES_URL / TAGDSL_TEST_MYSQL_URL are set (a set but unreachable
database fails the test). Each test gets its own schema or database, dropped
afterwards. The data are hand-made around the semantic corners of
docs/internals.md and /work/shared/PITFALLS.md; the expected tags are worked
out by hand and must be identical on every backend.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

import tagdsl
from tagdsl import ir
from tagdsl.compile.sql import SqlCompileError, compile_sql, sql_text
from tagdsl.config import Config, ProjectSection
from tagdsl.schema import build_tables

# platform "none": no WeChat name limits, so tests can use any tag names.
CONFIG = Config(project=ProjectSection(platform="none"))
AS_OF = dt.datetime(2024, 6, 1, 12, 0, 0)
GOLDEN = Path(__file__).parent / "golden" / "sql"
BACKEND_ENV = {"postgresql": "TAGDSL_TEST_POSTGRES_URL", "mysql": "TAGDSL_TEST_MYSQL_URL"}


# -- one database per test -----------------------------------------------------------------------------

class Store:
    """The default follower store on one backend, and helpers to fill and query it."""

    def __init__(self, kind: str, engine: sa.Engine):
        self.kind = kind
        self.engine = engine
        self.tables = build_tables(CONFIG)
        self.tables.metadata.create_all(engine)

    def _table(self, name: str) -> sa.Table:
        if name == "followers":
            return self.tables.followers
        if name == "memberships":
            return self.tables.memberships
        return self.tables.sources[name]

    def _adapt(self, table: sa.Table, row: dict) -> dict:
        out = {}
        for key, value in row.items():
            col_type = table.c[key].type
            if isinstance(col_type, sa.DateTime) and value is not None:
                if self.kind == "sqlite":
                    # SQLite keeps what the application wrote: text as given
                    # ('YYYY-MM-DD HH:MM:SS' or ISO 'T'); datetimes as SQLAlchemy binds them.
                    if isinstance(value, dt.datetime):
                        value = value.strftime("%Y-%m-%d %H:%M:%S.%f")
                elif isinstance(value, str):
                    value = dt.datetime.fromisoformat(value)
            elif isinstance(value, Decimal) and self.kind == "sqlite":
                value = str(value)  # NUMERIC affinity: stored as a binary float, as in real apps
            out[key] = value
        return out

    def insert(self, name: str, rows: list[dict]) -> None:
        table = self._table(name)
        keys = sorted({k for r in rows for k in r})
        # Untyped columns: the values reach the driver as written (raw text on SQLite).
        light = sa.table(table.name, *[sa.column(k) for k in keys])
        with self.engine.begin() as conn:
            conn.execute(light.insert(), [{k: self._adapt(table, r).get(k) for k in keys} for r in rows])

    def compiler(self, text: str):
        ruleset = tagdsl.load_ruleset(config=CONFIG, texts={"test.tag": text})
        return compile_sql(ruleset, CONFIG, self.tables)

    def tags(self, text: str, as_of: dt.datetime = AS_OF, only=None) -> dict[str, set[str]]:
        """{computed tag: followers holding it} from desired_memberships."""
        sc = self.compiler(text)
        with self.engine.connect() as conn:
            rows = conn.execute(sc.desired_memberships(as_of, only)).all()
        assert len(rows) == len(set(rows)), "a (follower, tag) row appears twice"
        names = only or [t.name for t in sc.ruleset.computed]
        result: dict[str, set[str]] = {n: set() for n in names}
        for openid, tag, _priority in rows:
            result[tag].add(openid)
        return result

    def audience(self, text: str, name: str, as_of: dt.datetime = AS_OF) -> set[str]:
        sc = self.compiler(text)
        with self.engine.connect() as conn:
            return {r.openid for r in conn.execute(sc.audience_select(name, as_of))}

    def count(self, text: str, name: str, as_of: dt.datetime = AS_OF, by: str | None = None):
        sc = self.compiler(text)
        with self.engine.connect() as conn:
            rows = conn.execute(sc.count_select(name, as_of, by)).mappings().all()
        return [dict(r) for r in rows]

    def execute(self, sql: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql))


def _unique_name() -> str:
    return f"tagdsl_t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store(request):
    kind = request.param
    if kind == "sqlite":
        engine = sa.create_engine("sqlite://")
        yield Store(kind, engine)
        engine.dispose()
        return
    url = os.environ.get(BACKEND_ENV[kind])
    if not url:
        pytest.skip(f"{BACKEND_ENV[kind]} is not set")
    admin = sa.create_engine(url)
    name = _unique_name()
    if kind == "postgresql":
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={name}"})
        drop = f'DROP SCHEMA "{name}" CASCADE'
    else:
        # The server's usual default (case-insensitive) for anything tagdsl does not create itself.
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"))
        engine = sa.create_engine(sa.make_url(url).set(database=name))
        drop = f"DROP DATABASE `{name}`"
    try:
        yield Store(kind, engine)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(drop))
        admin.dispose()


def followers(*ids: str, **fields) -> list[dict]:
    return [{"openid": i, **fields} for i in ids]


# -- decimals ---------------------------------------------------------------------------------------------

def test_decimal_sums_are_exact(store):
    rules = """
    tag "5000+" when sum(orders.amount) >= 5000
    tag "exactly 5000" when sum(orders.amount) == 5000.00
    tag "at most 5000" when sum(orders.amount) <= 5000 and exists(orders)
    tag "avg" when avg(orders.amount) >= 1.6
    """
    store.insert("followers", followers("three", "many", "short", "over", "none", "cents"))
    t = "2024-05-01 10:00:00"
    # A float sum of these is 4999.999999999999 (PITFALLS: 11 of 3,533 followers missed).
    three = [Decimal("2301.43"), Decimal("2665.62"), Decimal("32.95")]
    assert sum(float(a) for a in three) < 5000
    # 3125 x 1.60: a float sum is 5000.000000000041.
    assert sum([1.6] * 3125) > 5000
    store.insert("orders", [{"openid": "three", "created_at": t, "amount": a} for a in three]
                 + [{"openid": "many", "created_at": t, "amount": Decimal("1.60")} for _ in range(3125)]
                 + [{"openid": "short", "created_at": t, "amount": a}
                    for a in (Decimal("2301.43"), Decimal("2665.62"), Decimal("32.94"))]
                 + [{"openid": "over", "created_at": t, "amount": Decimal("5000.01")}]
                 + [{"openid": "cents", "created_at": t, "amount": Decimal("0.10")} for _ in range(10)]
                 + [{"openid": "cents", "created_at": t, "amount": None}])
    assert store.tags(rules) == {
        "5000+": {"three", "many", "over"},
        "exactly 5000": {"three", "many"},
        "at most 5000": {"three", "many", "short", "cents"},
        "avg": {"three", "many", "short", "over"},  # "many": exactly 1.60; "cents": 0.10 (NULL not counted)
    }


def test_decimal_arithmetic_and_scales(store):
    rules = """
    tag "sum+1.005" when sum(orders.amount) + 1.005 == 11.005
    tag "times" when max(orders.amount) * 3 == 30.30
    tag "vs float" when max(orders.amount) > 10.09 and max(orders.amount) / 1 > 10.09
    tag "vs int" when min(orders.amount) < 1
    tag "neg" when -sum(orders.amount) < -10
    """
    store.insert("followers", followers("a", "b"))
    t = "2024-05-01 10:00:00"
    store.insert("orders", [
        {"openid": "a", "created_at": t, "amount": Decimal("10.10")},
        {"openid": "b", "created_at": t, "amount": Decimal("0.99")},
        {"openid": "b", "created_at": t, "amount": Decimal("9.01")},
    ])
    assert store.tags(rules) == {
        "sum+1.005": {"b"},  # 10.00 + 1.005; a: 10.10 + 1.005 = 11.105
        "times": {"a"},
        "vs float": {"a"},
        "vs int": {"b"},
        "neg": {"a"},
    }


# -- integer division ------------------------------------------------------------------------------

def test_division_is_true_division(store):
    rules = """
    tag "promo share" when count(orders where promo) / count(orders) >= 0.6
    tag "not share" when not (count(orders where promo) / count(orders) >= 0.6)
    tag "half" when count(orders) / 2 == 1.5
    tag "age ratio" when age / 3 > 13.3
    """
    store.insert("followers", followers("p3of5", "p1of2", "none") + [{"openid": "three", "age": 40}])
    t = "2024-05-01 10:00:00"
    store.insert("orders", [{"openid": "p3of5", "created_at": t, "promo": i < 3} for i in range(5)]
                 + [{"openid": "p1of2", "created_at": t, "promo": p} for p in (True, False)]
                 + [{"openid": "three", "created_at": t, "promo": None} for _ in range(3)])
    assert store.tags(rules) == {
        # 3/5 is 0.6 (integer division would say 0); no orders: the share is missing, so false.
        "promo share": {"p3of5"},
        # ... and `not` of a comparison with a missing operand is true.
        "not share": {"p1of2", "none", "three"},
        "half": {"three"},
        "age ratio": {"three"},  # 40 / 3 = 13.33…
    }


# -- time -----------------------------------------------------------------------------------------------

def test_window_edges_text_timestamps_and_rows_after_as_of(store):
    rules = """
    tag "recent" when count(orders within 30d) >= 1
    tag "only future" when exists(orders) == false
    tag "one order" when count(orders) == 1
    tag "active" when last_active_at >= datetime("2024-05-01T00:00:00")
    tag "active 30d" when last_active_at > now() - 30d
    """
    edge = AS_OF - dt.timedelta(days=30)  # 2024-05-02 12:00:00, outside: the window is (as_of-30d, as_of]
    store.insert("followers", [
        {"openid": "at_edge", "last_active_at": "2024-05-01 00:00:00"},  # text without fraction
        {"openid": "past_edge", "last_active_at": "2024-05-02T12:00:01"},  # ISO 'T' text
        {"openid": "at_as_of", "last_active_at": edge},  # SQLAlchemy's '… .000000' format
        {"openid": "future", "last_active_at": "2024-04-30 23:59:59"},
        {"openid": "null_time"},
    ])
    store.insert("orders", [
        {"openid": "at_edge", "created_at": "2024-05-02 12:00:00"},
        {"openid": "past_edge", "created_at": "2024-05-02T12:00:01"},
        {"openid": "at_as_of", "created_at": "2024-06-01 12:00:00"},
        {"openid": "future", "created_at": "2024-06-01 12:00:01"},  # after as-of: never seen
        {"openid": "null_time", "created_at": None},  # no time: never seen
        {"openid": "null_time", "created_at": "2024-01-01 00:00:00"},
    ])
    assert store.tags(rules) == {
        "recent": {"past_edge", "at_as_of"},
        "only future": {"future"},
        "one order": {"at_edge", "past_edge", "at_as_of", "null_time"},
        "active": {"at_edge", "past_edge", "at_as_of"},
        "active 30d": {"past_edge"},
    }
    # Two hours later the "future" order is in the past, and the window has moved past "past_edge".
    later = store.tags(rules, AS_OF + dt.timedelta(hours=2))
    assert later["one order"] == {"at_edge", "past_edge", "at_as_of", "future", "null_time"}
    assert later["recent"] == {"at_as_of", "future"}


# (condition with {f} for the function call, followers holding it)
ELAPSED_CASES = [
    ("{f} == 90", {"exact"}),
    ("{f} != 90", {"short", "tomorrow"}),
    ("{f} >= 90", {"exact"}),
    ("{f} > 89", {"exact"}),
    ("{f} < 90", {"short", "tomorrow"}),
    ("{f} <= 89", {"short", "tomorrow"}),
    ("{f} == -1", {"tomorrow"}),
    ("90 <= {f}", {"exact"}),
    ("{f} between 89 and 90", {"exact", "short"}),
    ("not ({f} == 90)", {"short", "tomorrow", "missing"}),
]
HOUR_CASES = [
    ("{f} == 2428", {"exact"}),
    ("{f} == 0", {"short", "tomorrow"}),
    ("{f} < 1", {"short", "tomorrow"}),
    ("{f} > 2427", {"exact"}),
]


def test_days_since_and_hours_since_are_exact(store):
    as_of = dt.datetime(2024, 7, 12, 13, 59, 27)
    store.insert("followers", [
        # exactly 90 days, at a non-midnight time; 2428 hours exactly, where
        # (julianday(a) - julianday(b)) * 24 floors to 2427
        {"openid": "exact", "subscribe_time": "2024-04-13 13:59:27", "last_active_at": "2024-04-02 09:59:27"},
        # one second short of 90 days: 89; 59 min 27 s: 0 hours
        {"openid": "short", "subscribe_time": "2024-04-13T13:59:28", "last_active_at": "2024-07-12 13:00:00"},
        # one second after as-of: floor(-1 s / 1 day) = -1
        {"openid": "tomorrow", "subscribe_time": "2024-07-12 13:59:28",
         "last_active_at": dt.datetime(2024, 7, 12, 13, 59, 27)},
        {"openid": "missing"},
    ])
    # Each condition twice: as written (compared against a bound computed from
    # as-of) and through `+ 0` (the exact epoch arithmetic); both must agree.
    rules, expected = [], {}
    for fn, field, cases in (("days_since", "subscribe_time", ELAPSED_CASES),
                             ("hours_since", "last_active_at", HOUR_CASES)):
        for i, (cond, holders) in enumerate(cases):
            for form, call in (("direct", f"{fn}({field})"), ("arith", f"({fn}({field}) + 0)")):
                name = f"{fn} {i} {form}"
                rules.append(f'tag "{name}" when {cond.format(f=call)}')
                expected[name] = holders
    rules += [
        'tag "const" when days_since(datetime("2024-07-01T14:00:00")) == 10 and hours_since(now()) == 0',
        'tag "shifted" when subscribe_time + 90d <= now()',
        'tag "past bound" when days_since(subscribe_time) < 1000000000',  # beyond the datetime range
    ]
    expected.update({"const": {"exact", "short", "tomorrow", "missing"}, "shifted": {"exact"},
                     "past bound": {"exact", "short", "tomorrow"}})
    assert store.tags("\n".join(rules), as_of) == expected


def test_julianday_would_be_wrong_here():
    """The hours_since case above really is a julianday trap (so the test has teeth)."""
    import sqlite3

    con = sqlite3.connect(":memory:")
    (hours,) = con.execute("SELECT CAST((julianday('2024-07-12 13:59:27') - julianday('2024-04-02 09:59:27')) * 24"
                           " AS INTEGER)").fetchone()
    assert hours == 2427


# -- missing values and two-valued logic ------------------------------------------------------------

def test_missing_values_are_false_and_not_is_two_valued(store):
    rules = """
    tag "not in" when city not in ["北京", "上海"]
    tag "not (in)" when not (city in ["北京", "上海"])
    tag "in" when city in ["北京"]
    tag "old" when age >= 40
    tag "not old" when not (age >= 40)
    tag "not both" when not (age >= 40 and city == "北京")
    tag "no age" when age is missing
    tag "subscribed" when subscribed
    tag "not subscribed" when not subscribed
    tag "sub false" when subscribed == false
    tag "has x" when contains(remark, "x")
    tag "no x" when not contains(remark, "x")
    tag "between" when age between 18 and 40
    tag "not between" when not (age between 18 and 40)
    tag "coalesce" when coalesce(age, 0) < 18
    tag "in fields" when "北京" in [city, province]
    tag "not in fields" when "北京" not in [city, province]
    """
    store.insert("followers", [
        {"openid": "bj", "city": "北京", "age": 40, "subscribed": True, "remark": "x", "province": "北京"},
        {"openid": "sh", "city": "上海", "age": 17, "subscribed": False, "remark": "y"},
        {"openid": "gz", "city": "广州", "age": 18},
        {"openid": "blank"},
    ])
    assert store.tags(rules) == {
        "not in": {"gz"},
        "not (in)": {"gz", "blank"},
        "in": {"bj"},
        "old": {"bj"},
        "not old": {"sh", "gz", "blank"},
        "not both": {"sh", "gz", "blank"},
        "no age": {"blank"},
        "subscribed": {"bj"},
        "not subscribed": {"sh", "gz", "blank"},
        "sub false": {"sh"},
        "has x": {"bj"},
        "no x": {"sh", "gz", "blank"},
        "between": {"bj", "gz"},
        "not between": {"sh", "blank"},
        "coalesce": {"sh", "blank"},
        # a missing item matches nothing, and does not make `not in` unknown
        "in fields": {"bj"},
        "not in fields": {"sh", "gz", "blank"},
    }


def test_empty_sources_give_zero_counts_and_missing_aggregates(store):
    rules = """
    tag "zero" when count(orders) == 0 and sum(orders.amount) == 0 and not exists(events)
    tag "missing" when max(orders.amount) is missing and avg(orders.amount) is missing and last(events.type) is missing
    tag "not max" when not (max(orders.amount) > 0)
    """
    store.insert("followers", followers("empty", "buyer"))
    store.insert("orders", [{"openid": "buyer", "created_at": "2024-05-01 00:00:00", "amount": Decimal("1.00")}])
    assert store.tags(rules) == {"zero": {"empty"}, "missing": {"empty"}, "not max": {"empty"}}


# -- strings ------------------------------------------------------------------------------------------

USER_COLLATION = {
    "sqlite": "NOCASE",
    "postgresql": "tagdsl_ci",  # a nondeterministic, case-insensitive ICU collation (created below)
    "mysql": "utf8mb4_general_ci",
}


def _user_tables_with_case_insensitive_strings(store: Store) -> None:
    """Recreate followers and events as a user's tables might be: string
    columns with a case-insensitive collation."""
    if store.kind == "postgresql":
        store.execute("CREATE COLLATION tagdsl_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
    md = sa.MetaData()
    collation = USER_COLLATION[store.kind]
    for table in (store.tables.followers, store.tables.sources["events"]):
        cols = [sa.Column(c.name, sa.String(255, collation=collation) if isinstance(c.type, sa.String) else c.type,
                          primary_key=c.primary_key) for c in table.columns]
        sa.Table(table.name, md, *cols)
        with store.engine.begin() as conn:
            table.drop(conn)
    md.create_all(store.engine)


def test_strings_compare_by_code_point_on_case_insensitive_columns(store):
    _user_tables_with_case_insensitive_strings(store)
    rules = """
    tag "VIP" when remark == "VIP"
    tag "not VIP" when remark != "VIP"
    tag "in" when remark in ["VIP", "x"]
    tag "before a" when remark < "a"
    tag "has IP" when contains(remark, "IP")
    tag "starts V" when starts_with(remark, "V")
    tag "city order" when city < "北京"
    tag "max type" when max(events.type) == "b"
    tag "min type" when min(events.type) == "B"
    """
    store.insert("followers", [
        {"openid": "exact", "remark": "VIP", "city": "上海"},  # 上 U+4E0A < 北 U+5317
        {"openid": "lower", "remark": "vip", "city": "北京"},
        {"openid": "space", "remark": "VIP ", "city": "广州"},
        {"openid": "zed", "remark": "Zed"},
    ])
    store.insert("events", [
        {"openid": "exact", "occurred_at": "2024-05-01 00:00:00", "type": t} for t in ("a", "b", "B")
    ])
    assert store.tags(rules) == {
        "VIP": {"exact"},
        "not VIP": {"lower", "space", "zed"},
        "in": {"exact"},
        # code points: 'V' and 'Z' (upper case) sort before 'a'
        "before a": {"exact", "space", "zed"},
        "has IP": {"exact", "space"},
        "starts V": {"exact", "space"},
        "city order": {"exact"},
        "max type": {"exact"},
        "min type": {"exact"},
    }


def test_contains_and_starts_with_treat_like_wildcards_literally(store):
    rules = """
    tag "percent" when contains(remark, "%")
    tag "underscore" when starts_with(remark, "a_")
    tag "backslash" when contains(remark, "\\\\")
    tag "empty" when starts_with(remark, "")
    """
    store.insert("followers", [
        {"openid": "pct", "remark": "100%"},
        {"openid": "plain", "remark": "abc"},
        {"openid": "under", "remark": "a_c"},
        {"openid": "slash", "remark": "C:\\dir"},
        {"openid": "empty", "remark": ""},
        {"openid": "null"},
    ])
    assert store.tags(rules) == {
        "percent": {"pct"},
        "underscore": {"under"},
        "backslash": {"slash"},
        "empty": {"pct", "plain", "under", "slash", "empty"},
    }


def test_events_key_column_reserved_word(store):
    rules = """
    tag "menu" when exists(events where type == "CLICK" and key == "menu_1")
    tag "last key" when last(events.key) == "k2"
    tag "keys" when count(events where key in ["k1", "k2"]) == 2
    """
    store.insert("followers", followers("u1", "u2"))
    store.insert("events", [
        {"openid": "u1", "occurred_at": "2024-05-01 10:00:00", "type": "CLICK", "key": "menu_1"},
        {"openid": "u1", "occurred_at": "2024-05-02 10:00:00", "type": "VIEW", "key": "k2"},
        {"openid": "u2", "occurred_at": "2024-05-01 10:00:00", "type": "CLICK", "key": "k1"},
        {"openid": "u2", "occurred_at": "2024-05-01 11:00:00", "type": "CLICK", "key": "k2"},
    ])
    assert store.tags(rules) == {"menu": {"u1"}, "last key": {"u1", "u2"}, "keys": {"u2"}}


# -- last / first -----------------------------------------------------------------------------------------

def test_last_and_first_ties_and_missing_values(store):
    rules = """
    tag "last b" when last(orders.category) == "b"
    tag "first b" when first(orders.category) == "b"
    tag "last missing" when exists(orders) and last(orders.category) is missing
    tag "last amount 20" when last(orders.amount) == 20
    tag "last promo" when last(orders.promo)
    tag "last where" when last(orders.category where amount < 15) == "a"
    tag "last in window" when last(orders.category within 10d) == "old"
    tag "latest order" when max(orders.created_at) == datetime("2024-05-20T08:00:00")
    tag "12 days" when days_since(max(orders.created_at)) == 12
    tag "12 days arith" when days_since(max(orders.created_at)) + 0 == 12
    tag "7.5 days" when hours_since(last(orders.created_at)) == 180
    """
    t_last, t_first = "2024-05-20 08:00:00", "2024-01-01 00:00:00"
    store.insert("followers", followers("ties", "nulls", "window"))
    store.insert("orders", [
        # ties at the latest time: 'b' > 'a' > missing; at the earliest: 'b' beats missing
        {"openid": "ties", "created_at": t_last, "category": "a", "amount": Decimal("10.00"), "promo": False},
        {"openid": "ties", "created_at": t_last, "category": "b", "amount": Decimal("20.00"), "promo": True},
        {"openid": "ties", "created_at": "2024-05-20T08:00:00", "category": None, "amount": None, "promo": None},
        {"openid": "ties", "created_at": t_first, "category": None},
        {"openid": "ties", "created_at": t_first, "category": "b"},
        {"openid": "ties", "created_at": "2024-03-01 00:00:00", "category": "z"},
        # the latest row has no category: last is missing (not an earlier value)
        {"openid": "nulls", "created_at": "2024-05-01 00:00:00", "category": "b"},
        {"openid": "nulls", "created_at": t_last, "category": None},
        {"openid": "nulls", "created_at": "2024-06-02 00:00:00", "category": "b"},  # after as-of
        # within 10d only the older of these two is before as-of
        {"openid": "window", "created_at": "2024-05-25 00:00:00", "category": "old"},
        {"openid": "window", "created_at": "2024-06-01 12:00:01", "category": "new"},
    ])
    assert store.tags(rules) == {
        "last b": {"ties"},
        "first b": {"ties", "nulls"},
        "last missing": {"nulls"},
        "last amount 20": {"ties"},
        "last promo": {"ties"},
        "last where": {"ties"},
        "last in window": {"window"},
        "latest order": {"ties", "nulls"},
        "12 days": {"ties", "nulls"},  # 2024-05-20 08:00 to 06-01 12:00: 12 days 4 hours
        "12 days arith": {"ties", "nulls"},
        "7.5 days": {"window"},  # 2024-05-25 00:00 to 06-01 12:00
    }


def test_last_and_first_of_the_time_column_take_one_pass(store):
    # last(t) of the source's own time column is the greatest time seen: the
    # statement reads orders once (no second pass for the value at that time).
    rules = """
    tag "last 12d" when days_since(last(orders.created_at)) == 12
    tag "first where" when first(orders.created_at where category == "a") == datetime("2024-01-01T00:00:00")
    tag "none in 5d" when exists(orders) and last(orders.created_at within 5d) is missing
    tag "same as max" when last(orders.created_at) == max(orders.created_at)
    """
    store.insert("followers", followers("p", "q", "r"))
    store.insert("orders", [
        {"openid": "p", "created_at": "2024-05-20 08:00:00", "category": "b"},
        {"openid": "p", "created_at": "2024-01-01 00:00:00", "category": "a"},
        {"openid": "p", "created_at": "2024-06-03 00:00:00", "category": "a"},  # after as-of: never seen
        {"openid": "q", "created_at": None, "category": "a"},  # no time: never seen
        {"openid": "q", "created_at": "2024-05-31 00:00:00", "category": "b"},
    ])
    assert store.tags(rules) == {
        "last 12d": {"p"},
        "first where": {"p"},
        "none in 5d": {"p"},
        "same as max": {"p", "q"},
    }
    for dialect in ("sqlite", "postgresql", "mysql"):
        text = sql_text(store.compiler(rules).desired_memberships(AS_OF), dialect)
        assert "last_orders" not in text and text.count("FROM orders") == 1, dialect


# -- tags: groups and references ----------------------------------------------------------------------

def test_exclusive_groups_are_first_match(store):
    rules = """
    group "年龄段" exclusive {
      tag "40+" when age >= 40
      tag "成人" when age >= 18
      tag "未知" when age is missing or city == "x"
    }
    group "plain" {
      tag "A" when age >= 18
      tag "B" when age >= 40
    }
    tag "adult ref" when tag("成人")
    tag "not unknown" when not tag("未知")
    """
    store.insert("followers", [
        {"openid": "old", "age": 50, "city": "x"},
        {"openid": "adult", "age": 20},
        {"openid": "kid", "age": 10, "city": "x"},
        {"openid": "blank"},
        {"openid": "kid2", "age": 10},
    ])
    assert store.tags(rules) == {
        "40+": {"old"},
        "成人": {"adult"},
        "未知": {"kid", "blank"},
        "A": {"old", "adult"},
        "B": {"old"},
        "adult ref": {"adult"},
        "not unknown": {"old", "adult", "kid2"},
    }
    # A subset still follows first-match (the later members are irrelevant to it).
    assert store.tags(rules, only=["成人"]) == {"成人": {"adult"}}


def test_tag_references_to_computed_and_manual_tags(store):
    rules = """
    tag "M" manual
    tag "VIP" when sum(orders.amount) >= 100
    tag "R" when tag("M") or tag("VIP")
    tag "notM" when not tag("M") and tag("R") == false
    """
    store.insert("followers", followers("manual", "imported", "ruled", "buyer", "other", "nobody"))
    now = dt.datetime(2024, 5, 1)
    store.insert("memberships", [
        {"openid": "manual", "tag": "M", "source": "manual", "assigned_at": now},
        {"openid": "imported", "tag": "M", "source": "import", "assigned_at": now},
        {"openid": "ruled", "tag": "M", "source": "rule", "assigned_at": now},
        {"openid": "other", "tag": "m", "source": "manual", "assigned_at": now},  # another tag
        {"openid": "ghost", "tag": "M", "source": "manual", "assigned_at": now},  # not a follower
    ])
    store.insert("orders", [{"openid": "buyer", "created_at": "2024-05-01 00:00:00", "amount": Decimal("100.00")}])
    assert store.tags(rules) == {
        "VIP": {"buyer"},
        "R": {"manual", "imported", "ruled", "buyer"},
        "notM": {"other", "nobody"},
    }


# -- statements other than desired memberships -------------------------------------------------------------

def test_priority_column_and_subset(store):
    rules = """
    tag "hi" when age >= 1 { priority 7 }
    tag "lo" when age >= 1
    tag "never" when age < 0
    """
    store.insert("followers", [{"openid": "a", "age": 3}, {"openid": "b"}])
    sc = store.compiler(rules)
    with store.engine.connect() as conn:
        rows = set(conn.execute(sc.desired_memberships(AS_OF)).all())
        subset = set(conn.execute(sc.desired_memberships(AS_OF, ["lo"])).all())
        keys = list(conn.execute(sc.desired_memberships(AS_OF, ["never"])).keys())
    assert rows == {("a", "hi", 7), ("a", "lo", 0)}
    assert subset == {("a", "lo", 0)}
    assert keys == ["openid", "tag", "priority"]
    with pytest.raises(SqlCompileError, match="unknown tag `nope`"):
        sc.desired_memberships(AS_OF, ["nope"])
    with pytest.raises(SqlCompileError, match="`M` is manual"):
        store.compiler('tag "M" manual').desired_memberships(AS_OF, ["M"])
    # Only manual tags: a valid statement with no rows.
    with store.engine.connect() as conn:
        assert conn.execute(store.compiler('tag "M" manual').desired_memberships(AS_OF)).all() == []


def test_audience_and_count_select(store):
    rules = """
    tag "M" manual
    tag "buyer" when exists(orders)
    audience "目标" = city in ["广州", "VIP"] or tag("buyer")
    """
    store.insert("followers", [
        {"openid": "gz", "city": "广州"},
        {"openid": "vip", "city": "VIP"},
        {"openid": "vip2", "city": "vip "},
        {"openid": "buyer", "city": "广州"},
        {"openid": "nocity1"},
        {"openid": "nocity2"},
    ])
    store.insert("orders", [{"openid": "nocity1", "created_at": "2024-05-01 00:00:00"},
                            {"openid": "buyer", "created_at": "2024-05-01 00:00:00"}])
    assert store.audience(rules, "目标") == {"gz", "vip", "buyer", "nocity1"}
    assert store.count(rules, "目标") == [{"total": 6, "count": 4}]
    by_city = sorted(store.count(rules, "目标", by="city"), key=lambda r: (r["by"] is not None, r["by"] or ""))
    assert by_city == [
        {"total": 2, "count": 1, "by": None},  # missing values are one group
        {"total": 1, "count": 1, "by": "VIP"},
        {"total": 1, "count": 0, "by": "vip "},  # not merged with 'VIP' on MySQL/MariaDB
        {"total": 2, "count": 2, "by": "广州"},
    ]
    # An expression condition, and a tag reference to a manual tag with no members.
    cond = ir.Not(ir.TagRef("M"))
    sc = store.compiler(rules)
    with store.engine.connect() as conn:
        assert len(conn.execute(sc.audience_select(cond, AS_OF)).all()) == 6
    with pytest.raises(SqlCompileError, match="unknown audience"):
        sc.audience_select("nope", AS_OF)
    with pytest.raises(SqlCompileError, match="unknown follower field `nope`"):
        sc.count_select("目标", AS_OF, by="nope")


def test_configured_names_are_used(store):
    """Another id column, table and column names, a decimal scale of 3, a source without time."""
    config = Config(**{
        "project": {"platform": "none"},
        "followers": {"table": "members", "id": "external_userid",
                      "fields": {"城市": {"type": "string", "column": "city_name"}}},
        "sources": {"points": {"table": "point_log", "follower": "uid",
                               "fields": {"delta": {"type": "decimal", "scale": 3}}}},
    })
    tables = build_tables(config)
    tables.metadata.create_all(store.engine)
    with store.engine.begin() as conn:
        conn.execute(tables.followers.insert(), [{"external_userid": "w1", "city_name": "深圳"},
                                                 {"external_userid": "w2", "city_name": None}])
        conn.execute(sa.text("INSERT INTO point_log (uid, delta) VALUES ('w1', '0.001'), ('w1', '0.002')"))
    ruleset = tagdsl.load_ruleset(config=config, texts={"t.tag": """
        tag "深" when 城市 == "深圳" and sum(points.delta) == 0.003 and last(points.delta) == 0.002
    """})
    sc = compile_sql(ruleset, config, tables)
    with store.engine.connect() as conn:
        rows = conn.execute(sc.desired_memberships(AS_OF)).mappings().all()
    assert [dict(r) for r in rows] == [{"openid": "w1", "tag": "深", "priority": 0}]


# -- SQL text ------------------------------------------------------------------------------------------------

GOLDEN_RULES = """
let 大额 = sum(orders.amount within 90d) >= 5000
tag "高价值" when 大额 and city not in ["北京", "上海"] { priority 5 }
group "生命周期" exclusive {
  tag "新客" when count(orders) == 1
  tag "老客" when count(orders) >= 2
}
tag "沉睡" when days_since(last_active_at) >= 30 and not exists(events within 30d)
tag "点菜单" when last(events.key where type == "CLICK") == "menu_1"
"""


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mysql"])
def test_golden_sql(dialect):
    ruleset = tagdsl.load_ruleset(config=CONFIG, texts={"golden.tag": GOLDEN_RULES})
    text = sql_text(compile_sql(ruleset, CONFIG).desired_memberships(AS_OF), dialect)
    path = GOLDEN / f"desired_memberships.{dialect}.sql"
    if os.environ.get("TAGDSL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path} differs (TAGDSL_UPDATE_GOLDEN=1 regenerates)"


def test_user_values_are_bound_parameters():
    ruleset = tagdsl.load_ruleset(config=CONFIG, texts={"t.tag": GOLDEN_RULES})
    stmt = compile_sql(ruleset, CONFIG).desired_memberships(AS_OF)
    for name in ("sqlite", "postgresql", "mysql"):
        from sqlalchemy.dialects import mysql, postgresql, sqlite

        dialect = {"sqlite": sqlite, "postgresql": postgresql, "mysql": mysql}[name].dialect()
        compiled = stmt.compile(dialect=dialect)
        sql = str(compiled)
        for value in ("北京", "menu_1", "CLICK", "高价值", "2024"):
            assert value not in sql, (name, value)
        params = set(map(str, compiled.params.values()))
        assert {"北京", "menu_1", "CLICK", "高价值"} <= params
        # 5000 meets a decimal sum: a scaled integer on SQLite, a decimal elsewhere
        assert ("500000" if name == "sqlite" else "5000") in params
        assert compiled.params["as_of"] == AS_OF
    # the readable text has them inline, and `key` quoted for MySQL
    shown = sql_text(stmt, "mysql")
    assert "'menu_1'" in shown and "events.`key`" in shown
    with pytest.raises(SqlCompileError, match="unknown SQL dialect"):
        sql_text(stmt, "oracle")


def test_per_follower_flags_are_computed_once():
    """PITFALLS: the per-follower CTE must be materialised (SQLite re-ran it per
    use otherwise) and read once (MariaDB materialises it once per reference)."""
    ruleset = tagdsl.load_ruleset(config=CONFIG, texts={"t.tag": GOLDEN_RULES})
    stmt = compile_sql(ruleset, CONFIG).desired_memberships(AS_OF)
    texts = {d: sql_text(stmt, d) for d in ("sqlite", "postgresql", "mysql")}
    assert "flags AS MATERIALIZED" in texts["sqlite"] and "flags AS MATERIALIZED" in texts["postgresql"]
    assert "MATERIALIZED" not in texts["mysql"] and "LIMIT 18446744073709551615 )" in texts["mysql"]
    for text in texts.values():
        assert text.count("FROM flags") == 1


def test_more_tags_than_one_mask_word(store):
    """63 tags fit in one BIGINT mask; 130 need three words."""
    rules = "\n".join(f'tag "t{i}" when age >= {i}' for i in range(130))
    rules += '\ngroup "g" exclusive {\n' + "\n".join(f'  tag "x{i}" when age >= {i}' for i in range(70, 0, -1)) + "\n}"
    store.insert("followers", [{"openid": "a", "age": 64}, {"openid": "b", "age": 129}, {"openid": "c"}])
    got = store.tags(rules)
    expected = {f"t{i}": {who for who, age in (("a", 64), ("b", 129)) if age >= i} for i in range(130)}
    expected.update({f"x{i}": set() for i in range(1, 71)})
    expected["x64"] = {"a"}  # first match from 70 down
    expected["x70"] = {"b"}
    assert got == expected
