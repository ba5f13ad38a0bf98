"""Parser: every statement and expression form, spans, recovery, limits."""

from decimal import Decimal

import pytest

from tagdsl import ast as A
from tagdsl.parser import MAX_EXPR_DEPTH, MAX_NESTING, decode_source, parse_text

ISSUE_EXAMPLE = '''
let days_since_active = days_since(last_active_at)

tag "沉睡唤醒" when days_since_active >= 90

tag "高价值" when sum(orders.amount within 365d) >= 5000 and count(orders within 365d) >= 3 {
  description "近一年消费满5000且至少3单"
  owner "growth"
  priority 10
}

group "生命周期" exclusive {
  tag "新客"   when count(orders) == 0
  tag "老客"   when count(orders) between 1 and 2
  tag "复购客" when count(orders) >= 3
}

group "地域" {
  tag "地域-北京" when city == "北京"
  tag "地域-上海" when city in ["上海", "上海市"]
}

tag "已购买" when count(orders) >= 1

tag "VIP手工" manual { description "运营手工维护，引擎不计算也不移除" }

tag "护肤品消费者" when tag("618活动") and exists(orders where category == "护肤" within 90d)

tag "618活动" when exists(orders where created_at between datetime("2026-06-01T00:00:00") and datetime("2026-06-20T23:59:59")) {
  expires 90d
}

audience "广州新人福利" = city == "广州" and not tag("已购买") and days_since(subscribe_time) >= 30
'''


def parse_ok(text):
    module, diags = parse_text(text, "t.tag")
    assert diags == [], diags
    return module


def cond(text):
    return parse_ok(f'tag "t" when {text}').statements[0].condition


def test_issue_example_parses_into_statements():
    module = parse_ok(ISSUE_EXAMPLE)
    kinds = [type(s).__name__ for s in module.statements]
    assert kinds == ["LetStmt", "TagStmt", "TagStmt", "GroupStmt", "GroupStmt", "TagStmt", "TagStmt", "TagStmt",
                     "TagStmt", "AudienceStmt"]
    group = module.statements[3]
    assert group.name == "生命周期" and group.exclusive and [t.name for t in group.tags] == ["新客", "老客", "复购客"]
    assert not module.statements[4].exclusive
    manual = module.statements[6]
    assert manual.manual and manual.condition is None and manual.attributes[0].value.value.startswith("运营手工")
    high = module.statements[2]
    assert [a.key for a in high.attributes] == ["description", "owner", "priority"]
    assert high.attributes[2].value == A.Literal(10, "int")
    expires = module.statements[8].attributes[0]
    assert expires.key == "expires" and expires.value.value == A.Duration(90, "d")


def test_statements_may_share_a_line():
    module = parse_ok('group "生命周期" exclusive { tag "新客" when count(orders) == 0  tag "老客" when count(orders) >= 1 }')
    assert [t.name for t in module.statements[0].tags] == ["新客", "老客"]


def test_precedence_not_and_or():
    expr = cond("not a or b and c")
    assert expr == A.Binary("or", A.Unary("not", A.Name("a")), A.Binary("and", A.Name("b"), A.Name("c")))


def test_arithmetic_precedence_and_left_associativity():
    assert cond("a - b - c * d > 0").left == A.Binary(
        "-", A.Binary("-", A.Name("a"), A.Name("b")), A.Binary("*", A.Name("c"), A.Name("d")))


def test_between_binds_its_own_and():
    expr = cond("x between 1 and 2 and y")
    assert expr == A.Binary("and", A.Between(A.Name("x"), A.Literal(1, "int"), A.Literal(2, "int")), A.Name("y"))


@pytest.mark.parametrize("text,node", [
    ("x in [1, 2,]", A.In(A.Name("x"), A.ListExpr((A.Literal(1, "int"), A.Literal(2, "int"))))),
    ("x not in []", A.In(A.Name("x"), A.ListExpr(()), negated=True)),
    ("x is missing", A.IsMissing(A.Name("x"))),
    ("x is not missing", A.IsMissing(A.Name("x"), negated=True)),
    ("(x)", A.Paren(A.Name("x"))),
    ("-x", A.Unary("-", A.Name("x"))),
    ("+x", A.Name("x")),
])
def test_expression_forms(text, node):
    assert cond(text) == node


def test_literals():
    items = cond('x in [12, 5000.00, "a\\"b\\\\c\\n\\t\\u4e2d", true, false, 2w, 30d, 12h, 5m, 10s]').options.items
    values = [(i.value, i.kind) for i in items]
    assert values == [(12, "int"), (Decimal("5000.00"), "decimal"), ('a"b\\c\n\t中', "string"), (True, "bool"),
                      (False, "bool"), (A.Duration(2, "w"), "duration"), (A.Duration(30, "d"), "duration"),
                      (A.Duration(12, "h"), "duration"), (A.Duration(5, "m"), "duration"),
                      (A.Duration(10, "s"), "duration")]
    assert str(items[1].value) == "5000.00"  # the decimal keeps its scale


