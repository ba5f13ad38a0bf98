"""The fast path of the parser: a hand-written lexer and recursive-descent
parser for well-formed files.

``grammar/tagdsl.lark`` stays the specification and the Lark parser in
``tagdsl/parser.py`` stays the authority on errors: this module either returns
exactly the AST (nodes and spans) that the Lark path would build, or gives up
(``None``), and the caller then parses with Lark, which produces the syntax
diagnostics, the error recovery and everything else for unusual input. It
gives up on any syntax error, on a string with an invalid escape (TD102 is
reported by the Lark path), on brackets nested more than ``MAX_NESTING``
deep, and on anything it cannot handle (deep recursion, a huge integer).
``tests/test_fastparse.py`` checks that both parsers agree.

Why not only Lark: on a 1,000-rule ruleset Lark's LALR loop and lexer took
about half a second, most of `tagdsl lint`'s time; this parser takes a fifth of that.
"""

from __future__ import annotations

import re
from decimal import Decimal

from . import ast as A
from .spans import Span

# Token regexes as in grammar/tagdsl.lark, in the order Lark's basic lexer
# tries them (priority, then width): DURATION, DECIMAL, INT before the rest.
# Each match takes the whitespace before its token along (half the matches).
_WS = " \t\r\n\f\u3000"
_TOKEN = re.compile(
    r"[ \t\r\n\f\u3000]*(?:"
    r"(?P<COMMENT>#[^\n]*)"
    r"|(?P<DURATION>\d+[wdhms](?!\w))"
    r"|(?P<DECIMAL>\d+\.\d+(?![\w.]))"
    r"|(?P<INT>\d+(?![\w.]))"
    r"|(?P<IDENT>[^\W\d]\w*)"
    r'|(?P<STRING>"(?:[^"\\\n\r]|\\.)*")'
    r"|(?P<COMP_OP>==|!=|<=|>=|<|>)"
    r"|(?P<ADD_OP>[-+])"
    r"|(?P<MUL_OP>[*/])"
    r"|(?P<PUNCT>[(){}\[\],=.]))"
)

# Keywords are reserved (Lark's basic lexer retypes an IDENT that spells one).
_KEYWORDS = {k: k.upper() for k in (
    "tag", "when", "manual", "group", "exclusive", "audience", "let", "or", "and", "not", "between", "in", "is",
    "missing", "where", "within", "true", "false")}

_END = "$END"
_LITERALS = frozenset({"STRING", "DECIMAL", "INT", "DURATION", "TRUE", "FALSE"})
# Tokens that cannot follow a complete comparison (comparisons do not chain).
_AFTER_COMPARISON_ERRORS = frozenset({"COMP_OP", "ADD_OP", "MUL_OP", "BETWEEN", "IN", "NOT", "IS"})


class GiveUp(Exception):
    """The fast parser cannot (or must not) handle this text; use Lark."""


def parse(text: str, path: str, max_nesting: int, max_expr_depth: int):
    """``(statements, comments, deep)`` or None to fall back to Lark.

    ``deep`` lists the statements with more than ``max_expr_depth`` tokens:
    only those can be nested more deeply than the limit (every AST node owns
    at least one token), so only they need the caller's depth check.
    """
    try:
        return _Parser(text, path, max_nesting, max_expr_depth).module()
    except (GiveUp, RecursionError, ValueError, ArithmeticError):
        # ValueError/ArithmeticError: e.g. an integer beyond Python's digit limit;
        # whatever the Lark path does with it stays the behaviour.
        return None


