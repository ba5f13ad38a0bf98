"""Pass `names`: tag and group names (TD401–TD408).

Works on the syntax tree, so it runs (and points at the right place) even
when `resolve` could not build every rule. All files of a ruleset are one
namespace; names are compared after NFKC normalisation and trimming, because
the platform and the operators see "沉睡唤醒", "沉睡唤醒 " and a full-width
variant as the same tag.
"""

from __future__ import annotations

import unicodedata
from typing import Iterator, Optional

from .. import ast as A
from ..diagnostics import RULES, Diagnostic
from ..spans import Span

# Characters that render as nothing (or as blank) although they are not
# categorised as format/control characters.
_INVISIBLE_EXTRA = {
    0x034F,  # COMBINING GRAPHEME JOINER
    0x115F, 0x1160, 0x3164, 0xFFA0,  # Hangul fillers
    0x17B4, 0x17B5,  # Khmer inherent vowels
    0x2800,  # BRAILLE PATTERN BLANK
}
_INVISIBLE_EXTRA_CHARS = frozenset(map(chr, _INVISIBLE_EXTRA))
_INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn")
_CONTROL_NAMES = {0x09: "CHARACTER TABULATION", 0x0A: "LINE FEED", 0x0D: "CARRIAGE RETURN"}

PLATFORM_LABELS = {"wechat_mp": "the official account (wechat_mp)", "wecom": "WeCom (wecom)", "none": "this project"}


def is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) in _INVISIBLE_CATEGORIES or ord(ch) in _INVISIBLE_EXTRA


def has_invisible(text: str) -> bool:
    """Whether any character of ``text`` is invisible; fast for the usual
    name. ``str.isprintable`` is false for every invisible category (and for
    other spaces), so a printable text only needs the extra characters checked."""
    if text.isprintable():
        return not _INVISIBLE_EXTRA_CHARS.isdisjoint(text)
    return any(is_invisible(c) for c in text)


def char_label(ch: str) -> str:
    """``U+200B (ZERO WIDTH SPACE)``."""
    name = unicodedata.name(ch, None) or _CONTROL_NAMES.get(ord(ch))
    return f"U+{ord(ch):04X} ({name})" if name else f"U+{ord(ch):04X}"


def shown(name: str) -> str:
    """A name safe to print in a message: invisible characters as escapes."""
    if not has_invisible(name):
        return name
    return "".join(f"\\u{ord(c):04x}" if is_invisible(c) else c for c in name)


def normalize_name(name: str) -> str:
    """The identity of a tag name: NFKC, invisible characters removed, trimmed."""
    folded = unicodedata.normalize("NFKC", name)
    if not has_invisible(folded):
        return folded.strip()
    return "".join(c for c in folded if not is_invisible(c)).strip()


def tag_statements(modules) -> Iterator[tuple[A.TagStmt, Optional[A.GroupStmt]]]:
    """Every tag statement in file order, with the group it sits in."""
    for module in modules:
        for stmt in module.statements:
            if isinstance(stmt, A.TagStmt):
                yield stmt, None
            elif isinstance(stmt, A.GroupStmt):
                for tag in stmt.tags:
                    yield tag, stmt


def group_statements(modules) -> Iterator[A.GroupStmt]:
    for module in modules:
        for stmt in module.statements:
            if isinstance(stmt, A.GroupStmt):
                yield stmt


def where(span: Span) -> str:
    return f"{span.file}:{span.line}:{span.column}"


def _add(ctx, code: str, message: str, span: Span, hint: str | None) -> None:
    ctx.diagnostics.append(Diagnostic(code, RULES[code].severity, message, span, hint))


