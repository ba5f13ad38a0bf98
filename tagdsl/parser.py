"""Text -> ``tagdsl.ast.Module`` plus syntax diagnostics.

Two parsers, one result. ``tagdsl.fastparse`` (hand-written, about five times
faster) parses well-formed files; on anything else it gives up and Lark parses
(LALR, so parsing itself never recurses), with the grammar in
grammar/tagdsl.lark as the specification. The Lark path alone reports syntax
errors: after one it blanks out the broken statement and parses again, so one
run reports every independent syntax error in a file. Both build the same AST,
spans included (tests/test_fastparse.py). Lark is imported only when needed.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from . import ast as A
from . import fastparse
from .diagnostics import Diagnostic, Severity
from .resources import grammar_text
from .spans import SourceFile, Span

MAX_FILE_CHARS = 5_000_000
MAX_NESTING = 200  # parentheses/brackets
MAX_EXPR_DEPTH = 400  # any expression tree, e.g. a chain of 400 `or`
MAX_SYNTAX_ERRORS = 25

# Try tagdsl.fastparse before Lark. False (or TAGDSL_PARSER=lark in the
# environment): Lark only, for comparisons and to rule the fast parser out.
USE_FAST_PARSER = os.environ.get("TAGDSL_PARSER", "").strip().lower() != "lark"

# Lark names, bound by _import_lark() on first use: `tagdsl lint` of a
# well-formed ruleset never imports Lark nor loads its grammar (about 0.1 s).
Lark = Token = UnexpectedCharacters = UnexpectedEOF = UnexpectedInput = UnexpectedToken = None


def _import_lark() -> None:
    global Lark, Token, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
    if Lark is None:
        from lark import Lark as _Lark, Token as _Token
        from lark.exceptions import UnexpectedCharacters as _UC, UnexpectedEOF as _UEOF
        from lark.exceptions import UnexpectedInput as _UI, UnexpectedToken as _UT

        Token, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken = _Token, _UC, _UEOF, _UI, _UT
        Lark = _Lark

_STATEMENT_START = re.compile(r"^[ \t\u3000]*(tag|group|audience|let)\b(?!\s*\()", re.M)

_TOKEN_NAMES = {
    "STRING": "a string", "IDENT": "a name", "INT": "an integer", "DECIMAL": "a decimal",
    "DURATION": "a duration", "WHEN": "`when`", "MANUAL": "`manual`", "EXCLUSIVE": "`exclusive`",
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "COMMA": "`,`", "EQUAL": "`=`", "DOT": "`.`", "COMP_OP": "a comparison", "ADD_OP": "`+` or `-`",
    "MUL_OP": "`*` or `/`", "$END": "end of file", "TAG": "`tag`", "GROUP": "`group`",
    "AUDIENCE": "`audience`", "LET": "`let`", "AND": "`and`", "OR": "`or`", "NOT": "`not`",
    "IN": "`in`", "IS": "`is`", "MISSING": "`missing`", "BETWEEN": "`between`", "WHERE": "`where`",
    "WITHIN": "`within`", "TRUE": "`true`", "FALSE": "`false`",
}

# Full-width punctuation typed by Chinese input methods, and what was meant.
_FULLWIDTH = {
    "“": '"', "”": '"', "‘": "'", "’": "'", "（": "(", "）": ")", "【": "[", "】": "]",
    "，": ",", "＝": "=", "＞": ">", "＜": "<", "！": "!", "｛": "{", "｝": "}", "：": ":", "；": ";",
}


@lru_cache(maxsize=1)
def _lark():
    # The AST is built while parsing (Lark's inline transformer, LALR only):
    # no intermediate parse tree, which halves the time to lint a large
    # ruleset. Inline callbacks get no positions, so every token is kept and a
    # node's span runs from its first child to its last.
    # Building the LALR tables takes about a second; Lark caches them in the
    # temp directory, keyed by the grammar's hash, so later starts are fast.
    _import_lark()
    options = dict(parser="lalr", lexer="basic", keep_all_tokens=True, maybe_placeholders=True,
                   transformer=_Callbacks())
    try:
        return Lark(grammar_text(), cache=True, **options)
    except OSError:  # an unwritable temp directory: build without the cache
        return Lark(grammar_text(), cache=False, **options)


_current = threading.local()


class _Callbacks:
    """Lark calls one method per grammar rule/alias; each hands the children
    to the ``_Builder`` of the parse in progress."""


def _callback(kind: str):
    def method(self, children):
        return _current.builder.make(kind, children)

    method.__name__ = kind
    return method


_RULES = ("start tag_rule tag_manual group_stmt audience_stmt let_stmt block attribute neg_int or_ and_ not_ "
          "compare arith between in_ not_in is_missing is_not_missing neg name source_field call call_args "
          "where_clause within_clause tag_ref list paren string decimal int duration true false").split()
for _kind in _RULES:
    setattr(_Callbacks, _kind, _callback(_kind))


class _Collector:
    def __init__(self, path: str, text: str):
        self.path, self.text = path, text
        self._source: SourceFile | None = None
        self.diagnostics: list[Diagnostic] = []

    @property
    def source(self) -> SourceFile:
        # Built on first use: the fast path of a clean file needs no line table.
        if self._source is None:
            self._source = SourceFile(self.path, self.text)
        return self._source

    def add(self, code: str, message: str, start: int, end: int | None = None, hint: str | None = None):
        from .diagnostics import RULES

        self.diagnostics.append(Diagnostic(code, RULES[code].severity, message, self.source.span(start, end), hint))


def parse_text(text: str, path: str = "<string>") -> tuple[A.Module, list[Diagnostic]]:
    """Parse one file's text. Never raises on bad input: problems are diagnostics."""
    out = _Collector(path, text)
    if len(text) > MAX_FILE_CHARS:
        out.add("TD105", f"file is too large ({len(text):,} characters; the limit is {MAX_FILE_CHARS:,})", 0, 0,
                "split the ruleset into several files")
        return A.Module(path, ()), out.diagnostics
    nul = text.find("\x00")
    if nul >= 0:
        out.add("TD106", "the file contains a NUL byte", nul, nul + 1, "rule files are UTF-8 text")
        return A.Module(path, ()), out.diagnostics
    if USE_FAST_PARSER:
        fast = fastparse.parse(text, path, MAX_NESTING, MAX_EXPR_DEPTH)
        if fast is not None:
            statements, comments, deep = fast
            # Only statements with more tokens than the depth limit can be too
            # deep; the check drops them with TD105, as on the Lark path.
            if deep:
                builder = _Builder(out.source, out)
                too_deep = {id(s) for s in deep if not builder._depth_ok(s)}
                statements = [s for s in statements if id(s) not in too_deep]
            return A.Module(path, tuple(statements), comments), _unique(out.diagnostics)
    if _check_nesting(text, out):
        return A.Module(path, ()), out.diagnostics
    if _check_balance(text, out):
        return A.Module(path, ()), out.diagnostics

    _import_lark()
    work = text
    source = out.source
    builder = _Builder(source, out)
    for _ in range(MAX_SYNTAX_ERRORS + 1):
        comments: list = []
        try:
            _current.builder = builder
            statements = _parse_with_comments(work, comments)
        except UnexpectedInput as exc:
            pos = _error_offset(exc, work)
            try:
                _report_syntax_error(exc, work, pos, out)
            except _Resync as resync:
                pos = resync.pos
            blanked = _blank_statement(work, pos)
            if blanked is None or len(out.diagnostics) >= MAX_SYNTAX_ERRORS:
                return A.Module(path, ()), out.diagnostics
            work = blanked
            continue
        finally:
            _current.builder = None
        statements = [s for s in statements if s is not None and builder._depth_ok(s)]
        module = A.Module(path, tuple(statements),
                          tuple(A.Comment(str(c), source.span(c.start_pos, c.end_pos)) for c in comments))
        return module, _unique(out.diagnostics)
    return A.Module(path, ()), _unique(out.diagnostics)


