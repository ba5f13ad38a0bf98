"""Named regression tests for disagreements the differential tests found.

Each runs the minimised example through the in-memory evaluator and every
configured database (tests/test_differential.check_agreement).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

import difftest as D
from dbs import BACKENDS, isolated_engine
from tagdsl.schema import build_tables
from test_differential import check_agreement


def follower(oid, **fields):
    base = {"city": None, "age": None, "score": None, "ratio": None, "vip": None, "signup": None,
            "last_active_at": None, "birthday": None, "gender": None}
    base.update(fields)
    return (oid, base, {"orders": [], "events": [], "notes": []}, frozenset())


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    with isolated_engine(request.param, tmp_path) as (engine, _url):
        tables = build_tables(D.DIFF_CONFIG)
        tables.metadata.create_all(engine)
        yield {request.param: (engine, tables)}


def test_compound_decimal_expression_is_grouped_when_rescaled(store):
    # Found by the differential campaign: on SQLite a decimal sum `100.00 + 142`
    # rescaled to the column's two places rendered as `100 + 142 * 100`
    # (101.42 instead of 242.00), so 177.39 was "between 242 and itself".
    text = ('tag "g0-0" when score between (100.00 + 142) and score\n'
            'tag "x" when score + 1 > 178 and score - 1 < 177 and (score * 2) == 354.78 and score + age > 229.38\n'
            'tag "y" when (score + 1) / 2 > 89 and (age - 60) * 2 < 0\n')
    population = [follower("o0010", age=52, score=Decimal("177.39")),
                  follower("o0011", age=70, score=Decimal("242.00"))]
    check_agreement(store, text, [], population)


def test_compound_integer_operand_of_a_decimal_subtraction_is_grouped(store):
    # Found by the 20,000-example campaign (round 6): on PostgreSQL and MariaDB
    # the integer `(0 + 1)` aligned to a decimal rendered bare, so
    # `0.01 - (0 + 1)` ran as `0.01 - 0 + 1` = 1.01 and `0.01 < …` held.
    text = ('tag "t" when true\n'
            'audience "a1" = 0.01 < (0.01 - (0 + 1))\n'
            'audience "a2" = score - (age + 1) == 9.50 and 2.5 * (age - 1) == 22.50 and score / (age - 8) > 9\n'
            'audience "a3" = -(age + 1) + 0.5 < -10 and 100.00 - (age - age) - (age + 0) == 90\n')
    population = [follower("o0000", age=10, score=Decimal("20.50")), follower("o0001")]
    check_agreement(store, text, ["a1", "a2", "a3"], population)


def test_percent_rank_of_a_value_that_is_always_zero_ties_everyone(store):
    # Found by the campaign (after the grouping fix): every SQL backend counted
    # 1 follower for `percent_rank(0 * (0 * gender)) == 0` where both tie at 0.
    text = ('tag "t0" when true\n'
            'audience "a0" = percent_rank((0 * (0 * gender))) == 0\n'
            'audience "a1" = quintile(0 * gender) == 1 and percent_rank(gender - gender) == 0\n'
            'tag "q1" when quintile(age + gender + 0) == 1\n'
            'tag "p0" when percent_rank(age * gender * 1) <= 0.2\n')
    # q1: quintile over (age + gender) puts o0001 (3) and o0000 (5) first;
    # flattened to `age, gender, 0` it ordered by age first.
    population = [follower("o0000", gender=0, age=5), follower("o0001", gender=1, age=2),
                  follower("o0002", gender=4, age=1), follower("o0003", gender=9, age=3),
                  follower("o0004", gender=3, age=4), follower("o0005", gender=2, age=6)]
    check_agreement(store, text, ["a0", "a1"], population)
