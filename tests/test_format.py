"""The formatter (`tagdsl.format`, `tagdsl fmt`): canonical style, comments,
golden files, trees built in code, and the command line.

Golden files: tests/golden/fmt/NAME.input.tag is formatted and compared with
NAME.expected.tag. Set TAGDSL_UPDATE_GOLDEN=1 to rewrite the expected files
from the current formatter (then review the diff before committing).
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tagdsl import ast as A
from tagdsl.format import (FormatError, LINE_LIMIT, format_expr, format_file, format_module, format_text, quote_string,
                           syntax_equal)
from tagdsl.parser import parse_text
from tagdsl.resources import shipped_rulesets_dir
from tagdsl.spans import display_width

GOLDEN = Path(__file__).parent / "golden" / "fmt"
GOLDEN_INPUTS = sorted(GOLDEN.glob("*.input.tag"))


def parse_ok(text: str) -> A.Module:
    module, diagnostics = parse_text(text, "t.tag")
    assert diagnostics == [], diagnostics
    return module


def comment_texts(text: str) -> list[str]:
    return sorted(c.text for c in parse_ok(text).comments)


def fmt(text: str) -> str:
    out = format_text(text)
    assert format_text(out) == out, "not idempotent"
    assert syntax_equal(parse_ok(out), parse_ok(text))
    assert comment_texts(out) == comment_texts(text)
    return out


# -- golden files ---------------------------------------------------------------------------------


def test_golden_directory_has_cases():
    assert len(GOLDEN_INPUTS) >= 6


@pytest.mark.parametrize("source", GOLDEN_INPUTS, ids=lambda p: p.name.removesuffix(".input.tag"))
def test_golden(source: Path):
    expected_path = source.with_name(source.name.replace(".input.tag", ".expected.tag"))
    text = source.read_text(encoding="utf-8")
    out = fmt(text)
    if os.environ.get("TAGDSL_UPDATE_GOLDEN") == "1":
        expected_path.write_text(out, encoding="utf-8", newline="")
    assert expected_path.exists(), f"{expected_path.name} is missing; run with TAGDSL_UPDATE_GOLDEN=1"
    assert out == expected_path.read_text(encoding="utf-8")
    assert format_text(out) == out


# -- statements and blank lines ----------------------------------------------------------------------


def test_one_statement_per_line_and_single_spaces():
    out = fmt('tag"a"when  x>=1   tag "b" when\ty\u3000and  not z let q=[1,2,]')
    assert out == 'tag "a" when x >= 1\ntag "b" when y and not z\nlet q = [1, 2]\n'


def test_blank_line_runs_collapse_and_single_blank_lines_between_one_liners_are_kept():
    out = fmt('let a = 1\n\n\n\nlet b = 2\nlet c = 3\n\ntag "t" when a > b\n')
    assert out == 'let a = 1\n\nlet b = 2\nlet c = 3\n\ntag "t" when a > b\n'


def test_audiences_groups_and_multi_line_statements_are_set_off_by_a_blank_line():
    out = fmt('let a = 1\naudience "A" = x\ntag "t" when y { priority 1 }\ntag "u" when z\n'
              'group "g" { tag "m" when n }\nlet b = 2\n')
    assert out == ('let a = 1\n\naudience "A" = x\n\ntag "t" when y {\n  priority 1\n}\n\ntag "u" when z\n\n'
                   'group "g" {\n  tag "m" when n\n}\n\nlet b = 2\n')


def test_no_blank_lines_at_start_after_brace_inside_blocks_or_before_brace():
    out = fmt('\n\n\ngroup "g" {\n\n\n  tag "a" when x {\n\n priority 1\n\n description "d"\n\n }\n\n}\n\n\n')
    assert out == 'group "g" {\n  tag "a" when x {\n    priority 1\n    description "d"\n  }\n}\n'


def test_group_members_follow_the_same_blank_line_rule():
    out = fmt('group "g" exclusive {\ntag "a" when x\n\n\ntag "b" when y\ntag "c" when z { priority 1 }\n'
              'tag "d" when w }')
    assert out == ('group "g" exclusive {\n  tag "a" when x\n\n  tag "b" when y\n\n  tag "c" when z {\n'
                   '    priority 1\n  }\n\n  tag "d" when w\n}\n')


def test_empty_blocks_and_manual_tags():
    assert fmt('tag "a" manual { }\ngroup "g" {\n}\naudience "x" = y {}') == (
        'tag "a" manual {}\n\ngroup "g" {}\n\naudience "x" = y {}\n')
    assert fmt('tag "a" manual') == 'tag "a" manual\n'


def test_attributes_one_per_line_in_written_order():
    out = fmt('tag "a" when x { sensitive review "法务" priority -5 expires 2w owner "运营" description "d" }')
    assert out == ('tag "a" when x {\n  sensitive\n  review "法务"\n  priority -5\n  expires 2w\n  owner "运营"\n'
                   '  description "d"\n}\n')


def test_empty_and_whitespace_only_files_format_to_nothing():
    assert format_text("") == ""
    assert format_text("\n\n \u3000\t\n") == ""


# -- expressions and literals ----------------------------------------------------------------------


@pytest.mark.parametrize("written, canonical", [
    ("a>1", "a > 1"),
    ("not(a)", "not (a)"),
    ("- x*2", "-x * 2"),
    ("- - x < 1", "- -x < 1"),
    ("+x > 1", "x > 1"),
    ("a between 1 and 2", "a between 1 and 2"),
    ("a not  in [ 1 ,2 , ]", "a not in [1, 2]"),
    ("a is  not missing", "a is not missing"),
    ("count( orders where promo within 30d )>0", "count(orders where promo within 30d) > 0"),
    ("coalesce(a,b , c)==1", "coalesce(a, b, c) == 1"),
    ('tag( "新客" )', 'tag("新客")'),
    ("((a or b)) and (c)", "((a or b)) and (c)"),
    ("x == 5000.00 or x == 0.50 or x == 007", "x == 5000.00 or x == 0.50 or x == 7"),
    ("t > now() - 2w and t < now() - 007d", "t > now() - 2w and t < now() - 7d"),
    ("a == true or a == false", "a == true or a == false"),
])
def test_expression_spacing(written, canonical):
    assert fmt(f'tag "t" when {written}') == f'tag "t" when {canonical}\n'


@pytest.mark.parametrize("written, canonical", [
    (r'"北京"', '"北京"'),
    (r'"\u5317\u4EAC"', '"北京"'),
    (r'"a\"b"', r'"a\"b"'),
    (r'"c:\\dir"', r'"c:\\dir"'),
    ('"tab\traw"', r'"tab\traw"'),
    (r'"\u0009\u000a"', r'"\t\n"'),
    (r'"\u200b"', r'"\u200B"'),
    (r'"\u3000"', r'"\u3000"'),
    (r'"\u00a0\ufeff\u202e\u0001"', r'"\u00A0\uFEFF\u202E\u0001"'),
    (r'"é😀 "', '"é😀 "'),
    (r'"\u0022"', r'"\""'),
])
def test_string_literals_are_re_escaped_canonically(written, canonical):
    assert fmt(f"let s = {written}") == f"let s = {canonical}\n"


def test_quote_string_escapes_lone_surrogates_so_the_output_is_valid_utf8():
    assert quote_string("\ud800") == r'"\uD800"'
    out = fmt(r'let s = "\ud800"')
    out.encode("utf-8")


def test_decimals_keep_their_digits():
    module = parse_ok("let m = 5000.00\nlet n = 1.000")
    assert fmt("let m = 5000.00\nlet n = 1.000") == "let m = 5000.00\nlet n = 1.000\n"
    assert module.statements[0].expr.value == Decimal("5000.00")
    # A Decimal built in code in exponent form still prints as a decimal literal.
    built = A.Module("m", (A.LetStmt("m", A.Literal(Decimal("1E+3"), "decimal")),))
    assert format_module(built) == "let m = 1000.0\n"
    assert format_module(A.Module("m", (A.LetStmt("m", A.Literal(Decimal("1E-7"), "decimal")),))) == (
        "let m = 0.0000001\n")


# -- long lines ------------------------------------------------------------------------------------------


def test_long_and_chains_break_before_each_operator_with_four_space_continuation():
    cond = " and ".join(f'remark != "备注内容{i}"' for i in range(6))
    out = fmt(f'tag "长" when {cond} {{ priority 1 }}')
    lines = out.splitlines()
    assert lines[0] == 'tag "长" when remark != "备注内容0"'
    assert lines[1:6] == [f'    and remark != "备注内容{i}"' for i in range(1, 5)] + ['    and remark != "备注内容5" {']
    assert lines[6:] == ["  priority 1", "}"]


def test_the_limit_counts_display_columns_of_cjk_text():
    # 44 CJK characters are 88 display columns but only 44 code points.
    name = "中" * 44
    text = f'tag "t" when remark == "{name}" or city == "x"'
    assert len(text) < LINE_LIMIT < display_width(text)
    assert fmt(text) == f'tag "t" when remark == "{name}"\n    or city == "x"\n'


def test_a_line_at_the_limit_is_not_broken():
    filler = "x" * (LINE_LIMIT - len('tag "t" when a == "" or b'))
    text = f'tag "t" when a == "{filler}" or b\n'
    assert display_width(text.rstrip("\n")) == LINE_LIMIT
    assert fmt(text) == text


def test_only_the_top_level_chain_breaks_and_a_long_line_without_one_stays_long():
    inner = " or ".join(f"x == {i}" for i in range(30))
    assert fmt(f'tag "t" when ({inner})') == f'tag "t" when ({inner})\n'
    out = fmt(f'tag "t" when a and ({inner})')
    assert out == f'tag "t" when a\n    and ({inner})\n'


def test_chains_in_groups_indent_relative_to_the_member():
    cond = " or ".join(f'city == "城市{i}"' for i in range(8))
    out = fmt(f'group "g" {{ tag "t" when {cond} }}')
    lines = out.splitlines()
    assert lines[1].startswith('  tag "t" when city == "城市0"')
    assert lines[2] == '      or city == "城市1"'


def test_a_written_multi_line_chain_that_fits_is_joined():
    assert fmt('tag "t" when a\n  and b\n  and c\n') == 'tag "t" when a and b and c\n'


# -- comments ------------------------------------------------------------------------------------------


def test_comments_are_kept_where_they_were():
    text = (
        "# 文件头\n"
        "\n"
        "# 关于 a\n"
        "let a = 1 # 行尾\n"
        'group "g" { # 组头\n'
        "  # 成员前\n"
        '  tag "m" when a > 0 { # 块头\n'
        "    # 属性前\n"
        "    priority 1 # 属性行尾\n"
        "    # 块尾\n"
        "  } # 块后\n"
        "  # 组尾\n"
        "} # 组后\n"
        "# 文件尾\n"
    )
    assert fmt(text) == (
        "# 文件头\n"
        "\n"
        "# 关于 a\n"
        "let a = 1  # 行尾\n"
        "\n"
        'group "g" {  # 组头\n'
        "  # 成员前\n"
        '  tag "m" when a > 0 {  # 块头\n'
        "    # 属性前\n"
        "    priority 1  # 属性行尾\n"
        "    # 块尾\n"
        "  }  # 块后\n"
        "  # 组尾\n"
        "}  # 组后\n"
        "# 文件尾\n"
    )


def test_a_blank_line_before_a_comment_block_is_kept():
    out = fmt('let a = 1\n\n\n# 下一节\nlet b = 2\n# 紧贴\nlet c = 3\n\n# 文件尾\n')
    assert out == 'let a = 1\n\n# 下一节\nlet b = 2\n# 紧贴\nlet c = 3\n\n# 文件尾\n'


def test_comments_between_chain_operands_keep_the_chain_broken():
    text = 'tag "t" when a # 第一\n  and b\n  # 关于 c\n  and c # 最后\n'
    assert fmt(text) == 'tag "t" when a  # 第一\n    and b\n    # 关于 c\n    and c  # 最后\n'


def test_several_end_of_line_comments_for_one_line_keep_their_order():
    text = 'tag "t" when f(a, # 一\n b, # 二\n c) # 三\n'
    assert fmt(text) == '# 一\n# 二\ntag "t" when f(a, b, c)  # 三\n'


def test_a_comment_inside_an_empty_block_keeps_it_open():
    assert fmt('tag "a" manual { # 说明\n}') == 'tag "a" manual {  # 说明\n}\n'
    assert fmt('tag "a" manual {\n# 说明\n}') == 'tag "a" manual {\n  # 说明\n}\n'


def test_comment_text_is_kept_verbatim():
    text = "let a = 1 #  两个空格   \n#\ttab\n#\n"
    assert fmt(text) == "let a = 1  #  两个空格   \n#\ttab\n#\n"


def test_comment_only_file():
    assert fmt("\n\n# 一\n\n\n# 二\n") == "# 一\n\n# 二\n"


def test_strings_containing_hash_are_not_comments():
    assert fmt('tag "#1" when remark == "# x" # 真注释\n') == 'tag "#1" when remark == "# x"  # 真注释\n'


# -- line endings and encoding ----------------------------------------------------------------------------


def test_crlf_files_stay_crlf():
    out = fmt('let a=1\r\n# c\r\nlet b=2 # t\r\n')
    assert out == "let a = 1\r\n# c\r\nlet b = 2  # t\r\n"


def test_final_newline_is_added():
    assert fmt("let a = 1") == "let a = 1\n"


# -- syntax errors ----------------------------------------------------------------------------------------


def test_text_with_syntax_errors_is_refused_with_its_first_diagnostic():
    with pytest.raises(FormatError) as info:
        format_text('let a = 1\ntag "x" when\nlet b = (', "bad.tag")
    err = info.value
    assert err.diagnostics and err.diagnostics[0].code == "TD103"
    assert err.exit_code == 1


def test_invalid_escapes_are_refused_rather_than_rewritten():
    with pytest.raises(FormatError) as info:
        format_text(r'let s = "a\qb"')
    assert info.value.diagnostics[0].code == "TD102"


# -- trees built in code --------------------------------------------------------------------------------


def strip_parens(node):
    """The tree without Paren nodes (what a tree built in code looks like)."""
    if isinstance(node, A.Paren):
        return strip_parens(node.expr)
    if isinstance(node, (A.Literal, A.Name, A.SourceField, A.TagRef)):
        return node
    if isinstance(node, A.ListExpr):
        return A.ListExpr(tuple(strip_parens(i) for i in node.items))
    if isinstance(node, A.Call):
        return A.Call(node.func, tuple(strip_parens(a) for a in node.args),
                      strip_parens(node.where) if node.where is not None else None,
                      strip_parens(node.within) if node.within is not None else None)
    if isinstance(node, A.Unary):
        return A.Unary(node.op, strip_parens(node.operand))
    if isinstance(node, A.Binary):
        return A.Binary(node.op, strip_parens(node.left), strip_parens(node.right))
    if isinstance(node, A.Between):
        return A.Between(strip_parens(node.operand), strip_parens(node.low), strip_parens(node.high))
    if isinstance(node, A.In):
        return A.In(strip_parens(node.operand), strip_parens(node.options), node.negated)
    if isinstance(node, A.IsMissing):
        return A.IsMissing(strip_parens(node.operand), node.negated)
    raise TypeError(node)


N = A.Name


@pytest.mark.parametrize("tree, text", [
    (A.Binary("*", A.Binary("+", N("a"), N("b")), N("c")), "(a + b) * c"),
    (A.Binary("-", N("a"), A.Binary("-", N("b"), N("c"))), "a - (b - c)"),
    (A.Binary("-", A.Binary("-", N("a"), N("b")), N("c")), "a - b - c"),
    (A.Binary("and", N("a"), A.Binary("or", N("b"), N("c"))), "a and (b or c)"),
    (A.Binary("or", A.Binary("and", N("a"), N("b")), N("c")), "a and b or c"),
    (A.Binary("and", N("a"), A.Binary("and", N("b"), N("c"))), "a and (b and c)"),
    (A.Unary("not", A.Binary("and", N("a"), N("b"))), "not (a and b)"),
    (A.Binary("and", A.Unary("not", N("a")), N("b")), "not a and b"),
    (A.Binary("==", A.Binary("<", N("a"), N("b")), N("c")), "(a < b) == c"),
    (A.Binary("==", N("a"), A.Unary("not", N("b"))), "a == (not b)"),
    (A.Unary("-", A.Binary("*", N("a"), N("b"))), "-(a * b)"),
    (A.Unary("-", A.Unary("-", N("a"))), "- -a"),
    (A.Between(A.Binary("+", N("a"), A.Literal(1, "int")), N("b"), A.Binary("and", N("c"), N("d"))),
     "a + 1 between b and (c and d)"),
    (A.In(A.Unary("not", N("a")), A.ListExpr((A.Binary("or", N("b"), N("c")),))), "(not a) in [b or c]"),
    (A.IsMissing(A.Binary("==", N("a"), N("b")), True), "(a == b) is not missing"),
    (A.Call("count", (N("orders"),), A.Binary("or", N("p"), N("q")), A.Literal(A.Duration(30, "d"), "duration")),
     "count(orders where p or q within 30d)"),
])
def test_trees_built_in_code_get_parentheses_exactly_where_precedence_needs_them(tree, text):
    assert format_expr(tree) == text
    parsed = parse_ok(f'tag "t" when {text}').statements[0].condition
    assert strip_parens(parsed) == tree


def test_a_negative_literal_built_in_code_reads_back_as_unary_minus():
    tree = A.Binary("-", N("a"), A.Literal(-5, "int"))
    assert format_expr(tree) == "a - -5"
    parsed = parse_ok('tag "t" when a - -5').statements[0].condition
    assert parsed == A.Binary("-", N("a"), A.Unary("-", A.Literal(5, "int")))


def test_syntax_equal_ignores_spans_but_not_structure():
    assert syntax_equal(parse_ok("let a = (1)"), parse_ok("let  a =\n ( 1 )  # c"))
    assert not syntax_equal(parse_ok("let a = (1)"), parse_ok("let a = 1"))
    assert not syntax_equal(parse_ok("let a = 1.0"), parse_ok("let a = 1"))
    assert not syntax_equal(parse_ok('tag "a" manual {}'), parse_ok('tag "a" manual'))


def test_module_built_in_code():
    module = A.Module("m", (
        A.LetStmt("x", A.Binary("+", A.Literal(1, "int"), A.Literal(2, "int"))),
        A.TagStmt("新客", A.Binary("==", A.Call("count", (N("orders"),)), A.Literal(0, "int")),
                  attributes=(A.AttributeItem("priority", A.Literal(-3, "int")),), has_block=True),
        A.GroupStmt("g", True, (A.TagStmt("a", N("x")),)),
        A.AudienceStmt("人群", A.TagRef("新客")),
    ))
    out = format_module(module)
    assert out == ('let x = 1 + 2\n\ntag "新客" when count(orders) == 0 {\n  priority -3\n}\n\n'
                   'group "g" exclusive {\n  tag "a" when x\n}\n\naudience "人群" = tag("新客")\n')
    assert parse_ok(out) == A.Module("t.tag", module.statements)


def test_very_long_chains_format_without_recursion():
    text = 'tag "t" when ' + " or ".join(f"a{i} > {i}" for i in range(390))
    out = fmt(text)
    assert out.count("\n    or ") == 389


# -- the shipped rulesets ----------------------------------------------------------------------------------


SHIPPED = sorted(shipped_rulesets_dir().glob("*.tag"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_rulesets_format_idempotently_and_keep_their_meaning(path):
    text = path.read_text(encoding="utf-8")
    out = fmt(text)
    assert comment_texts(out) == comment_texts(text)


# -- the command line -------------------------------------------------------------------------------------

MESSY = 'tag"新客"when count(orders)==0 # 首单前\n'
CANONICAL = 'tag "新客" when count(orders) == 0  # 首单前\n'


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.tag").write_text(MESSY, encoding="utf-8")
    (rules / "b.tag").write_text(CANONICAL, encoding="utf-8")
    return tmp_path


def run(*args):
    return CliRunner().invoke(main, ["fmt", *args])


def test_fmt_rewrites_changed_files_only(project):
    untouched = project / "rules" / "b.tag"
    before = untouched.stat()
    result = run("rules")
    assert result.exit_code == 0, result.output
    assert (project / "rules" / "a.tag").read_text(encoding="utf-8") == CANONICAL
    after = untouched.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "reformatted rules/a.tag" in result.stderr
    assert "b.tag" not in result.output
    assert not list(project.rglob("*.tmp"))
    # Once formatted, nothing changes.
    assert run("rules").exit_code == 0
    assert run("--check", "rules").exit_code == 0


def test_fmt_keeps_file_mode_bom_and_crlf(project):
    path = project / "rules" / "a.tag"
    path.write_bytes(b"\xef\xbb\xbf" + MESSY.replace("\n", "\r\n").encode("utf-8"))
    path.chmod(0o640)
    assert run(str(path)).exit_code == 0
    assert path.read_bytes() == b"\xef\xbb\xbf" + CANONICAL.replace("\n", "\r\n").encode("utf-8")
    assert path.stat().st_mode & 0o777 == 0o640


def test_check_lists_files_that_would_change_and_changes_nothing(project):
    result = run("--check", "rules")
    assert result.exit_code == 1
    assert result.stdout == "would reformat rules/a.tag\n"
    assert (project / "rules" / "a.tag").read_text(encoding="utf-8") == MESSY


def test_diff_prints_a_unified_diff_and_changes_nothing(project):
    result = run("--diff", "rules")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "--- a/rules/a.tag", "+++ b/rules/a.tag", "@@ -1 +1 @@", "-" + MESSY.rstrip("\n"), "+" + CANONICAL.rstrip("\n")]
    assert (project / "rules" / "a.tag").read_text(encoding="utf-8") == MESSY
    both = run("--check", "--diff", "rules")
    assert both.exit_code == 1 and both.stdout.endswith("would reformat rules/a.tag\n")


def test_diff_marks_a_missing_final_newline(project):
    (project / "rules" / "a.tag").write_text("let a=1", encoding="utf-8")
    result = run("--diff", "rules/a.tag")
    assert "-let a=1\n\\ No newline at end of file\n+let a = 1\n" in result.stdout


def test_a_file_with_syntax_errors_is_left_untouched_and_others_are_formatted(project):
    bad = project / "rules" / "bad.tag"
    bad_text = 'let a = 1\ntag "x" when count(orders) == \n'
    bad.write_text(bad_text, encoding="utf-8")
    result = run("rules")
    assert result.exit_code == 1
    assert bad.read_text(encoding="utf-8") == bad_text
    assert (project / "rules" / "a.tag").read_text(encoding="utf-8") == CANONICAL
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("rules/bad.tag:")]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("rules/bad.tag:2:") and " TD100 " in error_lines[0]
    assert "Traceback" not in result.output


def test_a_file_that_is_not_utf8_is_reported_and_left_alone(project):
    bad = project / "rules" / "gbk.tag"
    data = 'tag "新客" when true\n'.encode("gbk")
    bad.write_bytes(data)
    result = run("rules/gbk.tag")
    assert result.exit_code == 1
    assert result.stderr.startswith("rules/gbk.tag:1:") and "TD106" in result.stderr
    assert bad.read_bytes() == data


def test_a_nonexistent_path_exits_2(project):
    result = run("rules/nope.tag")
    assert result.exit_code == 2
    assert "rules/nope.tag: no such file or directory" in result.stderr
    assert (project / "rules" / "a.tag").read_text(encoding="utf-8") == MESSY


def test_without_paths_the_configured_rulesets_are_formatted(project):
    (project / "tagdsl.toml").write_text('[project]\nrulesets = ["rules"]\n', encoding="utf-8")
    result = run("--check")
    assert result.exit_code == 1 and result.stdout == "would reformat rules/a.tag\n"
    other = project / "other"
    other.mkdir()
    (other / "cfg.toml").write_text('[project]\nrulesets = ["../rules/b.tag"]\n', encoding="utf-8")
    assert run("--check", "--config", "other/cfg.toml").exit_code == 0
    missing = run("--config", "other/missing.toml")
    assert missing.exit_code == 2 and "configuration file not found" in missing.stderr


def test_format_file_reports_without_writing(project):
    result = format_file(project / "rules" / "a.tag")
    assert result.changed and result.formatted == CANONICAL.encode("utf-8")
    assert (project / "rules" / "a.tag").read_text(encoding="utf-8") == MESSY


def test_a_symlink_is_followed_and_its_target_rewritten(project):
    target = project / "rules" / "a.tag"
    link = project / "link.tag"
    link.symlink_to(target)
    assert run("link.tag").exit_code == 0
    assert link.is_symlink()
    assert target.read_text(encoding="utf-8") == CANONICAL


def test_an_internal_formatter_error_is_one_line_and_leaves_the_file(project, monkeypatch):
    import tagdsl.format as F

    def broken(text, path="<string>", *, verify=True):
        raise RuntimeError("boom")

    monkeypatch.setattr(F, "format_text", broken)
    result = run("rules")
    assert result.exit_code == 2
    assert "internal error while formatting (RuntimeError: boom)" in result.stderr
    assert "Traceback" not in result.output
    assert (project / "rules" / "a.tag").read_text(encoding="utf-8") == MESSY


def test_diff_splits_lines_only_at_newlines(project):
    (project / "rules" / "a.tag").write_text("let a=1\f let b=2\n", encoding="utf-8")
    result = run("--diff", "rules/a.tag")
    assert result.stdout.split("\n")[2:] == ["@@ -1 +1,2 @@", "-let a=1\f let b=2", "+let a = 1", "+let b = 2", ""]
