"""Hypothesis strategies for TagDSL source text, shared by the test suite.

- ``rulesets(well_typed=False, comments=True, messy=True, max_statements=6)``:
  the text of a syntactically valid ruleset (one file). With
  ``well_typed=True`` it also resolves without errors against the default
  ``Config()`` (known fields and sources, matching types, lets defined before
  use and never recursive, ``tag("…")`` only to tags defined earlier, unique
  names): ``tagdsl.analyze(texts={"r.tag": text})`` reports no error.
  ``messy`` joins tokens with random whitespace (newlines, tabs, U+3000,
  several statements on a line); ``comments`` sprinkles full-line and
  end-of-line comments between tokens.
- ``expressions(well_typed=False)``: one expression's text (a condition when
  well-typed).
- ``token_soups()``: random sequences of TagDSL tokens (keywords, names
  including CJK, strings with valid and invalid escapes, numbers, durations,
  operators, braces, comments, newlines, full-width punctuation), joined
  with or without whitespace: mostly invalid text, for robustness tests.
- ``mutated_rulesets()``: valid rulesets with a few random edits (near
  misses that exercise the parser's error recovery and the checker on
  partial modules).
- ``rule_bytes()``: random bytes, and soups or rulesets with a corrupted
  encoding or a byte order mark.
- ``string_literals()``, ``identifiers()``, ``decimals()``, ``durations()``:
  single tokens.

Structure (statements, operators, names) is drawn from Hypothesis so that
failures shrink to small rulesets; cosmetic choices (whitespace, escapes,
comment text) come from one seeded ``random.Random`` per value, which keeps
generation fast. Internal generators are plain functions taking ``draw``
(building a strategy object per call would dominate the run time).
"""

from __future__ import annotations

import random
from functools import lru_cache

from hypothesis import strategies as st

KEYWORDS = ("tag", "when", "manual", "group", "exclusive", "audience", "let", "and", "or", "not", "in",
            "between", "is", "missing", "where", "within", "true", "false")

# -- the default Config() -------------------------------------------------------------------
STRING_FIELDS = ("unionid", "subscribe_scene", "qr_scene_str", "language", "remark", "city", "province")
INTEGER_FIELDS = ("gender", "age")
DATETIME_FIELDS = ("subscribe_time", "last_active_at")
BOOLEAN_FIELDS = ("subscribed",)
SOURCES = {
    # name: (time column, {field: type})
    "orders": ("created_at", {"amount": "decimal", "category": "string", "promo": "boolean"}),
    "events": ("occurred_at", {"type": "string", "key": "string"}),
}

# Precedence levels of grammar/tagdsl.lark, loosest first (as in tagdsl.format).
OR, AND, NOT, CMP, SUM, PRODUCT, UNARY, ATOM = range(1, 9)

_ASCII_NAMES = ("x", "a1", "_tmp", "score", "vip_level", "Days", "city2", "ab_cd")
_CJK_NAMES = ("活跃天数", "沉睡", "新客数", "地区", "客单价", "ｘ全角", "変数")
_TAG_BASES = ("新客", "老客", "沉睡唤醒", "高价值", "地域-北京", "VIP", "618活动", "复购", "意向客", "A类",
              "私域 会员", "标签")
_TEXTS = ("北京", "上海", "广州", "护肤", "VIP", "vip ", "", "a\"b", "back\\slash", "tab\there", "line\nbreak",
          "零宽\u200b空格", "全角\u3000空格", "emoji😀", "#not a comment", "\u00e9", "x", "\x01ctl", "\ufeffbom")
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
# Arguments of date(...)/datetime(...): valid, malformed, and at the edges of the representable range.
_TIME_TEXTS = ("2026-06-18", "2026-06-18T20:00:00", "2026-06-18T20:00:00+08:00", "2026-02-30", "2026-13-01",
               "0001-01-01", "9999-12-31", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
               "2026-06-18 20:00", "2026-06-18T20:00:00Z", "20260618", "", "not a date", "2026-06-18T24:00:00")


# -- drawing helpers --------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _ints(lo: int, hi: int):
    return st.integers(lo, hi)


@lru_cache(maxsize=None)
def _sampled(options: tuple):
    return st.sampled_from(options)


def _int(draw, lo: int, hi: int) -> int:
    return draw(_ints(lo, hi))


def _pick(draw, options):
    return draw(_sampled(tuple(options)))


