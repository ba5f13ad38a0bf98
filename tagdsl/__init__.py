"""tagdsl: a tagging language for WeChat follower management.

The language package: parse, check, format and compile. It never imports the
runtime or the CLI.

The names below are imported on first use (PEP 562), so a command that needs
only part of the package (`tagdsl rules`, `--help`) does not load the
configuration models (pydantic) or the checker.
"""

from __future__ import annotations

import importlib

from .diagnostics import RULES, Diagnostic, RulesetError, Severity, TagDSLError

__version__ = "0.1.0"

_LAZY = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "Analysis": "loader", "analyze": "loader", "collect_files": "loader", "load_ruleset": "loader",
    "parse_text": "parser",
    "SourceFile": "spans", "Span": "spans",
}

__all__ = [
    "Analysis", "Config", "ConfigError", "Diagnostic", "RULES", "RulesetError", "Severity", "SourceFile",
    "Span", "TagDSLError", "analyze", "collect_files", "load_config", "load_ruleset", "parse_text",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        # A submodule (`tagdsl.loader`) that has not been imported yet.
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
