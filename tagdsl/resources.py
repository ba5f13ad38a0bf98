"""Locating the grammar and the shipped rulesets, installed or in a checkout.

In a checkout they live at the top (`grammar/`, `rulesets/`, the user's
layout); an installed package carries them as `tagdsl/_grammar` and
`tagdsl/_rulesets` (see pyproject.toml's package-dir mapping).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _data_dir(installed: str, checkout: str) -> Path:
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _CHECKOUT / checkout


@lru_cache(maxsize=None)
def grammar_text() -> str:
    return (_data_dir("_grammar", "grammar") / "tagdsl.lark").read_text(encoding="utf-8")


def shipped_rulesets_dir() -> Path:
    """The directory of the rulesets shipped with tagdsl."""
    return _data_dir("_rulesets", "rulesets")