def _rnd(draw) -> random.Random:
    """A seeded Random for cosmetic choices (escapes, whitespace): one draw instead of many."""
    return random.Random(_int(draw, 0, 2**32 - 1))


def _wrap(tokens: list[str], level: int, need: int) -> list[str]:
    return ["(", *tokens, ")"] if level < need else tokens


# -- tokens -------------------------------------------------------------------------------------------


def _escape(value: str, rnd: random.Random) -> str:
    """A string literal for ``value``, escaped in one of the ways the parser accepts."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch in "\r\x00":
            out.append(f"\\u{ord(ch):04x}")
        elif ch == "\t":
            out.append(rnd.choice(["\\t", "\t", "\\u0009"]))
        elif ord(ch) <= 0xFFFF and rnd.random() < 0.1:
            out.append(f"\\u{ord(ch):04x}" if rnd.random() < 0.5 else f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _random_text(rnd: random.Random, max_len: int, exclude: str = "\n\r\x00") -> str:
    chars = []
    for _ in range(rnd.randint(0, max_len)):
        cp = rnd.choice([rnd.randint(0x20, 0x7E), rnd.randint(0xA0, 0x2FFF), rnd.randint(0x4E00, 0x9FFF),
                         rnd.randint(0x1, 0x1F), rnd.randint(0xE000, 0x10FFFF), 0x3000, 0x200B])
        if chr(cp) not in exclude and not 0xD800 <= cp <= 0xDFFF:
            chars.append(chr(cp))
    return "".join(chars)


def _string_literal(draw) -> str:
    rnd = _rnd(draw)
    value = rnd.choice(_TEXTS) if rnd.random() < 0.7 else _random_text(rnd, 8, "\x00")
    return _escape(value, rnd)


def _identifier(draw) -> str:
    return _pick(draw, _ASCII_NAMES + _CJK_NAMES) + _pick(draw, ("", "_1", "2", "_甲"))


def _decimal(draw) -> str:
    rnd = _rnd(draw)
    return f"{rnd.choice([0, 1, 12, 300, 5000, rnd.randint(0, 99999)])}." + "".join(
        rnd.choice("0123456789") for _ in range(rnd.randint(1, 4)))


def _duration(draw, positive: bool = True) -> str:
    return f"{_int(draw, 1 if positive else 0, 400)}{_pick(draw, 'wdhms')}"


@st.composite
def string_literals(draw) -> str:
    return _string_literal(draw)


@st.composite
def identifiers(draw) -> str:
    return _identifier(draw)


@st.composite
def decimals(draw) -> str:
    return _decimal(draw)


@st.composite
def durations(draw, positive: bool = True) -> str:
    return _duration(draw, positive)


# -- syntactic expressions (any names, any types) -------------------------------------------------


def _syntactic_expr(draw, depth: int) -> tuple[list[str], int]:
    if depth <= 0 or _int(draw, 0, 3) == 0:
        choice = _int(draw, 0, 9)
        if choice == 0:
            return [_string_literal(draw)], ATOM
        if choice == 1:
            return [str(_pick(draw, (0, 1, 7, 30, 90, 5000, 10**12, 10**30)))], ATOM
        if choice == 2:
            return [_decimal(draw)], ATOM
        if choice == 3:
            return [_duration(draw, positive=False)], ATOM
        if choice == 4:
            return [_pick(draw, ("true", "false"))], ATOM
        if choice == 5:
            return [_identifier(draw), ".", _identifier(draw)], ATOM
        if choice == 6:
            return ["tag", "(", _string_literal(draw), ")"], ATOM
        if choice == 7:
            return [_pick(draw, ("date", "datetime")), "(", f'"{_pick(draw, _TIME_TEXTS)}"', ")"], ATOM
        return [_identifier(draw)], ATOM

    def sub():
        return _syntactic_expr(draw, depth - 1)

    kind = _int(draw, 0, 11)
    if kind == 0:
        op = _pick(draw, ("or", "and"))
        level = OR if op == "or" else AND
        (lt, ll), (rt, rl) = sub(), sub()
        return [*_wrap(lt, ll, level), op, *_wrap(rt, rl, level + 1)], level
    if kind == 1:
        t, lv = sub()
        return ["not", *_wrap(t, lv, NOT)], NOT
    if kind == 2:
        (lt, ll), (rt, rl) = sub(), sub()
        return [*_wrap(lt, ll, SUM), _pick(draw, _COMPARISONS), *_wrap(rt, rl, SUM)], CMP
    if kind == 3:
        op = _pick(draw, ("+", "-", "*", "/"))
        level = SUM if op in "+-" else PRODUCT
        (lt, ll), (rt, rl) = sub(), sub()
        return [*_wrap(lt, ll, level), op, *_wrap(rt, rl, level + 1)], level
    if kind == 4:
        t, lv = sub()
        return [_pick(draw, ("-", "+")), *_wrap(t, lv, UNARY)], UNARY
    if kind == 5:
        (a, al), (b, bl), (c, cl) = sub(), sub(), sub()
        return [*_wrap(a, al, SUM), "between", *_wrap(b, bl, SUM), "and", *_wrap(c, cl, SUM)], CMP
    if kind == 6:
        (a, al), (b, bl) = sub(), sub()
        op = ["not", "in"] if _int(draw, 0, 1) else ["in"]
        return [*_wrap(a, al, SUM), *op, *_wrap(b, bl, SUM)], CMP
    if kind == 7:
        a, al = sub()
        return [*_wrap(a, al, SUM), "is", *(["not"] if _int(draw, 0, 1) else []), "missing"], CMP
    if kind == 8:
        t, _ = sub()
        return ["(", *t, ")"], ATOM
    if kind == 9:
        n = _int(draw, 0, 3)
        items: list[str] = ["["]
        for i in range(n):
            if i:
                items.append(",")
            items += sub()[0]
        if n and _int(draw, 0, 1):
            items.append(",")
        return [*items, "]"], ATOM
    # a call, maybe an aggregate with where/within
    func = _pick(draw, ("count", "exists", "sum", "avg", "min", "max", "last", "first", "now", "days_since",
                        "coalesce", "contains", "date", "f", "函数"))
    toks = [func, "("]
    for i in range(_int(draw, 0, 3)):
        if i:
            toks.append(",")
        toks += sub()[0]
        if i == 0:
            if _int(draw, 0, 1):
                toks += ["where", *sub()[0]]
            if _int(draw, 0, 1):
                toks += ["within", *sub()[0]]
    return [*toks, ")"], ATOM


# -- well-typed expressions against Config() ---------------------------------------------------------


class _Scope:
    """What a well-typed ruleset has defined so far."""

    def __init__(self) -> None:
        self.lets: dict[str, str] = {}  # name -> type (bool int str dur)
        self.tags: list[str] = []
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def lets_of(self, kind: str) -> list[str]:
        return [name for name, t in self.lets.items() if t == kind]


def _typed(draw, kind: str, depth: int, scope: _Scope, source: str | None = None) -> tuple[list[str], int]:
    """An expression of ``kind`` (bool int num str dt); inside an aggregate's
    ``where`` over ``source``, names are that source's fields."""
    leaf = depth <= 0 or _int(draw, 0, 2) == 0

    def sub(k):
        return _typed(draw, k, depth - 1, scope, source)

    if kind == "bool":
        if leaf:
            return _bool_leaf(draw, depth, scope, source)
        choice = _int(draw, 0, 3)
        if choice <= 1:
            op, level = ("and", AND) if choice == 0 else ("or", OR)
            (lt, ll), (rt, rl) = sub("bool"), sub("bool")
            return [*_wrap(lt, ll, level), op, *_wrap(rt, rl, level + 1)], level
        if choice == 2:
            t, lv = sub("bool")
            return ["not", *_wrap(t, lv, NOT)], NOT
        return ["(", *sub("bool")[0], ")"], ATOM
    if kind in ("int", "num"):
        if leaf:
            return _number_leaf(draw, kind, scope, source)
        choice = _int(draw, 0, 3)
        if choice <= 1:
            op = _pick(draw, ("+", "-", "*", "/") if kind == "num" else ("+", "-", "*"))
            level = SUM if op in "+-" else PRODUCT
            (lt, ll), (rt, rl) = sub(kind), sub(kind)
            return [*_wrap(lt, ll, level), op, *_wrap(rt, rl, level + 1)], level
        if choice == 2:
            t, lv = sub(kind)
            return ["-", *_wrap(t, lv, UNARY)], UNARY
        return ["(", *sub(kind)[0], ")"], ATOM
    if kind == "str":
        if source is not None:
            options = [f for f, t in SOURCES[source][1].items() if t == "string"]
        else:
            options = list(STRING_FIELDS) + scope.lets_of("str")
        choice = _int(draw, 0, 3)
        if choice == 0:
            return [_string_literal(draw)], ATOM
        if choice == 1 and source is None:
            src = _pick(draw, ("orders", "events"))
            fld = "category" if src == "orders" else _pick(draw, ("type", "key"))
            return [_pick(draw, ("last", "first", "min", "max")), "(", src, ".", fld, ")"], ATOM
        if choice == 2 and source is None:
            return ["coalesce", "(", _pick(draw, STRING_FIELDS), ",", _string_literal(draw), ")"], ATOM
        return [_pick(draw, options)], ATOM
    if kind == "dt":
        if source is not None:
            return [SOURCES[source][0]], ATOM
        choice = _int(draw, 0, 5)
        if choice == 0:
            return ["now", "(", ")"], ATOM
        if choice == 1:
            return ["now", "(", ")", _pick(draw, ("-", "+")), _duration(draw)], SUM
        if choice == 2:
            y, m, d, h = _int(draw, 2000, 2030), _int(draw, 1, 12), _int(draw, 1, 28), _int(draw, 0, 23)
            return ["datetime", "(", f'"{y:04d}-{m:02d}-{d:02d}T{h:02d}:00:00"', ")"], ATOM
        if choice == 3:
            return ["date", "(", f'"{_int(draw, 2000, 2030):04d}-0{_int(draw, 1, 9)}-1{_int(draw, 0, 9)}"', ")"], ATOM
        if choice == 4:
            src = _pick(draw, ("orders", "events"))
            return [_pick(draw, ("last", "max", "min")), "(", src, ".", SOURCES[src][0], ")"], ATOM
        return [_pick(draw, DATETIME_FIELDS)], ATOM
    raise AssertionError(kind)


