"""IR -> SQLAlchemy Core: every computed tag of every follower in one statement.

Shape of ``desired_memberships`` (docs/internals.md has the semantics):

    WITH agg_<source> AS (          -- once per source: one GROUP BY pass over its rows
        SELECT <follower> AS fid,
               count(CASE WHEN <where> AND <window> THEN 1 END) AS n0,
               sum(CASE WHEN … THEN <amount> END) AS sum1, …   -- every distinct aggregate
        FROM <source> WHERE <time> <= :as_of GROUP BY <follower>),
    last_<source> AS (              -- only for last()/first() of a field other than the
        …),                         -- time: agg_<source> plus the values at the extreme times
    flags AS MATERIALIZED (         -- one row per follower: tag bits in BIGINT masks
        SELECT followers.openid,
               CASE WHEN <condition> THEN 1 ELSE 0 END                  -- a tag
             + CASE WHEN <c1> THEN 2 WHEN <c2> THEN 4 ELSE 0 END + … AS m0  -- an exclusive group
        FROM followers LEFT JOIN agg_orders … LEFT JOIN last_events …)
    SELECT flags.openid, tag_list.tag, tag_list.priority
    FROM flags JOIN (SELECT 0 AS word, 1 AS bit, :tag AS tag, :priority AS priority
                     UNION ALL …) AS tag_list ON (flags.m0 & tag_list.bit) != 0

Every CTE is read exactly once: MariaDB computes a CTE once per reference,
and SQLite (PITFALLS) must be told to materialise the per-follower one.
Exception: each ranking call (quintile, percent_rank) is a window subquery
(``_Build.rank_subquery``) over ``followers`` joined to the aggregate CTEs its
value needs, so those CTEs are read once more per ranking call.

The tree is dialect-neutral: per-dialect spellings are the constructs of
``dialects.py`` (SQLite text instants and scaled-integer decimals, MySQL binary
string comparison, PostgreSQL's C collation, epoch arithmetic, …).

Conditions are two-valued. A predicate compiled with ``strict=False`` may be
NULL where the language says false; that is only allowed where the consumer
treats NULL as false (WHERE, CASE WHEN, and AND/OR under them). Under NOT and
wherever a boolean is used as a value, ``strict=True`` makes it exactly
true/false (COALESCE(…, false)), so NULL never leaks through NOT.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Optional, Sequence

from sqlalchemy import (
    BigInteger, Boolean, Date, DateTime, Integer, Numeric, String, and_, bindparam, case, exists, false, func,
    literal, literal_column, not_, or_, select, true, union_all,
)
from sqlalchemy.sql.elements import ColumnElement, Grouping
from sqlalchemy.sql.selectable import CTE, FromClause, Select

from .. import ir
from ..config import Config
from ..diagnostics import TagDSLError
from ..schema import Tables, build_tables
from .dialects import (
    DOUBLE, AddSeconds, BinaryText, DecimalLiteral, ElapsedMicros, Extreme, FloorDiv, GroupKey, NormTime,
    Rescale, Scaled, StrPos, ToDouble, TrueDiv,
)

__all__ = ["SqlCompiler", "compile_sql", "sql_text", "DIALECTS"]

DEFAULT_DECIMAL_SCALE = 2
MICROS = {"days_since": 86_400 * 10**6, "hours_since": 3_600 * 10**6}
TIMEDELTA_UNIT = {"days_since": dt.timedelta(days=1), "hours_since": dt.timedelta(hours=1)}

SQL_TYPES = {
    "string": String(), "integer": BigInteger(), "decimal": Numeric(), "float": DOUBLE, "boolean": Boolean(),
    "date": Date(), "datetime": DateTime(), "duration": BigInteger(),
}
COMPARE = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
FLIPPED = {"==": "==", "!=": "!=", "<": ">", ">": "<", "<=": ">=", ">=": "<="}

_NO_CONST = object()
# `WITH x AS MATERIALIZED` is SQLite >= 3.35 syntax (earlier versions reject it).
SQLITE_MATERIALIZED = sqlite3.sqlite_version_info >= (3, 35)
WORD_BITS = 63  # tags per BIGINT mask (bit 63 is the sign)


class SqlCompileError(TagDSLError):
    exit_code = 2


@dataclass(frozen=True)
class Val:
    """A compiled value. ``scale``: for decimals, the number of decimal places
    of the scaled integer SQLite computes with (ignored by native decimals);
    ``const``: the Python value when known at compile time (for folding)."""

    sql: ColumnElement
    kind: str
    scale: int = 0
    nullable: bool = True
    const: object = field(default=_NO_CONST, compare=False)

    @property
    def is_const(self) -> bool:
        return self.const is not _NO_CONST


def _decimal_scale(value) -> int:
    exponent = Decimal(value).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _join_kind(kinds) -> str:
    kinds = set(kinds)
    if kinds <= {"integer", "decimal", "float"}:
        if "float" in kinds:
            return "float"
        return "decimal" if "decimal" in kinds else "integer"
    if len(kinds) == 1:
        return kinds.pop()
    if kinds == {"date", "datetime"}:
        return "datetime"
    raise AssertionError(f"incompatible kinds {kinds}")  # the checker prevents this


def _as_double(v: Val) -> ColumnElement:
    if v.kind == "float":
        return v.sql
    if v.is_const:
        return literal(float(v.const), DOUBLE)
    return ToDouble(v.sql, v.scale if v.kind == "decimal" else 0)


def _at_scale(v: Val, scale: int) -> ColumnElement:
    """An integer or decimal as a decimal with ``scale`` places (SQLite: scaled integer)."""
    if v.scale == scale:
        return v.sql
    if v.is_const:
        return DecimalLiteral(Decimal(v.const), scale)
    return Rescale(v.sql, 10 ** (scale - v.scale))


def _unify(vals: Sequence[Val], kind: str) -> tuple[list[ColumnElement], int]:
    """The operands converted to the common ``kind`` (and decimal scale)."""
    if kind == "float":
        return [_as_double(v) for v in vals], 0
    if kind == "decimal":
        scale = max(v.scale for v in vals)
        return [_at_scale(v, scale) for v in vals], scale
    return [v.sql for v in vals], 0


def _span_text(e) -> str:
    span = getattr(e, "span", None)
    return f"{span}: " if span is not None and getattr(span, "file", None) else ""


def _two_valued(expr: ColumnElement, nullable: bool, strict: bool) -> ColumnElement:
    return func.coalesce(expr, false(), type_=Boolean()) if (strict and nullable) else expr


# -- per-source aggregates ---------------------------------------------------------------------------

class _SourceAggregates:
    """Every distinct aggregate of the statement over one source, computed in
    one GROUP BY pass (plus one pass for last()/first() values)."""

    def __init__(self, build: "_Build", name: str):
        self.build = build
        self.name = name
        self.spec = build.config.sources[name]
        self.table = build.tables.sources[name]
        self.keys: dict[tuple, str] = {}  # stage 1: key -> column label
        self.picks: dict[tuple, str] = {}  # stage 2 (last/first values): key -> column label
        self.agg: Optional[CTE] = None
        self.pick: Optional[CTE] = None

    def _need(self, key: tuple) -> str:
        if key not in self.keys:
            self.keys[key] = f"{key[0]}{len(self.keys) + len(self.picks)}"
        return self.keys[key]

    def register(self, a: ir.Aggregate) -> None:
        base = (a.where, a.within)
        if a.func in ("count", "exists"):
            self._need(("n", None, *base))
        elif a.func == "sum":
            self._need(("sum", a.field, *base))
        elif a.func == "avg":
            self._need(("sum", a.field, *base))
            self._need(("nn", a.field, *base))
        elif a.func in ("min", "max"):
            self._need((a.func, a.field, *base))
        elif a.func in ("last", "first"):
            if self.is_time(a.field):
                # The value in the row with the greatest (smallest) time, of the
                # time column itself, is that time: no second pass.
                self._need(("tmax" if a.func == "last" else "tmin", None, *base))
            elif self.spec.time:
                self._need(("tmax" if a.func == "last" else "tmin", None, *base))
                key = (a.func, a.field, *base)
                if key not in self.picks:
                    self.picks[key] = f"{a.func}{len(self.keys) + len(self.picks)}"
            else:
                # No time column: every row ties on time, so the tie-break alone decides.
                self._need(("max" if a.func == "last" else "min", a.field, *base))
        else:  # pragma: no cover - the checker only produces the functions above
            raise AssertionError(a.func)

    def is_time(self, f: Optional[ir.SourceField]) -> bool:
        """``f`` is the source's time column (rows without a time are never seen)."""
        return f is not None and bool(self.spec.time) and f.column == self.spec.time

    # -- building ---------------------------------------------------------------------------------
    def _time(self):
        return NormTime(self.table.c[self.spec.time])

    def _row_condition(self, where, within) -> Optional[ColumnElement]:
        parts = []
        if where is not None:
            parts.append(_Expr(self.build, row=self).pred(where))
        if within is not None and self.build.since(within) is not None:
            parts.append(self._time() > NormTime(self.build.since(within)))
        return and_(*parts) if parts else None

    def _value(self, f: ir.SourceField) -> Val:
        return _Expr(self.build, row=self).value(f)

    def _aggregate(self, key: tuple) -> ColumnElement:
        kind, fld, where, within = key
        cond = self._row_condition(where, within)

        def when(x):
            return x if cond is None else case((cond, x))

        if kind == "n":
            return func.count() if cond is None else func.count(case((cond, literal_column("1"))))
        if kind in ("tmax", "tmin"):
            return Extreme(when(self._time()), kind == "tmax")
        v = self._value(fld)
        if kind == "sum":
            return func.sum(when(v.sql), type_=v.sql.type)
        if kind == "nn":
            return func.count(when(v.sql))
        if kind in ("min", "max"):
            x = when(v.sql)
            if v.kind == "string":
                x = BinaryText(x)
            return Extreme(x, kind == "max")
        raise AssertionError(kind)

    def build_ctes(self) -> None:
        follower = self.table.c[self.spec.follower]
        seen = None
        if self.spec.time:
            seen = self._time() <= NormTime(self.build.as_of_param)
        if self.build.driving is not None and self.build.driving[0] == self.name:
            self._build_driving(follower, seen, self.build.driving[1])
            return
        if self.build.per_follower:
            self._build_lateral(follower, seen)
            return
        cols = [follower.label("fid")] + [self._aggregate(k).label(label) for k, label in self.keys.items()]
        stmt = select(*cols).group_by(follower)
        if self.build.narrowing is not None:  # a preview: rows outside every window are not read either
            stmt = stmt.where(*self._seen_rows(seen), follower.in_(self.build.narrowing))
        elif seen is not None:
            stmt = stmt.where(seen)
        self.agg = stmt.cte(f"agg_{self.name}")
        if not self.picks:
            return
        # The value in the row(s) at the greatest/smallest time; ties: the
        # greatest value for last, the smallest for first (MAX/MIN ignore NULLs,
        # so a missing value loses to a present one). No window functions.
        # Only rows at one of the extreme times are joined; such a row is seen
        # (its time is not after as-of), so the as-of filter is implied. The
        # first pass's columns are carried through (one row per follower, so
        # MAX is the value): every CTE is then read once, which MariaDB needs
        # (it computes a CTE once per reference).
        agg = self.agg
        carried = [Extreme(agg.c[label], greatest=True).label(label) for label in self.keys.values()]
        pick_cols, extreme_labels = [], {}
        for key, label in self.picks.items():
            fn, fld, where, within = key
            extreme_label = self.keys[("tmax" if fn == "last" else "tmin", None, where, within)]
            extreme_labels[extreme_label] = None
            cond = and_(*[c for c in (self._row_condition(where, within),) if c is not None],
                        self._time() == agg.c[extreme_label])
            v = self._value(fld)
            x = case((cond, v.sql))
            if v.kind == "string":
                x = BinaryText(x)
            pick_cols.append(Extreme(x, fn == "last").label(label))
        on = and_(follower == agg.c.fid, or_(*(self._time() == agg.c[t] for t in extreme_labels)))
        stmt = (select(agg.c.fid, *carried, *pick_cols)
                .select_from(agg.outerjoin(self.table, on))
                .group_by(agg.c.fid))
        self.pick = stmt.cte(f"last_{self.name}")

    def _seen_rows(self, seen) -> list:
        """The row conditions of the preview shapes: seen by as-of and,
        when every aggregate has a window, inside the widest (each
        aggregate's own condition still picks its rows)."""
        if seen is None:
            return []
        conds = [seen]
        windows = [within for _, _, _, within in self.keys]
        if None not in windows:
            start = self.build.since(max(windows))
            if start is not None:
                conds.append(self._time() > NormTime(start))
        return conds

    def _build_lateral(self, follower, seen) -> None:
        """The same aggregates for the one follower of the outer row (LATERAL,
        PostgreSQL): an index range scan per follower instead of a pass over
        the whole source. Aggregates without GROUP BY give one row even for
        no rows, as the outer join gives NULLs (count is 0 either way)."""
        assert not self.picks, "last()/first() of a value: per_follower_count() refuses"
        conds = [follower == self.build.follower_id, *self._seen_rows(seen)]
        cols = [self._aggregate(k).label(label) for k, label in self.keys.items()]
        self.agg = select(*cols).where(*conds).lateral(f"agg_{self.name}")

    def _build_driving(self, follower, seen, narrowing: Select) -> None:
        """The driving source of a per-follower count (see
        SqlCompiler.per_follower_count): its rows of the followers that pass
        ``narrowing``, grouped by follower. A follower without such rows is
        left out, which only the caller can know is right. PostgreSQL runs it
        as a parallel hash join and partial aggregates; the LATERAL form
        probes follower by follower in one process (1M followers: 0.6 s
        instead of 1.0-1.2 s)."""
        assert not self.picks, "last()/first() of a value: per_follower_count() refuses"
        conds = [*self._seen_rows(seen), follower.in_(narrowing)]
        cols = [follower.label("fid")] + [self._aggregate(k).label(label) for k, label in self.keys.items()]
        self.agg = select(*cols).where(*conds).group_by(follower).subquery(f"agg_{self.name}")

    @property
    def per_follower(self) -> CTE:
        """The CTE the followers join: the last()/first() pass when there is one."""
        return self.pick if self.pick is not None else self.agg

    def join_onto(self, frm: FromClause, follower_id: ColumnElement) -> FromClause:
        if self.build.driving is not None and self.build.driving[0] == self.name:
            return frm  # the FROM clause starts with it
        if self.build.per_follower:
            return frm.join(self.agg, true())
        return frm.outerjoin(self.per_follower, self.per_follower.c.fid == follower_id)

    def column(self, a: ir.Aggregate, key_kind: str) -> ColumnElement:
        key = (key_kind, None if key_kind in ("n", "tmax", "tmin") else a.field, a.where, a.within)
        label = self.picks[key] if key in self.picks else self.keys[key]
        return self.per_follower.c[label]


