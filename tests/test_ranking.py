"""Ranking functions quintile() and percent_rank(): the checker's rules, the
in-memory evaluator's population pass, the SQL window functions on SQLite,
PostgreSQL and MariaDB (tests/dbs.py), the test runner and explain.

Expected values are worked out by hand from the definitions in
docs/language.md (Ranking): quintile = NTILE(5) over (value, follower id),
percent_rank = (rank - 1) / (n - 1) with ties sharing the lowest rank."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dbs import BACKENDS, isolated_engine
from tagdsl import TagDSLError, analyze, load_ruleset
from tagdsl.compile.python import Follower, compile_python, rank_values
from tagdsl.compile.sql import compile_sql
from tagdsl.config import Config
from tagdsl.schema import build_tables

CONFIG = Config()
AS_OF = dt.datetime(2026, 6, 1, 12, 0, 0)
DAY = dt.timedelta(days=1)

# age -> hand-computed ranks. Followers are named so that id order differs from
# insertion order. Population for `quintile(age)`: the 7 followers with an age.
#   sorted by (age, id): a1(10) b2(20) c3(30) d4(30) e5(40) f6(40) g7(50) ; h8 missing
#   NTILE(5) over 7 rows: sizes 2 2 1 1 1
AGES = {"d4": 30, "a1": 10, "h8": None, "g7": 50, "c3": 30, "b2": 20, "f6": 40, "e5": 40}
QUINTILE_AGE = {"a1": 1, "b2": 1, "c3": 2, "d4": 2, "e5": 3, "f6": 4, "g7": 5, "h8": None}
# percent_rank(age): n = 7; ranks 1 2 3 3 5 5 7 -> (r-1)/6
PCT_AGE = {"a1": 0.0, "b2": 1 / 6, "c3": 2 / 6, "d4": 2 / 6, "e5": 4 / 6, "f6": 4 / 6, "g7": 1.0, "h8": None}
# Restricted to buyers (b2, d4, f6, g7 have orders): sum(orders.amount) where exists(orders)
#   b2: 1666.67 + 1666.67 + 1666.66 = 5000.00   d4: 5000.00   f6: 0.10   g7: 99.99
#   sorted by (sum, id): f6 0.10, g7 99.99, b2 5000.00, d4 5000.00 -> NTILE(5) of 4: 1 2 3 4
#   percent_rank: n = 4, ranks 1 2 3 3 -> 0, 1/3, 2/3, 2/3 (exact decimal tie, also on SQLite)
ORDERS = {
    "b2": [Decimal("1666.67"), Decimal("1666.67"), Decimal("1666.66")],
    "d4": [Decimal("5000.00")],
    "f6": [Decimal("0.10")],
    "g7": [Decimal("99.99")],
}
QUINTILE_SPEND = {"f6": 1, "g7": 2, "b2": 3, "d4": 4}
PCT_SPEND = {"f6": 0.0, "g7": 1 / 3, "b2": 2 / 3, "d4": 2 / 3}
# Datetimes (last_active_at = AS_OF - k days, some sharing an instant):
#   a1 -1d, b2 -3d, c3 -3d, d4 missing, others -2d, -5d, -4d, -1d
ACTIVE = {"a1": 1, "b2": 3, "c3": 3, "d4": None, "e5": 2, "f6": 5, "g7": 4, "h8": 1}
#   population 7, ascending by instant: f6(-5d) g7(-4d) b2,c3(-3d) e5(-2d) a1,h8(-1d)
#   NTILE: f6 1, g7 1, b2 2, c3 2, e5 3, a1 4, h8 5 ; percent_rank: ranks 1 2 3 3 5 6 6 -> /6
QUINTILE_ACTIVE = {"f6": 1, "g7": 1, "b2": 2, "c3": 2, "e5": 3, "a1": 4, "h8": 5, "d4": None}
PCT_ACTIVE = {"f6": 0.0, "g7": 1 / 6, "b2": 2 / 6, "c3": 2 / 6, "e5": 4 / 6, "a1": 5 / 6, "h8": 5 / 6, "d4": None}

RULES = '''
audience "q_age" = quintile(age) >= 1
audience "p_age" = percent_rank(age) >= 0
audience "q_spend" = quintile(sum(orders.amount) where exists(orders)) >= 1
audience "p_spend" = percent_rank(sum(orders.amount) where exists(orders)) >= 0
audience "q_active" = quintile(last_active_at) >= 1
audience "p_active" = percent_rank(last_active_at) >= 0
'''
EXPECTED = {
    "q_age": QUINTILE_AGE, "p_age": PCT_AGE, "q_spend": QUINTILE_SPEND, "p_spend": PCT_SPEND,
    "q_active": QUINTILE_ACTIVE, "p_active": PCT_ACTIVE,
}


def population() -> list[Follower]:
    out = []
    for fid, age in AGES.items():
        active = ACTIVE[fid]
        rows = [{"created_at": AS_OF - (i + 1) * DAY, "amount": a, "category": None, "promo": None}
                for i, a in enumerate(ORDERS.get(fid, []))]
        out.append(Follower(fid, {"age": age, "last_active_at": None if active is None else AS_OF - active * DAY},
                            {"orders": rows, "events": []}))
    return out


def ranking_nodes(ruleset):
    """audience name -> its Rank node (the left side of `… >= k`)."""
    return {name: a.condition.left for name, a in ruleset.audiences.items()}


def errors(text: str) -> list:
    analysis = analyze(None, CONFIG, texts={"r.tag": text})
    return [(d.code, d.message, d.span.line, d.span.column) for d in analysis.diagnostics if d.code < "TD4"]


# -- the rule of NTILE / PERCENT_RANK ------------------------------------------------------------


@pytest.mark.parametrize("n, sizes", [(1, [1]), (3, [1, 1, 1]), (5, [1] * 5), (7, [2, 2, 1, 1, 1]),
                                      (12, [3, 3, 2, 2, 2]), (13, [3, 3, 3, 2, 2])])
def test_quintile_bucket_sizes_differ_by_at_most_one_earlier_larger(n, sizes):
    ranks = rank_values("quintile", [(i, f"id{i:02d}") for i in range(n)])
    counts = [sum(1 for r in ranks.values() if r == b) for b in range(1, len(sizes) + 1)]
    assert counts == sizes
    assert sorted(ranks.values()) == [r for _, r in sorted((i, ranks[f"id{i:02d}"]) for i in range(n))]


def test_ties_split_by_follower_id_in_code_point_order():
    # Five equal values: one per bucket, in id order ("B" < "a" < "b" by code point).
    ranks = rank_values("quintile", [(7, "b"), (7, "a"), (7, "B"), (7, "c"), (7, "Z")])
    assert ranks == {"B": 1, "Z": 2, "a": 3, "b": 4, "c": 5}
    assert rank_values("percent_rank", [(7, "b"), (7, "a")]) == {"a": 0.0, "b": 0.0}
    assert rank_values("percent_rank", [(3, "x")]) == {"x": 0.0}


# -- the checker ---------------------------------------------------------------------------------


def test_ranking_types():
    rs = load_ruleset(texts={"r.tag": 'tag "a" when quintile(age) == 5 and percent_rank(last_active_at) > 0.5'},
                      config=CONFIG)
    q, p = rs.tags["a"].condition.items
    assert (q.left.func, str(q.left.type)) == ("quintile", "integer")
    assert (p.left.func, str(p.left.type)) == ("percent_rank", "float")


@pytest.mark.parametrize("text, code, fragment", [
    ('tag "a" when quintile(city) == 1', "TD301", "quintile() ranks numbers, dates or datetimes, not a string"),
    ('tag "a" when quintile(age, age) == 1', "TD207", "quintile() takes 1 argument, got 2"),
    ('tag "a" when quintile(count(orders) within 30d) == 1', "TD207", "`within` belongs to aggregates"),
    ('tag "a" when quintile(quintile(age)) == 1', "TD209", "quintile() cannot be used inside quintile()"),
    ('tag "a" when percent_rank(age where quintile(age) > 2) > 0', "TD209",
     "quintile() cannot be used inside percent_rank()"),
    ('tag "a" when count(orders where quintile(age) > 2) > 0', "TD209", "cannot be used inside an aggregate"),
    ('tag "b" when age > 3\ntag "a" when quintile(age where tag("b")) > 2', "TD207",
     "cannot read the computed tag `b`"),
    ('tag "a" when quintile(age where age) > 2', "TD304", "a condition must be true or false"),
])
def test_ranking_errors(text, code, fragment):
    found = errors(text)
    assert [c for c, *_ in found] == [code], found
    assert fragment in found[0][1]


def test_manual_tag_and_let_are_allowed():
    text = '''
    tag "VIP" manual
    let spend = sum(orders.amount within 365d)
    tag "top" when quintile(spend where tag("VIP")) == 5
    '''
    assert errors(text) == []


# -- the in-memory evaluator ---------------------------------------------------------------------


def test_evaluator_hand_checked_ranks():
    rs = load_ruleset(texts={"r.tag": RULES}, config=CONFIG)
    ev = compile_python(rs, CONFIG)
    followers = population()
    ev.prepare(followers, AS_OF)
    for name, node in ranking_nodes(rs).items():
        got = {f.id: ev.value(node, f, AS_OF) for f in followers}
        want = {fid: EXPECTED[name].get(fid) for fid in AGES}
        assert got == want, name


def test_tags_many_prepares_the_population_and_single_calls_refuse():
    rs = load_ruleset(texts={"r.tag": 'tag "top" when quintile(age) == 5\ntag "low" when percent_rank(age) < 0.2'},
                      config=CONFIG)
    ev = compile_python(rs, CONFIG)
    followers = population()
    with pytest.raises(TagDSLError, match=r"quintile\(\) needs the whole population"):
        ev.tags(followers[0], AS_OF)
    tags = ev.tags_many(followers, AS_OF)
    assert {fid for fid, t in tags.items() if "top" in t} == {"g7"}
    assert {fid for fid, t in tags.items() if "low" in t} == {"a1", "b2"}  # 0 and 1/6
    assert tags["h8"] == set()  # missing age: outside the population, both comparisons false
    with pytest.raises(TagDSLError, match="prepared as of"):
        ev.tags(followers[0], AS_OF + DAY)
    stranger = Follower("zz", {"age": 99}, {})
    with pytest.raises(TagDSLError, match="follower zz is not in the population"):
        ev.tags(stranger, AS_OF)


def test_explain_shows_the_rank_and_its_input():
    rs = load_ruleset(texts={"r.tag": 'tag "top" when quintile(age) == 5'}, config=CONFIG)
    ev = compile_python(rs, CONFIG)
    followers = population()
    ev.prepare(followers, AS_OF)
    text = ev.explain(followers[3], AS_OF).render()  # g7
    assert "quintile(age) = 5 == 5 ✓" in text
    assert "age = 50" in text


# -- SQL: SQLite, PostgreSQL, MariaDB ----------------------------------------------------------------


def load_store(engine, followers):
    tables = build_tables(CONFIG)
    tables.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(tables.followers),
                     [{"openid": f.id, "age": f.fields["age"], "last_active_at": f.fields["last_active_at"]}
                      for f in followers])
        conn.execute(sa.insert(tables.sources["orders"]),
                     [{"openid": f.id, "created_at": r["created_at"], "amount": r["amount"]}
                      for f in followers for r in f.rows["orders"]])
    return tables


@pytest.mark.parametrize("backend", BACKENDS)
def test_sql_hand_checked_ranks(backend, tmp_path):
    rs = load_ruleset(texts={"r.tag": RULES}, config=CONFIG)
    nodes = ranking_nodes(rs)
    names = list(nodes)
    with isolated_engine(backend, tmp_path) as (engine, _url):
        tables = load_store(engine, population())
        compiler = compile_sql(rs, CONFIG, tables)
        with engine.connect() as conn:
            for fid in AGES:
                row = conn.execute(compiler.rank_select([nodes[n] for n in names], AS_OF, fid)).one()
                for name, value in zip(names, row):
                    want = EXPECTED[name].get(fid)
                    if want is None or name.startswith("q"):
                        assert value == want, (name, fid)
                    else:
                        assert float(value) == want, (name, fid)  # PERCENT_RANK is a double everywhere
            # Audience membership: exactly the population of each ranking.
            for name in names:
                got = {r.openid for r in conn.execute(compiler.audience_select(name, AS_OF))}
                assert got == {fid for fid, v in EXPECTED[name].items() if v is not None}, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_sql_agrees_with_memory_on_tags(backend, tmp_path):
    text = '''
    let buyer = exists(orders)
    group "seg" exclusive {
      tag "top" when quintile(sum(orders.amount) where buyer) >= 4
      tag "mid" when percent_rank(sum(orders.amount) where buyer) > 0.3
      tag "old" when quintile(last_active_at) <= 2 and age > 15
    }
    tag "n<5" when quintile(age where age >= 40) == 3
    '''
    rs = load_ruleset(texts={"r.tag": text}, config=CONFIG)
    followers = population()
    want = {(fid, t) for fid, tags in compile_python(rs, CONFIG).tags_many(followers, AS_OF).items() for t in tags}
    # by hand: top = d4 (4); mid = b2 (2/3; g7 at 1/3 too); old: quintile(active) <= 2 -> f6 g7 b2 c3, age > 15
    # and not already in the group: g7 (g7 is mid), f6 (40), b2 (mid), c3 (30) -> f6, c3
    # n<5: ages >= 40: e5 40, f6 40, g7 50 -> NTILE of 3: 1 2 3 -> g7
    assert want == {("d4", "top"), ("b2", "mid"), ("g7", "mid"), ("f6", "old"), ("c3", "old"), ("g7", "n<5")}
    with isolated_engine(backend, tmp_path) as (engine, _url):
        tables = load_store(engine, followers)
        with engine.connect() as conn:
            got = {(r.openid, r.tag) for r in conn.execute(compile_sql(rs, CONFIG, tables).desired_memberships(AS_OF))}
    assert got == want


# -- the test runner and explain from a store ------------------------------------------------------------


TAGTEST = '''
as_of datetime("2026-06-01T12:00:00")
follower "a" { age = 10
  expect not tag "top" }
follower "b" { age = 20
  expect tag "top" }
expect count tag "top" == 1

as_of datetime("2026-06-01T12:00:00")
follower "c" { age = 30
  expect tag "top" }
'''


@pytest.mark.parametrize("backend", [None, "sqlite"])
def test_tagtest_sections_are_separate_populations(backend, tmp_path):
    from tagdsl.testing import run_tests

    kwargs = {}
    if backend is not None:
        from runtime.testing_db import DatabaseBackend

        kwargs["backend"] = DatabaseBackend(f"sqlite:///{tmp_path / 'x.db'}")
    report = run_tests(config=CONFIG, rule_texts={"r.tag": 'tag "top" when quintile(age) == 2 or percent_rank(age) == 0 and age > 25'},
                       test_texts={"r.tagtest": TAGTEST}, **kwargs)
    # Section 1: a -> 1, b -> 2 ("top"). Section 2 alone: c -> quintile 1, percent_rank 0 and age > 25.
    assert [c.failures for c in report.cases] == [[], [], [], []]


def test_engine_explain_reads_ranks_from_the_database(tmp_path):
    from runtime.engine import Engine

    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = sa.create_engine(url)
    load_store(engine, population())
    engine.dispose()
    rs = load_ruleset(texts={"r.tag": 'tag "top" when quintile(age) == 5\naudience "p" = percent_rank(age) > 0.5'},
                      config=CONFIG)
    with Engine(CONFIG, url) as eng:
        explained = eng.explain("g7", rs, as_of=AS_OF).explanation
        assert explained.holding == {"top"}
        assert "quintile(age) = 5 == 5 ✓" in explained.render()
        assert "percent_rank(age) = 1.0" in explained.render()
        assert eng.explain("h8", rs, as_of=AS_OF).explanation.holding == set()