def _number_leaf(draw, kind: str, scope: _Scope, source: str | None) -> tuple[list[str], int]:
    choice = _int(draw, 0, 5)
    if choice == 0:
        return [str(_pick(draw, (0, 1, 2, 3, 7, 30, 90, 300, 5000, 100000)))], ATOM
    if source is not None:
        if source == "orders" and kind == "num":
            return ["amount"], ATOM
        return [str(_int(draw, 0, 500))], ATOM
    if choice == 1:
        return [_pick(draw, INTEGER_FIELDS)], ATOM
    if choice == 2:
        return _aggregate(draw, "count", scope)
    if choice == 3:
        return [_pick(draw, ("days_since", "hours_since")), "(", _pick(draw, DATETIME_FIELDS), ")"], ATOM
    if choice == 4 and kind == "num":
        if _int(draw, 0, 1):
            return [_decimal(draw)], ATOM
        return _aggregate(draw, _pick(draw, ("sum", "avg", "min", "max", "last", "first")), scope)
    lets = scope.lets_of("int")
    if lets:
        return [_pick(draw, lets)], ATOM
    return ["coalesce", "(", "age", ",", str(_int(draw, 0, 99)), ")"], ATOM


def _aggregate(draw, func: str, scope: _Scope) -> tuple[list[str], int]:
    if func in ("count", "exists"):
        src = _pick(draw, ("orders", "events"))
        toks = [func, "(", src]
    else:
        src = "orders"
        toks = [func, "(", "orders", ".", "amount"]
    if _int(draw, 0, 1):
        toks += ["where", *_typed(draw, "bool", 1, scope, src)[0]]
    if _int(draw, 0, 1):
        durs = scope.lets_of("dur")
        toks += ["within", _pick(draw, durs) if durs and _int(draw, 0, 1) else _duration(draw)]
    return [*toks, ")"], ATOM