def _check_text(ctx, kind: str, name: str, span: Span, *, tag: bool, limits=None) -> None:
    """Checks shared by tag and group names: empty, whitespace, invisible, length.
    ``limits``: ``ctx.config.limits_resolved``, which builds a new object per access."""
    if limits is None:
        limits = ctx.config.limits_resolved
    if name.strip() == "":
        what = "empty" if name == "" else "only whitespace"
        _add(ctx, "TD402", f"{kind} name is {what}", span, f'give the {kind} a visible name, e.g. "新客"')
        return
    if name != name.strip():
        sides = [s for s, bad in (("starts", name[0].isspace()), ("ends", name[-1].isspace())) if bad]
        _add(ctx, "TD403", f"{kind} name `{shown(name)}` {' and '.join(sides)} with whitespace", span,
             f'write "{shown(name.strip())}"; the space is invisible to operators')
    body_start = len(name) - len(name.lstrip())
    body_end = len(name.rstrip())
    hidden = [(i, c) for i, c in enumerate(name) if is_invisible(c) and body_start <= i < body_end] \
        if has_invisible(name) else []
    if hidden:
        first_at, first = hidden[0]
        more = f" and {len(hidden) - 1} more" if len(hidden) > 1 else ""
        cleaned = "".join(c for c in name.strip() if not is_invisible(c))
        _add(ctx, "TD404", f"{kind} name `{shown(name)}` contains the invisible character {char_label(first)} "
             f"at position {first_at + 1}{more}", span,
             f'retype the name without it: "{shown(cleaned)}"' if cleaned else "retype the name")
    platform = ctx.config.project.platform
    too_long = False
    if limits.name_max_bytes is not None:
        size = len(name.encode("utf-8"))
        if size > limits.name_max_bytes:
            too_long = True
            _add(ctx, "TD405", f"{kind} name `{shown(name)}` is {size} bytes of UTF-8 ({len(name)} characters); "
                 f"{PLATFORM_LABELS[platform]} allows at most {limits.name_max_bytes} bytes", span,
                 f"shorten it to {limits.name_max_bytes} bytes (a Chinese character takes 3, so at most "
                 f"{limits.name_max_bytes // 3} Chinese characters)")
    if limits.name_max_chars is not None and not too_long and len(name) > limits.name_max_chars:
        too_long = True
        _add(ctx, "TD405", f"{kind} name `{shown(name)}` has {len(name)} characters; "
             f"{PLATFORM_LABELS[platform]} allows at most {limits.name_max_chars}", span,
             f"shorten it to at most {limits.name_max_chars} characters")
    recommended = limits.name_recommended_chars
    if tag and not too_long and recommended is not None and len(name) > recommended:
        _add(ctx, "TD407", f"tag name `{shown(name)}` has {len(name)} characters; at most {recommended} are recommended",
             span, "short names read better in the back office; move the detail into `description`")


def run(ctx) -> None:
    limits = ctx.config.limits_resolved
    reserved = {normalize_name(r): r for r in limits.reserved_names}
    first_seen: dict[str, A.TagStmt] = {}
    for stmt, group in tag_statements(ctx.modules):
        name, span = stmt.name, stmt.name_span
        _check_text(ctx, "tag", name, span, tag=True, limits=limits)
        key = normalize_name(name)
        if not key:
            continue
        if key in first_seen:
            first = first_seen[key]
            if first.name == name:
                message = f"tag `{shown(name)}` is already defined at {where(first.name_span)}"
            else:
                message = (f"tag `{shown(name)}` is the same name as `{shown(first.name)}` defined at "
                           f"{where(first.name_span)} (names are compared after NFKC normalisation and trimming)")
            _add(ctx, "TD401", message, span,
                 "rename or remove one of them; all files of a ruleset share one namespace of tag names")
        else:
            first_seen[key] = stmt
        if key in reserved:
            _add(ctx, "TD406", f"`{shown(name)}` is a reserved tag name on {PLATFORM_LABELS[ctx.config.project.platform]}",
                 span, "choose another name, e.g. add a word: 星标用户" if reserved[key] == "星标组"
                 else "choose another name")
        if limits.max_depth is not None:
            segments = [s for s in key.split("-") if s.strip()]
            levels = ([group.name] if group is not None else []) + segments
            if len(levels) > limits.max_depth:
                inside = f" in group `{shown(group.name)}`" if group is not None else ""
                _add(ctx, "TD408", f"tag `{shown(name)}`{inside} is {len(levels)} levels deep "
                     f"({' / '.join(shown(lv) for lv in levels)}); at most {limits.max_depth} are recommended",
                     span, "flatten the hierarchy: drop a level from the name (`-` separates levels) "
                     "or move the tag to a more specific group")
    for group in group_statements(ctx.modules):
        _check_text(ctx, "group", group.name, group.name_span, tag=False, limits=limits)
