"""WeChat official-account pushes -> store rows, deduplication, and the
incremental re-evaluation of one follower's tags.

One accepted push is handled in **one transaction**:

1. its deduplication key goes into ``{p}serve_seen`` (primary key: a retried
   push fails there and changes nothing else);
2. the follower row is created or updated (subscribe / unsubscribe);
3. the push becomes a row of the events source (``type``, ``key``, time);
4. the follower's tags that the push can change are re-evaluated with the
   in-memory evaluator, and the difference with the stored rule memberships
   is written exactly as ``Engine.apply`` writes it: memberships with source
   ``rule``, a run row (status ``event``), change rows, limit drops and the
   expiry state.

The sync is state-based (it plans from the stored memberships), so a
committed membership is what "queued for sync" means: the next ``tagdsl sync``
picks it up, and nothing is lost if the server stops before it runs.

Which rules a push can change is computed once per event type
(:meth:`EventProcessor.affected`): rules that read the events source through
an aggregate whose ``where`` can hold for a row of that type, rules that read
a follower field the push writes, rules that reference such a tag with
``tag()``, transitively, and every member of an exclusive group with one such
member (the winner may change). A new follower gets every computed rule.
Rules that rank the population (``quintile``, ``percent_rank``) are left to
``apply``: one follower's event moves everyone's rank.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import queue
import threading
import time
from typing import Callable, Iterable, Mapping, Optional

import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table, delete, insert, select, update

from tagdsl import TagDSLError
from tagdsl import ir as I
from tagdsl.compile.python import compile_python
from tagdsl.config import Config
from tagdsl.schema import ID_LENGTH, MYSQL_TABLE_ARGS, STRING_LENGTH, Tables, build_tables

from . import store
from .engine import limit_drops

# Event types named by the issue; other events are their lower-cased Event,
# other messages their MsgType.
EVENT_TYPES = {"subscribe": "subscribe", "unsubscribe": "unsubscribe", "scan": "scan", "click": "menu_click",
               "view": "menu_view"}
KNOWN_TYPES = ("subscribe", "unsubscribe", "scan", "menu_click", "menu_view", "text")
# Notifications about the account's own sends, not interactions of the
# follower: the shipped rules count any event as activity, so they are
# acknowledged but not stored.
NOT_INTERACTIONS = ("templatesendjobfinish", "masssendjobfinish", "subscribe_msg_sent_event")
QR_PREFIX = "qrscene_"
QR_SCENE = "ADD_SCENE_QR_CODE"


class PushError(TagDSLError):
    """A push that is not a well-formed WeChat message (HTTP 400)."""

    exit_code = 2


class ServeSetupError(TagDSLError):
    """The store or configuration cannot serve pushes (exit status 2 at startup)."""

    exit_code = 2


# -- pushes ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Push:
    """The fields of a decrypted callback message that tagdsl uses."""

    openid: str  # FromUserName
    to: str  # ToUserName (the account's original id)
    created: int  # CreateTime, unix seconds
    msg_type: str
    event: Optional[str] = None
    event_key: Optional[str] = None
    msg_id: Optional[str] = None
    content: Optional[str] = None

    @property
    def dedupe_key(self) -> str:
        """MsgId for messages; FromUserName + CreateTime + Event + EventKey for events (hashed)."""
        if self.msg_type != "event" and self.msg_id:
            raw = f"msg\0{self.msg_id}"
        else:
            raw = f"evt\0{self.openid}\0{self.created}\0{self.event or ''}\0{self.event_key or ''}"
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _text(message: Mapping, name: str, required: bool = False) -> Optional[str]:
    value = message.get(name)
    if isinstance(value, dict):  # <Tag attr="..">text</Tag> or an empty element with attributes
        value = value.get("#text")
    if value is not None and not isinstance(value, str):
        raise PushError(f"malformed message: <{name}> must be text")
    if required and not value:
        raise PushError(f"malformed message: <{name}> is missing")
    return value


def push_from_dict(message: Mapping) -> Push:
    """The Push of a parsed ``<xml>`` element (xmltodict's dict); PushError when a required field is missing."""
    if not isinstance(message, Mapping):
        raise PushError("malformed message: <xml> has no fields")
    openid = _text(message, "FromUserName", True)
    if len(openid) > ID_LENGTH:
        raise PushError(f"malformed message: <FromUserName> is longer than {ID_LENGTH} characters")
    created_text = _text(message, "CreateTime", True)
    try:
        created = int(created_text)
    except ValueError:
        raise PushError(f"malformed message: <CreateTime> {created_text[:20]!r} is not unix seconds") from None
    if not 0 < created < 2**33:
        raise PushError(f"malformed message: <CreateTime> {created} is out of range")
    msg_type = _text(message, "MsgType", True).strip().lower()
    return Push(openid=openid, to=_text(message, "ToUserName", True) or "", created=created, msg_type=msg_type,
                event=_text(message, "Event"), event_key=_text(message, "EventKey"),
                msg_id=_text(message, "MsgId"), content=_text(message, "Content"))


@dataclasses.dataclass(frozen=True)
class EventRow:
    type: str
    key: Optional[str]
    occurred_at: dt.datetime  # naive, project time zone


def event_row(push: Push, tz) -> Optional[EventRow]:
    """The events-source row of a push (None for notifications that are not follower interactions)."""
    when = dt.datetime.fromtimestamp(push.created, dt.timezone.utc).astimezone(tz).replace(tzinfo=None)
    if push.msg_type == "event":
        name = (push.event or "").strip().lower()
        if not name:
            raise PushError("malformed message: an event without <Event>")
        if name in NOT_INTERACTIONS:
            return None
        key = push.event_key or ""
        if name == "scan" and key.startswith(QR_PREFIX):  # never prefixed for SCAN, but be lenient
            key = key[len(QR_PREFIX):]
        return EventRow(EVENT_TYPES.get(name, name), key[:STRING_LENGTH], when)
    if push.msg_type == "text":
        return EventRow("text", (push.content or "")[:STRING_LENGTH], when)
    return EventRow(push.msg_type[:STRING_LENGTH], "", when)


def follower_changes(push: Push, row: EventRow, config: Config) -> dict[str, object]:
    """Follower fields (DSL names) the push sets: subscribe/unsubscribe only;
    fields the configuration does not declare are skipped."""
    values: dict[str, object] = {}
    if row.type == "subscribe":
        values["subscribed"] = True
        values["subscribe_time"] = row.occurred_at
        key = push.event_key or ""
        if key.startswith(QR_PREFIX):
            values["subscribe_scene"] = QR_SCENE
            values["qr_scene_str"] = key[len(QR_PREFIX):][:STRING_LENGTH]
    elif row.type == "unsubscribe":
        values["subscribed"] = False
    declared = config.followers.fields
    return {name: v for name, v in values.items() if name in declared}


FIELDS_WRITTEN = {"subscribe": ("subscribed", "subscribe_time", "subscribe_scene", "qr_scene_str"),
                  "unsubscribe": ("subscribed",)}


# -- the deduplication table -------------------------------------------------------------------

def build_seen_table(prefix: str, metadata: MetaData | None = None) -> Table:
    """``{p}serve_seen``: one row per push accepted (the deduplication key is its primary key)."""
    return Table(
        f"{prefix}serve_seen", metadata or MetaData(),
        Column("dedupe_key", String(64), primary_key=True),  # sha256 of MsgId or the event's identity
        Column("openid", String(ID_LENGTH), nullable=False),
        Column("received_at", DateTime(), nullable=False),
        Column("run_id", BigInteger),  # the run of the memberships it changed, if any
        Index(f"ix_{prefix}serve_seen_openid", "openid", "run_id"),
        **MYSQL_TABLE_ARGS,
    )


# -- which rules an event type can change ------------------------------------------------------

def _may_match(where, type_column_name: str, event_type: str) -> Optional[bool]:
    """Three-valued: can ``where`` hold for a row whose ``type`` is ``event_type``
    (False: never; True/None: maybe). Only ``type`` comparisons with constants are decided."""

    def is_type(e) -> bool:
        return isinstance(e, I.SourceField) and e.name == type_column_name

    def ev(e) -> Optional[bool]:
        if isinstance(e, I.And):
            vals = [ev(x) for x in e.items]
            if any(v is False for v in vals):
                return False
            return True if all(v is True for v in vals) else None
        if isinstance(e, I.Or):
            vals = [ev(x) for x in e.items]
            if any(v is True for v in vals):
                return True
            return False if all(v is False for v in vals) else None
        if isinstance(e, I.Not):
            v = ev(e.operand)
            return None if v is None else not v
        if isinstance(e, I.Compare) and e.op in ("==", "!="):
            for a, b in ((e.left, e.right), (e.right, e.left)):
                if is_type(a) and isinstance(b, I.Const) and isinstance(b.value, str):
                    return (b.value == event_type) == (e.op == "==")
            return None
        if isinstance(e, I.InList) and is_type(e.operand) and all(
                isinstance(i, I.Const) and isinstance(i.value, str) for i in e.items):
            inside = any(i.value == event_type for i in e.items)
            return inside != e.negated
        return None

    return ev(where)


class Dependencies:
    """Per computed tag: whether an event of a type, or a change of follower fields, can change it."""

    def __init__(self, ruleset: I.Ruleset, config: Config):
        self.ruleset = ruleset
        self.events_source = config.wechat_mp.events_source
        src = config.sources[self.events_source]
        self.type_name = "type"
        self.time_name = src.time
        rs = ruleset
        # Direct inputs of each computed rule's own condition.
        self.aggregates: dict[str, list[I.Aggregate]] = {}
        self.fields: dict[str, set[str]] = {}
        self.refs: dict[str, set[str]] = {}
        self.ranked: set[str] = set()
        for rule in rs.computed:
            nodes = list(I.walk(rule.condition))
            self.aggregates[rule.name] = [n for n in nodes if isinstance(n, I.Aggregate) and n.source == self.events_source]
            self.fields[rule.name] = {n.name for n in nodes if isinstance(n, I.Field)}
            self.refs[rule.name] = {n.name for n in nodes if isinstance(n, I.TagRef)} | {
                s.name for s in rs.earlier_siblings(rule.name)}
            if any(isinstance(n, I.Rank) for n in nodes):
                self.ranked.add(rule.name)
        # A rule depending (through tag() or an earlier exclusive sibling) on a ranking rule ranks too.
        changed = True
        while changed:
            changed = False
            for name, refs in self.refs.items():
                if name not in self.ranked and refs & self.ranked:
                    self.ranked.add(name)
                    changed = True

    def affected(self, event_type: Optional[str], fields: Iterable[str], new_follower: bool = False) -> frozenset[str]:
        """Computed tags (not ranking) whose value an event of ``event_type``
        writing ``fields`` can change; every one for a new follower."""
        rs = self.ruleset
        if new_follower:
            hit = {r.name for r in rs.computed}
        else:
            fields = set(fields)
            hit = set()
            for rule in rs.computed:
                n = rule.name
                if self.fields[n] & fields:
                    hit.add(n)
                    continue
                for agg in self.aggregates[n]:
                    if event_type is None or agg.where is None or _may_match(agg.where, self.type_name, event_type) is not False:
                        hit.add(n)
                        break
            # tag() references and exclusive groups, to a fixpoint.
            changed = True
            while changed:
                changed = False
                for rule in rs.computed:
                    n = rule.name
                    if n not in hit and self.refs[n] & hit:
                        hit.add(n)
                        changed = True
                    if n in hit and rule.exclusive and rule.group is not None:
                        for m in rs.groups[rule.group].tags:
                            if m not in hit and not rs.tags[m].manual:
                                hit.add(m)
                                changed = True
        return frozenset(hit - self.ranked)


def restricted_ruleset(ruleset: I.Ruleset, names: Iterable[str]) -> I.Ruleset:
    """The ruleset cut down to ``names`` and everything they read (tag()
    references, earlier exclusive siblings), keeping file and group order."""
    keep: set[str] = set()
    stack = list(names)
    while stack:
        n = stack.pop()
        if n in keep:
            continue
        keep.add(n)
        rule = ruleset.tags[n]
        if rule.condition is not None:
            stack.extend(I.tag_refs(rule.condition))
            stack.extend(s.name for s in ruleset.earlier_siblings(n))
    tags = {n: r for n, r in ruleset.tags.items() if n in keep}
    groups = {}
    for g in ruleset.groups.values():
        members = [m for m in g.tags if m in keep]
        if members:
            groups[g.name] = dataclasses.replace(g, tags=members)
    return I.Ruleset(tags, groups, {}, list(ruleset.files), ruleset.source_hash)


# -- processing one push -------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    duplicate: bool = False
    stored: bool = False  # an events row was written
    new_follower: bool = False
    run_id: Optional[int] = None
    added: list[str] = dataclasses.field(default_factory=list)
    removed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (tag, reason)
    dropped: list[str] = dataclasses.field(default_factory=list)
    evaluated: int = 0  # rules re-evaluated


class _Evaluator:
    def __init__(self, ruleset: I.Ruleset, names: frozenset[str], config: Config):
        self.names = names
        self.evaluator = compile_python(restricted_ruleset(ruleset, names), config) if names else None

    def holding(self, follower, as_of) -> set[str]:
        if self.evaluator is None:
            return set()
        return self.evaluator.tags(follower, as_of) & self.names


class EventProcessor:
    """Stores pushes and re-evaluates the follower's tags (see the module docstring).

    ``clock`` returns the current instant (aware); the as-of instant of a
    re-evaluation is that, in the project time zone, to whole seconds, and
    never before the push's CreateTime (so a sender clock slightly ahead
    still sees its own event).
    """

    def __init__(self, config: Config, ruleset: I.Ruleset, db: sa.Engine, *, tables: Tables | None = None,
                 clock: Callable[[], dt.datetime] | None = None, lock_timeout: float = 10.0):
        self.config = config
        self.ruleset = ruleset
        self.db = db
        self.tables = tables or build_tables(config)
        self.seen = build_seen_table(config.database.table_prefix, self.tables.metadata)
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.lock_timeout = lock_timeout
        name = config.wechat_mp.events_source
        src = config.sources.get(name)
        if src is None:
            raise ServeSetupError(f"[wechat_mp] events_source = {name!r}: no such source in tagdsl.toml "
                                  f"(sources: {', '.join(config.sources) or 'none'})")
        for needed in ("type", "key"):
            spec = src.fields.get(needed)
            if spec is None or spec.type.value != "string":
                raise ServeSetupError(f"sources.{name}: the events source needs a string field `{needed}` "
                                      "for WeChat pushes")
        if not src.time:
            raise ServeSetupError(f"sources.{name}: the events source needs a time column (`time = ...`)")
        self.events_source = name
        self.events_table = self.tables.sources[name]
        self.type_column = src.fields["type"].column or "type"
        self.key_column = src.fields["key"].column or "key"
        self.time_column = src.time
        self.follower_id = config.followers.id
        self.deps = Dependencies(ruleset, config)
        self.priorities = {r.name: r.priority for r in ruleset.computed}
        self._evaluators: dict[tuple, _Evaluator] = {}
        self._evaluators_lock = threading.Lock()
        for t in KNOWN_TYPES:  # precomputed; other types on first sight
            self.evaluator_for(t, False)
        self.evaluator_for(None, True)
        self._shared_lock_key: Optional[int] = None
        self._group_commit = _GroupCommit(self) if db.dialect.name == "sqlite" else None

    # -- setup ---------------------------------------------------------------------------------
    def ensure_tables(self) -> None:
        """Create the engine's tables and ``{p}serve_seen`` where missing, check the
        configured tables, and record the ruleset's tag definitions."""
        from .engine import Engine

        store.check_schema(self.db, self.config)
        with store.db_errors(self.db.url, "preparing the store"):
            store.ensure_engine_tables(self.db, self.tables)
            self.seen.create(self.db, checkfirst=True)
            helper = Engine(self.config, str(self.db.url))
            helper.tables = self.tables
            with self.db.begin() as conn:
                helper._upsert_definitions(conn, self.ruleset)

    def evaluator_for(self, event_type: Optional[str], new_follower: bool) -> _Evaluator:
        fields = FIELDS_WRITTEN.get(event_type or "", ())
        key = ("*",) if new_follower else (event_type,)
        ev = self._evaluators.get(key)
        if ev is None:
            with self._evaluators_lock:
                ev = self._evaluators.get(key)
                if ev is None:
                    names = self.deps.affected(event_type, fields, new_follower)
                    ev = self._evaluators[key] = _Evaluator(self.ruleset, names, self.config)
        return ev

    def affected(self, event_type: Optional[str], new_follower: bool = False) -> frozenset[str]:
        return self.evaluator_for(event_type, new_follower).names

    # -- one push --------------------------------------------------------------------------------
    def process(self, push: Push) -> Outcome:
        """Store ``push`` and re-evaluate its follower, in one transaction; a push
        seen before changes nothing (``Outcome.duplicate``)."""
        row = event_row(push, self.config.tz)
        if row is None:
            return Outcome()
        key = push.dedupe_key
        if self.db.dialect.name == "sqlite":
            return self._group_commit.submit(push, row, key)
        with store.db_errors(self.db.url, "storing the push"):
            with self.db.connect() as probe:  # cheap early answer for retries
                if probe.execute(select(self.seen.c.dedupe_key).where(self.seen.c.dedupe_key == key)).first():
                    return Outcome(duplicate=True)
            conn = store.write_connection(self.db, self.lock_timeout)
            try:
                try:
                    outcome = self._process(conn, push, row, key)
                except sa.exc.IntegrityError:
                    # A concurrent retry of the same push committed first.
                    conn.rollback()
                    if conn.execute(select(self.seen.c.dedupe_key).where(self.seen.c.dedupe_key == key)).first():
                        conn.rollback()
                        return Outcome(duplicate=True)
                    raise
                conn.commit()
                return outcome
            finally:
                if conn.in_transaction():
                    conn.rollback()
                conn.close()

    def _now(self) -> dt.datetime:
        return self.clock().astimezone(self.config.tz).replace(tzinfo=None)

    def _process(self, conn: sa.Connection, push: Push, row: EventRow, key: str) -> Outcome:
        T, cfg = self.tables, self.config
        dialect = conn.dialect.name
        received = self._now()
        as_of = max(received.replace(microsecond=0), row.occurred_at)
        if dialect == "postgresql":
            # Shared with other pushes, exclusive with `apply` (which takes the same key exclusively).
            if self._shared_lock_key is None:
                lk = store.lock_key(conn, T.prefix)
                self._shared_lock_key = int.from_bytes(hashlib.sha256(lk.encode()).digest()[:8], "big", signed=True)
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(self.lock_timeout * 1000)}ms'")
            conn.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": self._shared_lock_key})
        # 1. The deduplication key (a retry fails here: IntegrityError).
        conn.execute(insert(self.seen).values(dedupe_key=key, openid=push.openid, received_at=received))
        # 2. The follower (locked for the rest of the transaction: one push per follower at a time).
        f = T.followers
        fid = f.c[self.follower_id]
        values = {cfg.followers.fields[n].column or n: v for n, v in follower_changes(push, row, cfg).items()}
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            created = conn.execute(pg_insert(f).values({self.follower_id: push.openid, **values})
                                   .on_conflict_do_nothing().returning(fid)).first() is not None
        elif dialect == "mysql":
            created = conn.execute(insert(f).prefix_with("IGNORE").values(
                {self.follower_id: push.openid, **values})).rowcount == 1
        else:
            exists = conn.execute(select(fid).where(fid == push.openid)).first() is not None
            created = not exists
            if created:
                conn.execute(insert(f).values({self.follower_id: push.openid, **values}))
        if not created:
            if dialect != "sqlite":
                conn.execute(select(fid).where(fid == push.openid).with_for_update())
            if values:
                conn.execute(update(f).where(fid == push.openid).values(values))
        # 3. The event row.
        conn.execute(insert(self.events_table).values({
            self.config.sources[self.events_source].follower: push.openid, self.time_column: row.occurred_at,
            self.type_column: row.type, self.key_column: row.key}))
        # 4. Re-evaluate what the push can change; write the difference.
        outcome = Outcome(stored=True, new_follower=created)
        ev = self.evaluator_for(row.type, created)
        outcome.evaluated = len(ev.names)
        if ev.names:
            self._reevaluate(conn, push.openid, ev, as_of, received, outcome)
            if outcome.run_id is not None:
                conn.execute(update(self.seen).where(self.seen.c.dedupe_key == key).values(run_id=outcome.run_id))
        return outcome

    def _dropped_before(self, conn, openid: str) -> set[str]:
        """The computed tags the per-follower limit held back from ``openid`` at its
        last evaluation: the drops of the later of the last apply and the last
        event run that re-evaluated this follower (every such run that dropped
        something, or changed something, has a run row)."""
        T = self.tables
        # Newest first: the scan stops at the last apply (runs has no index on status).
        last_apply = conn.execute(select(T.runs.c.id).where(T.runs.c.status == "ok")
                                  .order_by(T.runs.c.id.desc()).limit(1)).scalar()
        last_event = conn.execute(select(sa.func.max(self.seen.c.run_id)).where(self.seen.c.openid == openid)).scalar()
        last = max((r for r in (last_apply, last_event) if r is not None), default=None)
        if last is None:
            return set()
        d = T.drops
        return set(conn.execute(select(d.c.tag).where(d.c.run_id == last, d.c.openid == openid)).scalars())

    def _reevaluate(self, conn, openid: str, ev: _Evaluator, as_of: dt.datetime, started_at: dt.datetime,
                    outcome: Outcome) -> None:
        """Apply's steps 2-5 (expiry, limit, diff, write) for one follower and the tags ``ev`` covers."""
        T, rs = self.tables, self.ruleset
        m, e = T.memberships, T.expirations
        follower = store.load_follower(conn, self.config, openid)
        scope = ev.names
        desired = ev.holding(follower, as_of)
        rule_stored: dict[str, dt.datetime] = {}
        protected: set[str] = set()
        for tag, source, assigned in conn.execute(select(m.c.tag, m.c.source, m.c.assigned_at)
                                                  .where(m.c.openid == openid)):
            if source == "rule":
                rule_stored[tag] = assigned
            else:
                protected.add(tag)
        blocked = {tag for (tag,) in conn.execute(select(e.c.tag).where(e.c.openid == openid, e.c.tag.in_(scope)))}

        # Expiry (apply step 2), for the tags in scope.
        expiring = {n: as_of - dt.timedelta(seconds=rs.tags[n].expires) for n in scope if rs.tags[n].expires}

        def aged(tag: str) -> bool:
            return tag in expiring and tag in rule_stored and rule_stored[tag] <= expiring[tag]

        lift = [t for t in blocked if t not in expiring or t not in desired]
        if lift:
            conn.execute(delete(e).where(e.c.openid == openid, e.c.tag.in_(lift)))
        blocked -= set(lift)
        newly = [t for t in expiring if aged(t) and t in desired]
        if newly:
            conn.execute(insert(e), [dict(openid=openid, tag=t, assigned_at=rule_stored[t], expired_at=as_of)
                                     for t in newly])
        desired -= blocked | set(newly)

        # The per-follower limit (step 3): computed tags outside the scope count as stored.
        limit = self.config.limits_resolved.max_tags_per_follower
        candidates = {t: self.priorities[t] for t in desired}
        outside = set(rule_stored)
        if limit is not None:
            outside |= self._dropped_before(conn, openid)
        candidates.update({t: self.priorities[t] for t in outside if t in self.priorities and t not in scope})
        drops = dict(limit_drops(candidates, protected, limit))
        desired -= set(drops)

        # The difference (step 4). A tag outside the scope that the limit held
        # back before and fits now is added, as apply would.
        held = {t for t in candidates if t not in drops}
        added = sorted(t for t in held if t not in rule_stored)
        removed = sorted(t for t in rule_stored if (t in scope and t not in desired) or t in drops)
        reasons = {t: "expired" if aged(t) else "limit" if t in drops else "rule" for t in removed}
        outcome.added, outcome.removed = added, [(t, reasons[t]) for t in removed]
        outcome.dropped = sorted(drops)
        if not (added or removed or drops):
            return

        # Write (step 5), with a run of its own.
        finished = self._now()
        counts = {t: {"total": int(t in held),
                      "added": int(t in added), "removed": int(t in removed)} for t in sorted(set(added) | set(removed))}
        run_id = int(conn.execute(insert(T.runs).values(
            started_at=started_at, finished_at=finished, as_of=as_of, ruleset_hash=rs.source_hash or "",
            status="event", followers=1, added=len(added), removed=len(removed), dropped=len(drops),
            counts=counts)).inserted_primary_key[0])
        if added:
            conn.execute(insert(m), [dict(openid=openid, tag=t, source="rule", assigned_at=as_of, run_id=run_id)
                                     for t in added])
        if removed:
            conn.execute(delete(m).where(m.c.openid == openid, m.c.source == "rule", m.c.tag.in_(removed)))
        rows = [dict(run_id=run_id, openid=openid, tag=t, action="added", reason="rule") for t in added]
        rows += [dict(run_id=run_id, openid=openid, tag=t, action="removed", reason=reasons[t]) for t in removed]
        if rows:
            conn.execute(insert(T.changes), rows)
        if drops:
            conn.execute(insert(T.drops), [dict(run_id=run_id, openid=openid, tag=t, priority=p)
                                           for t, p in sorted(drops.items())])
        outcome.run_id = run_id


