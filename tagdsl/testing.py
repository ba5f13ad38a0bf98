"""`tagdsl test`: unit tests for rulesets, written as ``.tagtest`` files.

A test file declares an as-of instant, followers as fixtures (fields, source
rows such as orders and events, stored manual tags) and expectations (tags a
follower has or has not, audiences it is or is not in, counts over the
file's population). The format is specified in docs/testing.md; it uses the
rule language's lexical style (``#`` comments, ``"…"`` strings, ``30d``
durations, ``datetime("…")``), so operators who write rules can write tests.

Pipeline: ``parse_tagtest`` (text -> ``RawTestFile`` + syntax diagnostics)
-> ``bind`` (names and value types checked against the configuration and the
ruleset -> ``TestFile``) -> ``run_tests`` (a ``Backend`` evaluates every
section; expectations are compared; ``TestReport``) -> ``render_text`` /
``render_json`` / ``render_junit``.

The default backend is the in-memory evaluator (``tagdsl.compile.python``).
``runtime.testing_db`` provides one that loads the same fixtures into a
database and evaluates through the SQL compiler. This module never imports
the runtime.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .config import Config, FieldSpec, FieldType, load_config
from .diagnostics import Diagnostic, RulesetError, Severity, TagDSLError
from .loader import Analysis, analyze, display_path
from .parser import decode_source, unescape
from .parser import _FULLWIDTH as _RULE_FULLWIDTH
from .schema import ID_LENGTH
from .spans import SourceFile, Span, display_width

TEST_SUFFIX = ".tagtest"
RULE_SUFFIX = ".tag"
MAX_ERRORS_PER_FILE = 25

# Diagnostic codes of test files. They are not rule-file lint codes (TDxxx),
# so they live here rather than in the lint registry; docs/testing.md lists them.
TEST_CODES = {
    "TT100": "syntax error in a test file",
    "TT101": "unterminated string",
    "TT200": "unknown name: field, source, tag or audience",
    "TT300": "a value does not fit the field's type, or an invalid date/time",
    "TT400": "invalid structure: missing as_of, duplicate follower, misplaced statement",
}


# -- diagnostics -------------------------------------------------------------------------------


class _Errors:
    def __init__(self, source: SourceFile):
        self.source = source
        self.items: list[Diagnostic] = []

    def add(self, code: str, message: str, span: Span, hint: Optional[str] = None) -> None:
        self.items.append(Diagnostic(code, Severity.ERROR, message, span, hint))


def _suggest(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> Optional[str]:
    # Tag names are short Chinese words: one wrong character of two is a 0.5 ratio.
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return f"did you mean `{found[0]}`?" if found else None


# -- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n\f\u3000]+)
  | (?P<comment>\#[^\n]*)
  | (?P<STRING>"(?:[^"\\\n\r]|\\.)*")
  | (?P<DURATION>\d+[wdhms](?!\w))
  | (?P<DECIMAL>\d+\.\d+(?![\w.]))
  | (?P<INT>\d+(?![\w.]))
  | (?P<IDENT>[^\W\d]\w*)
  | (?P<OP>==|!=|<=|>=|<|>)
  | (?P<PUNCT>[=(){},+\-])
""", re.X)

# Full-width punctuation typed by Chinese input methods (the rule parser's
# table, plus the signs used in relative times).
_FULLWIDTH = {**_RULE_FULLWIDTH, "－": "-", "＋": "+"}
_DURATION_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class _Tok:
    kind: str  # STRING DURATION DECIMAL INT IDENT OP PUNCT EOF
    text: str
    start: int
    end: int


