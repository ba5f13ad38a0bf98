"""The syntax tree of TagDSL, as written (before name resolution and typing).

Every node carries the ``Span`` it came from. Equality ignores spans, so
``parse(fmt(x)) == parse(x)`` compares structure only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Union

from .spans import Span

_NO_SPAN = Span("", 0, 0, 0, 0, 0, 0)


def _span_field():
    return field(default=_NO_SPAN, compare=False, repr=False)


# -- expressions -----------------------------------------------------------

DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class Duration:
    amount: int
    unit: str  # one of DURATION_UNITS

    @property
    def seconds(self) -> int:
        return self.amount * DURATION_UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


@dataclass(frozen=True)
class Literal:
    """kind: int | decimal | float | string | bool | duration."""

    value: Union[int, Decimal, str, bool, Duration]
    kind: str
    span: Span = _span_field()


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span = _span_field()


@dataclass(frozen=True)
class Name:
    name: str
    span: Span = _span_field()


@dataclass(frozen=True)
class SourceField:
    """``orders.amount``: a field of an event source (only inside aggregates)."""

    source: str
    field: str
    span: Span = _span_field()
    field_span: Span = _span_field()


@dataclass(frozen=True)
class Call:
    """``f(a, b)`` or an aggregate ``count(orders where c within 30d)``.

    Whether ``func`` is an aggregate is decided by the checker, so the
    grammar stays small and errors can say "count() takes a source".
    """

    func: str
    args: tuple["Expr", ...]
    where: "Expr | None" = None
    within: "Expr | None" = None
    span: Span = _span_field()
    func_span: Span = _span_field()


@dataclass(frozen=True)
class TagRef:
    name: str
    span: Span = _span_field()
    name_span: Span = _span_field()


@dataclass(frozen=True)
class Unary:
    op: str  # "not" | "-"
    operand: "Expr"
    span: Span = _span_field()


@dataclass(frozen=True)
class Binary:
    op: str  # and or + - * / == != < <= > >=
    left: "Expr"
    right: "Expr"
    span: Span = _span_field()
    op_span: Span = _span_field()


@dataclass(frozen=True)
class Between:
    operand: "Expr"
    low: "Expr"
    high: "Expr"
    span: Span = _span_field()


@dataclass(frozen=True)
class In:
    operand: "Expr"
    options: "Expr"
    negated: bool = False
    span: Span = _span_field()


@dataclass(frozen=True)
class IsMissing:
    operand: "Expr"
    negated: bool = False  # ``is not missing``
    span: Span = _span_field()


@dataclass(frozen=True)
class Paren:
    """Parentheses the author wrote; kept so ``fmt`` preserves them."""

    expr: "Expr"
    span: Span = _span_field()


Expr = Union[Literal, ListExpr, Name, SourceField, Call, TagRef, Unary, Binary, Between, In, IsMissing, Paren]

AGGREGATES = ("count", "exists", "sum", "avg", "min", "max", "last", "first")
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
ARITHMETIC = ("+", "-", "*", "/")


# -- statements ------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeItem:
    key: str
    value: "Literal | None"
    span: Span = _span_field()
    key_span: Span = _span_field()


@dataclass(frozen=True)
class TagStmt:
    name: str
    condition: "Expr | None"  # None for manual tags
    manual: bool = False
    attributes: tuple[AttributeItem, ...] = ()
    has_block: bool = False  # ``{ }`` written (possibly empty)
    span: Span = _span_field()
    name_span: Span = _span_field()


@dataclass(frozen=True)
class GroupStmt:
    name: str
    exclusive: bool
    tags: tuple[TagStmt, ...]
    span: Span = _span_field()
    name_span: Span = _span_field()


@dataclass(frozen=True)
class AudienceStmt:
    name: str
    expr: "Expr"
    attributes: tuple[AttributeItem, ...] = ()
    has_block: bool = False
    span: Span = _span_field()
    name_span: Span = _span_field()


@dataclass(frozen=True)
class LetStmt:
    name: str
    expr: "Expr"
    span: Span = _span_field()
    name_span: Span = _span_field()


Statement = Union[TagStmt, GroupStmt, AudienceStmt, LetStmt]


@dataclass(frozen=True)
class Comment:
    text: str  # including the leading '#'
    span: Span = _span_field()


@dataclass(frozen=True)
class Module:
    """One parsed ``.tag`` file."""

    path: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)


def walk(node):
    """Yield ``node`` and every expression/statement below it, depth first."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        yield n
        if isinstance(n, Module):
            stack.extend(reversed(n.statements))
        elif isinstance(n, GroupStmt):
            stack.extend(reversed(n.tags))
        elif isinstance(n, TagStmt):
            stack.append(n.condition)
        elif isinstance(n, AudienceStmt):
            stack.append(n.expr)
        elif isinstance(n, LetStmt):
            stack.append(n.expr)
        elif isinstance(n, ListExpr):
            stack.extend(reversed(n.items))
        elif isinstance(n, Call):
            stack.extend([n.within, n.where])
            stack.extend(reversed(n.args))
        elif isinstance(n, Unary):
            stack.append(n.operand)
        elif isinstance(n, Binary):
            stack.extend([n.right, n.left])
        elif isinstance(n, Between):
            stack.extend([n.high, n.low, n.operand])
        elif isinstance(n, In):
            stack.extend([n.options, n.operand])
        elif isinstance(n, IsMissing):
            stack.append(n.operand)
        elif isinstance(n, Paren):
            stack.append(n.expr)
