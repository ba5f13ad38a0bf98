"""The static checks: every diagnostic code with a failing example (code, place,
end) and a passing one.

Configurations are built in code (never read from a tagdsl.toml found on
disk), so the results do not depend on where pytest runs.
"""

from __future__ import annotations

import pytest

from tagdsl import Config, RULES, Severity, analyze
from tagdsl.check import CheckContext
from tagdsl.check import graph, limits, names, privacy
from tagdsl.config import FieldSpec, FollowersSection, LimitsSection, ProjectSection, SourceSection
from tagdsl.parser import parse_text

DEFAULT = Config()
WECOM = Config(project=ProjectSection(platform="wecom"))
NO_TIME_SOURCE = Config(sources={"visits": SourceSection(table="visits", fields={"page": FieldSpec(type="string")})})


def diagnostics(text: str | dict, config: Config = DEFAULT):
    texts = {"t.tag": text} if isinstance(text, str) else text
    return analyze(texts=texts, config=config).diagnostics


def with_code(code: str, text, config: Config = DEFAULT):
    return [d for d in diagnostics(text, config) if d.code == code]


def place(d):
    return (d.span.file, d.span.line, d.span.column, d.span.end_line, d.span.end_column)


# -- failing examples: (code, source, expected span (file line col end_line end_col), config) ------------

