"""`tagdsl test`: the .tagtest format, the runner, its outputs, and the shipped rulesets' own tests."""

from __future__ import annotations

import datetime as dt
import json
import os
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tagdsl import Config, load_ruleset
from tagdsl.testing import (
    Backend, Evaluated, MemoryBackend, bind, parse_tagtest, render_json, render_junit, render_text, run_tests,
)

ROOT = Path(__file__).resolve().parent.parent
RULESETS = ROOT / "rulesets"

RULES = """
let dormant_days = 90
tag "沉睡唤醒" when days_since(last_active_at) >= dormant_days
tag "已购买" when count(orders) >= 1
tag "VIP手工" manual
tag "VIP活跃" when tag("VIP手工") and days_since(last_active_at) < 30
group "生命周期" exclusive {
  tag "新客" when count(orders) == 0
  tag "老客" when count(orders) >= 1
}
audience "广州新人" = city == "广州" and not tag("已购买")
"""

TESTS = """
as_of datetime("2026-11-22T10:00:00")

follower "睡了90天" {
  last_active_at = -90d
  expect tag "沉睡唤醒", "新客"
  expect not tag "已购买"
}

follower "差一秒" {
  last_active_at = -90d + 1s
  city = "广州"
  expect not tag "沉睡唤醒"
  expect audience "广州新人"
}

follower "买过" {
  last_active_at = -1d
  orders at -3d { amount = 12.50, category = "纸巾", promo = true }
  manual "VIP手工"
  expect only tag "已购买", "老客", "VIP活跃"
  expect tag "VIP手工"
  expect not audience "广州新人"
}

expect count tag "沉睡唤醒" == 1
expect count audience "广州新人" == 1
"""

# The same rule with a deliberate off-by-one: `>` where the playbook says "90 days or more".
WRONG_RULES = RULES.replace("days_since(last_active_at) >= dormant_days", "days_since(last_active_at) > dormant_days")


def run(rules=RULES, tests=TESTS, **kwargs):
    return run_tests(config=Config(), rule_texts={"rules.tag": rules}, test_texts={"rules.tagtest": tests},
                     **kwargs)


def write(tmp_path: Path, rules=RULES, tests=TESTS) -> Path:
    (tmp_path / "rules.tag").write_text(rules, encoding="utf-8")
    (tmp_path / "rules.tagtest").write_text(tests, encoding="utf-8")
    return tmp_path


def cli(*args, cwd: Path | None = None):
    runner = CliRunner()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return runner.invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


# -- the format ------------------------------------------------------------------------------------


def test_parse_and_bind_resolve_relative_and_absolute_times():
    text = """
as_of datetime("2026-11-22T10:00:00")
follower "a" {
  subscribe_time = -90d + 1s
  last_active_at = now - 2h
  age = 30
  city = missing
  orders at datetime("2026-06-18T20:00:00") - 1s { amount = 128, category = "纸巾" promo = false }
  events at -1w { type = "scan", key = "storeA" }
}
"""
    raw, diags = parse_tagtest(text, "a.tagtest")
    assert diags == []
    ruleset = load_ruleset(texts={"r.tag": RULES})
    tf, diags = bind(raw, Config(), ruleset)
    assert diags == []
    (section,) = tf.sections
    assert section.as_of == dt.datetime(2026, 11, 22, 10)
    (f,) = section.followers
    assert f.fields["subscribe_time"] == dt.datetime(2026, 8, 24, 10, 0, 1)
    assert f.fields["last_active_at"] == dt.datetime(2026, 11, 22, 8)
    assert f.fields["age"] == 30 and f.fields["city"] is None and f.fields["openid"] == "a"
    assert f.fields["gender"] is None  # unset fields are missing
    assert f.rows["orders"] == [{"created_at": dt.datetime(2026, 6, 18, 19, 59, 59), "amount": Decimal("128"),
                                 "category": "纸巾", "promo": False}]
    assert f.rows["events"] == [{"occurred_at": dt.datetime(2026, 11, 15, 10), "type": "scan", "key": "storeA"}]


