"""Pass `logic`: what the conditions say about each other (TD601–TD604).

- TD603 never-holds / TD604 always-holds: a tag's or audience's condition (for
  a member of an exclusive group, its effective condition for TD604) is
  *proven* unsatisfiable, or its negation is.
- TD602 shadowed-rule: a member of an exclusive group whose condition implies
  the disjunction of earlier members' conditions (proven), so it never wins.
- TD601 exclusive-overlap: two members of an exclusive group can both hold;
  reported only with a concrete follower that the in-memory evaluator
  confirms (the earlier one's effective condition and the later one's own
  condition both hold for it), shown in the message. One report per later
  rule, naming the first earlier rule that takes some of its followers; none
  for a rule that TD602 already reports as never winning.

Rulesets with errors get no logic diagnostics (the claims are about the
ruleset the engine would run). Manual tags have no condition to check.

Proofs. Conditions become formulas in negation normal form over literals on
*variables*: a variable is a value the condition reads (a field, an
aggregate, a function call…; identical IR subtrees are the same variable)
seen through a *view*: as is, as a float (where a comparison converts it), or
relative to now() (``t > now() - 30d`` and ``days_since(t) >= 30`` are both
constraints on ``t - now()``). Literals follow the two-valued semantics
exactly: ``x > 3`` implies that x is present, and ``not (x > 3)`` is
``x is missing or (x present and not x > 3)`` (for a float, NaN is a present
value for which only ``!=`` holds). A small DPLL-style search branches on the
disjunctions and checks every variable's constraints (intervals with integer
rounding, equality sets, exclusions, string prefixes); a few facts tie
variables together: count ≥ 0; exists(R) is count(R) ≥ 1; count, sum and
exists are never missing; aggregates over rows R with no rows (sum 0, the
others missing); rows of R ⊆ rows of S when S has the same source with no
narrower ``where``/``within`` (so count(R) ≤ count(S)); min/max/last/first of
the time column are present exactly when R has rows and lie in the window.
Anything else (arithmetic between fields, ``coalesce``, a comparison of two
fields, a manual tag) is an independent variable or an opaque proposition —
that only loses proofs, never makes a false one (``p and not p`` is still
found for an identical ``p``). The model assumes the as-of instant is a real
date (``now() ± D`` does not overflow the calendar).

A search that runs out of its step budget proves nothing: no claim.

Witnesses (TD601) are built from a satisfying branch of the search: fields
get values at the boundaries the literals name, event rows are synthesised
for the aggregates (``count(orders where …) >= 3`` gives three rows meeting
the ``where`` inside the window, sums are split across them), then the
evaluator must agree. They are evaluated as of ``WITNESS_AS_OF`` (or at a
date constant of the conditions when they compare dates), which the message
states when the conditions depend on time.

Cost bounds (deterministic, so lint output never depends on machine speed):
``QUERY_STEPS`` per proof or search and ``PASS_STEPS`` for the whole pass;
at most ``MAX_CANDIDATES`` followers built per pair and ``PASS_BUILDS`` in
the pass; no overlap search in exclusive groups of more than
``MAX_GROUP_FOR_OVERLAP`` rules (TD602 is still checked there). Pairs whose
required literals clash are settled without a search (by sorting the rules'
ranges of a shared variable when a whole group constrains one).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Iterator, Optional

from .. import ir
from ..diagnostics import RULES, Diagnostic, Severity
from .names import shown

if TYPE_CHECKING:
    from ..compile.python import Follower


def _py():
    """tagdsl.compile.python (constant arithmetic, witness evaluation, the
    text of expressions), imported on first use: most clean rulesets never
    need it, and it is a large module to load when `tagdsl lint` starts."""
    from ..compile import python

    return python


WITNESS_AS_OF = dt.datetime(2026, 1, 1)  # the as-of instant witnesses are evaluated at (project time)
QUERY_STEPS = 6_000  # solver steps for one proof or witness search
PASS_STEPS = 400_000  # solver steps for the whole pass (a 1,000-rule ruleset typically needs ~20,000)
MAX_GROUP_FOR_OVERLAP = 30  # larger exclusive groups get no TD601 search (N²/2 pairs)
MAX_LEAVES = 8  # satisfying branches tried per pair
MAX_CANDIDATES = 16  # followers built and evaluated per pair (the first usually is the witness)
PASS_BUILDS = 4_000  # followers built in the whole pass
MAX_ROWS = 200  # event rows synthesised per row set
MAX_INLINE = 4_000  # formula size up to which tag("X") is inlined
MAX_INLINE_DEPTH = 16  # tag("X") inside tag("Y") inside …: deeper references stay opaque
MAX_SHOWN = 6  # values shown in a TD601 message
MAX_BRANCH_DEPTH = 150  # nested case splits in one search

_RAW = "\0own:"  # prefix of the synthetic audiences holding tags' own conditions
_EPOCH = dt.datetime(1, 1, 1)
_US = dt.timedelta(microseconds=1)
_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000
_DT_MAX = (dt.datetime.max - _EPOCH) // _US
_DATE_MAX = dt.date.max.toordinal()

# Views of a base value.
ABS, REL, FLT = 0, 1, 2
# Domain kinds.
NUM, STR, BOOL = 0, 1, 2

_NEG_OP = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
_FLIP_OP = {"==": "==", "!=": "!=", "<": ">", ">": "<", "<=": ">=", ">=": "<="}
_CMP = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}

_NUMERIC = ("integer", "decimal", "float")
_RANK = getattr(ir, "Rank", ())  # ranking functions over the population, where the IR has them
TRUE = ("T",)
FALSE = ("F",)


class _OutOfSteps(Exception):
    """The step budget is spent: whatever was being proven stays unproven."""


# -- values as keys ------------------------------------------------------------------------------


def _num(value):
    """A number as an exact key: int, or Fraction when not integral."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    f = Fraction(value)
    return f.numerator if f.denominator == 1 else f


def _dt_key(value: dt.datetime) -> int:
    return (value - _EPOCH) // _US


def _dt_from_key(key) -> Optional[dt.datetime]:
    try:
        return _EPOCH + dt.timedelta(microseconds=int(key))
    except (OverflowError, ValueError):
        return None


def _decimal(key, scale: Optional[int]) -> Optional[Decimal]:
    f = Fraction(key)
    den = f.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return None  # not a terminating decimal
    places = max(twos, fives)
    value = Decimal(f.numerator * 10 ** places // f.denominator).scaleb(-places)
    want = 2 if scale is None else scale
    if places <= want:
        value = value.quantize(Decimal(1).scaleb(-want))
    return value


# -- variables -------------------------------------------------------------------------------------


class _Domain:
    __slots__ = ("kind", "integral", "lo", "lo_strict", "hi", "hi_strict", "nan")

    def __init__(self, kind, integral=False, lo=None, lo_strict=False, hi=None, hi_strict=False, nan=False):
        self.kind, self.integral, self.nan = kind, integral, nan
        self.lo, self.lo_strict, self.hi, self.hi_strict = lo, lo_strict, hi, hi_strict


class _Base:
    """A value a condition reads (one IR subtree); missingness belongs here."""

    __slots__ = ("node", "can_miss", "rowset", "func", "time_field", "vars")

    def __init__(self, node, can_miss):
        self.node = node
        self.can_miss = can_miss
        self.rowset = None  # aggregates: the row set id
        self.func = None  # aggregates: count sum avg min max last first
        self.time_field = False  # aggregates over the source's time column
        self.vars: dict[int, int] = {}  # view -> var id


class _Var:
    __slots__ = ("base", "view", "dom")

    def __init__(self, base, view, dom):
        self.base, self.view, self.dom = base, view, dom


class _RowSet:
    __slots__ = ("source", "where", "within", "count_base", "count_node")

    def __init__(self, source, where, within):
        self.source, self.where, self.within = source, where, within
        self.count_base = None
        self.count_node = ir.Aggregate("count", source, None, where, within, ir.INTEGER)


class _Registry:
    """Interns IR subtrees as bases, (base, view) pairs as variables, row sets."""

    def __init__(self, config):
        self.config = config
        self.bases: list[_Base] = []
        self.vars: list[_Var] = []
        self.rowsets: list[_RowSet] = []
        self._base_by_obj: dict[int, tuple] = {}
        self._base_by_eq: dict = {}
        self._rowset_by_key: dict = {}
        self._subset: dict[tuple[int, int], bool] = {}
        self.opaque: list = []
        self._opaque_by_eq: dict = {}
        self._opaque_by_obj: dict[int, tuple] = {}

    # -- bases ------------------------------------------------------------------------------------
    def base(self, node) -> int:
        hit = self._base_by_obj.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1]
        if isinstance(node, ir.Aggregate) and node.func == "exists":
            bid = self.rowsets[self.rowset(node)].count_base
        else:
            bid = self._base_by_eq.get(node)
            if bid is None:
                bid = self._new_base(node)
        self._base_by_obj[id(node)] = (node, bid)
        return bid

    def _new_base(self, node) -> int:
        can_miss = not (isinstance(node, (ir.Now, ir.Const))
                        or (isinstance(node, ir.Aggregate) and node.func in ("count", "sum", "exists")))
        b = _Base(node, can_miss)
        bid = len(self.bases)
        self.bases.append(b)
        self._base_by_eq[node] = bid
        if isinstance(node, ir.Aggregate):
            b.func = node.func
            b.rowset = self.rowset(node)
            time = self._time_column(node.source)
            b.time_field = node.field is not None and time is not None and node.field.name == time
        return bid

    def _time_column(self, source) -> Optional[str]:
        spec = self.config.sources.get(source)
        return spec.time if spec is not None else None

    def rowset(self, agg: ir.Aggregate) -> int:
        key = (agg.source, agg.where, agg.within)
        rid = self._rowset_by_key.get(key)
        if rid is None:
            rs = _RowSet(agg.source, agg.where, agg.within)
            rid = len(self.rowsets)
            self.rowsets.append(rs)
            self._rowset_by_key[key] = rid
            rs.count_base = self._base_by_eq.get(rs.count_node)
            if rs.count_base is None:
                rs.count_base = self._new_base(rs.count_node)
        return rid

    def subset(self, a: int, b: int) -> bool:
        """Rows of row set a are always rows of row set b."""
        key = (a, b)
        found = self._subset.get(key)
        if found is None:
            found = self._subset[key] = self._is_subset(self.rowsets[a], self.rowsets[b])
        return found

    @staticmethod
    def _is_subset(a: _RowSet, b: _RowSet) -> bool:
        if a.source != b.source:
            return False
        if b.within is not None and (a.within is None or a.within > b.within):
            return False
        if b.where is None or b.where == a.where:
            return True
        a_items = set(a.where.items) if isinstance(a.where, ir.And) else {a.where} if a.where is not None else set()
        b_items = set(b.where.items) if isinstance(b.where, ir.And) else {b.where}
        return bool(a_items) and b_items <= a_items

    # -- variables ----------------------------------------------------------------------------------
    def var(self, bid: int, view: int) -> int:
        b = self.bases[bid]
        vid = b.vars.get(view)
        if vid is None:
            vid = len(self.vars)
            self.vars.append(_Var(bid, view, self._domain(b, view)))
            b.vars[view] = vid
        return vid

    def _domain(self, b: _Base, view: int) -> _Domain:
        node = b.node
        kind = node.type.kind
        if view == REL:
            hi = lo = None
            lo_strict = False
            if b.time_field and b.func in ("min", "max", "last", "first"):
                hi = 0  # rows after the as-of instant are never seen
                if node.within is not None:
                    lo, lo_strict = -node.within * 1_000_000, True
            elif isinstance(node, ir.SourceField) and node.name == self._time_column(node.source):
                hi = 0
            return _Domain(NUM, True, lo, lo_strict, hi, False)
        if view == FLT:
            return _Domain(NUM, False, nan=kind == "float")
        if isinstance(node, _RANK):  # quintile: 1..5; percent_rank: 0..1 (missing outside the population)
            return _Domain(NUM, True, 1, False, 5) if node.func == "quintile" else _Domain(NUM, False, 0, False, 1)
        if kind == "integer":
            is_count = isinstance(node, ir.Aggregate) and node.func == "count"
            return _Domain(NUM, True, 0 if is_count else None)
        if kind == "decimal":
            return _Domain(NUM, False)
        if kind == "float":
            return _Domain(NUM, False, nan=True)
        if kind == "string":
            return _Domain(STR, lo="")
        if kind == "boolean":
            return _Domain(BOOL)
        if kind == "datetime":
            return _Domain(NUM, True, 0, False, _DT_MAX, False)
        if kind == "date":
            return _Domain(NUM, True, 1, False, _DATE_MAX, False)
        raise _Unsupported(kind)

    def opaque_id(self, node) -> int:
        hit = self._opaque_by_obj.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1]
        oid = self._opaque_by_eq.get(node)
        if oid is None:
            oid = self._opaque_by_eq[node] = len(self.opaque)
            self.opaque.append(node)
        self._opaque_by_obj[id(node)] = (node, oid)
        return oid


