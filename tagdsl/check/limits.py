"""Pass `limits`: the platform's counts (TD501, TD502).

Limits come from ``config.limits_resolved`` (the platform's profile with the
``[limits]`` overrides). Tags are counted from the syntax tree, distinct after
name normalisation, so the count is right even when some rules have errors.
"""

from __future__ import annotations

from ..diagnostics import RULES, Diagnostic
from .names import PLATFORM_LABELS, normalize_name, tag_statements


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run(ctx) -> None:
    limits = ctx.config.limits_resolved
    platform = PLATFORM_LABELS[ctx.config.project.platform]
    distinct = []  # (statement, group) of each distinct tag, in file order
    seen: set[str] = set()
    for stmt, group in tag_statements(ctx.modules):
        key = normalize_name(stmt.name)
        if not key or key in seen:
            continue  # empty and duplicate names are reported by `names`
        seen.add(key)
        distinct.append((stmt, group))

    if limits.max_tags is not None and len(distinct) > limits.max_tags:
        beyond, _ = distinct[limits.max_tags]
        ctx.diagnostics.append(Diagnostic(
            "TD501", RULES["TD501"].severity,
            f"the ruleset defines {len(distinct)} distinct tags (computed and manual); {platform} allows at most "
            f"{limits.max_tags}; this is tag number {limits.max_tags + 1}",
            beyond.name_span,
            f"merge or retire {len(distinct) - limits.max_tags} tag(s), e.g. fold expired activity tags into one"))

    cap = limits.max_tags_per_follower
    if cap is None:
        return
    # Worst case: one tag of each exclusive group, plus every other tag.
    exclusive_groups: set[str] = set()
    others = 0
    first_over = None
    for stmt, group in distinct:
        if group is not None and group.exclusive and not stmt.manual:
            if group.name in exclusive_groups:
                continue
            exclusive_groups.add(group.name)
        else:
            others += 1
        if first_over is None and len(exclusive_groups) + others > cap:
            first_over = stmt
    bound = len(exclusive_groups) + others
    if first_over is not None:
        ctx.diagnostics.append(Diagnostic(
            "TD502", RULES["TD502"].severity,
            f"a follower can hold up to {bound} tags at once (limit {cap}): "
            f"{_plural(len(exclusive_groups), 'exclusive group')} + {_plural(others, 'other tag')}",
            first_over.name_span,
            "put tags that cannot hold together into `group \"…\" exclusive { … }`, or set `priority` on the "
            "important ones (the lowest-priority tags are dropped when a follower exceeds the limit)"))