class _SyntaxError(Exception):
    def __init__(self, code: str, message: str, start: int, end: int, hint: Optional[str] = None):
        super().__init__(message)
        self.code, self.message, self.start, self.end, self.hint = code, message, start, end, hint


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch == '"':
                end = text.find("\n", pos)
                end = n if end < 0 else end
                raise _SyntaxError("TT101", "unterminated string", pos, end, 'close the string with `"` on the same line')
            if ch in _FULLWIDTH:
                raise _SyntaxError("TT100", f"full-width `{ch}` is not test-file punctuation", pos, pos + 1,
                                   f"use the ASCII `{_FULLWIDTH[ch]}` (switch the input method to half-width)")
            if ch.isdigit():
                lit = re.compile(r"[\w.]+").match(text, pos).group()
                raise _SyntaxError("TT100", f"malformed number or duration `{lit}`", pos, pos + len(lit),
                                   "numbers are 12 or 12.5; durations are a whole number with w, d, h, m or s (e.g. 30d)")
            if ch == "'":
                raise _SyntaxError("TT100", "strings use double quotes", pos, pos + 1, 'write "…" instead of \'…\'')
            shown = ch if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}"
            raise _SyntaxError("TT100", f"unexpected character `{shown}`", pos, pos + 1, "remove it")
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            tokens.append(_Tok(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    tokens.append(_Tok("EOF", "", n, n))
    return tokens


# -- the raw syntax tree (before names and types are checked) --------------------------------------


@dataclass
class RawValue:
    """kind: string | number | bool | missing | time. ``value``: str, Decimal
    (numbers keep their text exactly; ``is_int`` says whether it was written
    without a decimal point), bool, None, or a ``RawTime``."""

    kind: str
    value: object
    span: Span
    is_int: bool = False


@dataclass
class RawTime:
    """An instant: ``base`` None means the section's as-of; otherwise an
    absolute datetime (naive, project time zone) or date. ``offset``: seconds."""

    base: object
    offset: int
    is_date: bool = False  # written as a bare date("…") (no offset)


@dataclass
class RawRow:
    source: str
    source_span: Span
    at: Optional[RawValue]
    fields: list[tuple[str, Span, RawValue]]
    span: Span


@dataclass
class Expectation:
    kind: str  # "tag" | "audience"
    mode: str  # "has" | "not" | "only"
    names: tuple[str, ...]
    name_spans: tuple[Span, ...]
    span: Span

    def text(self) -> str:
        mode = {"has": "", "not": "not ", "only": "only "}[self.mode]
        return f"expect {mode}{self.kind} " + ", ".join(_quote(n) for n in self.names)


@dataclass
class CountExpectation:
    kind: str  # "tag" | "audience"
    name: str
    op: str
    value: int
    span: Span
    name_span: Span

    def text(self) -> str:
        return f"expect count {self.kind} {_quote(self.name)} {self.op} {self.value}"


@dataclass
class RawFollower:
    name: str
    name_span: Span
    span: Span
    fields: list[tuple[str, Span, RawValue]] = field(default_factory=list)
    rows: list[RawRow] = field(default_factory=list)
    manual: list[tuple[str, Span]] = field(default_factory=list)
    expectations: list[Expectation] = field(default_factory=list)


@dataclass
class RawSection:
    as_of: Optional[RawValue]
    span: Span
    followers: list[RawFollower] = field(default_factory=list)
    counts: list[CountExpectation] = field(default_factory=list)


@dataclass
class RawTestFile:
    path: str
    source: SourceFile
    sections: list[RawSection]


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


# -- parser ---------------------------------------------------------------------------------------

_TOP_KEYWORDS = ("as_of", "follower", "expect")


class _Parser:
    def __init__(self, text: str, path: str, tz):
        self.source = SourceFile(path, text)
        self.errors = _Errors(self.source)
        self.tz = tz
        self.tokens = _tokenize(text)
        self.i = 0

    # -- token helpers ----------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.tokens[self.i]

    def peek(self, k: int = 1) -> _Tok:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> _Tok:
        t = self.tokens[self.i]
        if self.i < len(self.tokens) - 1:
            self.i += 1
        return t

    def span(self, start: int, end: int) -> Span:
        return self.source.span(start, end)

    def tspan(self, t: _Tok) -> Span:
        return self.source.span(t.start, t.end)

    def is_word(self, word: str, t: Optional[_Tok] = None) -> bool:
        t = t or self.tok
        return t.kind == "IDENT" and t.text == word

    def fail(self, expected: str, t: Optional[_Tok] = None, hint: Optional[str] = None):
        t = t or self.tok
        found = "end of file" if t.kind == "EOF" else f"`{t.text}`"
        raise _SyntaxError("TT100", f"expected {expected}, found {found}", t.start, max(t.end, t.start), hint)

    def expect_punct(self, ch: str) -> _Tok:
        if self.tok.kind == "PUNCT" and self.tok.text == ch:
            return self.advance()
        self.fail(f"`{ch}`")

    def expect_word(self, word: str) -> _Tok:
        if self.is_word(word):
            return self.advance()
        self.fail(f"`{word}`")

    def string(self) -> tuple[str, Span]:
        t = self.tok
        if t.kind != "STRING":
            hint = f'write "{t.text}"' if t.kind == "IDENT" else None
            self.fail("a quoted name", t, hint)
        self.advance()
        return self.unescape(t), self.tspan(t)

    def unescape(self, t: _Tok) -> str:
        base = t.start + 1

        def invalid(esc: str, offset: int) -> str:
            start = base + offset
            raise _SyntaxError("TT100", f"invalid escape `\\{esc}` in string", start, start + 1 + len(esc),
                               r'use \" \\ \n \t or \uXXXX')

        return unescape(t.text[1:-1], invalid)

    # -- file ---------------------------------------------------------------------------------
    def parse(self) -> RawTestFile:
        sections: list[RawSection] = []
        current: Optional[RawSection] = None
        while self.tok.kind != "EOF":
            start = self.i
            try:
                t = self.tok
                if self.is_word("as_of"):
                    self.advance()
                    value = self.instant()
                    current = RawSection(value, self.span(t.start, self.tokens[self.i - 1].end))
                    sections.append(current)
                elif self.is_word("follower"):
                    follower = self.follower()
                    if current is None:
                        self.errors.add("TT400", "a follower before any `as_of`", follower.name_span,
                                        'start the file with the instant the rules are evaluated at, e.g. '
                                        'as_of datetime("2026-11-22T10:00:00")')
                        current = RawSection(None, follower.span)
                        sections.append(current)
                    current.followers.append(follower)
                elif self.is_word("expect"):
                    count = self.count_expectation()
                    if current is None:
                        self.errors.add("TT400", "an expectation before any `as_of`", count.span,
                                        "count expectations follow the followers of their as_of section")
                        current = RawSection(None, count.span)
                        sections.append(current)
                    current.counts.append(count)
                else:
                    hint = None
                    if t.kind == "IDENT" and self.peek().kind == "PUNCT" and self.peek().text in ("=", "{"):
                        hint = f"`{t.text}` belongs inside a follower block: follower \"名字\" {{ … }}"
                    self.fail("`as_of`, `follower` or `expect count`", t, hint)
            except _SyntaxError as exc:
                self.errors.add(exc.code, exc.message, self.span(exc.start, exc.end), exc.hint)
                if len(self.errors.items) >= MAX_ERRORS_PER_FILE:
                    break
                self.resync(start)
        return RawTestFile(self.source.path, self.source, sections)

    def resync(self, start: int) -> None:
        """Skip to the next `as_of`/`follower` that starts a line (after an error)."""
        self.i = max(self.i, start + 1)
        while self.tok.kind != "EOF":
            t = self.tok
            if t.kind == "IDENT" and t.text in ("as_of", "follower") and self._starts_line(t):
                return
            self.advance()

    def _starts_line(self, t: _Tok) -> bool:
        text = self.source.text
        line_start = text.rfind("\n", 0, t.start) + 1
        return text[line_start:t.start].strip(" \t\u3000") == ""

    # -- statements ---------------------------------------------------------------------------
    def follower(self) -> RawFollower:
        head = self.expect_word("follower")
        name, name_span = self.string()
        if not name:
            raise _SyntaxError("TT400", "a follower needs a non-empty name (it is its openid)",
                               name_span.start, name_span.end, 'e.g. follower "小王" { … }')
        if len(name) > ID_LENGTH:
            raise _SyntaxError("TT400", f"a follower's name is its openid: at most {ID_LENGTH} characters, "
                               f"not {len(name)}", name_span.start, name_span.end, "shorten it")
        self.expect_punct("{")
        f = RawFollower(name, name_span, name_span)
        while not (self.tok.kind == "PUNCT" and self.tok.text == "}"):
            if self.tok.kind == "EOF":
                self.fail("`}` to close the follower block")
            self.member(f)
        close = self.advance()
        f.span = self.span(head.start, close.end)
        return f

    def member(self, f: RawFollower) -> None:
        t = self.tok
        nxt = self.peek()
        if t.kind != "IDENT":
            self.fail("a field (`city = \"广州\"`), a row (`orders at -3d { … }`), `manual` or `expect`", t)
        if nxt.kind == "PUNCT" and nxt.text == "=":
            self.advance()
            self.advance()
            f.fields.append((t.text, self.tspan(t), self.value()))
            return
        if t.text == "manual":
            self.advance()
            while True:
                f.manual.append(self.string())
                if not self.comma():
                    break
            return
        if t.text == "expect":
            f.expectations.append(self.expectation())
            return
        if self.is_word("at", nxt) or (nxt.kind == "PUNCT" and nxt.text == "{"):
            f.rows.append(self.row())
            return
        if nxt.kind == "OP" and nxt.text == "==":
            raise _SyntaxError("TT100", "fields are set with `=`, not `==`", nxt.start, nxt.end,
                               f"write {t.text} = …")
        self.fail(f"`=` after the field `{t.text}`, or `at`/`{{` after a source name", nxt)

    def comma(self) -> bool:
        if self.tok.kind == "PUNCT" and self.tok.text == ",":
            self.advance()
            return True
        return False

    def row(self) -> RawRow:
        src = self.advance()
        at = None
        if self.is_word("at"):
            self.advance()
            at = self.time_value()
        self.expect_punct("{")
        fields = []
        while not (self.tok.kind == "PUNCT" and self.tok.text == "}"):
            t = self.tok
            if t.kind != "IDENT":
                self.fail("a field of the row (`amount = 128.00`) or `}`", t)
            self.advance()
            if not (self.tok.kind == "PUNCT" and self.tok.text == "="):
                self.fail(f"`=` after `{t.text}`", self.tok)
            self.advance()
            fields.append((t.text, self.tspan(t), self.value()))
            self.comma()
        close = self.advance()
        return RawRow(src.text, self.tspan(src), at, fields, self.span(src.start, close.end))

    def expectation(self) -> Expectation:
        head = self.expect_word("expect")
        mode = "has"
        if self.is_word("not") or self.is_word("only"):
            mode = "not" if self.advance().text == "not" else "only"
        if self.is_word("count"):
            raise _SyntaxError("TT400", "`expect count` is about the whole population, not one follower",
                               self.tok.start, self.tok.end, "move it after the follower blocks of its section")
        if not (self.is_word("tag") or self.is_word("audience")):
            hint = None
            if self.tok.kind == "STRING":
                hint = f"write expect {'' if mode == 'has' else mode + ' '}tag {self.tok.text}"
            self.fail("`tag` or `audience`", self.tok, hint)
        kind = self.advance().text
        if mode == "only" and kind != "tag":
            raise _SyntaxError("TT400", "`expect only` lists tags", head.start, self.tokens[self.i - 1].end,
                               "list the audiences with expect audience … and expect not audience …")
        names, spans = [], []
        while True:
            name, span = self.string()
            names.append(name)
            spans.append(span)
            if not self.comma():
                break
        return Expectation(kind, mode, tuple(names), tuple(spans), self.span(head.start, spans[-1].end))

    def count_expectation(self) -> CountExpectation:
        head = self.expect_word("expect")
        if not self.is_word("count"):
            hint = None
            if self.is_word("tag") or self.is_word("audience") or self.is_word("not") or self.is_word("only"):
                hint = "expectations about one follower go inside its follower block"
            self.fail("`count` (top-level expectations count followers: expect count audience \"…\" == 2)",
                      self.tok, hint)
        self.advance()
        if not (self.is_word("tag") or self.is_word("audience")):
            self.fail("`tag` or `audience`")
        kind = self.advance().text
        name, name_span = self.string()
        if self.tok.kind != "OP":
            self.fail("a comparison (== != < <= > >=)")
        op = self.advance().text
        if self.tok.kind != "INT":
            self.fail("a whole number")
        value = self.advance()
        return CountExpectation(kind, name, op, int(value.text), self.span(head.start, value.end), name_span)

    # -- values --------------------------------------------------------------------------------
    def instant(self) -> RawValue:
        """date("…") or datetime("…")."""
        t = self.tok
        if not (self.is_word("datetime", t) or self.is_word("date", t)):
            hint = None
            if t.kind == "STRING":
                hint = f"write datetime({t.text})"
            elif t.kind == "PUNCT" and t.text in "+-":
                hint = "as_of is absolute; the fixtures' times are relative to it"
            self.fail('datetime("YYYY-MM-DDTHH:MM:SS") or date("YYYY-MM-DD")', t, hint)
        func = self.advance().text
        self.expect_punct("(")
        s = self.tok
        if s.kind != "STRING":
            self.fail("a quoted date or time")
        self.advance()
        close = self.expect_punct(")")
        text = self.unescape(s)
        span = self.span(t.start, close.end)
        value = self.parse_instant(func, text, s)
        return RawValue("time", RawTime(value, 0, func == "date"), span)

    def parse_instant(self, func: str, text: str, tok: _Tok):
        try:
            if func == "date":
                if len(text) != 10:
                    raise ValueError
                return _dt.date.fromisoformat(text)
            if len(text) < 16:
                raise ValueError
            value = _dt.datetime.fromisoformat(text)
            if value.tzinfo is not None:
                value = value.astimezone(self.tz).replace(tzinfo=None)
            return value
        except ValueError:
            fmt = "YYYY-MM-DD" if func == "date" else "YYYY-MM-DDTHH:MM:SS"
            raise _SyntaxError("TT300", f"invalid {func} `{text}`", tok.start, tok.end,
                               f'write {func}("{fmt}") with a real {"day" if func == "date" else "instant"}')

    def signed_duration(self) -> int:
        sign = self.advance()  # + or -
        t = self.tok
        if t.kind != "DURATION":
            self.fail(f"a duration after `{sign.text}` (e.g. 90d, 12h, 2w)", t)
        self.advance()
        seconds = int(t.text[:-1]) * _DURATION_SECONDS[t.text[-1]]
        return -seconds if sign.text == "-" else seconds

    def offsets(self) -> int:
        total = 0
        while self.tok.kind == "PUNCT" and self.tok.text in ("+", "-") and self.peek().kind == "DURATION":
            total += self.signed_duration()
        return total

    def time_value(self) -> RawValue:
        """An instant: -90d (before the as-of), now, now - 2h, datetime("…") [± durations]."""
        t = self.tok
        start = t.start
        if t.kind == "PUNCT" and t.text in ("+", "-"):
            if self.peek().kind != "DURATION":
                self.fail("a time such as -90d, now or datetime(\"…\")", t)
            offset = self.offsets()
            return RawValue("time", RawTime(None, offset), self.span(start, self.tokens[self.i - 1].end))
        if self.is_word("now"):
            self.advance()
            offset = self.offsets()
            return RawValue("time", RawTime(None, offset), self.span(start, self.tokens[self.i - 1].end))
        if self.is_word("datetime") or self.is_word("date"):
            base = self.instant()
            offset = self.offsets()
            rt = base.value
            return RawValue("time", RawTime(rt.base, offset, rt.is_date and offset == 0),
                            self.span(start, self.tokens[self.i - 1].end))
        hint = None
        if t.kind == "DURATION":
            hint = f"write -{t.text} for {t.text} before the as-of instant (+{t.text} after it)"
        self.fail('a time such as -90d, now - 2h or datetime("2026-06-18T20:00:00")', t, hint)

    def value(self) -> RawValue:
        t = self.tok
        if t.kind == "STRING":
            self.advance()
            return RawValue("string", self.unescape(t), self.tspan(t))
        if t.kind == "PUNCT" and t.text in ("+", "-"):
            nxt = self.peek()
            if nxt.kind in ("INT", "DECIMAL"):
                self.advance()
                self.advance()
                number = Decimal(nxt.text)
                return RawValue("number", -number if t.text == "-" else number, self.span(t.start, nxt.end),
                                nxt.kind == "INT")
            return self.time_value()
        if t.kind in ("INT", "DECIMAL"):
            self.advance()
            return RawValue("number", Decimal(t.text), self.tspan(t), t.kind == "INT")
        if t.kind == "DURATION":
            self.time_value()  # raises with a hint
        if self.is_word("true") or self.is_word("false"):
            self.advance()
            return RawValue("bool", t.text == "true", self.tspan(t))
        if self.is_word("missing"):
            self.advance()
            return RawValue("missing", None, self.tspan(t))
        if self.is_word("now") or self.is_word("datetime") or self.is_word("date"):
            return self.time_value()
        hint = f'strings are quoted: "{t.text}"' if t.kind == "IDENT" else None
        self.fail('a value: "text", 12, 12.50, true, false, missing, or a time such as -90d', t, hint)


def parse_tagtest(text: str, path: str = "<string>", tz=None) -> tuple[RawTestFile, list[Diagnostic]]:
    """Parse one test file. Never raises on bad input: problems are diagnostics."""
    if tz is None:
        tz = Config().tz
    try:
        parser = _Parser(text, path, tz)
    except _SyntaxError as exc:
        source = SourceFile(path, text)
        return RawTestFile(path, source, []), [
            Diagnostic(exc.code, Severity.ERROR, exc.message, source.span(exc.start, exc.end), exc.hint)]
    raw = parser.parse()
    if not raw.sections and not parser.errors.items:
        parser.errors.add("TT400", "the test file declares no `as_of` and no followers", parser.source.span(0, 0),
                          'start with as_of datetime("…") and add follower "…" { … } blocks')
    return raw, parser.errors.items


# -- binding: names and types against the configuration and the ruleset ---------------------------


@dataclass
class FollowerCase:
    """A follower fixture ready for evaluation: values in the evaluator's domain."""

    name: str
    span: Span  # the name in `follower "…"`
    fields: dict  # DSL field -> value (None = missing), every configured field present
    rows: dict  # source -> list of row dicts (every field of the source present, time column included)
    manual: frozenset
    expectations: list[Expectation]
    file: str = ""

    @property
    def line(self) -> int:
        return self.span.line


@dataclass
class Section:
    as_of: _dt.datetime
    span: Span
    followers: list[FollowerCase]
    counts: list[CountExpectation]


@dataclass
class TestFile:
    __test__ = False  # not a pytest test class

    path: str
    source: SourceFile
    sections: list[Section]


class _Binder:
    def __init__(self, config: Config, ruleset, errors: _Errors):
        self.config = config
        self.ruleset = ruleset
        self.errors = errors
        self.fields = dict(config.followers.fields)
        self.id_field = config.followers.id

    def bind(self, raw: RawTestFile) -> TestFile:
        sections = []
        names_seen: dict[str, Span] = {}
        for rs in raw.sections:
            as_of = None
            if rs.as_of is not None:
                as_of = _absolute(rs.as_of.value, None)
            followers = []
            for rf in rs.followers:
                if rf.name in names_seen:
                    first = names_seen[rf.name]
                    self.errors.add("TT400", f"follower `{rf.name}` is already defined at line {first.line}",
                                    rf.name_span, "give each follower of a file its own name")
                    continue
                names_seen[rf.name] = rf.name_span
                case = self.follower(rf, as_of)
                if case is not None:
                    followers.append(case)
            counts = [c for c in rs.counts if self.check_name(c.kind, c.name, c.name_span)]
            if as_of is not None:
                sections.append(Section(as_of, rs.span, followers, counts))
        return TestFile(raw.path, raw.source, sections)

    def check_name(self, kind: str, name: str, span: Span, manual_only: bool = False) -> bool:
        if kind == "tag":
            rule = self.ruleset.tags.get(name)
            if rule is None:
                self.errors.add("TT200", f"no rule defines tag `{name}`", span,
                                _suggest(name, self.ruleset.tags, 0.5) or "check the tag's name in the .tag files")
                return False
            if manual_only and not rule.manual:
                self.errors.add("TT200", f"`{name}` is computed by a rule; a fixture can only store manual tags",
                                span, "remove it: the rule decides whether the follower has it")
                return False
            return True
        if name not in self.ruleset.audiences:
            hint = _suggest(name, self.ruleset.audiences, 0.5)
            if name in self.ruleset.tags:
                hint = f"`{name}` is a tag: write tag \"{name}\""
            self.errors.add("TT200", f"no audience named `{name}`", span, hint or "check the audience's name")
            return False
        return True

    def follower(self, rf: RawFollower, as_of) -> Optional[FollowerCase]:
        ok = True
        fields: dict = {name: None for name in self.fields}
        fields[self.id_field] = rf.name
        seen: dict[str, Span] = {}
        for name, span, raw in rf.fields:
            if name == self.id_field:
                self.errors.add("TT400", f"`{name}` is the follower's id: it is the name in follower \"…\"", span,
                                f'write follower "{raw.value if raw.kind == "string" else "…"}" {{ … }}')
                ok = False
                continue
            spec = self.fields.get(name)
            if spec is None:
                hint = _suggest(name, self.fields)
                if name in self.config.sources:
                    hint = f"`{name}` is a source: add rows with {name} at -3d {{ … }}"
                self.errors.add("TT200", f"unknown follower field `{name}`", span,
                                hint or "declare it under [followers.fields] in tagdsl.toml")
                ok = False
                continue
            if name in seen:
                self.errors.add("TT400", f"`{name}` is set twice (first at line {seen[name].line})", span, "keep one")
                ok = False
                continue
            seen[name] = span
            value = self.coerce(raw, spec, name, as_of)
            if value is _BAD:
                ok = False
                continue
            fields[name] = value
        rows: dict = {name: [] for name in self.config.sources}
        for row in rf.rows:
            bound = self.row(row, as_of)
            if bound is _BAD:
                ok = False
                continue
            rows[row.source].append(bound)
        manual = set()
        for name, span in rf.manual:
            if self.check_name("tag", name, span, manual_only=True):
                manual.add(name)
            else:
                ok = False
        expectations = []
        for e in rf.expectations:
            good = all(self.check_name(e.kind, n, s) for n, s in zip(e.names, e.name_spans))
            if good:
                expectations.append(e)
            ok = ok and good
        if not ok or as_of is None:
            return None
        return FollowerCase(rf.name, rf.name_span, fields, rows, frozenset(manual), expectations)

    def row(self, row: RawRow, as_of):
        src = self.config.sources.get(row.source)
        if src is None:
            hint = _suggest(row.source, self.config.sources)
            if row.source in self.fields:
                hint = f"`{row.source}` is a follower field: write {row.source} = …"
            self.errors.add("TT200", f"unknown source `{row.source}`", row.source_span,
                            hint or f"sources are {', '.join(self.config.sources)}; declare others in tagdsl.toml")
            return _BAD
        out: dict = {name: None for name in src.fields}
        if src.time:
            out[src.time] = None
            if row.at is None:
                self.errors.add("TT400", f"a row of `{row.source}` needs its time: {row.source} at -3d {{ … }}",
                                row.source_span, f"`at` sets {src.time}")
                return _BAD
            value = self.coerce(row.at, FieldSpec(type=FieldType.DATETIME), src.time, as_of)
            if value is _BAD:
                return _BAD
            out[src.time] = value
        elif row.at is not None:
            self.errors.add("TT400", f"source `{row.source}` has no time column, so `at` has no meaning",
                            row.at.span, f"remove `at …`, or set `time` under [sources.{row.source}]")
            return _BAD
        ok = True
        seen: set[str] = set()
        for name, span, raw in row.fields:
            if src.time and name == src.time:
                self.errors.add("TT400", f"`{name}` is the row's time: set it with `at`", span,
                                f"write {row.source} at … {{ … }}")
                ok = False
                continue
            spec = src.fields.get(name)
            if spec is None:
                self.errors.add("TT200", f"`{name}` is not a field of source `{row.source}`", span,
                                _suggest(name, src.fields) or f"fields of {row.source}: {', '.join(src.fields)}")
                ok = False
                continue
            if name in seen:
                self.errors.add("TT400", f"`{name}` is set twice in this row", span, "keep one")
                ok = False
                continue
            seen.add(name)
            value = self.coerce(raw, spec, name, as_of)
            if value is _BAD:
                ok = False
                continue
            out[name] = value
        return out if ok else _BAD

    def coerce(self, raw: RawValue, spec: FieldSpec, name: str, as_of):
        t = spec.type
        if raw.kind == "missing":
            return None
        wanted = {FieldType.STRING: "a quoted string", FieldType.INTEGER: "a whole number",
                  FieldType.DECIMAL: "a number such as 128.00", FieldType.FLOAT: "a number",
                  FieldType.BOOLEAN: "true or false", FieldType.DATE: 'date("YYYY-MM-DD")',
                  FieldType.DATETIME: 'a time such as -90d or datetime("…")'}[t]
        got = {"string": "a string", "number": "a number", "bool": "a boolean", "time": "a time"}[raw.kind]
        if t is FieldType.STRING and raw.kind == "string":
            return raw.value
        if t is FieldType.INTEGER and raw.kind == "number":
            if raw.is_int:
                return int(raw.value)
            got = "a decimal number"
        elif t is FieldType.DECIMAL and raw.kind == "number":
            scale = spec.scale if spec.scale is not None else None
            if scale is not None and raw.value.as_tuple().exponent < -scale:
                self.errors.add("TT300", f"`{name}` has {scale} decimal places; {raw.value} has more", raw.span,
                                f"round it to {scale} places")
                return _BAD
            return raw.value
        elif t is FieldType.FLOAT and raw.kind == "number":
            return float(raw.value)
        elif t is FieldType.BOOLEAN and raw.kind == "bool":
            return raw.value
        elif t is FieldType.DATE and raw.kind == "time":
            rt = raw.value
            if rt.is_date:
                return rt.base
            got = "a time of day"
        elif t is FieldType.DATETIME and raw.kind == "time":
            if as_of is None and raw.value.base is None:
                return _BAD  # reported once: the section has no as_of
            return _absolute(raw.value, as_of)
        article = "an" if t.value[0] in "aeiou" else "a"
        self.errors.add("TT300", f"`{name}` is {article} {t.value} field; expected {wanted}, got {got}", raw.span,
                        'write missing for "no value"' if raw.kind == "string" and raw.value == "" else None)
        return _BAD


_BAD = object()


def _absolute(rt: RawTime, as_of: Optional[_dt.datetime]) -> _dt.datetime:
    base = rt.base
    if base is None:
        base = as_of
    elif not isinstance(base, _dt.datetime):
        base = _dt.datetime(base.year, base.month, base.day)
    return base + _dt.timedelta(seconds=rt.offset)


def bind(raw: RawTestFile, config: Config, ruleset) -> tuple[TestFile, list[Diagnostic]]:
    """Check a parsed test file's names and values against the configuration and ruleset."""
    errors = _Errors(raw.source)
    test_file = _Binder(config, ruleset, errors).bind(raw)
    for section in test_file.sections:
        for f in section.followers:
            f.file = raw.path
    return test_file, errors.items


# -- evaluation backends ---------------------------------------------------------------------------


@dataclass
class Evaluated:
    """What a backend computed for one follower."""

    tags: set[str]  # computed tags whose effective condition holds
    audiences: set[str]


class Backend:
    """Evaluates sections of fixtures. ``name`` shows in the report."""

    name = "backend"

    def open(self, ruleset, config: Config, analysis: Optional[Analysis]) -> None:
        pass

    def evaluate(self, section: Section) -> dict[str, Evaluated]:
        raise NotImplementedError

    def evaluate_many(self, sections: Sequence[Section]) -> list[dict[str, Evaluated]]:
        """``evaluate`` for each section; a backend may batch them."""
        return [self.evaluate(section) for section in sections]

    def close(self) -> None:
        pass


def follower_of(case: FollowerCase):
    from .compile.python import Follower

    return Follower(case.name, case.fields, case.rows, case.manual)


class MemoryBackend(Backend):
    """The in-memory evaluator (tagdsl.compile.python)."""

    name = "memory"

    def open(self, ruleset, config, analysis) -> None:
        from .compile.python import compile_python

        self.evaluator = compile_python(ruleset, config, sources=analysis.sources if analysis else None)
        self.audience_names = list(ruleset.audiences)
        self.ranks = bool(self.evaluator.rank_nodes)

    def evaluate(self, section: Section) -> dict[str, Evaluated]:
        out = {}
        if self.ranks:  # quintile()/percent_rank() rank among the section's followers
            self.evaluator.prepare([follower_of(case) for case in section.followers], section.as_of)
        for case in section.followers:
            f = follower_of(case)
            tags = self.evaluator.tags(f, section.as_of)
            audiences = {a for a in self.audience_names if self.evaluator.audience(a, f, section.as_of)}
            out[case.name] = Evaluated(set(tags), audiences)
        return out


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Failure:
    expectation: str  # the expectation as written (normalised)
    span: Span
    expected: list[str]  # names that should be present (has/only) or the expected count
    actual: list[str]  # the follower's actual tags or audiences (or counted followers)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    trace: str = ""
    message: str = ""

    def to_dict(self) -> dict:
        return {"expectation": self.expectation, "file": self.span.file, "line": self.span.line,
                "column": self.span.column, "expected": self.expected, "actual": self.actual,
                "missing": self.missing, "unexpected": self.unexpected, "message": self.message,
                "trace": self.trace}


@dataclass
class CaseResult:
    file: str
    name: str  # the follower's name, or the count expectation's text
    kind: str  # "follower" | "count"
    span: Span
    as_of: _dt.datetime
    failures: list[Failure]
    seconds: float = 0.0
    tags: Optional[list[str]] = None
    audiences: Optional[list[str]] = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"

    def to_dict(self) -> dict:
        out = {"id": self.id, "file": self.file, "line": self.span.line, "name": self.name, "kind": self.kind,
               "as_of": self.as_of.isoformat(), "outcome": "passed" if self.passed else "failed",
               "seconds": round(self.seconds, 6)}
        if self.tags is not None:
            out["tags"] = self.tags
            out["audiences"] = self.audiences
        out["failures"] = [f.to_dict() for f in self.failures]
        return out


@dataclass
class Coverage:
    """Per rule and audience: how many tested followers it held / did not hold
    for; per exclusive group: which member won how often (None: no member)."""

    rules: dict[str, list[int]]  # name -> [held, not held]
    audiences: dict[str, list[int]]
    groups: dict[str, Counter]
    group_members: dict[str, list[str]]
    followers: int = 0

    @classmethod
    def empty(cls, ruleset) -> "Coverage":
        groups = {g.name: Counter() for g in ruleset.groups.values() if g.exclusive}
        members = {g.name: [m for m in g.tags if not ruleset.tags[m].manual]
                   for g in ruleset.groups.values() if g.exclusive}
        return cls({r.name: [0, 0] for r in ruleset.computed}, {a: [0, 0] for a in ruleset.audiences},
                   groups, members)

    def record(self, result: Evaluated) -> None:
        self.followers += 1
        for name, counts in self.rules.items():
            counts[0 if name in result.tags else 1] += 1
        for name, counts in self.audiences.items():
            counts[0 if name in result.audiences else 1] += 1
        for group, members in self.group_members.items():
            winner = next((m for m in members if m in result.tags), None)
            self.groups[group][winner] += 1

    @property
    def incomplete(self) -> list[str]:
        """Rules, audiences and exclusive-group branches not seen both ways / never taken."""
        out = [n for n, (h, m) in {**self.rules, **self.audiences}.items() if not (h and m)]
        for group, members in self.group_members.items():
            out.extend(f"{group}:{m}" for m in members if not self.groups[group][m])
        return out

    def to_dict(self) -> dict:
        return {
            "followers": self.followers,
            "rules": {n: {"held": h, "not_held": m, "both": bool(h and m)} for n, (h, m) in self.rules.items()},
            "audiences": {n: {"held": h, "not_held": m, "both": bool(h and m)}
                          for n, (h, m) in self.audiences.items()},
            "groups": {g: {"branches": {m: self.groups[g][m] for m in members}, "none": self.groups[g][None]}
                       for g, members in self.group_members.items()},
        }


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class

    cases: list[CaseResult]
    diagnostics: list[Diagnostic]
    sources: dict[str, SourceFile]
    backend: str
    seconds: float
    coverage: Optional[Coverage] = None
    files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(1 for c in self.cases if c.passed)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cases if not c.passed)

    @property
    def errors(self) -> int:
        return len(self.diagnostics)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.diagnostics

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed} failed in {self.seconds:.2f}s"