class _GroupCommit:
    """SQLite has one writer at a time and every commit costs an fsync: one
    writer thread takes the pushes waiting (at most ``max_batch``) and commits
    them in one transaction, each in its own savepoint (a push that fails rolls
    back alone). Every push is answered only after the commit that holds it,
    so an acknowledged push is durable."""

    def __init__(self, processor: "EventProcessor", max_batch: int = 64):
        self.processor = processor
        self.max_batch = max_batch
        self.queue: "queue.Queue[_Pending]" = queue.Queue()
        threading.Thread(target=self._run, name="tagdsl-serve-writer", daemon=True).start()

    def submit(self, push: Push, row: EventRow, key: str) -> Outcome:
        item = _Pending(push, row, key)
        self.queue.put(item)
        item.done.wait()
        if item.error is not None:
            with store.db_errors(self.processor.db.url, "storing the push"):
                raise item.error
        assert item.result is not None
        return item.result

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commit(batch)
            except BaseException as exc:  # nothing of the batch was committed
                for item in batch:
                    item.result, item.error = None, exc
            finally:
                for item in batch:
                    item.done.set()

    def _commit(self, batch: list["_Pending"]) -> None:
        p = self.processor
        seen = p.seen
        conn = store.write_connection(p.db, p.lock_timeout)
        try:
            for item in batch:
                savepoint = conn.begin_nested()
                try:
                    item.result = p._process(conn, item.push, item.row, item.key)
                    savepoint.commit()
                except Exception as exc:
                    savepoint.rollback()
                    duplicate = isinstance(exc, sa.exc.IntegrityError) and conn.execute(
                        select(seen.c.dedupe_key).where(seen.c.dedupe_key == item.key)).first() is not None
                    if duplicate:
                        item.result = Outcome(duplicate=True)
                    else:
                        item.error = exc
            conn.commit()
        finally:
            if conn.in_transaction():
                conn.rollback()
            conn.close()


@dataclasses.dataclass
class _Pending:
    push: Push
    row: EventRow
    key: str
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Optional[Outcome] = None
    error: Optional[BaseException] = None
