"""SQLAlchemy table declarations, built from the configuration (never reflected).

- The user's tables (followers and event sources) as mapped in tagdsl.toml;
  only the declared columns are named, so the user's tables may have more.
- The engine's own tables, named with the configured prefix (``tagdsl_``):
  tag definitions, memberships, runs, changes (the audit log), limit drops and
  expiry state. ``create_all`` of the engine tables is safe on a user's database.

Strings that are compared are stored with a binary collation on MySQL/MariaDB
(their default collations ignore case and trailing spaces: 'VIP' = 'vip ').
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, Date, Float, Index, Integer, MetaData, Numeric,
    String, Table, Text,
)
from sqlalchemy import DateTime as _DateTime
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateTable
from sqlalchemy.types import TypeEngine

from .config import Config, FieldSpec, FieldType

ID_LENGTH = 64  # openids are 28 characters, WeCom external_userids 32
TAG_LENGTH = 128  # 30 bytes on the official account, 30 characters on WeCom
STRING_LENGTH = 255

# MySQL/MariaDB: utf8mb4 with binary collation, so '=' compares code points.
MYSQL_TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def DateTime() -> TypeEngine:  # noqa: N802 - stands in for sqlalchemy.DateTime
    # MySQL/MariaDB DATETIME keeps no fraction of a second unless asked (fsp).
    return _DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def KeyString(length: int) -> TypeEngine:  # noqa: N802 - a type, like String
    """A string column of an engine table that is sorted in bulk: the
    memberships' key. On PostgreSQL with the "C" collation: a database whose
    default collation is a libc locale (even C.UTF-8) compares strings with
    strcoll and without abbreviated keys, so building the primary key of a
    first apply's 4.15M memberships took 5.9 s instead of 2.7 s. Equality is
    the same under any deterministic collation (joins with the users' tables
    and their indexes are unaffected); order is by code point, as tagdsl
    sorts elsewhere."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


def sql_type(spec: FieldSpec) -> TypeEngine:
    t = spec.type
    if t is FieldType.STRING:
        return String(STRING_LENGTH)
    if t is FieldType.INTEGER:
        return BigInteger()
    if t is FieldType.DECIMAL:
        return Numeric(18, spec.scale if spec.scale is not None else 2, asdecimal=True)
    if t is FieldType.FLOAT:
        return Float(precision=53)
    if t is FieldType.BOOLEAN:
        return Boolean(create_constraint=False)
    if t is FieldType.DATE:
        return Date()
    if t is FieldType.DATETIME:
        return DateTime()
    raise AssertionError(t)


@dataclass
class Tables:
    metadata: MetaData
    followers: Table
    sources: dict[str, Table]
    # engine-owned
    tag_defs: Table
    memberships: Table
    runs: Table
    changes: Table
    drops: Table
    expirations: Table
    prefix: str

    @property
    def engine_tables(self) -> list[Table]:
        return [self.tag_defs, self.memberships, self.runs, self.changes, self.drops, self.expirations]

    def engine_table(self, name: str) -> Table:
        return self.metadata.tables[self.prefix + name]


