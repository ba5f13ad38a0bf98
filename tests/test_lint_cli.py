"""`tagdsl lint`, `tagdsl rules`, the output formats and docs/rules.md.

Golden files live in tests/golden/lint/ (a small ruleset with CJK names and a
tagdsl.toml). Regenerate them, and docs/rules.md, after an intended change:

    TAGDSL_UPDATE_GOLDEN=1 pytest tests/test_lint_cli.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tagdsl import Config, Diagnostic, RULES, Severity, Span, analyze
from tagdsl.report import (
    exit_status, format_github, format_json, format_sarif, format_text, rules_markdown, summary_line,
)
from tagdsl.spans import display_width

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "lint"
UPDATE = os.environ.get("TAGDSL_UPDATE_GOLDEN") == "1"
EXTENSIONS = {"text": "txt", "json": "json", "sarif": "sarif", "github": "github"}

CLEAN = 'tag "新客" when count(orders) == 0\n'
WARNING_ONLY = 'tag "一二三四五六七八九" when count(orders) == 0\n'  # TD407: 9 characters
ERROR = 'tag "新客" when cty == "北京"\n'


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory with a tagdsl.toml, as the current directory."""
    (tmp_path / "tagdsl.toml").write_text('[project]\nrulesets = ["rules"]\n', encoding="utf-8")
    (tmp_path / "rules").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- golden files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(EXTENSIONS))