def _bool_leaf(draw, depth: int, scope: _Scope, source: str | None) -> tuple[list[str], int]:
    def num(kind="int"):
        t, lv = _typed(draw, kind, max(depth - 1, 0), scope, source)
        return _wrap(t, lv, SUM)

    choice = _int(draw, 0, 11)
    if source is not None:
        fields = SOURCES[source][1]
        if choice <= 2:
            return [*num("num" if source == "orders" else "int"), _pick(draw, _COMPARISONS), *num()], CMP
        if choice <= 4 and "promo" in fields:
            if choice == 3:
                return ["promo"], ATOM
            return ["promo", "==", _pick(draw, ("true", "false"))], CMP
        if choice <= 6:
            return [SOURCES[source][0], _pick(draw, (">", ">=", "<")), "now", "(", ")", "-", _duration(draw)], CMP
        fld = _pick(draw, [f for f, t in fields.items() if t == "string"])
        if choice <= 8:
            return [fld, _pick(draw, ("==", "!=")), _string_literal(draw)], CMP
        return [fld, *(["not"] if choice == 9 else []), "in", "[", _string_literal(draw), ",",
                _string_literal(draw), "]"], CMP
    if choice == 0:
        return [*num(_pick(draw, ("int", "num"))), _pick(draw, _COMPARISONS), *num(_pick(draw, ("int", "num")))], CMP
    if choice == 1:
        return [*num(), "between", *num(), "and", *num()], CMP
    if choice == 2:
        (s1, l1), (s2, l2) = _typed(draw, "str", 0, scope), _typed(draw, "str", 0, scope)
        return [*_wrap(s1, l1, SUM), _pick(draw, _COMPARISONS), *_wrap(s2, l2, SUM)], CMP
    if choice == 3:
        joined: list[str] = []
        for i in range(_int(draw, 0, 3)):
            joined += ([","] if i else []) + [_string_literal(draw)]
        neg = ["not"] if _int(draw, 0, 1) else []
        return [_pick(draw, STRING_FIELDS), *neg, "in", "[", *joined, "]"], CMP
    if choice == 4:
        name = _pick(draw, STRING_FIELDS + INTEGER_FIELDS + DATETIME_FIELDS + BOOLEAN_FIELDS)
        return [name, "is", *(["not"] if _int(draw, 0, 1) else []), "missing"], CMP
    if choice == 5:
        return (["subscribed"], ATOM) if _int(draw, 0, 1) else (["subscribed", "==", "true"], CMP)
    if choice == 6:
        return [_pick(draw, ("contains", "starts_with")), "(", _pick(draw, STRING_FIELDS), ",", _string_literal(draw),
                ")"], ATOM
    if choice == 7:
        (a, al), (b, bl) = _typed(draw, "dt", 0, scope), _typed(draw, "dt", 0, scope)
        return [*_wrap(a, al, SUM), _pick(draw, _COMPARISONS), *_wrap(b, bl, SUM)], CMP
    if choice == 8:
        return _aggregate(draw, "exists", scope)
    if choice == 9 and scope.tags:
        return ["tag", "(", _escape(_pick(draw, scope.tags), _rnd(draw)), ")"], ATOM
    if choice == 10 and scope.lets_of("bool"):
        return [_pick(draw, scope.lets_of("bool"))], ATOM
    return [_pick(draw, ("true", "false"))], ATOM