def test_datetime_with_offset_is_converted_to_the_project_time_zone():
    raw, diags = parse_tagtest('as_of datetime("2026-11-22T02:00:00+00:00")', "t.tagtest")
    assert diags == []
    tf, _ = bind(raw, Config(), load_ruleset(texts={"r.tag": RULES}))
    assert tf.sections[0].as_of == dt.datetime(2026, 11, 22, 10)  # Asia/Shanghai


@pytest.mark.parametrize("text, code, line, column, needle", [
    ('as_of datetime("2026-11-22T10:00:00")\nfollower "a" {\n  city "广州"\n}', "TT100", 3, 8, "`=` after the field"),
    ('as_of datetime("2026-11-22T10:00:00")\nfollower "a" {\n  city = "广州\n}', "TT101", 3, 10, "unterminated"),
    ('as_of datetime("2026-11-22T10:00:00")\nfollower “a” {\n}', "TT100", 2, 10, "full-width"),
    ('as_of datetime("2026-13-01T10:00:00")', "TT300", 1, 16, "invalid datetime"),
    ('as_of datetime("2026-11-22T10:00:00")\nfollower "a" {\n  expect tag 新客\n}', "TT100", 3, 14, "quoted"),
    ('as_of datetime("2026-11-22T10:00:00")\nfollower "a" {\n  last_active_at = 90d\n}', "TT100", 3, 20, "-90d"),
    ('as_of datetime("2026-11-22T10:00:00")\nfollower "a" {\n  city = "x"\n', "TT100", 4, 1, "`}`"),
])
def test_syntax_errors_are_located(text, code, line, column, needle):
    _, diags = parse_tagtest(text, "t.tagtest")
    assert diags, "expected a diagnostic"
    d = diags[0]
    assert (d.code, d.span.line, d.span.column) == (code, line, column)
    assert needle in d.message + " " + (d.hint or "")


def test_follower_names_fit_the_openid_column():
    _, diags = parse_tagtest(f'as_of date("2026-11-22")\nfollower "{"长" * 65}" {{ }}\n', "t.tagtest")
    assert [(d.code, d.span.line, d.span.column) for d in diags] == [("TT400", 2, 10)]
    assert "at most 64 characters" in diags[0].message


def test_parser_recovers_and_reports_each_broken_follower():
    text = """as_of datetime("2026-11-22T10:00:00")
follower "a" {
  city == "广州"
}
follower "b" {
  age = 30
}
follower "c" {
  orders { amount = }
}
"""
    _, diags = parse_tagtest(text, "t.tagtest")
    assert [(x.span.line, x.code) for x in diags] == [(3, "TT100"), (9, "TT100")]


@pytest.mark.parametrize("body, line, column, needle", [
    ('cty = "广州"', 3, 3, "did you mean `city`"),
    ('age = "30"', 3, 9, "`age` is an integer field; expected a whole number, got a string"),
    ("age = 30.5", 3, 9, "got a decimal number"),
    ('expect tag "新课"', 3, 14, "did you mean `新客`"),
    ('expect audience "沉睡唤醒"', 3, 19, "is a tag"),
    ('manual "已购买"', 3, 10, "computed by a rule"),
    ('orders { amount = 1.00 }', 3, 3, "needs its time"),
    ('orders at -1d { amont = 1.00 }', 3, 19, "did you mean `amount`"),
    ('orders at -1d { amount = 1.005 }', 3, 28, "2 decimal places"),
    ('order at -1d { amount = 1.00 }', 3, 3, "did you mean `orders`"),
    ('openid = "x"', 3, 3, "the follower's id"),
])
def test_binding_errors_name_the_problem_and_place(body, line, column, needle):
    text = f'as_of datetime("2026-11-22T10:00:00")\nfollower "a" {{\n  {body}\n}}\n'
    raw, diags = parse_tagtest(text, "t.tagtest")
    assert diags == []
    _, diags = bind(raw, Config(), load_ruleset(texts={"r.tag": RULES}))
    assert len(diags) == 1, diags
    d = diags[0]
    assert (d.span.line, d.span.column) == (line, column), d
    assert needle in d.message + " " + (d.hint or "")