def _unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    # A string's escape error is found again when the file is re-parsed after
    # blanking another statement.
    return list({(d.code, d.span, d.message): d for d in diagnostics}.values())


def _parse_with_comments(text: str, comments: list) -> list:
    # lexer_callbacks are fixed at construction; collect comments with a
    # second, comment-only scan instead (cheap, and keeps one cached parser).
    tree = _lark().parse(text)
    comments.extend(_scan_comments(text))
    return tree


_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n\r]|\\.)*"|#[^\n]*')


def _scan_comments(text: str) -> list:
    found = []
    for m in _COMMENT_OR_STRING.finditer(text):
        if m.group().startswith("#"):
            found.append(Token("COMMENT", m.group().rstrip("\r"), start_pos=m.start(), end_pos=m.start() + len(m.group().rstrip("\r"))))
    return found


_BRACKET_SCAN = re.compile(r'"(?:[^"\\\n\r]|\\.)*"|#[^\n]*|[()\[\]{}]')


def _code_chars(text: str):
    """Yield (offset, char) for the brackets outside strings and comments
    (an unterminated quote is a lone `"`, skipped; the parser reports it)."""
    for m in _BRACKET_SCAN.finditer(text):
        ch = m.group()
        if len(ch) == 1 and ch in "()[]{}":
            yield m.start(), ch