# -- statements ------------------------------------------------------------------------------------

_DESCRIPTIONS = ("近一年消费满5000且至少3单", "growth", "运营", 'a "quoted" note', "")


def _attributes(draw, well_typed: bool, kind: str) -> list[str]:
    toks: list[str] = []
    if not well_typed:
        for _ in range(_int(draw, 0, 4)):
            if _int(draw, 0, 3):
                toks.append(_pick(draw, ("priority", "expires", "description", "sensitive", "owner", "review")))
            else:
                toks.append(_identifier(draw))
            value = _int(draw, 0, 6)
            if value == 0:
                toks.append(_string_literal(draw))
            elif value == 1:
                toks += [_pick(draw, ("-", "+")), str(_int(draw, 0, 99))]
            elif value == 2:
                toks.append(str(_int(draw, 0, 99)))
            elif value == 3:
                toks.append(_duration(draw, positive=False))
            elif value == 4:
                toks.append(_decimal(draw))
            elif value == 5:
                toks.append(_pick(draw, ("true", "false")))
        return toks
    allowed = {"tag": ("description", "owner", "priority", "expires", "review"),
               "manual": ("description", "owner", "priority", "review"),
               "audience": ("description", "owner")}[kind]
    for key in allowed:
        if _int(draw, 0, 2):
            continue
        toks.append(key)
        if key in ("description", "owner", "review"):
            toks.append(_escape(_pick(draw, _DESCRIPTIONS), _rnd(draw)))
        elif key == "priority":
            n = _int(draw, -20, 100)
            toks += ["-", str(-n)] if n < 0 else [str(n)]
        else:
            toks.append(_duration(draw))
    return toks


def _block(draw, attrs: list[str]) -> list[str]:
    if attrs or _int(draw, 0, 4) == 0:
        return ["{", *attrs, "}"]
    return []


