"""WeChat official-account pushes -> store rows, deduplication, and the
incremental re-evaluation of one follower's tags.

Pushes are handled by one writer thread per server process, which takes every
push waiting and handles them in **one transaction** (group commit), in
rounds of distinct followers (a follower's pushes in arrival order). For each
push:

1. a push whose deduplication key is in ``{p}serve_seen`` (or earlier in the
   batch) is a duplicate: it changes nothing and gets the first delivery's
   answer (its reply is recomputed from the tags that delivery added);
2. the follower row is read (locked on PostgreSQL/MySQL), then created or
   updated (subscribe / unsubscribe);
3. the push becomes a row of the events source (``type``, ``key``, time);
4. the follower's tags that the push can change are re-evaluated with the
   in-memory evaluator, and the difference with the stored rule memberships
   is written exactly as ``Engine.apply`` writes it: memberships with source
   ``rule``, a run row (status ``event``), change rows, limit drops and the
   expiry state;
5. its deduplication key goes into ``{p}serve_seen`` with its run (primary
   key: a retry being handled by another server process at the same time
   fails there, the batch is rolled back and retried push by push).

Every step is one statement for the whole round (on PostgreSQL the
independent ones share a pipeline: one round trip), and a push is answered
only after the commit. If anything fails, the batch is rolled back and each
push is retried in a transaction of its own, so a bad push fails alone.

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
import json
import queue
import threading
from typing import Callable, Iterable, Mapping, Optional

import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table, delete, insert, select, update

from tagdsl import TagDSLError
from tagdsl import ir as I
from tagdsl.compile.python import compile_python, normalize_value
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
# The columns of an event run row, in the order the server writes them.
RUN_COLUMNS = ("id", "started_at", "finished_at", "as_of", "ruleset_hash", "status", "followers", "added", "removed",
               "dropped", "counts")
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


# -- processing pushes ---------------------------------------------------------------------------

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
    reply: Optional[str] = None  # passive reply text (the gained tag with a `reply`), also for a duplicate


class _Evaluator:
    def __init__(self, ruleset: I.Ruleset, names: frozenset[str], config: Config):
        self.names = names
        restricted = restricted_ruleset(ruleset, names)
        self.evaluator = compile_python(restricted, config) if names else None
        # Only these sources are read for the follower (the others stay empty).
        self.sources = frozenset(n.source for r in restricted.computed for n in I.walk(r.condition)
                                 if isinstance(n, I.Aggregate)) if names else frozenset()

    def holding(self, follower, as_of) -> set[str]:
        if self.evaluator is None:
            return set()
        return self.evaluator.tags(follower, as_of) & self.names


@dataclasses.dataclass
class _Pending:
    push: Push
    row: EventRow
    key: str
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Optional[Outcome] = None
    error: Optional[BaseException] = None
    on_done: Optional[Callable[["_Pending"], None]] = None  # called in the writer thread once answered


class EventProcessor:
    """Stores pushes and re-evaluates the follower's tags (see the module docstring).

    One writer thread owns the database work: it takes every push waiting (at
    most ``max_batch``) and handles them in **one transaction** (group commit:
    one commit, and one statement per step for the whole batch instead of one
    per push). A push is answered only after the commit that holds it, so an
    acknowledged push is durable. Pushes of the same follower within a batch
    are handled in order, in successive rounds. If anything fails, the batch is
    rolled back and each push is retried in a transaction of its own, so a bad
    push fails alone.

    ``clock`` returns the current instant (aware); the as-of instant of a
    re-evaluation is that, in the project time zone, to whole seconds, and
    never before the push's CreateTime (so a sender clock slightly ahead
    still sees its own event).
    """

    def __init__(self, config: Config, ruleset: I.Ruleset, db: sa.Engine, *, tables: Tables | None = None,
                 clock: Callable[[], dt.datetime] | None = None, lock_timeout: float = 10.0, max_batch: int = 128):
        self.config = config
        self.ruleset = ruleset
        self.db = db
        self.tables = tables or build_tables(config)
        self.seen = build_seen_table(config.database.table_prefix, self.tables.metadata)
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.lock_timeout = lock_timeout
        self.max_batch = max_batch
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
        self.file_order = {name: i for i, name in enumerate(ruleset.tags)}
        self.replies = {r.name: r.reply for r in ruleset.computed if getattr(r, "reply", None)}
        self._evaluators: dict[tuple, _Evaluator] = {}
        self._evaluators_lock = threading.Lock()
        for t in KNOWN_TYPES:  # precomputed; other types on first sight
            self.evaluator_for(t, False)
        self.evaluator_for(None, True)
        self._shared_lock_key: Optional[int] = None
        self._connection: Optional[sa.Connection] = None
        self._cursor = None  # the DBAPI cursor of the writer's transaction
        self._pg = None  # the psycopg connection of the writer's transaction (pipelines)
        self._dbapi_errors = getattr(db.dialect.dbapi, "Error", ())
        self.dialect_name = db.dialect.name
        self.tz = config.tz
        self._prepare_statements()
        self._queue: "queue.Queue[_Pending]" = queue.Queue()
        # Started on the first push, so a server can fork its worker processes before any thread exists.
        self._writer: Optional[threading.Thread] = None
        self._writer_lock = threading.Lock()

    # -- setup ---------------------------------------------------------------------------------
    def ensure_tables(self) -> None:
        """Create the engine's tables and ``{p}serve_seen`` where missing, check the
        configured tables, and record the ruleset's tag definitions."""
        from .engine import Engine

        store.check_schema(self.db, self.config)
        with store.db_errors(self.db.url, "preparing the store"):
            store.ensure_engine_tables(self.db, self.tables)
            self.seen.create(self.db, checkfirst=True)
            self.runs_by_status.create(self.db, checkfirst=True)
            if self.db.dialect.name == "sqlite" and store.sqlite_path(self.db.url) is not None:
                # Write-ahead log: a commit appends to one file with one fsync
                # (instead of journal + database + journal deletion), and readers
                # (preview, export) do not block the server. Persistent for the file.
                raw = self.db.raw_connection()  # outside a transaction (the mode cannot change inside one)
                try:
                    raw.cursor().execute("PRAGMA journal_mode = WAL")
                finally:
                    raw.close()
            helper = Engine(self.config, str(self.db.url))
            helper.tables = self.tables
            with self.db.begin() as conn:
                helper._upsert_definitions(conn, self.ruleset)

    def _prepare_statements(self) -> None:
        """What is read of each table (DSL name -> column, type, scale), and the
        SQLAlchemy statements of the rarer steps (built once: their compiled form is cached)."""
        T, cfg = self.tables, self.config
        spec_of = lambda name, spec: (spec.column or name, I.TYPES[spec.type.value], spec.scale)  # noqa: E731
        self.follower_wanted = {name: spec_of(name, spec) for name, spec in cfg.followers.fields.items()}
        self.source_wanted: dict[str, dict] = {}
        for sname, src in cfg.sources.items():
            wanted = {name: spec_of(name, spec) for name, spec in src.fields.items()}
            if src.time and src.time not in wanted:
                wanted[src.time] = (src.time, I.DATETIME, None)
            self.source_wanted[sname] = wanted
        m, e, s, c = T.memberships, T.expirations, self.seen, T.changes
        self.q_seen = select(s.c.dedupe_key, s.c.run_id).where(s.c.dedupe_key.in_(sa.bindparam("keys", expanding=True)))
        self.q_gained = (select(c.c.run_id, c.c.openid, c.c.tag)
                         .where(c.c.run_id.in_(sa.bindparam("runs", expanding=True)), c.c.action == "added"))
        # The last apply is looked up for every batch while the runs table grows by a
        # run per changing push: the server's own index keeps that lookup O(log n).
        self.runs_by_status = Index(f"ix_{T.prefix}runs_status", T.runs.c.status, T.runs.c.id)
        self.s_expiry_lift = delete(e).where(e.c.openid == sa.bindparam("b_openid"), e.c.tag == sa.bindparam("b_tag"))
        self.s_expiry_insert = insert(e)
        self.s_run = insert(T.runs)
        self._prepare_driver_sql()

    def _prepare_driver_sql(self) -> None:
        """The statements run for every push, as driver SQL on the DBAPI cursor: SQLAlchemy's
        per-statement work (cache lookup, parameter processing, result wrapping) cost
        more than the statements themselves. Identifiers are quoted by the dialect;
        values are bound (``?`` for sqlite3, ``%s`` for psycopg and PyMySQL); times
        are written as SQLAlchemy writes them.

        Every statement keeps few texts whatever the batch size, so prepared
        statements are reused (preparing the union queries cost more than
        running them): on PostgreSQL a list of values is ``= ANY(%s)`` with an
        array and many rows are one ``unnest`` of arrays (psycopg prepares a
        text it sees often); elsewhere a list is ``IN (?, ?, ...)`` padded to a
        power of two (the value repeated; sqlite3 caches 128 statements) and
        rows are written with executemany (one prepared statement; PyMySQL
        turns an insert into multi-row VALUES)."""
        T, cfg, dialect = self.tables, self.config, self.db.dialect
        q = dialect.identifier_preparer.quote
        self._q = q
        self.arrays = dialect.name == "postgresql" and dialect.driver == "psycopg"
        ph = "?" if dialect.paramstyle == "qmark" else "%s"
        self._ph = ph
        self._marks: dict[int, str] = {}
        if dialect.name == "sqlite":
            # SQLAlchemy's SQLite DateTime storage format (text, always with microseconds).
            self._db_time = lambda v: None if v is None else v.strftime("%Y-%m-%d %H:%M:%S.%f")
        else:
            self._db_time = lambda v: v
        f = cfg.followers
        s, m, e, d, c, r = self.seen, T.memberships, T.expirations, T.drops, T.changes, T.runs
        self.follower_columns = list(dict.fromkeys([f.id, *(col for col, _, _ in self.follower_wanted.values())]))
        lock = "" if dialect.name == "sqlite" else f" ORDER BY {q(f.id)} FOR UPDATE"
        # {0}, {1}: "IN (...)" or "= ANY(%s)" (see _where).
        self.sql_follower_rows = (f"SELECT {', '.join(map(q, self.follower_columns))} FROM {q(f.table)} "
                                  f"WHERE {q(f.id)} {{0}}{lock}")
        self.source_columns: dict[str, list[str]] = {}
        self.sql_source_rows: dict[str, str] = {}
        for sname, src in cfg.sources.items():
            cols = list(dict.fromkeys([src.follower, *(col for col, _, _ in self.source_wanted[sname].values())]))
            self.source_columns[sname] = cols
            self.sql_source_rows[sname] = (f"SELECT {', '.join(map(q, cols))} FROM {q(src.table)} "
                                           f"WHERE {q(src.follower)} {{0}}")
        self.sql_seen = f"SELECT {q('dedupe_key')}, {q('run_id')} FROM {q(s.name)} WHERE {q('dedupe_key')} {{0}}"
        # Memberships and expiry blocks in one statement (a block comes as source '#expired').
        self.sql_memberships = (f"SELECT {q('openid')}, {q('tag')}, {q('source')}, {q('assigned_at')} FROM {q(m.name)} "
                                f"WHERE {q('openid')} {{0}} UNION ALL SELECT {q('openid')}, {q('tag')}, "
                                f"'#expired', NULL FROM {q(e.name)} WHERE {q('openid')} {{1}}")
        # Each follower's last event run, and the last apply (as openid '').
        self.sql_last_runs = (f"SELECT {q('openid')}, MAX({q('run_id')}) FROM {q(s.name)} WHERE {q('openid')} {{0}} "
                              f"GROUP BY {q('openid')} UNION ALL SELECT '', MAX({q('id')}) FROM {q(r.name)} "
                              f"WHERE {q('status')} = 'ok'")
        self.sql_drops = (f"SELECT {q('run_id')}, {q('openid')}, {q('tag')} FROM {q(d.name)} "
                          f"WHERE {q('openid')} {{0}} AND {q('run_id')} {{1}}")
        # PostgreSQL: the drops of each follower's last evaluation in one statement (no second round trip).
        self.sql_last_drops = (
            f"SELECT x.{q('openid')}, x.{q('tag')} FROM {q(d.name)} AS x JOIN (SELECT u.o, GREATEST("
            f"(SELECT COALESCE(MAX({q('id')}), 0) FROM {q(r.name)} WHERE {q('status')} = 'ok'), "
            f"COALESCE((SELECT MAX(y.{q('run_id')}) FROM {q(s.name)} AS y WHERE y.{q('openid')} = u.o), 0)) AS r "
            f"FROM unnest(%s::text[]) AS u(o)) AS l ON x.{q('openid')} = l.o AND x.{q('run_id')} = l.r")
        # Inserts: table, [(column, PostgreSQL array type or a constant SQL literal)].
        src = cfg.sources[self.events_source]
        text, stamp, number = "text[]", "timestamp[]", "bigint[]"
        self.ins_seen = self._insert_sql(s.name, [("dedupe_key", text), ("openid", text), ("received_at", stamp),
                                                  ("run_id", number)])
        self.ins_event = self._insert_sql(src.table, [(src.follower, text), (self.time_column, stamp),
                                                      (self.type_column, text), (self.key_column, text)])
        self.ins_member = self._insert_sql(m.name, [("openid", text), ("tag", text), ("source", "'rule'"),
                                                    ("assigned_at", stamp), ("run_id", number)])
        self.ins_changes = self._insert_sql(c.name, [("run_id", number), ("openid", text), ("tag", text),
                                                     ("action", text), ("reason", text)])
        self.ins_drops = self._insert_sql(d.name, [("run_id", number), ("openid", text), ("tag", text),
                                                   ("priority", number)])
        self.ins_runs = self._insert_sql(r.name, [(col, stamp if col.endswith("_at") or col == "as_of" else
                                                   text if col in ("ruleset_hash", "status") else
                                                   "json" if col == "counts" else number) for col in RUN_COLUMNS])
        # Memberships removed: one statement with arrays, else executemany.
        if self.arrays:
            self.sql_member_delete = (f"DELETE FROM {q(m.name)} AS x USING unnest(%s::text[], %s::text[]) AS u(a0, a1) "
                                      f"WHERE x.{q('source')} = 'rule' AND x.{q('openid')} = u.a0 "
                                      f"AND x.{q('tag')} = u.a1")
        else:
            self.sql_member_delete = (f"DELETE FROM {q(m.name)} WHERE {q('source')} = 'rule' AND {q('openid')} = {ph} "
                                      f"AND {q('tag')} = {ph}")
        # Run ids taken before the runs are written, so the run rows go with the other writes:
        # PostgreSQL from the column's sequence; SQLite after the largest (the writer holds the
        # write lock). MySQL inserts run by run (lastrowid).
        self.sql_run_ids = None
        if dialect.name == "sqlite":
            self.sql_run_ids = f"SELECT MAX({q('id')}) FROM {q(r.name)}"
        elif dialect.name == "postgresql":
            self.sql_run_ids = "SELECT nextval(%s) FROM generate_series(1, %s)"
        self._runs_sequence: Optional[str] = None

    def _insert_sql(self, table: str, columns: list[tuple[str, str]]) -> tuple[str, str]:
        """(statement head, one row) of a multi-row insert; with arrays, (the whole statement, "")."""
        q = self._q
        names = ", ".join(q(name) for name, _ in columns)
        bound = [(name, kind) for name, kind in columns if not kind.startswith("'")]
        if self.arrays:
            arrays = ", ".join("%s::text[]" if kind == "json" else f"%s::{kind}" for _, kind in bound)
            aliases = iter(range(len(bound)))
            picked = ", ".join(kind if kind.startswith("'") else
                               f"CAST(u.a{next(aliases)} AS json)" if kind == "json" else f"u.a{next(aliases)}"
                               for _, kind in columns)
            return (f"INSERT INTO {q(table)} ({names}) SELECT {picked} FROM unnest({arrays}) AS "
                    f"u({', '.join(f'a{i}' for i in range(len(bound)))})", "")
        one = ", ".join(kind if kind.startswith("'") else self._ph for _, kind in columns)
        return f"INSERT INTO {q(table)} ({names}) VALUES ", f"({one})"

    def _in(self, n: int) -> str:
        marks = self._marks.get(n)
        if marks is None:
            marks = self._marks[n] = ", ".join([self._ph] * n)
        return marks

    def _where(self, template: str, *lists: list) -> tuple[str, list]:
        """``template`` with ``{0}``, ``{1}``… as conditions on those lists of values, and its parameters."""
        if self.arrays:
            return template.format(*["= ANY(%s)"] * len(lists)), list(lists)
        padded = [values + [values[-1]] * ((1 << (len(values) - 1).bit_length()) - len(values)) if values else values
                  for values in map(list, lists)]
        return template.format(*(f"IN ({self._in(len(values))})" for values in padded)), [v for vs in padded for v in vs]

    def _values(self, template: tuple[str, str], rows: list[tuple]) -> list[tuple[str, list, bool]]:
        """Steps inserting ``rows``: one ``unnest`` of arrays, or executemany."""
        if not rows:
            return []
        head, one = template
        if self.arrays:
            return [(head, [list(column) for column in zip(*rows)], False)]
        return [(head + one, rows, True)]

    def _fetch(self, sql: str, params: list) -> list[tuple]:
        return self._statements([(sql, params, False)])[0]

    def _statements(self, steps: list[tuple[str, object, bool]], commit: bool = False) -> list[Optional[list[tuple]]]:
        """Run ``(sql, params, many)`` steps in order (``many``: executemany over a list
        of rows, skipped when empty) and return the rows of the others. On
        PostgreSQL they go through one pipeline: one round trip for all of them,
        and ``commit`` sends the commit in it too."""
        pg = self._pg
        if pg is None:
            cur, out = self._cursor, []
            for sql, params, many in steps:
                if many:
                    if params:
                        cur.executemany(sql, params)
                    out.append(None)
                else:
                    cur.execute(sql, params)
                    out.append(cur.fetchall() if cur.description is not None else [])
            return out
        cursors = []
        with pg.pipeline() as pipeline:
            for sql, params, many in steps:
                if many and not params:
                    cursors.append(None)
                    continue
                cur = pg.cursor()
                if many:
                    cur.executemany(sql, params)
                else:
                    cur.execute(sql, params)
                cursors.append(None if many else cur)
            if commit:
                pg.commit()
            pipeline.sync()
            out = [None if cur is None else cur.fetchall() if cur.description is not None else []
                   for cur in cursors]
        return out

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

    def reply_for(self, gained: Iterable[str]) -> Optional[str]:
        """The reply of the gained tag with the highest priority (then the first in file order), if any has one."""
        with_reply = [t for t in gained if t in self.replies]
        if not with_reply:
            return None
        return self.replies[min(with_reply, key=lambda t: (-self.priorities[t], self.file_order[t]))]

    # -- the entry points ---------------------------------------------------------------------------
    def process(self, push: Push) -> Outcome:
        """Store ``push`` and re-evaluate its follower (group-committed; blocks until
        committed); a push seen before changes nothing (``Outcome.duplicate``)."""
        item = self.submit(push)
        if item is None:
            return Outcome()
        item.done.wait()
        return self.result(item)

    def submit(self, push: Push, on_done: Optional[Callable[[_Pending], None]] = None) -> Optional[_Pending]:
        """Queue ``push`` for the writer without waiting; ``on_done(item)`` is called
        (in the writer thread) once it is committed or has failed; read it with
        :meth:`result`. None for a push that is acknowledged but not stored
        (then ``on_done`` is not called)."""
        row = event_row(push, self.tz)
        if row is None:
            return None
        item = _Pending(push, row, push.dedupe_key, on_done=on_done)
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._run, name="tagdsl-serve-writer", daemon=True)
                    self._writer.start()
        self._queue.put(item)
        return item

    def result(self, item: _Pending) -> Outcome:
        """The outcome of a submitted push once answered; a failure is a TagDSLError (one line)."""
        error = item.error
        if error is not None:
            if isinstance(error, TagDSLError):
                raise error
            url = self.db.url
            if isinstance(error, self._dbapi_errors):  # raised on the raw cursor
                raise store.StoreError(f"storing the push failed on {store.redact_url(url)}: "
                                       f"{store.db_message(error, url)}") from None
            with store.db_errors(url, "storing the push"):
                raise error
        assert item.result is not None
        return item.result

    # -- the writer ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the writer once the pushes queued so far are answered, and release its connection."""
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(None)  # type: ignore[arg-type]
            self._writer.join(30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                self._commit_batch(batch)
            except BaseException as exc:  # pragma: no cover - _commit_batch answers every item itself
                for item in batch:
                    if item.result is None and item.error is None:
                        item.error = exc
            for item in batch:
                item.done.set()
                if item.on_done is not None:
                    try:
                        item.on_done(item)
                    except Exception:  # pragma: no cover - a closed connection; the push is committed
                        pass

    def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            self._transaction(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._answer_failure(batch[0], exc)
                return
        # Something in the batch failed and nothing of it was committed: each push alone.
        for item in batch:
            item.result = item.error = None
            try:
                self._transaction([item])
            except Exception as exc:
                self._answer_failure(item, exc)

    def _answer_failure(self, item: _Pending, exc: Exception) -> None:
        item.result = None
        if isinstance(exc, (sa.exc.IntegrityError, getattr(self.db.dialect.dbapi, "IntegrityError", ()))):
            # A concurrent retry of the same push (another server process) committed first.
            try:
                with self.db.connect() as conn:
                    found = conn.execute(self.q_seen, {"keys": [item.key]}).first()
                    if found is not None:
                        item.result = self._duplicates(conn, [(item, found[1])])[0]
                        item.error = None
                        return
            except Exception:  # pragma: no cover - the database went away
                pass
        item.error = exc

    def _transaction(self, batch: list[_Pending]) -> None:
        """The batch in one transaction, in rounds of distinct followers (a
        follower's pushes in arrival order); commits, or raises with nothing committed."""
        rounds: list[list[_Pending]] = []
        depth: dict[str, int] = {}
        for item in batch:
            n = depth.get(item.push.openid, 0)
            depth[item.push.openid] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(item)
        conn = self._writer_connection()
        try:
            # Begun by SQLAlchemy (BEGIN IMMEDIATE on SQLite) before any statement runs on the raw cursor.
            conn.begin()
            dbapi_connection = conn.connection.dbapi_connection
            self._cursor = dbapi_connection.cursor()
            steps = []
            if conn.dialect.name == "postgresql":
                self._pg = dbapi_connection if hasattr(dbapi_connection, "pipeline") else None
                # Shared with other pushes, exclusive with `apply` (which takes the same key exclusively).
                if self._shared_lock_key is None:
                    lk = store.lock_key(conn, self.tables.prefix)
                    self._shared_lock_key = int.from_bytes(hashlib.sha256(lk.encode()).digest()[:8], "big",
                                                           signed=True)
                steps = [(f"SET LOCAL lock_timeout = '{int(self.lock_timeout * 1000)}ms'", None, False),
                         ("SELECT pg_advisory_xact_lock_shared(%s)", [self._shared_lock_key], False)]
            # Which pushes were seen before, for the whole batch at once; the rounds add theirs.
            seen = dict(self._statements(steps + [(*self._where(self.sql_seen, [it.key for it in batch]), False)])[-1])
            for n, items in enumerate(rounds):
                self._round(conn, items, seen, last=n == len(rounds) - 1)
            self._cursor.close()
            self._cursor = self._pg = None
            conn.commit()  # nothing left to send when the last pipeline carried the commit
        except BaseException:
            self._cursor = self._pg = None
            for item in batch:
                item.result = None
            # The connection may be broken (the database restarted): a new one next time.
            self._connection = None
            try:
                if conn.in_transaction():
                    conn.rollback()
                conn.close()
            except Exception:  # pragma: no cover - already broken
                pass
            raise

    def _runs_sequence_name(self, conn) -> Optional[str]:
        """PostgreSQL: the sequence of the runs table's id (None: there is none; runs are inserted one by one)."""
        if self._runs_sequence is None:
            q = self.db.dialect.identifier_preparer.quote
            found = self._fetch("SELECT pg_get_serial_sequence(%s, 'id')", [q(self.tables.runs.name)])
            self._runs_sequence = (found[0][0] if found else None) or ""
        return self._runs_sequence or None

    def _writer_connection(self) -> sa.Connection:
        """The writer thread's connection, kept between batches (its page cache stays warm)."""
        if self._connection is None:
            conn = store.write_connection(self.db, self.lock_timeout)
            if conn.dialect.name == "mysql":
                # Each statement sees what other server processes committed: under REPEATABLE READ
                # the reads after waiting for a follower's row lock would still show the
                # snapshot taken before it (and the same membership would be added twice).
                conn.execution_options(isolation_level="READ COMMITTED")
            if conn.dialect.name == "sqlite":
                # A push reads and writes a random follower's rows in several tables
                # and indexes: a larger page cache than SQLite's default 2 MB, and
                # the file memory-mapped (reads without a system call per page).
                conn.exec_driver_sql("PRAGMA cache_size = -65536")
                conn.exec_driver_sql("PRAGMA mmap_size = 1073741824")
                conn.commit()
            self._connection = conn
        return self._connection

    def _now(self) -> dt.datetime:
        return self.clock().astimezone(self.tz).replace(tzinfo=None)

    def _duplicates(self, conn, found: list[tuple[_Pending, Optional[int]]]) -> list[Outcome]:
        """Outcomes of pushes seen before: nothing changes; the reply is the one the
        first delivery got (recomputed from that push's run: the tags it added)."""
        runs = sorted({r for _, r in found if r is not None})
        gained: dict[tuple[int, str], list[str]] = {}
        if runs and self.replies:
            for run_id, openid, tag in conn.execute(self.q_gained, {"runs": runs}):
                gained.setdefault((run_id, openid), []).append(tag)
        return [Outcome(duplicate=True, run_id=r,
                        reply=self.reply_for(gained.get((r, item.push.openid), ())) if r is not None else None)
                for item, r in found]

    def _round(self, conn: sa.Connection, items: list[_Pending], seen: dict[str, Optional[int]], last: bool) -> None:
        """Pushes of distinct followers: dedupe (``seen``: the keys stored, with their
        runs; this round's are added), follower rows, event rows, re-evaluation.
        ``last``: the last round of the transaction (on PostgreSQL its writes carry the commit)."""
        cfg = self.config
        received = self._now()
        live: list[_Pending] = []
        known: list[tuple[_Pending, Optional[int]]] = []
        keys: set[str] = set()
        for it in items:
            if it.key in seen:
                known.append((it, seen[it.key]))
            elif it.key in keys:  # the same MsgId from two followers: the second is a duplicate
                known.append((it, None))
            else:
                keys.add(it.key)
                live.append(it)
        if known:
            for (it, _), outcome in zip(known, self._duplicates(conn, known)):
                it.result = outcome
        if not live:
            return
        # 1. The followers: read (and locked for the transaction on PostgreSQL/MySQL), then created or
        # updated below; what is written is applied to the fields read. 2. The event rows.
        ids = sorted({it.push.openid for it in live})
        steps = [(*self._where(self.sql_follower_rows, ids), False)]
        steps += self._values(self.ins_event, [(it.push.openid, self._db_time(it.row.occurred_at), it.row.type,
                                                it.row.key) for it in live])
        follower_rows = self._statements(steps)[0]
        fields = self._follower_fields(follower_rows)
        f = self.tables.followers
        fid = f.c[self.follower_id]
        inserts: dict[tuple, list[dict]] = {}
        updates: dict[tuple, list[dict]] = {}
        created_ids: list[str] = []
        for it in live:
            changes = follower_changes(it.push, it.row, cfg)
            values = {cfg.followers.fields[n].column or n: v for n, v in changes.items()}
            current = fields.get(it.push.openid)
            if current is None:
                created_ids.append(it.push.openid)
                inserts.setdefault(tuple(values), []).append({self.follower_id: it.push.openid, **values})
            elif values:
                updates.setdefault(tuple(values), []).append({"b_id": it.push.openid, **{
                    f"b_{c}": v for c, v in values.items()}})
                for name, value in changes.items():
                    _col, kind, scale = self.follower_wanted[name]
                    current[name] = normalize_value(value, kind, self.tz, scale)
        for columns, rows in inserts.items():
            conn.execute(insert(f), rows)
        for columns, rows in updates.items():
            conn.execute(update(f).where(fid == sa.bindparam("b_id")).values(
                {c: sa.bindparam(f"b_{c}") for c in columns}), rows)
        if created_ids:  # read back: the table may give the columns not written defaults
            fields.update(self._follower_fields(self._fetch(
                *self._where(self.sql_follower_rows, created_ids))))
        # 3. Re-evaluate what each push can change; write the differences.
        work = []
        created_set = set(created_ids)
        for it in live:
            created = it.push.openid in created_set
            ev = self.evaluator_for(it.row.type, created)
            it.result = Outcome(stored=True, new_follower=created, evaluated=len(ev.names))
            if ev.names:
                work.append((it, ev))
        writes = self._reevaluate(conn, work, received, fields) if work else []
        # 4. The deduplication keys, with the run of each push. A retry being handled by another
        # server process at the same time fails here (IntegrityError: the batch is rolled back and
        # retried push by push); in key order, so two processes wait for each other, never deadlock.
        received_db = self._db_time(received)
        writes += self._values(self.ins_seen, sorted((it.key, it.push.openid, received_db, it.result.run_id)
                                                     for it in live))
        self._statements(writes, commit=last)
        seen.update((it.key, it.result.run_id) for it in live)

    def _reevaluate(self, conn: sa.Connection, work: list[tuple[_Pending, _Evaluator]], started_at: dt.datetime,
                    fields: dict[str, dict]) -> list[tuple[str, list, bool]]:
        """Apply's steps 2-5 (expiry, limit, diff, write) for each follower and the tags its evaluator covers;
        the reads of every follower of the round at once. Returns the writes (steps for ``_statements``)."""
        from tagdsl.compile.python import Follower

        T, rs, cfg = self.tables, self.ruleset, self.config
        ids = [it.push.openid for it, _ in work]
        limit = cfg.limits_resolved.max_tags_per_follower
        sources = sorted(frozenset().union(*(ev.sources for _, ev in work)))
        # Every read of the round at once (one round trip on PostgreSQL).
        run_ids_step = []
        if self.sql_run_ids is not None and self.dialect_name == "sqlite":
            run_ids_step = [(self.sql_run_ids, [], False)]
        elif self.sql_run_ids is not None and self._runs_sequence_name(conn):
            run_ids_step = [(self.sql_run_ids, [self._runs_sequence, len(work)], False)]
        if limit is None:
            last_step = []
        elif self.arrays:
            last_step = [(self.sql_last_drops, [ids], False)]
        else:
            last_step = [(*self._where(self.sql_last_runs, ids), False)]
        found = self._statements([(*self._where(self.sql_source_rows[name], ids), False) for name in sources] + [
            (*self._where(self.sql_memberships, ids, ids), False)] + last_step + run_ids_step)
        if run_ids_step:
            taken = found.pop()
            if self.dialect_name == "sqlite":
                first = (taken[0][0] or 0) + 1
                run_id_pool = list(range(first, first + len(work)))
            else:
                run_id_pool = sorted(int(row[0]) for row in taken)
        else:
            run_id_pool = None
        rows = self._source_rows(ids, dict(zip(sources, found)))
        rule_stored: dict[str, dict[str, dt.datetime]] = {o: {} for o in ids}
        protected: dict[str, set[str]] = {o: set() for o in ids}
        held_any: dict[str, set[str]] = {o: set() for o in ids}
        blocked_all: dict[str, set[str]] = {o: set() for o in ids}
        for openid, tag, source, assigned in found[len(sources)]:
            if source == "#expired":
                blocked_all[openid].add(tag)
                continue
            held_any[openid].add(tag)
            if source == "rule":
                rule_stored[openid][tag] = normalize_value(assigned, I.DATETIME, self.tz)
            else:
                protected[openid].add(tag)
        dropped_before: dict[str, set[str]] = {o: set() for o in ids}
        if limit is not None and self.arrays:
            for openid, tag in found[-1]:
                dropped_before[openid].add(tag)
        elif limit is not None:
            dropped_before = self._dropped_before(ids, found[-1])

        plans = []
        for it, ev in work:
            openid = it.push.openid
            follower = Follower(openid, fields[openid], rows[openid], frozenset(held_any[openid]))
            as_of = max(started_at.replace(microsecond=0), it.row.occurred_at)
            plan = self._diff(openid, ev, follower, as_of, rule_stored[openid], protected[openid],
                              blocked_all[openid], dropped_before[openid], limit)
            outcome = it.result
            outcome.added, outcome.removed, outcome.dropped = plan.added, plan.removed, sorted(plan.drops)
            outcome.reply = self.reply_for(plan.added)
            if plan.changes:
                plans.append((it, plan, as_of))
            lift, newly = plan.lift, plan.newly
            if lift:
                conn.execute(self.s_expiry_lift, [dict(b_openid=openid, b_tag=t) for t in lift])
            if newly:
                conn.execute(self.s_expiry_insert, [dict(openid=openid, tag=t, assigned_at=rule_stored[openid][t],
                                                         expired_at=as_of) for t in newly])
        if not plans:
            return []

        # Write (step 5): a run per push that changed something.
        finished = self._now()
        run_rows = []
        for it, plan, as_of in plans:
            counts = {t: {"total": int(t in plan.held), "added": int(t in plan.added),
                          "removed": int(t in plan.removed_names)}
                      for t in sorted(set(plan.added) | set(plan.removed_names))}
            run_rows.append(dict(started_at=started_at, finished_at=finished, as_of=as_of,
                                 ruleset_hash=rs.source_hash or "", status="event", followers=1,
                                 added=len(plan.added), removed=len(plan.removed), dropped=len(plan.drops),
                                 counts=counts))
        writes: list[tuple[str, list, bool]] = []
        if run_id_pool is not None:
            run_ids = run_id_pool[:len(run_rows)]
            writes += self._values(self.ins_runs, [
                (run_id, *(self._db_time(r[c]) if c.endswith("_at") or c == "as_of" else
                           json.dumps(r[c]) if c == "counts" else r[c] for c in RUN_COLUMNS[1:]))
                for run_id, r in zip(run_ids, run_rows)])
        else:
            run_ids = [int(conn.execute(self.s_run, r).inserted_primary_key[0]) for r in run_rows]
        members_in, members_out, changes, drops = [], [], [], []
        for (it, plan, as_of), run_id in zip(plans, run_ids):
            openid = it.push.openid
            it.result.run_id = run_id
            assigned = self._db_time(as_of)
            members_in += [(openid, t, assigned, run_id) for t in plan.added]
            members_out += [(openid, t) for t in plan.removed_names]
            changes += [(run_id, openid, t, "added", "rule") for t in plan.added]
            changes += [(run_id, openid, t, "removed", r) for t, r in plan.removed]
            drops += [(run_id, openid, t, p) for t, p in sorted(plan.drops.items())]
        writes += self._values(self.ins_member, members_in)
        if members_out and self.arrays:
            writes.append((self.sql_member_delete, [list(column) for column in zip(*members_out)], False))
        elif members_out:
            writes.append((self.sql_member_delete, members_out, True))
        writes += self._values(self.ins_changes, changes)
        writes += self._values(self.ins_drops, drops)
        return writes

    def _normalised(self, table: str, openid: str, raw: Mapping, wanted: dict) -> dict:
        """A row read raw, normalised as ``store.load_follower`` does (DSL names)."""
        item = {}
        tz = self.tz
        for name, (col, kind, scale) in wanted.items():
            try:
                item[name] = normalize_value(raw[col], kind, tz, scale)
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise store.StoreError(f"cannot read `{table}.{col}` of follower `{openid}`: {raw[col]!r} is "
                                       f"not a valid {kind} ({exc})") from None
        return item

    def _follower_fields(self, found: list[tuple]) -> dict[str, dict]:
        """The fields of the follower rows read (``sql_follower_rows``), by follower id."""
        f = self.config.followers
        out = {}
        names = self.follower_columns
        for row in found:
            raw = dict(zip(names, row))
            openid = raw[f.id]
            out[openid] = {f.id: openid, **self._normalised(f.table, openid, raw, self.follower_wanted)}
        return out

    def _source_rows(self, ids: list[str], found: dict[str, list[tuple]]) -> dict[str, dict[str, list]]:
        """Per follower: its rows of the sources read (``found``: source -> rows of
        ``sql_source_rows``); the other sources are left empty (the evaluators of
        these pushes do not read them)."""
        cfg = self.config
        out = {o: {s: [] for s in cfg.sources} for o in ids}
        for sname, source_rows in found.items():
            src = cfg.sources[sname]
            wanted = self.source_wanted[sname]
            names = self.source_columns[sname]
            for row in source_rows:
                raw = dict(zip(names, row))
                openid = raw[src.follower]
                out[openid][sname].append(self._normalised(src.table, openid, raw, wanted))
        return out

    def _dropped_before(self, ids: list[str], last_runs: list[tuple]) -> dict[str, set[str]]:
        """Per follower: the computed tags the per-follower limit held back at its
        last evaluation: the drops of the later of the last apply and the last
        event run that re-evaluated this follower (every such run that dropped
        something, or changed something, has a run row). ``last_runs``: the rows
        of ``sql_last_runs``."""
        found = {openid: run_id for openid, run_id in last_runs}
        last_apply = found.get("")
        last = {}
        for o in ids:
            event_run = found.get(o)
            last[o] = last_apply if event_run is None or (last_apply is not None and last_apply > event_run) \
                else event_run
        out: dict[str, set[str]] = {o: set() for o in ids}
        runs = sorted({r for r in last.values() if r is not None})
        if runs:
            for run_id, openid, tag in self._fetch(*self._where(self.sql_drops, ids, runs)):
                if last.get(openid) == run_id:
                    out[openid].add(tag)
        return out

    def _diff(self, openid: str, ev: _Evaluator, follower, as_of: dt.datetime, rule_stored: dict[str, dt.datetime],
              protected: set[str], blocked_all: set[str], dropped_before: set[str], limit: Optional[int]) -> "_Plan":
        """Apply's steps 2-4 for one follower: expiry, the per-follower limit and the difference."""
        rs = self.ruleset
        scope = ev.names
        desired = ev.holding(follower, as_of)
        blocked = {t for t in blocked_all if t in scope}
        # Expiry (apply step 2), for the tags in scope.
        expiring = {n: as_of - dt.timedelta(seconds=rs.tags[n].expires) for n in scope if rs.tags[n].expires}

        def aged(tag: str) -> bool:
            return tag in expiring and tag in rule_stored and rule_stored[tag] <= expiring[tag]

        lift = sorted(t for t in blocked if t not in expiring or t not in desired)
        blocked -= set(lift)
        newly = sorted(t for t in expiring if aged(t) and t in desired)
        desired -= blocked | set(newly)

        # The per-follower limit (step 3): computed tags outside the scope count as stored.
        candidates = {t: self.priorities[t] for t in desired}
        outside = set(rule_stored)
        if limit is not None:
            outside |= dropped_before
        candidates.update({t: self.priorities[t] for t in outside if t in self.priorities and t not in scope})
        drops = dict(limit_drops(candidates, protected, limit))
        desired -= set(drops)

        # The difference (step 4). A tag outside the scope that the limit held
        # back before and fits now is added, as apply would.
        held = {t for t in candidates if t not in drops}
        added = sorted(t for t in held if t not in rule_stored)
        removed = sorted(t for t in rule_stored if (t in scope and t not in desired) or t in drops)
        reasons = {t: "expired" if aged(t) else "limit" if t in drops else "rule" for t in removed}
        return _Plan(lift=lift, newly=newly, added=added, removed=[(t, reasons[t]) for t in removed],
                     removed_names=removed, drops=drops, held=held)


@dataclasses.dataclass
class _Plan:
    lift: list[str]  # expiry blocks to delete
    newly: list[str]  # tags expiring now (blocked from now on)
    added: list[str]
    removed: list[tuple[str, str]]  # (tag, reason)
    removed_names: list[str]
    drops: dict[str, int]  # tag -> priority
    held: set[str]

    @property
    def changes(self) -> bool:
        return bool(self.added or self.removed or self.drops)