FAILING = [
    # syntax (parser)
    ("TD100", 'tag "新客" count(orders) == 0\n', ("t.tag", 1, 10, 1, 15), DEFAULT),
    ("TD100", 'tag "北京" when city == （"北京"\n', ("t.tag", 1, 23, 1, 24), DEFAULT),
    ("TD101", 'tag "新客 when count(orders) == 0\n', ("t.tag", 1, 5, 1, 32), DEFAULT),
    ("TD102", 'tag "北京" when city == "北\\京"\n', ("t.tag", 1, 25, 1, 27), DEFAULT),
    ("TD103", 'group "地域" { tag "北京" when city == "北京"\n', ("t.tag", 1, 12, 1, 13), DEFAULT),
    ("TD104", 'tag "a" when last_active_at > date("2026-13-01")\n', ("t.tag", 1, 36, 1, 48), DEFAULT),
    ("TD104", 'tag "a" when count(orders within 30x) > 1\n', ("t.tag", 1, 34, 1, 37), DEFAULT),
    ("TD105", 'tag "a" when ' + "(" * 201 + "true" + ")" * 201 + "\n", ("t.tag", 1, 214, 1, 215), DEFAULT),
    ("TD106", 'tag "a" when\x00 true\n', ("t.tag", 1, 13, 1, 14), DEFAULT),
    # names (resolve)
    ("TD201", 'tag "北京" when cty == "北京"\n', ("t.tag", 1, 15, 1, 18), DEFAULT),
    ("TD202", 'tag "a" when count(order) >= 1\n', ("t.tag", 1, 20, 1, 25), DEFAULT),
    ("TD203", 'tag "a" when day_since(last_active_at) >= 90\n', ("t.tag", 1, 14, 1, 23), DEFAULT),
    ("TD204", 'tag "a" when not tag("已购卖")\n', ("t.tag", 1, 22, 1, 27), DEFAULT),
    ("TD205", 'tag "a" when age > 1 { priorty 10 }\n', ("t.tag", 1, 24, 1, 31), DEFAULT),
    ("TD206", 'let x = 1\nlet x = 2\ntag "a" when age > x\n', ("t.tag", 2, 5, 2, 6), DEFAULT),
    ("TD207", 'tag "a" when days_since() > 1\n', ("t.tag", 1, 14, 1, 26), DEFAULT),
    ("TD208", 'tag "a" when age > 1 { priority "high" }\n', ("t.tag", 1, 24, 1, 39), DEFAULT),
    ("TD208", 'tag "VIP" manual { reply "欢迎" }\n', ("t.tag", 1, 20, 1, 30), DEFAULT),
    ("TD208", 'tag "a" when age > 1 { reply " " }\n', ("t.tag", 1, 30, 1, 33), DEFAULT),
    ("TD208", 'tag "a" when age > 1 { reply "' + "欢" * 683 + '" }\n', ("t.tag", 1, 30, 1, 715), DEFAULT),
    ("TD209", 'tag "a" when count(orders where amount > avg(orders.amount)) > 1\n', ("t.tag", 1, 42, 1, 60), DEFAULT),
    ("TD210", 'group "g" exclusive { tag "VIP" manual }\n', ("t.tag", 1, 23, 1, 39), DEFAULT),
    # types (resolve)
    ("TD301", 'tag "a" when age == "30"\n', ("t.tag", 1, 14, 1, 25), DEFAULT),
    ("TD302", 'tag "a" when count(visits within 30d) > 1\n', ("t.tag", 1, 34, 1, 37), NO_TIME_SOURCE),
    ("TD303", 'tag "a" when sum(orders.category) > 1\n', ("t.tag", 1, 18, 1, 33), DEFAULT),
    ("TD304", 'tag "a" when count(orders)\n', ("t.tag", 1, 14, 1, 27), DEFAULT),
    # tag names
    ("TD401", 'tag "沉睡唤醒" when days_since(last_active_at) >= 90\ntag "沉睡唤醒 " when age > 1\n',
     ("t.tag", 2, 5, 2, 12), DEFAULT),
    ("TD401", 'tag "ＶＩＰ" manual\ntag "VIP" manual\n', ("t.tag", 2, 5, 2, 10), DEFAULT),
    ("TD401", 'group "g" { tag "新客" when age > 1 }\ntag "新客" when age > 2\n', ("t.tag", 2, 5, 2, 9), DEFAULT),
    ("TD402", 'tag "" when age > 1\n', ("t.tag", 1, 5, 1, 7), DEFAULT),
    ("TD402", 'group "" { tag "a" when age > 1 }\n', ("t.tag", 1, 7, 1, 9), DEFAULT),
    ("TD402", 'tag "  " when age > 1\n', ("t.tag", 1, 5, 1, 9), DEFAULT),
    ("TD403", 'tag " 新客" when age > 1\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
    ("TD403", 'tag "新客\u3000" when age > 1\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
    ("TD403", 'group "地域 " { tag "a" when age > 1 }\n', ("t.tag", 1, 7, 1, 12), DEFAULT),
    ("TD404", 'tag "新\u200b客" when age > 1\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
    ("TD404", 'tag "a\\u202eb" when age > 1\n', ("t.tag", 1, 5, 1, 15), DEFAULT),
    ("TD404", 'tag "\ufeff新客" when age > 1\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
    ("TD404", 'tag "新\u200d客" when age > 1\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
    ("TD404", 'tag "新\\t客" when age > 1\n', ("t.tag", 1, 5, 1, 11), DEFAULT),
    ("TD404", 'group "地\u2060域" { tag "a" when age > 1 }\n', ("t.tag", 1, 7, 1, 12), DEFAULT),
    ("TD405", 'tag "一二三四五六七八九十十" manual\n', ("t.tag", 1, 5, 1, 18), DEFAULT),
    ("TD405", 'tag "' + "a" * 31 + '" manual\n', ("t.tag", 1, 5, 1, 38), WECOM),
    ("TD405", 'group "一二三四五六七八九十十" { tag "a" manual }\n', ("t.tag", 1, 7, 1, 20), DEFAULT),
    ("TD406", 'tag "星标组" manual\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
    ("TD406", 'tag "全部用户" manual\n', ("t.tag", 1, 5, 1, 11),
     Config(limits=LimitsSection(reserved_names=["全部用户"]))),
    ("TD407", 'tag "一二三四五六七八九" manual\n', ("t.tag", 1, 5, 1, 16), DEFAULT),
    ("TD407", 'tag "一二三四五" manual\n', ("t.tag", 1, 5, 1, 12), Config(limits=LimitsSection(name_recommended_chars=4))),
    ("TD408", 'group "渠道" {\n  tag "线下-华南-广州" when city == "广州"\n}\n', ("t.tag", 2, 7, 2, 17), DEFAULT),
    ("TD408", 'tag "渠道-线下-华南-广州" when city == "广州"\n', ("t.tag", 1, 5, 1, 18), DEFAULT),
    ("TD408", 'group "渠道" { tag "线下-广州" when city == "广州" }\n', ("t.tag", 1, 18, 1, 25),
     Config(limits=LimitsSection(max_depth=2))),
    # platform counts
    ("TD501", "".join(f'tag "t{i}" manual\n' for i in range(101)), ("t.tag", 101, 5, 101, 11), DEFAULT),
    ("TD501", "".join(f'tag "t{i}" manual\n' for i in range(6)), ("t.tag", 6, 5, 6, 9),
     Config(limits=LimitsSection(max_tags=5))),
    ("TD502", "".join(f'tag "t{i}" manual\n' for i in range(21)), ("t.tag", 21, 5, 21, 10), DEFAULT),
    # logic / graph
    ("TD605", 'tag "a" when tag("b")\ntag "b" when tag("a")\n', ("t.tag", 1, 14, 1, 22), DEFAULT),
    ("TD605", 'tag "a" when age > 1 and tag("a")\n', ("t.tag", 1, 26, 1, 34), DEFAULT),
    ("TD606", 'let adult = age >= 18\ntag "新客" when count(orders) == 0\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
    ("TD607", 'let a = b + 1\nlet b = a\ntag "x" when a > 1\n', ("t.tag", 1, 9, 1, 10), DEFAULT),
    # privacy
    ("TD701", 'tag "疾病关注" when exists(events where key == "disease")\n', ("t.tag", 1, 5, 1, 11), DEFAULT),
    ("TD701", 'tag "高收入" manual { sensitive }\n', ("t.tag", 1, 5, 1, 10), DEFAULT),
]


@pytest.mark.parametrize("code, text, span, config", FAILING,
                         ids=[f"{c}-{i}" for i, (c, *_rest) in enumerate(FAILING)])
def test_failing_example(code, text, span, config):
    found = with_code(code, text, config)
    assert found, f"expected {code}, got {[(d.code, d.message) for d in diagnostics(text, config)]}"
    assert place(found[0]) == span
    d = found[0]
    assert d.severity is RULES[code].severity
    assert d.message and d.hint, "every diagnostic says what is wrong and how to fix it"


PASSING = [
    ("TD100", 'tag "新客" when count(orders) == 0\n', DEFAULT),
    ("TD101", 'tag "新客" when count(orders) == 0\n', DEFAULT),
    ("TD102", 'tag "北京" when city == "北\\\\京\\"\\n\\t\\u4eac"\n', DEFAULT),
    ("TD103", 'group "地域" { tag "北京" when (city == "北京") }\n', DEFAULT),
    ("TD104", 'tag "a" when last_active_at > date("2026-12-01") and count(orders within 30d) > 1.5\n', DEFAULT),
    ("TD105", 'tag "a" when ' + "(" * 150 + "true" + ")" * 150 + "\n", DEFAULT),
    ("TD106", 'tag "a" when true\n', DEFAULT),
    ("TD201", 'tag "北京" when city == "北京"\n', DEFAULT),
    ("TD202", 'tag "a" when count(orders) >= 1\n', DEFAULT),
    ("TD203", 'tag "a" when days_since(last_active_at) >= 90\n', DEFAULT),
    ("TD204", 'tag "已购买" when count(orders) > 0\ntag "a" when not tag("已购买")\n', DEFAULT),
    ("TD205", 'tag "a" when age > 1 { priority 10 }\n', DEFAULT),
    ("TD206", 'let x = 1\nlet y = 2\ntag "a" when age > x + y\n', DEFAULT),
    ("TD207", 'tag "a" when days_since(last_active_at) > 1\n', DEFAULT),
    ("TD208", 'tag "a" when age > 1 { priority 10 expires 30d sensitive review "法务" }\n', DEFAULT),
    ("TD208", 'tag "a" when age > 1 { reply "' + "欢" * 682 + '" }\n', DEFAULT),  # 2046 bytes
    ("TD209", 'tag "a" when count(orders where amount > 100) > 1\n', DEFAULT),
    ("TD210", 'group "g" { tag "VIP" manual }\n', DEFAULT),
    ("TD301", 'tag "a" when age == 30\n', DEFAULT),
    ("TD302", 'tag "a" when count(orders within 30d) > 1 and count(visits) > 1\n', NO_TIME_SOURCE),
    ("TD303", 'tag "a" when sum(orders.amount) > 1\n', DEFAULT),
    ("TD304", 'tag "a" when count(orders) >= 1\n', DEFAULT),
    ("TD401", 'tag "沉睡唤醒" when age > 1\ntag "沉睡预警" when age > 2\n', DEFAULT),
    ("TD401", {"a.tag": 'tag "新客" when age > 1\n', "b.tag": 'tag "新客户" when age > 2\n'}, DEFAULT),
    ("TD402", 'tag "新客" when age > 1\n', DEFAULT),
    ("TD403", 'tag "新 客" when age > 1\n', DEFAULT),
    ("TD404", 'tag "❤️粉丝" when age > 1\ntag "VIP·会员" manual\n', DEFAULT),
    ("TD405", 'tag "一二三四五六七八九十" manual\n', DEFAULT),  # 30 bytes exactly
    ("TD405", 'tag "一二三四五六七八九十十" manual\n', WECOM),  # 11 characters
    ("TD405", 'tag "' + "a" * 30 + '" manual\n', WECOM),
    ("TD406", 'tag "星标用户" manual\n', DEFAULT),
    ("TD406", 'tag "星标组" manual\n', WECOM),
    ("TD407", 'tag "一二三四五六七八" manual\n', DEFAULT),
    ("TD407", 'tag "一二三四五六七八九" manual\n', Config(project=ProjectSection(platform="none"))),
    ("TD408", 'group "渠道" { tag "线下-广州" when city == "广州" }\ntag "线下-华南-广州" when city == "广州"\n', DEFAULT),
    ("TD501", "".join(f'tag "t{i}" manual\n' for i in range(100)), DEFAULT),
    ("TD501", "".join(f'tag "t{i}" manual\n' for i in range(101)), WECOM),
    ("TD502", "".join(f'tag "t{i}" manual\n' for i in range(20)), DEFAULT),
    ("TD605", 'tag "VIP" manual\ntag "a" when tag("b")\ntag "b" when tag("VIP")\n', DEFAULT),
    ("TD605", 'group "g" exclusive { tag "a" when age > 60  tag "b" when tag("c")  }\ntag "c" when age > 30\n',
     DEFAULT),
    ("TD606", 'let adult = age >= 18\ntag "成年新客" when adult and count(orders) == 0\n', DEFAULT),
    ("TD607", 'let a = 1\nlet b = a + 1\ntag "x" when b > 1\n', DEFAULT),
    ("TD701", 'tag "疾病关注" when exists(events where key == "disease") { sensitive review "法务-王五 2026-05" }\n',
     DEFAULT),
    ("TD701", 'tag "新客" when count(orders) == 0\n', DEFAULT),
]


@pytest.mark.parametrize("code, text, config", PASSING, ids=[f"{c}-{i}" for i, (c, *_r) in enumerate(PASSING)])
def test_passing_example(code, text, config):
    assert with_code(code, text, config) == []


def test_every_owned_code_has_both_examples():
    owned = {c for c in RULES if not c.startswith("TD60") or c in ("TD605", "TD606", "TD607")}
    assert owned - {c for c, *_ in FAILING} == set()
    assert owned - {c for c, *_ in PASSING} == set()


# -- rule examples in the registry are real ------------------------------------------------------

RUNNABLE_EXAMPLES = ["TD401", "TD402", "TD403", "TD404", "TD405", "TD406", "TD407", "TD408", "TD605", "TD606",
                     "TD701"]


@pytest.mark.parametrize("code", RUNNABLE_EXAMPLES)
def test_registry_examples_behave_as_documented(code):
    rule = RULES[code]
    assert code in {d.code for d in diagnostics(rule.bad)}
    assert code not in {d.code for d in diagnostics(rule.good)}


# -- messages ----------------------------------------------------------------------------------------


def test_duplicate_across_files_names_the_first_location():
    found = with_code("TD401", {"a.tag": 'tag "新客" when age > 1\n', "b.tag": '\n\ntag "新客" when age > 2\n'})
    assert [place(d) for d in found] == [("b.tag", 3, 5, 3, 9)]
    assert "a.tag:1:5" in found[0].message


def test_duplicate_after_normalisation_says_so():
    (d,) = with_code("TD401", 'tag "沉睡唤醒" when age > 1\ntag "沉睡唤醒 " when age > 2\n')
    assert "NFKC" in d.message and "t.tag:1:5" in d.message


def test_too_long_states_the_byte_count():
    (d,) = with_code("TD405", 'tag "一二三四五六七八九十十" manual\n')
    assert "33 bytes" in d.message and "30" in d.message
    assert with_code("TD407", 'tag "一二三四五六七八九十十" manual\n') == [], "TD405 already covers it"


def test_invisible_character_is_named_and_not_printed_raw():
    (d,) = with_code("TD404", 'tag "a\u202eb" manual\n')
    assert "U+202E" in d.message and "\u202e" not in d.message and "\u202e" not in (d.hint or "")


def test_hierarchy_message_lists_levels():
    (d,) = with_code("TD408", 'group "渠道" { tag "线下-华南-广州" when city == "广州" }\n')
    assert "4 levels" in d.message and "渠道 / 线下 / 华南 / 广州" in d.message


def test_too_many_tags_points_at_the_first_tag_beyond_the_limit():
    text = "".join(f'tag "t{i}" manual\n' for i in range(103))
    (d,) = with_code("TD501", text)
    assert place(d) == ("t.tag", 101, 5, 101, 11)  # tag "t100"
    assert "103" in d.message and "100" in d.message
    assert d.severity is Severity.ERROR


def test_too_many_tags_counts_manual_tags_and_ignores_duplicates():
    config = Config(limits=LimitsSection(max_tags=3))
    assert with_code("TD501", 'tag "a" manual\ntag "b" when age > 1\ntag "a " manual\ntag "b" when age > 2\n',
                     config) == []
    (d,) = with_code("TD501", 'tag "a" manual\ntag "b" when age > 1\ntag "c" manual\ntag "d" when age > 2\n', config)
    assert d.span.line == 4


def test_tags_per_follower_bound_message():
    groups = "".join(f'group "g{g}" exclusive {{ tag "g{g}a" when age > 60  tag "g{g}b" when age < 10 }}\n'
                     for g in range(3))
    others = "".join(f'tag "t{i}" when age > {i}\n' for i in range(20))
    (d,) = with_code("TD502", groups + others)
    assert d.message == "a follower can hold up to 23 tags at once (limit 20): 3 exclusive groups + 20 other tags"
    assert d.severity is Severity.WARNING
    assert place(d) == ("t.tag", 21, 5, 21, 10)  # "t17": 3 groups + 18 others is the first count above 20


def test_tags_per_follower_non_exclusive_groups_count_every_tag():
    config = Config(limits=LimitsSection(max_tags_per_follower=2))
    assert with_code("TD502", 'group "g" exclusive { tag "a" when age > 1  tag "b" when age < 1  tag "c" manual }',
                     config) == []
    (d,) = with_code("TD502", 'group "g" { tag "a" when age > 1  tag "b" when age < 1  tag "c" manual }', config)
    assert "0 exclusive groups + 3 other tags" in d.message


def test_cycle_message_names_the_path():
    (d,) = with_code("TD605", 'tag "a" when tag("b")\ntag "b" when tag("c")\ntag "c" when tag("a")\n')
    assert "a -> b -> c -> a" in d.message


def test_cycle_through_a_let():
    (d,) = with_code("TD605", 'let vip = tag("a")\ntag "a" when vip and age > 1\n')
    assert "a -> a" in d.message
    assert place(d) == ("t.tag", 2, 14, 2, 17)  # the use of `vip` in a's condition


def test_cycle_through_exclusive_siblings():
    text = 'group "生命周期" exclusive {\n  tag "新客" when tag("老客")\n  tag "老客" when count(orders) >= 1\n}\n'
    (d,) = with_code("TD605", text)
    assert "新客 -> 老客 -> 新客" in d.message
    assert "exclusive group" in d.hint
    assert place(d) == ("t.tag", 2, 17, 2, 26)  # tag("老客")


def test_one_diagnostic_per_cycle():
    text = 'tag "a" when tag("b") or tag("c")\ntag "b" when tag("a")\ntag "c" when tag("a")\n'
    assert len(with_code("TD605", text)) == 1


def test_long_reference_chain_does_not_recurse():
    n = 1100  # deeper than Python's recursion limit
    text = "".join(f'tag "t{i}" when tag("t{i + 1}")\n' for i in range(n)) + f'tag "t{n}" when tag("t0")\n'
    (d,) = with_code("TD605", text, Config(project=ProjectSection(platform="none")))
    assert d.message.count("->") == n + 1


def test_unused_let_used_only_by_unused_let():
    text = 'let a = 1\nlet b = a + 1\nlet c = 2\ntag "x" when age > c\n'
    found = with_code("TD606", text)
    assert [place(d) for d in found] == [("t.tag", 1, 5, 1, 6), ("t.tag", 2, 5, 2, 6)]
    assert "only used by unused lets (`b`)" in found[0].message


@pytest.mark.parametrize("text", [
    'let big = 100\ntag "x" when count(orders where amount > big) >= 1\n',
    'let adult = age >= 18\naudience "成年" = adult\n',
    'let a = 1\nlet b = a + 1\ntag "x" when age > b\n',
    'let window = 30d\ntag "x" when count(orders within window) >= 1\n',
])
def test_lets_used_in_conditions_where_audiences(text):
    assert with_code("TD606", text) == []


def test_sensitive_field_in_condition():
    config = Config(project=ProjectSection(sensitive_words=["income"]),
                    followers=FollowersSection(fields={"income_level": FieldSpec(type="integer")}))
    (d,) = with_code("TD701", 'let rich = income_level > 3\ntag "高端" when rich\n', config)
    assert "income_level" in d.message and place(d) == ("t.tag", 2, 5, 2, 9)
    assert with_code("TD701", 'tag "高端" when income_level > 3 { sensitive review "法务 2026-05" }\n', config) == []


def test_sensitive_review_without_sensitive_and_empty_review():
    (d,) = with_code("TD701", 'tag "未成年" manual { review "法务" }\n')
    assert "not marked `sensitive`" in d.message
    assert with_code("TD701", 'tag "未成年" manual { sensitive review " " }\n')


def test_sensitive_words_are_configurable():
    config = Config(project=ProjectSection(sensitive_words=["学生"]))
    assert with_code("TD701", 'tag "学生党" manual\n', config)
    assert with_code("TD701", 'tag "疾病关注" manual\n', config) == []


# -- robustness ------------------------------------------------------------------------------------------


def test_name_checks_run_when_resolve_fails():
    text = 'tag "新客" when cty == 1\ntag "新客 " when nope(1)\n'
    found = {d.code for d in diagnostics(text)}
    assert {"TD201", "TD203", "TD401", "TD403"} <= found


def test_passes_work_without_a_ruleset():
    module, _ = parse_text('let x = 1\ntag "a" when tag("a")\ntag "a " when age > 1\n', "t.tag")
    ctx = CheckContext([module], Config())
    assert ctx.ruleset is None and ctx.resolver is None
    for check_pass in (names, limits, graph, privacy):
        check_pass.run(ctx)
    assert {"TD401", "TD403", "TD605"} <= {d.code for d in ctx.diagnostics}


def test_no_diagnostics_for_a_clean_ruleset():
    text = '''
let 高消费 = sum(orders.amount) >= 5000
group "生命周期" exclusive {
  tag "新客" when count(orders) == 0
  tag "老客" when count(orders) >= 1
}
tag "沉睡唤醒" when days_since(last_active_at) >= 90 { priority 10 }
tag "高价值" when 高消费 and not tag("沉睡唤醒")
tag "VIP" manual
audience "唤醒高价值" = tag("沉睡唤醒") and 高消费
'''
    assert diagnostics(text) == []