class _Unsupported(Exception):
    """A value the reasoner has no domain for: the atom becomes opaque."""


# -- formulas ---------------------------------------------------------------------------------------
#
# ("T",) ("F",) ("&", items) ("|", items) ("L", literal). Literals:
#   ("m", base, missing)          the base is missing / present
#   ("r", var, op, key, pos)      present and (var op key) == pos
#   ("i", var, keys, negated)     present and (var in keys) != negated
#   ("p", var, prefix, pos)       present and starts_with(var, prefix) == pos
#   ("c", var, text, pos)         present and contains(var, text) == pos
#   ("o", opaque, pos)            an opaque proposition


def _and(items) -> tuple:
    out = []
    for f in items:
        k = f[0]
        if k == "F":
            return FALSE
        if k == "T":
            continue
        if k == "&":
            out.extend(f[1])
        else:
            out.append(f)
    if not out:
        return TRUE
    return out[0] if len(out) == 1 else ("&", tuple(out))


def _or(items) -> tuple:
    out = []
    for f in items:
        k = f[0]
        if k == "T":
            return TRUE
        if k == "F":
            continue
        if k == "|":
            out.extend(f[1])
        else:
            out.append(f)
    if not out:
        return FALSE
    return out[0] if len(out) == 1 else ("|", tuple(out))


def _size(f) -> int:
    if f[0] in ("&", "|"):
        return sum(_size(i) for i in f[1]) + 1
    return 1


class _Builder:
    """IR conditions -> formulas (negation normal form)."""

    def __init__(self, registry: _Registry, ruleset: Optional[ir.Ruleset]):
        self.reg = registry
        self.ruleset = ruleset
        self._tag_formulas: dict[str, tuple] = {}
        self._inlining: set[str] = set()
        self._neg_cache: dict[int, tuple] = {}

    # -- negation -----------------------------------------------------------------------------------
    def neg(self, f) -> tuple:
        k = f[0]
        if k == "T":
            return FALSE
        if k == "F":
            return TRUE
        if k == "&":
            return _or([self.neg(i) for i in f[1]])
        if k == "|":
            return _and([self.neg(i) for i in f[1]])
        return self._neg_lit(f[1])

    def _neg_lit(self, lit) -> tuple:
        k = lit[0]
        if k == "m":
            if lit[2] is False and not self.reg.bases[lit[1]].can_miss:
                return FALSE
            return ("L", ("m", lit[1], not lit[2]))
        if k == "o":
            return ("L", ("o", lit[1], not lit[2]))
        var = self.reg.vars[lit[1]]
        if k in ("i", "p", "c"):
            flipped = ("L", (k, lit[1], lit[2], not lit[3]))
        else:
            flipped = ("L", (k, lit[1], lit[2], lit[3], not lit[4]))
        if not self.reg.bases[var.base].can_miss:
            return flipped
        return ("|", (("L", ("m", var.base, True)), flipped))

    # -- conditions ------------------------------------------------------------------------------------
    def cond(self, e) -> tuple:
        if isinstance(e, ir.And):
            return _and([self.cond(i) for i in e.items])
        if isinstance(e, ir.Or):
            return _or([self.cond(i) for i in e.items])
        if isinstance(e, ir.Not):
            return self.neg(self.cond(e.operand))
        if isinstance(e, ir.Const):
            return TRUE if e.value is True else FALSE
        if isinstance(e, ir.TagRef):
            return self.tag(e)
        try:
            return self.atom(e)
        except (_Unsupported, ArithmeticError, ValueError, TypeError):
            # e.g. a constant too large for a float: the evaluator would fail
            # on it too; the reasoner only knows it is some proposition
            return self.opaque(e)

    def atom(self, e) -> tuple:
        if isinstance(e, ir.Compare):
            return self.compare(e.op, e.left, e.right, e)
        if isinstance(e, ir.Between):
            return _and([self.compare(">=", e.operand, e.low, ir.Compare(">=", e.operand, e.low)),
                         self.compare("<=", e.operand, e.high, ir.Compare("<=", e.operand, e.high))])
        if isinstance(e, ir.InList):
            return self.in_list(e)
        if isinstance(e, ir.IsMissing):
            f = self.missing(e.operand)
            return self.neg(f) if e.negated else f
        return self.truthy(e)

    def tag(self, e: ir.TagRef) -> tuple:
        rs = self.ruleset
        rule = rs.tags.get(e.name) if rs is not None else None
        if (rule is None or rule.manual or rule.condition is None or e.name in self._inlining
                or len(self._inlining) >= MAX_INLINE_DEPTH):
            return ("L", ("o", self.reg.opaque_id(ir.TagRef(e.name)), True))
        found = self._tag_formulas.get(e.name)
        if found is None:
            self._inlining.add(e.name)
            try:
                found = self.cond(rs.effective_condition(e.name))
            except (KeyError, ValueError, AssertionError):
                found = None
            finally:
                self._inlining.discard(e.name)
            if found is None or _size(found) > MAX_INLINE:
                found = ("L", ("o", self.reg.opaque_id(ir.TagRef(e.name)), True))
            self._tag_formulas[e.name] = found
        return found

    def opaque(self, node) -> tuple:
        return ("L", ("o", self.reg.opaque_id(node), True))

    def truthy(self, e) -> tuple:
        """A boolean value used as a condition: missing counts as false."""
        if isinstance(e, ir.Aggregate) and e.func == "exists":
            count = self.reg.rowsets[self.reg.rowset(e)].count_base
            return ("L", ("r", self.reg.var(count, ABS), ">=", 1, True))
        if isinstance(e, ir.Func) and e.name in ("contains", "starts_with"):
            text = _fold(e.args[1])
            if text is not _NO and isinstance(text, str) and _fold(e.args[0]) is _NO and _now_offset(e.args[0]) is None:
                try:
                    var = self.reg.var(self.reg.base(e.args[0]), ABS)
                except _Unsupported:
                    return self.opaque(e)
                return ("L", ("p" if e.name == "starts_with" else "c", var, text, True))
        value = _fold(e)
        if value is not _NO:
            return TRUE if value is True else FALSE
        if e.type != ir.BOOLEAN:
            return self.opaque(e)
        try:
            var = self.reg.var(self.reg.base(e), ABS)
        except _Unsupported:
            return self.opaque(e)
        return ("L", ("i", var, frozenset([True]), False))

    def missing(self, x) -> tuple:
        """``x is missing``."""
        if _fold(x) is not _NO:
            return TRUE if _fold(x) is None else FALSE
        if _now_offset(x) is not None:
            return FALSE
        if isinstance(x, ir.Func) and x.name in ("days_since", "hours_since"):
            return self.missing(x.args[0])
        if isinstance(x, ir.Func) and x.name in ("contains", "starts_with"):
            sub = _fold(x.args[1])
            if sub is not _NO and sub is not None:
                return self.missing(x.args[0])
        bid = self.reg.base(x)
        if not self.reg.bases[bid].can_miss:
            return FALSE
        return ("L", ("m", bid, True))

    def in_list(self, e: ir.InList) -> tuple:
        x = e.operand
        values = [_fold(i) for i in e.items]
        simple = (all(v is not _NO for v in values) and _fold(x) is _NO and _now_offset(x) is None
                  and not (isinstance(x, ir.Func) and x.name in ("days_since", "hours_since"))
                  and not (isinstance(x, ir.Aggregate) and x.func == "exists"))
        if simple:
            convs = {_view_and_conv(x.type, i.type) for i in e.items}
            if len(convs) <= 1:
                view, conv = convs.pop() if convs else (ABS, None)
                try:
                    var = self.reg.var(self.reg.base(x), view)
                    dom = self.reg.vars[var].dom
                    keys = frozenset(_key(conv(v) if conv else v, dom, i.type) for v, i in zip(values, e.items)
                                     if v is not None)
                except _Unsupported:
                    return self.opaque(e)
                if e.negated:
                    if any(v is None for v in values):
                        return FALSE  # `x != missing` is false
                    return ("L", ("i", var, keys, True))
                return ("L", ("i", var, keys, False)) if keys else FALSE
        if e.negated:
            differs = [self.compare("!=", x, i, ir.Compare("!=", x, i)) for i in e.items]
            return _and([self.neg(self.missing(x))] + differs)
        return _or([self.compare("==", x, i, ir.Compare("==", x, i)) for i in e.items])

    # -- comparisons -------------------------------------------------------------------------------------
    def compare(self, op: str, left, right, node) -> tuple:
        lv, rv = _fold(left), _fold(right)
        if lv is not _NO and rv is not _NO:
            return TRUE if _const_compare(op, left.type, lv, right.type, rv) else FALSE
        if lv is not _NO:  # constant on the left: flip
            op, left, right, lv, rv = _FLIP_OP[op], right, left, rv, lv
        lo, ro = _now_offset(left), _now_offset(right)
        if rv is not _NO:
            if rv is None:
                return FALSE
            try:
                return self._against_const(op, left, lo, rv, right.type, node)
            except _Unsupported:
                return self.opaque(node)
        # both sides vary
        if lo is not None and ro is not None:
            return TRUE if _CMP[op](lo, ro) else FALSE
        if lo is not None:  # now() ± a on the left: flip so that the value is on the left
            op, left, right, lo, ro = _FLIP_OP[op], right, left, ro, lo
        if ro is not None and left.type == ir.DATETIME and lo is None:
            # t op now() + k  <=>  (t - now()) op k
            try:
                var = self.reg.var(self.reg.base(left), REL)
            except _Unsupported:
                return self.opaque(node)
            return ("L", ("r", var, op, ro * 1_000_000, True))
        return self.opaque(node)

    def _against_const(self, op, x, x_offset, value, value_type, node) -> tuple:
        if x_offset is not None:  # now() ± k op constant: a constraint on now()
            if not isinstance(value, dt.datetime):
                raise _Unsupported("now() against a non-datetime")
            try:
                shifted = value - dt.timedelta(seconds=x_offset)
            except OverflowError:
                raise _Unsupported("overflow") from None
            var = self.reg.var(self.reg.base(ir.Now()), ABS)
            return ("L", ("r", var, op, _dt_key(shifted), True))
        if isinstance(x, ir.Func) and x.name in ("days_since", "hours_since"):
            return self._since(op, x, value, value_type, node)
        if isinstance(x, ir.Aggregate) and x.func == "exists":
            if not isinstance(value, bool):
                raise _Unsupported("exists against a non-boolean")
            count = self.reg.var(self.reg.rowsets[self.reg.rowset(x)].count_base, ABS)
            want = value if op == "==" else not value
            return ("L", ("r", count, ">=" if want else "<", 1, True))
        view, conv = _view_and_conv(x.type, value_type)
        var = self.reg.var(self.reg.base(x), view)
        key = _key(conv(value) if conv else value, self.reg.vars[var].dom, value_type)
        return ("L", ("r", var, op, key, True))

    def _since(self, op, x: ir.Func, value, value_type, node) -> tuple:
        """days_since(t) / hours_since(t) op k as constraints on t - now()."""
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
            raise _Unsupported("days_since against a non-number")
        t = x.args[0]
        if _fold(t) is not _NO or _now_offset(t) is not None:
            return self.opaque(node)
        unit = _DAY_US if x.name == "days_since" else _HOUR_US
        k = _num(float(value) if value_type.kind == "float" else value)
        var = self.reg.var(self.reg.base(t), REL)

        def rel(rop, key):
            return ("L", ("r", var, rop, key, True))

        if op == ">=":
            return rel("<=", -math.ceil(k) * unit)
        if op == ">":
            return rel("<=", -(math.floor(k) + 1) * unit)
        if op == "<=":
            return rel(">", -(math.floor(k) + 1) * unit)
        if op == "<":
            return rel(">", -math.ceil(k) * unit)
        integral = k == math.floor(k)
        if op == "==":
            if not integral:
                return FALSE
            return _and([rel("<=", -k * unit), rel(">", -(k + 1) * unit)])
        if not integral:  # != a non-integer: any present value
            return self.neg(self.missing(t))
        return _or([rel(">", -k * unit), rel("<=", -(k + 1) * unit)])


