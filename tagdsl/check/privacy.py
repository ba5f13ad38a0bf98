"""Pass `privacy`: sensitive tags need `sensitive` and a `review` (TD701).

PIPL treats data about minors, health, religion, ethnicity, politics, income
and ID numbers as sensitive; operators' practice is a double review before
such a tag is used. A tag looks sensitive when its name, or the name of a
field (or source) its condition reads, contains one of
``[project] sensitive_words``.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Optional

from .. import ast as A
from ..diagnostics import RULES, Diagnostic
from .graph import scoper_for
from .names import shown, tag_statements


@lru_cache(maxsize=4096)  # the same field names are read by many rules
def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _sensitive_word(text: str, words: list[tuple[str, str]]) -> Optional[str]:
    folded = _fold(text)
    for word, key in words:
        if key in folded:
            return word
    return None


def _attributes(stmt: A.TagStmt) -> tuple[bool, bool]:
    """(marked sensitive, has a non-empty review)."""
    sensitive = any(a.key == "sensitive" for a in stmt.attributes)
    review = any(a.key == "review" and a.value is not None and isinstance(a.value.value, str)
                 and a.value.value.strip() for a in stmt.attributes)
    return sensitive, review


def _read_names(stmt: A.TagStmt, scoper) -> list[str]:
    """Names of the fields and sources the condition reads (lets expanded)."""
    names: list[str] = []
    if stmt.condition is None:
        return names
    for node, source, _ in scoper.nodes(stmt.condition):
        if isinstance(node, A.Name) and scoper.let_of(node, source) is None:
            names.append(node.name)
        elif isinstance(node, A.SourceField):
            names.extend((node.source, node.field))
    return names


def run(ctx) -> None:
    words = [(w, _fold(w).strip()) for w in ctx.config.project.sensitive_words]
    words = [(w, key) for w, key in words if key]
    scoper = scoper_for(ctx)
    for stmt, _group in tag_statements(ctx.modules):
        sensitive, review = _attributes(stmt)
        if sensitive and review:
            continue
        reason = None
        word = _sensitive_word(stmt.name, words)
        if word is not None:
            reason = f"its name contains `{word}`"
        else:
            for name in _read_names(stmt, scoper):
                word = _sensitive_word(name, words)
                if word is not None:
                    reason = f"it reads `{name}`, which contains `{word}`"
                    break
        tag = shown(stmt.name)
        if reason is not None:
            if sensitive:
                message = f"tag `{tag}` is marked `sensitive` but has no `review`"
                hint = 'add review "…" naming who approved it and when (PIPL: double review)'
            elif review:
                message = f"tag `{tag}` looks sensitive ({reason}) but is not marked `sensitive`"
                hint = "add `sensitive` to its block"
            else:
                message = f"tag `{tag}` looks sensitive ({reason}) but is not marked `sensitive` with a `review`"
                hint = 'after a double review (PIPL), add { sensitive review "reviewer, date" }'
        elif sensitive:
            message = f"tag `{tag}` is marked `sensitive` but has no `review`"
            hint = 'add review "…" naming who approved it and when (PIPL: double review)'
        else:
            continue
        ctx.diagnostics.append(Diagnostic("TD701", RULES["TD701"].severity, message, stmt.name_span, hint))