# -- one statement's compilation state ------------------------------------------------------------------

class _Build:
    def __init__(self, compiler: "SqlCompiler", as_of: dt.datetime, per_follower: bool = False):
        if not isinstance(as_of, dt.datetime):
            raise SqlCompileError(f"as-of must be a datetime, not {type(as_of).__name__}")
        if as_of.tzinfo is not None:
            as_of = as_of.astimezone(compiler.config.tz).replace(tzinfo=None)
        self.compiler = compiler
        self.ruleset = compiler.ruleset
        self.config = compiler.config
        self.tables = compiler.tables
        self.as_of = as_of
        self.as_of_param = bindparam("as_of", as_of, type_=DateTime())
        self._since: dict[int, ColumnElement] = {}
        self.sources: dict[str, _SourceAggregates] = {}
        self.followers = self.tables.followers
        self.follower_id = self.followers.c[self.config.followers.id]
        self.ranks: dict[ir.Rank, Optional[FromClause]] = {}  # ranking call -> its window subquery
        self.per_follower = per_follower  # aggregates as LATERAL subqueries (see _build_lateral)
        # (source, narrowing select): the FROM clause is that source's grouped
        # rows, and the follower id its `fid` (see _build_driving).
        self.driving: Optional[tuple[str, Select]] = None
        # The followers (a select of their ids) every source is aggregated
        # for, when only they can pass the condition (see narrowed_count).
        self.narrowing: Optional[Select] = None

    def since(self, seconds: int) -> Optional[ColumnElement]:
        """The (exclusive) start of a `within` window: as_of − D, computed here;
        None when that is before year 1 (the window then holds every row)."""
        if seconds not in self._since:
            try:
                start = self.as_of - dt.timedelta(seconds=seconds)
            except OverflowError:
                self._since[seconds] = None
            else:
                self._since[seconds] = bindparam(f"since_{seconds}", start, type_=DateTime())
        return self._since[seconds]

    # -- aggregates: collected first, so each source is read once ----------------------------------
    def collect(self, exprs: Sequence[ir.Expr]) -> None:
        seen_tags: set[str] = set()
        stack = list(exprs)
        while stack:
            node = stack.pop()
            for n in ir.walk(node):
                if isinstance(n, ir.Aggregate):
                    if n.source not in self.sources:
                        self.sources[n.source] = _SourceAggregates(self, n.source)
                    self.sources[n.source].register(n)
                elif isinstance(n, ir.Rank):
                    self.ranks.setdefault(n, None)
                elif isinstance(n, ir.TagRef) and n.name not in seen_tags:
                    seen_tags.add(n.name)
                    stack.extend(self.compiler.tag_dependencies(n.name))
        if self.driving is not None:  # first: the other sources' subqueries refer to its fid
            driver = self.sources[self.driving[0]]
            driver.build_ctes()
            self.follower_id = driver.agg.c.fid
        for src in self.sources.values():
            if self.driving is None or src.name != self.driving[0]:
                src.build_ctes()
        for i, r in enumerate(self.ranks):
            if self.ranks[r] is None:
                self.ranks[r] = self.rank_subquery(r, f"rank_{i}")

    def rank_subquery(self, r: ir.Rank, name: str) -> FromClause:
        """(fid, r) for the population of a ranking call: the followers for whom
        its `where` holds and its value is present, with NTILE(5) over (value,
        id) or PERCENT_RANK() over value. Joined back by follower id, so anyone
        else gets NULL (missing)."""
        x = _Expr(self)
        v = x.value(r.expr)
        conds = [v.sql.is_not(None)] if v.nullable and not v.is_const else []
        if r.where is not None:
            conds.append(x.pred(r.where))
        frm: FromClause = self.followers
        used = {n.source for part in (r.expr, r.where) if part is not None
                for n in ir.walk(part) if isinstance(n, ir.Aggregate)}
        for src in self.sources.values():
            if src.name in used:
                frm = src.join_onto(frm, self.follower_id)
        # Ties on the value are broken by follower id in code-point order.
        by_id = BinaryText(self.follower_id)
        if r.func == "quintile":
            # Grouped: SQLAlchemy flattens a chained `a * b * c` given to
            # over(order_by=…) into the list `a, b, c` (found by the campaign).
            order = [by_id] if v.is_const else [Grouping(v.sql), by_id]
            window = func.ntile(literal_column("5"), type_=BigInteger()).over(order_by=order)
        elif v.is_const:  # every member ties
            window = literal(0.0, DOUBLE)
        else:
            # PERCENT_RANK() spelled out: MariaDB's returns a DECIMAL rounded to
            # 10 places; (rank - 1) / (n - 1) in doubles is exact IEEE everywhere.
            above = ToDouble(func.rank(type_=BigInteger()).over(order_by=Grouping(v.sql)) - literal_column("1"))
            others = ToDouble(func.count(type_=BigInteger()).over() - literal_column("1"))
            window = func.coalesce(TrueDiv(above, func.nullif(others, 0, type_=DOUBLE)), literal(0.0, DOUBLE),
                                   type_=DOUBLE)
        stmt = select(self.follower_id.label("fid"), window.label("r")).select_from(frm)
        if conds:
            stmt = stmt.where(and_(*conds))
        return stmt.subquery(name)

    def from_clause(self) -> FromClause:
        frm: FromClause = self.followers if self.driving is None else self.sources[self.driving[0]].agg
        for src in self.sources.values():
            frm = src.join_onto(frm, self.follower_id)
        for sub in self.ranks.values():
            frm = frm.outerjoin(sub, sub.c.fid == self.follower_id)
        return frm

    def expr(self) -> "_Expr":
        return _Expr(self)


