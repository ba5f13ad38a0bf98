"""The in-memory evaluator: IR -> Python closures.

``compile_python(ruleset, config)`` compiles every condition once into nested
closures; evaluating a follower then runs no tree walk and no type dispatch.
Per evaluation a small context carries the follower, the as-of instant and a
memo list: each distinct aggregate, each distinct row filter of a source
(``where`` + ``within``) and each referenced tag condition is computed at most
once per follower.

Semantics are those of docs/internals.md ("Semantics every evaluator
implements"); the SQL compiler implements the same, and both must agree on
every follower. ``explain`` uses a separate tracing interpreter (slow, but it
records every sub-expression) that shares only the leaf primitives below.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Callable, Mapping, Optional, Sequence
from zoneinfo import ZoneInfo

from ..format import quote_string
from .. import ir
from ..config import Config
from ..diagnostics import TagDSLError
from ..spans import SourceFile

__all__ = [
    "AudienceExplanation", "CompileError", "Explanation", "ExplainNode", "Follower", "PythonEvaluator",
    "TagExplanation", "compile_python", "expr_text", "normalize_value", "render_value",
]

_UNSET = object()  # an empty memo slot
_DAY = _dt.timedelta(days=1)
_HOUR = _dt.timedelta(hours=1)
_LINE_BREAK = re.compile(r"\s*\n\s*")  # a rule written over several lines shows on one
_ZERO = {"integer": 0, "decimal": Decimal(0), "float": 0.0}


class CompileError(TagDSLError):
    """The IR cannot be compiled (a reference cycle, an unknown function)."""

    exit_code = 1


@dataclass
class Follower:
    """One follower as the evaluator sees it.

    ``fields``: follower field (DSL name) -> value or None. ``rows``: source
    name -> rows, each a mapping of DSL field names (including the source's
    time column) to values. ``tags``: stored memberships of any origin, read
    by ``tag("X")`` for a manual X. Values must be in the evaluator's domain
    (see ``normalize_value``).
    """

    id: str
    fields: Mapping[str, object]
    rows: Mapping[str, Sequence[Mapping[str, object]]] = field(default_factory=dict)
    tags: frozenset = frozenset()


# Per-evaluation state is a plain list (cheaper to build than an object):
# the follower's parts, the as-of instant, the source row a `where` is looking
# at, then one memo slot per aggregate, row filter and referenced tag.
# Layout: c[0] fields, c[1] rows by source, c[2] stored tags, c[3] follower id,
# c[4] as-of, c[5] current row, c[6:] memo slots (literal indices are faster
# than named lookups in the closures).
_FIRST_SLOT = 6


# -- values -----------------------------------------------------------------------------------


def _zone(tz) -> Optional[_dt.tzinfo]:
    if tz is None or isinstance(tz, _dt.tzinfo):
        return tz
    return ZoneInfo(str(tz))


def local_naive(value: _dt.datetime, tz) -> _dt.datetime:
    """An aware datetime converted to wall-clock time in ``tz``, made naive; a
    naive one is taken as already local."""
    if value.tzinfo is None:
        return value
    zone = _zone(tz)
    if zone is None:
        raise ValueError(f"cannot place the aware timestamp {value.isoformat()} without a project time zone")
    return value.astimezone(zone).replace(tzinfo=None)


def _parse_timestamp(text: str, tz) -> _dt.datetime:
    s = text.strip()
    try:
        if len(s) < 10:
            raise ValueError
        value = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"invalid timestamp {text!r}: expected 'YYYY-MM-DD HH:MM:SS[.ffffff]' "
                         "(or with 'T', optionally with a UTC offset)") from None
    return local_naive(value, tz)


def normalize_value(value, type: ir.Type, tz=None, scale: Optional[int] = None):
    """A value read from a database or JSON, in the evaluator's domain for ``type``.

    decimal -> ``Decimal`` (a float, as SQLite returns it, is rounded to the
    column's ``scale``, default 2, through its decimal text); datetime -> naive
    wall-clock time in ``tz`` (aware values are converted, ISO text is parsed);
    date -> ``date``; boolean -> ``bool`` (0/1 accepted); integer -> ``int``;
    float -> ``float``; duration -> int seconds; list -> tuple. None stays None.
    Raises ValueError with a message naming the value when it cannot be read.
    """
    if value is None:
        return None
    kind = type.kind
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8")
        return str(value)
    if kind == "decimal":
        if isinstance(value, bool):
            raise ValueError(f"expected a decimal number, got {value!r}")
        if isinstance(value, Decimal):
            result = value
        elif isinstance(value, int):
            return Decimal(value)
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"expected a decimal number, got {value!r}")
            result = Decimal(str(round(value, 2 if scale is None else scale)))
        elif isinstance(value, str):
            try:
                result = Decimal(value.strip())
            except InvalidOperation:
                raise ValueError(f"expected a decimal number, got {value!r}") from None
        else:
            raise ValueError(f"expected a decimal number, got {value!r}")
        if not result.is_finite():
            raise ValueError(f"expected a decimal number, got {value!r}")
        return result
    if kind == "integer":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, (float, Decimal)):
            if value != value or value in (float("inf"), float("-inf")) or value != int(value):
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        raise ValueError(f"expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        raise ValueError(f"expected a number, got {value!r}")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false", "t", "f"):
            return value.strip().lower() in ("1", "true", "t")
        raise ValueError(f"expected a boolean (true/false or 0/1), got {value!r}")
    if kind == "datetime":
        if isinstance(value, _dt.datetime):
            return local_naive(value, tz)
        if isinstance(value, _dt.date):
            return _dt.datetime(value.year, value.month, value.day)
        if isinstance(value, str):
            return _parse_timestamp(value, tz)
        raise ValueError(f"invalid timestamp {value!r}: expected a datetime or 'YYYY-MM-DD HH:MM:SS' text")
    if kind == "date":
        if isinstance(value, _dt.datetime):
            return local_naive(value, tz).date()
        if isinstance(value, _dt.date):
            return value
        if isinstance(value, str):
            s = value.strip()
            try:
                return _dt.date.fromisoformat(s) if len(s) == 10 else _parse_timestamp(s, tz).date()
            except ValueError:
                raise ValueError(f"invalid date {value!r}: expected 'YYYY-MM-DD'") from None
        raise ValueError(f"invalid date {value!r}: expected a date or 'YYYY-MM-DD' text")
    if kind == "duration":
        if isinstance(value, _dt.timedelta):
            return int(value.total_seconds())
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected a duration in seconds, got {value!r}")
    if kind == "list":
        elem = type.elem or ir.STRING
        return tuple(normalize_value(v, elem, tz, scale) for v in value)
    raise ValueError(f"unknown type {type}")


def render_value(value) -> str:
    """A value as the explain output shows it."""
    if value is None:
        return "missing"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return str(value)


def _json_value(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return str(value)


# -- primitives shared by the closures and the tracing interpreter ------------------------------


def _pair_coercion(lt: ir.Type, rt: ir.Type):
    """(left converter, right converter) for comparing or combining two values:
    a float meeting a decimal or an integer converts the other side to float."""
    if lt.numeric and rt.numeric and (lt.kind == "float") != (rt.kind == "float"):
        return (None, float) if lt.kind == "float" else (float, None)
    return None, None


def _divide(a, b):
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


def _shift(t, seconds, sign):
    if t is None or seconds is None:
        return None
    try:
        return t + _dt.timedelta(seconds=sign * seconds)
    except OverflowError:
        return None


def _as_datetime(v):
    if v is None or isinstance(v, _dt.datetime):
        return v
    return _dt.datetime(v.year, v.month, v.day)


def _since(as_of, t, unit):
    if t is None:
        return None
    return (as_of - _as_datetime(t)) // unit  # floor, exact to the microsecond


def _contains(s, sub):
    return None if s is None or sub is None else sub in s


def _starts_with(s, prefix):
    return None if s is None or prefix is None else s.startswith(prefix)


_COMPARE = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _visible(rows, time, as_of):
    """Rows an aggregate may see: time present and not after the as-of instant."""
    if not rows:
        return []
    if time is None:
        return list(rows)
    return [r for r in rows if (t := r.get(time)) is not None and t <= as_of]


def _agg_sum(rows, name, zero):
    return sum((v for r in rows if (v := r.get(name)) is not None), zero)


def _agg_avg(rows, name, zero):
    values = [v for r in rows if (v := r.get(name)) is not None]
    if not values:
        return None
    return float(sum(values, zero)) / len(values)


def _agg_min(rows, name):
    return min((v for r in rows if (v := r.get(name)) is not None), default=None)


def _agg_max(rows, name):
    return max((v for r in rows if (v := r.get(name)) is not None), default=None)


def _agg_last(rows, name, time):
    """The value at the greatest time; a tie goes to the greatest present value."""
    if time is None:  # no time column: every row ties
        return _agg_max(rows, name)
    best_t = best_v = None
    for r in rows:
        t = r.get(time)
        v = r.get(name)
        if best_t is None or t > best_t:
            best_t, best_v = t, v
        elif t == best_t and v is not None and (best_v is None or v > best_v):
            best_v = v
    return best_v


def _agg_first(rows, name, time):
    """The value at the smallest time; a tie goes to the smallest present value."""
    if time is None:
        return _agg_min(rows, name)
    best_t = best_v = None
    for r in rows:
        t = r.get(time)
        v = r.get(name)
        if best_t is None or t < best_t:
            best_t, best_v = t, v
        elif t == best_t and v is not None and (best_v is None or v < best_v):
            best_v = v
    return best_v


def _reducer(agg: ir.Aggregate, time: Optional[str]) -> Callable[[list], object]:
    """rows (already visible and filtered) -> the aggregate's value."""
    func = agg.func
    if func == "count":
        return len
    if func == "exists":
        return bool
    name = agg.field.name
    zero = _ZERO.get(agg.field.type.kind, 0)
    if func == "sum":
        return lambda rows: _agg_sum(rows, name, zero)
    if func == "avg":
        return lambda rows: _agg_avg(rows, name, zero)
    if func == "min":
        return lambda rows: _agg_min(rows, name)
    if func == "max":
        return lambda rows: _agg_max(rows, name)
    if func == "last":
        return lambda rows: _agg_last(rows, name, time)
    if func == "first":
        return lambda rows: _agg_first(rows, name, time)
    raise CompileError(f"unknown aggregate {func}()", location=_where(agg.span))


def _where(span) -> Optional[str]:
    return f"{span.file}:{span.line}:{span.column}" if span is not None and span.file else None


# -- text of IR expressions ---------------------------------------------------------------------

_OP_SYMBOL = {"==": "==", "!=": "≠", "<": "<", "<=": "≤", ">": ">", ">=": "≥"}


# One canonical string quoting for explain output and the formatter.
_quote = quote_string


def _duration_text(seconds: int) -> str:
    sign, n = ("-", -seconds) if seconds < 0 else ("", seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if n and n % size == 0:
            return f"{sign}{n // size}{unit}"
    return f"{sign}{n}s"


def _prec(e) -> int:
    if isinstance(e, ir.Or):
        return 1
    if isinstance(e, ir.And):
        return 2
    if isinstance(e, ir.Not):
        return 3
    if isinstance(e, (ir.Compare, ir.Between, ir.InList, ir.IsMissing)):
        return 4
    if isinstance(e, ir.Arith):
        return 5 if e.op in ("+", "-") else 6
    if isinstance(e, ir.Neg):
        return 7
    if isinstance(e, ir.Const) and isinstance(e.value, (int, float, Decimal)) and not isinstance(e.value, bool) \
            and e.value < 0:
        return 7
    return 8


def expr_text(e, in_source: bool = False) -> str:
    """Readable DSL text for an IR expression (``in_source``: inside an
    aggregate, where source fields are written bare)."""

    def sub(x, minimum):
        text = expr_text(x, in_source)
        return f"({text})" if _prec(x) < minimum else text

    if isinstance(e, ir.Const):
        v, kind = e.value, e.type.kind
        if kind == "list":
            return "[" + ", ".join(expr_text(i, in_source) if isinstance(i, tuple(_EXPR_TYPES)) else render_value(i)
                                   for i in v) + "]"
        if kind == "duration":
            return _duration_text(v)
        if kind == "datetime":
            return f'datetime("{v.isoformat()}")'
        if kind == "date":
            return f'date("{v.isoformat()}")'
        return render_value(v)
    if isinstance(e, ir.Field):
        return e.name
    if isinstance(e, ir.SourceField):
        return e.name if in_source else f"{e.source}.{e.name}"
    if isinstance(e, ir.Now):
        return "now()"
    if isinstance(e, ir.Func):
        return f"{e.name}(" + ", ".join(expr_text(a, in_source) for a in e.args) + ")"
    if isinstance(e, ir.Aggregate):
        text = e.source if e.field is None else f"{e.source}.{e.field.name}"
        if e.where is not None:
            text += " where " + expr_text(e.where, True)
        if e.within is not None:
            text += " within " + _duration_text(e.within)
        return f"{e.func}({text})"
    if isinstance(e, ir.Rank):
        where = "" if e.where is None else " where " + expr_text(e.where)
        return f"{e.func}({expr_text(e.expr)}{where})"
    if isinstance(e, ir.TagRef):
        return f"tag({_quote(e.name)})"
    if isinstance(e, ir.Not):
        return "not " + sub(e.operand, 3)
    if isinstance(e, ir.And):
        return " and ".join(sub(i, 3) for i in e.items)
    if isinstance(e, ir.Or):
        return " or ".join(sub(i, 2) for i in e.items)
    if isinstance(e, ir.Compare):
        return f"{sub(e.left, 5)} {e.op} {sub(e.right, 5)}"
    if isinstance(e, ir.Arith):
        p = _prec(e)
        return f"{sub(e.left, p)} {e.op} {sub(e.right, p + 1)}"
    if isinstance(e, ir.Neg):
        return "-" + sub(e.operand, 7)
    if isinstance(e, ir.Between):
        return f"{sub(e.operand, 5)} between {sub(e.low, 5)} and {sub(e.high, 5)}"
    if isinstance(e, ir.InList):
        items = ", ".join(expr_text(i, in_source) for i in e.items)
        return f"{sub(e.operand, 5)} {'not in' if e.negated else 'in'} [{items}]"
    if isinstance(e, ir.IsMissing):
        return f"{sub(e.operand, 5)} is {'not missing' if e.negated else 'missing'}"
    return repr(e)


_EXPR_TYPES = (ir.Const, ir.Field, ir.SourceField, ir.Now, ir.Func, ir.Aggregate, ir.Rank, ir.TagRef, ir.Not, ir.And,
               ir.Or, ir.Compare, ir.Arith, ir.Neg, ir.Between, ir.InList, ir.IsMissing)

# Nodes whose value is always True or False (never missing).
_STRICT_BOOL = (ir.Compare, ir.Between, ir.InList, ir.IsMissing, ir.Not, ir.And, ir.Or, ir.TagRef)


def _is_strict(e) -> bool:
    return isinstance(e, _STRICT_BOOL) or (isinstance(e, ir.Aggregate) and e.func == "exists")


# -- the closure compiler -------------------------------------------------------------------------


class _Compiler:
    """Turns IR into closures ``fn(ctx) -> value``. Row-level expressions (inside
    ``where``) read the context's row slot."""

    def __init__(self, ruleset: ir.Ruleset, config: Config):
        self.ruleset = ruleset
        self.config = config
        self.id_field = config.followers.id
        self.nslots = _FIRST_SLOT
        self.blank: list = []  # the memo part of a fresh context
        self.visible: dict[str, Callable] = {}  # source -> memoized visible rows
        self.filters: dict[tuple, Callable] = {}  # (source, where, within) -> memoized rows
        self.aggregates: dict[ir.Aggregate, Callable] = {}
        self.raw: dict[str, Callable] = {}  # tag -> its own condition
        self.effective: dict[str, Callable] = {}  # tag -> effective condition (first match)
        self.memo_tags: set[str] = set()
        # Ranking: the prepared population (or injected results) and, per Rank
        # node, follower id -> rank, computed on first use.
        self.population: Optional[list] = None
        self.population_as_of: Optional[_dt.datetime] = None
        self.population_ids: frozenset = frozenset()
        self.rank_tables: dict[ir.Rank, dict] = {}
        self.rank_parts: dict[ir.Rank, tuple] = {}

    def slot(self) -> int:
        self.nslots += 1
        self.blank = [_UNSET] * (self.nslots - _FIRST_SLOT)
        return self.nslots - 1

    def context(self, follower: Follower, as_of: _dt.datetime) -> list:
        return [follower.fields, follower.rows, follower.tags, follower.id, as_of, None] + self.blank

    def time_column(self, source: str) -> Optional[str]:
        if source not in self.config.sources:
            raise CompileError(f"event source `{source}` is not in the configuration the evaluator was given")
        return self.config.sources[source].time

    # -- conditions ------------------------------------------------------------------------------
    def cond(self, e) -> Callable:
        """A closure giving True or False (a missing boolean is false)."""
        if _is_strict(e):
            return self.value(e)
        if isinstance(e, ir.Const):
            v = bool(e.value)
            return lambda c: v
        f = self.value(e)
        return lambda c: bool(f(c))

    # -- values ------------------------------------------------------------------------------------
    def value(self, e) -> Callable:
        method = getattr(self, "_" + type(e).__name__, None)
        if method is None:
            raise CompileError(f"cannot evaluate {type(e).__name__} nodes", location=_where(getattr(e, "span", None)))
        return method(e)

    def _Const(self, e: ir.Const):
        if e.type.kind == "list":
            items = [self.value(i) if isinstance(i, _EXPR_TYPES) else (lambda c, v=i: v) for i in e.value]
            return lambda c: tuple(f(c) for f in items)
        v = e.value
        return lambda c: v

    def _Field(self, e: ir.Field):
        name = e.name
        if name == self.id_field:
            def follower_id(c):
                v = c[0].get(name)
                return c[3] if v is None else v
            return follower_id
        return lambda c: c[0].get(name)

    def _SourceField(self, e: ir.SourceField):
        name = e.name
        return lambda c: c[5].get(name)

    def _Now(self, e):
        return lambda c: c[4]

    def _Func(self, e: ir.Func):
        name = e.name
        args = [self.value(a) for a in e.args]
        if name in ("days_since", "hours_since"):
            (f,) = args
            unit = _DAY if name == "days_since" else _HOUR
            if e.args[0].type.kind == "datetime":
                def since(c):
                    t = f(c)
                    return None if t is None else (c[4] - t) // unit
                return since
            return lambda c: _since(c[4], f(c), unit)
        if name == "coalesce":
            if e.type.kind == "float":  # promote integer/decimal arguments, as SQL does
                args = [a if x.type.kind == "float" else _converted(a, float) for a, x in zip(args, e.args)]

            def coalesce(c):
                for f in args:
                    v = f(c)
                    if v is not None:
                        return v
                return None
            return coalesce
        if name == "contains":
            s, sub = args
            return lambda c: _contains(s(c), sub(c))
        if name == "starts_with":
            s, p = args
            return lambda c: _starts_with(s(c), p(c))
        raise CompileError(f"the Python evaluator does not implement {name}()", location=_where(e.span))

    def _Aggregate(self, e: ir.Aggregate):
        found = self.aggregates.get(e)
        if found is not None:
            return found
        pred = _row_predicate(e.where) if e.func == "exists" and e.where is not None else None
        if pred is not None:
            # exists(… where simple …): stop at the first row that passes,
            # without building the list of them.
            rows = self.filtered(e.source, None, e.within)
            reduce = lambda rows: any(map(pred, rows))  # noqa: E731
        else:
            rows = self.filtered(e.source, e.where, e.within)
            reduce = _reducer(e, self.time_column(e.source))
        i = self.slot()

        def aggregate(c):
            v = c[i]
            if v is _UNSET:
                v = c[i] = reduce(rows(c))
            return v
        self.aggregates[e] = aggregate
        return aggregate

    def _Rank(self, e: ir.Rank):
        if e not in self.rank_parts:
            self.rank_parts[e] = (self.value(e.expr), None if e.where is None else self.cond(e.where))
        table = self.rank_table

        def rank(c):
            return table(e, c[4], c[3])
        return rank

    def rank_table(self, e: ir.Rank, as_of: _dt.datetime, follower_id: str):
        """The follower's rank under ``e`` in the prepared population."""
        if self.population_as_of is None:
            raise TagDSLError(f"{e.func}() needs the whole population: prepare the evaluator with every "
                              "follower first (PythonEvaluator.prepare(followers, as_of) or tags_many)",
                              location=_where(e.span))
        if as_of != self.population_as_of:
            raise TagDSLError(f"{e.func}() needs the whole population: it was prepared as of "
                              f"{self.population_as_of.isoformat(sep=' ')}, not {as_of.isoformat(sep=' ')}",
                              location=_where(e.span))
        if follower_id not in self.population_ids:
            raise TagDSLError(f"{e.func}() needs the whole population: follower {follower_id} is not in the "
                              "population the evaluator was prepared with", location=_where(e.span))
        table = self.rank_tables.get(e)
        if table is None:
            table = self.rank_tables[e] = self.compute_ranks(e)
        return table.get(follower_id)

    def compute_ranks(self, e: ir.Rank) -> dict:
        if self.population is None:  # results were injected without the followers
            raise TagDSLError(f"{e.func}() needs the whole population: no rank values were given for "
                              f"{expr_text(e)}", location=_where(e.span))
        if e not in self.rank_parts:
            self._Rank(e)
        value, keep = self.rank_parts[e]
        members = []
        for f in self.population:
            c = self.context(f, self.population_as_of)
            if keep is not None and not keep(c):
                continue
            v = value(c)
            if v is not None:
                members.append((v, f.id))
        return rank_values(e.func, members)

    def visible_rows(self, source: str) -> Callable:
        found = self.visible.get(source)
        if found is not None:
            return found
        time = self.time_column(source)
        i = self.slot()

        def visible(c):
            v = c[i]
            if v is _UNSET:
                v = c[i] = _visible(c[1].get(source), time, c[4])
            return v
        self.visible[source] = visible
        return visible

    def filtered(self, source: str, where, within: Optional[int]) -> Callable:
        """Memoized rows of ``source`` that a filter keeps; one pass over the
        visible rows per distinct (where, within)."""
        visible = self.visible_rows(source)
        if where is None and within is None:
            return visible
        key = (source, where, within)
        found = self.filters.get(key)
        if found is not None:
            return found
        time = self.time_column(source)
        # Simple row conditions (source fields against constants) test the row
        # directly; others run as context closures reading the row slot.
        pred = _row_predicate(where) if where is not None else None
        keep = self.cond(where) if where is not None and pred is None else None
        window = _dt.timedelta(seconds=within) if within is not None else None
        if where is not None and window is not None:
            # The window's rows once per (source, within), shared by every
            # `where` over it (the reference ruleset has four per window).
            visible = self.filtered(source, None, within)
            window = None
        i = self.slot()

        def compute(c):
            rows = visible(c)
            if window is not None:
                lower = c[4] - window
                return [r for r in rows if r[time] > lower]
            if pred is not None:
                return [r for r in rows if pred(r)]
            if keep is not None:
                kept = []
                for r in rows:
                    c[5] = r
                    if keep(c):
                        kept.append(r)
                c[5] = None
                rows = kept
            return rows

        def rows_of(c):
            v = c[i]
            if v is _UNSET:
                v = c[i] = compute(c)
            return v
        self.filters[key] = rows_of
        return rows_of

    def _TagRef(self, e: ir.TagRef):
        rule = self.ruleset.tags.get(e.name)
        if rule is None:
            raise CompileError(f"no rule defines tag `{e.name}`", location=_where(e.span))
        if rule.manual:
            name = e.name
            return lambda c: name in c[2]
        return self.effective_fn(e.name)

    def _Not(self, e: ir.Not):
        f = self.cond(e.operand)
        return lambda c: not f(c)

    def _And(self, e: ir.And):
        fs = [self.cond(i) for i in e.items]
        if len(fs) == 1:
            return fs[0]
        if len(fs) == 2:
            a, b = fs
            return lambda c: a(c) and b(c)
        if len(fs) == 3:
            a, b, d = fs
            return lambda c: a(c) and b(c) and d(c)

        def all_of(c):
            for f in fs:
                if not f(c):
                    return False
            return True
        return all_of

    def _Or(self, e: ir.Or):
        fs = [self.cond(i) for i in e.items]
        if len(fs) == 1:
            return fs[0]
        if len(fs) == 2:
            a, b = fs
            return lambda c: a(c) or b(c)
        if len(fs) == 3:
            a, b, d = fs
            return lambda c: a(c) or b(c) or d(c)

        def any_of(c):
            for f in fs:
                if f(c):
                    return True
            return False
        return any_of

    def operand_pair(self, left, right):
        """Closures for two operands compared or combined, with float promotion."""
        lconv, rconv = _pair_coercion(left.type, right.type)
        lf, rf = self.value(left), self.value(right)
        if lconv is not None:
            lf = _converted(lf, lconv)
        if rconv is not None:
            rf = _converted(rf, rconv)
        return lf, rf

    def _Compare(self, e: ir.Compare):
        op = e.op
        if isinstance(e.right, ir.Const):
            lconv, rconv = _pair_coercion(e.left.type, e.right.type)
            lf = self.value(e.left)
            k = e.right.value if rconv is None else rconv(e.right.value)
            name = self.plain_field(e.left)
            if name is not None and lconv is None:  # the commonest test: one closure call fewer
                return _FIELD_COMPARE_CONST[op](name, k)
            if lconv is not None:
                lf = _converted(lf, lconv)
            return _COMPARE_CONST[op](lf, k)
        lf, rf = self.operand_pair(e.left, e.right)
        return _COMPARE_BOTH[op](lf, rf)

    def plain_field(self, e) -> Optional[str]:
        """The name of a follower field read as stored (not the id, which
        falls back to the follower's id), else None."""
        return e.name if isinstance(e, ir.Field) and e.name != self.id_field else None

    def _Between(self, e: ir.Between):
        # Two comparisons sharing the operand, each with its own float promotion.
        of = self.value(e.operand)
        lo_a, lo_b = _pair_coercion(e.operand.type, e.low.type)
        hi_a, hi_b = _pair_coercion(e.operand.type, e.high.type)
        lf, hf = self.value(e.low), self.value(e.high)
        if (lo_a is None and lo_b is None and hi_a is None and hi_b is None
                and isinstance(e.low, ir.Const) and isinstance(e.high, ir.Const)
                and e.low.value is not None and e.high.value is not None):
            lo, hi = e.low.value, e.high.value
            return lambda c: (a := of(c)) is not None and lo <= a <= hi
        if lo_a is None and lo_b is None and hi_a is None and hi_b is None:
            def between(c):
                a = of(c)
                if a is None:
                    return False
                lo = lf(c)
                if lo is None:
                    return False
                hi = hf(c)
                return hi is not None and lo <= a <= hi
            return between
        ident = _identity

        lo_a, lo_b, hi_a, hi_b = (x or ident for x in (lo_a, lo_b, hi_a, hi_b))

        def between_mixed(c):
            a = of(c)
            if a is None:
                return False
            lo = lf(c)
            if lo is None:
                return False
            hi = hf(c)
            return hi is not None and lo_b(lo) <= lo_a(a) and hi_a(a) <= hi_b(hi)
        return between_mixed

    def _InList(self, e: ir.InList):
        # `x in [a, b]` is `x == a or x == b`; `x not in [a, b]` is `x != a and
        # x != b`, each comparison two-valued (so a missing x gives false both ways).
        of = self.value(e.operand)
        negated = e.negated
        consts = all(isinstance(i, ir.Const) for i in e.items)
        float_side = e.operand.type.kind == "float" or any(i.type.kind == "float" for i in e.items)
        if consts and not float_side:
            members = frozenset(i.value for i in e.items)
            name = self.plain_field(e.operand)
            if name is not None:
                if negated:
                    return lambda c: (a := c[0].get(name)) is not None and a not in members
                return lambda c: (a := c[0].get(name)) is not None and a in members
            if negated:
                return lambda c: (a := of(c)) is not None and a not in members
            return lambda c: (a := of(c)) is not None and a in members
        pairs = []
        for item in e.items:
            oconv, iconv = _pair_coercion(e.operand.type, item.type)
            pairs.append((oconv or _identity, self.value(item), iconv or _identity))

        def in_list(c):
            a = of(c)
            if a is None:
                return False
            for oconv, f, iconv in pairs:
                b = f(c)
                if negated:
                    if b is None or oconv(a) == iconv(b):
                        return False
                elif b is not None and oconv(a) == iconv(b):
                    return True
            return negated
        return in_list

    def _IsMissing(self, e: ir.IsMissing):
        f = self.value(e.operand)
        if e.negated:
            return lambda c: f(c) is not None
        return lambda c: f(c) is None

    def _Arith(self, e: ir.Arith):
        op = e.op
        if e.type.kind == "datetime":  # datetime ± duration
            tf = self.value(e.left)
            sign = 1 if op == "+" else -1
            if isinstance(e.right, ir.Const):
                delta = _dt.timedelta(seconds=e.right.value)

                def shift_const(c):
                    t = tf(c)
                    if t is None:
                        return None
                    try:
                        return t + delta if sign > 0 else t - delta
                    except OverflowError:
                        return None
                return shift_const
            df = self.value(e.right)
            return lambda c: _shift(tf(c), df(c), sign)
        if op == "/":
            lf, rf = self.value(e.left), self.value(e.right)
            return lambda c: _divide(lf(c), rf(c))
        lf, rf = self.operand_pair(e.left, e.right)
        return _ARITH[op](lf, rf)

    def _Neg(self, e: ir.Neg):
        f = self.value(e.operand)
        return lambda c: None if (v := f(c)) is None else -v

    # -- tags ---------------------------------------------------------------------------------------
    def raw_fn(self, name: str) -> Callable:
        found = self.raw.get(name)
        if found is not None:
            return found
        rule = self.ruleset.tags[name]
        f = self.cond(rule.condition)
        if name in self.memo_tags:
            i = self.slot()

            def memoized(c, f=f, i=i):
                v = c[i]
                if v is _UNSET:
                    v = c[i] = f(c)
                return v
            f = memoized
        self.raw[name] = f
        return f

    def effective_fn(self, name: str) -> Callable:
        found = self.effective.get(name)
        if found is not None:
            return found
        earlier = [self.raw_fn(s.name) for s in self.ruleset.earlier_siblings(name) if s.condition is not None]
        own = self.raw_fn(name)
        if not earlier:
            f = own
        else:
            def f(c):
                for g in earlier:
                    if g(c):
                        return False
                return own(c)
        self.effective[name] = f
        return f


def rank_values(func: str, members: Sequence[tuple]) -> dict:
    """Follower id -> rank for (value, follower id) pairs of a population, as
    SQL computes them. quintile: NTILE(5) OVER (ORDER BY value, id): buckets
    of sizes differing by at most one, the earlier ones larger. percent_rank:
    (rank - 1) / (n - 1), rank = 1 + the number of strictly smaller values
    (ties share it); 0.0 for a population of one."""
    ordered = sorted(members)
    n = len(ordered)
    out = {}
    if func == "quintile":
        size, extra = divmod(n, 5)
        big = extra * (size + 1)  # rows in the first `extra` buckets, one row larger each
        for i, (_v, fid) in enumerate(ordered):
            out[fid] = i // (size + 1) + 1 if i < big else extra + (i - big) // size + 1
        return out
    if func == "percent_rank":
        rank = 1
        for i, (v, fid) in enumerate(ordered):
            if i and v != ordered[i - 1][0]:
                rank = i + 1
            out[fid] = (rank - 1) / (n - 1) if n > 1 else 0.0
        return out
    raise CompileError(f"unknown ranking function {func}()")


def _row_predicate(e) -> Optional[Callable]:
    """``pred(row) -> bool`` for a ``where`` made only of source fields,
    constants and connectives (no promotion needed), else None."""
    if isinstance(e, ir.SourceField):
        n = e.name
        return lambda r: bool(r.get(n))
    if isinstance(e, ir.Compare) and isinstance(e.left, ir.SourceField) and isinstance(e.right, ir.Const) \
            and _pair_coercion(e.left.type, e.right.type) == (None, None):
        return _ROW_COMPARE[e.op](e.left.name, e.right.value)
    if isinstance(e, ir.InList) and isinstance(e.operand, ir.SourceField) \
            and all(isinstance(i, ir.Const) for i in e.items) \
            and all(_pair_coercion(e.operand.type, i.type) == (None, None) for i in e.items):
        n, members = e.operand.name, frozenset(i.value for i in e.items)
        if e.negated:
            return lambda r: (v := r.get(n)) is not None and v not in members
        return lambda r: (v := r.get(n)) is not None and v in members
    if isinstance(e, ir.IsMissing) and isinstance(e.operand, ir.SourceField):
        n = e.operand.name
        return (lambda r: r.get(n) is not None) if e.negated else (lambda r: r.get(n) is None)
    if isinstance(e, ir.Not):
        p = _row_predicate(e.operand)
        return None if p is None else (lambda r: not p(r))
    if isinstance(e, (ir.And, ir.Or)):
        ps = [_row_predicate(i) for i in e.items]
        if any(p is None for p in ps):
            return None
        if len(ps) == 2:
            p, q = ps
            return (lambda r: p(r) and q(r)) if isinstance(e, ir.And) else (lambda r: p(r) or q(r))
        if isinstance(e, ir.And):
            return lambda r: all(p(r) for p in ps)
        return lambda r: any(p(r) for p in ps)
    return None


_ROW_COMPARE = {
    "==": lambda n, k: (lambda r: (v := r.get(n)) is not None and v == k),
    "!=": lambda n, k: (lambda r: (v := r.get(n)) is not None and v != k),
    "<": lambda n, k: (lambda r: (v := r.get(n)) is not None and v < k),
    "<=": lambda n, k: (lambda r: (v := r.get(n)) is not None and v <= k),
    ">": lambda n, k: (lambda r: (v := r.get(n)) is not None and v > k),
    ">=": lambda n, k: (lambda r: (v := r.get(n)) is not None and v >= k),
}


def _identity(v):
    return v


def _converted(f, conv):
    return lambda c: None if (v := f(c)) is None else conv(v)


# Comparisons with a constant right side (the common case) and with two operands.
_COMPARE_CONST = {
    "==": lambda f, k: (lambda c: (a := f(c)) is not None and a == k),
    "!=": lambda f, k: (lambda c: (a := f(c)) is not None and a != k),
    "<": lambda f, k: (lambda c: (a := f(c)) is not None and a < k),
    "<=": lambda f, k: (lambda c: (a := f(c)) is not None and a <= k),
    ">": lambda f, k: (lambda c: (a := f(c)) is not None and a > k),
    ">=": lambda f, k: (lambda c: (a := f(c)) is not None and a >= k),
}
_FIELD_COMPARE_CONST = {  # a follower field (c[0]) against a constant
    "==": lambda n, k: (lambda c: (a := c[0].get(n)) is not None and a == k),
    "!=": lambda n, k: (lambda c: (a := c[0].get(n)) is not None and a != k),
    "<": lambda n, k: (lambda c: (a := c[0].get(n)) is not None and a < k),
    "<=": lambda n, k: (lambda c: (a := c[0].get(n)) is not None and a <= k),
    ">": lambda n, k: (lambda c: (a := c[0].get(n)) is not None and a > k),
    ">=": lambda n, k: (lambda c: (a := c[0].get(n)) is not None and a >= k),
}
_COMPARE_BOTH = {
    "==": lambda f, g: (lambda c: (a := f(c)) is not None and (b := g(c)) is not None and a == b),
    "!=": lambda f, g: (lambda c: (a := f(c)) is not None and (b := g(c)) is not None and a != b),
    "<": lambda f, g: (lambda c: (a := f(c)) is not None and (b := g(c)) is not None and a < b),
    "<=": lambda f, g: (lambda c: (a := f(c)) is not None and (b := g(c)) is not None and a <= b),
    ">": lambda f, g: (lambda c: (a := f(c)) is not None and (b := g(c)) is not None and a > b),
    ">=": lambda f, g: (lambda c: (a := f(c)) is not None and (b := g(c)) is not None and a >= b),
}
_ARITH = {
    "+": lambda f, g: (lambda c: None if (a := f(c)) is None or (b := g(c)) is None else a + b),
    "-": lambda f, g: (lambda c: None if (a := f(c)) is None or (b := g(c)) is None else a - b),
    "*": lambda f, g: (lambda c: None if (a := f(c)) is None or (b := g(c)) is None else a * b),
}
_ARITH_OP = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _dependencies(ruleset: ir.Ruleset) -> dict:
    """Graph of ('raw'|'eff', tag) nodes: a rule's condition needs the effective
    condition of every computed tag it references; an effective condition
    needs the rule's and its earlier exclusive siblings' conditions."""
    graph: dict[tuple, list] = {}
    for rule in ruleset.computed:
        refs = sorted(ir.tag_refs(rule.condition))
        graph[("raw", rule.name)] = [("eff", r) for r in refs
                                     if r in ruleset.tags and not ruleset.tags[r].manual]
        graph[("eff", rule.name)] = [("raw", s.name) for s in ruleset.earlier_siblings(rule.name)
                                     if s.condition is not None] + [("raw", rule.name)]
    return graph


def _find_cycle(graph: dict) -> Optional[list]:
    state: dict = {}
    for start in graph:
        if start in state:
            continue
        stack = [(start, iter(graph.get(start, ())))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(graph.get(nxt, ()))))
    return None


# -- the evaluator ---------------------------------------------------------------------------------


class PythonEvaluator:
    """Compiled closures for every computed tag and audience of a ruleset."""

    def __init__(self, ruleset: ir.Ruleset, config: Config, sources: Optional[Mapping[str, object]] = None):
        self.ruleset = ruleset
        self.config = config
        self.tz = config.tz
        self._sources = {name: (s.text if isinstance(s, SourceFile) else str(s)) for name, s in (sources or {}).items()}
        cycle = _find_cycle(_dependencies(ruleset))
        if cycle is not None:
            names = []
            for _kind, n in cycle:
                if not names or names[-1] != n:
                    names.append(n)
            if len(names) == 1:  # a tag referring to itself
                names.append(names[0])
            rule = ruleset.tags[names[0]]
            raise CompileError("tags reference each other in a cycle: " + " -> ".join(names),
                               location=_where(rule.span))
        c = self._compiler = _Compiler(ruleset, config)
        # Conditions read through tag(…) (and the earlier siblings they imply) are memoized.
        referenced = set()
        for expr in [r.condition for r in ruleset.computed] + [a.condition for a in ruleset.audiences.values()]:
            referenced |= ir.tag_refs(expr)
        for name in list(referenced):
            if name in ruleset.tags and not ruleset.tags[name].manual:
                referenced |= {s.name for s in ruleset.earlier_siblings(name)}
        c.memo_tags = referenced
        self._singles: list[tuple[str, Callable]] = []
        self._groups: list[list[tuple[str, Callable]]] = []
        seen_groups = set()
        for rule in ruleset.computed:
            if rule.exclusive and rule.group is not None:
                if rule.group in seen_groups:
                    continue
                seen_groups.add(rule.group)
                members = [ruleset.tags[m] for m in ruleset.groups[rule.group].tags]
                self._groups.append([(m.name, c.raw_fn(m.name)) for m in members if not m.manual])
            else:
                self._singles.append((rule.name, c.raw_fn(rule.name)))
        self._audiences = {name: c.cond(a.condition) for name, a in ruleset.audiences.items()}
        self._adhoc_values: dict = {}
        self._adhoc_conds: dict = {}

    # -- helpers --------------------------------------------------------------------------------
    def _as_of(self, as_of) -> _dt.datetime:
        if isinstance(as_of, _dt.datetime):
            return as_of if as_of.tzinfo is None else as_of.astimezone(self.tz).replace(tzinfo=None)
        if isinstance(as_of, _dt.date):
            return _dt.datetime(as_of.year, as_of.month, as_of.day)
        raise TypeError(f"as_of must be a datetime, not {type(as_of).__name__}")

    def _ctx(self, follower: Follower, as_of) -> list:
        return self._compiler.context(follower, self._as_of(as_of))

    # -- public API -------------------------------------------------------------------------------
    def tags(self, follower: Follower, as_of) -> set[str]:
        """The computed tags whose effective condition holds (before the
        per-follower limit and expiry, which apply decides)."""
        if as_of.__class__ is not _dt.datetime or as_of.tzinfo is not None:
            as_of = self._as_of(as_of)
        c = [follower.fields, follower.rows, follower.tags, follower.id, as_of, None] + self._compiler.blank
        out = set()
        add = out.add
        for name, f in self._singles:
            if f(c):
                add(name)
        for members in self._groups:
            for name, f in members:
                if f(c):
                    add(name)
                    break
        return out

    def tags_many(self, followers, as_of) -> dict[str, set[str]]:
        """``tags`` for many followers at one as-of instant: follower id -> tags.
        The followers are the population ranking functions rank over (the
        evaluator is prepared with them when the ruleset ranks)."""
        as_of = self._as_of(as_of)
        followers = list(followers)
        if self.rank_nodes:
            self.prepare(followers, as_of)
        return {f.id: self.tags(f, as_of) for f in followers}

    # -- ranking: the population -----------------------------------------------------------------
    @property
    def rank_nodes(self) -> list[ir.Rank]:
        """Every distinct ranking call (quintile, percent_rank) of the ruleset's
        computed tags and audiences, in first-use order."""
        found: dict[ir.Rank, None] = {}
        for expr in [r.condition for r in self.ruleset.computed] + [a.condition for a in self.ruleset.audiences.values()]:
            for n in ir.walk(expr):
                if isinstance(n, ir.Rank):
                    found.setdefault(n, None)
        return list(found)

    def prepare(self, followers, as_of) -> None:
        """Set the population ranking functions rank over: every follower that
        is evaluated afterwards (at this ``as_of``) must be one of them. Ranks
        are computed on first use."""
        c = self._compiler
        c.population = list(followers)
        c.population_as_of = self._as_of(as_of)
        c.population_ids = frozenset(f.id for f in c.population)
        c.rank_tables = {}

    def set_ranks(self, as_of, ranks: Mapping[ir.Rank, Mapping[str, object]], follower_ids) -> None:
        """Use ranks computed elsewhere (e.g. by the database for explain):
        ``ranks``: Rank node -> follower id -> value (None = outside the
        population); ``follower_ids``: the followers that may be evaluated."""
        c = self._compiler
        c.population = None
        c.population_as_of = self._as_of(as_of)
        c.population_ids = frozenset(follower_ids)
        c.rank_tables = {node: dict(values) for node, values in ranks.items()}

    def holds(self, name: str, follower: Follower, as_of) -> bool:
        """Whether ``name``'s effective condition holds (first match in an
        exclusive group). For a manual tag: whether the follower stores it."""
        rule = self.ruleset.tags.get(name)
        if rule is None:
            raise KeyError(f"no rule defines tag `{name}`")
        if rule.manual:
            return name in follower.tags
        return self._compiler.effective_fn(name)(self._ctx(follower, as_of))

    def audience(self, name_or_expr, follower: Follower, as_of) -> bool:
        """Whether the follower is in an audience (by name) or meets a condition (an IR expression)."""
        if isinstance(name_or_expr, str):
            f = self._audiences.get(name_or_expr)
            if f is None:
                raise KeyError(f"no audience named `{name_or_expr}`")
        else:
            f = self._adhoc_conds.get(name_or_expr)
            if f is None:
                f = self._adhoc_conds[name_or_expr] = self._compiler.cond(name_or_expr)
        return f(self._ctx(follower, as_of))

    def value(self, expr, follower: Follower, as_of):
        """Any IR expression's value (None = missing)."""
        f = self._adhoc_values.get(expr)
        if f is None:
            f = self._adhoc_values[expr] = self._compiler.value(expr)
        return f(self._ctx(follower, as_of))

    def explain(self, follower: Follower, as_of) -> "Explanation":
        """Every computed tag and audience, with a tree of sub-expression values."""
        return _Tracer(self, follower, self._as_of(as_of)).explanation()

    # -- text -----------------------------------------------------------------------------------
    def text_of(self, e, in_source: bool = False) -> str:
        span = getattr(e, "span", None)
        if span is not None and span.file in self._sources and span.end > span.start:
            return _LINE_BREAK.sub(" ", self._sources[span.file][span.start:span.end].strip())
        return expr_text(e, in_source)


def compile_python(ruleset: ir.Ruleset, config: Config, *, sources: Optional[Mapping[str, object]] = None
                   ) -> PythonEvaluator:
    """Compile a checked ruleset for in-memory evaluation. ``sources`` (file name
    -> ``SourceFile`` or text, e.g. ``Analysis.sources``) lets explain quote the
    rule text as written; without it the text is rebuilt from the IR."""
    return PythonEvaluator(ruleset, config, sources)


# -- explain: a tracing interpreter ------------------------------------------------------------------


@dataclass
class ExplainNode:
    text: str  # the sub-expression's source text
    value: object  # its value (None = missing)
    kind: str  # the IR node type, lower case (compare, and, aggregate, field, …)
    line: str  # one-line rendering, e.g. `days_since(last_active_at) = 120 ≥ 90 ✓`
    children: list["ExplainNode"] = field(default_factory=list)
    rows: Optional[tuple[int, int]] = None  # aggregates: (rows matched, rows visible)

    def to_dict(self) -> dict:
        out = {"text": self.text, "kind": self.kind, "value": _json_value(self.value), "line": self.line}
        if self.rows is not None:
            out["rows_matched"], out["rows_visible"] = self.rows
        out["children"] = [c.to_dict() for c in self.children]
        return out


@dataclass
class TagExplanation:
    name: str
    group: Optional[str]
    exclusive: bool
    condition_holds: bool  # the rule's own condition
    holds: bool  # the effective condition (what tags() reports)
    shadowed_by: Optional[str]  # in an exclusive group: the earlier sibling that won
    tree: ExplainNode

    @property
    def won(self) -> Optional[bool]:
        """Exclusive groups only: whether this rule won its group."""
        return self.holds if self.exclusive else None

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "exclusive": self.exclusive,
                "condition_holds": self.condition_holds, "holds": self.holds, "won": self.won,
                "shadowed_by": self.shadowed_by, "tree": self.tree.to_dict()}


