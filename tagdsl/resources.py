"""Locating the grammar and the shipped rulesets, installed or in a checkout."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _package_dir(package: str, checkout_dir: str) -> Path:
    try:
        from importlib.resources import files

        path = Path(str(files(package)))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return _CHECKOUT / checkout_dir


@lru_cache(maxsize=None)
def grammar_text() -> str:
    path = _CHECKOUT / "grammar" / "tagdsl.lark"
    if not path.is_file():
        path = _package_dir("tagdsl._grammar", "grammar") / "tagdsl.lark"
    return path.read_text(encoding="utf-8")


def shipped_rulesets_dir() -> Path:
    """The directory of the rulesets shipped with tagdsl."""
    path = _CHECKOUT / "rulesets"
    if path.is_dir() and any(path.glob("*.tag")):
        return path
    return _package_dir("tagdsl._rulesets", "rulesets")
