"""Reading a ruleset (files and directories of ``.tag`` files) and checking it."""

from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from . import ast as A
from .check import check, has_errors
from .config import Config, load_config
from .diagnostics import Diagnostic, RulesetError, TagDSLError
from .ir import Ruleset
from .parser import decode_source, parse_text
from .spans import SourceFile

RULE_SUFFIX = ".tag"
MAX_FILE_BYTES = 20_000_000


@dataclass
class Analysis:
    """Everything lint needs: the checked ruleset (None when it has errors
    that prevent building it), all diagnostics, and the sources for display."""

    ruleset: Optional[Ruleset]
    diagnostics: list[Diagnostic]
    modules: list[A.Module]
    sources: dict[str, SourceFile] = field(default_factory=dict)
    config: Optional[Config] = None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity.value == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity.value == "warning"]


def display_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def collect_files(paths: Iterable[str | Path], suffix: str = RULE_SUFFIX) -> list[Path]:
    """Expand files and directories (recursively) into a sorted list of rule files."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob(f"*{suffix}") if q.is_file()))
        elif p.is_file():
            found.append(p)
        else:
            raise TagDSLError(f"{raw}: no such file or directory")
    unique: list[Path] = []
    seen = set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def parse_file(path: Path) -> tuple[A.Module, list[Diagnostic], SourceFile]:
    shown = display_path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            src = SourceFile(shown, "")
            from .diagnostics import RULES

            return A.Module(shown, ()), [Diagnostic("TD105", RULES["TD105"].severity,
                                                     f"file is too large ({size:,} bytes)", src.span(0, 0),
                                                     "split the ruleset into several files")], src
        data = path.read_bytes()
    except OSError as exc:
        raise TagDSLError(f"{shown}: cannot read: {exc.strerror}")
    text, diags = decode_source(data, shown)
    if text is None:
        return A.Module(shown, ()), diags, SourceFile(shown, data.decode("utf-8", "replace"))
    module, diags = parse_text(text, shown)
    return module, diags, SourceFile(shown, text)


def analyze(paths: Sequence[str | Path] | None = None, config: Config | None = None,
            *, texts: dict[str, str] | None = None) -> Analysis:
    """Parse and check a ruleset. ``texts`` (name -> source) bypasses the file
    system, for tests and for tools that hold rule text in memory."""
    # Parsing and checking allocate many small objects and free few: the
    # cyclic collector's full passes found nothing yet took a quarter of the
    # time of linting 1,000 rules. Pause it; garbage is collected afterwards.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _analyze(paths, config, texts)
    finally:
        if paused:
            gc.enable()


def _analyze(paths, config: Config | None, texts: dict[str, str] | None) -> Analysis:
    config = config or load_config()
    modules, diagnostics, sources = [], [], {}
    if texts is not None:
        for name, text in texts.items():
            module, diags = parse_text(text, name)
            modules.append(module)
            diagnostics.extend(diags)
            sources[name] = SourceFile(name, text)
    else:
        files = collect_files(paths if paths else config.ruleset_paths())
        for path in files:
            module, diags, src = parse_file(path)
            modules.append(module)
            diagnostics.extend(diags)
            sources[src.path] = src
    ctx = check(modules, config)
    all_diags = sorted({(d.code, d.span, d.message): d for d in diagnostics + ctx.diagnostics}.values(),
                       key=Diagnostic.sort_key)
    ruleset = ctx.ruleset
    if ruleset is not None:
        digest = hashlib.sha256()
        for name in sorted(sources):
            digest.update(name.encode())
            digest.update(b"\0")
            digest.update(sources[name].text.encode())
            digest.update(b"\0")
        ruleset.source_hash = digest.hexdigest()[:16]
    return Analysis(None if has_errors(all_diags) else ruleset, all_diags, modules, sources, config)


def load_ruleset(paths: Sequence[str | Path] | None = None, config: Config | None = None,
                 *, texts: dict[str, str] | None = None) -> Ruleset:
    """Parse and check; return the ruleset, or raise ``RulesetError`` listing the errors.

    Warnings are kept on ``ruleset.diagnostics``.
    """
    analysis = analyze(paths, config, texts=texts)
    if analysis.ruleset is None:
        raise RulesetError(analysis.errors)
    analysis.ruleset.diagnostics = analysis.diagnostics  # type: ignore[attr-defined]
    return analysis.ruleset
