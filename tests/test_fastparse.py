"""The fast parser (tagdsl/fastparse.py) against the Lark parser.

`parse_text` tries the hand-written parser first and falls back to Lark, the
specification (grammar/tagdsl.lark) and the authority on syntax errors. For
any text, both paths must give the same module (every node and every span,
comments included) and the same diagnostics; and the fast parser must never
accept text that Lark rejects. Inputs: generated rulesets, expressions, token
soups and near misses (tests/strategies.py), programs drawn straight from the
grammar, every .tag file in the repository, and hand-picked edge cases
(limits, escapes, CJK columns, CRLF, keywords glued to names, Unicode digits).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagdsl import ast as A
from tagdsl import fastparse, parser
from tagdsl.parser import MAX_EXPR_DEPTH, MAX_NESTING, parse_text

from strategies import expressions, mutated_rulesets, rulesets, token_soups

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile("tagdsl-fastparse", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# As in test_properties.py: TAGDSL_HYPOTHESIS_PROFILE=long explores new examples on each run.
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile(os.environ.get("TAGDSL_HYPOTHESIS_PROFILE", "tagdsl-fastparse"))


def flatten(module: A.Module) -> list:
    """Every node of the module in depth-first order with all its fields,
    spans included (node equality ignores spans), without recursion."""
    out = []
    stack = [module]
    while stack:
        value = stack.pop()
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and not isinstance(value, A.Duration):
            fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
            out.append((type(value).__name__, tuple(n for n, _ in fields)))
            stack.extend(reversed([v for _, v in fields]))
        elif isinstance(value, tuple):
            out.append(("tuple", len(value)))
            stack.extend(reversed(value))
        else:
            out.append((type(value).__name__, repr(value)))  # repr: Decimal("1.50") != Decimal("1.5")
    return out


def both(text: str):
    """parse_text's result on the fast path (with fallback) and on Lark only."""
    saved = parser.USE_FAST_PARSER
    try:
        parser.USE_FAST_PARSER = True
        fast = parse_text(text, "f.tag")
        parser.USE_FAST_PARSER = False
        lark = parse_text(text, "f.tag")
    finally:
        parser.USE_FAST_PARSER = saved
    return fast, lark


def diagnostics(diags) -> list:
    return [(d.code, d.severity, d.message, d.span, d.hint) for d in diags]


def agree(text: str) -> bool:
    """Assert that both paths agree on ``text``; True when the fast parser accepted it."""
    (fast_module, fast_diags), (lark_module, lark_diags) = both(text)
    assert diagnostics(fast_diags) == diagnostics(lark_diags)
    assert flatten(fast_module) == flatten(lark_module)
    accepted = fastparse.parse(text, "f.tag", MAX_NESTING, MAX_EXPR_DEPTH) is not None
    if accepted and "\x00" not in text:  # parse_text refuses NUL bytes before either parser runs
        # Never accept what Lark rejects: its only diagnostics for accepted
        # text are the depth limit's, which parse_text applies to both.
        assert {d.code for d in lark_diags} <= {"TD105"}, lark_diags
    return accepted


@given(st.one_of(rulesets(), rulesets(well_typed=True), rulesets(messy=False, comments=False, max_depth=5)))
@settings(PROFILE)
def test_generated_rulesets_parse_the_same_and_on_the_fast_path(text):
    assert agree(text), "the fast parser gave up on a valid ruleset"


@given(st.one_of(expressions(), expressions(well_typed=True), expressions(max_depth=7)))
@settings(PROFILE)
def test_generated_expressions_parse_the_same(text):
    assert agree(f'let x = {text}\ntag "t" when {text} {{ priority -3 }}')


@given(token_soups())
@settings(PROFILE)
def test_token_soups_parse_the_same(text):
    agree(text)


@given(mutated_rulesets())
@settings(PROFILE)
def test_near_miss_rulesets_parse_the_same(text):
    agree(text)