def test_aggregate_call_shapes():
    call = cond('count(orders where category == "护肤" within 90d) > 0').left
    assert call.func == "count" and call.args == (A.Name("orders"),)
    assert call.where == A.Binary("==", A.Name("category"), A.Literal("护肤", "string"))
    assert call.within == A.Literal(A.Duration(90, "d"), "duration")
    s = cond("sum(orders.amount within 365d) >= 5000").left
    assert s.args == (A.SourceField("orders", "amount"),) and s.where is None
    assert cond("coalesce(a, b, c) > 1").left.args == (A.Name("a"), A.Name("b"), A.Name("c"))
    assert cond("now() > x").left == A.Call("now", ())


def test_unicode_identifiers():
    module = parse_ok("let 活跃天数 = 30\ntag \"t\" when days_since(最近活跃) >= 活跃天数")
    assert module.statements[0].name == "活跃天数"


def test_spans_count_code_points_on_cjk_lines():
    module = parse_ok('tag "沉睡唤醒" when 天数 >= 90')
    stmt = module.statements[0]
    assert (stmt.name_span.line, stmt.name_span.column, stmt.name_span.end_column) == (1, 5, 11)
    cmp = stmt.condition
    assert (cmp.left.span.column, cmp.left.span.end_column) == (17, 19)
    assert cmp.op_span.column == 20


def test_comments_are_kept_with_positions_and_strings_are_not_comments():
    module = parse_ok('# head\ntag "a#b" when x > 1 # trailing\n')
    assert [(c.text, c.span.line, c.span.column) for c in module.comments] == [("# head", 1, 1), ("# trailing", 2, 22)]


def test_keywords_are_reserved():
    _, diags = parse_text('tag "a" when and > 1', "t.tag")
    assert diags and diags[0].code == "TD100"
    _, diags = parse_text("let and = 1", "t.tag")
    assert diags[0].code == "TD100" and "expected a name" in diags[0].message


def codes(text):
    return [(d.code, d.span.line, d.span.column) for d in parse_text(text, "t.tag")[1]]


def test_unterminated_string():
    assert codes('tag "新客 when x > 1') == [("TD101", 1, 5)]


def test_missing_when_is_explained():
    _, diags = parse_text('tag "新客" count(orders) == 0', "t.tag")
    assert diags[0].code == "TD100" and "`when` or `manual`" in diags[0].message
    assert (diags[0].span.line, diags[0].span.column) == (1, 10)


def test_unbalanced_braces_point_at_the_opener():
    assert codes('group "地域" {\n  tag "北京" when city == "北京"\n') == [("TD103", 1, 12)]
    assert codes('tag "a" when (x > 1))') == [("TD103", 1, 21)]


def test_recovery_reports_independent_errors_and_keeps_good_statements():
    text = 'tag "a" count(orders) > 1\ntag "b" when x ==\ntag "c" when y > 1\ntag "d" when 3days\n'
    module, diags = parse_text(text, "t.tag")
    assert [(d.code, d.span.line) for d in diags] == [("TD100", 1), ("TD100", 2), ("TD104", 4)]
    assert [s.name for s in module.statements] == ["c"]


def test_full_width_punctuation_gets_a_hint():
    _, diags = parse_text("tag “新客” when x", "t.tag")
    assert diags[0].code == "TD100" and "full-width" in diags[0].message and '"' in diags[0].hint


def test_invalid_escape():
    assert codes('tag "a" when x == "\\q"') == [("TD102", 1, 20)]


def test_deep_nesting_is_refused_cleanly():
    deep = 'tag "a" when ' + "(" * 10_000 + "x" + ")" * 10_000
    assert codes(deep)[0][0] == "TD105"
    assert codes('tag "a" when ' + "(" * MAX_NESTING + "x" + ")" * MAX_NESTING) == []
    chain = 'tag "a" when ' + " or ".join(["x"] * (MAX_EXPR_DEPTH + 10))
    assert codes(chain)[0][0] == "TD105"


def test_nul_and_bad_utf8():
    assert codes('tag "a" when x\x00') == [("TD106", 1, 15)]
    text, diags = decode_source(b'tag "a" when x == "\xff"', "t.tag")
    assert text is None and diags[0].code == "TD106" and diags[0].span.column == 20
    text, diags = decode_source('\ufefftag "a" when x'.encode("utf-8"), "t.tag")
    assert diags == [] and text.startswith("tag")