def _tag_statement(draw, well_typed: bool, scope: _Scope, depth: int, manual_ok: bool = True) -> list[str]:
    manual = manual_ok and _int(draw, 0, 4) == 0
    if well_typed:
        cond = None if manual else _typed(draw, "bool", depth, scope)[0]
        name = scope.fresh(_pick(draw, _TAG_BASES))  # after the condition: tag() refers to earlier tags only
        scope.tags.append(name)
    else:
        name = _pick(draw, _TAG_BASES) if _int(draw, 0, 3) else _random_text(_rnd(draw), 6, "")
        cond = None if manual else _syntactic_expr(draw, depth)[0]
    head = ["tag", _escape(name, _rnd(draw))] + (["manual"] if manual else ["when", *cond])
    return head + _block(draw, _attributes(draw, well_typed, "manual" if manual else "tag"))


def _statement(draw, well_typed: bool, scope: _Scope, depth: int) -> list[str]:
    kind = _pick(draw, ("tag", "tag", "tag", "let", "let", "group", "audience"))
    if kind == "tag":
        return _tag_statement(draw, well_typed, scope, depth)
    if kind == "let":
        if not well_typed:
            return ["let", _identifier(draw), "=", *_syntactic_expr(draw, depth)[0]]
        ltype = _pick(draw, ("bool", "int", "str", "dur"))
        expr = [_duration(draw)] if ltype == "dur" else _typed(draw, ltype, depth, scope)[0]
        name = scope.fresh(_pick(draw, ("v_", "变量", "n")))
        scope.lets[name] = ltype
        return ["let", name, "=", *expr]
    if kind == "group":
        exclusive = bool(_int(draw, 0, 1))
        name = scope.fresh("组") if well_typed else _pick(draw, ("生命周期", "地域", "RFM", ""))
        toks = ["group", _escape(name, _rnd(draw)), *(["exclusive"] if exclusive else []), "{"]
        for _ in range(_int(draw, 0, 4)):
            toks += _tag_statement(draw, well_typed, scope, depth, manual_ok=not (well_typed and exclusive))
        return [*toks, "}"]
    if well_typed:
        name = scope.fresh("人群")
        expr = _typed(draw, "bool", depth, scope)[0]
    else:
        name = _pick(draw, ("广州新人福利", "VIP", "a b"))
        expr = _syntactic_expr(draw, depth)[0]
    return ["audience", _escape(name, _rnd(draw)), "=", *expr] + _block(draw, _attributes(draw, well_typed,
                                                                                          "audience"))


# -- layout: whitespace and comments ------------------------------------------------------------------

_COMMENT_POOL = ("", " 注释", "# double", " 生命周期：私域五类核心人群", ' "quoted" ', " trailing spaces   ", " tab\t",
                 " \u3000全角空格", " emoji 😀", " {", " }", ' tag "x" when', "\u200b", " \\", "\x0c", " a\rb")
_MESSY = (" ", " ", " ", "  ", "\n", "\n\n", "\n\n\n", "\t", " \u3000", "\n    ", " \r\n", "\f ")


def _comment(rnd: random.Random) -> str:
    if rnd.random() < 0.7:
        return "#" + rnd.choice(_COMMENT_POOL)
    return "#" + _random_text(rnd, 12)


def _separator(rnd: random.Random, messy: bool, comments: bool) -> str:
    if comments and rnd.random() < 0.15:
        text = _comment(rnd)
        if rnd.random() < 0.5:
            return rnd.choice([" ", "  ", "\t"]) + text + "\n" + rnd.choice(["", "  ", "\n"])
        return "\n" + rnd.choice(["", "  ", "\t"]) + text + "\n" + rnd.choice(["", "\n", "  "])
    return rnd.choice(_MESSY) if messy else " "


def _join(rnd: random.Random, statements: list[list[str]], messy: bool, comments: bool) -> str:
    out: list[str] = []
    if comments and rnd.random() < 0.5:
        out.append(_comment(rnd) + "\n" + rnd.choice(["", "\n"]))
    for i, toks in enumerate(statements):
        if i:
            out.append(rnd.choice(["\n", "\n\n", "\n\n\n"]) if not messy or rnd.random() < 0.5
                       else _separator(rnd, messy, comments))
        for j, tok in enumerate(toks):
            if j:
                out.append(_separator(rnd, messy, comments))
            out.append(tok)
    if comments and rnd.random() < 0.5:
        out.append(rnd.choice(["\n", "  ", "\n\n"]) + _comment(rnd))
    if rnd.random() < 0.7:
        out.append("\n")
    return "".join(out)