@dataclass
class AudienceExplanation:
    name: str
    holds: bool
    tree: ExplainNode

    def to_dict(self) -> dict:
        return {"name": self.name, "holds": self.holds, "tree": self.tree.to_dict()}


_CHECK = {True: "✓", False: "✗"}
_LEAVES = ("const", "field", "now", "sourcefield")
_COMPARISONS = ("compare", "between", "inlist", "ismissing")


@dataclass
class Explanation:
    follower_id: str
    as_of: _dt.datetime
    tags: list[TagExplanation]
    audiences: list[AudienceExplanation]

    @property
    def holding(self) -> set[str]:
        return {t.name for t in self.tags if t.holds}

    def tag(self, name: str) -> TagExplanation:
        for t in self.tags:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"follower": self.follower_id, "as_of": self.as_of.isoformat(),
                "tags": [t.to_dict() for t in self.tags], "audiences": [a.to_dict() for a in self.audiences]}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def render(self) -> str:
        """Plain text, one node per line, indented by two spaces per level (no
        column alignment, so CJK text needs no width arithmetic)."""
        lines = [f"follower {self.follower_id} as of {self.as_of.isoformat(sep=' ')}"]
        for t in self.tags:
            head = f"tag {_quote(t.name)} {_CHECK[t.holds]}"
            if t.group is not None:
                head += f"  (group {_quote(t.group)}"
                if t.exclusive:
                    if t.holds:
                        head += ", won"
                    elif t.shadowed_by is not None:
                        head += f", {_quote(t.shadowed_by)} won" + (
                            " although this condition holds" if t.condition_holds else "")
                head += ")"
            lines.append(head)
            _render_node(t.tree, 1, lines)
        for a in self.audiences:
            lines.append(f"audience {_quote(a.name)} {_CHECK[a.holds]}")
            _render_node(a.tree, 1, lines)
        return "\n".join(lines)


