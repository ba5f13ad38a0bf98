"""Diagnostic output: one emitter per format (as in ruff), and the rule reference.

- ``text``: ``file:line:col: CODE severity: message``, the source line with a
  caret underline (CJK characters are two columns wide, tabs four), the hint,
  then a summary line;
- ``json``: a list of objects with 1-based positions;
- ``sarif``: SARIF 2.1.0 for GitHub code scanning;
- ``github``: GitHub Actions workflow commands (annotations).

Colour is the caller's choice: pass ``style`` (e.g. ``click.style``) only when
writing to a terminal. This module never imports click.
"""

from __future__ import annotations

import difflib
import json
import os
import unicodedata
from typing import Callable, Iterable, Mapping, Optional
from urllib.parse import quote

from .diagnostics import RULES, Diagnostic, Rule, Severity
from .spans import SourceFile, Span, display_width

Style = Callable[..., str]
FORMATS = ("text", "json", "sarif", "github")
TAB_WIDTH = 4
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def _plain(text: str, **_kwargs) -> str:
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- text ---------------------------------------------------------------------------


def _visible(ch: str) -> str:
    """How one source character is drawn in a snippet: tabs as spaces, control
    and invisible characters as escapes (a raw U+202E would reorder the line)."""
    if ch == "\t":
        return " " * TAB_WIDTH
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"):
        return f"\\u{ord(ch):04x}"
    return ch


def _drawn(text: str) -> str:
    return "".join(_visible(c) for c in text)


# A snippet line is cut to about this many display columns around the span: a
# generated or minified rule file may hold a 10,000-character line.
SNIPPET_WIDTH = 120
SNIPPET_BEFORE = 40


def _window(line: str, start: int) -> tuple[int, int]:
    """The [from, to) character range of ``line`` to draw: all of it when it
    fits, else SNIPPET_BEFORE columns before ``start`` and the rest up to
    SNIPPET_WIDTH columns."""
    if display_width(_drawn(line)) <= SNIPPET_WIDTH:
        return 0, len(line)
    lo, used = min(start, len(line)), 0
    while lo > 0 and used + display_width(_drawn(line[lo - 1])) <= SNIPPET_BEFORE:
        lo -= 1
        used += display_width(_drawn(line[lo]))
    hi, used = lo, 0
    while hi < len(line) and used + display_width(_drawn(line[hi])) <= SNIPPET_WIDTH:
        used += display_width(_drawn(line[hi]))
        hi += 1
    return lo, hi


def snippet(span: Span, source: Optional[SourceFile], style: Style = _plain, color: str = "red") -> list[str]:
    """The source line of ``span`` (cut around the span when very long) and a
    caret line under the spanned text."""
    if source is None or span.line < 1:
        return []
    line = source.line_text(span.line)
    start = max(span.column - 1, 0)
    end = span.end_column - 1 if span.end_line == span.line else len(line)
    end = max(min(end, len(line)), start)
    lo, hi = _window(line, start)
    head = "..." if lo > 0 else ""
    tail = "..." if hi < len(line) else ""
    shown_end = max(min(end, hi), min(start, hi))
    pad = display_width(head + _drawn(line[lo:start])) + max(0, start - len(line))  # past the end: e.g. at EOF
    width = max(display_width(_drawn(line[start:shown_end])), 1)
    gutter = str(span.line)
    blank = " " * len(gutter)
    return [
        f"{style(gutter, fg='blue', bold=True)} {style('|', fg='blue', bold=True)} "
        f"{head}{_drawn(line[lo:hi])}{tail}".rstrip(),
        f"{blank} {style('|', fg='blue', bold=True)} {' ' * pad}{style('^' * width, fg=color, bold=True)}",
    ]


def format_diagnostic(d: Diagnostic, source: Optional[SourceFile], style: Style = _plain) -> str:
    color = "red" if d.severity is Severity.ERROR else "yellow"
    head = (f"{style(f'{d.span.file}:{d.span.line}:{d.span.column}:', bold=True)} "
            f"{style(f'{d.code} {d.severity.value}:', fg=color, bold=True)} {d.message}")
    lines = [head, *snippet(d.span, source, style, color)]
    if d.hint:
        indent = " " * (len(str(d.span.line)) + 1) if lines[1:] else "  "
        lines.append(f"{indent}{style('= hint:', fg='cyan', bold=True)} {d.hint}")
    return "\n".join(lines)