class _Parser:
    def __init__(self, text: str, path: str, max_nesting: int, max_expr_depth: int):
        self.path = path
        self.max_expr_depth = max_expr_depth
        # One entry per token: kind, text, offsets, and the 1-based line and
        # column of its start (a token never spans lines: newlines occur only
        # in whitespace). Node spans are joined from token spans.
        kinds: list[str] = []
        values: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        lines: list[int] = []
        columns: list[int] = []
        comments: list[tuple[str, int, int, int]] = []
        keywords = _KEYWORDS
        pos = 0
        line = 1
        line_start = 0  # offset of the current line's first character
        nesting = 0
        for m in _TOKEN.finditer(text):
            if m.start() != pos:
                raise GiveUp  # a character no token matches
            kind = m.lastgroup
            start = m.start(kind)
            if start != pos:
                newlines = text.count("\n", pos, start)
                if newlines:
                    line += newlines
                    line_start = text.rindex("\n", pos, start) + 1
            pos = m.end()
            value = m.group(kind)
            if kind == "COMMENT":
                value = value.rstrip("\r")
                comments.append((value, start, line, start - line_start + 1))
                continue
            if kind == "IDENT":
                kind = keywords.get(value, kind)
            elif kind == "PUNCT":
                kind = value
                if value in "([":
                    nesting += 1
                    if nesting > max_nesting:
                        raise GiveUp  # the Lark path reports TD105
                elif value in ")]":
                    nesting = max(0, nesting - 1)
            kinds.append(kind)
            values.append(value)
            starts.append(start)
            ends.append(pos)
            lines.append(line)
            columns.append(start - line_start + 1)
        if pos != len(text):
            if text[pos:].strip(_WS):  # trailing text that is not a token
                raise GiveUp
            newlines = text.count("\n", pos)
            if newlines:
                line += newlines
                line_start = text.rindex("\n", pos) + 1
        kinds.append(_END)
        values.append("")
        starts.append(len(text))
        ends.append(len(text))
        lines.append(line)
        columns.append(len(text) - line_start + 1)
        self.kinds, self.values, self.starts, self.ends = kinds, values, starts, ends
        self.lines, self.columns = lines, columns
        self.comments = comments
        self.i = 0

    # -- spans (as SourceFile.span computes them: 1-based, in code points) -----------

    def token_span(self, i: int) -> Span:
        column = self.columns[i]
        return Span(self.path, self.starts[i], self.ends[i], self.lines[i], column, self.lines[i],
                    column + self.ends[i] - self.starts[i])

    def from_token(self, i: int, last: Span) -> Span:
        """From the start of token ``i`` to the end of ``last``."""
        return Span(self.path, self.starts[i], last.end, self.lines[i], self.columns[i], last.end_line, last.end_column)

    def to_token(self, first: Span, j: int) -> Span:
        """From the start of ``first`` to the end of token ``j``."""
        return Span(self.path, first.start, self.ends[j], first.line, first.column, self.lines[j],
                    self.columns[j] + self.ends[j] - self.starts[j])

    def tokens(self, i: int, j: int) -> Span:
        """From the start of token ``i`` to the end of token ``j``."""
        return Span(self.path, self.starts[i], self.ends[j], self.lines[i], self.columns[i], self.lines[j],
                    self.columns[j] + self.ends[j] - self.starts[j])

    def join(self, first: Span, last: Span) -> Span:
        return Span(self.path, first.start, last.end, first.line, first.column, last.end_line, last.end_column)

    # -- tokens ---------------------------------------------------------------------

    def expect(self, kind: str) -> int:
        i = self.i
        if self.kinds[i] != kind:
            raise GiveUp
        self.i = i + 1
        return i

    def string_value(self, index: int) -> str:
        body = self.values[index][1:-1]
        if "\\" not in body:
            return body
        from .parser import unescape

        def invalid(esc: str, offset: int) -> str:
            raise GiveUp  # TD102: the Lark path reports it

        return unescape(body, invalid)

    # -- statements -----------------------------------------------------------------

    def module(self):
        kinds = self.kinds
        statements = []
        deep = []
        limit = self.max_expr_depth
        while True:
            kind = kinds[self.i]
            first = self.i
            if kind == "TAG":
                stmt = self.tag_stmt()
            elif kind == "GROUP":
                stmt = self.group_stmt()
            elif kind == "AUDIENCE":
                stmt = self.audience_stmt()
            elif kind == "LET":
                stmt = self.let_stmt()
            elif kind == _END:
                break
            else:
                raise GiveUp
            statements.append(stmt)
            if self.i - first > limit:
                deep.append(stmt)
        path = self.path
        comments = tuple(A.Comment(text, Span(path, start, start + len(text), line, column, line, column + len(text)))
                         for text, start, line, column in self.comments)
        return statements, comments, deep

    def tag_stmt(self) -> A.TagStmt:
        begin = self.expect("TAG")
        name = self.expect("STRING")
        kind = self.kinds[self.i]
        if kind == "WHEN":
            self.i += 1
            condition = self.expr()
            manual = False
            last = condition.span
        elif kind == "MANUAL":
            last = self.token_span(self.i)
            self.i += 1
            condition = None
            manual = True
        else:
            raise GiveUp
        attributes, has_block = (), False
        if self.kinds[self.i] == "{":
            attributes, last = self.block()
            has_block = True
        return A.TagStmt(self.string_value(name), condition, manual, attributes, has_block,
                         self.from_token(begin, last), self.token_span(name))

    def group_stmt(self) -> A.GroupStmt:
        begin = self.expect("GROUP")
        name = self.expect("STRING")
        exclusive = self.kinds[self.i] == "EXCLUSIVE"
        if exclusive:
            self.i += 1
        self.expect("{")
        tags = []
        while self.kinds[self.i] == "TAG":
            tags.append(self.tag_stmt())
        close = self.expect("}")
        return A.GroupStmt(self.string_value(name), exclusive, tuple(tags), self.tokens(begin, close),
                           self.token_span(name))

    def audience_stmt(self) -> A.AudienceStmt:
        begin = self.expect("AUDIENCE")
        name = self.expect("STRING")
        self.expect("=")
        expr = self.expr()
        last = expr.span
        attributes, has_block = (), False
        if self.kinds[self.i] == "{":
            attributes, last = self.block()
            has_block = True
        return A.AudienceStmt(self.string_value(name), expr, attributes, has_block, self.from_token(begin, last),
                              self.token_span(name))

    def let_stmt(self) -> A.LetStmt:
        begin = self.expect("LET")
        name = self.expect("IDENT")
        self.expect("=")
        expr = self.expr()
        return A.LetStmt(self.values[name], expr, self.from_token(begin, expr.span), self.token_span(name))

    def block(self) -> tuple[tuple[A.AttributeItem, ...], Span]:
        """The attributes, and the span of the closing brace."""
        self.expect("{")
        kinds = self.kinds
        items = []
        while kinds[self.i] == "IDENT":
            key = self.i
            self.i += 1
            kind = kinds[self.i]
            value = None
            if kind in _LITERALS:
                value = self.literal()
            elif kind == "ADD_OP":
                sign = self.i
                self.i += 1
                number = self.expect("INT")
                magnitude = int(self.values[number])
                value = A.Literal(-magnitude if self.values[sign] == "-" else magnitude, "int",
                                  self.tokens(sign, number))
            key_span = self.token_span(key)
            items.append(A.AttributeItem(self.values[key], value,
                                         key_span if value is None else self.join(key_span, value.span), key_span))
        close = self.expect("}")
        return tuple(items), self.token_span(close)

    # -- expressions ----------------------------------------------------------------
    # Precedence tiers as in the grammar, loosest first: or, and, not,
    # comparison (non-associative), sum, product, unary minus, atom. Chains
    # are loops, so only brackets recurse.

    def expr(self) -> A.Expr:
        left = self.and_expr()
        kinds = self.kinds
        while kinds[self.i] == "OR":
            self.i += 1
            right = self.and_expr()
            left = A.Binary("or", left, right, self.join(left.span, right.span))
        return left

    def and_expr(self) -> A.Expr:
        left = self.not_expr()
        kinds = self.kinds
        while kinds[self.i] == "AND":
            self.i += 1
            right = self.not_expr()
            left = A.Binary("and", left, right, self.join(left.span, right.span))
        return left

    def not_expr(self) -> A.Expr:
        kinds = self.kinds
        if kinds[self.i] != "NOT":
            return self.comparison()
        nots = []
        while kinds[self.i] == "NOT":
            nots.append(self.i)
            self.i += 1
        node = self.comparison()
        for i in reversed(nots):
            node = A.Unary("not", node, self.from_token(i, node.span))
        return node

    def comparison(self) -> A.Expr:
        left = self.sum()
        kinds = self.kinds
        kind = kinds[self.i]
        if kind == "COMP_OP":
            op = self.i
            self.i += 1
            right = self.sum()
            node = A.Binary(self.values[op], left, right, self.join(left.span, right.span), self.token_span(op))
        elif kind == "BETWEEN":
            self.i += 1
            low = self.sum()
            self.expect("AND")
            high = self.sum()
            node = A.Between(left, low, high, self.join(left.span, high.span))
        elif kind == "IN":
            self.i += 1
            options = self.sum()
            node = A.In(left, options, False, self.join(left.span, options.span))
        elif kind == "NOT":
            self.i += 1
            self.expect("IN")
            options = self.sum()
            node = A.In(left, options, True, self.join(left.span, options.span))
        elif kind == "IS":
            self.i += 1
            negated = kinds[self.i] == "NOT"
            if negated:
                self.i += 1
            missing = self.expect("MISSING")
            node = A.IsMissing(left, negated, self.to_token(left.span, missing))
        else:
            return left
        if kinds[self.i] in _AFTER_COMPARISON_ERRORS:
            raise GiveUp  # comparisons do not chain
        return node

    def sum(self) -> A.Expr:
        left = self.product()
        kinds = self.kinds
        while kinds[self.i] == "ADD_OP":
            op = self.i
            self.i += 1
            right = self.product()
            left = A.Binary(self.values[op], left, right, self.join(left.span, right.span), self.token_span(op))
        return left

    def product(self) -> A.Expr:
        left = self.unary()
        kinds = self.kinds
        while kinds[self.i] == "MUL_OP":
            op = self.i
            self.i += 1
            right = self.unary()
            left = A.Binary(self.values[op], left, right, self.join(left.span, right.span), self.token_span(op))
        return left

    def unary(self) -> A.Expr:
        kinds = self.kinds
        if kinds[self.i] != "ADD_OP":
            return self.atom()
        signs = []
        while kinds[self.i] == "ADD_OP":
            signs.append(self.i)
            self.i += 1
        node = self.atom()
        for sign in reversed(signs):
            if self.values[sign] == "-":  # unary plus leaves no node, as on the Lark path
                node = A.Unary("-", node, self.from_token(sign, node.span))
        return node

    def literal(self) -> A.Literal:
        i = self.i
        kind = self.kinds[i]
        value = self.values[i]
        self.i = i + 1
        span = self.token_span(i)
        if kind == "STRING":
            return A.Literal(self.string_value(i), "string", span)
        if kind == "INT":
            return A.Literal(int(value), "int", span)
        if kind == "DECIMAL":
            return A.Literal(Decimal(value), "decimal", span)
        if kind == "DURATION":
            return A.Literal(A.Duration(int(value[:-1]), value[-1]), "duration", span)
        if kind == "TRUE":
            return A.Literal(True, "bool", span)
        if kind == "FALSE":
            return A.Literal(False, "bool", span)
        raise GiveUp

    def atom(self) -> A.Expr:
        i = self.i
        kinds = self.kinds
        kind = kinds[i]
        if kind == "IDENT":
            following = kinds[i + 1]
            if following == ".":
                self.i = i + 2
                field = self.expect("IDENT")
                return A.SourceField(self.values[i], self.values[field], self.tokens(i, field), self.token_span(field))
            if following == "(":
                return self.call()
            self.i = i + 1
            return A.Name(self.values[i], self.token_span(i))
        if kind in _LITERALS:
            return self.literal()
        if kind == "(":
            self.i = i + 1
            inner = self.expr()
            close = self.expect(")")
            return A.Paren(inner, self.tokens(i, close))
        if kind == "[":
            self.i = i + 1
            items = []
            if kinds[self.i] != "]":
                items.append(self.expr())
                while kinds[self.i] == ",":
                    self.i += 1
                    if kinds[self.i] == "]":  # a trailing comma
                        break
                    items.append(self.expr())
            close = self.expect("]")
            return A.ListExpr(tuple(items), self.tokens(i, close))
        if kind == "TAG":
            self.i = i + 1
            self.expect("(")
            name = self.expect("STRING")
            close = self.expect(")")
            return A.TagRef(self.string_value(name), self.tokens(i, close), self.token_span(name))
        raise GiveUp

    def call(self) -> A.Call:
        func = self.expect("IDENT")
        self.expect("(")
        kinds = self.kinds
        func_span = self.token_span(func)
        if kinds[self.i] == ")":
            close = self.i
            self.i += 1
            return A.Call(self.values[func], (), None, None, self.tokens(func, close), func_span)
        args = [self.expr()]
        where = within = None
        if kinds[self.i] == "WHERE":
            self.i += 1
            where = self.expr()
        if kinds[self.i] == "WITHIN":
            self.i += 1
            within = self.expr()
        while kinds[self.i] == ",":
            self.i += 1
            args.append(self.expr())
        close = self.expect(")")
        return A.Call(self.values[func], tuple(args), where, within, self.tokens(func, close), func_span)
