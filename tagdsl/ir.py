"""The resolved, typed intermediate representation that the compilers consume.

Produced by the ``resolve`` check pass from the syntax tree: names are bound
(follower fields, source fields; ``let`` names are inlined), ``date(...)`` and
``datetime(...)`` are folded to constants, every node has a ``Type``, and
``and``/``or`` chains are flattened (so deep chains do not recurse deeply).

Semantics (docs/language.md is the authority):
- two-valued logic: a comparison, ``between`` or ``in``/``not in`` with a
  missing operand is false; a missing boolean is false as a condition;
- arithmetic and functions with a missing operand are missing; ``/`` is true
  division with a float result, and division by zero is missing;
- datetimes are naive wall-clock times in the project time zone.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Optional, Union

from .spans import Span
from .ast import _NO_SPAN


@dataclass(frozen=True)
class Type:
    kind: str  # string integer decimal float boolean date datetime duration list
    elem: Optional["Type"] = None  # for lists

    def __str__(self) -> str:
        return f"list[{self.elem}]" if self.kind == "list" else self.kind

    @property
    def numeric(self) -> bool:
        return self.kind in ("integer", "decimal", "float")

    @property
    def temporal(self) -> bool:
        return self.kind in ("date", "datetime")


STRING, INTEGER, DECIMAL, FLOAT = Type("string"), Type("integer"), Type("decimal"), Type("float")
BOOLEAN, DATE, DATETIME, DURATION = Type("boolean"), Type("date"), Type("datetime"), Type("duration")
TYPES = {t.kind: t for t in (STRING, INTEGER, DECIMAL, FLOAT, BOOLEAN, DATE, DATETIME, DURATION)}


def _span():
    return field(default=_NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Const:
    """value: str | int | Decimal | float | bool | date | datetime (naive local)
    | int seconds (duration) | tuple (list)."""

    value: object
    type: Type
    span: Span = _span()


@dataclass(frozen=True)
class Field:
    """A follower field (a column of the followers table)."""

    name: str
    column: str
    type: Type
    scale: Optional[int] = None
    span: Span = _span()


@dataclass(frozen=True)
class SourceField:
    """A field (or the time column) of an event source row; only inside an Aggregate."""

    source: str
    name: str
    column: str
    type: Type
    scale: Optional[int] = None
    span: Span = _span()


@dataclass(frozen=True)
class Now:
    type: Type = DATETIME
    span: Span = _span()


@dataclass(frozen=True)
class Func:
    """days_since hours_since coalesce contains starts_with (ranking
    functions are ``Rank``); ``type`` is the result type."""

    name: str
    args: tuple["Expr", ...]
    type: Type
    span: Span = _span()


@dataclass(frozen=True)
class Aggregate:
    """``func`` over the rows of ``source`` belonging to the follower, with
    time <= as-of, satisfying ``where`` and inside ``within`` seconds.

    count/exists: ``field`` is None. sum/avg/min/max/last/first: ``field``.
    """

    func: str
    source: str
    field: Optional[SourceField]
    where: Optional["Expr"]
    within: Optional[int]  # seconds
    type: Type
    span: Span = _span()


@dataclass(frozen=True)
class Rank:
    """A ranking function over the population: ``quintile`` (integer 1-5,
    NTILE(5) ordered by value then follower id) or ``percent_rank`` (float in
    [0, 1], SQL's PERCENT_RANK). The population is every follower for whom
    ``where`` holds (all when None) and ``expr`` is present; for anyone else
    the value is missing. ``expr`` is follower level (never another Rank)."""

    func: str  # quintile | percent_rank
    expr: "Expr"
    where: Optional["Expr"]
    type: Type
    span: Span = _span()


@dataclass(frozen=True)
class TagRef:
    name: str
    type: Type = BOOLEAN
    span: Span = _span()


@dataclass(frozen=True)
class Not:
    operand: "Expr"
    type: Type = BOOLEAN
    span: Span = _span()


@dataclass(frozen=True)
class And:
    items: tuple["Expr", ...]
    type: Type = BOOLEAN
    span: Span = _span()


@dataclass(frozen=True)
class Or:
    items: tuple["Expr", ...]
    type: Type = BOOLEAN
    span: Span = _span()


@dataclass(frozen=True)
class Compare:
    op: str  # == != < <= > >=
    left: "Expr"
    right: "Expr"
    type: Type = BOOLEAN
    span: Span = _span()


@dataclass(frozen=True)
class Arith:
    """+ - * / ; datetime ± duration; ``type`` is the result type."""

    op: str
    left: "Expr"
    right: "Expr"
    type: Type
    span: Span = _span()


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    type: Type
    span: Span = _span()


@dataclass(frozen=True)
class Between:
    operand: "Expr"
    low: "Expr"
    high: "Expr"
    type: Type = BOOLEAN
    span: Span = _span()


@dataclass(frozen=True)
class InList:
    operand: "Expr"
    items: tuple["Expr", ...]
    negated: bool = False
    type: Type = BOOLEAN
    span: Span = _span()


@dataclass(frozen=True)
class IsMissing:
    operand: "Expr"
    negated: bool = False
    type: Type = BOOLEAN
    span: Span = _span()


Expr = Union[Const, Field, SourceField, Now, Func, Aggregate, Rank, TagRef, Not, And, Or, Compare, Arith, Neg,
             Between, InList, IsMissing]


@dataclass
class TagRule:
    name: str
    condition: Optional[Expr]  # None for manual tags
    manual: bool = False
    group: Optional[str] = None
    exclusive: bool = False  # member of an exclusive group
    priority: int = 0
    expires: Optional[int] = None  # seconds
    description: Optional[str] = None
    owner: Optional[str] = None
    sensitive: bool = False
    review: Optional[str] = None
    span: Span = _NO_SPAN
    name_span: Span = _NO_SPAN
    reply: Optional[str] = None  # passive reply text when a push makes a follower gain this tag (serve)


@dataclass
class Group:
    name: str
    exclusive: bool
    tags: list[str]
    span: Span = _NO_SPAN


@dataclass
class Audience:
    name: str
    condition: Expr
    description: Optional[str] = None
    owner: Optional[str] = None
    span: Span = _NO_SPAN


@dataclass
class Ruleset:
    """A checked ruleset: every file of it, as one namespace."""

    tags: dict[str, TagRule]  # in file order
    groups: dict[str, Group]
    audiences: dict[str, Audience]
    files: list[str] = field(default_factory=list)
    source_hash: str = ""

    @property
    def computed(self) -> list[TagRule]:
        return [t for t in self.tags.values() if not t.manual]

    @property
    def manual(self) -> list[TagRule]:
        return [t for t in self.tags.values() if t.manual]

    def earlier_siblings(self, name: str) -> list[TagRule]:
        """Rules of the same exclusive group tried before ``name`` (first match wins)."""
        rule = self.tags[name]
        if not rule.exclusive or rule.group is None:
            return []
        members = self.groups[rule.group].tags
        return [self.tags[m] for m in members[: members.index(name)]]

    def effective_condition(self, name: str) -> Expr:
        """The condition under which the follower gets ``name``: its own, and in
        an exclusive group, none of the earlier members'."""
        rule = self.tags[name]
        assert rule.condition is not None, "manual tags have no condition"
        earlier = [Not(s.condition) for s in self.earlier_siblings(name) if s.condition is not None]
        return And((*earlier, rule.condition)) if earlier else rule.condition


def children(node) -> tuple:
    if isinstance(node, (Func,)):
        return node.args
    if isinstance(node, Aggregate):
        return tuple(x for x in (node.field, node.where) if x is not None)
    if isinstance(node, Rank):
        return (node.expr,) if node.where is None else (node.expr, node.where)
    if isinstance(node, (Not, Neg)):
        return (node.operand,)
    if isinstance(node, (And, Or)):
        return node.items
    if isinstance(node, (Compare, Arith)):
        return (node.left, node.right)
    if isinstance(node, Between):
        return (node.operand, node.low, node.high)
    if isinstance(node, InList):
        return (node.operand, *node.items)
    if isinstance(node, IsMissing):
        return (node.operand,)
    return ()


def walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def tag_refs(expr) -> set[str]:
    return {n.name for n in walk(expr) if isinstance(n, TagRef)}


def to_datetime(value) -> _dt.datetime:
    """A date is midnight of that day wherever it meets a datetime."""
    if isinstance(value, _dt.datetime):
        return value
    return _dt.datetime(value.year, value.month, value.day)