# -- constants ---------------------------------------------------------------------------------------------

_NO = object()  # "not a constant"


def _fold(e):
    """The value of a constant subexpression (None = missing), else _NO."""
    if isinstance(e, ir.Const):
        return _NO if e.type.kind == "list" else e.value
    if isinstance(e, ir.Neg):
        v = _fold(e.operand)
        return v if v is _NO or v is None else -v
    if isinstance(e, ir.Arith):
        a, b = _fold(e.left), _fold(e.right)
        if a is _NO or b is _NO:
            return _NO
        try:
            if e.type.kind == "datetime":
                return _py()._shift(a, b, 1 if e.op == "+" else -1)
            if e.op == "/":
                return _py()._divide(a, b)
            if a is None or b is None:
                return None
            a, b = _py()._coerce_pair(e.left.type, e.right.type, a, b)
            return _py()._ARITH_OP[e.op](a, b)
        except (ArithmeticError, ValueError, TypeError):
            return _NO  # e.g. a float overflow: not something to reason about
    if isinstance(e, ir.Func) and e.name == "coalesce":
        values = [_fold(a) for a in e.args]
        for v in values:
            if v is _NO:
                return _NO
            if v is not None:
                try:
                    return float(v) if e.type.kind == "float" else v
                except OverflowError:
                    return _NO
        return None
    return _NO


def _now_offset(e) -> Optional[int]:
    """Seconds k when ``e`` is now() + k (k constant), else None."""
    if isinstance(e, ir.Now):
        return 0
    if isinstance(e, ir.Arith) and e.op in ("+", "-") and e.type.kind == "datetime":
        base = _now_offset(e.left)
        if base is None:
            return None
        d = _fold(e.right)
        if d is _NO or d is None or isinstance(d, bool) or not isinstance(d, int):
            return None
        return base + d if e.op == "+" else base - d
    return None


def _view_and_conv(var_type: ir.Type, const_type: ir.Type):
    """How a comparison between a value and a constant coerces (as the evaluator does)."""
    vk, ck = var_type.kind, const_type.kind
    if vk == ck or vk not in _NUMERIC or ck not in _NUMERIC:
        return ABS, None
    if vk == "float":
        return ABS, float
    return (FLT, None) if ck == "float" else (ABS, None)


def _key(value, dom: _Domain, value_type: ir.Type):
    if dom.kind == STR:
        if not isinstance(value, str):
            raise _Unsupported("string key")
        return value
    if dom.kind == BOOL:
        if not isinstance(value, bool):
            raise _Unsupported("boolean key")
        return value
    if isinstance(value, dt.datetime):
        return _dt_key(value)
    if isinstance(value, dt.date):
        return value.toordinal()
    if isinstance(value, (int, Decimal, float)) and not isinstance(value, bool):
        if isinstance(value, float) and (value != value or value in (math.inf, -math.inf)):
            raise _Unsupported("non-finite constant")
        return _num(value)
    raise _Unsupported(f"key of {type(value).__name__}")


def _const_compare(op, lt, a, rt, b) -> bool:
    if a is None or b is None:
        return False
    a, b = _py()._coerce_pair(lt, rt, a, b)
    if isinstance(a, dt.date) or isinstance(b, dt.date):
        a, b = (ir.to_datetime(v) if isinstance(v, dt.date) else v for v in (a, b))
    try:
        return bool(_CMP[op](a, b))
    except TypeError:
        return False


# -- one variable's constraints -------------------------------------------------------------------------


def _bounds(dom: _Domain, lits):
    """(eq set or None, lo, lo_strict, hi, hi_strict, exclusions, prefixes+, prefixes-, subs+, subs-)."""
    eq = None
    lo, lo_s, hi, hi_s = dom.lo, dom.lo_strict, dom.hi, dom.hi_strict
    excl = set()
    pp = pn = sp = sn = ()
    for lit in lits:
        k = lit[0]
        if k == "r":
            op, key = lit[2], lit[3]
            if not lit[4]:
                op = _NEG_OP[op]
            if op == "==":
                eq = {key} if eq is None else (eq & {key})
            elif op == "!=":
                excl.add(key)
            elif op in (">", ">="):
                strict = op == ">"
                if lo is None or key > lo or (key == lo and strict):
                    lo, lo_s = key, strict
            else:
                strict = op == "<"
                if hi is None or key < hi or (key == hi and strict):
                    hi, hi_s = key, strict
        elif k == "i":
            if lit[3]:
                excl |= lit[2]
            else:
                eq = set(lit[2]) if eq is None else (eq & lit[2])
        elif k == "p":
            if lit[3]:
                pp += (lit[2],)
            else:
                pn += (lit[2],)
        elif k == "c":
            if lit[3]:
                sp += (lit[2],)
            else:
                sn += (lit[2],)
    return eq, lo, lo_s, hi, hi_s, excl, pp, pn, sp, sn


def _value_ok(value, lits) -> bool:
    """Whether a present, non-NaN value meets every literal (exact)."""
    for lit in lits:
        k = lit[0]
        try:
            if k == "r":
                if _CMP[lit[2]](value, lit[3]) != lit[4]:
                    return False
            elif k == "i":
                if (value in lit[2]) == lit[3]:
                    return False
            elif k == "p":
                if value.startswith(lit[2]) != lit[3]:
                    return False
            elif k == "c":
                if (lit[2] in value) != lit[3]:
                    return False
        except TypeError:
            return False
    return True


def _nan_ok(lits) -> bool:
    for lit in lits:
        k = lit[0]
        if k == "r":
            if (lit[2] == "!=") != lit[4]:
                return False
        elif k == "i":
            if not lit[3]:
                return False
        else:
            return False
    return True


def _in_domain(dom: _Domain, v) -> bool:
    if dom.kind == NUM:
        if isinstance(v, (str, bool)):
            return False
        if dom.integral and not (isinstance(v, int) or (isinstance(v, Fraction) and v.denominator == 1)):
            return False
    elif dom.kind == STR and not isinstance(v, str):
        return False
    elif dom.kind == BOOL and not isinstance(v, bool):
        return False
    if dom.lo is not None and (v < dom.lo or (v == dom.lo and dom.lo_strict)):
        return False
    if dom.hi is not None and (v > dom.hi or (v == dom.hi and dom.hi_strict)):
        return False
    return True


def _int_range(lo, lo_s, hi, hi_s):
    L = None if lo is None else (math.floor(lo) + 1 if lo_s else math.ceil(lo))
    H = None if hi is None else (math.ceil(hi) - 1 if hi_s else math.floor(hi))
    return L, H