@given(st.lists(st.sampled_from([
    "tag", "when", "manual", "group", "exclusive", "audience", "let", "and", "or", "not", "in", "between", "is",
    "missing", "where", "within", "true", "false", "x", "orders", "amount", "count", "f", '"s"', '"a\\"b"', "1",
    "2.5", "30d", "==", "<=", ">", "+", "-", "*", "/", "=", ".", ",", "(", ")", "[", "]", "{", "}", "#c\n",
]), max_size=25).map(" ".join))
@settings(PROFILE)
def test_keyword_soups_parse_the_same(text):
    # Close to the grammar, so many are valid and both paths are exercised.
    agree(text)


# -- programs drawn straight from grammar/tagdsl.lark, odd corners included --------------------------

_NAMES = ("x", "y_1", "活跃", "ｘ全角", "_", "tagx", "notes", "orders", "amount", "count", "f")
_STRINGS = ('""', '"s"', '"北京"', '"a\\"b"', '"\\n\\t\\\\"', '"\\u4e2d"', '"#no comment"')
_LITERALS = (*_STRINGS, "0", "12", "007", "1.50", "30d", "2w", "5s", "true", "false")
_GLUE = (" ", " ", "  ", "\n", "\t", "\u3000", " # note\n", "\r\n")


@st.composite
def grammar_programs(draw) -> str:
    def pick(options):
        return options[draw(st.integers(0, len(options) - 1))]

    def expr(depth: int) -> list[str]:  # or_expr
        out = and_expr(depth)
        while depth > 0 and draw(st.integers(0, 5)) == 0:
            out += ["or", *and_expr(depth - 1)]
        return out

    def and_expr(depth: int) -> list[str]:
        out = not_expr(depth)
        while depth > 0 and draw(st.integers(0, 4)) == 0:
            out += ["and", *not_expr(depth - 1)]
        return out

    def not_expr(depth: int) -> list[str]:
        return ["not"] * draw(st.integers(0, 2) if depth > 0 else st.just(0)) + comparison(depth)

    def comparison(depth: int) -> list[str]:
        left = sum_(depth)
        form = draw(st.integers(0, 8))
        if form == 0:
            return left + [pick(("==", "!=", "<", "<=", ">", ">=")), *sum_(depth)]
        if form == 1:
            return left + ["between", *sum_(depth), "and", *sum_(depth)]
        if form == 2:
            return left + [*pick((["in"], ["not", "in"])), *sum_(depth)]
        if form == 3:
            return left + ["is", *pick(([], ["not"])), "missing"]
        return left

    def sum_(depth: int) -> list[str]:
        out = product(depth)
        while depth > 0 and draw(st.integers(0, 3)) == 0:
            out += [pick(("+", "-")), *product(depth - 1)]
        return out

    def product(depth: int) -> list[str]:
        out = unary(depth)
        while depth > 0 and draw(st.integers(0, 4)) == 0:
            out += [pick(("*", "/")), *unary(depth - 1)]
        return out

    def unary(depth: int) -> list[str]:
        return [pick(("+", "-")) for _ in range(draw(st.integers(0, 2)))] + atom(depth)

    def atom(depth: int) -> list[str]:
        form = draw(st.integers(0, 9 if depth > 0 else 3))
        if form == 0:
            return [pick(_LITERALS)]
        if form == 1:
            return [pick(_NAMES)]
        if form == 2:
            return [pick(_NAMES), ".", pick(_NAMES)]
        if form == 3:
            return ["tag", "(", pick(_STRINGS), ")"]
        if form == 4:
            items = [expr(depth - 1) for _ in range(draw(st.integers(0, 3)))]
            out = ["["]
            for i, item in enumerate(items):
                out += ([","] if i else []) + item
            if items and draw(st.booleans()):
                out.append(",")
            return out + ["]"]
        if form == 5:
            return ["(", *expr(depth - 1), ")"]
        # a call
        out = [pick(_NAMES), "("]
        if draw(st.integers(0, 4)):
            out += expr(depth - 1)
            if draw(st.booleans()):
                out += ["where", *expr(depth - 1)]
            if draw(st.booleans()):
                out += ["within", *expr(depth - 1)]
            for _ in range(draw(st.integers(0, 2))):
                out += [",", *expr(depth - 1)]
        return out + [")"]

    def block() -> list[str]:
        if draw(st.booleans()):
            return []
        out = ["{"]
        for _ in range(draw(st.integers(0, 3))):
            out.append(pick(_NAMES[:3]))
            value = draw(st.integers(0, 3))
            if value == 1:
                out.append(pick(_LITERALS))
            elif value == 2:
                out += [pick(("+", "-")), pick(("0", "7", "12"))]
        return out + ["}"]

    def tag_stmt(depth: int) -> list[str]:
        if draw(st.integers(0, 3)) == 0:
            return ["tag", pick(_STRINGS), "manual", *block()]
        return ["tag", pick(_STRINGS), "when", *expr(depth), *block()]

    tokens: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        depth = draw(st.integers(0, 4))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            tokens += tag_stmt(depth)
        elif kind == 1:
            tokens += ["group", pick(_STRINGS), *pick(([], ["exclusive"])), "{"]
            for _ in range(draw(st.integers(0, 3))):
                tokens += tag_stmt(depth)
            tokens.append("}")
        elif kind == 2:
            tokens += ["audience", pick(_STRINGS), "=", *expr(depth), *block()]
        else:
            tokens += ["let", pick(_NAMES), "=", *expr(depth)]
    text = ""
    for token in tokens:
        glue = pick(_GLUE) if draw(st.integers(0, 2)) else ""
        # Glue is needed between two word-like tokens (and before a comment's newline ends it).
        if not glue and text and (text[-1].isalnum() or text[-1] in "_\"") and (token[0].isalnum() or token[0] in "_\""):
            glue = " "
        text += glue + token
    return text


