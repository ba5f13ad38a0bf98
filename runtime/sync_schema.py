"""The sync's own tables (named with ``[database] table_prefix``, like the engine's).

* ``{p}sync_runs``: one row per sync run (platform, account, status, what was planned).
* ``{p}sync_batches``: the run's planned platform calls in order; each is ``planned`` until
  WeChat acknowledged it (``acked``) or it was given up (``skipped``).  A tag creation is marked
  ``sent`` before the call, so a run killed in between knows the tag may exist and is its own.
* ``{p}sync_skips``: followers (or pairs) a run could not tag or untag, with the reason.
* ``{p}sync_tag_ids``: the platform's tag (and WeCom group) ids: which tagdsl tag an id stands
  for, and whether tagdsl created it.
* ``{p}sync_members``: the memberships tagdsl itself added on the platform (only those may be
  removed without ``--prune``).
* ``{p}sync_tokens``: cached access tokens with their expiry (:class:`DbTokenStorage`).
* ``{p}wecom_contacts``: WeCom (follow userid, external_userid) pairs seen by the last import.

Nothing here ever holds an app or corp secret.  Access tokens are held in ``{p}sync_tokens``
only, until they expire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text,
)
from wechatpy.session import SessionStorage

from tagdsl.config import Config
from tagdsl.schema import ID_LENGTH, MYSQL_TABLE_ARGS, STRING_LENGTH, TAG_LENGTH

PLATFORM_LENGTH = 16
ACCOUNT_LENGTH = 64  # appid (wx + 16 hex) or corpid
PLATFORM_ID_LENGTH = 64  # official-account tag ids are integers; WeCom ids are ~32 characters


@dataclass
class SyncTables:
    metadata: MetaData
    runs: Table
    batches: Table
    skips: Table
    tag_ids: Table
    members: Table
    tokens: Table
    wecom_contacts: Table

    @property
    def all(self) -> list[Table]:
        return [self.runs, self.batches, self.skips, self.tag_ids, self.members, self.tokens, self.wecom_contacts]


def build_sync_tables(config: Config | str, metadata: MetaData | None = None) -> SyncTables:
    """The sync tables for ``config`` (or a table prefix)."""
    p = config if isinstance(config, str) else config.database.table_prefix
    md = metadata or MetaData()
    autoid = BigInteger().with_variant(Integer, "sqlite")
    runs = Table(
        f"{p}sync_runs", md,
        Column("id", autoid, primary_key=True, autoincrement=True),
        Column("platform", String(PLATFORM_LENGTH), nullable=False),
        Column("account", String(ACCOUNT_LENGTH), nullable=False),
        # running (being executed, or killed) | stopped (cleanly, resumable) | complete | abandoned
        Column("status", String(16), nullable=False),
        Column("prune", Boolean(create_constraint=False), nullable=False, default=False),
        Column("started_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
        Column("finished_at", DateTime),
        Column("host", String(STRING_LENGTH)),
        Column("pid", Integer),
        Column("ruleset_hash", String(64)),
        Column("summary", JSON),  # the plan's figures: tags, per-tag counts, planned calls
        Column("message", Text),  # why it stopped (redacted)
        Column("resume_after", DateTime),  # quota used up: the next reset
        Index(f"ix_{p}sync_runs_account", "platform", "account", "status"),
        **MYSQL_TABLE_ARGS,
    )
    batches = Table(
        f"{p}sync_batches", md,
        Column("run_id", BigInteger, primary_key=True, autoincrement=False),
        Column("seq", Integer, primary_key=True, autoincrement=False),
        # wechat_mp: delete | rename | create | untag | tag;  wecom: delete | rename | create | mark
        Column("kind", String(16), nullable=False),
        Column("tag", String(TAG_LENGTH)),  # the tagdsl tag (or platform tag) it is about
        Column("payload", JSON, nullable=False),
        Column("size", Integer, nullable=False, default=0),  # followers (pairs) in the batch
        Column("state", String(16), nullable=False),  # planned | sent | acked | skipped
        Column("acked_at", DateTime),
        Column("note", Text),
        Index(f"ix_{p}sync_batches_state", "run_id", "state"),
        **MYSQL_TABLE_ARGS,
    )
    skips = Table(
        f"{p}sync_skips", md,
        Column("id", autoid, primary_key=True, autoincrement=True),
        Column("run_id", BigInteger, nullable=False),
        Column("seq", Integer),  # the batch; NULL when skipped while planning
        Column("tag", String(TAG_LENGTH)),
        Column("follower_id", String(ID_LENGTH)),
        Column("userid", String(ID_LENGTH)),
        Column("code", Integer),  # the platform's errcode, NULL when tagdsl decided before calling
        Column("reason", String(STRING_LENGTH), nullable=False),
        Index(f"ix_{p}sync_skips_run", "run_id"),
        **MYSQL_TABLE_ARGS,
    )
    tag_ids = Table(
        f"{p}sync_tag_ids", md,
        Column("platform", String(PLATFORM_LENGTH), primary_key=True),
        Column("account", String(ACCOUNT_LENGTH), primary_key=True),
        Column("tag_id", String(PLATFORM_ID_LENGTH), primary_key=True),
        Column("kind", String(8), nullable=False),  # tag | group (WeCom)
        # the tagdsl tag (group) this id stands for; for other platform tags, their platform name
        Column("name", String(TAG_LENGTH), nullable=False),
        Column("group_id", String(PLATFORM_ID_LENGTH)),
        Column("group_name", String(TAG_LENGTH)),
        Column("managed", Boolean(create_constraint=False), nullable=False, default=False),  # in the ruleset
        Column("created", Boolean(create_constraint=False), nullable=False, default=False),  # by tagdsl
        Column("updated_at", DateTime, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    members = Table(
        f"{p}sync_members", md,
        Column("platform", String(PLATFORM_LENGTH), primary_key=True),
        Column("account", String(ACCOUNT_LENGTH), primary_key=True),
        Column("tag_id", String(PLATFORM_ID_LENGTH), primary_key=True),
        Column("follower_id", String(ID_LENGTH), primary_key=True),
        Column("userid", String(ID_LENGTH), primary_key=True, default=""),  # WeCom follow user; '' on wechat_mp
        **MYSQL_TABLE_ARGS,
    )
    tokens = Table(
        f"{p}sync_tokens", md,
        Column("key", String(STRING_LENGTH), primary_key=True),
        Column("value", Text, nullable=False),
        Column("expires_at", Float),  # unix seconds; NULL: until WeChat rejects it
        **MYSQL_TABLE_ARGS,
    )
    wecom_contacts = Table(
        f"{p}wecom_contacts", md,
        Column("corpid", String(ACCOUNT_LENGTH), primary_key=True),
        Column("external_userid", String(ID_LENGTH), primary_key=True),
        Column("userid", String(ID_LENGTH), primary_key=True),
        Column("added_at", DateTime),  # follow_info.createtime
        Column("remark", String(STRING_LENGTH)),
        Column("updated_at", DateTime, nullable=False),
        Index(f"ix_{p}wecom_contacts_userid", "corpid", "userid"),
        **MYSQL_TABLE_ARGS,
    )
    return SyncTables(md, runs, batches, skips, tag_ids, members, tokens, wecom_contacts)


def ensure_sync_tables(engine: sa.Engine, tables: SyncTables) -> None:
    """Create the sync tables that are missing (never touches data)."""
    tables.metadata.create_all(engine, tables=tables.all, checkfirst=True)


class DbTokenStorage(SessionStorage):
    """A wechatpy ``SessionStorage`` in ``{p}sync_tokens``: tokens survive the process, so a
    resumed or repeated sync does not fetch a new one (the token endpoint has a daily quota too).

    Follows the contract of :class:`runtime.wechat.InMemoryTokenStorage`: ``set`` keeps a value for
    ``ttl`` seconds, ``get`` returns ``default`` once it has expired, ``delete`` forgets it.
    Expiry is wall-clock time (another process reads it).
    """

    def __init__(self, engine: sa.Engine, table: Table, clock: Callable[[], float] = time.time):
        self._engine = engine
        self._table = table
        self._clock = clock

    def get(self, key: str, default: Any = None) -> Any:
        t = self._table
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(t.c.value, t.c.expires_at).where(t.c.key == key)).first()
        if row is None:
            return default
        if row.expires_at is not None and self._clock() >= row.expires_at:
            self.delete(key)
            return default
        return row.value

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        if value is None:
            return
        t = self._table
        expires_at = None if ttl is None else self._clock() + ttl
        with self._engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.key == key))
            conn.execute(sa.insert(t).values(key=key, value=str(value), expires_at=expires_at))

    def delete(self, key: str) -> None:
        t = self._table
        with self._engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.key == key))
