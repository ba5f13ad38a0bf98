"""Source files and spans.

A ``Span`` is a half-open range of character offsets in one ``SourceFile``,
with 1-based line and column numbers (columns count code points, as editors
and SARIF do). Drawing carets under CJK text needs the *display* width, which
``display_width`` gives.
"""

from __future__ import annotations

import bisect
import unicodedata
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Span:
    file: str
    start: int  # character offset, inclusive
    end: int  # character offset, exclusive
    line: int  # 1-based
    column: int  # 1-based, in code points
    end_line: int
    end_column: int  # 1-based, exclusive

    def __repr__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}-{self.end_line}:{self.end_column}"


@dataclass
class SourceFile:
    """The text of one rule file, with fast offset -> (line, column) lookup."""

    path: str
    text: str
    _line_starts: list[int] = field(default_factory=list, repr=False)
    _positions: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0]
        for i, ch in enumerate(self.text):
            if ch == "\n":
                starts.append(i + 1)
        self._line_starts = starts

    def position(self, offset: int) -> tuple[int, int]:
        # Memoised: a parse asks for the same offsets many times (a node
        # starts where its first child starts).
        found = self._positions.get(offset)
        if found is None:
            clamped = max(0, min(offset, len(self.text)))
            line_index = bisect.bisect_right(self._line_starts, clamped) - 1
            found = self._positions[offset] = (line_index + 1, clamped - self._line_starts[line_index] + 1)
        return found

    def span(self, start: int, end: int | None = None) -> Span:
        if end is None or end < start:
            end = start
        line, column = self.position(start)
        end_line, end_column = self.position(end)
        return Span(self.path, start, end, line, column, end_line, end_column)

    def line_text(self, line: int) -> str:
        if line < 1 or line > len(self._line_starts):
            return ""
        start = self._line_starts[line - 1]
        end = self._line_starts[line] - 1 if line < len(self._line_starts) else len(self.text)
        return self.text[start:end].rstrip("\r")


def char_width(ch: str) -> int:
    """Terminal columns taken by one character (CJK wide/fullwidth take two)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)