def _render_node(node: ExplainNode, depth: int, lines: list[str]) -> None:
    lines.append("  " * depth + node.line)
    for child in _display_children(node):
        _render_node(child, depth + 1, lines)


def _display_children(node: ExplainNode) -> list[ExplainNode]:
    """What render shows under a node. Connectives show their items. A
    comparison's line already shows its operands' values, so under it come
    what those operands are made of (a function's inputs, an aggregate with
    its row counts); plain fields and constants are not repeated."""
    if node.kind in ("and", "or", "not"):
        return node.children
    if node.kind in _COMPARISONS or node.kind == "condition":
        out = []
        for child in node.children:
            if child.kind in _LEAVES:
                continue
            if child.kind in ("func", "arith", "neg", "rank"):
                out.extend(_inputs(child))
            else:
                out.append(child)
        return out
    return _inputs(node)


def _inputs(node: ExplainNode) -> list[ExplainNode]:
    return [c for c in node.children if c.kind != "const"]


class _Tracer:
    """Evaluates by walking the IR and records every sub-expression. Slow by
    design; it must agree with the closures (the tests check that)."""

    def __init__(self, evaluator: PythonEvaluator, follower: Follower, as_of: _dt.datetime):
        self.ev = evaluator
        self.ruleset = evaluator.ruleset
        self.config = evaluator.config
        self.f = follower
        self.as_of = as_of
        self.raw: dict[str, bool] = {}
        self.rows: dict = {}

    def text(self, e, in_source=False):
        return self.ev.text_of(e, in_source)

    # -- tags -------------------------------------------------------------------------------------
    def raw_holds(self, name: str) -> bool:
        if name not in self.raw:
            self.raw[name] = _truth(self.node(self.ruleset.tags[name].condition).value)
        return self.raw[name]

    def effective(self, name: str) -> bool:
        for s in self.ruleset.earlier_siblings(name):
            if s.condition is not None and self.raw_holds(s.name):
                return False
        return self.raw_holds(name)

    def explanation(self) -> Explanation:
        tags = []
        for rule in self.ruleset.computed:
            tree = self.condition_node(rule.condition)
            own = _truth(tree.value)
            self.raw[rule.name] = own
            shadowed_by = None
            for s in self.ruleset.earlier_siblings(rule.name):
                if s.condition is not None and self.raw_holds(s.name):
                    shadowed_by = s.name
                    break
            tags.append(TagExplanation(rule.name, rule.group, rule.exclusive, own,
                                       own and shadowed_by is None, shadowed_by, tree))
        audiences = []
        for name, a in self.ruleset.audiences.items():
            tree = self.condition_node(a.condition)
            audiences.append(AudienceExplanation(name, _truth(tree.value), tree))
        return Explanation(self.f.id, self.as_of, tags, audiences)

    def condition_node(self, e) -> ExplainNode:
        node = self.node(e)
        if _is_strict(e):
            return node
        # A non-strict boolean used as a condition: missing counts as false.
        return ExplainNode(node.text, _truth(node.value), "condition",
                           f"{node.text} = {render_value(node.value)} {_CHECK[_truth(node.value)]}", [node])

    # -- expressions ---------------------------------------------------------------------------------
    def node(self, e, row=None) -> ExplainNode:
        kind = type(e).__name__.lower()
        text = self.text(e, row is not None)
        children: list[ExplainNode] = []
        rows = None
        if isinstance(e, ir.Const):
            if e.type.kind == "list":
                children = [self.node(i, row) for i in e.value]
                value = tuple(c.value for c in children)
            else:
                value = e.value
            line = text
        elif isinstance(e, ir.Field):
            value = self.f.fields.get(e.name)
            if value is None and e.name == self.config.followers.id:
                value = self.f.id
            line = f"{text} = {render_value(value)}"
        elif isinstance(e, ir.SourceField):
            value = row.get(e.name)
            line = f"{text} = {render_value(value)}"
        elif isinstance(e, ir.Now):
            value = self.as_of
            line = f"{text} = {render_value(value)}"
        elif isinstance(e, ir.Func):
            children = [self.node(a, row) for a in e.args]
            vals = [c.value for c in children]
            if e.name in ("days_since", "hours_since"):
                value = _since(self.as_of, vals[0], _DAY if e.name == "days_since" else _HOUR)
            elif e.name == "coalesce":
                value = next((v for v in vals if v is not None), None)
                if value is not None and e.type.kind == "float":
                    value = float(value)
            elif e.name == "contains":
                value = _contains(*vals)
            elif e.name == "starts_with":
                value = _starts_with(*vals)
            else:
                raise CompileError(f"the Python evaluator does not implement {e.name}()", location=_where(e.span))
            line = f"{text} = {render_value(value)}"
        elif isinstance(e, ir.Aggregate):
            value, rows = self.aggregate(e)
            line = f"{text} = {render_value(value)}  ({rows[0]} of {rows[1]} rows)"
        elif isinstance(e, ir.Rank):
            # The follower's own value (and whether it is in the population),
            # then its rank among the prepared population.
            children = [self.node(e.expr)]
            if e.where is not None:
                children.append(self.condition_node(e.where))
            value = self.ev._compiler.rank_table(e, self.as_of, self.f.id)
            line = f"{text} = {render_value(value)}"
        elif isinstance(e, ir.TagRef):
            rule = self.ruleset.tags[e.name]
            if rule.manual:
                value = e.name in self.f.tags
                line = f"{text} {_CHECK[value]}  (manual: {'stored' if value else 'not stored'})"
            else:
                value = self.effective(e.name)
                line = f"{text} {_CHECK[value]}  (computed)"
        elif isinstance(e, ir.Not):
            children = [self.condition_node_at(e.operand, row)]
            value = not _truth(children[0].value)
            line = f"not {_CHECK[value]}"
        elif isinstance(e, (ir.And, ir.Or)):
            children = [self.condition_node_at(i, row) for i in e.items]
            truths = [_truth(c.value) for c in children]
            value = all(truths) if isinstance(e, ir.And) else any(truths)
            line = f"{'and' if isinstance(e, ir.And) else 'or'} {_CHECK[value]}"
        elif isinstance(e, ir.Compare):
            children = [self.node(e.left, row), self.node(e.right, row)]
            a, b = _coerce_pair(e.left.type, e.right.type, children[0].value, children[1].value)
            value = a is not None and b is not None and _COMPARE[e.op](a, b)
            line = f"{_shown(children[0], True)} {_OP_SYMBOL[e.op]} {_shown(children[1])} {_CHECK[value]}"
        elif isinstance(e, ir.Between):
            children = [self.node(x, row) for x in (e.operand, e.low, e.high)]
            o, lo, hi = (c.value for c in children)
            if o is None or lo is None or hi is None:
                value = False
            else:
                a1, b1 = _coerce_pair(e.operand.type, e.low.type, o, lo)
                a2, b2 = _coerce_pair(e.operand.type, e.high.type, o, hi)
                value = a1 >= b1 and a2 <= b2
            line = (f"{_shown(children[0], True)} between {_shown(children[1])} and {_shown(children[2])} "
                    f"{_CHECK[value]}")
        elif isinstance(e, ir.InList):
            children = [self.node(x, row) for x in (e.operand, *e.items)]
            o = children[0].value
            results = []
            for item, child in zip(e.items, children[1:]):
                a, b = _coerce_pair(e.operand.type, item.type, o, child.value)
                results.append(a is not None and b is not None and (a != b if e.negated else a == b))
            value = all(results) if e.negated else any(results)
            value = bool(value) and o is not None
            items = ", ".join(_shown(c) for c in children[1:])
            line = f"{_shown(children[0], True)} {'not in' if e.negated else 'in'} [{items}] {_CHECK[value]}"
        elif isinstance(e, ir.IsMissing):
            children = [self.node(e.operand, row)]
            value = (children[0].value is None) != e.negated
            line = f"{_shown(children[0], True)} is {'not missing' if e.negated else 'missing'} {_CHECK[value]}"
        elif isinstance(e, ir.Arith):
            children = [self.node(e.left, row), self.node(e.right, row)]
            a, b = children[0].value, children[1].value
            if e.type.kind == "datetime":
                value = _shift(a, b, 1 if e.op == "+" else -1)
            elif e.op == "/":
                value = _divide(a, b)
            else:
                a, b = _coerce_pair(e.left.type, e.right.type, a, b)
                value = None if a is None or b is None else _ARITH_OP[e.op](a, b)
            line = f"{text} = {render_value(value)}"
        elif isinstance(e, ir.Neg):
            children = [self.node(e.operand, row)]
            value = None if children[0].value is None else -children[0].value
            line = f"{text} = {render_value(value)}"
        else:
            raise CompileError(f"cannot evaluate {type(e).__name__} nodes")
        return ExplainNode(text, value, kind, line, children, rows)

    def condition_node_at(self, e, row):
        if row is None:
            return self.condition_node(e)
        node = self.node(e, row)
        return node if _is_strict(e) else ExplainNode(node.text, _truth(node.value), "condition", node.line, [node])

    def aggregate(self, e: ir.Aggregate):
        time = self.config.sources[e.source].time
        key = e.source
        if key not in self.rows:
            self.rows[key] = _visible(self.f.rows.get(e.source), time, self.as_of)
        visible = self.rows[key]
        kept = []
        lower = self.as_of - _dt.timedelta(seconds=e.within) if e.within is not None else None
        for r in visible:
            if lower is not None and not r[time] > lower:
                continue
            if e.where is not None and not _truth(self.node(e.where, r).value):
                continue
            kept.append(r)
        value = _reducer(e, time)(kept)
        return value, (len(kept), len(visible))


def _truth(v) -> bool:
    return bool(v)


def _coerce_pair(lt, rt, a, b):
    lconv, rconv = _pair_coercion(lt, rt)
    if lconv is not None and a is not None:
        a = lconv(a)
    if rconv is not None and b is not None:
        b = rconv(b)
    return a, b


def _shown(node: ExplainNode, left: bool = False) -> str:
    """An operand inside a comparison line: constants as written, others with their value."""
    if node.kind == "const":
        return node.text
    if left:
        return f"{node.text} = {render_value(node.value)}"
    return f"{node.text} (= {render_value(node.value)})"