def test_structure_errors():
    text = """follower "a" { city = "x" }
as_of datetime("2026-11-22T10:00:00")
follower "b" { }
follower "b" { }
"""
    raw, diags = parse_tagtest(text, "t.tagtest")
    _, more = bind(raw, Config(), load_ruleset(texts={"r.tag": RULES}))
    found = [(d.code, d.span.line, d.message) for d in diags + more]
    assert ("TT400", 1, "a follower before any `as_of`") in found
    assert any(code == "TT400" and line == 4 and "already defined at line 3" in msg for code, line, msg in found)


# -- running ----------------------------------------------------------------------------------------


def test_passing_tests_report_pytest_like_summary():
    report = run()
    assert [(c.name, c.passed) for c in report.cases] == [
        ("睡了90天", True), ("差一秒", True), ("买过", True),
        ('count tag "沉睡唤醒" == 1', True), ('count audience "广州新人" == 1', True)]
    assert report.exit_code == 0
    text = render_text(report)
    assert text.splitlines()[-1].startswith("5 passed, 0 failed in ")


def test_a_wrong_rule_is_caught_with_expected_actual_and_trace():
    report = run(rules=WRONG_RULES)
    assert report.exit_code == 1
    failed = [c for c in report.cases if not c.passed]
    assert [c.name for c in failed] == ["睡了90天", 'count tag "沉睡唤醒" == 1']
    failure = failed[0].failures[0]
    assert failure.expectation == 'expect tag "沉睡唤醒", "新客"'
    assert failure.missing == ["沉睡唤醒"]
    assert failure.actual == ["新客"]
    text = render_text(report)
    assert 'follower "睡了90天" (rules.tagtest:4) as of 2026-11-22 10:00:00' in text
    assert "rules.tagtest:6:3: expect tag \"沉睡唤醒\", \"新客\"" in text
    assert "expected:   沉睡唤醒" in text
    assert "actual tags: 新客" in text
    # the explain trace of the rule that disagreed, with the value that decided it
    assert 'tag "沉睡唤醒" ✗' in text
    assert "days_since(last_active_at) = 90 > 90 ✗" in text
    assert "0 of 3 followers: none" in text
    assert text.splitlines()[-1].startswith("3 passed, 2 failed in ")


def test_exclusive_group_failure_also_explains_the_winner():
    tests = TESTS.replace('expect only tag "已购买", "老客", "VIP活跃"', 'expect tag "新客"')
    report = run(tests=tests)
    (case,) = [c for c in report.cases if not c.passed]
    trace = case.failures[0].trace
    assert 'tag "新客" ✗  (group "生命周期")' in trace
    assert 'tag "老客" ✓  (group "生命周期", won)' in trace


def test_expect_only_lists_unexpected_tags():
    tests = TESTS.replace('expect only tag "已购买", "老客", "VIP活跃"', 'expect only tag "已购买"')
    report = run(tests=tests)
    (case,) = [c for c in report.cases if not c.passed]
    assert case.failures[0].unexpected == ["VIP活跃", "老客"]


def test_stored_manual_tags_feed_tag_references():
    tests = TESTS.replace('  manual "VIP手工"\n', "")
    report = run(tests=tests)
    (case,) = [c for c in report.cases if not c.passed]
    assert case.name == "买过"
    assert {tuple(f.missing) for f in case.failures} == {("VIP活跃",), ("VIP手工",)}


