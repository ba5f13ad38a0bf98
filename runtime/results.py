"""Plain results of the engine's operations, each with ``to_dict()`` (the
JSON the CLI prints with ``--format json``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Optional
from zoneinfo import ZoneInfo


def iso_instant(value: dt.datetime, tz: ZoneInfo) -> str:
    """A naive project-time-zone instant as ISO-8601 with its offset."""
    return value.replace(tzinfo=tz).isoformat()


@dataclass
class TagCount:
    """One computed tag after a run: members, and the change this run made."""

    total: int = 0
    added: int = 0
    removed: int = 0

    def to_dict(self) -> dict:
        return {"total": self.total, "added": self.added, "removed": self.removed}


@dataclass(frozen=True)
class Drop:
    """A computed tag a follower qualified for but did not get, because of the
    per-follower tag limit."""

    openid: str
    tag: str
    priority: int

    def to_dict(self) -> dict:
        return {"openid": self.openid, "tag": self.tag, "priority": self.priority}


@dataclass
class ApplyResult:
    run_id: Optional[int]  # None for a dry run
    as_of: dt.datetime  # naive, in ``tz``
    tz: ZoneInfo
    followers: int
    tags: dict[str, TagCount]  # every computed tag of the ruleset, in file order
    dropped: list[Drop]
    seconds: float
    dry_run: bool = False
    expired: int = 0  # memberships removed because of `expires`
    limit: Optional[int] = None  # the per-follower limit in force

    @property
    def added(self) -> int:
        return sum(c.added for c in self.tags.values())

    @property
    def removed(self) -> int:
        return sum(c.removed for c in self.tags.values())

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "as_of": iso_instant(self.as_of, self.tz),
            "followers": self.followers,
            "tags": {name: c.to_dict() for name, c in self.tags.items()},
            "dropped": [d.to_dict() for d in self.dropped],
            "seconds": round(self.seconds, 3),
        }


def share(count: int, total: int) -> float:
    return round(count / total, 4) if total else 0.0


@dataclass(frozen=True)
class BreakdownRow:
    """The audience within one value of a follower field: ``count`` of the
    ``total`` followers with that value (``value`` None: the field is missing)."""

    value: object
    count: int
    total: int

    @property
    def share(self) -> float:
        return share(self.count, self.total)

    def to_dict(self) -> dict:
        value = self.value
        if isinstance(value, (dt.date, dt.datetime)):
            value = value.isoformat()
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            value = str(value)  # Decimal
        return {"value": value, "count": self.count, "total": self.total, "share": self.share}


@dataclass
class PreviewResult:
    label: str  # the expression text or the audience's name
    as_of: dt.datetime
    tz: ZoneInfo
    count: int
    total: int
    sample: list[str] = field(default_factory=list)
    by: Optional[list[BreakdownRow]] = None
    by_field: Optional[str] = None

    @property
    def share(self) -> float:
        return share(self.count, self.total)

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "total": self.total,
            "share": self.share,
            "sample": list(self.sample),
            "by": None if self.by is None else [row.to_dict() for row in self.by],
        }


@dataclass
class FollowerExplanation:
    """``tagdsl explain``: the evaluator's explanation of every rule, plus what
    apply would decide for this follower beyond the rules: tags blocked by
    ``expires`` and the per-follower limit."""

    explanation: object  # tagdsl.compile.python.Explanation
    stored: dict[str, list[str]]  # tag -> sources it is stored with (rule, manual, import)
    limit: Optional[int]
    blocked: dict[str, dt.datetime]  # computed tags held back by `expires`: tag -> when it expired
    dropped: list[Drop]  # computed tags the limit would drop

    @property
    def follower_id(self) -> str:
        return self.explanation.follower_id

    @property
    def holding(self) -> set[str]:
        """Computed tags whose effective condition holds (before expiry and the limit)."""
        return self.explanation.holding

    @property
    def protected(self) -> list[str]:
        """Tags stored from a manual or import source: never dropped, but they count."""
        return sorted(t for t, sources in self.stored.items() if any(s != "rule" for s in sources))

    @property
    def assigned(self) -> set[str]:
        """The computed tags apply would give this follower."""
        return self.holding - set(self.blocked) - {d.tag for d in self.dropped}

    def tag(self, name: str):
        return self.explanation.tag(name)

    def to_dict(self) -> dict:
        out = self.explanation.to_dict()
        out["stored"] = {tag: list(sources) for tag, sources in sorted(self.stored.items())}
        out["expired"] = {tag: when.isoformat() for tag, when in sorted(self.blocked.items())}
        out["limit"] = {"max_tags_per_follower": self.limit, "protected": self.protected,
                        "computed": sorted(self.holding - set(self.blocked)),
                        "dropped": [d.to_dict() for d in self.dropped]}
        out["assigned"] = sorted(self.assigned)
        return out

    def render(self) -> str:
        lines = [self.explanation.render()]
        for tag, when in sorted(self.blocked.items()):
            lines.append(f"expires: {tag} expired at {when.isoformat(sep=' ')}; not assigned again until "
                         "its condition has stopped holding")
        computed = sorted(self.holding - set(self.blocked))
        protected = self.protected
        counted = len(set(computed) | set(protected))
        if self.limit is None:
            lines.append(f"limit: none on this platform; {counted} tag(s) in all")
        else:
            held = f"{len(computed)} computed + {len(protected)} manual/imported"
            if protected:
                held += f" ({', '.join(protected)})"
            if not self.dropped:
                lines.append(f"limit: {counted} of {self.limit} tags per follower ({held}): nothing dropped")
            else:
                lost = ", ".join(f"{d.tag} (priority {d.priority})" for d in self.dropped)
                lines.append(f"limit: {counted} tags > {self.limit} per follower ({held}): "
                             f"drops the lowest priority: {lost}")
        return "\n".join(lines)