def build_tables(config: Config, metadata: MetaData | None = None) -> Tables:
    md = metadata or MetaData()
    f = config.followers
    follower_cols = [Column(f.id, String(ID_LENGTH), primary_key=True)]
    for name, spec in f.fields.items():
        col = spec.column or name
        if col != f.id:
            follower_cols.append(Column(col, sql_type(spec)))
    followers = Table(f.table, md, *follower_cols, **MYSQL_TABLE_ARGS)

    sources = {}
    for sname, src in config.sources.items():
        cols = [Column(src.follower, String(ID_LENGTH), nullable=False)]
        if src.time:
            cols.append(Column(src.time, DateTime()))
        for name, spec in src.fields.items():
            col = spec.column or name
            if col not in (src.follower, src.time):
                cols.append(Column(col, sql_type(spec)))
        indexes = [Index(f"ix_{src.table}_{src.follower}", src.follower, *([src.time] if src.time else []))]
        sources[sname] = Table(src.table, md, *cols, *indexes, **MYSQL_TABLE_ARGS)

    p = config.database.table_prefix
    tag_defs = Table(
        f"{p}tags", md,
        Column("name", String(TAG_LENGTH), primary_key=True),
        Column("kind", String(16), nullable=False),  # computed | manual
        Column("group_name", String(TAG_LENGTH)),
        Column("exclusive", Boolean(create_constraint=False), nullable=False, default=False),
        Column("priority", Integer, nullable=False, default=0),
        Column("expires_seconds", BigInteger),
        Column("description", Text),
        Column("owner", String(STRING_LENGTH)),
        Column("sensitive", Boolean(create_constraint=False), nullable=False, default=False),
        Column("review", String(STRING_LENGTH)),
        Column("ruleset_hash", String(64)),
        **MYSQL_TABLE_ARGS,
    )
    memberships = Table(
        f"{p}memberships", md,
        Column("openid", KeyString(ID_LENGTH), primary_key=True),
        Column("tag", KeyString(TAG_LENGTH), primary_key=True),
        # rule: computed by the engine; manual: set by staff; import: pulled from WeChat/WeCom.
        Column("source", KeyString(16), primary_key=True),
        Column("assigned_at", DateTime(), nullable=False),
        Column("run_id", BigInteger),
        Index(f"ix_{p}memberships_tag", "tag", "source"),
        **MYSQL_TABLE_ARGS,
    )
    runs = Table(
        f"{p}runs", md,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("started_at", DateTime(), nullable=False),
        Column("finished_at", DateTime()),
        Column("as_of", DateTime(), nullable=False),
        Column("ruleset_hash", String(64), nullable=False),
        Column("status", String(16), nullable=False),  # running | ok | failed | dry-run
        Column("followers", BigInteger),
        Column("added", BigInteger),
        Column("removed", BigInteger),
        Column("dropped", BigInteger),
        Column("counts", JSON),  # {tag: {"total", "added", "removed"}}
        **MYSQL_TABLE_ARGS,
    )
    # The audit log is written in bulk and read by run: no surrogate key
    # (on PostgreSQL, drawing a sequence value per row and indexing it was
    # about half of the audit insert of a first apply, 0.4 s of 0.8 s at 100k
    # followers) and, on PostgreSQL, a BRIN index on run_id, which only grows.
    # SQLite tables have a rowid anyway; on MySQL the table is created with an
    # AUTO_INCREMENT key (see _create_table_mysql): InnoDB clusters on it, and
    # replicated servers refuse tables without a primary key. Stores created
    # before keep their `id` column; nothing reads it.
    changes = Table(
        f"{p}changes", md,
        # No foreign key: run_id comes from the run row inserted in the same
        # transaction, and PostgreSQL checks a foreign key row by row (the
        # audit insert of a first apply took twice as long with it).
        Column("run_id", BigInteger, nullable=False),
        Column("openid", String(ID_LENGTH), nullable=False),
        Column("tag", String(TAG_LENGTH), nullable=False),
        Column("action", String(16), nullable=False),  # added | removed
        Column("reason", String(16)),  # rule | expired | limit
        # Only by run: every change row of an apply is written in its
        # transaction, and an index on openid (which nothing in tagdsl reads
        # by) cost 40 % of the audit insert of a first apply on PostgreSQL
        # (1.7 s of 3.8 s at 100k followers). Stores created before keep theirs.
        Index(f"ix_{p}changes_run", "run_id", postgresql_using="brin"),
        info={"mysql_row_key": "id"},
        **MYSQL_TABLE_ARGS,
    )
    drops = Table(
        f"{p}drops", md,
        Column("run_id", BigInteger, primary_key=True),
        Column("openid", String(ID_LENGTH), primary_key=True),
        Column("tag", String(TAG_LENGTH), primary_key=True),
        Column("priority", Integer, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    # A computed tag with `expires` that aged out for a follower: not assigned
    # again until its condition has stopped holding (then the row is deleted).
    expirations = Table(
        f"{p}expirations", md,
        Column("openid", String(ID_LENGTH), primary_key=True),
        Column("tag", String(TAG_LENGTH), primary_key=True),
        Column("assigned_at", DateTime(), nullable=False),
        Column("expired_at", DateTime(), nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    return Tables(md, followers, sources, tag_defs, memberships, runs, changes, drops, expirations, p)


@compiles(CreateTable, "mysql")
def _create_table_mysql(create: CreateTable, compiler, **kw) -> str:
    """CREATE TABLE, with a leading ``BIGINT AUTO_INCREMENT`` primary key for
    a table whose ``info`` names one (``mysql_row_key``)."""
    sql = compiler.visit_create_table(create, **kw)
    key = create.element.info.get("mysql_row_key")
    if key:
        head = f"CREATE TABLE {compiler.preparer.format_table(create.element)} ("
        column = compiler.preparer.quote(key)
        sql = sql.replace(head, f"{head}\n\t{column} BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, ", 1)
    return sql
