"""tagdsl: a tagging language for WeChat follower management.

The language package: parse, check, format and compile. It never imports the
runtime or the CLI.
"""

from .config import Config, ConfigError, load_config
from .diagnostics import Diagnostic, RULES, RulesetError, Severity, TagDSLError
from .loader import Analysis, analyze, collect_files, load_ruleset
from .parser import parse_text
from .spans import SourceFile, Span

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Config", "ConfigError", "Diagnostic", "RULES", "RulesetError", "Severity", "SourceFile",
    "Span", "TagDSLError", "analyze", "collect_files", "load_config", "load_ruleset", "parse_text",
]
