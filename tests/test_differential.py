"""Differential tests: the in-memory evaluator, SQLite, PostgreSQL and MariaDB
must give identical (openid, tag) sets and audience counts on random
well-typed rulesets over random populations (tests/difftest.py).

CI runs a bounded number of examples; a long campaign:
    TAGDSL_DIFF_EXAMPLES=20000 python -m pytest tests/test_differential.py -x
"""

from __future__ import annotations

import datetime as dt
import os

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Column, MetaData, String, Table, delete, insert

import difftest as D
from dbs import BACKENDS, backend_url, isolated_engine
from tagdsl import load_ruleset
from tagdsl.schema import build_tables

EXAMPLES = int(os.environ.get("TAGDSL_DIFF_EXAMPLES", "150"))


def _active_backends():
    return [b for b in BACKENDS if b == "sqlite" or backend_url(b)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One isolated database per configured backend, with the diff schema."""
    opened = {}
    stack = []
    for backend in _active_backends():
        cm = isolated_engine(backend, tmp_path_factory.mktemp(backend))
        engine, _url = cm.__enter__()
        stack.append(cm)
        tables = build_tables(D.DIFF_CONFIG)
        tables.metadata.create_all(engine)
        opened[backend] = (engine, tables)
    yield opened
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def _sqlite_text_tables(tables):
    """The same tables with datetime columns as plain text, to store
    timestamps the way many apps do ('YYYY-MM-DD HH:MM:SS')."""
    md = MetaData()
    out = {}
    for t in [tables.followers, *tables.sources.values()]:
        cols = [Column(c.name, String if c.type.python_type is dt.datetime else c.type) for c in t.columns]
        out[t.name] = Table(t.name, md, *cols)
    return out


def _ts_text(value: dt.datetime | None, style: int) -> str | None:
    if value is None:
        return None
    sep = "T" if style == 1 else " "
    text = value.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text


def load_population(engine, tables, population, backend, style):
    cfg = D.DIFF_CONFIG
    target = {t.name: t for t in [tables.followers, *tables.sources.values()]}
    if backend == "sqlite":
        target = _sqlite_text_tables(tables)
    with engine.begin() as conn:
        for t in [tables.memberships, tables.followers, *tables.sources.values()]:
            conn.execute(delete(t))
        frows, srows, mrows = [], {name: [] for name in cfg.sources}, []
        for oid, fields, rows, manual in population:
            row = {cfg.followers.id: oid}
            for name, value in fields.items():
                spec = cfg.followers.fields[name]
                if backend == "sqlite" and isinstance(value, dt.datetime):
                    value = _ts_text(value, style)
                row[spec.column or name] = value
            frows.append(row)
            for sname, items in rows.items():
                src = cfg.sources[sname]
                for item in items:
                    r = {src.follower: oid}
                    for k, v in item.items():
                        if backend == "sqlite" and isinstance(v, dt.datetime):
                            v = _ts_text(v, style)
                        r[k] = v
                    srows[sname].append(r)
            for tag in manual:
                mrows.append({"openid": oid, "tag": tag, "source": "manual", "assigned_at": D.AS_OF})
        conn.execute(insert(target[tables.followers.name]), frows)
        for sname, items in srows.items():
            if items:
                conn.execute(insert(target[cfg.sources[sname].table]), items)
        if mrows:
            conn.execute(insert(tables.memberships), mrows)


def python_results(ruleset, population, audiences):
    from tagdsl.compile.python import Follower, compile_python

    ev = compile_python(ruleset, D.DIFF_CONFIG)
    pairs, counts = set(), {a: 0 for a in audiences}
    followers = [Follower(oid, fields, rows, manual) for oid, fields, rows, manual in population]
    # The population API: ranking functions rank over every follower.
    for oid, tags in ev.tags_many(followers, D.AS_OF).items():
        pairs |= {(oid, t) for t in tags}
    for f in followers:
        for a in audiences:
            counts[a] += bool(ev.audience(a, f, D.AS_OF))
    return pairs, counts


def sql_results(engine, tables, ruleset, audiences):
    from tagdsl.compile.sql import compile_sql

    compiler = compile_sql(ruleset, D.DIFF_CONFIG, tables)
    with engine.connect() as conn:
        pairs = {(r.openid, r.tag) for r in conn.execute(compiler.desired_memberships(D.AS_OF))}
        counts = {}
        for a in audiences:
            row = conn.execute(compiler.count_select(a, D.AS_OF)).one()
            counts[a] = int(row.count or 0)
            # preview's per-follower shape (LATERAL, PostgreSQL) must count the same
            plan = compiler.per_follower_count(a, D.AS_OF) if conn.dialect.name == "postgresql" else None
            if plan is not None:
                per = conn.execute(plan.count).one()
                if (int(per.total), int(per.count or 0)) != (int(row.total), counts[a]):
                    counts[a] = ("per-follower shape", int(per.count or 0), "vs", counts[a])
            # the narrowed shape (sources aggregated for the narrowed followers; SQLite's preview)
            narrowed = compiler.narrowed_count(a, D.AS_OF)
            if narrowed is not None:
                per = conn.execute(narrowed.count).one()
                if (int(per.total), int(per.count or 0)) != (int(row.total), int(row.count or 0)):
                    counts[a] = ("narrowed shape", int(per.count or 0), "vs", counts[a])
    return pairs, counts


def describe(label, expected, actual):
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    return f"{label}: missing {missing[:10]} extra {extra[:10]}"


def check_agreement(stores, ruleset_text, audiences, population, style=0):
    ruleset = load_ruleset(texts={"diff.tag": ruleset_text}, config=D.DIFF_CONFIG)
    want_pairs, want_counts = python_results(ruleset, population, audiences)
    problems = []
    for backend, (engine, tables) in stores.items():
        load_population(engine, tables, population, backend, style)
        pairs, counts = sql_results(engine, tables, ruleset, audiences)
        if pairs != want_pairs:
            problems.append(describe(f"{backend} tags vs python", want_pairs, pairs))
        if counts != want_counts:
            problems.append(f"{backend} audience counts {counts} != python {want_counts}")
    assert not problems, "\n".join(problems) + "\n--- ruleset ---\n" + ruleset_text


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("TAGDSL_DIFF_RANDOM") is None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(D.rulesets(), D.populations(), D.st.integers(0, 1))
def test_all_evaluators_agree(stores, ruleset, population, style):
    text, audiences = ruleset
    check_agreement(stores, text, audiences, population, style)