def test_json_output():
    report = run(rules=WRONG_RULES, coverage=True)
    data = json.loads(render_json(report))
    assert (data["passed"], data["failed"], data["errors"], data["backend"]) == (3, 2, 0, "memory")
    assert data["summary"].startswith("3 passed, 2 failed in ")
    first = data["tests"][0]
    assert first["id"] == "rules.tagtest::睡了90天" and first["outcome"] == "failed" and first["line"] == 4
    assert first["failures"][0]["missing"] == ["沉睡唤醒"]
    assert first["failures"][0]["line"] == 6 and "= 90 > 90" in first["failures"][0]["trace"]
    assert data["coverage"]["rules"]["沉睡唤醒"] == {"held": 0, "not_held": 3, "both": False}
    assert data["coverage"]["groups"]["生命周期"] == {"branches": {"新客": 2, "老客": 1}, "none": 0}


def test_junit_output_is_valid_xml_with_failures():
    report = run(rules=WRONG_RULES)
    root = ET.fromstring(render_junit(report))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures"), suite.get("errors")) == \
        ("rules.tagtest", "5", "2", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases][:3] == ["睡了90天", "差一秒", "买过"]
    failure = cases[0].find("failure")
    assert failure is not None and "expected 沉睡唤醒" in failure.get("message")
    assert "days_since(last_active_at) = 90" in failure.text
    assert cases[1].find("failure") is None


def test_junit_reports_test_file_errors_as_errors():
    report = run(tests='as_of datetime("2026-11-22T10:00:00")\nfollower "a" { cty = "x" }\n')
    root = ET.fromstring(render_junit(report))
    (suite,) = root.findall("testsuite")
    assert suite.get("errors") == "1"
    err = suite.find("testcase/error")
    assert err.get("type") == "TT200" and "rules.tagtest:2:16" in err.text
    assert report.exit_code == 1


def test_coverage_reports_rules_both_ways_and_branches():
    report = run(coverage=True)
    cov = report.coverage
    assert cov.rules["沉睡唤醒"] == [1, 2]
    assert cov.rules["VIP活跃"] == [1, 2]
    assert cov.audiences["广州新人"] == [1, 2]
    assert dict(cov.groups["生命周期"]) == {"新客": 2, "老客": 1}
    assert cov.incomplete == []
    text = render_text(report)
    assert "exclusive group \"生命周期\": 新客 2 · 老客 1 · (none) 0" in text
    assert "rules and audiences covered: 6/6; exclusive branches taken: 2/2" in text
    # Drop the follower with orders: 老客 is never taken, 已购买 never holds.
    partial = run(tests=TESTS.split('follower "买过"')[0], coverage=True)
    assert set(partial.coverage.incomplete) >= {"已购买", "老客", "VIP活跃", "生命周期:老客"}
    assert "✗ tag      已购买" in render_text(partial) and "never held" in render_text(partial)


def test_sections_each_have_their_own_as_of_and_population():
    tests = """
as_of datetime("2026-06-10T00:00:00")
follower "a" { last_active_at = datetime("2026-03-01T00:00:00") }
expect count tag "沉睡唤醒" == 1
as_of datetime("2026-04-01T00:00:00")
follower "b" { last_active_at = datetime("2026-03-01T00:00:00") }
expect count tag "沉睡唤醒" == 0
"""
    report = run(tests=tests)
    assert report.ok, render_text(report)
    assert [c.as_of.month for c in report.cases] == [6, 6, 4, 4]


class _WrongDatabase(Backend):
    """A backend that drops one tag, as an SQL compiler bug would."""

    name = "brokendb"

    def open(self, ruleset, config, analysis):
        self.memory = MemoryBackend()
        self.memory.open(ruleset, config, analysis)

    def evaluate(self, section):
        out = self.memory.evaluate(section)
        return {k: Evaluated(v.tags - {"新客"}, v.audiences) for k, v in out.items()}


def test_backend_disagreeing_with_memory_is_called_out():
    report = run(backend=_WrongDatabase())
    (case,) = [c for c in report.cases if not c.passed]
    assert case.name == "睡了90天"
    assert "brokendb and the in-memory evaluator disagree" in case.failures[0].message
    assert "note: brokendb and the in-memory evaluator disagree" in render_text(report)