def _check_nesting(text: str, out: _Collector) -> bool:
    depth = 0
    for i, ch in _code_chars(text):
        if ch in "([":
            depth += 1
            if depth > MAX_NESTING:
                out.add("TD105", f"expression nested more than {MAX_NESTING} levels deep", i, i + 1,
                        "simplify the expression, e.g. with `let` names")
                return True
        elif ch in ")]":
            depth = max(0, depth - 1)
    return False


def _check_balance(text: str, out: _Collector) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[tuple[str, int]] = []
    bad = False
    for i, ch in _code_chars(text):
        if ch in "([{":
            stack.append((ch, i))
        elif ch in ")]}":
            if stack and stack[-1][0] == pairs[ch]:
                stack.pop()
            else:
                if stack and ch == "}" and stack[-1][0] in "([":
                    opener, at = stack.pop()
                    line, col = out.source.position(at)
                    out.add("TD103", f"`{opener}` opened at line {line}, column {col} is not closed before `}}`",
                            at, at + 1, f"add `{')' if opener == '(' else ']'}`")
                    if stack and stack[-1][0] == "{":
                        stack.pop()
                else:
                    out.add("TD103", f"`{ch}` has no matching `{pairs[ch]}`", i, i + 1, f"remove it or add the opening `{pairs[ch]}`")
                bad = True
    for opener, at in stack:
        closer = {"(": ")", "[": "]", "{": "}"}[opener]
        out.add("TD103", f"`{opener}` is never closed", at, at + 1, f"add the matching `{closer}`")
        bad = True
    return bad


def _error_offset(exc, text: str) -> int:
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        return len(text.rstrip())
    pos = getattr(exc, "pos_in_stream", None)
    if pos is None and isinstance(exc, UnexpectedToken):
        pos = exc.token.start_pos
    return int(pos or 0)


def _describe_expected(expected) -> str:
    names = sorted({_TOKEN_NAMES.get(e, e.lower()) for e in expected if not e.startswith("__")})
    if len(names) > 8:
        return "an expression or statement"
    return ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1] if names else "something else"


