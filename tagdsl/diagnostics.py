"""Diagnostics and the registry of their codes.

Every problem tagdsl reports is a ``Diagnostic`` with a stable code from
``RULES`` (one registry, as in ruff: each code documented with what it
catches, why, and an example), a severity, a precise span and a hint.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .spans import Span


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str
    why: str = ""
    bad: str = ""  # an example that triggers it
    good: str = ""  # the fixed example


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span
    hint: str | None = None

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    def sort_key(self):
        return (self.span.file, self.span.start, self.code, self.message)


class TagDSLError(Exception):
    """A user-facing error: one clear line, no traceback. ``exit_code`` 2 means
    usage/configuration/environment, 1 means the input has errors."""

    exit_code = 2

    def __init__(self, message: str, *, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class RulesetError(TagDSLError):
    """The ruleset has error diagnostics; the engine refuses to run it."""

    exit_code = 1

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if d.severity is Severity.ERROR]
        first = errors[0] if errors else diagnostics[0]
        where = f"{first.span.file}:{first.span.line}:{first.span.column}"
        more = f" (and {len(errors) - 1} more error(s); run `tagdsl lint`)" if len(errors) > 1 else ""
        super().__init__(f"{first.code} {first.message}{more}", location=where)


RULES: dict[str, Rule] = {}


def _rule(code: str, name: str, severity: Severity, summary: str, why: str = "", bad: str = "", good: str = "") -> Rule:
    assert code not in RULES, code
    RULES[code] = r = Rule(code, name, severity, summary, why, bad, good)
    return r


E, W = Severity.ERROR, Severity.WARNING

# -- TD1xx: syntax ---------------------------------------------------------
_rule("TD100", "syntax-error", E, "The text is not valid TagDSL at this token.",
      "The parser cannot continue; nothing in the file can be trusted until it parses.",
      'tag "新客" count(orders) == 0', 'tag "新客" when count(orders) == 0')
_rule("TD101", "unterminated-string", E, "A string literal has no closing quote on its line.",
      "Strings cannot span lines; the rest of the line would be swallowed.",
      'tag "新客 when count(orders) == 0', 'tag "新客" when count(orders) == 0')
_rule("TD102", "invalid-escape", E, "A string contains an unknown escape sequence.",
      r'Only \" \\ \n \t and \uXXXX are escapes; anything else is a typo.',
      r'city == "北\京"', r'city == "北京"')
_rule("TD103", "unbalanced-delimiter", E, "A brace, bracket or parenthesis is not closed, or closed without being opened.",
      "The block or expression has no end, so the statements after it are misread.",
      'group "地域" { tag "北京" when city == "北京"', 'group "地域" { tag "北京" when city == "北京" }')
_rule("TD104", "invalid-literal", E, "A number, duration, date or datetime literal is malformed.",
      "A literal the engine cannot read exactly would silently change the rule.",
      'created_at > date("2026-13-01")', 'created_at > date("2026-12-01")')
_rule("TD105", "input-too-large", E, "The file is too large or an expression is nested too deeply.",
      "Pathological input is refused with a clear error instead of exhausting memory or the stack.",
      "((((((...10,000 levels...))))))", "a flat expression")
_rule("TD106", "invalid-encoding", E, "The file is not valid UTF-8 or contains a NUL byte.",
      "Rule files are UTF-8 text; binary content is almost always a mistake.",
      "a file saved as GBK", "the same file saved as UTF-8")

# -- TD2xx: names ------------------------------------------------------------
_rule("TD201", "unknown-field", E, "A name is not a follower field, a source field or a `let`.",
      "An unknown name would make the rule fail at run time against the database.",
      'tag "北京" when cty == "北京"', 'tag "北京" when city == "北京"')
_rule("TD202", "unknown-source", E, "An aggregate names an event source that the configuration does not declare.",
      "Sources are declared in tagdsl.toml so lint needs no database.",
      "count(order) >= 1", "count(orders) >= 1")
_rule("TD203", "unknown-function", E, "A function is not part of the language.",
      "Only documented functions exist in both the SQL and in-memory engines.",
      "day_since(last_active_at) >= 90", "days_since(last_active_at) >= 90")
_rule("TD204", "unknown-tag", E, "`tag(\"…\")` names a tag that no rule defines.",
      "A reference to a missing tag is always false and silently empties the audience.",
      'not tag("已购卖")', 'not tag("已购买")')
_rule("TD205", "unknown-attribute", E, "A tag or audience block contains an unknown attribute.",
      "Attributes are description, owner, priority, expires, sensitive, review and reply.",
      'tag "a" when true { priorty 10 }', 'tag "a" when true { priority 10 }')
_rule("TD206", "duplicate-definition", E, "A `let`, audience or group is defined twice.",
      "The ruleset is one namespace; a second definition would silently win.",
      "let x = 1\nlet x = 2", "let x = 1\nlet y = 2")
_rule("TD207", "wrong-arguments", E, "A function or aggregate is called with the wrong number or kind of arguments.",
      "Each function has a fixed signature.",
      "days_since()", "days_since(last_active_at)")
_rule("TD208", "invalid-attribute", E, "An attribute has a missing or ill-typed value, or is repeated.",
      "priority takes an integer, expires a duration, description/owner/review/reply a string; sensitive takes none.",
      'tag "a" when true { priority "high" }', 'tag "a" when true { priority 10 }')
_rule("TD209", "nested-aggregate", E, "An aggregate is used inside another aggregate's arguments.",
      "Aggregates are computed per follower over one source; nesting has no meaning.",
      "count(orders where amount > avg(orders.amount))", "count(orders where amount > 100)")
_rule("TD210", "invalid-manual-tag", E, "A manual tag has a condition, or a computed tag in a non-rule position.",
      "Manual tags are kept by staff; the engine never computes them.",
      'tag "VIP" manual when true', 'tag "VIP" manual')

# -- TD3xx: types --------------------------------------------------------------
_rule("TD301", "type-mismatch", E, "Operands have incompatible types.",
      "Comparing a string with a number (or similar) is never meaningful and differs between databases.",
      'age == "30"', "age == 30")
_rule("TD302", "within-without-time", E, "`within` is used on a source that declares no time column.",
      "A time window needs the source's time column.",
      "count(tags within 30d)", "count(orders within 30d)")
_rule("TD303", "non-numeric-aggregate", E, "sum/avg is applied to a field that is not a number.",
      "Only integer, decimal and float fields can be summed or averaged.",
      "sum(orders.category)", "sum(orders.amount)")
_rule("TD304", "condition-not-boolean", E, "A rule, audience or `where` condition is not a boolean expression.",
      "Conditions must be true or false for every follower.",
      'tag "a" when count(orders)', 'tag "a" when count(orders) >= 1')

# -- TD4xx: tag names ------------------------------------------------------------
_rule("TD401", "duplicate-tag", E, "Two tags have the same name (after NFKC normalisation and trimming).",
      "WeChat rejects duplicate tag names (45157); near-identical names confuse operators.",
      'tag "沉睡唤醒" when days_since(last_active_at) >= 90\ntag "沉睡唤醒 " when days_since(last_active_at) >= 60',
      'tag "沉睡唤醒" when days_since(last_active_at) >= 90\ntag "沉睡预警" when days_since(last_active_at) >= 60')
_rule("TD402", "empty-tag-name", E, "A tag or group name is empty.",
      "WeChat cannot create a tag without a name.", 'tag "" when count(orders) == 0',
      'tag "新客" when count(orders) == 0')
_rule("TD403", "tag-name-whitespace", E, "A tag name starts or ends with whitespace.",
      "Operators cannot see the space; it produces look-alike duplicates.",
      'tag " 新客" when count(orders) == 0', 'tag "新客" when count(orders) == 0')
_rule("TD404", "tag-name-invisible", E, "A tag name contains a control or invisible character (e.g. U+200B, U+202E).",
      "Invisible and bidirectional characters make names look like other names.",
      'tag "新\\u200b客" when count(orders) == 0', 'tag "新客" when count(orders) == 0')
_rule("TD405", "tag-name-too-long", E, "A tag name exceeds the platform's length limit.",
      "The official account limits tag names to 30 bytes of UTF-8 (45158): 10 Chinese characters fit, 11 do not.",
      'tag "这是一个非常非常长的标签名" manual', 'tag "长标签名" manual')
_rule("TD406", "reserved-tag-name", E, "A tag name is reserved by the platform.",
      "星标组 is the official account's built-in tag (id 2).", 'tag "星标组" manual', 'tag "星标用户" manual')
_rule("TD407", "tag-name-long", W, "A tag name is longer than the recommended length.",
      "Operators' playbook: names of at most 8 Chinese characters read well in the back office.",
      'tag "最近三十天活跃高价值" manual', 'tag "30天高价值活跃" manual')
_rule("TD408", "hierarchy-too-deep", W, "The tag hierarchy (group plus '-' separated segments) is deeper than max_depth.",
      "Hierarchies beyond two or three levels are hard to maintain.",
      'group "渠道" { tag "线下-华南-广州" when city == "广州" }', 'group "渠道" { tag "线下-广州" when city == "广州" }')

# -- TD5xx: platform limits ----------------------------------------------------------
_rule("TD501", "too-many-tags", E, "The ruleset defines more distinct tags than the platform allows.",
      "An official account holds at most 100 tags (45056); WeCom 3000 corp tags.",
      "101 tag statements", "at most 100 tags")
_rule("TD502", "too-many-tags-per-follower", W, "One follower could hold more tags at once than the platform allows.",
      "An official-account follower holds at most 20 tags (45059); the bound counts one tag per exclusive group "
      "plus every other tag (manual ones included); beyond it the lowest-priority tags are dropped.",
      "25 independent tags", "group related tags in exclusive groups")

# -- TD6xx: logic ----------------------------------------------------------------------
_rule("TD601", "exclusive-overlap", W, "Two rules of an exclusive group can hold for the same follower.",
      "Then file order decides silently; make the conditions disjoint or order them deliberately.",
      'group "g" exclusive { tag "a" when age >= 18  tag "b" when age < 30 }',
      'group "g" exclusive { tag "a" when age >= 30  tag "b" when age < 30 }')
_rule("TD602", "shadowed-rule", W, "A rule of an exclusive group can never win: earlier rules cover every case it holds in.",
      "The tag will never be assigned.",
      'group "g" exclusive { tag "a" when age >= 18  tag "b" when age >= 30 }',
      'group "g" exclusive { tag "b" when age >= 30  tag "a" when age >= 18 }')
_rule("TD603", "never-holds", W, "A condition can never hold.", "The tag or audience is always empty.",
      "age > 60 and age < 18", "age > 60 or age < 18")
_rule("TD604", "always-holds", W, "A condition holds for every follower.", "The tag is on everyone; it carries no information.",
      "age >= 0 or age < 0 or age is missing", "age >= 18")
_rule("TD605", "reference-cycle", E, "Tags reference each other in a cycle.",
      "A cycle has no well-defined value. In an exclusive group a tag also depends on the rules before it "
      "(first match wins).",
      'tag "a" when tag("b")\ntag "b" when tag("a")', 'tag "a" when tag("b")\ntag "b" when age > 30')
_rule("TD606", "unused-let", W, "A `let` is never used.", "Dead definitions mislead readers.",
      'let adult = age >= 18\ntag "新客" when count(orders) == 0',
      'let adult = age >= 18\ntag "成年新客" when adult and count(orders) == 0')
_rule("TD607", "let-cycle", E, "A `let` refers to itself, directly or through other lets.",
      "Lets are named expressions; recursion has no value.", "let a = b + 1\nlet b = a", "let a = 1")

# -- TD7xx: privacy ------------------------------------------------------------------------
_rule("TD701", "sensitive-without-review", W,
      "A tag whose name or fields look sensitive is not marked `sensitive` with a `review`.",
      "PIPL: tags about minors, health, religion, ethnicity, politics, income or ID numbers need a double review.",
      'tag "疾病关注" when exists(events where key == "disease")',
      'tag "疾病关注" when exists(events where key == "disease") { sensitive review "法务-王五 2026-05" }')