# -- the command line ---------------------------------------------------------------------------------


def test_cli_exit_codes_and_summary(tmp_path):
    write(tmp_path)
    ok = cli("test", str(tmp_path))
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[-1].startswith("5 passed, 0 failed in ")
    write(tmp_path, rules=WRONG_RULES)
    bad = cli("test", str(tmp_path))
    assert bad.exit_code == 1
    assert "expected:   沉睡唤醒" in bad.output


def test_cli_formats(tmp_path):
    write(tmp_path, rules=WRONG_RULES)
    out = cli("test", str(tmp_path), "--format", "json", "--coverage")
    assert out.exit_code == 1
    assert json.loads(out.output)["coverage"]["followers"] == 3
    out = cli("test", str(tmp_path / "rules.tagtest"), "--format", "junit")  # the .tag beside it is the ruleset
    assert out.exit_code == 1
    assert ET.fromstring(out.output).get("failures") == "2"


def test_cli_test_file_errors_are_located(tmp_path):
    write(tmp_path, tests='as_of datetime("2026-11-22T10:00:00")\nfollower "a" {\n  city "x"\n}\n')
    out = cli("test", str(tmp_path))
    assert out.exit_code == 1
    assert f"{tmp_path / 'rules.tagtest'}:3:8: TT100 error: expected `=` after the field `city`" in out.output
    assert '3 |   city "x"' in out.output


def test_cli_usage_errors_exit_2(tmp_path):
    out = cli("test", str(tmp_path / "nope"))
    assert out.exit_code == 2 and "no such file or directory" in out.output
    (tmp_path / "rules.tag").write_text(RULES, encoding="utf-8")
    out = cli("test", str(tmp_path))
    assert out.exit_code == 2 and "no .tagtest files found" in out.output
    (tmp_path / "tagdsl.toml").write_text("[project]\nbogus = 1\n", encoding="utf-8")
    out = cli("test", str(tmp_path), "--config", str(tmp_path / "tagdsl.toml"))
    assert out.exit_code == 2 and "project.bogus" in out.output


def test_cli_ruleset_errors_exit_1_without_traceback(tmp_path):
    write(tmp_path, rules='tag "x" when cty == "北京"\n')
    out = cli("test", str(tmp_path))
    assert out.exit_code == 1
    assert "TD201 unknown field `cty`" in out.output and "Traceback" not in out.output


def test_cli_db_sqlite_catches_the_wrong_rule(tmp_path):
    write(tmp_path, rules=WRONG_RULES)
    out = cli("test", str(tmp_path), "--db", f"sqlite:///{tmp_path / 'scratch.db'}")
    assert out.exit_code == 1
    assert "3 passed, 2 failed in " in out.output and "(sqlite)" in out.output
    assert not (tmp_path / "scratch.db").exists()  # a throwaway file elsewhere, removed afterwards


def test_cli_db_bad_url_exits_2(tmp_path):
    write(tmp_path)
    out = cli("test", str(tmp_path), "--db", "oracle://x@y/z")
    assert out.exit_code == 2 and "unsupported database" in out.output


# -- the shipped rulesets ----------------------------------------------------------------------------


def test_shipped_rulesets_pass_in_memory_with_full_coverage():
    report = run_tests([RULESETS], Config(), coverage=True)
    assert report.ok, render_text(report)
    assert report.coverage.incomplete == [], report.coverage.incomplete
    tested = {Path(f).stem for f in report.files}
    assert tested == {p.stem for p in RULESETS.glob("*.tag")}, "every shipped ruleset has a .tagtest"


def test_shipped_rulesets_pass_on_sqlite():
    from runtime.testing_db import DatabaseBackend

    report = run_tests([RULESETS], Config(), backend=DatabaseBackend("sqlite://"))
    assert report.ok, render_text(report)
    assert report.backend == "sqlite"