def _report_syntax_error(exc, text: str, pos: int, out: _Collector) -> None:
    if isinstance(exc, UnexpectedCharacters):
        ch = text[pos] if pos < len(text) else ""
        if ch == '"':
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            out.add("TD101", "unterminated string", pos, end, 'close the string with `"` on the same line')
        elif ch in _FULLWIDTH:
            out.add("TD100", f"full-width `{ch}` is not TagDSL punctuation", pos, pos + 1,
                    f"use the ASCII `{_FULLWIDTH[ch]}` (switch the input method to half-width)")
        elif ch.isdigit():
            m = re.compile(r"[\w.]+").match(text, pos)
            lit = m.group() if m else ch
            out.add("TD104", f"malformed number or duration `{lit}`", pos, pos + len(lit),
                    "numbers are 12 or 12.5; durations are a whole number with w, d, h, m or s (e.g. 30d)")
        elif ch == "'":
            out.add("TD100", "strings use double quotes", pos, pos + 1, 'write "…" instead of \'…\'')
        else:
            shown = ch if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}"
            out.add("TD100", f"unexpected character `{shown}`", pos, pos + 1, "remove it")
        return
    token = getattr(exc, "token", None)
    expected = getattr(exc, "expected", None) or getattr(exc, "accepts", None) or set()
    if isinstance(exc, UnexpectedToken) and exc.accepts:
        expected = exc.accepts
    if token is None or token.type == "$END":
        out.add("TD100", f"unexpected end of file; expected {_describe_expected(expected)}", pos, pos,
                "complete the statement")
        return
    tok = str(token)
    end = pos + max(1, len(tok))
    if set(expected) == {"LPAR"} and text[:pos].rstrip().endswith("tag"):
        # `x == ` followed by the next `tag "…"` statement: the expression is
        # incomplete; the keyword was taken for a tag("…") reference.
        kw = text[:pos].rstrip()
        at = len(kw) - 3
        prev = len(text[:at].rstrip())
        out.add("TD100", "expected an expression before the next `tag` statement", max(prev - 1, 0), prev,
                "complete the condition")
        raise _Resync(max(prev - 1, 0))
    if "WHEN" in expected and "MANUAL" in expected:
        out.add("TD100", f"expected `when` or `manual` after the tag name, found `{tok}`", pos, end,
                'write tag "名称" when <condition>, or tag "名称" manual')
    elif token.type == "IDENT" and expected == {"STRING"}:
        out.add("TD100", f"names of tags, groups and audiences are quoted strings, found `{tok}`", pos, end,
                f'write "{tok}"')
    elif token.type in ("TAG", "GROUP", "AUDIENCE", "LET", "RBRACE", "LBRACE") and (
        "IDENT" in expected or "STRING" in expected or "LPAR" in expected
    ):
        out.add("TD100", f"expected an expression before `{tok}`", pos, end, "complete the condition")
    else:
        out.add("TD100", f"unexpected `{tok}`; expected {_describe_expected(expected)}", pos, end,
                "check the statement's syntax in docs/language.md")


class _Resync(Exception):
    def __init__(self, pos: int):
        self.pos = pos


def _blank_statement(text: str, pos: int) -> str | None:
    """Blank out (keep newlines) the statement containing ``pos`` so the rest
    of the file can be parsed; None when no progress is possible."""
    starts = [m.start(1) for m in _STATEMENT_START.finditer(text)]
    before = [s for s in starts if s <= pos]
    after = [s for s in starts if s > pos]
    begin = before[-1] if before else 0
    if begin == pos and before and len(before) > 1 and not after:
        pass
    end = after[0] if after else len(text)
    if end <= begin:
        return None
    chunk = re.sub(r"[^\n]", " ", text[begin:end])
    new = text[:begin] + chunk + text[end:]
    return None if new == text else new


# -- tree -> AST ---------------------------------------------------------------------

_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def unescape(body: str, on_invalid) -> str:
    """The value of a string literal from its text between the quotes.

    ``on_invalid(escape, offset)`` is called for an unknown escape (``offset``:
    of the backslash in ``body``); it reports or raises, and what it returns
    stands in for the escape. Shared by rule files and test files.
    """

    def repl(m: re.Match) -> str:
        esc = m.group(1)
        if esc in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[esc]
        if esc.startswith("u") and len(esc) == 5:
            return chr(int(esc[1:], 16))
        return on_invalid(esc, m.start())

    return _ESCAPE.sub(repl, body)