def summary_line(diagnostics: list[Diagnostic]) -> str:
    if not diagnostics:
        return "All checks passed."
    errors = sum(1 for d in diagnostics if d.severity is Severity.ERROR)
    warnings = len(diagnostics) - errors
    parts = [_plural(n, word) for n, word in ((errors, "error"), (warnings, "warning")) if n]
    files = len({d.span.file for d in diagnostics})
    return f"Found {' and '.join(parts)} in {_plural(files, 'file')}."


def format_text(diagnostics: list[Diagnostic], sources: Mapping[str, SourceFile] | None = None,
                style: Optional[Style] = None) -> str:
    style = style or _plain
    sources = sources or {}
    blocks = [format_diagnostic(d, sources.get(d.span.file), style) for d in diagnostics]
    summary = summary_line(diagnostics)
    return "\n\n".join([*blocks, summary]) + "\n"


# -- json -------------------------------------------------------------------------------


def diagnostic_dict(d: Diagnostic) -> dict:
    s = d.span
    return {"file": s.file, "line": s.line, "column": s.column, "end_line": s.end_line,
            "end_column": s.end_column, "code": d.code, "severity": d.severity.value,
            "message": d.message, "hint": d.hint}


def format_json(diagnostics: list[Diagnostic]) -> str:
    return json.dumps([diagnostic_dict(d) for d in diagnostics], ensure_ascii=False, indent=2) + "\n"


def _with_hint(d: Diagnostic) -> str:
    """The message with its fix, for formats that have one text per result."""
    return d.message + (f" (hint: {d.hint})" if d.hint else "")


# -- sarif ------------------------------------------------------------------------------


def _uri(path: str) -> str:
    """A relative URI reference with forward slashes (absolute paths become file: URIs)."""
    posix = path.replace(os.sep, "/").replace("\\", "/")
    if os.path.isabs(path) or posix.startswith("/"):
        return "file://" + quote(posix if posix.startswith("/") else "/" + posix, safe="/-._~:")
    return quote(posix, safe="/-._~")


def rule_help_markdown(rule: Rule) -> str:
    parts = [rule.summary]
    if rule.why:
        parts.append(f"Why: {rule.why}")
    if rule.bad:
        parts.append(f"Bad:\n\n```\n{rule.bad}\n```")
    if rule.good:
        parts.append(f"Good:\n\n```\n{rule.good}\n```")
    return "\n\n".join(parts)


def rule_help_text(rule: Rule) -> str:
    parts = [rule.summary]
    if rule.why:
        parts.append(f"Why: {rule.why}")
    if rule.bad:
        parts.append("Bad:\n" + _indent(rule.bad))
    if rule.good:
        parts.append("Good:\n" + _indent(rule.good))
    return "\n\n".join(parts)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def sarif_log(diagnostics: list[Diagnostic], version: str | None = None) -> dict:
    from . import __version__

    used = sorted({d.code for d in diagnostics})
    rule_index = {code: i for i, code in enumerate(used)}
    rules = []
    for code in used:
        rule = RULES[code]
        rules.append({
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "fullDescription": {"text": rule.why or rule.summary},
            "help": {"text": rule_help_text(rule), "markdown": rule_help_markdown(rule)},
            "defaultConfiguration": {"level": rule.severity.value},
        })
    results = []
    for d in diagnostics:
        s = d.span
        text = _with_hint(d)
        results.append({
            "ruleId": d.code,
            "ruleIndex": rule_index[d.code],
            "level": d.severity.value,
            "message": {"text": text},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": _uri(s.file)},
                    "region": {"startLine": s.line, "startColumn": s.column,
                               "endLine": s.end_line, "endColumn": max(s.end_column, s.column)},
                },
            }],
        })
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tagdsl",
                "version": version or __version__,
                "rules": rules,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }


def format_sarif(diagnostics: list[Diagnostic]) -> str:
    return json.dumps(sarif_log(diagnostics), ensure_ascii=False, indent=2) + "\n"