class _Expr:
    """Compiles IR expressions: follower level (``row`` None: follower fields,
    aggregates, tag references) or source-row level (inside an aggregate)."""

    def __init__(self, build: _Build, row: Optional[_SourceAggregates] = None):
        self.b = build
        self.row = row
        self._tag_stack: list[str] = []

    # -- conditions ---------------------------------------------------------------------------------
    def pred(self, e: ir.Expr, strict: bool = False) -> ColumnElement:
        if isinstance(e, ir.And):
            return and_(*(self.pred(i, strict) for i in e.items))
        if isinstance(e, ir.Or):
            return or_(*(self.pred(i, strict) for i in e.items))
        if isinstance(e, ir.Not):
            return not_(self.pred(e.operand, True))
        if isinstance(e, ir.Compare):
            return self.compare_ir(e.op, e.left, e.right, strict)
        if isinstance(e, ir.Between):
            return and_(self.compare_ir(">=", e.operand, e.low, strict),
                        self.compare_ir("<=", e.operand, e.high, strict))
        if isinstance(e, ir.InList):
            return self.in_list(e, strict)
        if isinstance(e, ir.IsMissing):
            v = self.value(e.operand)
            if not v.nullable:
                return true() if e.negated else false()
            return v.sql.is_not(None) if e.negated else v.sql.is_(None)
        if isinstance(e, ir.TagRef):
            return self.tag(e.name, strict)
        if isinstance(e, ir.Const):
            return true() if e.value else false()
        v = self.value(e)
        assert v.kind == "boolean", v
        return _two_valued(v.sql, v.nullable, strict)

    def compare_ir(self, op: str, left: ir.Expr, right: ir.Expr, strict: bool) -> ColumnElement:
        fast = self.elapsed_compare(op, left, right, strict)
        if fast is not None:
            return fast
        return self.compare(op, self.value(left), self.value(right), strict)

    def elapsed_compare(self, op: str, left: ir.Expr, right: ir.Expr, strict: bool) -> Optional[ColumnElement]:
        """`days_since(t) >= 90` as `t <= as_of - 90d` (likewise hours_since, every
        operator, an integer constant on either side), with the bound computed
        here. Exact: floor(E / unit) >= n  <=>  E >= n * unit for integer n. It
        spares the per-follower epoch arithmetic and lets an index on t serve."""
        if isinstance(right, ir.Func) and not isinstance(left, ir.Func):
            left, right, op = right, left, FLIPPED[op]
        if not (isinstance(left, ir.Func) and left.name in MICROS and isinstance(right, ir.Const)
                and right.type.kind == "integer"):
            return None
        t = self.value(left.args[0])
        if t.is_const:
            return None  # folded to a number by the general path
        unit, n = TIMEDELTA_UNIT[left.name], int(right.value)
        try:
            # since(k): days_since(t) >= k  <=>  t <= as_of - k units
            since = {k: NormTime(literal(self.b.as_of - k * unit, DateTime())) for k in (n, n + 1)}
        except OverflowError:  # beyond the datetime range: the arithmetic path decides
            return None

        def at_least(k):
            return t.sql <= since[k]

        def below(k):
            return t.sql > since[k]

        test = {
            ">=": lambda: at_least(n), ">": lambda: at_least(n + 1),
            "<": lambda: below(n), "<=": lambda: below(n + 1),
            "==": lambda: and_(at_least(n), below(n + 1)), "!=": lambda: or_(below(n), at_least(n + 1)),
        }[op]()
        return _two_valued(test, t.nullable, strict)

    def compare(self, op: str, left: Val, right: Val, strict: bool) -> ColumnElement:
        kind = _join_kind((left.kind, right.kind))
        (ls, rs), _ = _unify((left, right), kind)
        if kind == "string":
            ls, rs = BinaryText(ls), BinaryText(rs)
        return _two_valued(COMPARE[op](ls, rs), left.nullable or right.nullable, strict)

    def in_list(self, e: ir.InList, strict: bool) -> ColumnElement:
        x = self.value(e.operand)
        items = [self.value(i) for i in e.items]
        if not items:
            if not e.negated:
                return false()
            return x.sql.is_not(None) if x.nullable else true()
        kind = _join_kind([x.kind, *(i.kind for i in items)])
        sqls, _ = _unify([x, *items], kind)
        if kind == "string":
            sqls = [BinaryText(s) for s in sqls]
        test = sqls[0].in_(sqls[1:])
        items_nullable = any(i.nullable for i in items)
        if not e.negated:
            return _two_valued(test, x.nullable or items_nullable, strict)
        # `x not in [...]` is false for a missing x (not the negation of `in`);
        # a missing item matches nothing, so it must not make NOT IN unknown.
        negated = not_(_two_valued(test, items_nullable, True))
        return and_(x.sql.is_not(None), negated) if x.nullable else negated

    def tag(self, name: str, strict: bool) -> ColumnElement:
        rule = self.b.ruleset.tags[name]
        if rule.manual:
            m = self.b.tables.memberships
            # Stored memberships from any source (manual, import, rule).
            return exists().where(m.c.openid == self.b.follower_id, m.c.tag == literal(name, String()))
        if name in self._tag_stack:
            chain = " -> ".join([*self._tag_stack[self._tag_stack.index(name):], name])
            raise SqlCompileError(f"tag `{name}` depends on itself ({chain})")
        self._tag_stack.append(name)
        try:
            if rule.exclusive and rule.group is not None:
                members = self.b.ruleset.groups[rule.group].tags
                position = members.index(name) + 1
                return self.group_winner(rule.group, position) == literal_column(str(position))
            return self.pred(rule.condition, strict)
        finally:
            self._tag_stack.pop()

    def group_winner(self, group: str, upto: int, values: Optional[dict[str, int]] = None) -> ColumnElement:
        """First match of an exclusive group: CASE WHEN c1 THEN 1 WHEN c2 THEN 2 … ELSE 0 END,
        over the first ``upto`` members (later ones cannot change who wins among
        them); ``values``: what a winning member yields instead of its position (default 0)."""
        members = self.b.ruleset.groups[group].tags[:upto]
        whens = []
        for i, m in enumerate(members, start=1):
            rule = self.b.ruleset.tags[m]
            value = i if values is None else values.get(m, 0)
            self._tag_stack.append(m)
            try:
                whens.append((self.pred(rule.condition), literal_column(str(value), BigInteger())))
            finally:
                self._tag_stack.pop()
        return case(*whens, else_=literal_column("0", BigInteger()))

    # -- values ------------------------------------------------------------------------------------------
    def value(self, e: ir.Expr) -> Val:
        if isinstance(e, ir.Const):
            return self.const(e.value, e.type.kind)
        if isinstance(e, ir.Field):
            col = self.b.followers.c[e.column]
            return self.column(col, e.type.kind, e.scale, nullable=not col.primary_key)
        if isinstance(e, ir.SourceField):
            assert self.row is not None and self.row.name == e.source, "source field outside its aggregate"
            col = self.row.table.c[e.column]
            always = e.column in (self.row.spec.follower, self.row.spec.time)  # NULL times are never seen
            return self.column(col, e.type.kind, e.scale, nullable=not always)
        if isinstance(e, ir.Now):
            return Val(NormTime(self.b.as_of_param), "datetime", nullable=False, const=self.b.as_of)
        if isinstance(e, ir.Aggregate):
            return self.aggregate(e)
        if isinstance(e, ir.Rank):
            assert self.row is None, "ranking inside an aggregate"
            return Val(self.b.ranks[e].c.r, e.type.kind)
        if isinstance(e, ir.Arith):
            return self.arith(e)
        if isinstance(e, ir.Neg):
            v = self.value(e.operand)
            return Val(-v.sql, v.kind, v.scale, v.nullable)
        if isinstance(e, ir.Func):
            return self.function(e)
        # Conditions used as values are exactly true/false.
        return Val(self.pred(e, strict=True), "boolean", nullable=False)

    def const(self, value, kind: str) -> Val:
        if kind == "decimal":
            scale = _decimal_scale(value)
            return Val(DecimalLiteral(Decimal(value), scale), kind, scale, False, value)
        if kind == "datetime":
            value = ir.to_datetime(value)
            return Val(NormTime(literal(value, DateTime())), kind, 0, False, value)
        if kind == "date":
            return Val(NormTime(literal(value, Date())), kind, 0, False, value)
        if kind == "float":
            value = float(value)
        elif kind in ("integer", "duration"):
            value = int(value)
        return Val(literal(value, SQL_TYPES[kind]), kind, 0, False, value)

    def column(self, col, kind: str, scale: Optional[int], nullable: bool) -> Val:
        if kind == "decimal":
            s = DEFAULT_DECIMAL_SCALE if scale is None else scale
            return Val(Scaled(col, s), kind, s, nullable)
        if kind in ("date", "datetime"):
            return Val(NormTime(col), kind, 0, nullable)
        return Val(col, kind, 0, nullable)

    def aggregate(self, a: ir.Aggregate) -> Val:
        assert self.row is None, "aggregate inside an aggregate"
        src = self.b.sources[a.source]
        if a.func == "count":
            return Val(func.coalesce(src.column(a, "n"), 0, type_=BigInteger()), "integer", nullable=False)
        if a.func == "exists":
            return Val(func.coalesce(src.column(a, "n"), 0) > 0, "boolean", nullable=False)
        kind = a.field.type.kind
        scale = (DEFAULT_DECIMAL_SCALE if a.field.scale is None else a.field.scale) if kind == "decimal" else 0
        if a.func == "sum":
            total = src.column(a, "sum")
            return Val(func.coalesce(total, 0, type_=total.type), kind, scale, nullable=False)
        if a.func == "avg":
            total = Val(src.column(a, "sum"), kind, scale)
            count = src.column(a, "nn")
            # float(exact sum) / number of present values; missing when there are none.
            return Val(TrueDiv(_as_double(total), func.nullif(ToDouble(count), 0, type_=DOUBLE)), "float")
        if a.func in ("min", "max"):
            return Val(src.column(a, a.func), kind, scale)
        if a.func in ("last", "first"):
            if src.is_time(a.field):
                return Val(src.column(a, "tmax" if a.func == "last" else "tmin"), kind, scale)
            if src.spec.time:
                return Val(src.column(a, a.func), kind, scale)
            return Val(src.column(a, "max" if a.func == "last" else "min"), kind, scale)
        raise AssertionError(a.func)

    def arith(self, e: ir.Arith) -> Val:
        left, right = self.value(e.left), self.value(e.right)
        if e.type.kind == "datetime":  # instant ± duration (the checker puts the instant on the left)
            instant, seconds = left, right
            if instant.is_const and seconds.is_const:
                try:
                    delta = dt.timedelta(seconds=seconds.const)
                    folded = ir.to_datetime(instant.const) + (delta if e.op == "+" else -delta)
                except OverflowError:
                    raise SqlCompileError(f"{_span_text(e)}datetime arithmetic out of range (years 1 to 9999)")
                return self.const(folded, "datetime")
            if seconds.is_const:
                shift = literal(seconds.const if e.op == "+" else -seconds.const, BigInteger())
            else:
                shift = seconds.sql if e.op == "+" else literal_column("0") - seconds.sql
            base = instant.sql.element if isinstance(instant.sql, NormTime) else instant.sql
            return Val(AddSeconds(base, shift), "datetime", nullable=instant.nullable or seconds.nullable)
        nullable = left.nullable or right.nullable
        if e.op == "/":
            # True division as an IEEE double; dividing by zero is missing.
            divisor = func.nullif(_as_double(right), 0, type_=DOUBLE)
            return Val(TrueDiv(_as_double(left), divisor), "float")
        kind = e.type.kind
        if kind == "decimal" and e.op == "*":
            # Scaled integers multiply into the sum of the scales.
            return Val(left.sql * right.sql, kind, left.scale + right.scale, nullable)
        (ls, rs), scale = _unify((left, right), kind)
        return Val(ARITH[e.op](ls, rs), kind, scale, nullable)

    def function(self, e: ir.Func) -> Val:
        args = [self.value(a) for a in e.args]
        if e.name in MICROS:
            (t,) = args
            if t.is_const:
                return self.const((self.b.as_of - ir.to_datetime(t.const)) // TIMEDELTA_UNIT[e.name], "integer")
            elapsed = ElapsedMicros(t.sql, NormTime(self.b.as_of_param))
            return Val(FloorDiv(elapsed, MICROS[e.name]), "integer", nullable=t.nullable)
        if e.name in ("contains", "starts_with"):
            s, sub = args
            pos = StrPos(s.sql, sub.sql)
            test = pos > 0 if e.name == "contains" else pos == 1
            return Val(test, "boolean", nullable=s.nullable or sub.nullable)
        if e.name == "coalesce":
            kind = e.type.kind
            sqls, scale = _unify(args, kind)
            return Val(func.coalesce(*sqls, type_=SQL_TYPES.get(kind)), kind, scale,
                       nullable=all(a.nullable for a in args))
        raise SqlCompileError(f"the SQL compiler does not support {e.name}()")


# -- public API -------------------------------------------------------------------------------------

@dataclass
class DesiredFlags:
    """Per-follower tag masks: ``flags`` has ``openid`` and one BIGINT mask
    column ``m<w>`` per word in ``words``; bit ``tag_list.bit`` of mask
    ``m<tag_list.word>`` is set when the follower gets ``tag_list.tag``
    (WORD_BITS tags per word; a word without any tag has no column)."""

    flags: CTE
    words: list[int]
    tag_list: FromClause
    bits: dict[str, tuple[int, int]]  # tag -> (word, bit value), as in tag_list

    def mask_for(self, row: FromClause, tl: FromClause, column: str = "m{}") -> ColumnElement:
        """The mask word of ``row`` (columns named ``column.format(word)``) that
        holds ``tl``'s bit: one column, or a CASE on ``tl.word``."""
        cols = [row.c[column.format(w)] for w in self.words]
        if len(cols) == 1:
            return cols[0]
        return case(*[(tl.c.word == literal_column(str(w)), col) for w, col in zip(self.words, cols)],
                    else_=literal_column("0", BigInteger()))


class SqlCompiler:
    """Builds SQLAlchemy Core statements for one checked ruleset.

    Statements are dialect-neutral (see dialects.py) and bind every user value
    and the as-of instant as parameters.
    """

    def __init__(self, ruleset: ir.Ruleset, config: Config, tables: Tables):
        self.ruleset = ruleset
        self.config = config
        self.tables = tables

    # -- helpers -----------------------------------------------------------------------------------
    def tag_condition(self, name: str) -> ir.Expr:
        """The effective condition of computed tag ``name`` (exclusive groups: first match)."""
        rule = self._computed(name)
        return self.ruleset.effective_condition(rule.name)

    def tag_dependencies(self, name: str) -> list[ir.Expr]:
        """The IR a reference to tag ``name`` compiles from (nothing for a manual tag)."""
        rule = self.ruleset.tags[name]
        if rule.manual:
            return []
        if rule.exclusive and rule.group is not None:
            members = self.ruleset.groups[rule.group].tags
            return [self.ruleset.tags[m].condition for m in members[: members.index(name) + 1]]
        return [rule.condition]

    def _computed(self, name: str) -> ir.TagRule:
        rule = self.ruleset.tags.get(name)
        if rule is None:
            raise SqlCompileError(f"unknown tag `{name}`")
        if rule.manual:
            raise SqlCompileError(f"tag `{name}` is manual; only computed tags have a condition")
        return rule

    def _condition(self, condition: ir.Expr | str) -> ir.Expr:
        if isinstance(condition, str):
            audience = self.ruleset.audiences.get(condition)
            if audience is None:
                raise SqlCompileError(f"unknown audience `{condition}`")
            return audience.condition
        return condition

    # -- statements --------------------------------------------------------------------------------
    def desired_memberships(self, as_of: dt.datetime, tags: Sequence[str] | None = None) -> Select:
        """(openid, tag, priority) for every follower and computed tag whose
        effective condition holds at ``as_of``."""
        d = self.desired_flags(as_of, tags)
        if d is None:
            openid = self.tables.followers.c[self.config.followers.id].label("openid")
            return (select(openid, literal(None, String()).label("tag"), literal(0, Integer()).label("priority"))
                    .where(false()))
        tl = d.tag_list
        return (select(d.flags.c.openid, tl.c.tag, tl.c.priority)
                .select_from(d.flags.join(tl, d.mask_for(d.flags, tl).bitwise_and(tl.c.bit).self_group()
                                          != literal_column("0"))))

    def desired_flags(self, as_of: dt.datetime, tags: Sequence[str] | None = None) -> Optional["DesiredFlags"]:
        """The per-follower tag masks ``desired_memberships`` expands (None
        without computed tags): the ``flags`` CTE (openid, m0, m1, …) and the
        tag list (word, bit, tag, priority). Lets a caller compare masks with
        stored memberships per follower instead of per (follower, tag)."""
        rules = self.ruleset.computed if tags is None else [self._computed(n) for n in dict.fromkeys(tags)]
        b = _Build(self, as_of)  # checks as_of even without rules
        if not rules:
            return None
        # One flag column per plain tag, one winner column per exclusive group
        # (covering its members up to the last one asked for).
        group_upto: dict[str, int] = {}
        for rule in rules:
            if rule.exclusive and rule.group is not None:
                pos = self.ruleset.groups[rule.group].tags.index(rule.name) + 1
                group_upto[rule.group] = max(group_upto.get(rule.group, 0), pos)
        roots = [r.condition for r in rules]
        for g, upto in group_upto.items():
            roots.extend(self.ruleset.tags[m].condition for m in self.ruleset.groups[g].tags[:upto])
        b.collect(roots)
        x = b.expr()
        openid = b.follower_id.label("openid")
        # One bit per tag in per-follower masks (63 tags to a BIGINT word), joined
        # to the list of tags on `mask & bit`: the per-follower row is read once,
        # whatever the number of tags (MariaDB materialises a CTE once per
        # reference, so a UNION of one SELECT per tag recomputed everything per tag).
        slot = {rule.name: divmod(i, WORD_BITS) for i, rule in enumerate(rules)}
        words: list[list[ColumnElement]] = [[] for _ in range(len(rules) // WORD_BITS + 1)]
        for rule in rules:
            if not (rule.exclusive and rule.group is not None):
                w, bit = slot[rule.name]
                words[w].append(case((x.pred(rule.condition), literal_column(str(1 << bit), BigInteger())),
                                     else_=literal_column("0", BigInteger())))
        for g, upto in group_upto.items():
            for w in sorted({slot[m][0] for m in self.ruleset.groups[g].tags[:upto] if m in slot}):
                bits = {m: 1 << slot[m][1] for m in self.ruleset.groups[g].tags[:upto] if slot.get(m, (-1,))[0] == w}
                words[w].append(x.group_winner(g, upto, bits))
        masks = []
        for w, terms in enumerate(words):
            if terms:
                total = terms[0]
                for term in terms[1:]:
                    total = total + term
                masks.append(total.label(f"m{w}"))
        flags = (select(openid, *masks).select_from(b.from_clause())
                 # MySQL/MariaDB: a derived table with LIMIT is never merged into
                 # the outer query, so the masks are computed once per follower.
                 .suffix_with("LIMIT 18446744073709551615", dialect="mysql")
                 .suffix_with("LIMIT 18446744073709551615", dialect="mariadb")
                 .cte("flags"))
        # Materialised (PITFALLS: SQLite re-ran the per-follower joins otherwise;
        # on PostgreSQL it is also the faster plan here).
        flags = flags.prefix_with("MATERIALIZED", dialect="postgresql")
        if SQLITE_MATERIALIZED:
            flags = flags.prefix_with("MATERIALIZED", dialect="sqlite")
        tag_list = [
            select(literal_column(str(slot[r.name][0]), BigInteger()).label("word"),
                   literal_column(str(1 << slot[r.name][1]), BigInteger()).label("bit"),
                   literal(r.name, String()).label("tag"),
                   literal(r.priority, Integer()).label("priority"))
            for r in rules
        ]
        tl = (tag_list[0] if len(tag_list) == 1 else union_all(*tag_list)).subquery("tag_list")
        return DesiredFlags(flags, [int(m.name[1:]) for m in masks], tl,
                            {r.name: (slot[r.name][0], 1 << slot[r.name][1]) for r in rules})

    def audience_select(self, condition: ir.Expr | str, as_of: dt.datetime) -> Select:
        """The followers (column ``openid``) for whom ``condition`` (or the named audience) holds."""
        cond = self._condition(condition)
        b = _Build(self, as_of)
        b.collect([cond])
        return (select(b.follower_id.label("openid"))
                .select_from(b.from_clause())
                .where(b.expr().pred(cond)))

    def rank_select(self, ranks: Sequence[ir.Rank], as_of: dt.datetime, openid: str) -> Select:
        """One row for follower ``openid``: column ``r<i>`` is its value of
        ``ranks[i]`` over the whole population (NULL outside it), e.g. for
        explain, which evaluates one follower in memory."""
        b = _Build(self, as_of)
        b.collect(list(ranks))
        x = b.expr()
        return (select(*[x.value(r).sql.label(f"r{i}") for i, r in enumerate(ranks)])
                .select_from(b.from_clause())
                .where(b.follower_id == literal(openid, String())))

    def per_follower_count(self, condition: ir.Expr | str, as_of: dt.datetime) -> Optional[PerFollowerCount]:
        """The per-follower shape of ``count_select(condition, as_of)`` (same
        two columns, same numbers), or None where it does not apply: no
        aggregate, no conjunct on follower fields alone to narrow by, a
        ranking, or last()/first() of a non-time value.

        When a conjunct needs rows of one source (see _driving_source) and
        nothing else reads follower fields, the count starts from that
        source's rows of the narrowed followers, grouped (one parallel pass);
        otherwise from the narrowed followers, each source probed per
        follower (LATERAL)."""
        cond, conjuncts, narrowing, grouped = self._narrowable(condition, as_of)
        if not narrowing or any(s.picks for s in grouped.sources.values()):
            return None
        x = _Build(self, as_of).expr()
        narrowed = and_(*(x.pred(c) for c in narrowing))
        narrow = select(literal_column("1")).select_from(self.tables.followers).where(narrowed)
        total = select(func.count()).select_from(self.tables.followers).scalar_subquery()
        rest = [c for c in conjuncts if c not in narrowing]
        # The narrowing is applied inside the driving source's subquery;
        # anything else reading a follower field needs the followers table.
        driver = None if self._reads_follower_fields(rest) else self._driving_source(rest, grouped.as_of)
        if driver is not None:
            b = _Build(self, as_of, per_follower=True)
            b.driving = (driver, select(b.follower_id).where(narrowed))
            b.collect([cond])
            count = (select(total.label("total"), func.count().label("count"))
                     .select_from(b.from_clause()).where(and_(*(b.expr().pred(c) for c in rest))))
            return PerFollowerCount(count, narrow, [s.table for s in b.sources.values() if s.name != driver])
        b = _Build(self, as_of, per_follower=True)
        b.collect([cond])
        count = (select(total.label("total"), func.count().label("count"))
                 .select_from(b.from_clause()).where(b.expr().pred(cond)))
        return PerFollowerCount(count, narrow, [s.table for s in b.sources.values()])

    def narrowed_count(self, condition: ir.Expr | str, as_of: dt.datetime,
                       sample: int = 5000) -> Optional["NarrowedCount"]:
        """count_select(condition, as_of) (same two columns, same numbers) with
        every source aggregated only for the followers who pass the
        condition's conjuncts on follower fields: nobody else can be counted.
        For SQLite, whose planner then walks the source's (follower, time)
        index for those followers. None without such conjuncts, aggregates,
        or with a ranking (which ranks everyone)."""
        cond, _, narrowing, _ = self._narrowable(condition, as_of)
        if not narrowing:
            return None
        b = _Build(self, as_of)
        x = b.expr()
        narrowed = and_(*(x.pred(c) for c in narrowing))
        b.narrowing = select(b.follower_id).where(narrowed)
        b.collect([cond])
        count = _counting(b, cond)
        first = select(case((narrowed, 1), else_=0).label("k")).select_from(self.tables.followers).limit(sample)
        first = first.subquery("first")
        share = select(func.count(), func.sum(first.c.k)).select_from(first)
        return NarrowedCount(count, share)

    def _narrowable(self, condition, as_of: dt.datetime):
        """(condition, its conjuncts, those on follower fields alone, the usual
        shape's build); no narrowing conjuncts when the condition reads no
        source or ranks (a ranking ranks everyone)."""
        cond = self._condition(condition)
        conjuncts = _conjuncts(self, cond)
        grouped = _Build(self, as_of)
        grouped.collect([cond])
        narrowing = _on_fields_alone(conjuncts) if grouped.sources and not grouped.ranks else []
        return cond, conjuncts, narrowing, grouped

    def _reads_follower_fields(self, exprs: list[ir.Expr]) -> bool:
        """Whether any of ``exprs`` reads a follower field, through the tags
        they refer to and the aggregates' `where` included."""
        seen: set[str] = set()
        stack = list(exprs)
        while stack:
            for n in ir.walk(stack.pop()):
                if isinstance(n, ir.Field):
                    return True
                if isinstance(n, ir.TagRef) and n.name not in seen:
                    seen.add(n.name)
                    stack.extend(self.tag_dependencies(n.name))
        return False

    def _driving_source(self, conjuncts: list[ir.Expr], as_of: dt.datetime) -> Optional[str]:
        """The first source some conjunct needs rows of: it reads aggregates of that
        source alone (no follower field, tag or ranking), and it is false for
        a follower without rows there (evaluated so in memory: count(…) >= 2
        is, count(…) == 0 and sum(…) is missing are not)."""
        from .python import Follower, _Compiler

        for c in conjuncts:
            nodes = list(ir.walk(c))
            if any(isinstance(n, (ir.Field, ir.TagRef, ir.Rank)) for n in nodes):
                continue
            names = {n.source for n in nodes if isinstance(n, ir.Aggregate)}
            if len(names) != 1:
                continue
            name = names.pop()
            evaluator = _Compiler(self.ruleset, self.config)
            try:
                holds = evaluator.cond(c)
                holds = holds(evaluator.context(Follower("", {}, {name: []}), as_of))
            except (TagDSLError, ArithmeticError, TypeError, ValueError):  # not decidable so: not a driver
                continue
            if not holds:  # false, or missing: either way the follower is not counted
                return name
        return None

    def count_select(self, condition: ir.Expr | str, as_of: dt.datetime, by: str | None = None) -> Select:
        """One aggregate query: ``total`` followers and ``count`` where the
        condition holds; with ``by`` (a follower field), also ``by``, per value
        (missing values form their own group)."""
        cond = self._condition(condition)
        b = _Build(self, as_of)
        b.collect([cond])
        stmt = _counting(b, cond)
        if by is None:
            return stmt
        spec = self.config.followers.fields.get(by)
        if spec is None and by != self.config.followers.id:
            raise SqlCompileError(f"unknown follower field `{by}`")
        col = b.followers.c[(spec.column if spec else None) or by]
        if isinstance(col.type, String):
            # Group by code point ('VIP' and 'vip ' are different values everywhere).
            return stmt.add_columns(Extreme(col, greatest=False).label("by")).group_by(GroupKey(col))
        return stmt.add_columns(col.label("by")).group_by(col)


@dataclass
class PerFollowerCount:
    """count_select's other shape (PostgreSQL): the condition's aggregates
    computed per follower by LATERAL subqueries, only for the followers that
    pass its conjuncts on follower fields. ``narrowing`` selects those
    followers (to estimate how many there are); ``sources``: the source
    tables read."""

    count: Select
    narrowing: Select
    sources: list


@dataclass
class NarrowedCount:
    """count_select's narrowed shape (see SqlCompiler.narrowed_count).
    ``share``: (rows, narrowed) among the first rows of the followers table,
    to tell whether the narrowing narrows at all."""

    count: Select
    share: Select


def _counting(b: _Build, cond: ir.Expr) -> Select:
    """``total`` followers and ``count`` where ``cond`` holds, over ``b``'s FROM clause."""
    holds = func.coalesce(func.sum(case((b.expr().pred(cond), 1), else_=0)), 0, type_=BigInteger())
    return select(func.count().label("total"), holds.label("count")).select_from(b.from_clause())


def _on_fields_alone(conjuncts: list[ir.Expr]) -> list[ir.Expr]:
    """The conjuncts that read follower fields only (no aggregate, ranking or tag)."""
    return [c for c in conjuncts if not any(isinstance(n, (ir.Aggregate, ir.Rank, ir.TagRef)) for n in ir.walk(c))]


def _conjuncts(compiler: "SqlCompiler", e: ir.Expr) -> list[ir.Expr]:
    """The top-level AND terms of ``e``, looking into computed tags that are
    not members of an exclusive group (their condition is their meaning)."""
    if isinstance(e, ir.And):
        return [c for item in e.items for c in _conjuncts(compiler, item)]
    if isinstance(e, ir.TagRef):
        rule = compiler.ruleset.tags.get(e.name)
        if rule is not None and rule.condition is not None and not (rule.exclusive and rule.group is not None):
            return _conjuncts(compiler, rule.condition)
    return [e]


def compile_sql(ruleset: ir.Ruleset, config: Config, tables: Tables | None = None) -> SqlCompiler:
    return SqlCompiler(ruleset, config, tables if tables is not None else build_tables(config))


def _dialects():
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    return {"sqlite": sqlite.dialect, "postgresql": postgresql.dialect, "mysql": mysql.dialect}


DIALECTS = ("sqlite", "postgresql", "mysql")


def sql_text(stmt, dialect: str) -> str:
    """The statement as SQL for ``dialect`` (sqlite, postgresql, mysql), with
    the bound values written inline: for reading, not for executing."""
    factories = _dialects()
    if dialect not in factories:
        raise SqlCompileError(f"unknown SQL dialect `{dialect}` (use one of: {', '.join(DIALECTS)})")
    # paramstyle "named": nothing is bound, and no '%' gets doubled for a driver.
    compiled = stmt.compile(dialect=factories[dialect](paramstyle="named"), compile_kwargs={"literal_binds": True})
    return str(compiled).strip() + ";\n"
