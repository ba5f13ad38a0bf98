"""Pass `resolve`: bind names, check types, build the IR ruleset.

Errors here are TD2xx (names) and TD3xx (types). A sub-expression with an
error resolves to None and its parents stay silent, so one mistake gives one
diagnostic, not a cascade.
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from decimal import Decimal
from typing import Optional

from .. import ast as A
from .. import ir as I
from ..config import Config, FieldType
from ..diagnostics import RULES, Diagnostic
from ..spans import Span

FUNCTIONS = {
    "now": "now()", "days_since": "days_since(t)", "hours_since": "hours_since(t)",
    "coalesce": "coalesce(a, b, …)", "contains": "contains(s, sub)", "starts_with": "starts_with(s, prefix)",
    "date": 'date("YYYY-MM-DD")', "datetime": 'datetime("YYYY-MM-DDTHH:MM:SS")',
    "count": "count(source [where …] [within …])", "exists": "exists(source [where …] [within …])",
    "sum": "sum(source.field …)", "avg": "avg(source.field …)", "min": "min(source.field …)",
    "max": "max(source.field …)", "last": "last(source.field …)", "first": "first(source.field …)",
    "quintile": "quintile(expr [where …])", "percent_rank": "percent_rank(expr [where …])",
}
RANKING = ("quintile", "percent_rank")
TAG_ATTRIBUTES = ("description", "owner", "priority", "expires", "sensitive", "review", "reply")
# WeChat refuses a passive text reply over 2048 bytes (UTF-8) and answers the follower with nothing.
MAX_REPLY_BYTES = 2048
AUDIENCE_ATTRIBUTES = ("description", "owner")


def field_type(ft: FieldType) -> I.Type:
    return I.TYPES[ft.value]


def suggest(name: str, candidates) -> str | None:
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean `{found[0]}`?" if found else None


@dataclass(frozen=True)
class Scope:
    source: Optional[str] = None  # inside an aggregate over this source
    let_chain: tuple[str, ...] = ()


class Resolver:
    def __init__(self, config: Config, diagnostics: list[Diagnostic], tag_names: set[str]):
        self.config = config
        self.diagnostics = diagnostics
        self.tag_names = tag_names
        self.manual_tags: set[str] = set()  # tag(…) of these may appear in a ranking function
        self.lets: dict[str, A.LetStmt] = {}
        self.used_lets: set[str] = set()
        self.tz = config.tz
        fields = dict(config.followers.fields)
        self.fields = {name: I.Field(name, spec.column or name, field_type(spec.type), spec.scale)
                       for name, spec in fields.items()}
        idname = config.followers.id
        if idname not in self.fields:
            self.fields[idname] = I.Field(idname, idname, I.STRING)

    # -- reporting ---------------------------------------------------------------
    def error(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, RULES[code].severity, message, span, hint))

    # -- attributes ---------------------------------------------------------------
    def attributes(self, items, allowed, manual=False) -> dict:
        seen: dict[str, object] = {}
        for item in items:
            key, value = item.key, item.value
            if key not in allowed:
                if key in TAG_ATTRIBUTES:
                    self.error("TD208", f"`{key}` is not valid here", item.key_span,
                               f"allowed attributes: {', '.join(allowed)}")
                else:
                    self.error("TD205", f"unknown attribute `{key}`", item.key_span,
                               suggest(key, allowed) or f"allowed attributes: {', '.join(allowed)}")
                continue
            if key in seen:
                self.error("TD208", f"attribute `{key}` is given twice", item.span, "keep one")
                continue
            expected = {"description": "string", "owner": "string", "review": "string", "reply": "string",
                        "priority": "int", "expires": "duration", "sensitive": None}[key]
            if expected is None:
                if value is not None:
                    self.error("TD208", "`sensitive` takes no value", value.span, "write just `sensitive`")
                    continue
                seen[key] = True
                continue
            if value is None or value.kind != expected:
                shown = {"string": "a string", "int": "an integer", "duration": "a duration such as 90d"}[expected]
                self.error("TD208", f"`{key}` takes {shown}", item.span, f"e.g. {key} {_example(expected)}")
                continue
            if key == "expires" and manual:
                self.error("TD208", "`expires` applies to computed tags; the engine never removes manual tags",
                           item.span, "remove `expires` or make the tag computed")
                continue
            if key == "reply" and manual:
                self.error("TD208", "`reply` applies to computed tags; the engine never assigns manual tags",
                           item.span, "remove `reply` or make the tag computed")
                continue
            if key == "reply" and not value.value.strip():
                self.error("TD208", "`reply` must not be empty", value.span, 'e.g. reply "欢迎关注！"')
                continue
            if key == "reply" and len(value.value.encode("utf-8")) > MAX_REPLY_BYTES:
                size = len(value.value.encode("utf-8"))
                self.error("TD208", f"`reply` is {size} bytes; WeChat accepts at most {MAX_REPLY_BYTES}",
                           value.span, "shorten the text")
                continue
            if key == "expires" and value.value.seconds <= 0:
                self.error("TD208", "`expires` must be a positive duration", value.span, "e.g. expires 90d")
                continue
            seen[key] = value.value.seconds if key == "expires" else value.value
        return seen

    # -- expressions ------------------------------------------------------------------
    def condition(self, node: A.Expr, scope: Scope = Scope()) -> Optional[I.Expr]:
        expr = self.expr(node, scope)
        if expr is not None and expr.type != I.BOOLEAN:
            self.error("TD304", f"a condition must be true or false, but this is {_a(expr.type)}", node.span,
                       "compare it, e.g. `… >= 1`")
            return None
        return expr

    def expr(self, node: A.Expr, scope: Scope) -> Optional[I.Expr]:
        method = getattr(self, "_" + type(node).__name__)
        return method(node, scope)

    def _Paren(self, node: A.Paren, scope):
        return self.expr(node.expr, scope)

    def _Literal(self, node: A.Literal, scope):
        kind = node.kind
        if kind == "string":
            return I.Const(node.value, I.STRING, node.span)
        if kind == "int":
            return I.Const(node.value, I.INTEGER, node.span)
        if kind == "decimal":
            return I.Const(node.value, I.DECIMAL, node.span)
        if kind == "bool":
            return I.Const(node.value, I.BOOLEAN, node.span)
        if kind == "duration":
            return I.Const(node.value.seconds, I.DURATION, node.span)
        raise AssertionError(kind)

    def _ListExpr(self, node: A.ListExpr, scope):
        items = [self.expr(i, scope) for i in node.items]
        if any(i is None for i in items):
            return None
        elem = None
        for item, src in zip(items, node.items):
            if item.type.kind == "list":
                self.error("TD301", "lists cannot contain lists", src.span)
                return None
            if elem is None:
                elem = item.type
            else:
                joined = _join(elem, item.type)
                if joined is None:
                    self.error("TD301", f"list mixes {elem} and {item.type}", src.span, "use values of one type")
                    return None
                elem = joined
        return I.Const(tuple(items), I.Type("list", elem or I.STRING), node.span)

    def _Name(self, node: A.Name, scope):
        name = node.name
        if scope.source is not None:
            src = self.config.sources[scope.source]
            found = self.source_field(scope.source, name, node.span)
            if found is not None:
                return found
            if name in self.lets:
                return self.let(name, node, scope)
            candidates = [*src.fields, *( [src.time] if src.time else [])]
            hint = suggest(name, candidates)
            if name in self.fields:
                hint = f"inside `where`, names are fields of `{scope.source}` ({', '.join(candidates)})"
            self.error("TD201", f"`{name}` is not a field of source `{scope.source}`", node.span, hint)
            return None
        if name in self.fields:
            f = self.fields[name]
            return I.Field(f.name, f.column, f.type, f.scale, node.span)
        if name in self.lets:
            return self.let(name, node, scope)
        if name in self.config.sources:
            self.error("TD207", f"`{name}` is an event source, not a value", node.span,
                       f"aggregate it, e.g. count({name}) or exists({name})")
            return None
        if name in FUNCTIONS:
            self.error("TD207", f"`{name}` is a function", node.span, f"call it: {FUNCTIONS[name]}")
            return None
        self.error("TD201", f"unknown field `{name}`", node.span,
                   suggest(name, [*self.fields, *self.lets]) or
                   "declare it under [followers.fields] in tagdsl.toml, or define it with `let`")
        return None

    def let(self, name: str, node: A.Name, scope: Scope):
        self.used_lets.add(name)
        if name in scope.let_chain:
            chain = " -> ".join((*scope.let_chain[scope.let_chain.index(name):], name))
            self.error("TD607", f"`let {name}` refers to itself ({chain})", node.span,
                       "a let is a named expression; it cannot be recursive")
            return None
        inner = Scope(scope.source, (*scope.let_chain, name))
        return self.expr(self.lets[name].expr, inner)

    def source_field(self, source: str, name: str, span: Span) -> Optional[I.SourceField]:
        src = self.config.sources[source]
        if name in src.fields:
            spec = src.fields[name]
            return I.SourceField(source, name, spec.column or name, field_type(spec.type), spec.scale, span)
        if src.time and name == src.time:
            return I.SourceField(source, name, name, I.DATETIME, None, span)
        return None

    def _SourceField(self, node: A.SourceField, scope):
        if node.source not in self.config.sources:
            self.error("TD202", f"unknown event source `{node.source}`", node.span,
                       suggest(node.source, self.config.sources) or "declare it under [sources] in tagdsl.toml")
            return None
        if scope.source is None:
            self.error("TD207", f"`{node.source}.{node.field}` is a field of each {node.source} row", node.span,
                       f"aggregate it, e.g. sum({node.source}.{node.field}) or last({node.source}.{node.field})")
            return None
        if scope.source != node.source:
            self.error("TD207", f"`{node.source}.{node.field}` cannot be used in an aggregate over `{scope.source}`",
                       node.span, f"write a separate aggregate over {node.source}")
            return None
        found = self.source_field(node.source, node.field, node.span)
        if found is None:
            src = self.config.sources[node.source]
            self.error("TD201", f"`{node.field}` is not a field of source `{node.source}`", node.field_span,
                       suggest(node.field, [*src.fields, *([src.time] if src.time else [])]) or
                       f"declare it under [sources.{node.source}.fields]")
        return found

    def _TagRef(self, node: A.TagRef, scope):
        if scope.source is not None:
            self.error("TD207", "`tag(…)` cannot be used inside an aggregate", node.span,
                       "move it outside the aggregate")
            return None
        if node.name not in self.tag_names:
            self.error("TD204", f"no rule defines tag `{node.name}`", node.name_span,
                       suggest(node.name, self.tag_names) or 'define it, e.g. tag "…" manual')
            return None
        return I.TagRef(node.name, I.BOOLEAN, node.span)

    def _Unary(self, node: A.Unary, scope):
        operand = self.expr(node.operand, scope)
        if operand is None:
            return None
        if node.op == "not":
            if operand.type != I.BOOLEAN:
                self.error("TD301", f"`not` needs a condition, not {_a(operand.type)}", node.operand.span)
                return None
            return I.Not(operand, I.BOOLEAN, node.span)
        if not operand.type.numeric:
            self.error("TD301", f"cannot negate {_a(operand.type)}", node.span)
            return None
        if isinstance(operand, I.Const):
            return I.Const(-operand.value, operand.type, node.span)
        return I.Neg(operand, operand.type, node.span)

    def _Binary(self, node: A.Binary, scope):
        op = node.op
        if op in ("and", "or"):
            # Flatten chains iteratively (left-deep trees from the parser).
            items_src, stack = [], [node]
            while stack:
                n = stack.pop()
                if isinstance(n, A.Binary) and n.op == op:
                    stack.extend([n.right, n.left])
                else:
                    items_src.append(n)
            items = []
            ok = True
            for src in items_src:
                item = self.expr(src, scope)
                if item is None:
                    ok = False
                    continue
                if item.type != I.BOOLEAN:
                    self.error("TD301", f"`{op}` needs conditions on both sides, not {_a(item.type)}", src.span,
                               "compare it, e.g. `… >= 1`")
                    ok = False
                    continue
                items.append(item)
            if not ok:
                return None
            return (I.And if op == "and" else I.Or)(tuple(items), I.BOOLEAN, node.span)
        left = self.expr(node.left, scope)
        right = self.expr(node.right, scope)
        if left is None or right is None:
            return None
        if op in A.COMPARISONS:
            pair = self.comparable(left, right, op, node)
            if pair is None:
                return None
            return I.Compare(op, pair[0], pair[1], I.BOOLEAN, node.span)
        return self.arith(op, left, right, node)

    def comparable(self, left, right, op, node) -> Optional[tuple]:
        lt, rt = left.type, right.type
        if lt.numeric and rt.numeric:
            return left, right
        if lt == rt and lt.kind in ("string", "date", "datetime", "boolean"):
            if lt == I.BOOLEAN and op not in ("==", "!="):
                self.error("TD301", f"`{op}` does not order booleans", node.span, "use == or !=")
                return None
            return left, right
        if lt.temporal and rt.temporal:
            # A date constant meets a datetime: midnight of that day.
            if isinstance(left, I.Const) and lt == I.DATE:
                return I.Const(I.to_datetime(left.value), I.DATETIME, left.span), right
            if isinstance(right, I.Const) and rt == I.DATE:
                return left, I.Const(I.to_datetime(right.value), I.DATETIME, right.span)
            self.error("TD301", f"cannot compare {lt} with {rt}", node.span,
                       'compare with a datetime("…") constant, or declare both fields the same type')
            return None
        hint = None
        if {lt.kind, rt.kind} == {"string"} | ({lt.kind, rt.kind} - {"string"}) and "string" in (lt.kind, rt.kind):
            other = rt if lt == I.STRING else lt
            text_side = left if lt == I.STRING else right
            if other.numeric:
                hint = ("write the number without quotes" if isinstance(text_side, I.Const)
                        else "compare with a string, or declare the field as a number")
            elif other.temporal:
                hint = 'write date("YYYY-MM-DD") or datetime("YYYY-MM-DDTHH:MM:SS")'
        self.error("TD301", f"cannot compare {lt} with {rt}", node.span, hint)
        return None

    def arith(self, op, left, right, node) -> Optional[I.Expr]:
        lt, rt = left.type, right.type
        if lt.numeric and rt.numeric:
            if op == "/":
                result = I.FLOAT
            else:
                result = _join(lt, rt)
            return I.Arith(op, left, right, result, node.span)
        if op in ("+", "-") and lt.temporal and rt == I.DURATION:
            if isinstance(left, I.Const) and lt == I.DATE:
                left = I.Const(I.to_datetime(left.value), I.DATETIME, left.span)
            elif lt == I.DATE:
                self.error("TD301", "date fields cannot be shifted by a duration", node.span,
                           "declare the field as datetime")
                return None
            return I.Arith(op, left, right, I.DATETIME, node.span)
        if op == "+" and lt.temporal is False and lt == I.DURATION and rt.temporal:
            return self.arith("+", right, left, node)
        if op in ("+", "-") and lt == I.DURATION and rt == I.DURATION and isinstance(left, I.Const) and isinstance(right, I.Const):
            value = left.value + right.value if op == "+" else left.value - right.value
            return I.Const(value, I.DURATION, node.span)
        hint = None
        if lt.temporal and rt.temporal and op == "-":
            hint = "use days_since(t) or hours_since(t), or compare t with now() - 30d"
        self.error("TD301", f"cannot apply `{op}` to {lt} and {rt}", node.span, hint)
        return None

    def _Between(self, node: A.Between, scope):
        operand, low, high = (self.expr(n, scope) for n in (node.operand, node.low, node.high))
        if operand is None or low is None or high is None:
            return None
        p1 = self.comparable(operand, low, ">=", node)
        if p1 is None:
            return None
        p2 = self.comparable(operand, high, "<=", node)
        if p2 is None:
            return None
        return I.Between(operand, p1[1], p2[1], I.BOOLEAN, node.span)

    def _In(self, node: A.In, scope):
        operand = self.expr(node.operand, scope)
        options = self.expr(node.options, scope)
        if operand is None or options is None:
            return None
        if options.type.kind != "list" or not isinstance(options, I.Const):
            self.error("TD301", f"`in` needs a list such as [\"a\", \"b\"], not {_a(options.type)}", node.options.span)
            return None
        items = []
        for item in options.value:
            pair = self.comparable(operand, item, "==", node)
            if pair is None:
                return None
            items.append(pair[1])
        return I.InList(operand, tuple(items), node.negated, I.BOOLEAN, node.span)

    def _IsMissing(self, node: A.IsMissing, scope):
        operand = self.expr(node.operand, scope)
        if operand is None:
            return None
        return I.IsMissing(operand, node.negated, I.BOOLEAN, node.span)

    # -- calls -----------------------------------------------------------------------------
    def _Call(self, node: A.Call, scope):
        name = node.func
        if name in A.AGGREGATES:
            return self.aggregate(node, scope)
        if name not in FUNCTIONS:
            self.error("TD203", f"unknown function `{name}`", node.func_span,
                       suggest(name, FUNCTIONS) or "see the function list in docs/language.md")
            return None
        if name in RANKING:
            return self.ranking(node, scope)
        if node.where is not None or node.within is not None:
            self.error("TD207", f"`where` and `within` belong to aggregates, not to {name}()", node.span)
            return None
        args = node.args
        if name in ("date", "datetime"):
            return self.time_literal(node)
        arity = {"now": (0, 0), "days_since": (1, 1), "hours_since": (1, 1), "coalesce": (2, 99),
                 "contains": (2, 2), "starts_with": (2, 2)}[name]
        if not arity[0] <= len(args) <= arity[1]:
            self.error("TD207", f"{name}() takes {_count(arity)}, got {len(args)}", node.span,
                       f"write {FUNCTIONS[name]}")
            return None
        values = [self.expr(a, scope) for a in args]
        if any(v is None for v in values):
            return None
        if name == "now":
            return I.Now(I.DATETIME, node.span)
        if name in ("days_since", "hours_since"):
            (t,) = values
            if not t.type.temporal:
                self.error("TD301", f"{name}() needs a date or datetime, not {_a(t.type)}", args[0].span)
                return None
            return I.Func(name, (t,), I.INTEGER, node.span)
        if name in ("contains", "starts_with"):
            for v, a in zip(values, args):
                if v.type != I.STRING:
                    self.error("TD301", f"{name}() needs strings, not {_a(v.type)}", a.span)
                    return None
            return I.Func(name, tuple(values), I.BOOLEAN, node.span)
        # coalesce
        result = values[0].type
        for v, a in zip(values[1:], args[1:]):
            joined = _join(result, v.type)
            if joined is None and result.temporal and v.type.temporal:
                joined = None
            if joined is None:
                self.error("TD301", f"coalesce() mixes {result} and {v.type}", a.span, "use values of one type")
                return None
            result = joined
        if result.kind == "list":
            self.error("TD301", "coalesce() does not take lists", node.span)
            return None
        return I.Func("coalesce", tuple(values), result, node.span)

    def ranking(self, node: A.Call, scope):
        """quintile(expr [where c]) / percent_rank(expr [where c]): ranks over
        the population, so follower level, not nested, and reading no computed
        tag (whose condition could itself rank)."""
        name = node.func
        if scope.source is not None:
            self.error("TD209", f"{name}() ranks followers; it cannot be used inside an aggregate", node.span,
                       "rank outside the aggregate, e.g. quintile(sum(orders.amount))")
            return None
        if node.within is not None:
            self.error("TD207", f"`within` belongs to aggregates, not to {name}()", node.within.span,
                       f"put it in the aggregate, e.g. {name}(count(orders within 365d))")
            return None
        if len(node.args) != 1:
            self.error("TD207", f"{name}() takes 1 argument, got {len(node.args)}", node.span,
                       f"write {FUNCTIONS[name]}")
            return None
        value = self.expr(node.args[0], scope)
        if value is None:
            return None
        if not (value.type.numeric or value.type.temporal):
            self.error("TD301", f"{name}() ranks numbers, dates or datetimes, not {_a(value.type)}",
                       node.args[0].span)
            return None
        where = None
        if node.where is not None:
            where = self.condition(node.where, scope)
            if where is None:
                return None
        for part in (value, where):
            for n in I.walk(part) if part is not None else ():
                if isinstance(n, I.Rank):
                    self.error("TD209", f"{n.func}() cannot be used inside {name}()", n.span,
                               "rank one value; compare the ranks outside")
                    return None
                if isinstance(n, I.TagRef) and n.name not in self.manual_tags:
                    self.error("TD207", f"{name}() cannot read the computed tag `{n.name}`", n.span,
                               "use the tag's condition (e.g. through a `let`) instead")
                    return None
        rtype = I.INTEGER if name == "quintile" else I.FLOAT
        return I.Rank(name, value, where, rtype, node.span)

    def time_literal(self, node: A.Call):
        name, args = node.func, node.args
        if len(args) != 1 or not (isinstance(args[0], A.Literal) and args[0].kind == "string"):
            self.error("TD207", f"{name}() takes one string literal", node.span, f"write {FUNCTIONS[name]}")
            return None
        text = args[0].value
        try:
            if name == "date":
                if len(text) != 10:
                    raise ValueError
                return I.Const(dt.date.fromisoformat(text), I.DATE, node.span)
            value = dt.datetime.fromisoformat(text)
            if len(text) < 16:
                raise ValueError
            if value.tzinfo is not None:
                value = value.astimezone(self.tz).replace(tzinfo=None)
            return I.Const(value, I.DATETIME, node.span)
        except (ValueError, OverflowError):  # OverflowError: an offset pushes it past year 1 or 9999
            fmt = "YYYY-MM-DD" if name == "date" else "YYYY-MM-DDTHH:MM:SS"
            self.error("TD104", f"invalid {name} `{text}`", args[0].span, f"write {name}(\"{fmt}\") with a real {'day' if name == 'date' else 'instant'}")
            return None

    def aggregate(self, node: A.Call, scope):
        name = node.func
        if scope.source is not None:
            self.error("TD209", f"{name}() cannot be used inside another aggregate", node.span,
                       "compute it separately, e.g. with `let`")
            return None
        if len(node.args) != 1:
            self.error("TD207", f"{name}() takes one source{' field' if name not in ('count', 'exists') else ''}",
                       node.span, f"write {FUNCTIONS[name]}")
            return None
        arg = node.args[0]
        field = None
        if name in ("count", "exists"):
            if isinstance(arg, A.SourceField):
                self.error("TD207", f"{name}() counts rows of a source, not a field", arg.span,
                           f"write {name}({arg.source})")
                return None
            if not isinstance(arg, A.Name):
                self.error("TD207", f"{name}() takes a source name", arg.span, f"write {FUNCTIONS[name]}")
                return None
            source = arg.name
            if source not in self.config.sources:
                hint = suggest(source, self.config.sources)
                if source in self.fields:
                    hint = f"`{source}` is a follower field; {name}() takes a source ({', '.join(self.config.sources)})"
                self.error("TD202", f"unknown event source `{source}`", arg.span,
                           hint or "declare it under [sources] in tagdsl.toml")
                return None
        else:
            if isinstance(arg, A.Name) and arg.name in self.config.sources:
                src = self.config.sources[arg.name]
                example = next(iter(src.fields), "field")
                self.error("TD207", f"{name}() takes a field of the source", arg.span,
                           f"write {name}({arg.name}.{example})")
                return None
            if not isinstance(arg, A.SourceField):
                self.error("TD207", f"{name}() takes a source field such as orders.amount", arg.span,
                           f"write {FUNCTIONS[name]}")
                return None
            source = arg.source
            if source not in self.config.sources:
                self.error("TD202", f"unknown event source `{source}`", arg.span,
                           suggest(source, self.config.sources) or "declare it under [sources] in tagdsl.toml")
                return None
            field = self._SourceField(arg, Scope(source))
            if field is None:
                return None
            if name in ("sum", "avg") and not field.type.numeric:
                self.error("TD303", f"{name}() needs a number field, but `{source}.{field.name}` is {field.type}",
                           arg.span, "use count(), min(), max(), last() or first() for other types")
                return None
            if name in ("min", "max") and field.type == I.BOOLEAN:
                self.error("TD303", f"{name}() does not order booleans", arg.span, "use exists(… where …)")
                return None
        src_cfg = self.config.sources[source]
        inner = Scope(source, scope.let_chain)
        where = None
        if node.where is not None:
            where = self.condition(node.where, inner)
            if where is None:
                return None
        within = None
        if node.within is not None:
            if not src_cfg.time:
                self.error("TD302", f"source `{source}` has no time column, so `within` has no meaning",
                           node.within.span, f"set `time` under [sources.{source}] in tagdsl.toml")
                return None
            w = self.expr(node.within, Scope(None, scope.let_chain))
            if w is None:
                return None
            if not (isinstance(w, I.Const) and w.type == I.DURATION):
                self.error("TD301", f"`within` takes a duration such as 30d, not {_a(w.type)}", node.within.span)
                return None
            if w.value <= 0:
                self.error("TD301", "`within` needs a positive duration", node.within.span, "e.g. within 30d")
                return None
            within = w.value
        if name == "count":
            rtype = I.INTEGER
        elif name == "exists":
            rtype = I.BOOLEAN
        elif name == "avg":
            rtype = I.FLOAT
        else:
            rtype = field.type
        return I.Aggregate(name, source, field, where, within, rtype, node.span)


def _a(t: I.Type) -> str:
    s = str(t)
    return ("an " if s[0] in "aeiou" else "a ") + s


def _count(arity) -> str:
    lo, hi = arity
    if lo == hi:
        return f"{lo} argument{'s' if lo != 1 else ''}"
    return f"at least {lo} arguments"


def _example(kind: str) -> str:
    return {"string": '"…"', "int": "10", "duration": "90d"}[kind]


def _join(a: I.Type, b: I.Type) -> Optional[I.Type]:
    """The common type of two values (numeric promotion), or None."""
    if a == b:
        return a
    if a.numeric and b.numeric:
        if I.FLOAT in (a, b):
            return I.FLOAT
        return I.DECIMAL
    return None


def run(ctx) -> None:
    """Build ``ctx.ruleset`` from ``ctx.modules``."""
    config = ctx.config
    diagnostics = ctx.diagnostics
    tag_stmts: list[tuple[A.TagStmt, Optional[A.GroupStmt]]] = []
    groups: list[A.GroupStmt] = []
    audiences: list[A.AudienceStmt] = []
    lets: list[A.LetStmt] = []
    for module in ctx.modules:
        for stmt in module.statements:
            if isinstance(stmt, A.TagStmt):
                tag_stmts.append((stmt, None))
            elif isinstance(stmt, A.GroupStmt):
                groups.append(stmt)
                tag_stmts.extend((t, stmt) for t in stmt.tags)
            elif isinstance(stmt, A.AudienceStmt):
                audiences.append(stmt)
            elif isinstance(stmt, A.LetStmt):
                lets.append(stmt)
    tag_names = {t.name for t, _ in tag_stmts}
    resolver = Resolver(config, diagnostics, tag_names)
    resolver.manual_tags = {t.name for t, _ in tag_stmts if t.manual}
    ctx.resolver = resolver

    def duplicate(kind, name, span, first_span):
        resolver.error("TD206", f"{kind} `{name}` is already defined at line {first_span.line}"
                       + (f" of {first_span.file}" if first_span.file != span.file else ""), span,
                       "rename one of them")

    for let in lets:
        if let.name in resolver.lets:
            duplicate("let", let.name, let.name_span, resolver.lets[let.name].name_span)
            continue
        if let.name in resolver.fields:
            resolver.error("TD206", f"`let {let.name}` hides the follower field `{let.name}`", let.name_span,
                           "choose another name")
            continue
        resolver.lets[let.name] = let
    ctx.let_stmts = dict(resolver.lets)
    # Type-check every let once where it is defined (errors point there).
    resolved_lets = {}
    for let in resolver.lets.values():
        used_before = set(resolver.used_lets)
        resolved_lets[let.name] = resolver.let(let.name, A.Name(let.name, let.name_span), Scope())
        resolver.used_lets = used_before  # defining is not using
    ctx.resolved_lets = resolved_lets

    tags: dict[str, I.TagRule] = {}
    first_groups = {}
    for g in groups:
        first_groups.setdefault(g.name, g)
    for stmt, group in tag_stmts:
        if group is not None and group.exclusive and stmt.manual:
            resolver.error("TD210", f"manual tag `{stmt.name}` cannot be in exclusive group `{group.name}`",
                           stmt.span, "the engine decides exclusive groups; move the manual tag out of the group")
            continue
        if group is not None and first_groups[group.name] is not group:
            group = None  # a second group of that name is reported (TD206) and ignored; its tags stand alone
        attrs = resolver.attributes(stmt.attributes, TAG_ATTRIBUTES, manual=stmt.manual)
        condition = None
        if not stmt.manual:
            condition = resolver.condition(stmt.condition)
            if condition is None:
                continue
        if stmt.name in tags:
            continue  # TD401 (names pass) reports duplicates
        tags[stmt.name] = I.TagRule(
            stmt.name, condition, stmt.manual, group.name if group else None,
            bool(group and group.exclusive), int(attrs.get("priority", 0)), attrs.get("expires"),
            attrs.get("description"), attrs.get("owner"), bool(attrs.get("sensitive", False)),
            attrs.get("review"), stmt.span, stmt.name_span, attrs.get("reply"))

    group_map: dict[str, I.Group] = {}
    for g in groups:
        if g.name in group_map:
            duplicate("group", g.name, g.name_span, group_map[g.name].span)
            continue
        group_map[g.name] = I.Group(g.name, g.exclusive, [t.name for t in g.tags if t.name in tags
                                                         and tags[t.name].group == g.name], g.name_span)
    audience_map: dict[str, I.Audience] = {}
    for a in audiences:
        if a.name in audience_map:
            duplicate("audience", a.name, a.name_span, audience_map[a.name].span)
            continue
        attrs = resolver.attributes(a.attributes, AUDIENCE_ATTRIBUTES)
        condition = resolver.condition(a.expr)
        if condition is None:
            continue
        audience_map[a.name] = I.Audience(a.name, condition, attrs.get("description"), attrs.get("owner"), a.name_span)
    ctx.ruleset = I.Ruleset(tags, group_map, audience_map, [m.path for m in ctx.modules])