def _satisfiable(dom: _Domain, lits) -> bool:
    """Whether some value of the domain meets the literals. False only when
    proven; an unknown case answers True."""
    if dom.nan and _nan_ok(lits):
        return True
    eq, lo, lo_s, hi, hi_s, excl, pp, pn, sp, sn = _bounds(dom, lits)
    if dom.kind == BOOL and eq is None:
        eq = {False, True}
    if eq is not None:
        if len(eq) > 64:
            return True
        return any(_in_domain(dom, v) and _value_ok(v, lits) for v in eq)
    if dom.kind == NUM:
        if dom.integral:
            L, H = _int_range(lo, lo_s, hi, hi_s)
            if L is not None and H is not None:
                if L > H:
                    return False
                if H - L + 1 <= len(excl):
                    return any(v not in excl for v in range(L, H + 1))
            return True
        if lo is not None and hi is not None:
            if lo > hi or (lo == hi and (lo_s or hi_s)):
                return False
            if lo == hi:
                return lo not in excl
        return True
    # strings: bounds, prefixes, substrings
    if lo is not None and hi is not None:
        if lo > hi or (lo == hi and (lo_s or hi_s)):
            return False
        if lo == hi:
            return _value_ok(lo, lits)
    longest = max(pp, key=len) if pp else None
    if longest is not None:
        if any(not longest.startswith(p) for p in pp):
            return False
        if hi is not None and (hi < longest or (hi == longest and hi_s)):
            return False
    for q in pn:
        if q == "" or (longest is not None and longest.startswith(q)):
            return False
    for d in sn:
        if d == "" or (longest is not None and d in longest) or any(d in s for s in sp):
            return False
    return True


def _pick(dom: _Domain, lits, prefer_high: bool = False):
    """A concrete key meeting the literals (boundary values first), or _NO."""
    eq, lo, lo_s, hi, hi_s, excl, pp, pn, sp, sn = _bounds(dom, lits)
    if dom.kind == BOOL and eq is None:
        eq = {True, False}
    cands: list = []
    if eq is not None:
        cands = sorted(eq, key=lambda v: (str(type(v)), v))
    elif dom.kind == NUM:
        if dom.integral:
            L, H = _int_range(lo, lo_s, hi, hi_s)
            low = [L, L + 1, L + 2] if L is not None else []
            high = [H, H - 1, H - 2] if H is not None else []
            cands = high + low if prefer_high else low + high
            if L is None and H is None:
                cands = [0, 1, -1]
            cands += [e + d for e in sorted(excl) for d in (1, -1, 2)]
        else:
            step = Fraction(1, 100)
            if lo is not None:
                cands += [lo] if not lo_s else []
                cands += [lo + step, lo + 1]
            if hi is not None:
                h = [hi] if not hi_s else []
                h += [hi - step, hi - 1]
                cands = h + cands if prefer_high else cands + h
            if lo is not None and hi is not None:
                cands.append((Fraction(lo) + Fraction(hi)) / 2)
            if lo is None and hi is None:
                cands += [0, 1, -1]
            cands += [e + d for e in sorted(excl) for d in (step, -step, 1)]
    else:
        stems = [""]
        if pp:
            stems.insert(0, max(pp, key=len))
        if lo is not None:
            stems.append(lo)
        tail = "".join(sp)
        for s in stems:
            cands += [s + tail, s + tail + "x", s + "x" + tail, s + "其他" + tail, s + tail + "~"]
        if hi is not None:
            cands.append(hi)
    for v in cands:
        if _in_domain(dom, v) and _value_ok(v, lits):
            return v
    if dom.nan and _nan_ok(lits):
        return math.nan
    return _NO


class _Needs:
    """A rule's required literals, digested once to compare many pairs of rules cheaply."""

    __slots__ = ("miss", "opq", "sums")

    def __init__(self, registry: _Registry, state: "_State"):
        self.miss = state.miss
        self.opq = state.opq
        self.sums = {vid: _Summary(registry.vars[vid].dom, lits) for vid, lits in state.lits.items()}


class _Summary:
    """One variable's literals digested once."""

    __slots__ = ("lits", "eq", "lo", "lo_strict", "hi", "hi_strict", "nan", "plain")

    def __init__(self, dom: _Domain, lits: tuple):
        eq, lo, lo_s, hi, hi_s, _excl, pp, pn, sp, sn = _bounds(dom, lits)
        if dom.kind == BOOL and eq is None:
            eq = {False, True}
        self.lits = lits
        self.plain = not (pp or pn or sp or sn)
        self.eq = None if eq is None else frozenset(v for v in eq if _in_domain(dom, v) and _value_ok(v, lits))
        self.lo, self.lo_strict, self.hi, self.hi_strict = lo, lo_s, hi, hi_s
        self.nan = dom.nan and _nan_ok(lits)

    def range(self, dom: _Domain):
        """(low, high), closed, containing every value the literals allow; None
        when it cannot be said simply (NaN, prefixes, an open string range)."""
        if self.nan or not self.plain:
            return None
        if self.eq is not None:
            if not self.eq:
                return None
            if dom.kind == BOOL:
                return min(int(v) for v in self.eq), max(int(v) for v in self.eq)
            return min(self.eq), max(self.eq)
        if dom.kind != NUM:
            return None
        if dom.integral:
            L, H = _int_range(self.lo, self.lo_strict, self.hi, self.hi_strict)
        else:  # a closed hull of an open interval is still a hull
            L, H = self.lo, self.hi
        return (-math.inf if L is None else L), (math.inf if H is None else H)


def _clash_on(dom: _Domain, a: _Summary, b: _Summary) -> bool:
    """Proven: no value meets both literal sets (False may also mean "not shown")."""
    if a.nan and b.nan:
        return False
    if a.eq is not None and b.eq is not None:
        return not (a.eq & b.eq)
    if a.eq is not None or b.eq is not None:
        values, other = (a.eq, b) if a.eq is not None else (b.eq, a)
        return not any(_value_ok(v, other.lits) for v in values)
    if not (a.plain and b.plain):
        return not _satisfiable(dom, a.lits + b.lits)
    lo, lo_s = a.lo, a.lo_strict
    if b.lo is not None and (lo is None or b.lo > lo or (b.lo == lo and b.lo_strict)):
        lo, lo_s = b.lo, b.lo_strict
    hi, hi_s = a.hi, a.hi_strict
    if b.hi is not None and (hi is None or b.hi < hi or (b.hi == hi and b.hi_strict)):
        hi, hi_s = b.hi, b.hi_strict
    if lo is None or hi is None:
        return False
    if dom.kind == NUM and dom.integral:
        L, H = _int_range(lo, lo_s, hi, hi_s)
        return L > H
    return lo > hi or (lo == hi and (lo_s or hi_s))


# -- the search -------------------------------------------------------------------------------------------------


class _State:
    __slots__ = ("miss", "lits", "opq")

    def __init__(self, miss=None, lits=None, opq=None):
        self.miss: dict[int, bool] = miss if miss is not None else {}
        self.lits: dict[int, tuple] = lits if lits is not None else {}
        self.opq: dict[int, bool] = opq if opq is not None else {}

    def copy(self) -> "_State":
        return _State(dict(self.miss), dict(self.lits), dict(self.opq))


