"""Differential testing: well-typed random rulesets and populations.

The strategies generate TagDSL *source text* by type-directed generation over
a schema richer than the default store (every field type, a source with an
integer field, a column named `key`), and populations full of edge cases:
missing values, empty sources, timestamps exactly on window edges and on the
as-of instant, rows after it, Unicode and padded strings, large and
fractional amounts. ``tests/test_differential.py`` runs every example through
the in-memory evaluator and every configured database and demands identical
(openid, tag) sets and audience counts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from hypothesis import strategies as st

from tagdsl.config import Config, FieldSpec, FieldType, FollowersSection, ProjectSection, SourceSection

AS_OF = dt.datetime(2026, 6, 18, 20, 0, 0)


def _f(kind: str, **kw) -> FieldSpec:
    return FieldSpec(type=FieldType(kind), **kw)


DIFF_CONFIG = Config(
    project=ProjectSection(platform="none"),
    followers=FollowersSection(
        table="fans", id="openid",
        fields={
            "city": _f("string"), "age": _f("integer"), "score": _f("decimal", scale=2),
            "ratio": _f("float"), "vip": _f("boolean"), "signup": _f("datetime"),
            "last_active_at": _f("datetime"), "birthday": _f("date"),
            "gender": _f("integer", column="sex"),
        },
    ),
    sources={
        "orders": SourceSection(table="shop_orders", follower="openid", time="created_at", fields={
            "amount": _f("decimal", scale=2), "qty": _f("integer"), "category": _f("string"), "promo": _f("boolean"),
        }),
        "events": SourceSection(table="wx_events", follower="openid", time="occurred_at", fields={
            "type": _f("string"), "key": _f("string"),
        }),
        # A source without a time column: `within` is not allowed on it.
        "notes": SourceSection(table="notes", follower="openid", fields={"label": _f("string"), "weight": _f("integer")}),
    },
)

FOLLOWER_FIELDS = {
    "string": ["city"], "integer": ["age", "gender"], "decimal": ["score"], "float": ["ratio"],
    "boolean": ["vip"], "datetime": ["signup", "last_active_at"], "date": ["birthday"],
}
SOURCE_FIELDS = {
    "orders": {"decimal": ["amount"], "integer": ["qty"], "string": ["category"], "boolean": ["promo"],
               "datetime": ["created_at"]},
    "events": {"string": ["type", "key"], "datetime": ["occurred_at"]},
    "notes": {"string": ["label"], "integer": ["weight"]},
}
TIMED = ("orders", "events")

CITIES = ["北京", "上海", "广州", "深圳", "VIP", "vip ", "vip", "Ünïcödé", "a'b", "东莞", ""]
CATEGORIES = ["护肤", "彩妆", "母婴", "食品", "服饰", "护肤 "]
EVENT_TYPES = ["subscribe", "scan", "menu_click", "text"]
EVENT_KEYS = ["1", "会员中心", "qrscene_storeA", "storeB", "", "%_\\"]
LABELS = ["a", "b", "A"]


def q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- expressions --------------------------------------------------------------------

NUMERIC = ("integer", "decimal", "float")


@dataclass
class Ctx:
    source: str | None = None  # inside an aggregate's `where`
    tags: list[str] = field(default_factory=list)  # tags that may be referenced (defined earlier)
    depth: int = 0
    ranking: bool = True  # quintile()/percent_rank() allowed (not inside one)


def _fields_of(ctx: Ctx, kind: str) -> list[str]:
    if ctx.source is None:
        return FOLLOWER_FIELDS.get(kind, [])
    return SOURCE_FIELDS[ctx.source].get(kind, [])


def _deeper(ctx: Ctx) -> Ctx:
    return Ctx(ctx.source, ctx.tags, ctx.depth + 1, ctx.ranking)


def literal(kind: str):
    if kind == "integer":
        return st.integers(-3, 400).map(str)
    if kind == "decimal":
        return st.sampled_from(["0.01", "0.6", "1.5", "99.99", "100.00", "1666.67", "5000.00", "0.10"])
    if kind == "float":
        return st.sampled_from(["0.25", "0.5", "0.6", "1.5"])  # decimals written; a float context converts
    if kind == "string":
        return st.sampled_from(CITIES + CATEGORIES + EVENT_KEYS).map(q)
    if kind == "boolean":
        return st.sampled_from(["true", "false"])
    if kind == "datetime":
        return st.sampled_from([
            'datetime("2026-06-01T00:00:00")', 'datetime("2026-03-20T20:00:00")', 'datetime("2026-06-18T20:00:00")',
            "now()", "now() - 90d", "now() - 30d", "now() - 12h",
        ])
    if kind == "date":
        return st.sampled_from(['date("2026-06-18")', 'date("1990-01-01")', 'date("2000-02-29")'])
    raise AssertionError(kind)


@st.composite
def expr(draw, kind: str, ctx: Ctx):
    """A well-typed expression of ``kind`` (float means: any number that may be a float)."""
    options = ["literal"]
    if _fields_of(ctx, kind):
        options += ["field"] * 3
    leaf_only = ctx.depth >= 3
    if not leaf_only:
        if kind == "boolean":
            options += ["compare"] * 4 + ["between", "in", "missing", "not", "andor", "strfunc"]
            if ctx.source is None:
                options += ["exists"]
                if ctx.tags:
                    options += ["tagref"]
                if ctx.ranking:
                    options += ["rank"]
        if kind in NUMERIC:
            options += ["arith"]
            if ctx.source is None:
                options += ["agg_num", "days"] if kind == "integer" else ["agg_num"]
                if kind == "float":
                    options += ["div", "avg"]
            options += ["coalesce"]
        if kind in ("string", "datetime") and ctx.source is None:
            options += ["agg_any"]
        if kind == "datetime" and ctx.source is None:
            options += ["shift"]
    choice = draw(st.sampled_from(options))
    d = _deeper(ctx)
    if choice == "literal":
        return draw(literal(kind))
    if choice == "field":
        return draw(st.sampled_from(_fields_of(ctx, kind)))
    if choice == "compare":
        k = draw(st.sampled_from(["integer", "decimal", "float", "string", "datetime", "boolean", "date"]))
        ops = ["==", "!="] if k == "boolean" else ["==", "!=", "<", "<=", ">", ">="]
        if k == "date":
            left = draw(expr("date", d))
            right = draw(literal("date"))
        else:
            left, right = draw(expr(k, d)), draw(expr(k, d))
            if k == "boolean":  # comparisons do not chain: a boolean operand needs parentheses
                left, right = f"({left})", f"({right})"
        return f"{left} {draw(st.sampled_from(ops))} {right}"
    if choice == "between":
        k = draw(st.sampled_from(["integer", "decimal", "datetime"]))
        return f"{draw(expr(k, d))} between {draw(expr(k, d))} and {draw(expr(k, d))}"
    if choice == "in":
        k = draw(st.sampled_from(["string", "integer"]))
        items = draw(st.lists(literal(k), min_size=0, max_size=4))
        neg = draw(st.booleans())
        return f"{draw(expr(k, d))} {'not in' if neg else 'in'} [{', '.join(items)}]"
    if choice == "missing":
        k = draw(st.sampled_from(["integer", "string", "datetime", "decimal", "boolean"]))
        operand = draw(expr(k, d))
        if k == "boolean":
            operand = f"({operand})"
        return f"{operand} is {draw(st.sampled_from(['', 'not ']))}missing"
    if choice == "not":
        return f"not ({draw(expr('boolean', d))})"
    if choice == "andor":
        op = draw(st.sampled_from(["and", "or"]))
        return f"({draw(expr('boolean', d))}) {op} ({draw(expr('boolean', d))})"
    if choice == "strfunc":
        fn = draw(st.sampled_from(["contains", "starts_with"]))
        return f"{fn}({draw(expr('string', d))}, {draw(literal('string'))})"
    if choice == "exists":
        return draw(aggregate("exists", d))
    if choice == "rank":
        # Ranking over the population; its arguments read no computed tag and rank nothing.
        inner = Ctx(None, [], ctx.depth + 1, ranking=False)
        k = draw(st.sampled_from(["integer", "decimal", "float", "datetime", "date"]))
        value = draw(expr(k, inner))
        where = f" where {draw(expr('boolean', inner))}" if draw(st.booleans()) else ""
        op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
        if draw(st.booleans()):
            return f"quintile({value}{where}) {op} {draw(st.integers(1, 5))}"
        return f"percent_rank({value}{where}) {op} {draw(st.sampled_from(['0', '0.25', '0.5', '0.6', '1']))}"
    if choice == "tagref":
        return f'tag({q(draw(st.sampled_from(ctx.tags)))})'
    if choice == "arith":
        op = draw(st.sampled_from(["+", "-", "*"]))
        if kind == "integer":
            return f"({draw(expr('integer', d))} {op} {draw(expr('integer', d))})"
        if kind == "decimal":
            return f"({draw(expr('decimal', d))} {op} {draw(expr(draw(st.sampled_from(['integer', 'decimal'])), d))})"
        return f"({draw(expr('float', d))} {op} {draw(expr(draw(st.sampled_from(NUMERIC)), d))})"
    if choice == "div":
        a = draw(expr(draw(st.sampled_from(NUMERIC)), d))
        b = draw(expr(draw(st.sampled_from(NUMERIC)), d))
        return f"({a} / {b})"
    if choice == "coalesce":
        return f"coalesce({draw(expr(kind, d))}, {draw(expr(kind, d))})"
    if choice == "days":
        return f"{draw(st.sampled_from(['days_since', 'hours_since']))}({draw(expr('datetime', d))})"
    if choice == "shift":
        return f"{draw(expr('datetime', d))} {draw(st.sampled_from(['+', '-']))} {draw(st.sampled_from(['1d', '30d', '12h', '2w']))}"
    if choice == "agg_num":
        if kind == "integer":
            fn = draw(st.sampled_from(["count", "sum_int", "min_int", "max_int", "last_int"]))
            if fn == "count":
                return draw(aggregate("count", d))
            return draw(aggregate(fn.split("_")[0], d, field_kind="integer"))
        if kind == "decimal":
            fn = draw(st.sampled_from(["sum", "min", "max", "last", "first"]))
            return draw(aggregate(fn, d, field_kind="decimal"))
        return draw(aggregate("avg", d, field_kind=draw(st.sampled_from(["decimal", "integer"]))))
    if choice == "avg":
        return draw(aggregate("avg", d, field_kind=draw(st.sampled_from(["decimal", "integer"]))))
    if choice == "agg_any":
        fn = draw(st.sampled_from(["last", "first", "min", "max"]))
        return draw(aggregate(fn, d, field_kind=kind))
    raise AssertionError(choice)


@st.composite
def aggregate(draw, func: str, ctx: Ctx, field_kind: str | None = None):
    if field_kind is None:
        source = draw(st.sampled_from(sorted(SOURCE_FIELDS)))
        arg = source
    else:
        sources = [s for s, kinds in SOURCE_FIELDS.items() if kinds.get(field_kind)]
        source = draw(st.sampled_from(sources))
        arg = f"{source}.{draw(st.sampled_from(SOURCE_FIELDS[source][field_kind]))}"
    parts = [arg]
    if draw(st.booleans()):
        parts.append("where " + draw(expr("boolean", Ctx(source, [], ctx.depth + 1))))
    if source in TIMED and draw(st.booleans()):
        parts.append("within " + draw(st.sampled_from(["1d", "7d", "30d", "90d", "12h", "365d"])))
    return f"{func}({' '.join(parts)})"


@st.composite
def field_condition(draw):
    """A condition on a follower field alone: a comparison with a literal, or present."""
    kind = draw(st.sampled_from([k for k in ("integer", "decimal", "string", "datetime") if FOLLOWER_FIELDS.get(k)]))
    name = draw(st.sampled_from(FOLLOWER_FIELDS[kind]))
    if draw(st.booleans()):
        return f"{name} is not missing"
    return f"{name} {draw(st.sampled_from(['==', '!=', '<', '<=', '>', '>=']))} {draw(literal(kind))}"


@st.composite
def narrowed_audience(draw, tags: list[str]):
    """An audience as operators write them: a follower field, then aggregates
    (and maybe more): what preview's per-follower shape applies to."""
    d = Ctx(None, list(tags), 1)
    parts = [draw(field_condition())]
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            parts.append(draw(aggregate("exists", d)))
        else:
            func = draw(st.sampled_from(["count", "sum"]))
            agg = draw(aggregate(func, d, "decimal" if func == "sum" else None))
            parts.append(f"{agg} {draw(st.sampled_from(['>=', '<', '==']))} {draw(st.sampled_from(['0', '1', '2', '100']))}")
    if draw(st.booleans()):
        parts.append(f"({draw(expr('boolean', d))})")
    return " and ".join(parts)