def test_golden_output(fmt, runner, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    result = runner.invoke(main, ["lint", "--format", fmt])
    assert result.exit_code == 1, result.output
    expected_file = GOLDEN / f"expected.{EXTENSIONS[fmt]}"
    if UPDATE:
        expected_file.write_text(result.stdout, encoding="utf-8")
    assert result.stdout == expected_file.read_text(encoding="utf-8")
    assert result.stderr == ""


def test_golden_fixture_covers_the_interesting_cases():
    expected = (GOLDEN / "expected.json").read_text(encoding="utf-8")
    codes = {d["code"] for d in json.loads(expected)}
    assert {"TD100", "TD201", "TD401", "TD403", "TD404", "TD406", "TD407", "TD408", "TD502", "TD605", "TD606",
            "TD701"} <= codes
    text = (GOLDEN / "expected.txt").read_text(encoding="utf-8")
    assert "\t" not in text, "tabs are expanded in snippets"


def test_docs_rules_md_is_generated_from_the_registry():
    path = ROOT / "docs" / "rules.md"
    if UPDATE:
        path.write_text(rules_markdown(), encoding="utf-8")
    assert path.read_text(encoding="utf-8") == rules_markdown(), \
        "docs/rules.md is out of date: TAGDSL_UPDATE_GOLDEN=1 pytest tests/test_lint_cli.py"
    for code in RULES:
        assert f"## {code}" in rules_markdown()


# -- text format ------------------------------------------------------------------------------------------


def caret_line_for(output: str, source_line: str) -> tuple[str, str]:
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.endswith(source_line):
            return line, lines[i + 1]
    raise AssertionError(f"{source_line!r} not shown in:\n{output}")


def test_text_caret_under_cjk_text_uses_display_width():
    analysis = analyze(texts={"t.tag": 'tag "一二三四五六七八九" when count(orders) == 0\n'}, config=Config())
    out = format_text(analysis.diagnostics, analysis.sources)
    assert out.splitlines()[0] == ("t.tag:1:5: TD407 warning: tag name `一二三四五六七八九` has 9 characters; "
                                   "at most 8 are recommended")
    shown, carets = caret_line_for(out, 'tag "一二三四五六七八九" when count(orders) == 0')
    prefix = shown[: shown.index('"')]
    assert carets.index("^") == display_width(prefix)
    assert carets.count("^") == 9 * 2 + 2  # nine wide characters and two quotes
    assert "  = hint: " in out
    assert out.rstrip().splitlines()[-1] == "Found 1 warning in 1 file."


def test_text_caret_after_cjk_and_tabs():
    text = '\ttag "北京" when 城市 == "北京"\n'
    analysis = analyze(texts={"t.tag": text}, config=Config())
    (d,) = [d for d in analysis.diagnostics if d.code == "TD201"]
    out = format_text([d], analysis.sources)
    shown, carets = caret_line_for(out, 'tag "北京" when 城市 == "北京"')
    assert "\t" not in shown
    assert carets.index("^") == display_width(shown[: shown.index("城市")])
    assert carets.count("^") == 4


def test_text_snippet_of_a_very_long_line_is_cut_around_the_span():
    text = 'tag "长" when city == "' + "北京" * 300 + '" and cty == 1\n'
    analysis = analyze(texts={"t.tag": text}, config=Config())
    (d,) = [d for d in analysis.diagnostics if d.code == "TD201"]
    out = format_text([d], analysis.sources)
    shown, carets = caret_line_for(out, '" and cty == 1')
    gutter = shown.index("| ") + 2
    assert shown[gutter:].startswith("...")
    assert display_width(shown) < 140, "the 1,200-column line is cut"
    assert carets.index("^") == display_width(shown[: shown.index("cty")])
    assert carets.count("^") == 3


def test_text_snippet_cut_keeps_a_long_span_inside_the_window():
    text = 'tag "a" when ' + "(" * 201 + "true" + ")" * 201 + "\n"
    analysis = analyze(texts={"t.tag": text}, config=Config())
    (d,) = [d for d in analysis.diagnostics if d.code == "TD105"]
    out = format_text([d], analysis.sources)
    source_line, carets = out.splitlines()[1:3]
    assert source_line.endswith("...") and "true" in source_line
    assert carets.index("^") == display_width(source_line[: source_line.index("true")]) - 1  # the 201st "("


def test_text_invisible_characters_are_drawn_escaped():
    analysis = analyze(texts={"t.tag": 'tag "a\u202eb" manual\n'}, config=Config())
    out = format_text(analysis.diagnostics, analysis.sources)
    assert "\u202e" not in out and "\\u202e" in out


def test_text_summary_lines():
    span = Span("a.tag", 0, 1, 1, 1, 1, 2)
    err = Diagnostic("TD201", Severity.ERROR, "m", span, "h")
    warn = Diagnostic("TD407", Severity.WARNING, "m", Span("b.tag", 0, 1, 1, 1, 1, 2), "h")
    assert summary_line([]) == "All checks passed."
    assert summary_line([err, err, err, warn]) == "Found 3 errors and 1 warning in 2 files."
    assert summary_line([warn, warn]) == "Found 2 warnings in 1 file."
    assert summary_line([err]) == "Found 1 error in 1 file."


def test_text_has_no_colour_unless_styled():
    analysis = analyze(texts={"t.tag": ERROR}, config=Config())
    assert "\x1b[" not in format_text(analysis.diagnostics, analysis.sources)
    import click

    coloured = format_text(analysis.diagnostics, analysis.sources, style=click.style)
    assert "\x1b[" in coloured


# -- json / sarif / github -----------------------------------------------------------------------------------


def test_json_keys_and_positions():
    analysis = analyze(texts={"t.tag": 'tag "新客" when cty == "北京"\n'}, config=Config())
    (item,) = json.loads(format_json(analysis.diagnostics))
    assert {"file", "line", "column", "end_line", "end_column", "code", "severity", "message"} <= set(item)
    assert (item["file"], item["line"], item["column"], item["end_line"], item["end_column"]) == ("t.tag", 1, 15, 1, 18)
    assert item["code"] == "TD201" and item["severity"] == "error" and "cty" in item["message"]


def assert_valid_sarif(log: dict) -> None:
    """The parts of the SARIF 2.1.0 schema that GitHub code scanning requires."""
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-schema-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "tagdsl" and isinstance(driver["version"], str)
    ids = []
    for rule in driver["rules"]:
        assert re.fullmatch(r"TD\d{3}", rule["id"])
        assert rule["name"] == RULES[rule["id"]].name
        for key in ("shortDescription", "fullDescription", "help"):
            assert isinstance(rule[key]["text"], str) and rule[key]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note", "none")
        ids.append(rule["id"])
    assert len(ids) == len(set(ids))
    for result in run["results"]:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning")
        assert result["level"] == RULES[result["ruleId"]].severity.value
        assert isinstance(result["message"]["text"], str) and result["message"]["text"]
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        uri = physical["artifactLocation"]["uri"]
        assert "\\" not in uri and not uri.startswith("/") and ":" not in uri
        region = physical["region"]
        for key in ("startLine", "startColumn", "endLine", "endColumn"):
            assert isinstance(region[key], int) and region[key] >= 1
        assert (region["endLine"], region["endColumn"]) >= (region["startLine"], region["startColumn"])


def test_sarif_structure_and_locations(project, runner):
    write(project / "rules" / "sub" / "a.tag", ERROR + WARNING_ONLY.replace("新客", "x"))
    result = runner.invoke(main, ["lint", "--format", "sarif"])
    assert result.exit_code == 1
    log = json.loads(result.stdout)
    assert_valid_sarif(log)
    results = log["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["TD201", "TD407"]
    first = results[0]["locations"][0]["physicalLocation"]
    assert first["artifactLocation"]["uri"] == "rules/sub/a.tag"
    assert first["region"] == {"startLine": 1, "startColumn": 15, "endLine": 1, "endColumn": 18}
    assert log["runs"][0]["columnKind"] == "unicodeCodePoints"


def test_sarif_of_a_clean_run_is_valid():
    log = json.loads(format_sarif([]))
    assert_valid_sarif(log)
    assert log["runs"][0]["results"] == []


def test_github_annotations_escape_properties_and_data():
    span = Span("rules/a,b:c.tag", 0, 3, 2, 3, 2, 6)
    d = Diagnostic("TD201", Severity.ERROR, "100% wrong\nsecond line", span, None)
    w = Diagnostic("TD407", Severity.WARNING, "long", Span("x.tag", 0, 20, 1, 1, 2, 4), "shorten")
    out = format_github([d, w])
    assert out.splitlines() == [
        "::error file=rules/a%2Cb%3Ac.tag,line=2,col=3,endLine=2,endColumn=6,title=TD201::100%25 wrong%0Asecond line",
        "::warning file=x.tag,line=1,endLine=2,title=TD407::long (hint: shorten)",
    ]


# -- the lint command -----------------------------------------------------------------------------------


def test_lint_clean_exits_0(project, runner):
    write(project / "rules" / "a.tag", CLEAN)
    result = runner.invoke(main, ["lint"])
    assert result.exit_code == 0
    assert result.stdout == "All checks passed.\n"


def test_lint_warnings_exit_0_unless_strict(project, runner):
    write(project / "rules" / "a.tag", WARNING_ONLY)
    result = runner.invoke(main, ["lint"])
    assert result.exit_code == 0 and "TD407 warning" in result.stdout
    strict = runner.invoke(main, ["lint", "--strict"])
    assert strict.exit_code == 1 and strict.stdout == result.stdout


def test_lint_errors_exit_1(project, runner):
    write(project / "rules" / "a.tag", ERROR)
    result = runner.invoke(main, ["lint"])
    assert result.exit_code == 1
    assert result.stdout.startswith("rules/a.tag:1:15: TD201 error: unknown field `cty`\n")
    assert result.stdout.endswith("Found 1 error in 1 file.\n")


def test_lint_explicit_paths_files_and_directories(project, runner):
    write(project / "rules" / "bad.tag", ERROR)
    write(project / "other" / "ok.tag", CLEAN)
    write(project / "other" / "deeper" / "warn.tag", WARNING_ONLY.replace("新客", "x"))
    result = runner.invoke(main, ["lint", "other"])
    assert result.exit_code == 0, result.output
    assert "other/deeper/warn.tag:1:5: TD407" in result.stdout
    assert runner.invoke(main, ["lint", "rules/bad.tag"]).exit_code == 1


def test_lint_json_is_the_only_stdout(project, runner):
    write(project / "rules" / "a.tag", ERROR + WARNING_ONLY.replace("新客", "x"))
    result = runner.invoke(main, ["lint", "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [(d["code"], d["line"], d["column"], d["severity"]) for d in data] == [
        ("TD201", 1, 15, "error"), ("TD407", 2, 5, "warning")]
    assert data[0]["file"] == "rules/a.tag"


def test_lint_json_clean_is_an_empty_list(project, runner):
    write(project / "rules" / "a.tag", CLEAN)
    result = runner.invoke(main, ["lint", "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_lint_duplicate_across_files_is_one_namespace(project, runner):
    write(project / "rules" / "a.tag", CLEAN)
    write(project / "rules" / "b.tag", 'tag "新客 " when count(orders) == 0\n')
    result = runner.invoke(main, ["lint", "--format", "json"])
    codes = [(d["file"], d["code"]) for d in json.loads(result.stdout)]
    assert ("rules/b.tag", "TD401") in codes and result.exit_code == 1


def test_lint_nonexistent_path_exits_2(project, runner):
    result = runner.invoke(main, ["lint", "nope.tag"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: nope.tag: no such file or directory"
    assert result.stdout == ""


def test_lint_missing_default_rulesets_exits_2(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tagdsl.toml").write_text('[project]\nrulesets = ["missing"]\n', encoding="utf-8")
    result = runner.invoke(main, ["lint"])
    assert result.exit_code == 2 and "missing: no such file or directory" in result.stderr


@pytest.mark.parametrize("toml, key", [
    ('[project]\nplatfrm = "wecom"\n', "project.platfrm"),
    ('[project]\nplatform = "weixin"\n', "project.platform"),
    ('[project\nplatform = 1\n', "malformed TOML"),
    ('[limits]\nmax_tags = "many"\n', "limits.max_tags"),
])
def test_lint_bad_config_exits_2_with_one_line(project, runner, toml, key):
    write(project / "rules" / "a.tag", CLEAN)
    write(project / "bad.toml", toml)
    result = runner.invoke(main, ["lint", "--config", "bad.toml"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert key in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""


def test_lint_malformed_discovered_config_exits_2(project, runner):
    write(project / "rules" / "a.tag", CLEAN)
    write(project / "tagdsl.toml", '[project]\ntimezone = "Mars/Olympus"\n')
    result = runner.invoke(main, ["lint", "--format", "json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "project.timezone" in result.stderr


def test_lint_missing_config_file_exits_2(project, runner):
    result = runner.invoke(main, ["lint", "--config", "absent.toml"])
    assert result.exit_code == 2 and "not found" in result.stderr


def test_lint_bad_format_is_a_usage_error(project, runner):
    result = runner.invoke(main, ["lint", "--format", "xml"])
    assert result.exit_code == 2


def test_lint_config_selects_platform(project, runner):
    write(project / "rules" / "a.tag", 'tag "星标组" manual\n')
    assert runner.invoke(main, ["lint"]).exit_code == 1
    write(project / "wecom.toml", '[project]\nplatform = "wecom"\nrulesets = ["rules"]\n')
    assert runner.invoke(main, ["lint", "--config", "wecom.toml"]).exit_code == 0


@pytest.mark.parametrize("content", [
    b"\xff\xfe\x00t\x00a\x00g",
    b'tag "a" when \x00',
    b"((((((((((" * 50,
    "tag \"a\" when age > 1 " + "and age > 1 " * 1000,
    'tag "a" when tag("b")\ntag "b" when tag("a")\nlet x = x\n',
], ids=["utf16", "nul", "deep-parens", "long-and-chain", "cycles"])
def test_lint_hostile_input_never_tracebacks(project, runner, content):
    path = project / "rules" / "x.tag"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    result = runner.invoke(main, ["lint"])
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_lint_empty_directory(project, runner):
    result = runner.invoke(main, ["lint"])
    assert result.exit_code == 0
    assert result.stdout == "All checks passed.\n"
    assert "no .tag files" in result.stderr


def test_lint_real_subprocess(tmp_path):
    write(tmp_path / "rules" / "a.tag", ERROR)
    exe = shutil.which("tagdsl")
    cmd = [exe] if exe else [sys.executable, str(ROOT / "cli.py")]
    done = subprocess.run([*cmd, "lint", "rules"], cwd=tmp_path, capture_output=True, text=True, encoding="utf-8",
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("rules/a.tag:1:15: TD201 error: unknown field `cty`\n")
    assert "\x1b[" not in done.stdout, "no colour in a pipe"
    assert done.stdout.endswith("Found 1 error in 1 file.\n") and done.stderr == ""


def test_exit_status():
    span = Span("a.tag", 0, 1, 1, 1, 1, 2)
    warn = Diagnostic("TD407", Severity.WARNING, "m", span)
    err = Diagnostic("TD201", Severity.ERROR, "m", span)
    assert exit_status([]) == 0 and exit_status([], strict=True) == 0
    assert exit_status([warn]) == 0 and exit_status([warn], strict=True) == 1
    assert exit_status([err, warn]) == 1


# -- the rules command ------------------------------------------------------------------------------------


def test_rules_lists_every_code(runner):
    result = runner.invoke(main, ["rules"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(RULES)
    for line, rule in zip(lines, RULES.values()):
        assert line.split()[:3] == [rule.code, rule.severity.value, rule.name]
        assert line.endswith(rule.summary)


@pytest.mark.parametrize("query", ["TD401", "td401", "duplicate-tag"])
def test_rules_explains_one(runner, query):
    result = runner.invoke(main, ["rules", query])
    assert result.exit_code == 0
    rule = RULES["TD401"]
    assert result.stdout.startswith("TD401 duplicate-tag (error)\n")
    assert rule.summary in result.stdout and rule.why in result.stdout
    assert "Bad:" in result.stdout and "Good:" in result.stdout
    assert '    tag "沉睡唤醒 " when' in result.stdout


def test_rules_unknown_code_suggests(runner):
    result = runner.invoke(main, ["rules", "TD40"])
    assert result.exit_code == 2
    assert "did you mean `TD40" in result.stderr and result.stdout == ""
    assert "did you mean `duplicate-tag`" in runner.invoke(main, ["rules", "duplicate-tags"]).stderr