class _Solver:
    def __init__(self, registry: _Registry):
        self.reg = registry
        self.steps = 0  # spent in the current query
        self.limit = QUERY_STEPS
        self.total = 0  # spent in the pass
        self.model: Optional[_State] = None
        self._sat: dict[tuple, bool] = {}  # literals of one variable -> satisfiable (literals name their variable)

    # -- one literal ----------------------------------------------------------------------------------------
    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.limit:
            raise _OutOfSteps

    def holds_in(self, state: _State, lit) -> bool:
        """The state already implies the literal."""
        k = lit[0]
        if k == "m":
            return state.miss.get(lit[1]) == lit[2]
        if k == "o":
            return state.opq.get(lit[1]) == lit[2]
        return lit in state.lits.get(lit[1], ())

    def compatible(self, state: _State, lit) -> bool:
        """Adding the literal keeps every variable satisfiable (without adding it)."""
        self._tick()
        k = lit[0]
        reg = self.reg
        if k == "m":
            b, missing = lit[1], lit[2]
            known = state.miss.get(b)
            if known is not None:
                return known == missing
            if missing:
                base = reg.bases[b]
                if not base.can_miss:
                    return False
                return not any(v in state.lits for v in base.vars.values())
            return True
        if k == "o":
            known = state.opq.get(lit[1])
            return known is None or known == lit[2]
        var = reg.vars[lit[1]]
        if state.miss.get(var.base) is True:
            return False
        lits = state.lits.get(lit[1], ())
        if lit in lits:
            return True
        key = lits + (lit,)
        found = self._sat.get(key)
        if found is None:
            found = self._sat[key] = _satisfiable(var.dom, key)
        return found

    def add(self, state: _State, lit) -> bool:
        if not self.compatible(state, lit):
            return False
        k = lit[0]
        if k == "m":
            state.miss[lit[1]] = lit[2]
        elif k == "o":
            state.opq[lit[1]] = lit[2]
        else:
            lits = state.lits.get(lit[1], ())
            if lit not in lits:
                state.lits[lit[1]] = lits + (lit,)
        return True

    # -- formulas ----------------------------------------------------------------------------------------------
    def leaves(self, formula, state: Optional[_State] = None) -> Iterator[_State]:
        """Satisfying branches of the formula in the model (each a consistent
        set of literals). Raises _OutOfSteps when the budget is spent."""
        return self._solve([formula], state if state is not None else _State(), [], 0)

    def _solve(self, stack, state, ors, depth: int) -> Iterator[_State]:
        if depth > MAX_BRANCH_DEPTH:
            raise _OutOfSteps  # nested generators would exhaust Python's stack
        ors = list(ors)
        while True:
            while stack:
                f = stack.pop()
                k = f[0]
                if k == "L":
                    if not self.add(state, f[1]):
                        return
                elif k == "&":
                    stack.extend(f[1])
                elif k == "|":
                    ors.append(f[1])
                elif k == "F":
                    return
            changed = False
            remaining = []
            for items in ors:
                alive = []
                done = False
                for it in items:
                    if it[0] == "L":
                        if self.holds_in(state, it[1]):
                            done = True
                            break
                        if self.compatible(state, it[1]):
                            alive.append(it)
                    else:
                        alive.append(it)
                if done:
                    continue
                if not alive:
                    return
                if len(alive) == 1:
                    stack.append(alive[0])
                    changed = True
                else:
                    remaining.append(alive)
            ors = remaining
            if not changed:
                break
        if not ors:
            self._tick()
            if self.facts_hold(state):
                yield state
            return
        best = min(range(len(ors)), key=lambda i: len(ors[i]))
        items = ors[best]
        rest = ors[:best] + ors[best + 1:]
        for it in items:
            yield from self._solve([it], state.copy(), rest, depth + 1)

    def query(self, formula) -> Optional[bool]:
        """True: satisfiable in the model (``self.model`` is a satisfying branch);
        False: proven unsatisfiable; None: out of steps."""
        self.model = None
        k = formula[0]
        if k == "F":
            return False
        if self.total >= PASS_STEPS:
            return None
        self.steps = 0
        self.limit = min(QUERY_STEPS, PASS_STEPS - self.total)
        try:
            if k == "L" or (k == "&" and all(i[0] == "L" for i in formula[1])):
                # a conjunction of literals: no search
                state = _State()
                for f in ((formula,) if k == "L" else formula[1]):
                    if not self.add(state, f[1]):
                        return False
                if not self.facts_hold(state):
                    return False
                self.model = state
                return True
            for state in self.leaves(formula):
                self.model = state
                return True
            return False
        except _OutOfSteps:
            return None
        finally:
            self.total += self.steps

    # -- concrete values: cheap refutations ------------------------------------------------------------------
    def assignment(self, state: _State):
        """Concrete keys for a branch's variables (None when one cannot be picked)."""
        values = {}
        miss = dict(state.miss)
        for vid, lits in state.lits.items():
            var = self.reg.vars[vid]
            key = _pick(var.dom, lits)
            if key is _NO:
                return None
            values[vid] = key
            miss[var.base] = False
        return miss, values, state.opq, {}

    def _default_count(self, rid: int, assignment) -> int:
        """count(R) when unassigned: at least what assigned aggregates over R or its subsets imply."""
        miss, values, _, cache = assignment
        found = cache.get(rid)
        if found is None:
            found = 0
            reg = self.reg
            for vid, value in values.items():
                var = reg.vars[vid]
                base = reg.bases[var.base]
                if base.rowset is None or var.view != ABS or not (base.rowset == rid or reg.subset(base.rowset, rid)):
                    continue
                if base.func == "count":
                    found = max(found, value)
                elif base.func == "sum":
                    found = max(found, 1 if value != 0 else 0)
                else:
                    found = max(found, 1)
            for b, m in miss.items():
                base = reg.bases[b]
                if m is False and base.func in ("min", "max", "avg", "last", "first") and (
                        base.rowset == rid or reg.subset(base.rowset, rid)):
                    found = max(found, 1)
            cache[rid] = found
        return found

    def evaluate(self, f, assignment) -> bool:
        """The formula's truth under a concrete assignment (unassigned: missing, or a default value).
        Only ever used to *refute* a claim, so a rough default can only cost a proof attempt."""
        k = f[0]
        if k == "&":
            return all(self.evaluate(i, assignment) for i in f[1])
        if k == "|":
            return any(self.evaluate(i, assignment) for i in f[1])
        if k == "T":
            return True
        if k == "F":
            return False
        lit = f[1]
        t = lit[0]
        miss, values, opq, _ = assignment
        if t == "o":
            return opq.get(lit[1], False) == lit[2]
        if t == "m":
            m = miss.get(lit[1])
            return (self.reg.bases[lit[1]].can_miss if m is None else m) == lit[2]
        var = self.reg.vars[lit[1]]
        m = miss.get(var.base)
        if m is None:
            m = self.reg.bases[var.base].can_miss
        if m:
            return False
        value = values.get(lit[1], _NO)
        if value is _NO:
            dom = var.dom
            base = self.reg.bases[var.base]
            if base.func == "count" and var.view == ABS:
                value = self._default_count(base.rowset, assignment)
            else:
                value = (dom.lo if dom.lo is not None else 0) if dom.kind == NUM else "" if dom.kind == STR else False
        if value != value:  # NaN
            return _nan_ok((lit,))
        return _value_ok(value, (lit,))

    # -- facts across variables: row sets ---------------------------------------------------------------------
    def facts_hold(self, state: _State) -> bool:
        reg = self.reg
        bases = set(state.miss)
        for vid in state.lits:
            bases.add(reg.vars[vid].base)
        rowsets: dict[int, list] = {}
        for b in bases:
            base = reg.bases[b]
            if base.rowset is not None:
                rowsets.setdefault(base.rowset, []).append(b)
        if not rowsets:
            return True
        if len(rowsets) == 1:
            (members,) = rowsets.values()
            if all(reg.bases[b].func == "count" for b in members):
                return True  # one count: its own literals were checked as they were added
        lo: dict[int, int] = {}
        hi: dict[int, float] = {}
        for rid, members in rowsets.items():
            rs = reg.rowsets[rid]
            l, h = 0, math.inf
            cvar = reg.bases[rs.count_base].vars.get(ABS)
            clits = state.lits.get(cvar, ()) if cvar is not None else ()
            if clits:
                eq, a, a_s, z, z_s, *_ = _bounds(reg.vars[cvar].dom, clits)
                if eq is not None:
                    ints = [v for v in eq if _in_domain(reg.vars[cvar].dom, v)]
                    if ints:
                        l, h = max(l, min(ints)), min(h, max(ints))
                else:
                    L, H = _int_range(a, a_s, z, z_s)
                    l = max(l, L if L is not None else 0)
                    h = min(h, H if H is not None else math.inf)
            for b in members:
                base = reg.bases[b]
                if base.func in ("min", "max", "avg", "last", "first"):
                    present = state.miss.get(b) is False or any(v in state.lits for v in base.vars.values())
                    if present:
                        l = max(l, 1)
                    if base.time_field and state.miss.get(b) is True:
                        h = 0
                elif base.func == "sum":
                    if not self._admits(state, base, 0):
                        l = max(l, 1)
            lo[rid], hi[rid] = l, h
        # count(R) <= count(S) when R's rows are S's rows
        ids = list(rowsets)
        for _ in range(len(ids)):
            changed = False
            for a in ids:
                for b in ids:
                    if a != b and reg.subset(a, b):
                        if lo[a] > lo[b]:
                            lo[b] = lo[a]
                            changed = True
                        if hi[b] < hi[a]:
                            hi[a] = hi[b]
                            changed = True
            if not changed:
                break
        for rid in ids:
            if lo[rid] > hi[rid]:
                return False
            rs = reg.rowsets[rid]
            cvar = reg.bases[rs.count_base].vars.get(ABS)
            if cvar is not None and cvar in state.lits:
                extra = (("r", cvar, ">=", lo[rid], True),)
                if hi[rid] != math.inf:
                    extra += (("r", cvar, "<=", hi[rid], True),)
                if not _satisfiable(reg.vars[cvar].dom, state.lits[cvar] + extra):
                    return False
            if hi[rid] == 0:  # no rows: sum is 0, the others are missing
                for b in rowsets[rid]:
                    base = reg.bases[b]
                    if base.func == "sum":
                        if not self._admits(state, base, 0):
                            return False
                    elif base.func in ("min", "max", "avg", "last", "first"):
                        if state.miss.get(b) is False or any(v in state.lits for v in base.vars.values()):
                            return False
            if lo[rid] >= 1:
                for b in rowsets[rid]:
                    base = reg.bases[b]
                    if base.time_field and base.func in ("min", "max", "last", "first") and state.miss.get(b) is True:
                        return False
            # The latest row of R is no earlier than the rows of a non-empty windowed subset.
            for b in rowsets[rid]:
                base = reg.bases[b]
                rel = base.vars.get(REL)
                if not (base.time_field and base.func in ("max", "last") and rel in state.lits):
                    continue
                for other in ids:
                    within = reg.rowsets[other].within
                    if other != rid and lo[other] >= 1 and within is not None and reg.subset(other, rid):
                        bound = ("r", rel, ">", -within * 1_000_000, True)
                        if not _satisfiable(reg.vars[rel].dom, state.lits[rel] + (bound,)):
                            return False
        return True

    def _admits(self, state: _State, base: _Base, value) -> bool:
        """The base's literals allow the value (in every view where it applies)."""
        for view, vid in base.vars.items():
            lits = state.lits.get(vid)
            if not lits or view == REL:
                continue
            dom = self.reg.vars[vid].dom
            key = _num(float(value)) if view == FLT else value
            if not _value_ok(key, lits):
                return False
            if not _in_domain(dom, key):
                return False
        return True


# -- witnesses ------------------------------------------------------------------------------------------------------

_ROUND_UNITS = (_DAY_US, _HOUR_US, 60_000_000, 1_000_000)