@st.composite
def rulesets(draw, max_tags: int = 6):
    """Source text of a well-typed ruleset (tags, exclusive groups, lets,
    tag references to earlier tags, audiences), and the audience names."""
    lines: list[str] = []
    tags: list[str] = []
    if draw(st.booleans()):
        lines.append(f"let lim = {draw(literal('integer'))}")
        lines.append(f"tag \"let-user\" when count(orders) >= lim or age == lim")
        tags.append("let-user")
    if draw(st.booleans()):
        lines.append('tag "手工" manual')
        tags.append("手工")
    n = draw(st.integers(1, max_tags))
    for i in range(n):
        if draw(st.integers(0, 3)) == 0:
            members = []
            for j in range(draw(st.integers(2, 3))):
                name = f"g{i}-{j}"
                members.append(f"  tag {q(name)} when {draw(expr('boolean', Ctx(None, list(tags))))}")
            excl = draw(st.booleans())
            lines.append(f"group \"grp{i}\" {'exclusive ' if excl else ''}{{\n" + "\n".join(members) + "\n}")
            tags.extend(f"g{i}-{j}" for j in range(len(members)))
        else:
            name = f"t{i}"
            lines.append(f"tag {q(name)} when {draw(expr('boolean', Ctx(None, list(tags))))}")
            tags.append(name)
    audiences = []
    for k in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            body = draw(narrowed_audience(tags))
        else:
            body = draw(expr('boolean', Ctx(None, list(tags))))
        lines.append(f"audience \"a{k}\" = {body}")
        audiences.append(f"a{k}")
    return "\n".join(lines) + "\n", audiences