@pytest.mark.parametrize("env", ["TAGDSL_TEST_POSTGRES_URL", "TAGDSL_TEST_MYSQL_URL"])
def test_shipped_rulesets_pass_on_real_databases(env):
    url = os.environ.get(env)
    if not url:
        pytest.skip(f"{env} is not set")
    import sqlalchemy as sa

    from runtime.testing_db import SCHEMA_PREFIX, DatabaseBackend

    backend = DatabaseBackend(url)
    report = run_tests([RULESETS], Config(), backend=backend)
    assert report.ok, render_text(report)
    assert backend.schema.startswith(SCHEMA_PREFIX)
    engine = sa.create_engine(url)
    try:
        assert backend.schema not in sa.inspect(engine).get_schema_names()  # dropped afterwards
    finally:
        engine.dispose()


def test_shipped_rulesets_lint_clean_strict():
    out = cli("lint", "--strict", str(RULESETS))
    assert out.exit_code == 0, out.output


def test_shipped_rulesets_respect_the_official_account_limits():
    ruleset = load_ruleset([RULESETS], Config())
    assert len(ruleset.tags) < 100
    worst = sum(1 for g in ruleset.groups.values() if g.exclusive) + \
        sum(1 for t in ruleset.tags.values() if not t.exclusive)
    assert worst <= 20
    assert all(len(name.encode()) <= 30 and len(name) <= 8 for name in ruleset.tags)


# -- CI integration files ----------------------------------------------------------------------------


def test_pre_commit_hooks():
    yaml = pytest.importorskip("yaml")
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))}
    assert hooks["tagdsl-lint"]["entry"] == "tagdsl lint" and hooks["tagdsl-lint"]["files"] == r"\.tag$"
    assert hooks["tagdsl-fmt"]["entry"] == "tagdsl fmt" and hooks["tagdsl-fmt"]["files"] == r"\.tag$"
    # lint and test see the whole ruleset (one namespace), fmt the changed files
    assert hooks["tagdsl-lint"]["pass_filenames"] is False and hooks["tagdsl-test"]["pass_filenames"] is False
    assert hooks["tagdsl-fmt"].get("pass_filenames", True) is True
    for hook in hooks.values():
        assert hook["language"] == "python" and hook["entry"].split()[1] in ("lint", "fmt", "test")


def test_ci_doc_workflow_is_valid_yaml_running_the_three_checks():
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    workflow = next(yaml.safe_load(b) for b in blocks if b.startswith("name: rulesets"))
    steps = workflow["jobs"]["rulesets"]["steps"]
    runs = " | ".join(s.get("run", "") for s in steps)
    assert "tagdsl lint --strict --format sarif" in runs
    assert "tagdsl fmt --check" in runs
    assert "tagdsl test" in runs and "--format junit" in runs
    assert any(s.get("uses", "").startswith("github/codeql-action/upload-sarif") for s in steps)
    assert workflow["permissions"]["security-events"] == "write"
    for block in blocks:
        yaml.safe_load(block)  # every snippet parses


def test_the_example_in_docs_testing_passes_against_the_shipped_rules():
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    example = text.split("```\n# rulesets/dormancy.tagtest\n", 1)[1].split("```", 1)[0]
    rules = {p.name: p.read_text(encoding="utf-8") for p in sorted(RULESETS.glob("*.tag"))}
    report = run_tests(config=Config(), rule_texts=rules, test_texts={"dormancy.tagtest": example})
    assert report.ok and report.passed == 3, render_text(report)


def test_test_files_share_the_rule_files_string_escapes():
    ok, diags = parse_tagtest('as_of datetime("2026-11-22T10:00:00")\nfollower "a\\u4e00" {\n}\n', "x.tagtest")
    assert diags == []
    _, diags = parse_tagtest('as_of datetime("2026-11-22T10:00:00")\nfollower "a\\q" {\n}\n', "x.tagtest")
    assert [(d.code, d.span.line, d.span.column) for d in diags] == [("TT100", 2, 12)]
    assert "invalid escape `\\q`" in diags[0].message