# -- public strategies ----------------------------------------------------------------------------------


@st.composite
def rulesets(draw, well_typed: bool = False, comments: bool = True, messy: bool = True,
             max_statements: int = 6, max_depth: int = 3) -> str:
    """The text of one syntactically valid ruleset file (see the module docstring)."""
    scope = _Scope()
    statements = [_statement(draw, well_typed, scope, _int(draw, 0, max_depth))
                  for _ in range(_int(draw, 0, max_statements))]
    return _join(_rnd(draw), statements, messy, comments)


@st.composite
def expressions(draw, well_typed: bool = False, max_depth: int = 4) -> str:
    """One expression's text; a condition valid against Config() when ``well_typed``."""
    if well_typed:
        toks = _typed(draw, "bool", max_depth, _Scope())[0]
    else:
        toks = _syntactic_expr(draw, max_depth)[0]
    return " ".join(toks)


_SOUP_ATOMS = (
    *KEYWORDS, *_ASCII_NAMES, *_CJK_NAMES, "orders", "events", "count", "sum", "days_since", "now",
    '"北京"', '"a\\"b"', '"\\n\\t\\\\"', '"\\u4e2d"', '"\\u12"', '"bad\\q"', '"unterminated', '"', "'single'",
    "0", "12", "5000.00", "1.5", "007", "1.2.3", "12abc", "3.", ".5", "30d", "2w", "5x", "0d", "99999999999999999999",
    "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "=", ".", ",", "(", ")", "[", "]", "{", "}",
    "# comment", "#", "\n", "\r\n", "\t", "\u3000", "（", "）", "“", "”", "，", "＝", "｛", "｝", "!", "@", "$", "\\",
    "\u200b", "\ufeff", "\x0b", "é", "😀", "-- ", "tag(", "not in", "is not missing", "\x00",
)
_SOUP_GLUE = ("", " ", " ", "\n", "  ")


def _soup_atom(draw) -> str:
    kind = _int(draw, 0, 9)
    if kind == 0:
        return _string_literal(draw)
    if kind == 1:
        return _identifier(draw)
    if kind == 2:
        return _pick(draw, (_decimal(draw), _duration(draw, positive=False)))
    if kind == 3:
        return _random_text(_rnd(draw), 3, "")
    return _pick(draw, _SOUP_ATOMS)


@st.composite
def token_soups(draw, max_tokens: int = 40) -> str:
    """Random token sequences: mostly invalid TagDSL, built from its vocabulary."""
    out = []
    for _ in range(_int(draw, 0, max_tokens)):
        out.append(_soup_atom(draw))
        out.append(_pick(draw, _SOUP_GLUE))
    return "".join(out)


@st.composite
def rule_bytes(draw) -> bytes:
    """Bytes a rule file might hold: random bytes, or a soup/ruleset with a corrupted encoding."""
    choice = _int(draw, 0, 3)
    if choice == 0:
        return draw(st.binary(max_size=200))
    text = draw(token_soups() if choice == 1 else rulesets())
    data = bytearray(text.encode("utf-8", "surrogatepass"))
    if choice == 3 and data:
        data[_int(draw, 0, len(data) - 1)] = _int(draw, 0, 255)
    if _int(draw, 0, 5) == 0:
        data = bytearray(b"\xef\xbb\xbf") + data
    return bytes(data)


@st.composite
def mutated_rulesets(draw, max_edits: int = 3) -> str:
    """A valid ruleset with a few random edits (a span deleted, a soup token
    inserted, a character replaced): near-misses that exercise the parser's
    error recovery and the checker on partial modules."""
    text = draw(rulesets(well_typed=bool(_int(draw, 0, 1))))
    rnd = _rnd(draw)
    for _ in range(_int(draw, 1, max_edits)):
        at = rnd.randint(0, len(text))
        edit = rnd.randint(0, 2)
        if edit == 0:
            text = text[:at] + text[at + rnd.randint(1, 12):]
        elif edit == 1:
            text = text[:at] + rnd.choice(_SOUP_ATOMS) + text[at:]
        else:
            text = text[:at] + rnd.choice('"(){}[]#\n.,=-+' + "（＝”\u3000") + text[at + 1:]
    return text