# -- populations -----------------------------------------------------------------------

EDGE_OFFSETS = [  # seconds before AS_OF (negative: after it)
    0, 1, -1, 86400, 86400 - 1, 86400 + 1, 7 * 86400, 30 * 86400, 30 * 86400 - 1, 30 * 86400 + 1,
    90 * 86400, 90 * 86400 - 1, 90 * 86400 + 1, 365 * 86400, 12 * 3600, 400 * 86400, -86400,
]


@st.composite
def instants(draw, allow_missing=True):
    if allow_missing and draw(st.integers(0, 9)) == 0:
        return None
    if draw(st.booleans()):
        offset = draw(st.sampled_from(EDGE_OFFSETS))
    else:
        offset = draw(st.integers(-5 * 86400, 800 * 86400))
    value = AS_OF - dt.timedelta(seconds=offset)
    if draw(st.integers(0, 7)) == 0:  # some non-whole seconds, at millisecond precision
        value += dt.timedelta(milliseconds=draw(st.sampled_from([250, 500, 999])))
    return value


def maybe(strategy, p_missing=0.15):
    return st.one_of(st.none(), strategy) if p_missing else strategy


AMOUNTS = st.one_of(
    st.sampled_from(["0.01", "0.10", "99.99", "100.00", "1666.67", "1666.66", "5000.00", "4999.99", "12345.67"]),
    st.integers(1, 1_000_000).map(lambda c: f"{c // 100}.{c % 100:02d}"),
).map(Decimal)