def _pick_value(dom: _Domain, lits, prefer_high: bool, time_units: bool):
    """_pick, trying round instants first for times (whole days, hours, …)."""
    if time_units and dom.kind == NUM and dom.integral:
        eq, lo, lo_s, hi, hi_s, *_ = _bounds(dom, lits)
        if eq is None:
            L, H = _int_range(lo, lo_s, hi, hi_s)
            cands = []
            for u in _ROUND_UNITS:
                low = -((-L) // u) * u if L is not None else None
                high = (H // u) * u if H is not None else None
                pair = [high, low] if prefer_high else [low, high]
                cands += [c for c in pair if c is not None]
            for v in cands:
                if _in_domain(dom, v) and _value_ok(v, lits) and (L is None or v >= L) and (H is None or v <= H):
                    return v
    if dom.kind == NUM and not dom.integral:
        # sums split across rows and bounds given in cents: try whole cents first
        eq, lo, lo_s, hi, hi_s, *_ = _bounds(dom, lits)
        if eq is None:
            cands = []
            if lo is not None:
                cands += [Fraction(math.ceil(Fraction(lo) * 100), 100), Fraction(math.floor(Fraction(lo)) + 1)]
            if hi is not None:
                cands += [Fraction(math.floor(Fraction(hi) * 100), 100), Fraction(math.ceil(Fraction(hi)) - 1)]
            if prefer_high:
                cands.reverse()
            for v in cands:
                if _in_domain(dom, v) and _value_ok(v, lits):
                    return v
    return _pick(dom, lits, prefer_high)


def _shift_lit(lit, offset: int):
    """A literal on t - now() as a literal on t, for a known now()."""
    k = lit[0]
    if k == "r":
        return ("r", lit[1], lit[2], lit[3] + offset, lit[4])
    if k == "i":
        return ("i", lit[1], frozenset(v + offset for v in lit[2]), lit[3])
    return lit


def _scale_lit(lit, n: int):
    """A literal on a sum of n equal values as a literal on one value."""
    k = lit[0]
    if k == "r":
        return ("r", lit[1], lit[2], _num(Fraction(lit[3]) / n), lit[4])
    if k == "i":
        return ("i", lit[1], frozenset(_num(Fraction(v) / n) for v in lit[2]), lit[3])
    return lit


def _retarget(lit, var: int):
    if lit[0] in ("r", "i", "p", "c"):
        return (lit[0], var) + lit[2:]
    return lit


def _typed(key, type_: ir.Type, scale: Optional[int]):
    kind = type_.kind
    try:
        if kind == "integer":
            return int(key)
        if kind == "decimal":
            value = _decimal(key, scale)
            return _NO if value is None else value
        if kind == "float":
            return float(key)
        if kind in ("string", "boolean"):
            return key
        if kind == "datetime":
            value = _dt_from_key(key)
            return _NO if value is None else value
        if kind == "date":
            return dt.date.fromordinal(int(key))
    except (ValueError, OverflowError, TypeError):
        return _NO
    return _NO


class _Witnesses:
    """Concrete followers built from satisfying branches, confirmed by the evaluator."""

    def __init__(self, logic: "_Logic"):
        self.logic = logic
        self.reg = logic.reg
        self.builder = logic.builder
        self.rows_solver = _Solver(logic.reg)
        self._evaluators: dict[tuple, object] = {}
        self.built = 0  # followers built so far (PASS_BUILDS)
        self._members: dict[int, tuple] = {}

    def evaluator(self, names: list[str]):
        """The evaluator compiled for these tags and what they depend on (their
        exclusive groups, the tags they reference), or None when it refuses them."""
        key = tuple(names)
        if key not in self._evaluators:
            rs = self.logic.ruleset
            need: set[str] = set()
            stack = list(names)
            while stack:
                name = stack.pop()
                if name in need or name not in rs.tags:
                    continue
                need.add(name)
                rule = rs.tags[name]
                if rule.exclusive and rule.group in rs.groups:
                    stack.extend(rs.groups[rule.group].tags)
                if rule.condition is not None:
                    stack.extend(self.logic.refs(name))
            position = self.logic.position
            tags = {n: rs.tags[n] for n in sorted(need, key=position.__getitem__)}
            groups = {}
            for name in tags:
                g = rs.groups.get(tags[name].group) if tags[name].group is not None else None
                if g is not None and g.name not in groups:
                    groups[g.name] = ir.Group(g.name, g.exclusive, [t for t in g.tags if t in need], g.span)
            # Each tag's own condition also as an audience, so checks look it up by name.
            own = {_RAW + n: ir.Audience(_RAW + n, rs.tags[n].condition) for n in names
                   if n in rs.tags and rs.tags[n].condition is not None}
            try:
                ev = _py().compile_python(ir.Ruleset(tags, groups, own, list(rs.files)), self.logic.config)
            except Exception:  # a ruleset the evaluator refuses (e.g. a reference cycle): no witnesses
                ev = None
            self._evaluators[key] = ev
        return self._evaluators[key]

    def find(self, ev, formula, checks, as_ofs, known: list):
        """(follower, as-of) meeting every check, or None. ``known``: witnesses
        found earlier in the group, tried first (and extended)."""
        for follower, as_of in known:
            if _passes(ev, checks, follower, as_of):
                return follower, as_of
        solver = self.logic.solver
        if solver.total >= PASS_STEPS:
            return None
        solver.steps = 0
        solver.limit = min(QUERY_STEPS, PASS_STEPS - solver.total)
        tried = 0
        try:
            for n, state in enumerate(solver.leaves(formula)):
                if n >= MAX_LEAVES:
                    break
                for as_of in self._as_of_candidates(state, as_ofs):
                    for high in (False, True):
                        if tried >= MAX_CANDIDATES or self.built >= PASS_BUILDS:
                            return None
                        tried += 1
                        self.built += 1
                        try:
                            follower = self.build(ev, state, as_of, high)
                        except (ArithmeticError, ValueError, TypeError):  # e.g. a window before year 1
                            follower = None
                        if follower is not None and _passes(ev, checks, follower, as_of):
                            known.insert(0, (follower, as_of))
                            del known[4:]
                            return follower, as_of
        except _OutOfSteps:
            return None
        finally:
            solver.total += solver.steps + self.rows_solver.steps
            self.rows_solver.steps = 0
        return None

    def _as_of_candidates(self, state: _State, as_ofs) -> list:
        now_base = self.reg._base_by_eq.get(ir.Now())
        if now_base is not None:
            vid = self.reg.bases[now_base].vars.get(ABS)
            lits = state.lits.get(vid, ()) if vid is not None else ()
            if lits:
                fixed = _dt_key(WITNESS_AS_OF)
                key = _pick_value(_Domain(NUM, True), tuple(_shift_lit(lit, -fixed) for lit in lits), False, True)
                value = _dt_from_key(key + fixed) if key is not _NO else None
                return [value] if value is not None else []
        return as_ofs

    # -- one follower ----------------------------------------------------------------------------------------------
    def build(self, ev, state: _State, as_of: dt.datetime, high: bool):
        reg = self.reg
        asof_key = _dt_key(as_of)
        fields: dict = {}
        tags = set()
        for oid, pos in state.opq.items():
            node = reg.opaque[oid]
            if pos and isinstance(node, ir.TagRef):
                tags.add(node.name)
        bases = set(state.miss)
        for vid in state.lits:
            bases.add(reg.vars[vid].base)
        aggregates = []
        for b in sorted(bases):
            node = reg.bases[b].node
            if isinstance(node, ir.Aggregate):
                aggregates.append(b)
                continue
            if isinstance(node, (ir.Now, ir.SourceField)):
                continue
            value = self.value_of(b, state, asof_key, high)
            if value is _NO:
                return None
            _assign(node, value, fields)
        rows = self.rows(ev, aggregates, state, as_of, asof_key, high, fields, frozenset(tags))
        if rows is None:
            return None
        return _py().Follower("witness", fields, rows, frozenset(tags))

    def value_of(self, b: int, state: _State, asof_key: int, high: bool):
        """A value for a base meeting its literals: None = missing, _NO = none found."""
        reg = self.reg
        base = reg.bases[b]
        if state.miss.get(b) is True:
            return None
        node = base.node
        kind = node.type.kind
        lits: tuple = ()
        rel: tuple = ()
        for view, vid in base.vars.items():
            got = state.lits.get(vid, ())
            if view == REL:
                rel += got
            else:
                lits += got  # float-view keys are exact numbers too: one scale
        if not lits and not rel and state.miss.get(b) is not False:
            return None  # unconstrained: leave it missing
        if kind in ("datetime", "date"):
            # Times are picked relative to the as-of instant (the most recent
            # allowed, or the boundary), then placed on the calendar.
            if kind == "date" and rel and not lits:
                key = _pick_value(_Domain(NUM, True), rel, True, True)
                moment = None if key is _NO else _dt_from_key(asof_key + key)
                return _NO if moment is None else moment.date()
            if kind == "date":
                today = _dt_from_key(asof_key).date().toordinal()
                key = _pick_value(_Domain(NUM, True), tuple(_shift_lit(lit, -today) for lit in lits), True, False)
                return _NO if key is _NO else _typed(key + today, node.type, None)
            lits = tuple(_shift_lit(lit, -asof_key) for lit in lits) + rel
            key = _pick_value(_Domain(NUM, True), lits, True, True)
            return _NO if key is _NO else _typed(key + asof_key, node.type, None)
        try:
            dom = reg._domain(base, ABS)
        except _Unsupported:
            return _NO
        key = _pick_value(dom, lits, high, False)
        if key is _NO:
            return _NO
        scale = getattr(node, "scale", None)
        if scale is None and isinstance(node, ir.Aggregate) and node.field is not None:
            scale = node.field.scale
        return _typed(key, node.type, scale)

    # -- event rows ----------------------------------------------------------------------------------------------
    def rows(self, ev, aggregates, state, as_of, asof_key, high, fields, tags):
        reg = self.reg
        by_rowset: dict[int, list[int]] = {}
        for b in aggregates:
            by_rowset.setdefault(reg.bases[b].rowset, []).append(b)
        rows: dict[str, list] = {}
        if not by_rowset:
            return rows

        def current(rid: int) -> int:
            follower = _py().Follower("witness", fields, rows, tags)
            return ev.value(reg.rowsets[rid].count_node, follower, as_of)

        def count_lits(rid: int):
            vid = reg.bases[reg.rowsets[rid].count_base].vars.get(ABS)
            return vid, (state.lits.get(vid, ()) if vid is not None else ())

        caps: dict[int, float] = {}
        for rid, members in by_rowset.items():
            vid, lits = count_lits(rid)
            cap = math.inf
            if lits:
                eq, lo, lo_s, hi, hi_s, *_ = _bounds(reg.vars[vid].dom, lits)
                if eq is not None:
                    cap = max((v for v in eq if isinstance(v, int)), default=0)
                elif hi is not None:
                    cap = _int_range(lo, lo_s, hi, hi_s)[1]
            for b in members:
                base = reg.bases[b]
                if base.time_field and state.miss.get(b) is True:
                    cap = 0
            caps[rid] = cap

        def order_key(rid):
            rs = reg.rowsets[rid]
            return (rs.within is None, rs.within or 0, rs.where is None, rid)

        for rid in sorted(by_rowset, key=order_key):
            rs = reg.rowsets[rid]
            members = by_rowset[rid]
            need = 0
            demands = []
            for b in members:
                base = reg.bases[b]
                if base.func in ("count", "exists"):
                    continue
                constrained = state.miss.get(b) is False or any(v in state.lits for v in base.vars.values())
                if base.func == "sum":
                    if constrained:
                        demands.append(b)
                        if not self.logic.solver._admits(state, base, 0):
                            need = 1
                elif state.miss.get(b) is True:
                    demands.append(b)
                elif constrained:
                    demands.append(b)
                    need = 1
            have = current(rid)
            vid, lits = count_lits(rid)
            dom = reg.vars[vid].dom if vid is not None else _Domain(NUM, True, 0)
            target = _pick(dom, lits + (("r", -1, ">=", max(have, need), True),), False)
            if target is _NO or target > MAX_ROWS:
                return None
            add = target - have
            if add <= 0:
                continue
            capped = [other for other in by_rowset if other != rid and reg.rowsets[other].source == rs.source
                      and current(other) + add > caps[other]]
            row = self.row(rs, add, demands, capped, state, asof_key, high)
            if row is None:
                return None
            made = [dict(row) for _ in range(add)]
            if not high and have == 0 and add > 1:
                self.split_sums(made, demands, state)
            rows.setdefault(rs.source, []).extend(made)
        return rows

    def split_sums(self, made: list, demands, state: _State) -> None:
        """Equal rows give a sum of n × value (5000 over 3 rows: 5000.01); give the
        last row the remainder instead, so the sum is the boundary value itself."""
        reg = self.reg
        fields = [reg.bases[b].node.field.name for b in demands]
        for b in demands:
            base = reg.bases[b]
            field = base.node.field
            vid = base.vars.get(ABS)
            if base.func != "sum" or fields.count(field.name) != 1 or vid not in state.lits:
                continue
            key = _pick_value(reg.vars[vid].dom, state.lits[vid], False, False)
            per = made[0].get(field.name)
            if key is _NO or per is None:
                continue
            total = _typed(key, field.type, field.scale)
            if total is _NO or isinstance(total, float):
                continue
            made[-1][field.name] = total - per * (len(made) - 1)

    def member(self, rs: _RowSet) -> tuple:
        """The formula of a row belonging to the row set (visible, in the window, meeting `where`)."""
        found = self._members.get(id(rs))
        if found is None:
            found = self._members[id(rs)] = self._member(rs)
        return found

    def _member(self, rs: _RowSet) -> tuple:
        parts = [self.builder.cond(rs.where)] if rs.where is not None else []
        time = self.reg._time_column(rs.source)
        if time is not None:
            tvar = self.reg.var(self.reg.base(ir.SourceField(rs.source, time, time, ir.DATETIME)), REL)
            parts.append(("L", ("r", tvar, "<=", 0, True)))
            if rs.within is not None:
                parts.append(("L", ("r", tvar, ">", -rs.within * 1_000_000, True)))
        return _and(parts)

    def row(self, rs: _RowSet, n: int, demands, capped, state, asof_key, high):
        reg = self.reg
        parts = [self.member(rs)]
        for b in demands:
            base = reg.bases[b]
            field = base.node.field
            fbase = reg.base(field)
            if state.miss.get(b) is True:
                parts.append(("L", ("m", fbase, True)))
                continue
            if state.miss.get(b) is False:
                parts.append(("L", ("m", fbase, False)))
            for view, vid in base.vars.items():
                for lit in state.lits.get(vid, ()):
                    if base.func == "avg":
                        target_view = ABS if field.type.kind == "float" else FLT
                    else:
                        target_view = view
                    try:
                        tvar = reg.var(fbase, target_view)
                    except _Unsupported:
                        return None
                    lit = _retarget(lit, tvar)
                    if base.func == "sum":
                        lit = _scale_lit(lit, n)
                    parts.append(("L", lit))
        for other in capped:
            parts.append(self.builder.neg(self.member(reg.rowsets[other])))
        solver = self.rows_solver
        solver.limit = solver.steps + 1_500
        try:
            leaf = next(iter(solver.leaves(_and(parts))), None)
        except _OutOfSteps:
            return None
        if leaf is None:
            return None
        row: dict = {}
        bases = set(leaf.miss)
        for vid in leaf.lits:
            bases.add(reg.vars[vid].base)
        for b in sorted(bases):
            node = reg.bases[b].node
            if isinstance(node, ir.SourceField) and node.source == rs.source:
                value = self.value_of(b, leaf, asof_key, high)
                if value is _NO:
                    return None
                row[node.name] = value
        return row


def _assign(node, value, fields: dict) -> None:
    """Make ``node`` evaluate to ``value`` by setting the follower fields it reads (when simple)."""
    if isinstance(node, ir.Field):
        fields.setdefault(node.name, value)
    elif isinstance(node, ir.Func) and node.name == "coalesce":
        if value is None:
            for a in node.args:
                _assign(a, None, fields)
        elif node.args and node.args[0].type == node.type:
            _assign(node.args[0], value, fields)
    elif isinstance(node, ir.Neg):
        _assign(node.operand, None if value is None else -value, fields)
    elif isinstance(node, ir.Arith) and node.op in ("+", "-"):
        c = _fold(node.right)
        if c is _NO or c is None:
            return
        if value is None:
            _assign(node.left, None, fields)
        elif node.type.kind == "datetime":
            _assign(node.left, _py()._shift(value, c, -1 if node.op == "+" else 1), fields)
        elif node.left.type == node.type and not isinstance(c, float):
            _assign(node.left, value - c if node.op == "+" else value + c, fields)


# -- the pass ---------------------------------------------------------------------------------------------------------


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _passes(ev, checks, follower, as_of) -> bool:
    try:
        return all(check(ev, follower, as_of) for check in checks)
    except Exception:  # the evaluator cannot evaluate this candidate: not a witness
        return False


def _holds(name: str):
    return lambda ev, follower, as_of: ev.holds(name, follower, as_of)


def _meets(name: str):
    """The tag's own condition holds (ignoring earlier members of its group)."""
    key = _RAW + name
    return lambda ev, follower, as_of: ev.audience(key, follower, as_of)


def _literals(f) -> tuple:
    """The literals a formula requires at its top level."""
    if f[0] == "L":
        return (f,)
    if f[0] == "&":
        return tuple(i for i in f[1] if i[0] == "L")
    return ()


class _Logic:
    def __init__(self, ruleset: ir.Ruleset, config):
        self.ruleset = ruleset
        self.config = config
        self.reg = _Registry(config)
        self.builder = _Builder(self.reg, ruleset)
        self.solver = _Solver(self.reg)
        self.witnesses = _Witnesses(self)
        self.diagnostics: list[Diagnostic] = []
        self.overlaps: list[Overlap] = []
        self._own: dict[str, tuple] = {}
        self._neg: dict[str, tuple] = {}
        self._models: dict[str, _State] = {}  # a satisfying branch of each rule's condition
        self._needs: dict[str, Optional[_Needs]] = {}
        self._refs: dict[str, set] = {}
        self._timed: dict[str, bool] = {}
        self._disjoint: dict[tuple[str, str], bool] = {}
        self.position = {name: i for i, name in enumerate(ruleset.tags)}
        self._index: dict[str, dict[str, int]] = {}  # group -> member -> position

    def refs(self, name: str) -> set:
        found = self._refs.get(name)
        if found is None:
            found = self._refs[name] = ir.tag_refs(self.ruleset.tags[name].condition)
        return found

    def earlier_siblings(self, name: str) -> list:
        """``Ruleset.earlier_siblings``, tolerant of a ruleset whose groups do not list the tag."""
        rs = self.ruleset
        rule = rs.tags[name]
        group = rs.groups.get(rule.group) if rule.exclusive and rule.group is not None else None
        if group is None:
            return []
        index = self._index.get(group.name)
        if index is None:
            index = self._index[group.name] = {m: i for i, m in enumerate(group.tags)}
        if name not in index:
            return []
        return [rs.tags[m] for m in group.tags[:index[name]] if m in rs.tags]

    def own(self, name: str) -> tuple:
        f = self._own.get(name)
        if f is None:
            f = self._own[name] = self.builder.cond(self.ruleset.tags[name].condition)
        return f

    def not_own(self, name: str) -> tuple:
        f = self._neg.get(name)
        if f is None:
            f = self._neg[name] = self.builder.neg(self.own(name))
        return f

    def needs(self, name: str) -> Optional["_Needs"]:
        """The literals the rule's condition requires at its top level (None if they clash)."""
        if name not in self._needs:
            state = _State()
            solver = self.solver
            solver.steps, solver.limit = 0, math.inf
            ok = all(solver.add(state, f[1]) for f in _literals(self.own(name)))
            self._needs[name] = _Needs(self.reg, state) if ok else None
        return self._needs[name]

    def clash(self, a: "_Needs", b: "_Needs") -> bool:
        """The two sets of required literals cannot hold together (a proof of disjointness)."""
        reg = self.reg
        if a.miss or b.miss:
            for x, y in ((a, b), (b, a)):
                for base, missing in x.miss.items():
                    known = y.miss.get(base)
                    if known is not None and known != missing:
                        return True
                    if missing and any(v in y.sums for v in reg.bases[base].vars.values()):
                        return True
        if a.opq and b.opq:
            for o, pos in a.opq.items():
                if b.opq.get(o, pos) != pos:
                    return True
        x, y = (a.sums, b.sums) if len(a.sums) <= len(b.sums) else (b.sums, a.sums)
        for vid, mine in x.items():
            other = y.get(vid)
            if other is not None and _clash_on(reg.vars[vid].dom, mine, other):
                return True
        return False

    def report(self, code: str, message: str, span, hint: str) -> None:
        self.diagnostics.append(Diagnostic(code, RULES[code].severity, message, span, hint))

    # -- TD603 / TD604 ------------------------------------------------------------------------------------------
    def why_never(self, condition) -> str:
        """The conjuncts that contradict each other, as text (empty when the whole condition is needed)."""
        if isinstance(condition, ir.Const):
            return f" (it is `{_py().expr_text(condition)}`)"
        if not isinstance(condition, ir.And) or not 2 <= len(condition.items) <= 12:
            return ""
        core = list(condition.items)
        for item in list(core):
            trial = [x for x in core if x is not item]
            if trial and self.solver.query(_and([self.builder.cond(x) for x in trial])) is False:
                core = trial
        texts = [f"`{_clip(_py().expr_text(x))}`" for x in core]
        if len(core) == 1:
            return f": {texts[0]} is never true"
        return ": " + " and ".join(texts) + " cannot both be true"

    def check_conditions(self) -> set[str]:
        never = set()
        for rule in self.ruleset.computed:
            answer = self.solver.query(self.own(rule.name))
            if answer is False:
                never.add(rule.name)
                self.report("TD603", f'tag "{shown(rule.name)}" can never hold{self.why_never(rule.condition)}',
                            rule.name_span, "fix the condition: as written, no follower ever gets this tag")
            elif answer:
                self._models[rule.name] = self.solver.model
        for name, audience in self.ruleset.audiences.items():
            f = self.builder.cond(audience.condition)
            if self.solver.query(f) is False:
                self.report("TD603", f'audience "{shown(name)}" can never hold{self.why_never(audience.condition)}',
                            audience.span, "fix the condition: as written, the audience is always empty")
            elif not self.quickly_falsifiable(f) and self.solver.query(self.builder.neg(f)) is False:
                self.report("TD604", f'audience "{shown(name)}" holds for every follower', audience.span,
                            "narrow the condition, or send to all followers without an audience")
        return never

    def quickly_falsifiable(self, f) -> bool:
        """Some required literal of ``f`` can fail on its own (so ``not f`` is satisfiable)."""
        for item in _literals(f):
            lit = item[1]
            if lit[0] == "o":
                return True
            if lit[0] == "m":
                if lit[2] or self.reg.bases[lit[1]].can_miss:
                    return True
                continue
            var = self.reg.vars[lit[1]]
            if self.reg.bases[var.base].can_miss:
                return True
            negated = self.builder.neg(item)
            if negated[0] == "L" and _satisfiable(var.dom, (negated[1],)):
                return True
        return False

    def check_always(self, never: set[str], shadowed: set[str]) -> None:
        for rule in self.ruleset.computed:
            if rule.name in never or rule.name in shadowed:
                continue
            earlier = [s.name for s in self.earlier_siblings(rule.name)
                       if s.condition is not None and s.name not in never]
            if earlier and earlier[0] in self._models:
                continue  # an earlier member can hold, and then this one does not
            if not earlier and self.quickly_falsifiable(self.own(rule.name)):
                continue
            # not(effective) = an earlier member holds, or this condition does not
            f = _or([self.own(n) for n in earlier] + [self.not_own(rule.name)])
            if self.solver.query(f) is False:
                self.report("TD604", f'tag "{shown(rule.name)}" holds for every follower, so it carries no information',
                            rule.name_span, "narrow the condition; a tag on everyone cannot tell followers apart")

    # -- exclusive groups ---------------------------------------------------------------------------------------------
    def check_group(self, group: ir.Group, never: set[str], shadowed: set[str]) -> None:
        rs = self.ruleset
        members = [rs.tags[n] for n in group.tags if n in rs.tags and not rs.tags[n].manual
                   and rs.tags[n].condition is not None]
        self.sweep([m.name for m in members if m.name not in never])
        for j, rule in enumerate(members):
            if j == 0 or rule.name in never:
                continue
            earlier = [m.name for m in members[:j] if m.name not in never]
            if not earlier or self.disjoint_from_all(rule.name, earlier) or self.escapes(rule.name, earlier):
                continue
            f = _and([self.own(rule.name)] + [self.not_own(n) for n in earlier])
            if self.solver.query(f) is False:
                shadowed.add(rule.name)
                cover = self.cover(rule.name, earlier)
                names = ", ".join(f'"{shown(n)}"' for n in cover)
                self.report("TD602", f'tag "{shown(rule.name)}" can never win in exclusive group '
                                     f'"{shown(group.name)}": whenever it holds, an earlier rule holds too ({names})',
                            rule.name_span, "move it before the rules that cover it, narrow them, or remove it")
        if len(members) > MAX_GROUP_FOR_OVERLAP:
            return
        live = {m.name for m in members if m.name not in never and m.name not in shadowed}
        ev = None
        known: list = []
        as_ofs = None
        for j, later in enumerate(members):
            if later.name not in live:
                continue
            # One report per later rule: the first earlier rule that wins some of its followers.
            for i in range(j):
                first = members[i]
                if first.name not in live:
                    continue
                if self.disjoint(first.name, later.name):
                    continue
                if ev is None:
                    ev = self.witnesses.evaluator([m.name for m in members])
                    if ev is None:
                        return
                    as_ofs = self.as_of_candidates(members)
                effective = [self.not_own(m.name) for m in members[:i] if m.name not in never]
                f = _and(effective + [self.own(first.name), self.own(later.name)])
                found = self.witnesses.find(ev, f, [_holds(first.name), _meets(later.name)], as_ofs, known)
                if found is None:
                    continue
                follower, as_of = found
                self.overlaps.append(Overlap(group.name, first.name, later.name, follower, as_of))
                values = self.describe(ev, [first.condition, later.condition], follower, as_of)
                timed = self.time_dependent(first.name) or self.time_dependent(later.name)
                when = f" (as of {as_of.isoformat(sep=' ')})" if timed else ""
                self.report("TD601", f'"{shown(first.name)}" and "{shown(later.name)}" can both hold, e.g. for a '
                                     f"follower with {values}{when}; the first in file order wins",
                            later.name_span, "make the conditions disjoint, or keep the order deliberately")
                break

    def disjoint(self, a: str, b: str) -> bool:
        """Proven: the two conditions never hold together (their required literals clash)."""
        key = (a, b)
        found = self._disjoint.get(key)
        if found is None:
            x, y = self.needs(a), self.needs(b)
            found = self._disjoint[key] = x is None or y is None or self.clash(x, y)
        return found

    def sweep(self, names: list[str]) -> None:
        """Mark pairs proven disjoint on a variable every rule constrains, by
        sorting the rules' ranges of it (a group written disjoint costs n log n
        instead of n² comparisons)."""
        needs = [self.needs(n) for n in names]
        if len(names) < 4 or any(x is None for x in needs):
            return
        common = set(needs[0].sums)
        for x in needs[1:]:
            common &= x.sums.keys()
        for vid in sorted(common)[:2]:
            dom = self.reg.vars[vid].dom
            ranges = []
            for name, x in zip(names, needs):
                r = x.sums[vid].range(dom)
                if r is None:
                    break
                ranges.append((r, name))
            else:
                ranges.sort(key=lambda item: item[0][0])
                overlapping = set()
                for i, ((lo, hi), a) in enumerate(ranges):
                    for (lo2, hi2), b in ranges[i + 1:]:
                        if lo2 > hi:
                            break
                        overlapping.add((a, b))
                        overlapping.add((b, a))
                for (_, a), (_, b) in itertools.combinations(ranges, 2):
                    if (a, b) not in overlapping:
                        self._disjoint[(a, b)] = self._disjoint[(b, a)] = True
                if not overlapping:
                    return  # every pair is settled

    def disjoint_from_all(self, name: str, earlier: list[str]) -> bool:
        return name in self._models and all(self.disjoint(e, name) for e in earlier)

    def escapes(self, name: str, earlier: list[str]) -> bool:
        """A concrete choice of values satisfies the rule and none of the earlier
        ones (refutes shadowing without a search)."""
        model = self._models.get(name)
        if model is None:
            return False
        assignment = self.solver.assignment(model)
        if assignment is None:
            return False
        return not any(self.solver.evaluate(self.own(e), assignment) for e in earlier)

    def cover(self, name: str, earlier: list[str]) -> list[str]:
        """Earlier members whose conditions together cover ``name``'s (a small set)."""
        for e in earlier:
            if self.solver.query(_and([self.own(name), self.not_own(e)])) is False:
                return [e]
        keep = list(earlier)
        for e in earlier:
            trial = [x for x in keep if x != e]
            if trial and self.solver.query(_and([self.own(name)] + [self.not_own(x) for x in trial])) is False:
                keep = trial
        return keep

    # -- describing witnesses ---------------------------------------------------------------------------------------
    def as_of_candidates(self, members) -> list:
        """The fixed instant, then the conditions' date constants (latest first)."""
        stamps = set()
        for rule in members:
            for node in ir.walk(rule.condition):
                if isinstance(node, ir.Const) and node.type.kind in ("datetime", "date"):
                    stamps.add(ir.to_datetime(node.value))
        extra = sorted((s for s in stamps if s != WITNESS_AS_OF), reverse=True)[:3]
        return [WITNESS_AS_OF] + extra

    def describe(self, ev, conditions, follower, as_of) -> str:
        nodes: list = []
        seen = set()
        for c in conditions:
            for node in _read_values(c):
                if node not in seen:
                    seen.add(node)
                    nodes.append(node)
        parts = []
        for node in nodes[:MAX_SHOWN]:
            try:
                value = ev.value(node, follower, as_of)
            except Exception:
                continue
            text = _clip(_py().expr_text(node))
            parts.append(f"{text} is missing" if value is None else f"{text} = {_py().render_value(value)}")
        if len(nodes) > MAX_SHOWN:
            parts.append("…")
        return ", ".join(parts) if parts else "no particular values"

    def time_dependent(self, name: str) -> bool:
        """Whether the tag's condition reads the as-of instant (now(), windows, days_since, dates)."""
        found = self._timed.get(name)
        if found is None:
            found = self._timed[name] = self._reads_time(name)
        return found

    def _reads_time(self, name: str) -> bool:
        seen: set[str] = {name}
        stack = [self.ruleset.tags[name].condition]
        while stack:
            for node in ir.walk(stack.pop()):
                if isinstance(node, ir.Now) or (isinstance(node, ir.Aggregate) and node.within is not None) or (
                        isinstance(node, ir.Func) and node.name in ("days_since", "hours_since")) or (
                        isinstance(node, ir.Const) and node.type.kind in ("datetime", "date")):
                    return True
                if isinstance(node, ir.TagRef) and node.name not in seen:
                    seen.add(node.name)
                    rule = self.ruleset.tags.get(node.name)
                    if rule is not None and rule.condition is not None:
                        stack.append(rule.condition)
        return False

    def run(self) -> list[Diagnostic]:
        never = self.check_conditions()
        shadowed: set[str] = set()
        for group in self.ruleset.groups.values():
            if group.exclusive:
                self.check_group(group, never, shadowed)
        self.check_always(never, shadowed)
        return self.diagnostics


def _read_values(condition) -> list:
    """The values a condition compares or tests, in reading order (not inside aggregates)."""
    out = []
    stack = [condition]
    while stack:
        e = stack.pop()
        if isinstance(e, (ir.And, ir.Or)):
            stack.extend(reversed(e.items))
        elif isinstance(e, ir.Not):
            stack.append(e.operand)
        elif isinstance(e, (ir.Compare, ir.Between, ir.InList, ir.IsMissing)):
            operands = ((e.left, e.right) if isinstance(e, ir.Compare) else (e.operand, e.low, e.high)
                        if isinstance(e, ir.Between) else (e.operand,))
            out.extend(x for x in operands if _fold(x) is _NO and _now_offset(x) is None)
        elif isinstance(e, ir.Const):
            continue
        else:
            out.append(e)  # a boolean value: a field, exists(…), tag("…"), contains(…)
    return out


@dataclass(frozen=True)
class Overlap:
    """A TD601 witness: in exclusive group ``group``, ``first`` wins for
    ``follower`` as of ``as_of`` although ``later``'s own condition holds too."""

    group: str
    first: str
    later: str
    follower: Follower
    as_of: dt.datetime


def check_logic(ruleset: ir.Ruleset, config) -> tuple[list[Diagnostic], list[Overlap]]:
    """The TD601–TD604 diagnostics of a checked ruleset, and the witnesses behind each TD601."""
    logic = _Logic(ruleset, config)
    diagnostics = logic.run()
    return diagnostics, logic.overlaps


def run(ctx) -> None:
    # Claims are about the ruleset the engine would run: none while it has errors.
    if ctx.ruleset is None or any(d.severity is Severity.ERROR for d in ctx.diagnostics):
        return
    diagnostics, _ = check_logic(ctx.ruleset, ctx.config)
    ctx.diagnostics.extend(diagnostics)
