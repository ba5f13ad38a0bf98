"""The engine: apply a ruleset to the follower store, preview audiences,
explain one follower, export memberships.

``apply`` is set-based: the database computes the desired memberships into a
scratch table (``INSERT … SELECT`` from the SQL compiler), expiry and the
per-follower limit are applied there with joins and a window function, and
only the difference against the stored rule-sourced memberships is written,
in one transaction under the store's apply lock, together with the run row,
the change rows (audit log) and the limit drops. No follower passes through
Python. When neither expiry nor the limit can act (the limit provably cannot
bind), PostgreSQL, and SQLite when rule memberships of the ruleset's tags are
already stored (a re-apply, where few change), first compute the difference
with a read-only statement that compares per-follower tag masks (parallel
workers on PostgreSQL), then write only the changed rows
(``Engine._apply_by_mask_diff``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger, Column, DateTime, Integer, MetaData, String, Table, and_, case, delete, exists, func, insert,
    literal, literal_column, or_, select, union_all, update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op
from sqlalchemy.sql.visitors import InternalTraversal

from tagdsl import Analysis, TagDSLError, analyze, load_ruleset
from tagdsl import ir as I
from tagdsl.config import Config
from tagdsl.diagnostics import Diagnostic, RulesetError
from tagdsl.schema import ID_LENGTH, MYSQL_TABLE_ARGS, TAG_LENGTH, Tables, build_tables

from . import store
from .results import ApplyResult, BreakdownRow, Drop, FollowerExplanation, PreviewResult, TagCount

Progress = Callable[[str, int, int], None]
RulesetLike = Union[I.Ruleset, str, Path, Sequence[Union[str, Path]], None]

EXPR_FILE = "<expr>"  # where diagnostics in a preview expression point


class AsOfError(TagDSLError):
    exit_code = 2


# -- the as-of instant ------------------------------------------------------------------------

def resolve_as_of(value: Union[None, str, dt.date, dt.datetime], tz) -> dt.datetime:
    """The as-of instant as the compilers take it: a naive wall-clock time in
    the project time zone. ``None`` is now (whole seconds); a naive datetime is
    already in the project zone; an aware one is converted; a date is its
    midnight; a string is ISO-8601 (date or datetime, with or without offset)."""
    if value is None:
        return dt.datetime.now(tz).replace(tzinfo=None, microsecond=0)
    if isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                value = dt.date.fromisoformat(text)
            elif re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}.*", text):
                value = dt.datetime.fromisoformat(text)
            else:
                raise ValueError
        except ValueError:
            raise AsOfError(f"invalid as-of `{value}`: use ISO-8601, e.g. 2026-05-01, 2026-05-01T09:30:00 "
                            "or 2026-05-01T09:30:00+08:00") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.astimezone(tz).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    raise AsOfError(f"invalid as-of {value!r}: expected a datetime, a date or an ISO-8601 string")


# -- preview expressions -------------------------------------------------------------------------

def check_expression(text: str, config: Config, base: Analysis | None = None) -> tuple[I.Ruleset, I.Expr]:
    """Check an audience expression together with a ruleset (``base``, the
    analysis of its files, which must be free of errors).

    The expression is wrapped as ``audience "preview" = EXPR`` and checked with
    the ruleset's files, so ``tag("X")`` and ``let`` names resolve; errors in
    it are reported at ``<expr>:LINE:COL`` (columns of the expression itself).
    """
    texts = {name: source.text for name, source in base.sources.items()} if base else {}
    taken = set(base.ruleset.audiences) if base and base.ruleset else set()
    name = "preview"
    while name in taken:
        name += "'"
    prefix = f'audience "{name}" = '
    texts[EXPR_FILE] = prefix + text
    analysis = analyze(config=config, texts=texts)
    mine = [_unwrap(d, len(prefix)) for d in analysis.errors if d.span.file == EXPR_FILE]
    if mine:
        raise RulesetError(mine)
    if analysis.errors:  # pragma: no cover - the files passed alone; only the expression can add errors
        raise RulesetError(analysis.errors)
    module = next(m for m in analysis.modules if m.path == EXPR_FILE)
    if len(module.statements) != 1:
        extra = module.statements[1].span
        raise TagDSLError("the expression must be a single condition",
                          location=f"{EXPR_FILE}:{extra.line}:{extra.column - (len(prefix) if extra.line == 1 else 0)}")
    return analysis.ruleset, analysis.ruleset.audiences[name].condition


def _unwrap(d: Diagnostic, shift: int) -> Diagnostic:
    """A diagnostic in the wrapped expression, with columns of the expression as typed."""
    s = d.span
    column = max(1, s.column - shift) if s.line == 1 else s.column
    end_column = max(1, s.end_column - shift) if s.end_line == 1 else s.end_column
    span = dataclasses.replace(s, start=max(0, s.start - shift), end=max(0, s.end - shift), column=column,
                               end_column=end_column)
    return dataclasses.replace(d, span=span)


# -- scratch tables ---------------------------------------------------------------------------------

@dataclasses.dataclass
class _Scratch:
    """Per-apply temporary tables (private to the apply's connection)."""

    metadata: MetaData
    desired: Table  # the memberships the rules give, then minus expired and limit drops
    over_limit: Table  # followers who would exceed the per-follower limit
    dropped: Table  # limit drops
    added: Table
    removed: Table

    @property
    def all(self) -> list[Table]:
        return [self.desired, self.over_limit, self.dropped, self.added, self.removed]


def _scratch_tables(prefix: str) -> _Scratch:
    md = MetaData()

    def table(name, *cols):
        # SQLite: WITHOUT ROWID, the primary key is the table (one B-tree to
        # write instead of a table and its index).
        return Table(f"{prefix}scratch_{name}", md, *cols, prefixes=["TEMPORARY"], sqlite_with_rowid=False,
                     **MYSQL_TABLE_ARGS)

    def openid():
        return Column("openid", String(ID_LENGTH), primary_key=True)

    def tag():
        return Column("tag", String(TAG_LENGTH), primary_key=True)

    return _Scratch(
        md,
        table("desired", openid(), tag(), Column("priority", Integer, nullable=False)),
        table("over_limit", openid(), Column("n_protected", Integer, nullable=False)),
        table("dropped", openid(), tag(), Column("priority", Integer, nullable=False)),
        table("added", openid(), tag()),
        table("removed", openid(), tag(), Column("reason", String(16), nullable=False)),
    )


def _drop_scratch(conn: sa.Connection, scratch: _Scratch) -> None:
    for t in scratch.all:
        _drop_temp(conn, t)


def _drop_temp(conn: sa.Connection, table: Table) -> None:
    name = conn.dialect.identifier_preparer.quote(table.name)
    if conn.dialect.name == "mysql":
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {name}")  # no implicit commit
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
    else:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{name}")


def _diff_table(prefix: str) -> Table:
    """The re-apply difference (``Engine._apply_by_mask_diff``): kind is
    added/removed (openid, tag) or total (tag, n)."""
    return Table(f"{prefix}scratch_diff", MetaData(), Column("kind", String(8)), Column("openid", String(ID_LENGTH)),
                 Column("tag", String(TAG_LENGTH)), Column("n", BigInteger))


def _masks_table(prefix: str, words) -> Table:
    """The stored rule memberships as per-follower tag masks (one BIGINT per
    word of 63 tags), PostgreSQL's re-apply difference."""
    return Table(f"{prefix}scratch_masks", MetaData(), Column("openid", String(ID_LENGTH)),
                 *[Column(f"s{w}", BigInteger) for w in words])


def _quote(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


class _CreateTempAs(sa.sql.expression.Executable, sa.sql.expression.ClauseElement):
    """``CREATE TEMPORARY TABLE name AS <select>``: unlike INSERT … SELECT,
    PostgreSQL may run the SELECT with parallel workers."""

    # Cacheable like any statement: a later apply of the same ruleset through
    # the same Engine (a running service) reuses the compiled SQL.
    _traverse_internals = [("table", InternalTraversal.dp_clauseelement),
                           ("query", InternalTraversal.dp_clauseelement)]
    inherit_cache = True

    def __init__(self, table: Table, query):
        self.table, self.query = table, query


@compiles(_CreateTempAs)
def _compile_create_temp_as(element, compiler, **kw):
    name = compiler.preparer.quote(element.table.name)
    return f"CREATE TEMPORARY TABLE {name} AS {compiler.process(element.query, **kw)}"


class _ExplainJson(sa.sql.expression.Executable, sa.sql.expression.ClauseElement):
    """``EXPLAIN (FORMAT JSON) <select>`` (PostgreSQL): the planner's estimates."""

    inherit_cache = False  # its result has no columns of the query's

    def __init__(self, query):
        self.query = query


@compiles(_ExplainJson)
def _compile_explain_json(element, compiler, **kw):
    return f"EXPLAIN (FORMAT JSON) {compiler.process(element.query, **kw)}"


# -- the engine ---------------------------------------------------------------------------------------

class Engine:
    """The runtime over one follower store.

    ``Engine(config, url=None)``: ``url`` defaults to the configuration's
    database (``TAGDSL_DATABASE_URL`` overrides it). The database is opened on
    first use; a SQLite file must exist (``tagdsl init`` or
    :func:`runtime.store.create_store` creates one).
    """

    def __init__(self, config: Config | None = None, url: str | None = None, *, lock_timeout: float = 30.0):
        self.config = config or Config()
        self.url = url or self.config.database_url
        self.lock_timeout = lock_timeout
        self.tables: Tables = build_tables(self.config)
        self._db: Optional[sa.Engine] = None
        self._schema_checked = False
        # Where neither expiry nor the limit can act (PostgreSQL, SQLite):
        # None chooses per apply (_diff_first); True / False force the
        # read-only difference or the other path (tests compare them).
        self.diff_first: Optional[bool] = None
        self._diff = _diff_table(self.tables.prefix)

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def db(self) -> sa.Engine:
        if self._db is None:
            self._db = store.connect(self.url, lock_timeout=self.lock_timeout)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_schema(self) -> None:
        """Every configured table and column exists (StoreError naming the first that does not)."""
        if not self._schema_checked:
            store.check_schema(self.db, self.config)
            self._schema_checked = True

    def load_ruleset(self, ruleset: RulesetLike = None) -> I.Ruleset:
        """A checked ruleset: ``ruleset`` itself, or loaded from paths (default:
        the configuration's rulesets). Raises RulesetError on lint errors."""
        if isinstance(ruleset, I.Ruleset):
            return ruleset
        return load_ruleset(self._paths(ruleset), self.config)

    def _paths(self, ruleset) -> list[Path]:
        if ruleset is None:
            return self.config.ruleset_paths()
        if isinstance(ruleset, (str, Path)):
            return [Path(ruleset)]
        return [Path(p) for p in ruleset]

    def _compiler(self, ruleset: I.Ruleset):
        from tagdsl.compile.sql import compile_sql

        return compile_sql(ruleset, self.config, self.tables)

    def _errors(self, doing: str):
        return store.db_errors(self.url, doing)

    # -- apply -------------------------------------------------------------------------------------
    def apply(self, ruleset: RulesetLike = None, as_of=None, dry_run: bool = False,
              progress: Progress | None = None) -> ApplyResult:
        """Bring the stored rule-sourced memberships to what ``ruleset`` gives as of ``as_of``.

        Writes only the difference, in one transaction with the run row, the
        change rows and the limit drops; manual and imported memberships are
        never touched. ``dry_run`` computes and reports the same result and
        writes nothing (``run_id`` None). A ruleset with lint errors raises
        RulesetError before the database is opened.
        """
        started = time.perf_counter()
        rs = self.load_ruleset(ruleset)
        as_of = resolve_as_of(as_of, self.config.tz)
        self.check_schema()
        started_at = dt.datetime.now(self.config.tz).replace(tzinfo=None)
        steps = _Steps(progress, 7)
        with self._errors("apply"):
            conn = store.write_connection(self.db, self.lock_timeout) if not dry_run else self.db.connect()
        try:
            with self._errors("apply"):
                if dry_run:
                    # Engine tables may be missing on a store never applied to:
                    # create them inside the transaction that is rolled back
                    # (SQLite and PostgreSQL roll DDL back).
                    if store.missing_engine_tables(conn, self.tables):
                        self.tables.metadata.create_all(conn, tables=self.tables.engine_tables, checkfirst=True)
                    result = self._apply(conn, rs, as_of, None, steps)
                    conn.rollback()
                else:
                    with store.apply_lock(conn, self.tables.prefix, self.lock_timeout):
                        # Under the lock, so two first applies do not both create them.
                        store.ensure_engine_tables(conn, self.tables)
                        run_id = self._insert_run(conn, rs, as_of, started_at)
                        result = self._apply(conn, rs, as_of, run_id, steps)
                        conn.commit()
        except store.LockTimeout:
            conn.close()
            raise
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            conn.close()
            if not dry_run:
                self._record_failed_run(rs, as_of, started_at)
            raise
        conn.close()
        result.seconds = time.perf_counter() - started
        return result

    def _insert_run(self, conn, rs: I.Ruleset, as_of, started_at) -> int:
        runs = self.tables.runs
        res = conn.execute(insert(runs).values(started_at=started_at, as_of=as_of, ruleset_hash=rs.source_hash or "",
                                               status="running"))
        return int(res.inserted_primary_key[0])

    def _record_failed_run(self, rs, as_of, started_at) -> None:
        """Leave a trace of a failed run (its own transaction; the run's work was rolled back)."""
        try:
            with self.db.begin() as conn:
                conn.execute(insert(self.tables.runs).values(
                    started_at=started_at, finished_at=dt.datetime.now(self.config.tz).replace(tzinfo=None),
                    as_of=as_of, ruleset_hash=rs.source_hash or "", status="failed"))
        except Exception:  # the store itself is unusable; the original error says why
            pass

    def _upsert_definitions(self, conn, rs: I.Ruleset) -> None:
        t = self.tables.tag_defs
        rows = [dict(name=r.name, kind="manual" if r.manual else "computed", group_name=r.group,
                     exclusive=r.exclusive, priority=r.priority, expires_seconds=r.expires,
                     description=r.description, owner=r.owner, sensitive=r.sensitive, review=r.review,
                     ruleset_hash=rs.source_hash or "") for r in rs.tags.values()]
        if not rows:
            return
        existing = set(conn.execute(select(t.c.name).where(t.c.name.in_([r["name"] for r in rows]))).scalars())
        new = [r for r in rows if r["name"] not in existing]
        old = [{f"v_{k}": v for k, v in r.items()} for r in rows if r["name"] in existing]
        if new:
            conn.execute(insert(t), new)
        if old:
            conn.execute(update(t).where(t.c.name == sa.bindparam("v_name")).values(
                {c: sa.bindparam(f"v_{c}") for c in rows[0] if c != "name"}), old)

    def _apply(self, conn, rs: I.Ruleset, as_of: dt.datetime, run_id: Optional[int],
               steps: "_Steps") -> ApplyResult:
        T = self.tables
        m = T.memberships
        dialect = conn.dialect.name
        scope = [r.name for r in rs.computed]
        expiring = {r.name: as_of - dt.timedelta(seconds=r.expires) for r in rs.computed if r.expires}
        limit = self.config.limits_resolved.max_tags_per_follower

        if dialect == "postgresql":
            # The rules query's row estimates are far too high (the join of
            # followers to their tag bits cannot be estimated), which makes
            # PostgreSQL JIT-compile it: 1.3 s of a 4.9 s re-apply at 100k followers.
            conn.exec_driver_sql("SET LOCAL jit = off")
        if run_id is not None:
            self._upsert_definitions(conn, rs)
        steps("definitions")

        limit_binds = bool(scope) and self._limit_can_bind(conn, rs, limit)
        if dialect in ("postgresql", "sqlite") and scope and not expiring and not limit_binds:
            if self._diff_first(conn, scope):
                return self._apply_by_mask_diff(conn, rs, as_of, run_id, steps, scope, limit)

        scratch = _scratch_tables(T.prefix)
        _drop_scratch(conn, scratch)  # left over on a pooled connection
        for t in scratch.all:
            t.create(conn)
        d = scratch.desired
        same = lambda a, b: and_(a.c.openid == b.c.openid, a.c.tag == b.c.tag)  # noqa: E731

        def analyze(table):
            # PostgreSQL keeps no statistics on temporary tables by itself;
            # without them it plans the joins below for a tiny table.
            if dialect == "postgresql":
                conn.exec_driver_sql(f"ANALYZE {conn.dialect.identifier_preparer.quote(table.name)}")

        # 1. What the rules give, computed by the database.
        if scope:
            rules = self._compiler(rs).desired_memberships(as_of)
            if dialect != "postgresql":
                # SQLite (WITHOUT ROWID) and InnoDB store the scratch table in
                # its primary key's order: rows inserted in that order append
                # instead of landing on random pages (SQLite at 100k followers:
                # 4.7 s instead of 9.4 s for this statement).
                rows = rules.subquery("rules")
                rules = select(rows.c.openid, rows.c.tag, rows.c.priority).order_by(rows.c.openid, rows.c.tag)
            conn.execute(insert(d).from_select(["openid", "tag", "priority"], rules))
        analyze(d)
        steps("rules")

        # 2. Expiry: a rule membership older than its tag's `expires` is
        # removed; while the condition keeps holding, an expirations row blocks
        # reassignment. The block is lifted on a run where the condition does
        # not hold (or the tag no longer expires).
        aged = (or_(*(and_(m.c.tag == name, m.c.assigned_at <= cutoff) for name, cutoff in expiring.items()))
                if expiring else None)
        e = T.expirations
        if scope:
            lift = ~exists().where(same(d, e)) if expiring else sa.true()
            if expiring and len(expiring) < len(scope):
                lift = or_(e.c.tag.notin_(list(expiring)), lift)
            conn.execute(delete(e).where(e.c.tag.in_(scope), lift))
        if expiring:
            conn.execute(insert(e).from_select(
                ["openid", "tag", "assigned_at", "expired_at"],
                select(m.c.openid, m.c.tag, m.c.assigned_at, literal(as_of, DateTime()))
                .where(m.c.source == "rule", aged, exists().where(same(d, m)))))
            conn.execute(delete(d).where(exists().where(same(e, d))))
        steps("expiry")

        # 3. The per-follower limit: tags from any other source are kept and
        # count; among the computed tags a follower does not hold otherwise,
        # the lowest priority goes first, ties: the later name in code-point order.
        if limit_binds:  # else no follower can go over the limit: nothing to rank
            protected = (select(m.c.openid, func.count(sa.distinct(m.c.tag)).label("n"))
                         .where(m.c.source != "rule").group_by(m.c.openid).subquery("protected"))
            n_protected = func.coalesce(protected.c.n, 0)
            over = scratch.over_limit
            conn.execute(insert(over).from_select(
                ["openid", "n_protected"],
                select(d.c.openid, n_protected)
                .select_from(d.outerjoin(protected, protected.c.openid == d.c.openid))
                .group_by(d.c.openid, protected.c.n)
                .having(func.count() + n_protected > limit)))
            name_order = d.c.tag.collate("C") if dialect == "postgresql" else d.c.tag
            rank = func.row_number().over(partition_by=d.c.openid, order_by=(d.c.priority.desc(), name_order))
            ranked = (select(d.c.openid, d.c.tag, d.c.priority, rank.label("rn"), over.c.n_protected)
                      .select_from(d.join(over, over.c.openid == d.c.openid))
                      .where(~exists().where(same(m, d), m.c.source != "rule"))
                      .subquery("ranked"))
            conn.execute(insert(scratch.dropped).from_select(
                ["openid", "tag", "priority"],
                select(ranked.c.openid, ranked.c.tag, ranked.c.priority)
                .where(ranked.c.rn + ranked.c.n_protected > limit)))
            conn.execute(delete(d).where(exists().where(same(scratch.dropped, d))))
        analyze(scratch.dropped)
        steps("limit")

        # 4. The difference with what is stored.
        added, removed, dropped = scratch.added, scratch.removed, scratch.dropped
        conn.execute(insert(added).from_select(
            ["openid", "tag"],
            select(d.c.openid, d.c.tag).where(~exists().where(same(m, d), m.c.source == "rule"))))
        whens = [(aged, "expired")] if aged is not None else []
        stored = m
        if limit_binds:
            whens.append((dropped.c.openid.is_not(None), "limit"))
            stored = m.outerjoin(dropped, same(dropped, m))
        if scope:
            # SQLite: `+tag` keeps it from walking the (tag, source) index, which
            # fetches every stored row from the table by rowid (1.1 s instead of
            # 0.4 s for 415k memberships); a plain scan reads them in order.
            in_scope = (UnaryExpression(m.c.tag, operator=custom_op("+"), type_=m.c.tag.type)
                        if dialect == "sqlite" else m.c.tag).in_(scope)
            gone = (select(m.c.openid, m.c.tag, case(*whens, else_="rule") if whens else literal("rule"))
                    .select_from(stored)
                    .where(m.c.source == "rule", in_scope, ~exists().where(same(d, m))))
            conn.execute(insert(removed).from_select(["openid", "tag", "reason"], gone))
        steps("diff")

        # 5. Write only the difference.
        if run_id is not None:
            rid = literal(run_id, BigInteger())
            conn.execute(insert(m).from_select(
                ["openid", "tag", "source", "assigned_at", "run_id"],
                select(added.c.openid, added.c.tag, literal("rule"), literal(as_of, DateTime()), rid)))
            if dialect == "sqlite":
                # Driven by the (few) removed rows through the primary key,
                # not by a scan of every stored membership.
                conn.execute(delete(m).where(m.c.source == "rule", sa.tuple_(m.c.openid, m.c.tag).in_(
                    select(removed.c.openid, removed.c.tag))))
            else:
                conn.execute(delete(m).where(m.c.source == "rule", exists().where(same(removed, m))))
            ch = T.changes
            conn.execute(insert(ch).from_select(
                ["run_id", "openid", "tag", "action", "reason"],
                select(rid, added.c.openid, added.c.tag, literal("added"), literal("rule"))))
            conn.execute(insert(ch).from_select(
                ["run_id", "openid", "tag", "action", "reason"],
                select(rid, removed.c.openid, removed.c.tag, literal("removed"), removed.c.reason)))
            conn.execute(insert(T.drops).from_select(
                ["run_id", "openid", "tag", "priority"],
                select(rid, dropped.c.openid, dropped.c.tag, dropped.c.priority)))
        steps("write")

        # 6. The report.
        counts = {name: TagCount() for name in scope}
        for tag, n in conn.execute(select(d.c.tag, func.count()).group_by(d.c.tag)):
            counts[tag].total = n
        for tag, n in conn.execute(select(added.c.tag, func.count()).group_by(added.c.tag)):
            counts[tag].added = n
        expired = 0
        for tag, reason, n in conn.execute(select(removed.c.tag, removed.c.reason, func.count())
                                           .group_by(removed.c.tag, removed.c.reason)):
            counts[tag].removed += n
            expired += n if reason == "expired" else 0
        drops = [Drop(o, t, int(p)) for o, t, p in conn.execute(
            select(dropped.c.openid, dropped.c.tag, dropped.c.priority)
            .order_by(dropped.c.openid, dropped.c.priority.desc(), dropped.c.tag))]
        result = self._finish_run(conn, run_id, as_of, counts, drops, expired, limit)
        _drop_scratch(conn, scratch)
        steps("report")
        return result

    def _finish_run(self, conn, run_id: Optional[int], as_of: dt.datetime, counts: dict, drops: list,
                    expired: int, limit: Optional[int]) -> ApplyResult:
        T = self.tables
        followers = conn.execute(select(func.count()).select_from(T.followers)).scalar_one()
        result = ApplyResult(run_id, as_of, self.config.tz, followers, counts, drops, 0.0, run_id is None,
                             expired, limit)
        if (conn.dialect.name == "postgresql" and run_id is not None
                and result.added + result.removed > max(1000, sum(c.total for c in counts.values()) // 10)):
            # A large change: the next run's joins need fresh statistics (autovacuum comes later).
            conn.exec_driver_sql(f"ANALYZE {conn.dialect.identifier_preparer.quote(T.memberships.name)}")
        if run_id is not None:
            conn.execute(update(T.runs).where(T.runs.c.id == run_id).values(
                finished_at=dt.datetime.now(self.config.tz).replace(tzinfo=None), status="ok",
                followers=followers, added=result.added, removed=result.removed, dropped=len(drops),
                counts={name: c.to_dict() for name, c in counts.items()}))
        return result

    # -- the limit -----------------------------------------------------------------------------------------
    def _limit_can_bind(self, conn, rs: I.Ruleset, limit: Optional[int]) -> bool:
        """Whether the per-follower limit could drop a tag for anyone: a follower
        gets at most one tag per exclusive group and one per other computed tag;
        with tags held from other sources that must still fit in ``limit``
        (exact: the limit step selects followers by that same sum)."""
        if limit is None:
            return False
        groups = {r.group for r in rs.computed if r.exclusive and r.group is not None}
        most = len(groups) + sum(1 for r in rs.computed if not (r.exclusive and r.group is not None))
        if most > limit:
            return True
        m = self.tables.memberships
        others = m.c.source != "rule"
        if conn.dialect.name in ("postgresql", "sqlite"):
            # Not a scan of every membership (33 ms on PostgreSQL, up to 0.1 s
            # on SQLite at 100k followers, all rule rows): the tags held from
            # other sources, found through the (tag, source) index, usually
            # none; then only their rows are grouped.
            tags = self._tags_held_otherwise(conn)
            if not tags:
                return False
            others = and_(others, m.c.tag.in_(tags))
        crowded = (select(m.c.openid).where(others).group_by(m.c.openid)
                   .having(func.count(sa.distinct(m.c.tag)) > limit - most).limit(1))
        return conn.execute(crowded).first() is not None

    def _tags_held_otherwise(self, conn) -> list[str]:
        """The tags some membership holds from a source other than the rules: a
        walk over the distinct tags of the (tag, source) index (one probe per
        tag, a loose index scan), each checked for a source before or after
        'rule' in the same index (two range probes; the OR keeps PostgreSQL
        from turning them into one scan of the table)."""
        name = _quote(conn, self.tables.memberships.name)
        return list(conn.exec_driver_sql(
            f"WITH RECURSIVE t(tag) AS (SELECT MIN(tag) FROM {name} UNION ALL "
            f"SELECT (SELECT MIN(n.tag) FROM {name} n WHERE n.tag > t.tag) FROM t WHERE t.tag IS NOT NULL) "
            f"SELECT t.tag FROM t WHERE t.tag IS NOT NULL AND ("
            f"EXISTS (SELECT 1 FROM {name} o WHERE o.tag = t.tag AND o.source < 'rule') OR "
            f"EXISTS (SELECT 1 FROM {name} o WHERE o.tag = t.tag AND o.source > 'rule'))").scalars())

    # -- re-apply: a read-only difference, then only the changes (PostgreSQL) --------------------------
    def _diff_first(self, conn, scope: list[str]) -> bool:
        """Whether to compute the difference read-only first. PostgreSQL:
        always (the read-only statement runs with parallel workers; a first
        apply at 1M followers took 33 s this way, 49 s as one writing
        statement). SQLite: when the store already holds rule memberships of
        these tags (a re-apply, where few change); a first apply there is
        cheaper through the scratch tables."""
        if self.diff_first is not None:
            return self.diff_first
        return conn.dialect.name == "postgresql" or self._holds_rule_memberships(conn, scope)

    def _holds_rule_memberships(self, conn, scope: list[str]) -> bool:
        m = self.tables.memberships
        return conn.execute(select(literal(1)).where(
            exists().where(m.c.source == "rule", m.c.tag.in_(scope)))).first() is not None

    def _apply_by_mask_diff(self, conn, rs: I.Ruleset, as_of: dt.datetime, run_id: Optional[int],
                            steps: "_Steps", scope: list[str], limit: Optional[int]) -> ApplyResult:
        """apply when neither expiry nor the limit can act (PostgreSQL; SQLite
        when rule memberships are stored). A statement that writes never runs
        in parallel on PostgreSQL; so the difference is computed first by a
        read-only query (``CREATE TEMP TABLE … AS SELECT``, which it runs with
        parallel workers), then only the changed rows are written from it. A
        first apply writes in bulk (see _drop_membership_indexes).

        The difference compares per follower, not per (follower, tag): the
        stored rule memberships are summed into the same bit masks as the
        rules' ``flags`` (one hash aggregate), and only followers whose masks
        differ are expanded to (openid, tag) rows. Per-tag totals come from
        the masks grouped by value (a few thousand distinct rows)."""
        from tagdsl.compile.sql import SQLITE_MATERIALIZED

        T = self.tables
        m, ch = T.memberships, T.changes
        d = self._compiler(rs).desired_flags(as_of)
        flags, tl = d.flags, d.tag_list
        zero = literal_column("0", BigInteger())

        dialect = conn.dialect.name
        if dialect == "postgresql":
            def mask_sum(w):
                bit = tl.c.bit if len(d.words) == 1 else case((tl.c.word == literal_column(str(w)), tl.c.bit),
                                                             else_=zero)
                return sa.cast(func.sum(bit), BigInteger()).label(f"s{w}")

            # A hash join with the tag list keeps the tags in scope and gives
            # each its bit (cheaper than a CASE over every tag name per row).
            # Its own statement, without parallel workers: each worker would
            # meet nearly every follower, and the partial aggregates only add
            # work (1M followers: 1.9 s instead of 4.4-5.7 s; in the difference
            # statement it cost about 5 s).
            self._set_pg_work_settings(conn)
            stored = _masks_table(T.prefix, d.words)
            _drop_temp(conn, stored)  # left over on a pooled connection
            workers = conn.exec_driver_sql("SHOW max_parallel_workers_per_gather").scalar_one()
            conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
            conn.execute(_CreateTempAs(stored, select(m.c.openid, *[mask_sum(w) for w in d.words])
                                       .select_from(m.join(tl, tl.c.tag == m.c.tag))
                                       .where(m.c.source == "rule").group_by(m.c.openid)))
            conn.exec_driver_sql(f"SET LOCAL max_parallel_workers_per_gather = {int(workers)}")
            conn.exec_driver_sql(f"ANALYZE {_quote(conn, stored.name)}")
            changed = (select(func.coalesce(flags.c.openid, stored.c.openid).label("openid"),
                              *[func.coalesce(flags.c[f"m{w}"], zero).label(f"d{w}") for w in d.words],
                              *[func.coalesce(stored.c[f"s{w}"], zero).label(f"s{w}") for w in d.words])
                       .select_from(flags.outerjoin(stored, stored.c.openid == flags.c.openid, full=True))
                       .where(or_(*[func.coalesce(flags.c[f"m{w}"], zero)
                                    != func.coalesce(stored.c[f"s{w}"], zero) for w in d.words])))
        else:
            # SQLite: no join with the tag list (a nested loop per stored row)
            # but a CASE on the tag; grouped in the primary key's order (openid
            # first), so without sorting. No FULL JOIN (before 3.39, and it
            # does not index the materialised side): the followers' side, then
            # the stored followers who are no longer in the followers table.
            def mask_sum(w):
                whens = {tag: literal_column(str(bit), BigInteger()) for tag, (word, bit) in d.bits.items()
                         if word == w}
                return sa.cast(func.sum(case(whens, value=m.c.tag, else_=zero)), BigInteger()).label(f"s{w}")

            stored = (select(m.c.openid, *[mask_sum(w) for w in d.words])
                      .where(m.c.source == "rule").group_by(m.c.openid).cte("stored"))
            if SQLITE_MATERIALIZED:
                stored = stored.prefix_with("MATERIALIZED", dialect="sqlite")
            f = T.followers.c[self.config.followers.id]
            changed = union_all(
                select(flags.c.openid, *[flags.c[f"m{w}"].label(f"d{w}") for w in d.words],
                       *[func.coalesce(stored.c[f"s{w}"], zero).label(f"s{w}") for w in d.words])
                .select_from(flags.outerjoin(stored, stored.c.openid == flags.c.openid))
                .where(or_(*[flags.c[f"m{w}"] != func.coalesce(stored.c[f"s{w}"], zero) for w in d.words])),
                select(stored.c.openid, *[zero.label(f"d{w}") for w in d.words],
                       *[stored.c[f"s{w}"] for w in d.words])
                .where(or_(*[stored.c[f"s{w}"] != zero for w in d.words]),
                       ~exists().where(f == stored.c.openid)))
        # Once: the expansion below joins it to every tag.
        changed = changed.cte("changed").prefix_with("MATERIALIZED", dialect="postgresql")
        if SQLITE_MATERIALIZED:
            changed = changed.prefix_with("MATERIALIZED", dialect="sqlite")
        want = d.mask_for(changed, tl, "d{}").bitwise_and(tl.c.bit).self_group()
        have = d.mask_for(changed, tl, "s{}").bitwise_and(tl.c.bit).self_group()
        changes = (select(case((want != zero, literal("added")), else_=literal("removed")).label("kind"),
                           changed.c.openid, tl.c.tag, sa.cast(sa.null(), BigInteger()).label("n"))
                   .select_from(changed.join(tl, want != have)))
        by_mask = select(*[flags.c[f"m{w}"] for w in d.words], func.count().label("n")).group_by(
            *[flags.c[f"m{w}"] for w in d.words]).subquery("by_mask")
        # One row per tag, 0 for a tag nobody gets.
        totals = (select(literal("total").label("kind"), sa.cast(sa.null(), String()).label("openid"), tl.c.tag,
                         sa.cast(func.coalesce(func.sum(by_mask.c.n), zero), BigInteger()).label("n"))
                  .select_from(tl.outerjoin(by_mask,
                                            d.mask_for(by_mask, tl).bitwise_and(tl.c.bit).self_group() != zero))
                  .group_by(tl.c.tag))
        diff = self._diff
        first = not self._holds_rule_memberships(conn, scope)
        _drop_temp(conn, diff)  # left over on a pooled connection
        # Totals first: the CREATE … AS SELECT appends them before the
        # changes, so a first apply finds them without reading every row.
        conn.execute(_CreateTempAs(diff, union_all(totals, changes)))
        if dialect == "postgresql" and not first:  # no statistics on temporary tables otherwise
            conn.exec_driver_sql(f"ANALYZE {_quote(conn, diff.name)}")  # the writes below join it to memberships
        for name in ("rules", "expiry", "limit", "diff"):
            steps(name)

        counts = {name: TagCount() for name in scope}
        if first:
            # Nothing stored: every membership the rules give is added. Saves
            # grouping every added row (1.1 s at 1M followers). One total per
            # tag: the LIMIT stops the scan there (0.4 s at 1M).
            for tag, n in conn.execute(select(diff.c.tag, diff.c.n).where(diff.c.kind == "total")
                                       .limit(len(scope))):
                counts[tag].total = counts[tag].added = int(n)
        else:
            for kind, tag, rows, n in conn.execute(select(diff.c.kind, diff.c.tag, func.count(), func.sum(diff.c.n))
                                                   .group_by(diff.c.kind, diff.c.tag)):
                if kind == "total":
                    counts[tag].total = int(n)
                elif kind == "added":
                    counts[tag].added = rows
                else:
                    counts[tag].removed = rows

        # Expiry state of tags that no longer expire is cleared, as in the general path.
        e = T.expirations
        conn.execute(delete(e).where(e.c.tag.in_(scope)))
        if run_id is not None:
            rid = literal(run_id, BigInteger())
            adding = sum(c.added for c in counts.values())
            rebuild = self._drop_membership_indexes(conn, adding) if dialect == "postgresql" else None
            added = (select(diff.c.openid, diff.c.tag, literal("rule"), literal(as_of, DateTime()), rid)
                     .where(diff.c.kind == "added"))
            if rebuild is None:
                # In primary key order: the key's B-tree then fills page by page
                # instead of at random places (4.15M rows at 1M followers on
                # PostgreSQL: 18 s instead of 35 s).
                added = added.order_by(diff.c.openid, diff.c.tag)
            if adding:
                conn.execute(insert(m).from_select(["openid", "tag", "source", "assigned_at", "run_id"], added))
            if any(c.removed for c in counts.values()):  # none in a first apply: no scan for nothing
                removed = select(diff.c.openid, diff.c.tag).where(diff.c.kind == "removed")
                if dialect == "sqlite":
                    # Driven by the (few) removed rows through the primary key,
                    # not by a scan of every stored membership.
                    conn.execute(delete(m).where(m.c.source == "rule",
                                                 sa.tuple_(m.c.openid, m.c.tag).in_(removed)))
                else:
                    conn.execute(delete(m).where(m.c.source == "rule", exists(
                        removed.where(diff.c.openid == m.c.openid, diff.c.tag == m.c.tag))))
            for statement in rebuild or ():
                conn.exec_driver_sql(statement)
            conn.execute(insert(ch).from_select(
                ["run_id", "openid", "tag", "action", "reason"],
                select(rid, diff.c.openid, diff.c.tag, diff.c.kind, literal("rule"))
                .where(diff.c.kind.in_(["added", "removed"]))))
        steps("write")
        _drop_temp(conn, diff)
        if dialect == "postgresql":
            _drop_temp(conn, stored)
        result = self._finish_run(conn, run_id, as_of, counts, [], 0, limit)
        steps("report")
        return result

    @staticmethod
    def _set_pg_work_settings(conn) -> None:
        """PostgreSQL, for the statements of the read-only difference: the
        rules query's row estimates are about 6x too high, and the planner then
        sorts both sides of merge joins by the column's collation instead of
        hashing (1.9 s instead of 0.6 s for one side at 100k followers); at the
        default 4 MB work_mem its hash joins, aggregates and sorts spill to
        disk in many batches (at 1M followers the statement took 14.2-14.4 s
        with 32 MB, 12.1-13.4 s with 64 MB). Applies are serialised by the
        store's lock: one statement's worth of memory at a time."""
        conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")

    # A bulk insert into B-tree indexes costs far more than building them
    # afterwards: 4.15M memberships at 1M followers took 18 s inserted in key
    # order and 12 s inserted bare with the indexes built after.
    REBUILD_MIN_ROWS = 100_000

    def _drop_membership_indexes(self, conn, adding: int) -> Optional[list[str]]:
        """PostgreSQL, when ``adding`` rows at least double the memberships
        table (a first apply): drop its primary key and indexes and return the
        statements that re-create them, as they were. Inside the apply's
        transaction, so a failure restores them; concurrent readers of the
        table wait for the apply to commit. None when not worth it, or when a
        foreign key refers to the table."""
        if adding < self.REBUILD_MIN_ROWS:
            return None
        m = self.tables.memberships
        name = conn.dialect.identifier_preparer.format_table(m)
        quote = conn.dialect.identifier_preparer.quote
        oid = {"t": name}
        held = conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"), oid).scalar()
        if held is None or held < 0:  # never analysed
            held = conn.execute(select(func.count()).select_from(m)).scalar_one()
        if adding < held or conn.execute(sa.text(
                "SELECT 1 FROM pg_constraint WHERE confrelid = CAST(:t AS regclass)"), oid).first():
            return None
        constraints = conn.execute(sa.text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u', 'x') ORDER BY conname"), oid).all()
        indexes = conn.execute(sa.text(
            "SELECT CAST(indexrelid AS regclass)::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid = CAST(:t AS regclass) AND indexrelid NOT IN "
            "(SELECT conindid FROM pg_constraint WHERE conrelid = CAST(:t AS regclass)) ORDER BY 1"), oid).all()
        for constraint, _ in constraints:
            conn.exec_driver_sql(f"ALTER TABLE {name} DROP CONSTRAINT {quote(constraint)}")
        for index, _ in indexes:
            conn.exec_driver_sql(f"DROP INDEX {index}")
        return ([f"ALTER TABLE {name} ADD CONSTRAINT {quote(c)} {d}" for c, d in constraints]
                + [d for _, d in indexes])

    # -- preview -----------------------------------------------------------------------------------
    def audience(self, expr_or_audience, ruleset: RulesetLike = None) -> tuple[str, I.Ruleset, I.Expr]:
        """(label, ruleset, condition) of an audience: an ``ir.Audience``, an IR
        expression, the name of an audience of the ruleset, or the text of an
        expression (checked with the ruleset; errors at ``<expr>:line:col``)."""
        if isinstance(expr_or_audience, I.Audience):
            return expr_or_audience.name, self.load_ruleset(ruleset), expr_or_audience.condition
        if not isinstance(expr_or_audience, str):
            return "<expr>", self.load_ruleset(ruleset), expr_or_audience
        text = expr_or_audience
        if isinstance(ruleset, I.Ruleset):
            if text in ruleset.audiences:
                return text, ruleset, ruleset.audiences[text].condition
            paths = ruleset.files
        elif ruleset is None:  # the configured rulesets, if there are any
            paths = [p for p in self._paths(None) if p.exists()]
        else:
            paths = self._paths(ruleset)
        base = analyze(paths, self.config) if paths else None
        if base is not None and base.errors:
            raise RulesetError(base.diagnostics)
        if base is not None and text in base.ruleset.audiences:
            return text, base.ruleset, base.ruleset.audiences[text].condition
        rs, condition = check_expression(text, self.config, base)
        return text, rs, condition

    def named_audience(self, name: str, ruleset: RulesetLike = None) -> tuple[I.Ruleset, I.Audience]:
        rs = self.load_ruleset(ruleset)
        if name not in rs.audiences:
            known = ", ".join(rs.audiences) or "none defined"
            raise TagDSLError(f"unknown audience `{name}` (audiences: {known})")
        return rs, rs.audiences[name]

    def preview(self, expr_or_audience, as_of=None, sample: int = 0, by: str | None = None, *,
                ruleset: RulesetLike = None) -> PreviewResult:
        """How many followers an audience holds as of ``as_of``, of how many;
        optionally ``sample`` openids (the first by openid) and a breakdown by
        the follower field ``by``. Computed tags referenced by the audience are
        evaluated live from their rules. One aggregate query for the counts."""
        label, rs, condition = self.audience(expr_or_audience, ruleset)
        as_of = resolve_as_of(as_of, self.config.tz)
        by_column = self._follower_field(by) if by else None
        if sample < 0:
            raise TagDSLError("--sample must be 0 or more")
        self.check_schema()
        self._require_memberships_for(rs, condition)
        compiler = self._compiler(rs)
        with self._errors("preview"), self.db.connect() as conn:
            postgresql, sqlite = conn.dialect.name == "postgresql", conn.dialect.name == "sqlite"
            plan = compiler.per_follower_count(condition, as_of) if postgresql and by is None else None
            if plan is not None and self._per_follower_is_cheaper(conn, plan):
                # Its cost estimates are far too high (rows per follower of a
                # skewed source), which would make PostgreSQL JIT-compile it.
                conn.exec_driver_sql("SET LOCAL jit = off")
                # The driving source's rows are sorted by follower to be
                # grouped: 64 MB keeps that in memory (the default 4 MB spilled
                # at 1M followers).
                conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
                rows = conn.execute(plan.count).all()
            else:
                narrowed = compiler.narrowed_count(condition, as_of) if sqlite and by is None else None
                if narrowed is not None and self._narrows_enough(conn, narrowed):
                    rows = conn.execute(narrowed.count).all()
                else:
                    rows = conn.execute(compiler.count_select(condition, as_of, by=by)).all()
            openids: list[str] = []
            if sample:
                sub = compiler.audience_select(condition, as_of).subquery("audience")
                key = sub.c.openid.collate("C") if conn.dialect.name == "postgresql" else sub.c.openid
                openids = list(conn.execute(select(sub.c.openid).order_by(key).limit(sample)).scalars())
        total = sum(int(r[0] or 0) for r in rows)
        count = sum(int(r[1] or 0) for r in rows)
        breakdown = None
        if by:
            from tagdsl.compile.python import normalize_value

            spec = self.config.followers.fields.get(by)
            kind = I.TYPES[spec.type.value] if spec else I.STRING
            def shown(value):
                try:
                    return normalize_value(value, kind, self.config.tz)
                except ValueError:  # an unreadable stored value is shown as stored
                    return value

            breakdown = [BreakdownRow(shown(r[2]), int(r[1] or 0), int(r[0] or 0)) for r in rows]
            breakdown.sort(key=lambda b: (-b.count, -b.total, b.value is None, str(b.value)))
        return PreviewResult(label, as_of, self.config.tz, count, total, openids, breakdown, by)

    # SQLite, 100k followers, the benchmark's previews: aggregating only for
    # the narrowed followers took 0.06-0.4 s instead of 0.17-1.8 s when a
    # third of them or fewer pass; 0.57 s instead of 0.34 s when 90 % do.
    NARROWED_SHARE = 0.5

    def _narrows_enough(self, conn, narrowed) -> bool:
        """Whether at most NARROWED_SHARE of the first rows of the followers
        table pass the narrowing conjuncts (SQLite keeps no estimates)."""
        rows, passed = conn.execute(narrowed.share).one()
        return bool(rows) and (passed or 0) <= self.NARROWED_SHARE * rows

    # Measured on the benchmark (1M followers, 12.6M source rows, PostgreSQL,
    # 2 cores): a pass over a source costs about 0.28 µs per row, a
    # per-follower index probe of a source about 4.2 µs: 15 rows' worth.
    PROBE_COST_IN_ROWS = 15

    def _per_follower_is_cheaper(self, conn, plan) -> bool:
        """Whether probing the sources for the followers who pass the
        condition's field conjuncts (PostgreSQL's estimate of how many) costs
        less than one pass over every row of those sources (their estimated
        size). Tables never analysed: no. No source to probe (the count is
        driven by one source's rows of the narrowed followers, one pass over
        part of what the other shape reads whole): yes."""
        if not plan.sources:
            return True
        quoted = conn.dialect.identifier_preparer.format_table
        sizes = conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = ANY(CAST(:t AS regclass[]))"),
                             {"t": [quoted(t) for t in plan.sources]}).scalars().all()
        if len(sizes) != len(plan.sources) or min(sizes) < 0:
            return False
        explained = conn.execute(_ExplainJson(plan.narrowing)).scalar_one()
        narrowed = explained[0]["Plan"]["Plan Rows"]
        return narrowed * len(plan.sources) * self.PROBE_COST_IN_ROWS < sum(sizes)

    def _follower_field(self, name: str) -> str:
        f = self.config.followers
        if name == f.id:
            return f.id
        if name not in f.fields:
            raise TagDSLError(f"unknown follower field `{name}` (fields: {', '.join(f.fields)})")
        return f.fields[name].column or name

    def _require_memberships_for(self, rs: I.Ruleset, condition) -> None:
        """Stored tags are read only for manual tags; say how to get the table if it is missing."""
        manual = {n for n in I.tag_refs(condition) if n in rs.tags and rs.tags[n].manual}
        for name in list(I.tag_refs(condition)):
            rule = rs.tags.get(name)
            if rule is not None and rule.condition is not None:
                manual |= {n for n in I.tag_refs(rs.effective_condition(name)) if rs.tags[n].manual}
        if manual and store.missing_engine_tables(self.db, self.tables):
            raise store.StoreError(f"table `{self.tables.memberships.name}` not found in "
                                   f"{store.redact_url(self.url)}: run `tagdsl apply` once to create the engine tables")

    # -- explain -----------------------------------------------------------------------------------
    def load_follower(self, openid: str):
        """The follower, its rows and its stored tags, as the in-memory evaluator takes them."""
        self.check_schema()
        with self.db.connect() as conn:
            return store.load_follower(conn, self.config, openid)

    def explain(self, openid: str, ruleset: RulesetLike = None, as_of=None) -> FollowerExplanation:
        """Why ``openid`` has (or lacks) each computed tag as of ``as_of``: every
        rule with its sub-expression values and the exclusive-group decisions
        (the in-memory evaluator's explanation), then what apply adds: tags
        held back by ``expires`` and the per-follower limit decision."""
        from tagdsl.compile.python import compile_python, normalize_value

        sources = None
        if isinstance(ruleset, I.Ruleset):
            rs = ruleset
        else:
            analysis = analyze(self._paths(ruleset), self.config)
            if analysis.errors:
                raise RulesetError(analysis.diagnostics)
            rs, sources = analysis.ruleset, analysis.sources
        as_of = resolve_as_of(as_of, self.config.tz)
        follower = self.load_follower(openid)
        evaluator = compile_python(rs, self.config, sources=sources)
        ranks = evaluator.rank_nodes
        if ranks:
            # quintile()/percent_rank() rank the whole population: the database
            # computes this follower's ranks, the trace shows them.
            with self._errors("explain"), self.db.connect() as conn:
                row = conn.execute(self._compiler(rs).rank_select(ranks, as_of, openid)).one()
            values = [normalize_value(v, r.type) for v, r in zip(row, ranks)]
            evaluator.set_ranks(as_of, {r: {openid: v} for r, v in zip(ranks, values)}, [openid])
        explanation = evaluator.explain(follower, as_of)
        stored: dict[str, list[str]] = {}
        blocked: dict[str, dt.datetime] = {}
        if not store.missing_engine_tables(self.db, self.tables):
            m, e = self.tables.memberships, self.tables.expirations
            with self._errors("explain"), self.db.connect() as conn:
                for tag, source in conn.execute(select(m.c.tag, m.c.source).where(m.c.openid == openid)
                                                .order_by(m.c.tag, m.c.source)):
                    stored.setdefault(tag, []).append(source)
                for tag, when in conn.execute(select(e.c.tag, e.c.expired_at).where(e.c.openid == openid)):
                    if tag in explanation.holding and rs.tags.get(tag) and rs.tags[tag].expires:
                        blocked[tag] = when
        limit = self.config.limits_resolved.max_tags_per_follower
        candidates = {t: rs.tags[t].priority for t in explanation.holding if t not in blocked}
        protected = {t for t, sources in stored.items() if any(src != "rule" for src in sources)}
        dropped = [Drop(openid, t, p) for t, p in limit_drops(candidates, protected, limit)]
        return FollowerExplanation(explanation, stored, limit, blocked, dropped)

    # -- export ------------------------------------------------------------------------------------
    def export(self, tag: str | None = None, audience: str | None = None, ruleset: RulesetLike = None,
               as_of=None) -> Iterator[dict]:
        """Stored memberships as ``{"openid", "tag", "source"}`` rows (all, or
        those of ``tag``), or with ``audience`` the audience's openids as
        ``{"openid"}`` rows; ordered by openid. Streams from the database."""
        if tag is not None and audience is not None:
            raise TagDSLError("export either a tag or an audience, not both")
        if audience is not None:
            rs, aud = self.named_audience(audience, ruleset)
            as_of = resolve_as_of(as_of, self.config.tz)
            self.check_schema()
            self._require_memberships_for(rs, aud.condition)
            sub = self._compiler(rs).audience_select(aud.condition, as_of).subquery("audience")
            return self._stream(lambda dialect: select(sub.c.openid).order_by(_code_points(sub.c.openid, dialect)))
        m = self.tables.memberships
        if store.missing_engine_tables(self.db, self.tables):
            raise store.StoreError(f"table `{m.name}` not found in {store.redact_url(self.url)}: "
                                   "run `tagdsl apply` first")
        if tag is not None:
            with self._errors("export"), self.db.connect() as conn:
                known = conn.execute(select(m.c.tag).where(m.c.tag == tag).limit(1)).first() or conn.execute(
                    select(self.tables.tag_defs.c.name).where(self.tables.tag_defs.c.name == tag)).first()
            if not known:
                raise TagDSLError(f"no tag `{tag}` in the store (neither defined by an applied ruleset nor held)")

        def query(dialect):
            q = select(m.c.openid, m.c.tag, m.c.source)
            if tag is not None:
                q = q.where(m.c.tag == tag)
            return q.order_by(_code_points(m.c.openid, dialect), _code_points(m.c.tag, dialect), m.c.source)

        return self._stream(query)

    def _stream(self, build) -> Iterator[dict]:
        db = self.db

        def rows():
            with self._errors("export"), db.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=2000).execute(build(conn.dialect.name))
                for row in result.mappings():
                    yield dict(row)

        return rows()


def limit_drops(computed: dict[str, int], protected: set[str], limit: Optional[int]) -> list[tuple[str, int]]:
    """The computed tags (name -> priority) one follower loses to the
    per-follower limit, given the tags it holds from other sources: the lowest
    priority first, ties: the later name in code-point order. (apply computes
    the same in SQL, for every follower at once.)"""
    if limit is None:
        return []
    extra = sorted(((t, p) for t, p in computed.items() if t not in protected), key=lambda tp: (-tp[1], tp[0]))
    keep = max(0, limit - len(protected))
    return extra[keep:]


def _code_points(column, dialect: str):
    return column.collate("C") if dialect == "postgresql" else column


class _Steps:
    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, name: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(name, min(self.done, self.total), self.total)
