"""The checker: an ordered list of named passes that collect diagnostics (as
in OPA's compiler stages). Each pass reads ``CheckContext`` and appends to
``ctx.diagnostics``; later passes skip work when ``ctx.ruleset`` is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..ast import Module
from ..config import Config
from ..diagnostics import Diagnostic, Severity
from ..ir import Ruleset


@dataclass
class CheckContext:
    modules: list[Module]
    config: Config
    diagnostics: list[Diagnostic] = field(default_factory=list)
    ruleset: Optional[Ruleset] = None
    resolver: Any = None
    let_stmts: dict = field(default_factory=dict)
    resolved_lets: dict = field(default_factory=dict)
    scoper: Any = None  # graph.Scoper shared by the passes that walk conditions (graph, privacy)


def _passes() -> list[tuple[str, Callable[[CheckContext], None]]]:
    from . import resolve

    passes: list[tuple[str, Callable[[CheckContext], None]]] = [("resolve", resolve.run)]
    # Optional passes register themselves in PASS_ORDER (see below).
    import importlib

    for name in PASS_ORDER:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a pass not written yet
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        passes.append((name, module.run))
    return passes


# Passes after `resolve`, in order. Each module defines run(ctx).
PASS_ORDER = ["names", "limits", "graph", "privacy", "logic"]


def check(modules: list[Module], config: Config) -> CheckContext:
    ctx = CheckContext(list(modules), config)
    for _name, run in _passes():
        run(ctx)
    # One diagnostic per (code, place, message), in source order.
    unique = {(d.code, d.span, d.message): d for d in ctx.diagnostics}
    ctx.diagnostics = sorted(unique.values(), key=Diagnostic.sort_key)
    return ctx


def has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diagnostics)