class _Builder:
    def __init__(self, source: SourceFile, out: _Collector):
        self.source = source
        self.out = out

    def span(self, token) -> Span:
        return self.source.span(token.start_pos, token.end_pos)

    def make(self, kind: str, raw: list):
        """Build the AST value of one grammar rule from all its children."""
        first = next((k for k in raw if k is not None), None)
        last = next((k for k in reversed(raw) if k is not None), None)
        start = _start(first) if first is not None else 0
        end = _end(last) if last is not None else start
        kids = [k for k in raw if not (isinstance(k, Token) and k.type not in _SEMANTIC_TOKENS)]
        value = self.convert(kind, kids, self.source.span(start, end))
        return _Part(value, start, end) if kind in ("call_args", "block") else value

    def string(self, token) -> str:
        base = token.start_pos + 1

        def invalid(esc: str, offset: int) -> str:
            start = base + offset
            self.out.add("TD102", f"invalid escape `\\{esc}` in string", start, start + 1 + len(esc),
                         r'use \" \\ \n \t or \uXXXX; write \\ for a backslash')
            return esc

        return unescape(str(token)[1:-1], invalid)

    def integer(self, digits: str, span: Span) -> int:
        try:
            return int(digits)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            self.out.add("TD104", f"number with {len(digits):,} digits is too long", span.start, span.end,
                         f"write at most {sys.get_int_max_str_digits():,} digits")
            return 0

    def _depth_ok(self, stmt) -> bool:
        # Iterative depth measurement; deeper trees are refused (TD105) so
        # later passes may recurse safely.
        stack = [(stmt, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_EXPR_DEPTH:
                self.out.add("TD105", f"expression nested more than {MAX_EXPR_DEPTH} levels deep",
                             stmt.span.start, stmt.span.start, "split it with `let` names or use `in [...]`")
                return False
            for child in _children(node):
                stack.append((child, depth + 1))
        return True

    def convert(self, kind: str, kids: list, span: Span):
        if kind == "start":
            return kids
        if kind == "tag_rule":
            name_tok, cond, block = kids
            attrs, has_block = block.value if block is not None else ((), False)
            return A.TagStmt(self.string(name_tok), cond, False, attrs, has_block, span, self.span(name_tok))
        if kind == "tag_manual":
            name_tok, _manual, block = kids
            attrs, has_block = block.value if block is not None else ((), False)
            return A.TagStmt(self.string(name_tok), None, True, attrs, has_block, span, self.span(name_tok))
        if kind == "group_stmt":
            name_tok, excl, *tags = kids
            return A.GroupStmt(self.string(name_tok), excl is not None, tuple(tags), span, self.span(name_tok))
        if kind == "audience_stmt":
            name_tok, expr, block = kids
            attrs, has_block = block.value if block is not None else ((), False)
            return A.AudienceStmt(self.string(name_tok), expr, attrs, has_block, span, self.span(name_tok))
        if kind == "let_stmt":
            name_tok, expr = kids
            return A.LetStmt(str(name_tok), expr, span, self.span(name_tok))
        if kind == "block":
            return tuple(kids), True
        if kind == "attribute":
            key, value = kids
            return A.AttributeItem(str(key), value, span, self.span(key))
        if kind == "neg_int":
            sign, tok = kids
            magnitude = self.integer(str(tok), span)
            return A.Literal(-magnitude if str(sign) == "-" else magnitude, "int", span)
        if kind in ("or_", "and_"):
            left, right = kids
            return A.Binary(kind[:-1], left, right, span)
        if kind == "not_":
            return A.Unary("not", kids[0], span)
        if kind in ("compare", "arith"):
            left, op, right = kids
            return A.Binary(str(op), left, right, span, self.span(op))
        if kind == "between":
            return A.Between(kids[0], kids[1], kids[2], span)
        if kind in ("in_", "not_in"):
            return A.In(kids[0], kids[1], kind == "not_in", span)
        if kind in ("is_missing", "is_not_missing"):
            return A.IsMissing(kids[0], kind == "is_not_missing", span)
        if kind == "neg":
            op, operand = kids
            return operand if str(op) == "+" else A.Unary("-", operand, span)
        if kind == "name":
            return A.Name(str(kids[0]), span)
        if kind == "source_field":
            src, fld = kids
            return A.SourceField(str(src), str(fld), span, self.span(fld))
        if kind == "call":
            func, args = kids
            if args is None:
                return A.Call(str(func), (), None, None, span, self.span(func))
            first, where, within, *rest = args.value
            return A.Call(str(func), (first, *rest), where, within, span, self.span(func))
        if kind == "call_args":
            return kids
        if kind in ("where_clause", "within_clause"):
            return kids[0]
        if kind == "tag_ref":
            (tok,) = kids
            return A.TagRef(self.string(tok), span, self.span(tok))
        if kind == "list":
            items = tuple(k for k in kids if k is not None)
            return A.ListExpr(items, span)
        if kind == "paren":
            return A.Paren(kids[0], span)
        if kind == "string":
            return A.Literal(self.string(kids[0]), "string", span)
        if kind == "int":
            return A.Literal(self.integer(str(kids[0]), span), "int", span)
        if kind == "decimal":
            try:
                return A.Literal(Decimal(str(kids[0])), "decimal", span)
            except InvalidOperation:  # pragma: no cover - the token regex forbids it
                self.out.add("TD104", f"malformed decimal `{kids[0]}`", span.start, span.end)
                return A.Literal(Decimal(0), "decimal", span)
        if kind == "duration":
            text = str(kids[0])
            return A.Literal(A.Duration(self.integer(text[:-1], span), text[-1]), "duration", span)
        if kind == "true":
            return A.Literal(True, "bool", span)
        if kind == "false":
            return A.Literal(False, "bool", span)
        raise AssertionError(f"unhandled grammar rule {kind}")  # grammar and builder out of sync


_SEMANTIC_TOKENS = frozenset({"STRING", "IDENT", "COMP_OP", "ADD_OP", "MUL_OP", "MANUAL", "EXCLUSIVE", "INT",
                              "DECIMAL", "DURATION"})


class _Part:
    """An intermediate result (call arguments, an attribute block) with the
    offsets it covers, so the enclosing node's span can include it."""

    __slots__ = ("value", "start", "end")

    def __init__(self, value, start: int, end: int):
        self.value, self.start, self.end = value, start, end


def _start(node) -> int:
    if isinstance(node, Token):
        return node.start_pos
    if isinstance(node, _Part):
        return node.start
    return node.span.start


def _end(node) -> int:
    if isinstance(node, Token):
        return node.end_pos
    if isinstance(node, _Part):
        return node.end
    return node.span.end


def _children(node):
    if isinstance(node, A.TagStmt):
        return [node.condition] if node.condition is not None else []
    if isinstance(node, A.GroupStmt):
        return list(node.tags)
    if isinstance(node, (A.AudienceStmt, A.LetStmt)):
        return [node.expr]
    if isinstance(node, A.ListExpr):
        return list(node.items)
    if isinstance(node, A.Call):
        return [*node.args, *(x for x in (node.where, node.within) if x is not None)]
    if isinstance(node, A.Unary):
        return [node.operand]
    if isinstance(node, A.Binary):
        return [node.left, node.right]
    if isinstance(node, A.Between):
        return [node.operand, node.low, node.high]
    if isinstance(node, A.In):
        return [node.operand, node.options]
    if isinstance(node, (A.IsMissing,)):
        return [node.operand]
    if isinstance(node, A.Paren):
        return [node.expr]
    return []


def decode_source(data: bytes, path: str) -> tuple[str | None, list[Diagnostic]]:
    """Bytes of a rule file -> text, or a TD106 diagnostic at the first bad byte."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8")
        source = SourceFile(path, good + " ")
        span = source.span(len(good), len(good) + 1)
        return None, [Diagnostic("TD106", Severity.ERROR,
                                 f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02X} at offset {exc.start})",
                                 span, "save the file as UTF-8")]
