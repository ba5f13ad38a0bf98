"""``tagdsl fmt``: print a parsed module back as canonical text.

The canonical style
-------------------

- Each statement starts on a line of its own; statements never share a line.
- Between top-level statements one blank line, except that consecutive
  **one-line** ``tag``/``let`` statements may stay together: the author's
  blank line between them is kept (a run of blank lines becomes one) and no
  blank line is added. Audiences, groups and any statement that takes more
  than one line are always set off by a blank line. The same rule applies to
  the tags inside a ``group``. No blank lines at the start of the file, after
  ``{``, before ``}``, inside attribute blocks or inside a statement.
- ``tag "名称" when <expr>`` on one line; ``tag "名称" manual``;
  ``audience "名称" = <expr>``; ``let name = <expr>``;
  ``group "名称" [exclusive] {`` with its tags one per line, indented by two
  spaces, and ``}`` on its own line. Names are never padded into columns:
  aligning Chinese names needs display widths that editors and fonts
  disagree on, and renaming one tag would re-align (and re-diff) its
  neighbours.
- Attributes one per line in a block indented by two spaces:
  ``tag "名称" when x {`` / ``  priority 10`` / ``}``. A block with no
  attribute and no comment inside (or after ``{``) is written ``{}``.
- Expressions: single spaces around binary operators and keywords
  (``a >= 1 and not b``), no space after unary ``-`` (but ``- -x``), ``f(a, b)``,
  ``count(orders where x within 30d)``, lists ``["a", "b"]`` (no trailing
  comma), ``tag("名称")``, ``x is not missing``, ``x not in [...]``.
- Parentheses the author wrote are kept (they are ``ast.Paren`` nodes); none
  are added to parsed code. For syntax trees built in code, parentheses are
  added exactly where the grammar's precedence requires them.
- Literals: strings are re-escaped canonically (``\\"``, ``\\\\``, ``\\n``,
  ``\\t``, and ``\\uXXXX`` only for control, format, separator and other
  invisible characters such as U+200B or U+3000; CJK text stays as it is);
  decimals keep the digits as written (``5000.00`` stays ``5000.00``);
  integers and durations are written without leading zeros (``2w`` stays
  ``2w``); ``true``/``false``.
- Long lines: when a statement's line would exceed 100 display columns (CJK
  characters count two, see ``tagdsl.spans.display_width``; an end-of-line
  comment does not count) and its
  expression is an ``and``/``or`` chain at the top, the chain is broken
  before each operator, continuation lines indented by four more spaces::

      tag "高价值老客" when count(orders within 365d) >= 5
          and sum(orders.amount within 365d) >= 5000.00 {
        priority 10
      }

  Only the top-level chain is broken; a long line without one stays long.
- Comments are kept verbatim (text and trailing whitespace unchanged), with
  the indentation of the line they precede. A comment on a line of its own
  stays before the line that holds the code following it (the next
  statement, tag, attribute, or the closing ``}``); a comment at the end of a
  line stays at the end of the line that holds the code before it, after two
  spaces. When several end-of-line comments would land on one output line,
  the last one stays there and the others move, in order, onto lines of
  their own just above it. A comment between the operands of a top-level
  ``and``/``or`` chain keeps the chain broken, so it stays where it was.
- Files end with exactly one newline (an empty file stays empty); lines end
  with ``\\n``, or ``\\r\\n`` when the file's first line did; a UTF-8 byte order
  mark is kept.

All of this is idempotent (``fmt(fmt(x)) == fmt(x)``) and preserves the
syntax tree (``parse(fmt(x)) == parse(x)``). ``format_text`` re-parses its
output and refuses (``FormatError``) rather than return text that would
change the rules.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Optional

from . import ast as A
from .diagnostics import Diagnostic, TagDSLError
from .parser import decode_source, parse_text
from .spans import display_width

LINE_LIMIT = 100
INDENT = 2
CONTINUATION = 4
_BOM = b"\xef\xbb\xbf"
_WS = " \t\r\n\f\u3000"  # the grammar's ignored whitespace
_BLANK_LINE = re.compile(r"\n[ \t\r\f\u3000]*\n")

__all__ = [
    "FormatError", "FileFormat", "LINE_LIMIT", "diff_text", "format_expr", "format_file", "format_module",
    "format_text", "quote_string", "syntax_equal", "write_formatted",
]


class FormatError(TagDSLError):
    """The text cannot be formatted: it has syntax errors (``diagnostics``),
    or (a bug) the formatted text would not mean the same."""

    exit_code = 1

    def __init__(self, message: str, diagnostics: list[Diagnostic] | None = None, *, location: str | None = None):
        super().__init__(message, location=location)
        self.diagnostics = diagnostics or []


# -- literals ---------------------------------------------------------------------------


def _needs_escape(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Cf", "Cs", "Zl", "Zp") or (cat == "Zs" and ch != " ")


def quote_string(value: str) -> str:
    """A string literal with canonical escapes (inverse of the parser's unescaping)."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif _needs_escape(ch) and ord(ch) <= 0xFFFF:
            # Astral format characters (e.g. U+E0001) have no \uXXXX form; they stay raw.
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _number_text(value) -> str:
    if isinstance(value, Decimal):
        text = format(value, "f")  # keeps the digits as written: 5000.00, never 5E+3
        return text if "." in text else text + ".0"
    if isinstance(value, float):
        return _number_text(Decimal(repr(value)))
    return str(value)


def _literal_text(lit: A.Literal) -> str:
    if lit.kind == "string":
        return quote_string(lit.value)
    if lit.kind == "bool":
        return "true" if lit.value else "false"
    if lit.kind == "duration":
        return str(lit.value)
    return _number_text(lit.value)


# -- expressions ----------------------------------------------------------------------------
# Precedence levels, loosest first, as in grammar/tagdsl.lark.
_OR, _AND, _NOT, _CMP, _SUM, _PRODUCT, _UNARY, _ATOM = range(1, 9)
_BINARY_LEVEL = {"or": _OR, "and": _AND, "+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT,
                 **{op: _CMP for op in A.COMPARISONS}}


def _level(node) -> int:
    if isinstance(node, A.Binary):
        return _BINARY_LEVEL[node.op]
    if isinstance(node, A.Unary):
        return _NOT if node.op == "not" else _UNARY
    if isinstance(node, (A.Between, A.In, A.IsMissing)):
        return _CMP
    if isinstance(node, A.Literal) and node.kind in ("int", "decimal", "float") and node.value < 0:
        return _UNARY  # printed with a leading '-'
    return _ATOM


def _operand_levels(node: A.Binary) -> tuple[int, int]:
    level = _BINARY_LEVEL[node.op]
    if level == _CMP:  # comparisons do not chain: both sides are sums
        return _SUM, _SUM
    return level, level + 1  # left-associative


def _pieces(node) -> list:
    """One node as a list of text pieces and (child, minimum level) pairs."""
    if isinstance(node, A.Literal):
        return [_literal_text(node)]
    if isinstance(node, A.Name):
        return [node.name]
    if isinstance(node, A.SourceField):
        return [f"{node.source}.{node.field}"]
    if isinstance(node, A.TagRef):
        return [f"tag({quote_string(node.name)})"]
    if isinstance(node, A.Paren):
        return ["(", (node.expr, _OR), ")"]
    if isinstance(node, A.ListExpr):
        out: list = ["["]
        for i, item in enumerate(node.items):
            if i:
                out.append(", ")
            out.append((item, _OR))
        out.append("]")
        return out
    if isinstance(node, A.Call):
        out = [node.func, "("]
        for i, arg in enumerate(node.args):
            if i:
                out.append(", ")
            out.append((arg, _OR))
            if i == 0:
                if node.where is not None:
                    out += [" where ", (node.where, _OR)]
                if node.within is not None:
                    out += [" within ", (node.within, _OR)]
        out.append(")")
        return out
    if isinstance(node, A.Unary):
        if node.op == "not":
            return ["not ", (node.operand, _NOT)]
        operand = node.operand
        # `- -x`, never `--x` (which reads like a decrement or an SQL comment).
        double = (isinstance(operand, A.Unary) and operand.op == "-") or _level(operand) == _UNARY
        return ["- " if double else "-", (operand, _UNARY)]
    if isinstance(node, A.Binary):
        left, right = _operand_levels(node)
        return [(node.left, left), f" {node.op} ", (node.right, right)]
    if isinstance(node, A.Between):
        return [(node.operand, _SUM), " between ", (node.low, _SUM), " and ", (node.high, _SUM)]
    if isinstance(node, A.In):
        return [(node.operand, _SUM), " not in " if node.negated else " in ", (node.options, _SUM)]
    if isinstance(node, A.IsMissing):
        return [(node.operand, _SUM), " is not missing" if node.negated else " is missing"]
    raise TypeError(f"not an expression node: {type(node).__name__}")


def format_expr(node: A.Expr, min_level: int = _OR) -> str:
    """An expression as canonical text (iterative: deep trees cannot exhaust the stack)."""
    out: list[str] = []
    stack: list = [(node, min_level)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        expr, need = item
        parts = _pieces(expr)
        if _level(expr) < need:
            parts = ["(", *parts, ")"]
        stack.extend(reversed(parts))
    return "".join(out)


def _chain(expr) -> tuple[str, list] | None:
    """A top-level ``and``/``or`` chain as (op, operands), flattened along the left spine."""
    if not (isinstance(expr, A.Binary) and expr.op in ("and", "or")):
        return None
    op, operands, node = expr.op, [], expr
    while isinstance(node, A.Binary) and node.op == op:
        operands.append(node.right)
        node = node.left
    operands.append(node)
    operands.reverse()
    return op, operands


# -- layout -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Item:
    """A statement in a container (the file, or a group's tags)."""

    kind: str  # tag | let | audience | group
    lines: list = field(default_factory=list)
    previous: Optional["_Item"] = None


@dataclass(eq=False)
class _Container:
    items: list = field(default_factory=list)


@dataclass(eq=False)
class _Chain:
    indent: int
    lines: list = field(default_factory=list)


@dataclass(eq=False)
class _Line:
    indent: int
    text: str
    anchor: int  # source offset where this line's code starts (comments map to lines by it)
    end: int  # source offset just after this line's code
    role: str  # item (a statement's first line) | cont | attr | close | group_close | eof
    comment_indent: int
    item: Optional[_Item] = None
    container: Optional[_Container] = None  # for group_close / eof: the container that ends
    mergeable: bool = False  # the `}` of an empty block: joins the line before when no comment needs it
    before: list = field(default_factory=list)
    trailing: list = field(default_factory=list)


class _Layout:
    def __init__(self) -> None:
        self.lines: list[_Line] = []
        self.chains: list[_Chain] = []
        self.top = _Container()

    def add(self, line: _Line) -> _Line:
        self.lines.append(line)
        if line.item is not None:
            line.item.lines.append(line)
        return line

    def statement(self, stmt, indent: int, container: _Container) -> None:
        kind = {A.TagStmt: "tag", A.LetStmt: "let", A.AudienceStmt: "audience", A.GroupStmt: "group"}[type(stmt)]
        item = _Item(kind)
        container.items.append(item)
        start, end = stmt.span.start, stmt.span.end
        if isinstance(stmt, A.GroupStmt):
            head = f"group {quote_string(stmt.name)}{' exclusive' if stmt.exclusive else ''} {{"
            self.add(_Line(indent, head, start, start, "item", indent, item))
            inner = _Container()
            for tag in stmt.tags:
                self.statement(tag, indent + INDENT, inner)
            self.add(_Line(indent, "}", end - 1, end, "group_close", indent + INDENT, item, inner,
                           mergeable=not stmt.tags))
            return
        if isinstance(stmt, A.LetStmt):
            self.header(f"let {stmt.name} = ", stmt.expr, indent, item, start, end, False)
            return
        if isinstance(stmt, A.AudienceStmt):
            prefix, expr = f"audience {quote_string(stmt.name)} = ", stmt.expr
        elif stmt.manual:
            prefix, expr = f"tag {quote_string(stmt.name)} manual", None
        else:
            prefix, expr = f"tag {quote_string(stmt.name)} when ", stmt.condition
        self.header(prefix, expr, indent, item, start, end, stmt.has_block)
        if stmt.has_block:
            for attr in stmt.attributes:
                text = attr.key if attr.value is None else f"{attr.key} {_literal_text(attr.value)}"
                self.add(_Line(indent + INDENT, text, attr.span.start, attr.span.end, "attr", indent + INDENT, item))
            self.add(_Line(indent, "}", end - 1, end, "close", indent + INDENT, item,
                           mergeable=not stmt.attributes))

    def header(self, prefix: str, expr, indent: int, item: _Item, start: int, end: int, block: bool) -> None:
        chain = _chain(expr) if expr is not None else None
        if chain is None:
            text = prefix + (format_expr(expr) if expr is not None else "")
            last = self.add(_Line(indent, text, start, end, "item", indent, item))
        else:
            op, operands = chain
            level = _BINARY_LEVEL[op]
            group = _Chain(indent)
            self.chains.append(group)
            last = self.add(_Line(indent, prefix + format_expr(operands[0], level), start, end, "item", indent,
                                  item))
            group.lines.append(last)
            cont = indent + CONTINUATION
            for prev, operand in zip(operands, operands[1:]):
                last = self.add(_Line(cont, f"{op} {format_expr(operand, level + 1)}", prev.span.end, end, "cont",
                                      cont, item))
                group.lines.append(last)
        if block:
            last.text += " {"


@dataclass
class _Comments:
    """Where each comment goes: at the end of the line holding the code before
    it (``trailing``), or before the line holding the code after it."""

    trailing: list  # (comment, offset of the code character before it)
    own_line: list  # (comment, offset of the code character after it, or None at the end)


def _classify_comments(text: str, comments) -> _Comments:
    comments = sorted(comments, key=lambda c: c.span.start)
    n = len(comments)
    before: list[Optional[int]] = [None] * n  # last code character before each comment
    prev_end, prev_code = 0, None
    for i, c in enumerate(comments):
        seg = text[prev_end:c.span.start]
        stripped = seg.rstrip(_WS)
        if stripped:
            prev_code = prev_end + len(stripped) - 1
        before[i] = prev_code
        prev_end = c.span.end
    after: list[Optional[int]] = [None] * n  # first code character after each comment
    next_start, next_code = len(text), None
    for i in range(n - 1, -1, -1):
        c = comments[i]
        seg = text[c.span.end:next_start]
        stripped = seg.lstrip(_WS)
        if stripped:
            next_code = c.span.end + len(seg) - len(stripped)
        after[i] = next_code
        next_start = c.span.start
    result = _Comments([], [])
    for i, c in enumerate(comments):
        p = before[i]
        # Trailing: code before it on the same line (no comment, hence no newline, in between).
        same_line = (p is not None and (i == 0 or comments[i - 1].span.start < p)
                     and "\n" not in text[p + 1:c.span.start])
        if same_line:
            result.trailing.append((c, p))
        else:
            result.own_line.append((c, after[i]))
    return result


def _place_comments(lines: list[_Line], text: str, comments) -> None:
    anchors = [line.anchor for line in lines]
    placed = _classify_comments(text, comments)
    for c, offset in placed.trailing:
        idx = max(0, bisect.bisect_right(anchors, offset) - 1)
        lines[idx].trailing.append(c)
    for c, offset in placed.own_line:
        idx = len(lines) - 1 if offset is None else max(0, bisect.bisect_right(anchors, offset) - 1)
        lines[idx].before.append(c)


def _merge_empty_blocks(lines: list[_Line]) -> list[_Line]:
    out: list[_Line] = []
    for line in lines:
        if line.mergeable and not line.before and out and not out[-1].trailing:
            prev = out[-1]
            prev.text += "}"
            prev.trailing += line.trailing
            prev.end = line.end
            if line.item is not None:
                line.item.lines.remove(line)
            continue
        out.append(line)
    return out


def _settle_chains(layout: _Layout) -> None:
    """Join each chain onto one line unless it is too long or a comment sits between its operands."""
    for chain in layout.chains:
        first, rest = chain.lines[0], chain.lines[1:]
        split_by_comment = any(line.trailing for line in chain.lines[:-1]) or any(line.before for line in rest)
        joined = " ".join([first.text, *(line.text for line in rest)])
        if split_by_comment or display_width(" " * chain.indent + joined) > LINE_LIMIT:
            continue
        first.text = joined
        first.trailing = chain.lines[-1].trailing
        first.end = chain.lines[-1].end
        for line in rest:
            line.role = "joined"
            first.item.lines.remove(line)
    layout.lines = [line for line in layout.lines if line.role != "joined"]


def _render(layout: _Layout, text: Optional[str]) -> list[str]:
    out: list[str] = []
    prev_end: Optional[int] = None

    def blank_in_source(start: int) -> bool:
        if text is None or prev_end is None or prev_end > start:
            return False
        return _BLANK_LINE.search(text, prev_end, start) is not None

    def emit(line_text: str, start: int, end: int, policy: str) -> None:
        nonlocal prev_end
        if out and (policy == "force" or (policy == "preserve" and blank_in_source(start))):
            out.append("")
        out.append(line_text)
        prev_end = end

    for line in layout.lines:
        before = sorted(line.before, key=lambda c: c.span.start)
        if len(line.trailing) > 1:
            before = sorted(before + line.trailing[:-1], key=lambda c: c.span.start)
        trailing = line.trailing[-1:] if line.trailing else []
        entries = [(c, True) for c in before] + ([(line, False)] if line.role != "eof" else [])
        for k, (entry, is_comment) in enumerate(entries):
            policy = "never"
            if line.role == "item":
                if k > 0:
                    policy = "preserve"
                elif line.item.previous is not None:
                    policy = "force" if _separate(line.item.previous, line.item) else "preserve"
            elif line.role in ("group_close", "eof") and is_comment:
                policy = "preserve" if (k > 0 or line.container.items) else "never"
            if is_comment:
                emit(" " * line.comment_indent + entry.text, entry.span.start, entry.span.end, policy)
            else:
                body = " " * line.indent + line.text
                end = line.end
                if trailing:
                    body += "  " + trailing[0].text
                    end = max(end, trailing[0].span.end)
                emit(body, line.anchor, end, policy)
    return out


def _one_line(item: _Item) -> bool:
    return item.kind in ("tag", "let") and len(item.lines) == 1


def _separate(prev: _Item, item: _Item) -> bool:
    return not (_one_line(prev) and _one_line(item))


def _link_items(container: _Container) -> None:
    for prev, item in zip(container.items, container.items[1:]):
        item.previous = prev


def format_module(module: A.Module, text: Optional[str] = None, *, newline: str = "\n") -> str:
    """Canonical text of ``module``.

    ``text`` is the source the module was parsed from: with it, comments
    (``module.comments``) are placed and the author's blank lines between
    statements are kept; without it (a tree built in code) comments are
    ignored.
    """
    layout = _Layout()
    for stmt in module.statements:
        layout.statement(stmt, 0, layout.top)
    end = len(text) if text is not None else 0
    layout.add(_Line(0, "", end, end, "eof", 0, None, layout.top))
    containers = [layout.top] + [line.container for line in layout.lines if line.role == "group_close"]
    for container in containers:
        _link_items(container)
    if text is not None and module.comments:
        _place_comments(layout.lines, text, module.comments)
    layout.lines = _merge_empty_blocks(layout.lines)
    _settle_chains(layout)
    rendered = _render(layout, text)
    return newline.join(rendered) + newline if rendered else ""


def syntax_equal(a, b) -> bool:
    """``a == b`` for syntax trees (spans and comments ignored), without
    recursion: the dataclasses' own ``==`` recurses once per level and a
    parser-accepted chain of 400 ``or`` exhausts Python's stack."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if dataclasses.is_dataclass(x):
            for f in dataclasses.fields(x):
                if f.compare:
                    stack.append((getattr(x, f.name), getattr(y, f.name)))
        elif isinstance(x, (tuple, list)):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif x != y:
            return False
    return True


def _newline_of(text: str) -> str:
    nl = text.find("\n")
    return "\r\n" if nl > 0 and text[nl - 1] == "\r" else "\n"


def format_text(text: str, path: str = "<string>", *, verify: bool = True) -> str:
    """Format one file's text. Raises ``FormatError`` when it has syntax errors
    (``.diagnostics`` lists them, first one first)."""
    module, diagnostics = parse_text(text, path)
    if diagnostics:
        diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        first = diagnostics[0]
        raise FormatError(f"{first.code} {first.message}", diagnostics,
                          location=f"{first.span.file}:{first.span.line}:{first.span.column}")
    result = format_module(module, text, newline=_newline_of(text))
    if verify:
        again, problems = parse_text(result, path)
        same_comments = sorted(c.text for c in again.comments) == sorted(c.text for c in module.comments)
        if problems or not syntax_equal(again, module) or not same_comments:  # a formatter bug; never write such output
            raise FormatError("internal error: the formatted text would not mean the same; file left unchanged "
                              "(please report this)", location=path)
    return result


# -- files -----------------------------------------------------------------------------------------


@dataclass
class FileFormat:
    """The outcome of formatting one file (nothing is written by ``format_file``)."""

    path: Path
    shown: str  # the path as displayed
    original: Optional[bytes] = None
    formatted: Optional[bytes] = None  # None: not formatted (see diagnostic / error)
    diagnostic: Optional[Diagnostic] = None  # the first syntax error
    error: Optional[str] = None  # unreadable file, or an internal error

    @property
    def changed(self) -> bool:
        return self.formatted is not None and self.formatted != self.original

    def diagnostic_line(self) -> str:
        d = self.diagnostic
        return f"{d.span.file}:{d.span.line}:{d.span.column}: {d.code} {d.message}" if d else ""


def format_file(path: str | Path) -> FileFormat:
    """Read and format one file; never raises for bad input."""
    from .loader import display_path

    path = Path(path)
    result = FileFormat(path, display_path(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        result.error = f"{result.shown}: cannot read: {exc.strerror}"
        return result
    result.original = data
    text, diagnostics = decode_source(data, result.shown)
    if text is None:
        result.diagnostic = diagnostics[0]
        return result
    try:
        formatted = format_text(text, result.shown)
    except FormatError as exc:
        if exc.diagnostics:
            result.diagnostic = exc.diagnostics[0]
        else:
            result.error = str(exc)
        return result
    except Exception as exc:  # a formatter bug must not cost the user a traceback or the file
        result.error = f"{result.shown}: internal error while formatting ({type(exc).__name__}: {exc}); " \
                       "file left unchanged (please report this)"
        return result
    result.formatted = (_BOM if data.startswith(_BOM) else b"") + formatted.encode("utf-8")
    return result


def write_formatted(result: FileFormat) -> None:
    """Replace the file with its formatted bytes atomically (temp file in the
    same directory, then rename), keeping its permissions. A symbolic link is
    followed: its target is rewritten. Raises ``TagDSLError`` on failure."""
    if result.formatted is None:
        raise ValueError("nothing to write")
    target = result.path.resolve()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(result.formatted)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise TagDSLError(f"{result.shown}: cannot write: {exc.strerror or exc}")


def _lines(text: str) -> list[str]:
    # Only "\n" ends a line (str.splitlines would also split at \f, \x1c, U+2028, ...).
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def diff_text(result: FileFormat) -> str:
    """A unified diff from the file to its formatted text ("" when unchanged)."""
    if not result.changed:
        return ""
    old = _lines((result.original or b"").decode("utf-8", "replace"))
    new = _lines((result.formatted or b"").decode("utf-8"))
    lines = []
    for line in difflib.unified_diff(old, new, f"a/{result.shown}", f"b/{result.shown}"):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        lines.append(line)
    return "".join(lines)