@given(grammar_programs())
@settings(PROFILE, max_examples=max(50, PROFILE.max_examples // 2))
def test_programs_drawn_from_the_grammar_parse_the_same_and_on_the_fast_path(text):
    assert agree(text), "the fast parser gave up on a program of the grammar"


REPOSITORY_FILES = sorted(p for p in ROOT.rglob("*.tag") if ".git" not in p.parts and "node_modules" not in p.parts)


@pytest.mark.parametrize("path", REPOSITORY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_rule_files_parse_the_same(path):
    text = path.read_text(encoding="utf-8")
    accepted = agree(text)
    if "broken" not in path.name:
        assert accepted


EDGE_CASES = [
    "",
    "   \n\t\u3000 ",
    "# only a comment",
    "# comment at end without newline\r",
    'tag "a" when x # trailing comment\r\n# next\r\n',
    'tag "a"\r\nwhen x\r\n{\r\n priority 1\r\n}\r\n',
    'tag "沉睡唤醒" when 活跃天数 >= 90 and 城市 == "北京"  # 注释\n  tag "ｘ" when ｘ全角 > 1',
    'tag "a" when "全角\u3000空格" == city',
    'tag "esc" when x == "\\" \\\\ \\n \\t \\u4e2d"',
    'tag "bad" when x == "\\q"',
    'tag "bad\\q" when x == "\\z"',
    'tag "a" when x == "\\u12"',
    'tag "unterminated when x',
    'tag "a" when tagx == 1 and manualy > 2 and ortho < 3',
    'tag "a" when x == 1tag "b" when y',
    'tag "a" when count(orders)tag "b" manual',
    'tag "a" when x ==',
    'tag "a" when x == tag "b" when y',
    'tag "a" when x == 1 == 2',
    'tag "a" when x between 1 and 2 and y',
    'tag "a" when x between 1 + 2 and 3 * 4 or not y in [1, 2,] and z not in [] and w is not missing',
    'tag "a" when - - + - x * +y / -(z) > -1.5',
    'tag "a" when not not not x',
    'tag "a" when x is missing + 1',
    'tag "a" when f(a where b within 3d, c, d) and g() and h(x, y)',
    'tag "a" when f(a within 3d where b)',
    'tag "a" when f(a,)',
    'tag "a" when [,]',
    'tag "a" when [1,,2]',
    'tag "a" when orders.amount.x',
    'tag "a" when tag("b") and tag ("c")',
    'tag "a" manual { description "d" sensitive review "r" priority -5 expires 30d x true y false z 1.5 }',
    'tag "a" manual { priority - 5 }',
    'tag "a" manual { priority -1.5 }',
    'tag "a" manual { priority +2 }',
    'tag "a" manual {}',
    'tag "a" manual { tag "b" }',
    'group "g" exclusive { tag "a" when x tag "b" manual { priority 1 } }',
    'group "g" {}',
    'group "g" { let x = 1 }',
    'group "g" exclusive',
    'audience "a" = x == 1 { description "d" }',
    'audience "a" x',
    'let x = 1 let y = x + 1 let manual = 2',
    'let 名前 = 1',
    "let x = \u0663\u0664 + 1\u0664d",  # Arabic-Indic digits are digits to \d
    "let x = 12abc",
    "let x = 1.2.3",
    "let x = 3.",
    "let x = .5",
    "let x = 007 + 0d",
    "let x = 99999999999999999999 * 1.000000000000000000001",
    "let x = 1 !",
    "let x = 'single'",
    "let x = （1）",
    "let x = 1\x0b",
    'tag "a\x00b" when city == "x"',
    "let x = 1\u00a0+ 2",
    "let x = a\u200bb",
    "let x = (1",
    "let x = 1)",
    "let x = [1}",
    "tag \"a\" when x { priority 1",
    "}",
    'tag "a" when ' + "(" * MAX_NESTING + "x" + ")" * MAX_NESTING,
    'tag "a" when ' + "(" * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1),
    'tag "a" when ' + "[" * MAX_NESTING + "x" + "]" * MAX_NESTING,
    'tag "a" when f(' * 60 + "x" + ")" * 60,
    'tag "a" when ' + " or ".join(["x"] * (MAX_EXPR_DEPTH - 5)),
    'tag "a" when ' + " or ".join(["x"] * (MAX_EXPR_DEPTH + 10)) + '\ntag "b" when y',
    'tag "a" when ' + " and ".join(["x"] * (MAX_EXPR_DEPTH + 10)) + '\nlet q = 1',
    'tag "a" when ' + "not " * (MAX_EXPR_DEPTH - 3) + "x",
    'tag "a" when ' + "not " * (MAX_EXPR_DEPTH + 3) + "x",
    'tag "a" when x == ' + "- " * 2000 + "1",
    'tag "a" when x == ' + "+ " * 2000 + "1",
    'group "g" { ' + " ".join(f'tag "t{i}" when x' for i in range(MAX_EXPR_DEPTH)) + " }",
    "let x = " + " + ".join(["1"] * 3000),
]


@pytest.mark.parametrize("text", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases_parse_the_same(text):
    agree(text)


def test_an_integer_beyond_pythons_digit_limit_is_a_diagnostic_not_a_crash():
    if sys.get_int_max_str_digits() == 0:
        pytest.skip("this interpreter converts integers of any length")
    digits = sys.get_int_max_str_digits() + 1
    text = f'let x = {"9" * digits}\ntag "a" manual {{ priority -{"7" * digits} }}\nlet y = {"5" * digits}d\n'
    agree(text)
    module, diags = parse_text(text, "big.tag")
    assert [(d.code, d.span.line) for d in diags] == [("TD104", 1), ("TD104", 2), ("TD104", 3)]
    assert diags[0].message == f"number with {digits:,} digits is too long"
    assert len(module.statements) == 3


def test_the_fast_parser_builds_the_documented_example_with_its_spans():
    text = 'tag "沉睡唤醒" when days_since(last_active_at) >= 90 {\n  priority -2\n}\n'
    assert agree(text)
    module, diags = parse_text(text, "x.tag")
    (stmt,) = module.statements
    assert stmt.span.line == 1 and stmt.span.column == 1 and stmt.span.end_line == 3 and stmt.span.end_column == 2
    cond = stmt.condition
    assert cond.op == ">=" and cond.op_span.column == 44  # columns count code points, not display width
    assert stmt.attributes[0].value.value == -2


def test_linting_well_formed_rules_imports_neither_lark_nor_the_runtime(tmp_path):
    (tmp_path / "rules.tag").write_text('tag "a" when count(orders) >= 1 and city == "x" { priority 2 }\n',
                                        encoding="utf-8")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import cli\n"
        "sys.argv = ['tagdsl', 'lint', 'rules.tag']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('lark', 'sqlalchemy', 'wechatpy', 'runtime'))\n"
        "print('heavy modules:', heavy)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TAGDSL_PARSER"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip().splitlines()[-1] == "heavy modules: []", out.stdout + out.stderr