# -- running ---------------------------------------------------------------------------------------


def collect(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(rule files, test files) under ``paths`` (files or directories, recursively)."""
    rules: list[Path] = []
    tests: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            rules.extend(sorted(q for q in p.rglob(f"*{RULE_SUFFIX}") if q.is_file()))
            tests.extend(sorted(q for q in p.rglob(f"*{TEST_SUFFIX}") if q.is_file()))
        elif p.is_file():
            if p.suffix == TEST_SUFFIX:
                tests.append(p)
            elif p.suffix == RULE_SUFFIX:
                rules.append(p)
            else:
                raise TagDSLError(f"{raw}: not a {RULE_SUFFIX} or {TEST_SUFFIX} file")
        else:
            raise TagDSLError(f"{raw}: no such file or directory")
    if not rules:
        # Only test files named: their ruleset is the rule files beside them.
        for d in dict.fromkeys(t.parent for t in tests):
            rules.extend(sorted(q for q in d.glob(f"*{RULE_SUFFIX}") if q.is_file()))
    return _unique(rules), _unique(tests)


def _unique(paths: list[Path]) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def load_tests(test_paths: Sequence[Path], config: Config, ruleset, *, texts: Optional[dict[str, str]] = None
               ) -> tuple[list[TestFile], list[Diagnostic], dict[str, SourceFile]]:
    """Parse and bind test files (``texts``: name -> text, bypassing the file system)."""
    files, diagnostics, sources = [], [], {}
    items: list[tuple[str, Optional[str], list[Diagnostic]]] = []
    if texts is not None:
        items = [(name, text, []) for name, text in texts.items()]
    else:
        for path in test_paths:
            shown = display_path(path)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise TagDSLError(f"{shown}: cannot read: {exc.strerror}")
            text, diags = decode_source(data, shown)
            if text is not None and "\x00" in text:
                src = SourceFile(shown, text)
                at = text.index("\x00")
                diags = [Diagnostic("TT100", Severity.ERROR, "the file contains a NUL byte", src.span(at, at + 1),
                                    "test files are UTF-8 text")]
                text = None
            items.append((shown, text, diags))
    for name, text, diags in items:
        if text is None:
            diagnostics.extend(diags)
            continue
        raw, diags = parse_tagtest(text, name, config.tz)
        sources[name] = raw.source
        diagnostics.extend(diags)
        if diags:
            continue  # names are checked once the syntax is right
        test_file, diags = bind(raw, config, ruleset)
        diagnostics.extend(diags)
        if not diags:  # a half-bound file would run with followers missing
            files.append(test_file)
    return files, diagnostics, sources


def run_tests(paths: Sequence[str | Path] | None = None, config: Config | None = None, *,
              backend: Backend | None = None, coverage: bool = False,
              rule_texts: Optional[dict[str, str]] = None, test_texts: Optional[dict[str, str]] = None,
              clock: Callable[[], float] = time.perf_counter) -> TestReport:
    """Run test files against a ruleset.

    ``paths``: files and directories holding ``.tag`` and ``.tagtest`` files
    (default: the configuration's rulesets). ``rule_texts`` / ``test_texts``
    give files as text instead (for tests and tools). Raises ``RulesetError``
    when the ruleset has errors, ``TagDSLError`` when nothing is found.
    """
    started = clock()
    config = config or load_config()
    if rule_texts is None or test_texts is None:
        rule_paths, test_paths = collect(paths if paths else config.ruleset_paths())
    else:
        rule_paths, test_paths = [], []
    if rule_texts is not None:
        analysis = analyze(None, config, texts=rule_texts)
    else:
        if not rule_paths:
            raise TagDSLError(f"no {RULE_SUFFIX} files found in {', '.join(map(str, paths or ['the rulesets']))}")
        analysis = analyze(rule_paths, config)
    if analysis.ruleset is None:
        raise RulesetError(analysis.errors)
    ruleset = analysis.ruleset
    if test_texts is None and not test_paths:
        raise TagDSLError(f"no {TEST_SUFFIX} files found in {', '.join(map(str, paths or ['the rulesets']))}")
    files, diagnostics, sources = load_tests(test_paths, config, ruleset, texts=test_texts)

    backend = backend or MemoryBackend()
    backend.open(ruleset, config, analysis)
    explainer = _Explainer(ruleset, config, analysis)
    cov = Coverage.empty(ruleset) if coverage else None
    cases: list[CaseResult] = []
    try:
        pairs = [(tf, section) for tf in files for section in tf.sections]
        t0 = clock()
        all_results = backend.evaluate_many([section for _tf, section in pairs])
        per = (clock() - t0) / max(sum(len(section.followers) for _tf, section in pairs), 1)
        for (tf, section), results in zip(pairs, all_results):
            explainer.section = section
            for case in section.followers:
                got = results[case.name]
                if cov is not None:
                    cov.record(got)
                cases.append(_check_follower(tf.path, case, section.as_of, got, explainer, per, backend.name))
            for count in section.counts:
                cases.append(_check_count(tf.path, count, section, results))
    finally:
        backend.close()
    return TestReport(cases, diagnostics, sources, backend.name, clock() - started, cov,
                      [tf.path for tf in files])


class _Explainer:
    """Explain traces for failures, from the in-memory evaluator (also when
    the backend is a database: the trace shows what the rules compute)."""

    def __init__(self, ruleset, config, analysis):
        self.ruleset = ruleset
        self.config = config
        self.analysis = analysis
        self._evaluator = None
        self.section: Optional[Section] = None  # the population ranking functions rank over
        self._prepared: Optional[Section] = None

    @property
    def evaluator(self):
        if self._evaluator is None:
            from .compile.python import compile_python

            self._evaluator = compile_python(self.ruleset, self.config, sources=self.analysis.sources)
            self._ranks = bool(self._evaluator.rank_nodes)
        if self._ranks and self.section is not None and self._prepared is not self.section:
            self._evaluator.prepare([follower_of(c) for c in self.section.followers], self.section.as_of)
            self._prepared = self.section
        return self._evaluator

    def reference(self, case: FollowerCase, as_of) -> Evaluated:
        """The in-memory evaluator's result, to compare a database backend with."""
        f = follower_of(case)
        ev = self.evaluator
        return Evaluated(set(ev.tags(f, as_of)), {a for a in self.ruleset.audiences if ev.audience(a, f, as_of)})

    def trace(self, case: FollowerCase, as_of, tags: Iterable[str], audiences: Iterable[str]) -> str:
        from .compile.python import Explanation

        full = self.evaluator.explain(follower_of(case), as_of)
        wanted = list(dict.fromkeys(tags))
        # In an exclusive group, the rule that won instead explains the outcome too.
        for name in list(wanted):
            rule = self.ruleset.tags.get(name)
            if rule is None or rule.manual or not rule.exclusive:
                continue
            winner = next((t.name for t in full.tags if t.group == rule.group and t.holds), None)
            if winner is not None and winner not in wanted:
                wanted.append(winner)
        chosen = [t for t in full.tags if t.name in wanted]
        chosen_aud = [a for a in full.audiences if a.name in set(audiences)]
        rendered = Explanation(full.follower_id, full.as_of, chosen, chosen_aud).render()
        return rendered.split("\n", 1)[1] if "\n" in rendered else ""  # the header repeats the case's


def _check_follower(path: str, case: FollowerCase, as_of, got: Evaluated, explainer: _Explainer,
                    seconds: float, backend: str = "memory") -> CaseResult:
    tags = set(got.tags) | set(case.manual)
    failures: list[Failure] = []
    for e in case.expectations:
        actual = tags if e.kind == "tag" else got.audiences
        names = list(e.names)
        missing: list[str] = []
        unexpected: list[str] = []
        if e.mode == "has":
            missing = [n for n in names if n not in actual]
        elif e.mode == "not":
            unexpected = [n for n in names if n in actual]
        else:  # only: exactly these computed tags
            computed = set(got.tags)
            missing = [n for n in names if n not in computed]
            unexpected = sorted(computed - set(names))
        if not missing and not unexpected:
            continue
        disagreed = [n for n in missing + unexpected if not (e.kind == "tag" and n in case.manual)]
        if e.kind == "tag":
            trace = explainer.trace(case, as_of, [n for n in disagreed if not _is_manual(explainer, n)], [])
        else:
            trace = explainer.trace(case, as_of, [], disagreed)
        message = ""
        if backend != "memory":
            # A database that disagrees with the in-memory evaluator is an engine
            # bug, not a rule bug: say so, since the trace comes from memory.
            ref = explainer.reference(case, as_of)
            ref_actual = (ref.tags | set(case.manual)) if e.kind == "tag" else ref.audiences
            if any((n in ref_actual) != (n in actual) for n in disagreed):
                message = (f"{backend} and the in-memory evaluator disagree; in memory: "
                           + (", ".join(sorted(ref_actual)) or "(none)"))
        failures.append(Failure(e.text(), e.span, names if e.mode != "not" else [], sorted(actual),
                                missing, unexpected, trace, message))
    return CaseResult(path, case.name, "follower", case.span, as_of, failures, seconds,
                      sorted(tags), sorted(got.audiences))


def _is_manual(explainer: _Explainer, name: str) -> bool:
    rule = explainer.ruleset.tags.get(name)
    return rule is not None and rule.manual


_OPS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _check_count(path: str, count: CountExpectation, section: Section, results: dict[str, Evaluated]) -> CaseResult:
    members = []
    for case in section.followers:
        got = results[case.name]
        held = (count.name in got.tags or count.name in case.manual) if count.kind == "tag" \
            else count.name in got.audiences
        if held:
            members.append(case.name)
    failures = []
    if not _OPS[count.op](len(members), count.value):
        failures.append(Failure(count.text(), count.span, [f"{count.op} {count.value}"], members,
                                message=f"{len(members)} of {len(section.followers)} followers: "
                                        + (", ".join(members) if members else "none")))
    return CaseResult(path, count.text()[len("expect "):], "count", count.span, section.as_of, failures)


# -- output ----------------------------------------------------------------------------------------


def _plain(text: str, **_kwargs) -> str:
    return text


def render_text(report: TestReport, style=None, *, verbose: bool = False) -> str:
    """pytest-like: a progress line per file, then each failure with the
    follower, expected and actual, and the explain trace; then the summary."""
    from .report import format_diagnostic

    style = style or _plain
    out: list[str] = []
    if report.diagnostics:
        for d in report.diagnostics:
            out.append(format_diagnostic(d, report.sources.get(d.span.file), style))
            out.append("")
    by_file: dict[str, list[CaseResult]] = {}
    for c in report.cases:
        by_file.setdefault(c.file, []).append(c)
    for file, cases in by_file.items():
        marks = "".join(style(".", fg="green") if c.passed else style("F", fg="red", bold=True) for c in cases)
        out.append(f"{file} {marks}")
        if verbose:
            for c in cases:
                out.append(f"  {c.name} {'PASSED' if c.passed else 'FAILED'}")
    failed = [c for c in report.cases if not c.passed]
    if failed:
        out.append("")
        out.append(style(" FAILURES ".center(60, "="), fg="red", bold=True))
        for c in failed:
            out.append(style(f" {c.id} ".center(60, "_"), fg="red", bold=True))
            where = f"{c.file}:{c.span.line}"
            if c.kind == "follower":
                out.append(f"follower {_quote(c.name)} ({where}) as of {c.as_of.isoformat(sep=' ')}")
            else:
                out.append(f"{where} as of {c.as_of.isoformat(sep=' ')}")
            for f in c.failures:
                out.append(f"{f.span.file}:{f.span.line}:{f.span.column}: {style(f.expectation, bold=True)}")
                if c.kind == "count":
                    out.append(f"  expected: count {f.expected[0]}")
                    out.append(f"  actual:   {f.message}")
                    continue
                if f.missing:
                    out.append(f"  expected:   {', '.join(f.missing)}")
                if f.unexpected:
                    out.append(f"  unexpected: {', '.join(f.unexpected)}")
                kind = "audiences" if " audience " in f.expectation else "tags"
                out.append(f"  actual {kind}: {', '.join(f.actual) if f.actual else '(none)'}")
                if f.message:
                    out.append(style(f"  note: {f.message}", fg="yellow"))
                if f.trace:
                    out.append("  explain:")
                    out.extend("    " + line for line in f.trace.splitlines())
            out.append("")
    if report.coverage is not None:
        out.extend(render_coverage(report.coverage, style))
    if report.diagnostics:
        files = len({d.span.file for d in report.diagnostics})
        out.append(style(f"{len(report.diagnostics)} error(s) in {files} test file(s); their tests did not run",
                         fg="red", bold=True))
    colour = "green" if report.ok else "red"
    out.append(style(f"{report.summary()} ({report.backend})", fg=colour, bold=True))
    return "\n".join(out) + "\n"


def render_coverage(cov: Coverage, style=None) -> list[str]:
    style = style or _plain
    lines = [style(" coverage ".center(60, "="), bold=True),
             f"{cov.followers} followers tested; a rule is covered when tests saw it both hold and not hold"]
    width = max([display_width(n) for n in [*cov.rules, *cov.audiences]] + [4])

    def row(kind, name, held, not_held):
        ok = held and not_held
        mark = style("✓", fg="green") if ok else style("✗", fg="red", bold=True)
        pad = " " * (width - display_width(name))
        note = "" if ok else ("  never held" if not held else "  always held")
        return f"  {mark} {kind} {name}{pad}  held {held:>3}  not held {not_held:>3}{note}"

    for name, (h, m) in cov.rules.items():
        lines.append(row("tag     ", name, h, m))
    for name, (h, m) in cov.audiences.items():
        lines.append(row("audience", name, h, m))
    for group, members in cov.group_members.items():
        counts = cov.groups[group]
        parts = []
        for m in members:
            n = counts[m]
            parts.append(f"{m} {n}" if n else style(f"{m} 0", fg="red", bold=True))
        parts.append(f"(none) {counts[None]}")
        lines.append(f"  exclusive group {_quote(group)}: " + " · ".join(parts))
    total = len(cov.rules) + len(cov.audiences)
    both = sum(1 for h, m in [*cov.rules.values(), *cov.audiences.values()] if h and m)
    branches = sum(len(m) for m in cov.group_members.values())
    taken = sum(1 for g, ms in cov.group_members.items() for m in ms if cov.groups[g][m])
    lines.append(f"rules and audiences covered: {both}/{total}; exclusive branches taken: {taken}/{branches}")
    return lines


def render_json(report: TestReport) -> str:
    from .report import diagnostic_dict

    out = {"backend": report.backend, "passed": report.passed, "failed": report.failed,
           "errors": report.errors, "seconds": round(report.seconds, 6), "summary": report.summary(),
           "tests": [c.to_dict() for c in report.cases],
           "diagnostics": [diagnostic_dict(d) for d in report.diagnostics]}
    if report.coverage is not None:
        out["coverage"] = report.coverage.to_dict()
    return json.dumps(out, ensure_ascii=False, indent=2) + "\n"


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    return _XML_INVALID.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def render_junit(report: TestReport) -> str:
    """JUnit XML (the format CI systems read test reports in): one testsuite
    per test file, one testcase per follower or count expectation; test-file
    errors are testcases with an <error>."""
    root = ET.Element("testsuites", name="tagdsl test", tests=str(len(report.cases) + report.errors),
                      failures=str(report.failed), errors=str(report.errors), time=f"{report.seconds:.3f}")
    suites: dict[str, ET.Element] = {}
    counts: dict[str, list] = {}

    def suite(file: str) -> ET.Element:
        if file not in suites:
            suites[file] = ET.SubElement(root, "testsuite", name=_xml(file))
            counts[file] = [0, 0, 0, 0.0]  # tests failures errors time
        return suites[file]

    for c in report.cases:
        s = suite(c.file)
        tc = ET.SubElement(s, "testcase", classname=_xml(Path(c.file).stem), name=_xml(c.name), file=_xml(c.file),
                           line=str(c.span.line), time=f"{c.seconds:.6f}")
        counts[c.file][0] += 1
        counts[c.file][3] += c.seconds
        if c.failures:
            counts[c.file][1] += 1
            first = c.failures[0]
            message = f"{first.expectation}: " + (first.message or "; ".join(
                x for x in (f"expected {', '.join(first.missing)}" if first.missing else "",
                            f"unexpected {', '.join(first.unexpected)}" if first.unexpected else "") if x))
            failure = ET.SubElement(tc, "failure", message=_xml(message), type="AssertionError")
            failure.text = _xml(_failure_text(c))
    for d in report.diagnostics:
        s = suite(d.span.file)
        tc = ET.SubElement(s, "testcase", classname=_xml(Path(d.span.file).stem), name=_xml(f"{d.code} line {d.span.line}"),
                           file=_xml(d.span.file), line=str(d.span.line), time="0")
        counts[d.span.file][0] += 1
        counts[d.span.file][2] += 1
        err = ET.SubElement(tc, "error", message=_xml(f"{d.code} {d.message}"), type=d.code)
        err.text = _xml(f"{d.span.file}:{d.span.line}:{d.span.column}: {d.code} {d.message}"
                        + (f"\nhint: {d.hint}" if d.hint else ""))
    for file, s in suites.items():
        tests, failures, errors, secs = counts[file]
        s.set("tests", str(tests))
        s.set("failures", str(failures))
        s.set("errors", str(errors))
        s.set("skipped", "0")
        s.set("time", f"{secs:.6f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _failure_text(c: CaseResult) -> str:
    lines = [f"follower {_quote(c.name)} as of {c.as_of.isoformat(sep=' ')}" if c.kind == "follower"
             else f"as of {c.as_of.isoformat(sep=' ')}"]
    for f in c.failures:
        lines.append(f"{f.span.file}:{f.span.line}:{f.span.column}: {f.expectation}")
        if f.message:
            lines.append(f"  {f.message}")
        if f.missing:
            lines.append(f"  expected:   {', '.join(f.missing)}")
        if f.unexpected:
            lines.append(f"  unexpected: {', '.join(f.unexpected)}")
        if c.kind == "follower":
            lines.append(f"  actual: {', '.join(f.actual) if f.actual else '(none)'}")
        if f.trace:
            lines.extend("    " + line for line in f.trace.splitlines())
    return "\n".join(lines)


def render(fmt: str, report: TestReport, style=None) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "junit":
        return render_junit(report)
    return render_text(report, style)