# -- github -------------------------------------------------------------------------------


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(diagnostics: list[Diagnostic]) -> str:
    lines = []
    for d in diagnostics:
        s = d.span
        props = [f"file={_escape_property(s.file.replace(os.sep, '/'))}", f"line={s.line}"]
        # GitHub accepts columns only for annotations on a single line.
        if s.end_line == s.line:
            props.append(f"col={s.column}")
        props.append(f"endLine={s.end_line}")
        if s.end_line == s.line:
            props.append(f"endColumn={max(s.end_column, s.column)}")
        props.append(f"title={_escape_property(d.code)}")
        lines.append(f"::{d.severity.value} {','.join(props)}::{_escape_data(_with_hint(d))}")
    return "".join(line + "\n" for line in lines)


# -- dispatch ---------------------------------------------------------------------------------


def render(fmt: str, diagnostics: list[Diagnostic], sources: Mapping[str, SourceFile] | None = None,
           style: Optional[Style] = None) -> str:
    """The whole output of ``tagdsl lint --format fmt``."""
    if fmt == "text":
        return format_text(diagnostics, sources, style)
    if fmt == "json":
        return format_json(diagnostics)
    if fmt == "sarif":
        return format_sarif(diagnostics)
    if fmt == "github":
        return format_github(diagnostics)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def exit_status(diagnostics: Iterable[Diagnostic], strict: bool = False) -> int:
    """0: clean (warnings allowed unless strict); 1: errors (or warnings under strict)."""
    diagnostics = list(diagnostics)
    if any(d.severity is Severity.ERROR for d in diagnostics):
        return 1
    if strict and diagnostics:
        return 1
    return 0


# -- the rule reference -------------------------------------------------------------------------


def find_rule(query: str) -> Optional[Rule]:
    """A rule by code (any case) or by name."""
    q = query.strip()
    if q.upper() in RULES:
        return RULES[q.upper()]
    for rule in RULES.values():
        if rule.name == q.lower():
            return rule
    return None


def suggest_rule(query: str) -> str:
    """The closest code or name, for "did you mean"."""
    q = query.strip()
    candidates = [*RULES, *(r.name for r in RULES.values())]
    found = difflib.get_close_matches(q.upper() if q[:2].lower() == "td" else q.lower(), candidates, n=1, cutoff=0.0)
    return found[0] if found else next(iter(RULES))


def rules_listing() -> str:
    width = max(len(r.name) for r in RULES.values())
    return "".join(f"{r.code}  {r.severity.value:<7}  {r.name:<{width}}  {r.summary}\n" for r in RULES.values())


def explain_rule(rule: Rule) -> str:
    lines = [f"{rule.code} {rule.name} ({rule.severity.value})", "", rule.summary]
    if rule.why:
        lines += ["", f"Why: {rule.why}"]
    if rule.bad:
        lines += ["", "Bad:", _indent(rule.bad)]
    if rule.good:
        lines += ["", "Good:", _indent(rule.good)]
    return "\n".join(lines) + "\n"


def rules_markdown() -> str:
    """docs/rules.md, generated from the registry (a test keeps the file equal to this)."""
    out = [
        "# Rule reference",
        "",
        "<!-- Generated by tagdsl.report.rules_markdown() from the registry in tagdsl/diagnostics.py;",
        "     do not edit by hand. Regenerate with: TAGDSL_UPDATE_GOLDEN=1 pytest tests/test_lint_cli.py -->",
        "",
        "Every diagnostic `tagdsl lint` reports has a stable code. Errors stop `apply`; warnings do not",
        "(unless `tagdsl lint --strict`). `tagdsl rules CODE` prints one entry in the terminal.",
        "",
        "| code | name | severity | summary |",
        "| --- | --- | --- | --- |",
    ]
    for r in RULES.values():
        out.append(f"| [{r.code}](#{r.code.lower()}) | {r.name} | {r.severity.value} | {_md_cell(r.summary)} |")
    for r in RULES.values():
        out += ["", f"## {r.code}", "", f"**{r.name}** ({r.severity.value}): {r.summary}"]
        if r.why:
            out += ["", f"Why: {r.why}"]
        if r.bad:
            out += ["", "Bad:", "", "```", r.bad, "```"]
        if r.good:
            out += ["", "Good:", "", "```", r.good, "```"]
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")
