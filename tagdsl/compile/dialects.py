"""Per-dialect SQL differences, as small SQLAlchemy constructs (sqlglot-style).

The SQL compiler builds one dialect-neutral SQLAlchemy Core tree; every place
where SQLite, PostgreSQL and MySQL/MariaDB must be spelled differently is one
of the constructs below, rendered by a ``@compiles`` hook per dialect. So the
same statement runs on any engine and ``sql_text`` can render it for each.

Dialect names: ``sqlite``, ``postgresql``, ``mysql`` (SQLAlchemy's MariaDB
dialect is named ``mariadb`` and renders like ``mysql``).
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Numeric, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter, ColumnElement, literal
from sqlalchemy.types import TypeEngine

MYSQL = ("mysql", "mariadb")
DOUBLE = Float(precision=53)


def _name(compiler) -> str:
    name = compiler.dialect.name
    return "mysql" if name in MYSQL else name


def _modulo(compiler) -> str:
    # Drivers with format/pyformat placeholders (psycopg, PyMySQL) need '%' doubled.
    return "%%" if getattr(compiler.preparer, "_double_percents", False) else "%"


class _Wrapper(ColumnElement):
    """One child expression, rendered differently per dialect."""

    inherit_cache = True
    _traverse_internals = [("element", visitors.InternalTraversal.dp_clauseelement)]

    def __init__(self, element: ColumnElement, type_: TypeEngine):
        self.element = element
        self.type = type_


class _Pair(ColumnElement):
    inherit_cache = True
    _traverse_internals = [
        ("left", visitors.InternalTraversal.dp_clauseelement),
        ("right", visitors.InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, left: ColumnElement, right: ColumnElement, type_: TypeEngine):
        self.left = left
        self.right = right
        self.type = type_


# -- time ---------------------------------------------------------------------------------------

class NormTime(_Wrapper):
    """An instant (or date) as a comparable value.

    SQLite keeps instants as text in whatever format the application wrote
    ('YYYY-MM-DD HH:MM:SS', ISO 'T', SQLAlchemy's '… .ffffff'), and text
    comparison is wrong across formats (PITFALLS). Both sides become
    julianday(): SQLite parses any of them to integer milliseconds and returns
    ms / 86400000.0, which is strictly increasing and exact for equal instants,
    so comparisons, MIN/MAX and equality are exact at millisecond precision,
    like strftime('%Y-%m-%d %H:%M:%f', …) but six times cheaper per row.
    (Differences of julianday values are never used: see ElapsedMicros.)
    Elsewhere: the value itself."""

    inherit_cache = True

    def __init__(self, element: ColumnElement):
        super().__init__(element, DateTime())


@compiles(NormTime)
def _norm_time(el, compiler, **kw):
    return compiler.process(el.element, **kw)


@compiles(NormTime, "sqlite")
def _norm_time_sqlite(el, compiler, **kw):
    return f"julianday({compiler.process(el.element, **kw)})"


class AddSeconds(_Pair):
    """instant + seconds (an integer expression, may be negative); on SQLite
    the result is already a julianday() value, like NormTime."""

    inherit_cache = True

    def __init__(self, instant: ColumnElement, seconds: ColumnElement):
        super().__init__(instant, seconds, DateTime())


@compiles(AddSeconds, "sqlite")
def _add_seconds_sqlite(el, compiler, **kw):
    t, s = compiler.process(el.left, **kw), compiler.process(el.right, **kw)
    return f"julianday({t}, CAST({s} AS TEXT) || ' seconds')"


@compiles(AddSeconds, "postgresql")
def _add_seconds_pg(el, compiler, **kw):
    t, s = compiler.process(el.left, **kw), compiler.process(el.right, **kw)
    return f"(CAST({t} AS TIMESTAMP) + ({s}) * INTERVAL '1 second')"


@compiles(AddSeconds, "mysql")
@compiles(AddSeconds, "mariadb")
def _add_seconds_mysql(el, compiler, **kw):
    t, s = compiler.process(el.left, **kw), compiler.process(el.right, **kw)
    return f"DATE_ADD({t}, INTERVAL ({s}) SECOND)"


class ElapsedMicros(_Pair):
    """Exact whole microseconds from ``start`` to ``end`` (negative when start
    is later), as an integer. Never julianday floats (PITFALLS): SQLite works on
    integer epoch seconds plus the millisecond digits."""

    inherit_cache = True

    def __init__(self, start: ColumnElement, end: ColumnElement):
        super().__init__(start, end, BigInteger())


def _sqlite_epoch_ms(expr: str) -> str:
    # strftime('%s') is whole seconds (floor); '%f' is 'SS.SSS', its last three
    # characters the milliseconds. Both come from the same parsed instant (text,
    # or a julianday() number, which SQLite's date functions also accept).
    return (f"(CAST(strftime('%s', {expr}) AS INTEGER) * 1000"
            f" + CAST(substr(strftime('%f', {expr}), 4) AS INTEGER))")


def _raw_time(el):
    # strftime() parses any instant text itself; no need to normalise first.
    return el.element if isinstance(el, NormTime) else el


@compiles(ElapsedMicros, "sqlite")
def _elapsed_sqlite(el, compiler, **kw):
    start, end = compiler.process(_raw_time(el.left), **kw), compiler.process(_raw_time(el.right), **kw)
    return f"(({_sqlite_epoch_ms(end)} - {_sqlite_epoch_ms(start)}) * 1000)"


@compiles(ElapsedMicros, "postgresql")
def _elapsed_pg(el, compiler, **kw):
    start, end = compiler.process(el.left, **kw), compiler.process(el.right, **kw)
    # EXTRACT(EPOCH FROM interval) is an exact numeric (microsecond scale) on PG 14+.
    return (f"CAST(EXTRACT(EPOCH FROM (CAST({end} AS TIMESTAMP) - CAST({start} AS TIMESTAMP)))"
            f" * 1000000 AS BIGINT)")


@compiles(ElapsedMicros, "mysql")
@compiles(ElapsedMicros, "mariadb")
def _elapsed_mysql(el, compiler, **kw):
    start, end = compiler.process(el.left, **kw), compiler.process(el.right, **kw)
    return f"TIMESTAMPDIFF(MICROSECOND, {start}, {end})"


# -- numbers ---------------------------------------------------------------------------------------

class FloorDiv(_Wrapper):
    """floor(element / divisor) for an integer expression and a positive
    integer constant, exact (SQL integer division truncates toward zero, and
    MySQL's `/` is decimal division)."""

    inherit_cache = True
    _traverse_internals = _Wrapper._traverse_internals + [("divisor", visitors.InternalTraversal.dp_plain_obj)]

    def __init__(self, element: ColumnElement, divisor: int):
        super().__init__(element, BigInteger())
        self.divisor = int(divisor)


@compiles(FloorDiv)
def _floor_div(el, compiler, **kw):
    x, d = compiler.process(el.element, **kw), el.divisor
    div = "DIV" if _name(compiler) == "mysql" else "/"
    # Truncated quotient, minus one when the remainder is negative (% keeps the dividend's sign).
    return f"(({x}) {div} {d} - CASE WHEN ({x}) {_modulo(compiler)} {d} < 0 THEN 1 ELSE 0 END)"


class ToDouble(_Wrapper):
    """A number as an IEEE double. ``scale``: decimal places of a scaled-integer
    decimal on SQLite (divided out there; PostgreSQL/MySQL hold real decimals)."""

    inherit_cache = True
    _traverse_internals = _Wrapper._traverse_internals + [("scale", visitors.InternalTraversal.dp_plain_obj)]

    def __init__(self, element: ColumnElement, scale: int = 0):
        super().__init__(element, DOUBLE)
        self.scale = scale


@compiles(ToDouble, "sqlite")
def _to_double_sqlite(el, compiler, **kw):
    x = compiler.process(el.element, **kw)
    return f"(CAST({x} AS REAL) / {10 ** el.scale})" if el.scale else f"CAST({x} AS REAL)"


@compiles(ToDouble, "postgresql")
def _to_double_pg(el, compiler, **kw):
    return f"CAST({compiler.process(el.element, **kw)} AS DOUBLE PRECISION)"


@compiles(ToDouble, "mysql")
@compiles(ToDouble, "mariadb")
def _to_double_mysql(el, compiler, **kw):
    # CAST(… AS DOUBLE): MariaDB 10.11 and MySQL >= 8.0.17.
    return f"CAST({compiler.process(el.element, **kw)} AS DOUBLE)"


class Scaled(_Wrapper):
    """A decimal column. SQLite has no decimal type (PITFALLS: a NUMERIC column
    holds binary floats, and 1666.67+1666.67+1666.66 is not 5000): there it is
    the integer number of 10^-scale units; elsewhere the exact column itself."""

    inherit_cache = True
    _traverse_internals = _Wrapper._traverse_internals + [("scale", visitors.InternalTraversal.dp_plain_obj)]

    def __init__(self, element: ColumnElement, scale: int):
        super().__init__(element, Numeric())
        self.scale = scale


@compiles(Scaled)
def _scaled(el, compiler, **kw):
    return compiler.process(el.element, **kw)


@compiles(Scaled, "sqlite")
def _scaled_sqlite(el, compiler, **kw):
    return f"CAST(ROUND(({compiler.process(el.element, **kw)}) * {10 ** el.scale}) AS INTEGER)"


class Rescale(_Wrapper):
    """Aligns a scaled-integer decimal to more decimal places (SQLite: × 10^k);
    identity where decimals are native."""

    inherit_cache = True
    _traverse_internals = _Wrapper._traverse_internals + [("factor", visitors.InternalTraversal.dp_plain_obj)]

    def __init__(self, element: ColumnElement, factor: int):
        super().__init__(element, Numeric())
        self.factor = factor


@compiles(Rescale)
def _rescale(el, compiler, **kw):
    # Identity, but still grouped: the element may be compound (`0 + 1`) and
    # SQLAlchemy does not know this construct's precedence, so `0.01 - (0 + 1)`
    # would otherwise render as `0.01 - 0 + 1`.
    return f"({compiler.process(el.element, **kw)})"


@compiles(Rescale, "sqlite")
def _rescale_sqlite(el, compiler, **kw):
    # The element may be compound (`a + b`): group it before multiplying.
    return f"(({compiler.process(el.element, **kw)}) * {el.factor})"


class DecimalLiteral(ColumnElement):
    """A decimal constant: bound as the scaled integer on SQLite, as a Decimal elsewhere."""

    inherit_cache = True
    _traverse_internals = [
        ("native", visitors.InternalTraversal.dp_clauseelement),
        ("scaled", visitors.InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, value: Decimal, scale: int):
        self.type = Numeric()
        self.native: BindParameter = literal(value, Numeric())
        units = value.scaleb(scale)
        assert units == units.to_integral_value(), (value, scale)
        self.scaled: BindParameter = literal(int(units), BigInteger())


@compiles(DecimalLiteral)
def _decimal_literal(el, compiler, **kw):
    return compiler.process(el.native, **kw)


@compiles(DecimalLiteral, "sqlite")
def _decimal_literal_sqlite(el, compiler, **kw):
    return compiler.process(el.scaled, **kw)


# -- strings ---------------------------------------------------------------------------------------

class BinaryText(_Wrapper):
    """A string compared by code point, case- and space-sensitive, whatever the
    column's collation (a user's table may be case-insensitive).
    MySQL/MariaDB: CAST(… AS BINARY) (their default collations ignore case, and
    even utf8mb4_bin pads trailing spaces: 'VIP' = 'VIP '). PostgreSQL:
    COLLATE "C" (nondeterministic ICU collations make even '=' inexact).
    SQLite: COLLATE BINARY (a column may be declared NOCASE). A bound value
    takes the collation of the column it meets, so it is left bare there."""

    inherit_cache = True

    def __init__(self, element: ColumnElement):
        super().__init__(element, String())


def _bare(el) -> bool:
    return isinstance(el, BindParameter)


@compiles(BinaryText)
def _binary_text(el, compiler, **kw):
    return compiler.process(el.element, **kw)


@compiles(BinaryText, "sqlite")
def _binary_text_sqlite(el, compiler, **kw):
    x = compiler.process(el.element, **kw)
    return x if _bare(el.element) else f"{x} COLLATE BINARY"


@compiles(BinaryText, "postgresql")
def _binary_text_pg(el, compiler, **kw):
    x = compiler.process(el.element, **kw)
    return x if _bare(el.element) else f'({x} COLLATE "C")'


@compiles(BinaryText, "mysql")
@compiles(BinaryText, "mariadb")
def _binary_text_mysql(el, compiler, **kw):
    return f"CAST({compiler.process(el.element, **kw)} AS BINARY)"


class TrueDiv(_Pair):
    """a / b for two doubles, spelled plainly (SQLAlchemy's own `/` adds casts
    meant for integer operands)."""

    inherit_cache = True

    def __init__(self, left: ColumnElement, right: ColumnElement):
        super().__init__(left, right, DOUBLE)


@compiles(TrueDiv)
def _true_div(el, compiler, **kw):
    return f"(({compiler.process(el.left, **kw)}) / ({compiler.process(el.right, **kw)}))"


class StrPos(_Pair):
    """1-based position of ``right`` in ``left`` (0: absent; NULL if either is
    NULL), case-sensitive, no LIKE wildcards to escape."""

    inherit_cache = True

    def __init__(self, haystack: ColumnElement, needle: ColumnElement):
        super().__init__(haystack, needle, BigInteger())


@compiles(StrPos, "sqlite")
def _strpos_sqlite(el, compiler, **kw):
    return f"instr({compiler.process(el.left, **kw)}, {compiler.process(el.right, **kw)})"


@compiles(StrPos, "postgresql")
def _strpos_pg(el, compiler, **kw):
    # COLLATE "C": PostgreSQL refuses substring search under nondeterministic collations.
    s, sub = compiler.process(BinaryText(el.left), **kw), compiler.process(BinaryText(el.right), **kw)
    return f"strpos({s}, {sub})"


@compiles(StrPos, "mysql")
@compiles(StrPos, "mariadb")
def _strpos_mysql(el, compiler, **kw):
    s, sub = compiler.process(el.left, **kw), compiler.process(el.right, **kw)
    return f"LOCATE(CAST({sub} AS BINARY), CAST({s} AS BINARY))"


class GroupKey(_Wrapper):
    """A follower column as a GROUP BY key: by code point, so 'VIP' and 'vip '
    are separate groups on every backend (as BinaryText, for grouping)."""

    inherit_cache = True

    def __init__(self, element: ColumnElement):
        super().__init__(element, element.type)


@compiles(GroupKey)
def _group_key(el, compiler, **kw):
    return compiler.process(BinaryText(el.element), **kw)


# -- aggregates ------------------------------------------------------------------------------------

class Extreme(_Wrapper):
    """MAX/MIN of a value; PostgreSQL has no MAX(boolean): bool_or/bool_and
    (true > false, NULLs ignored, exactly MAX/MIN on 0/1 elsewhere)."""

    inherit_cache = True
    _traverse_internals = _Wrapper._traverse_internals + [("greatest", visitors.InternalTraversal.dp_plain_obj)]

    def __init__(self, element: ColumnElement, greatest: bool):
        super().__init__(element, element.type)
        self.greatest = greatest


@compiles(Extreme)
def _extreme(el, compiler, **kw):
    fn = "max" if el.greatest else "min"
    if _name(compiler) == "postgresql" and isinstance(el.type, Boolean):
        fn = "bool_or" if el.greatest else "bool_and"
    return f"{fn}({compiler.process(el.element, **kw)})"