@st.composite
def followers(draw, index: int):
    oid = f"o{index:04d}"
    fields = {
        "city": draw(maybe(st.sampled_from(CITIES))),
        "age": draw(maybe(st.integers(0, 90))),
        "score": draw(maybe(AMOUNTS)),
        "ratio": draw(maybe(st.sampled_from([0.0, 0.25, 0.5, 0.6, 1.5]))),
        "vip": draw(maybe(st.booleans())),
        "signup": draw(instants()),
        "last_active_at": draw(instants()),
        "birthday": draw(maybe(st.sampled_from([dt.date(1990, 1, 1), dt.date(2026, 6, 18), dt.date(2000, 2, 29)]))),
        "gender": draw(maybe(st.sampled_from([0, 1, 2]))),
    }
    orders = [
        {"created_at": draw(instants()), "amount": draw(maybe(AMOUNTS, 0.1)), "qty": draw(maybe(st.integers(0, 5), 0.1)),
         "category": draw(maybe(st.sampled_from(CATEGORIES), 0.1)), "promo": draw(maybe(st.booleans(), 0.1))}
        for _ in range(draw(st.integers(0, 4)))
    ]
    events = [
        {"occurred_at": draw(instants()), "type": draw(st.sampled_from(EVENT_TYPES)),
         "key": draw(maybe(st.sampled_from(EVENT_KEYS), 0.1))}
        for _ in range(draw(st.integers(0, 3)))
    ]
    notes = [{"label": draw(maybe(st.sampled_from(LABELS))), "weight": draw(maybe(st.integers(-2, 5)))}
             for _ in range(draw(st.integers(0, 2)))]
    manual = frozenset(["手工"]) if draw(st.integers(0, 3)) == 0 else frozenset()
    return oid, fields, {"orders": orders, "events": events, "notes": notes}, manual


@st.composite
def populations(draw, max_size: int = 12):
    n = draw(st.integers(1, max_size))
    return [draw(followers(i)) for i in range(n)]
