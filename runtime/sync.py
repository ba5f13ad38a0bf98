"""Sync the store's tags to a WeChat official account (``wechat_mp``) or to WeCom (``wecom``).

A sync makes the platform's tags equal to the store's computed and manual tags of the ruleset:

1. **Check** the ruleset's tag names against the platform's limits, before any call.
2. **Read** the platform (tags, followers or contact pairs, current memberships) and **plan**:
   tags to create, rename and delete, then the membership calls, in the fewest calls possible
   (official account: Σ over tags of ⌈added/50⌉ + ⌈removed/50⌉; WeCom: one ``mark_tag`` per
   (follow user, customer) pair that changes).  Limits are checked on the plan (100 tags per
   account counting the ones already there, 20 tags per follower, 3000 WeCom corp tags).
3. **Journal** the plan (``runtime.sync_schema``) in one transaction, then **execute** it batch
   by batch, acknowledging each batch in the database once WeChat confirmed it.

A run that stops (quota, unexpected error, SIGKILL) is resumed by the next ``sync``: acknowledged
batches are not sent again.  Which calls may be sent twice, and why that is safe:

* membership calls (``batchtagging``/``batchuntagging``/``mark_tag``) of the one batch that was in
  flight: tagging an already tagged follower, or untagging an untagged one, changes nothing;
* a tag creation that was in flight is *not* repeated blindly: the batch is marked ``sent`` before
  the call, and a resumed (or retried, 45157/40071) creation first re-reads the platform's tags and
  adopts the tag if it exists, so no tag is created twice;
* renames and deletions: renaming to the same name, or deleting a deleted tag (45159/40068), is
  recognised by re-reading the platform.

Desired memberships: the store's ``rule`` and ``manual`` memberships of the ruleset's tags.
``import`` memberships mirror the platform: they are never pushed, and never removed either unless
``--prune`` (and an imported membership of a *manual* tag survives even ``--prune``: staff set it on
the platform).  A platform membership that is not desired is removed only when tagdsl added it
(``{p}sync_members``) or with ``--prune``; likewise a platform tag is deleted only when tagdsl
created it and it left the ruleset, or with ``--prune``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import socket
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from tagdsl import TagDSLError, load_ruleset
from tagdsl import ir as I
from tagdsl.check.names import normalize_name
from tagdsl.config import Config
from tagdsl.schema import Tables, build_tables

from . import store
from .sync_schema import DbTokenStorage, SyncTables, build_sync_tables, ensure_sync_tables
from .wechat import (
    DEFAULT_TIMEOUT, QuotaExhausted, WeChatError, call_with_retry, chunks, make_mp_client, make_wecom_client,
    redact, register_secret,
)

MP = "wechat_mp"
WECOM = "wecom"
PLATFORMS = (MP, WECOM)
LABELS = {MP: "official account", WECOM: "WeCom"}
COMMANDS = {MP: "wechat-mp", WECOM: "wecom"}
DEFAULT_WECOM_GROUP = "tagdsl"  # the corp tag group of tags outside any DSL group
BEIJING = ZoneInfo("Asia/Shanghai")  # WeChat's API quotas reset at midnight Beijing time

# errcodes that concern single followers of a membership batch: the batch is split to find them
MP_FOLLOWER_CODES = {
    45059: "already has the most tags a follower can hold",
    40003: "not a follower of this account (unsubscribed or invalid openid)",
    49003: "openid does not belong to this account",
}
WECOM_PAIR_CODES = {
    84061: "not an external contact of this follow user",
    40096: "unknown external_userid",
    40003: "unknown follow userid",
}
# token-endpoint answers that mean the credentials themselves are wrong (a usage problem)
CREDENTIAL_CODES = {40001, 40002, 40013, 40125, 40164, 41002, 41004, 60020}


class SyncError(TagDSLError):
    """Configuration, credentials or store not usable for a sync/import (exit status 2)."""

    exit_code = 2


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class MpLimits:
    """The official account's limits (shrink them only to test against a shrunk fake)."""

    max_tags: int = 100  # 45056
    name_max_bytes: int = 30  # 45158
    max_tags_per_follower: int = 20  # 45059
    batch: int = 50  # openids per batchtagging / batchuntagging (40032)
    delete_max_fans: int = 100_000  # 45057: untag down to this before deleting
    reserved_ids: tuple[int, ...] = (0, 1, 2)  # 45058
    reserved_names: tuple[str, ...] = ("星标组",)


@dataclass(frozen=True)
class WecomLimits:
    max_tags: int = 3000  # corp tags per enterprise (40126)
    name_max_chars: int = 30  # tag and group names


@dataclass(frozen=True)
class RetryPolicy:
    """How each WeChat call is retried (see :func:`runtime.wechat.call_with_retry`).

    With 10 attempts a call fails for good only after ~30 s to a minute of retries; at a 20 %
    fault rate the chance that one call of a thousand exhausts them is about 1e-4."""

    max_attempts: int = 10
    base_delay: float = 0.2
    max_delay: float = 30.0
    timeout: Any = DEFAULT_TIMEOUT
    sleep: Callable[[float], Any] = time.sleep

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RetryPolicy":
        """``TAGDSL_WECHAT_MAX_ATTEMPTS``, ``TAGDSL_WECHAT_BACKOFF`` (first backoff, seconds) and
        ``TAGDSL_WECHAT_TIMEOUT`` (read timeout, seconds) override the defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, key, kind in (("TAGDSL_WECHAT_MAX_ATTEMPTS", "max_attempts", int),
                               ("TAGDSL_WECHAT_BACKOFF", "base_delay", float),
                               ("TAGDSL_WECHAT_TIMEOUT", "timeout", float)):
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                value = kind(raw)
                if value <= 0 or (key == "base_delay" and value > 60):
                    raise ValueError
            except ValueError:
                raise SyncError(f"environment variable {var}={raw!r} is not a valid positive number") from None
            values[key] = (5.0, value) if key == "timeout" else value
        return cls(**values)


@dataclass(frozen=True)
class Account:
    """Where and as whom to call: the secret is kept out of repr and never stored."""

    platform: str
    account_id: str  # appid / corpid
    secret: str = field(repr=False)
    api_base_url: Optional[str] = None
    userid: Optional[str] = None  # WeCom: only this follow user's customers


def account_from_config(platform: str, config: Config, environ: Mapping[str, str] | None = None) -> Account:
    """Credentials from tagdsl.toml and the environment; a missing one is a :class:`SyncError`
    naming the variable or key.  The secret is only ever read from the environment."""
    env = os.environ if environ is None else environ
    if platform == MP:
        sec, where, id_key, what = config.wechat_mp, "[wechat_mp]", "appid", "AppSecret"
        ident, ident_env = sec.appid, sec.appid_env
    elif platform == WECOM:
        sec, where, id_key, what = config.wecom, "[wecom]", "corpid", "customer-contact secret"
        ident, ident_env = sec.corpid, sec.corpid_env
    else:  # pragma: no cover - the CLI offers only the two
        raise SyncError(f"unknown platform {platform!r} (use {' or '.join(PLATFORMS)})")
    if ident_env:
        ident = env.get(ident_env) or None
        if ident is None:
            raise SyncError(f"environment variable {ident_env} is not set (named by {where} {id_key}_env "
                            f"in tagdsl.toml; it must hold the {id_key})")
    if not ident:
        raise SyncError(f"{where} {id_key} is not set in tagdsl.toml (give {id_key} = \"…\" or "
                        f"{id_key}_env = \"VARIABLE\")")
    secret = env.get(sec.secret_env) or None
    if secret is None:
        raise SyncError(f"environment variable {sec.secret_env} is not set (named by {where} secret_env in "
                        f"tagdsl.toml; it must hold the {what})")
    register_secret(secret)
    userid = getattr(sec, "userid", None)
    return Account(platform, ident, secret, sec.api_base_url, userid)


def default_wecom_group(config: Config) -> str:
    return config.wecom.default_group or DEFAULT_WECOM_GROUP


def next_quota_reset(now: dt.datetime | None = None) -> dt.datetime:
    """The next midnight in Beijing (aware), when WeChat's daily API quotas reset."""
    current = (now or dt.datetime.now(BEIJING)).astimezone(BEIJING)
    return (current + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


# ------------------------------------------------------------------------------------ session


class Session:
    """A database connection, the tables, and a retrying WeChat client for one account."""

    def __init__(self, platform: str, config: Config, account: Account, engine: sa.Engine,
                 retry: RetryPolicy | None = None):
        self.platform = platform
        self.config = config
        self.account = account
        self.engine = engine
        self.retry = retry or RetryPolicy()
        self.tz = config.tz
        self.tables: Tables = build_tables(config)
        self.st: SyncTables = build_sync_tables(config)
        storage = DbTokenStorage(engine, self.st.tokens)
        factory = make_mp_client if platform == MP else make_wecom_client
        self.client = factory(account.account_id, account.secret, api_base_url=account.api_base_url,
                              session=storage, timeout=self.retry.timeout)
        self.calls: Counter[str] = Counter()  # logical calls by kind (retries included)

    def call(self, fn: Callable[[], Any], kind: str = "read") -> Any:
        def counted() -> Any:
            self.calls[kind] += 1
            return fn()

        r = self.retry
        return call_with_retry(counted, max_attempts=r.max_attempts, base_delay=r.base_delay,
                               max_delay=r.max_delay, sleep=r.sleep, client=self.client)

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz).replace(tzinfo=None, microsecond=0)

    def db(self, doing: str):
        return store.db_errors(self.engine.url, doing)


def open_session(platform: str, config: Config, *, environ: Mapping[str, str] | None = None,
                 retry: RetryPolicy | None = None, engine: sa.Engine | None = None,
                 create: bool = False) -> Session:
    """Credentials (exit 2 if missing), the store (``create``: allow a new SQLite file) with the
    sync tables, and the client.  Nothing is sent to WeChat yet."""
    account = account_from_config(platform, config, environ)
    retry = retry or RetryPolicy.from_env(environ)
    if engine is None:
        engine = store.connect(config.database_url, create=create)
    session = Session(platform, config, account, engine, retry)
    with session.db("creating the sync tables"):
        ensure_sync_tables(engine, session.st)
    return session


def wechat_failure(exc: WeChatError, platform: str) -> SyncError | None:
    """A WeChat error that means the configuration is wrong (bad appid/secret at the token
    endpoint) as a SyncError (exit 2); None for everything else."""
    if exc.token_fetch and exc.errcode in CREDENTIAL_CODES:
        section = "[wechat_mp]" if platform == MP else "[wecom]"
        return SyncError(f"WeChat refused the credentials ({section} in tagdsl.toml and its secret_env "
                         f"variable): {exc}")
    return None


# ------------------------------------------------------------------------------------ platform reads


def mp_page_all(session: Session, fetch: Callable[[Optional[str]], dict], total: int | None = None) -> list[str]:
    """All openids of a paged official-account list (user/get, user/tag/get: 10,000 a page,
    ``next_openid``; the page after the last one has no ``data``).  ``total``: the size known
    beforehand (tags/get's count), which saves asking for that empty page."""
    out: list[str] = []
    cursor: Optional[str] = None
    while True:
        page = session.call(lambda: fetch(cursor))
        data = (page.get("data") or {}).get("openid") or []
        out.extend(data)
        total = page.get("total", total)
        nxt = page.get("next_openid")
        if not data or not nxt or (total is not None and len(out) >= int(total)):
            return out
        cursor = nxt


def wecom_corp_tags(session: Session) -> dict[str, dict]:
    """``{group_id: {"name", "tags": {tag_id: name}}}`` from get_corp_tag_list."""
    res = session.call(lambda: session.client.external_contact.get_corp_tag_list())
    return {g["group_id"]: {"name": g["group_name"],
                            "tags": {t["id"]: t["name"] for t in g.get("tag") or () if not t.get("deleted")}}
            for g in res.get("tag_group") or () if not g.get("deleted")}


def wecom_follow_userids(session: Session) -> list[str]:
    """The configured ``[wecom] userid``, or every member with the customer-contact permission."""
    if session.account.userid:
        return [session.account.userid]
    res = session.call(lambda: session.client.external_contact.get_follow_user_list())
    return list(res.get("follow_user") or ())


def wecom_pairs(session: Session, userids: list[str]) -> list[dict]:
    """Every (follow user, customer) pair of ``userids`` via batch/get_by_user (100 members and
    100 pairs a call; wechatpy 1.8 has no wrapper): ``[{"external_contact", "follow_info"}]``."""
    items: list[dict] = []
    for part in chunks(userids, 100):
        cursor = ""
        while True:
            res = session.call(lambda: session.client.post(
                "externalcontact/batch/get_by_user", data={"userid_list": part, "cursor": cursor, "limit": 100}))
            items.extend(res.get("external_contact_list") or ())
            cursor = res.get("next_cursor") or ""
            if not cursor:
                break
    return items


# ------------------------------------------------------------------------------------ plan objects


@dataclass
class Skip:
    """A follower (or pair) left out for one tag, and why."""

    tag: Optional[str]
    follower_id: Optional[str]
    reason: str
    code: Optional[int] = None
    userid: Optional[str] = None

    def line(self) -> str:
        who = self.follower_id or ""
        if self.userid:
            who = f"{self.userid}/{who}"
        code = f" ({self.code})" if self.code is not None else ""
        tag = f" {self.tag}" if self.tag else ""
        return f"{who}{tag}: {self.reason}{code}"


@dataclass
class TagLine:
    """One tag of the plan."""

    name: str
    action: str  # create | rename | keep | delete
    tag_id: Optional[str] = None
    platform_name: Optional[str] = None
    group: Optional[str] = None
    add: int = 0
    remove: int = 0
    why: str = ""


@dataclass
class Batch:
    seq: int
    kind: str
    tag: Optional[str]
    payload: dict
    size: int = 0
    state: str = "planned"


@dataclass
class Plan:
    platform: str
    account: str
    prune: bool
    tags: list[TagLine] = field(default_factory=list)  # the ruleset's tags, in order
    deletes: list[TagLine] = field(default_factory=list)
    group_renames: list[tuple[str, str]] = field(default_factory=list)  # WeCom (old, new)
    left_alone: list[str] = field(default_factory=list)  # platform tags not in the ruleset, kept
    batches: list[Batch] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # limit violations: nothing is executed
    map_rows: list[dict] = field(default_factory=list)
    stale_members: list[tuple[str, str, str]] = field(default_factory=list)
    live_tag_ids: Optional[set[str]] = None
    minimum_calls: int = 0

    @property
    def refused(self) -> bool:
        return bool(self.problems)

    @property
    def membership_calls(self) -> int:
        return sum(1 for b in self.batches if b.kind in ("tag", "untag", "mark"))

    @property
    def write_calls(self) -> int:
        return len(self.batches)

    def summary(self) -> dict:
        return {
            "tags": [dataclasses.asdict(t) for t in self.tags],
            "deletes": [dataclasses.asdict(t) for t in self.deletes],
            "group_renames": self.group_renames,
            "left_alone": self.left_alone,
            "membership_calls": self.membership_calls,
            "minimum_calls": self.minimum_calls,
            "skipped": len(self.skips),
        }


@dataclass
class SyncReport:
    """What a sync did; ``exit_code`` is the CLI's status."""

    platform: str
    account: str = ""
    status: str = "complete"  # complete | incomplete | stopped | refused | dry-run
    run_id: Optional[int] = None
    resumed_run: Optional[int] = None
    resumed_remaining: int = 0
    plan: Optional[Plan] = None
    created: int = 0
    renamed: int = 0
    deleted: int = 0
    tagged: int = 0
    untagged: int = 0
    pairs_marked: int = 0
    membership_calls: int = 0
    minimum_calls: int = 0
    skips: list[Skip] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    message: Optional[str] = None
    resume_after: Optional[dt.datetime] = None  # aware, Beijing time
    calls: Counter = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        return 0 if self.status in ("complete", "dry-run") else 1


# ------------------------------------------------------------------------------------ helpers


def _pid_alive(pid: int) -> bool:
    """A running (not zombie) process that looks like a tagdsl sync."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False  # killed, not yet reaped by its parent
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        return any(word in cmdline for word in ("tagdsl", "cli", "sync", "python"))
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)


def _sorted(items: Iterable[str]) -> list[str]:
    return sorted(items)


def _ceil(n: int, size: int) -> int:
    return math.ceil(n / size) if n else 0


# ------------------------------------------------------------------------------------ base


class _StopCreating(Exception):
    """The platform refused to create more tags (45056 / 40126)."""

    def __init__(self, err: WeChatError):
        super().__init__(str(err))
        self.err = err


class _Syncer:
    """The journal and the execution loop, shared by both platforms."""

    platform = ""

    def __init__(self, session: Session, ruleset: I.Ruleset, *, out: Callable[[str], None] | None = None):
        self.s = session
        self.ruleset = ruleset
        self.rules: dict[str, I.TagRule] = dict(ruleset.tags)
        self.out = out or (lambda line: None)
        self.account = session.account.account_id
        self.ids: dict[str, str] = {}  # tagdsl tag name -> platform tag id (managed tags)
        self.group_ids: dict[str, str] = {}  # WeCom: tagdsl group name -> group id

    # -- the journal --------------------------------------------------------------------------

    def _where_account(self, table):
        return sa.and_(table.c.platform == self.platform, table.c.account == self.account)

    def unfinished_run(self) -> Optional[sa.Row]:
        r = self.s.st.runs
        with self.s.db("reading the sync journal"), self.s.engine.connect() as conn:
            return conn.execute(sa.select(r).where(self._where_account(r), r.c.status.in_(("running", "stopped")))
                                .order_by(r.c.id.desc())).first()

    def guard(self, run: sa.Row) -> None:
        """Refuse to run beside a live sync of the same account."""
        if run.status != "running" or run.pid is None:
            return
        here = socket.gethostname()
        if run.host == here:
            if run.pid != os.getpid() and _pid_alive(run.pid):
                raise SyncError(f"another `tagdsl sync` (pid {run.pid}) is running for {self.platform} account "
                                f"{self.account} (run {run.id}); wait for it to finish")
        else:
            age = (self.s.now() - run.updated_at).total_seconds() if run.updated_at else 1e9
            if age < 600:
                raise SyncError(f"a `tagdsl sync` on host {run.host} (pid {run.pid}) worked on {self.platform} "
                                f"account {self.account} {int(age)} s ago (run {run.id}); wait for it to finish, "
                                f"or run with --restart once it is dead")

    def abandon(self, run_id: int) -> None:
        r = self.s.st.runs
        with self.s.db("writing the sync journal"), self.s.engine.begin() as conn:
            conn.execute(sa.update(r).where(r.c.id == run_id).values(
                status="abandoned", finished_at=self.s.now(), updated_at=self.s.now(),
                message="abandoned by --restart"))

    def load_batches(self, run_id: int) -> list[Batch]:
        b = self.s.st.batches
        with self.s.db("reading the sync journal"), self.s.engine.connect() as conn:
            rows = conn.execute(sa.select(b).where(b.c.run_id == run_id).order_by(b.c.seq)).all()
        return [Batch(r.seq, r.kind, r.tag, dict(r.payload), r.size, r.state) for r in rows]

    def load_ids(self) -> None:
        t = self.s.st.tag_ids
        with self.s.db("reading the tag ids"), self.s.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(self._where_account(t), t.c.managed.is_(True))).all()
        self.ids = {r.name: r.tag_id for r in rows if r.kind == "tag"}
        self.group_ids = {r.name: r.tag_id for r in rows if r.kind == "group"}

    def journal(self, plan: Plan) -> int:
        """Write the plan in one transaction: the id map, the run and its batches."""
        st, now = self.s.st, self.s.now()
        with self.s.db("writing the sync journal"), self.s.engine.begin() as conn:
            conn.execute(sa.delete(st.tag_ids).where(self._where_account(st.tag_ids)))
            if plan.map_rows:
                conn.execute(sa.insert(st.tag_ids), [
                    {"platform": self.platform, "account": self.account, "updated_at": now, **row}
                    for row in plan.map_rows])
            m = st.members
            if plan.live_tag_ids is not None:  # forget memberships of tags gone from the platform
                known = conn.execute(sa.select(m.c.tag_id).where(self._where_account(m)).distinct()).scalars().all()
                gone = [t for t in known if t not in plan.live_tag_ids]
                for part in chunks(gone, 500):
                    conn.execute(sa.delete(m).where(self._where_account(m), m.c.tag_id.in_(part)))
            for tag_id, follower, userid in plan.stale_members:
                conn.execute(sa.delete(m).where(self._where_account(m), m.c.tag_id == tag_id,
                                                m.c.follower_id == follower, m.c.userid == userid))
            run_id = conn.execute(sa.insert(st.runs).values(
                platform=self.platform, account=self.account, status="running", prune=plan.prune,
                started_at=now, updated_at=now, host=socket.gethostname(), pid=os.getpid(),
                ruleset_hash=getattr(self.ruleset, "source_hash", "") or None, summary=plan.summary(),
            )).inserted_primary_key[0]
            if plan.batches:
                conn.execute(sa.insert(st.batches), [
                    {"run_id": run_id, "seq": b.seq, "kind": b.kind, "tag": b.tag, "payload": b.payload,
                     "size": b.size, "state": "planned"} for b in plan.batches])
            self._insert_skips(conn, run_id, None, plan.skips)
        return int(run_id)

    def _insert_skips(self, conn, run_id: int, seq: Optional[int], skips: list[Skip]) -> None:
        if skips:
            conn.execute(sa.insert(self.s.st.skips), [
                {"run_id": run_id, "seq": seq, "tag": k.tag, "follower_id": k.follower_id, "userid": k.userid,
                 "code": k.code, "reason": k.reason[:250]} for k in skips])

    def mark_sent(self, run_id: int, b: Batch) -> None:
        bt = self.s.st.batches
        with self.s.db("writing the sync journal"), self.s.engine.begin() as conn:
            conn.execute(sa.update(bt).where(bt.c.run_id == run_id, bt.c.seq == b.seq).values(state="sent"))
        b.state = "sent"

    def ack(self, run_id: int, b: Batch, *, state: str = "acked", note: str | None = None,
            skips: list[Skip] = (), extra: Callable[[sa.Connection], None] | None = None) -> None:
        """Acknowledge a batch, with its effects on the id map / our memberships, atomically."""
        st, now = self.s.st, self.s.now()
        with self.s.db("writing the sync journal"), self.s.engine.begin() as conn:
            if extra is not None:
                extra(conn)
            self._insert_skips(conn, run_id, b.seq, list(skips))
            conn.execute(sa.update(st.batches).where(st.batches.c.run_id == run_id, st.batches.c.seq == b.seq)
                         .values(state=state, acked_at=now, note=note))
            conn.execute(sa.update(st.runs).where(st.runs.c.id == run_id).values(updated_at=now))
        b.state = state

    def finish(self, run_id: int, status: str, message: str | None = None,
               resume_after: dt.datetime | None = None) -> None:
        r = self.s.st.runs
        now = self.s.now()
        values: dict[str, Any] = {"status": status, "updated_at": now, "message": message,
                                  "resume_after": resume_after.astimezone(self.s.tz).replace(tzinfo=None)
                                  if resume_after else None}
        if status in ("complete", "incomplete"):
            values["finished_at"] = now
        with self.s.db("writing the sync journal"), self.s.engine.begin() as conn:
            conn.execute(sa.update(r).where(r.c.id == run_id).values(**values))

    def take_over(self, run_id: int) -> None:
        r = self.s.st.runs
        with self.s.db("writing the sync journal"), self.s.engine.begin() as conn:
            conn.execute(sa.update(r).where(r.c.id == run_id).values(
                status="running", host=socket.gethostname(), pid=os.getpid(), updated_at=self.s.now(),
                message=None, resume_after=None))

    def add_members(self, conn, tag_id: str, followers: list[str], userid: str = "") -> None:
        m = self.s.st.members
        if not followers:
            return
        conn.execute(sa.delete(m).where(self._where_account(m), m.c.tag_id == tag_id, m.c.userid == userid,
                                        m.c.follower_id.in_(followers)))
        conn.execute(sa.insert(m), [{"platform": self.platform, "account": self.account, "tag_id": tag_id,
                                     "follower_id": f, "userid": userid} for f in followers])

    def remove_members(self, conn, tag_id: str, followers: list[str] | None, userid: str | None = "") -> None:
        m = self.s.st.members
        cond = [self._where_account(m), m.c.tag_id == tag_id]
        if userid is not None:
            cond.append(m.c.userid == userid)
        if followers is None:
            conn.execute(sa.delete(m).where(*cond))
            return
        if followers:
            conn.execute(sa.delete(m).where(*cond, m.c.follower_id.in_(followers)))

    def upsert_id(self, conn, tag_id: str, **values: Any) -> None:
        t = self.s.st.tag_ids
        conn.execute(sa.delete(t).where(self._where_account(t), t.c.tag_id == tag_id))
        conn.execute(sa.insert(t).values(platform=self.platform, account=self.account, tag_id=tag_id,
                                         updated_at=self.s.now(), **values))

    def drop_id(self, conn, tag_id: str) -> None:
        t = self.s.st.tag_ids
        conn.execute(sa.delete(t).where(self._where_account(t), t.c.tag_id == tag_id))

    # -- the store ------------------------------------------------------------------------------

    def desired(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """``desired[tag]``: followers with a rule or manual membership; ``protected[tag]``:
        followers with an imported membership of a manual tag (kept even by --prune)."""
        m = self.s.tables.memberships
        desired = {name: set() for name in self.rules}
        protected = {name: set() for name in self.rules}
        with self.s.db("reading the memberships"), self.s.engine.connect() as conn:
            if not sa.inspect(conn).has_table(m.name):
                raise SyncError(f"table `{m.name}` not found in {store.redact_url(self.s.engine.url)}: "
                                "run `tagdsl apply` first (it holds the memberships to sync)")
            for openid, tag, source in conn.execute(sa.select(m.c.openid, m.c.tag, m.c.source)):
                if tag not in desired:
                    continue
                if source in ("rule", "manual"):
                    desired[tag].add(openid)
                elif source == "import" and self.rules[tag].manual:
                    protected[tag].add(openid)
        return desired, protected

    def old_map(self) -> dict[str, sa.Row]:
        t = self.s.st.tag_ids
        with self.s.db("reading the tag ids"), self.s.engine.connect() as conn:
            return {r.tag_id: r for r in conn.execute(sa.select(t).where(self._where_account(t)))}

    def ours(self) -> set[tuple[str, str, str]]:
        """(tag id, follower id, userid) of the memberships tagdsl added on the platform."""
        m = self.s.st.members
        with self.s.db("reading the sync journal"), self.s.engine.connect() as conn:
            return {(r.tag_id, r.follower_id, r.userid or "") for r in
                    conn.execute(sa.select(m.c.tag_id, m.c.follower_id, m.c.userid).where(self._where_account(m)))}

    # -- execution ------------------------------------------------------------------------------

    def execute(self, run_id: int, batches: list[Batch], report: SyncReport) -> None:
        """Send the batches not yet acknowledged, in order; stop cleanly on quota or an
        unexpected error (the run stays resumable)."""
        self.load_ids()
        pending = [b for b in batches if b.state not in ("acked", "skipped")]
        total = len(pending)
        step = max(1, total // 10)
        not_created: list[str] = []
        stop_creating: Optional[_StopCreating] = None
        for i, b in enumerate(pending, 1):
            try:
                if b.kind == "create" and stop_creating is not None:
                    not_created.extend(self.names_of_create(b))
                    self.ack(run_id, b, state="skipped", note=f"not created: {stop_creating}")
                    continue
                try:
                    self.run_batch(run_id, b, report)
                except _StopCreating as stop:
                    stop_creating = stop
                    not_created.extend(self.names_of_create(b))
                    self.ack(run_id, b, state="skipped", note=f"not created: {stop}")
            except QuotaExhausted as exc:
                reset = next_quota_reset()
                report.status = "stopped"
                report.resume_after = reset
                report.message = (f"the API quota is used up ({exc}); progress is saved (run {run_id}: "
                                  f"{i - 1} of {total} batches sent). The quota resets at midnight Beijing "
                                  f"time, {reset.isoformat()}; then run `tagdsl sync {COMMANDS[self.platform]}` "
                                  "to resume")
                self.finish(run_id, "stopped", redact(str(exc)), reset)
                return
            except WeChatError as exc:
                report.status = "stopped"
                report.message = (f"stopped on an unexpected WeChat answer: {exc}; progress is saved (run "
                                  f"{run_id}: {i - 1} of {total} batches sent). Run `tagdsl sync "
                                  f"{COMMANDS[self.platform]}` to resume, or add --restart to plan afresh")
                self.finish(run_id, "stopped", redact(str(exc)))
                return
            if i % step == 0 and total >= 20:
                self.out(f"  {i}/{total} batches done")
        if stop_creating is not None:
            report.problems.append(
                f"the platform refused to create more tags ({stop_creating}); not created, and not synced: "
                f"{', '.join(not_created)}. Delete unused tags on the platform, then sync again")
        status = "incomplete" if report.problems else "complete"
        report.status = status
        self.finish(run_id, status, "; ".join(report.problems) or None)

    # platform hooks
    def run_batch(self, run_id: int, b: Batch, report: SyncReport) -> None:  # pragma: no cover
        raise NotImplementedError

    def names_of_create(self, b: Batch) -> list[str]:
        return [b.tag] if b.tag else []

    def plan(self, prune: bool) -> Plan:  # pragma: no cover
        raise NotImplementedError

    def check_names(self) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    # -- the whole run --------------------------------------------------------------------------

    def sync(self, *, dry_run: bool = False, prune: bool = False, restart: bool = False,
             on_plan: Callable[[Plan], None] | None = None) -> SyncReport:
        report = SyncReport(self.platform, self.account)
        report.problems.extend(self.check_names())
        if report.problems:
            report.status = "refused"
            return report
        try:
            self._sync(report, dry_run, prune, restart, on_plan)
        except QuotaExhausted as exc:  # while reading the platform (execution handles its own)
            reset = next_quota_reset()
            report.status = "stopped"
            report.resume_after = reset
            report.message = (f"the API quota is used up ({exc}) while reading the platform; {self._so_far(report)}. "
                              f"The quota resets at midnight Beijing time, {reset.isoformat()}")
        except WeChatError as exc:
            failure = wechat_failure(exc, self.platform)
            if failure is not None:
                raise failure from None
            report.status = "stopped"
            report.message = f"could not read the platform ({exc}); {self._so_far(report)}"
        report.calls = self.s.calls
        return report

    @staticmethod
    def _so_far(report: SyncReport) -> str:
        if report.resumed_run is not None and report.status == "complete":
            return f"the resumed run {report.resumed_run} had completed, nothing else was changed"
        return "nothing was changed"

    def _sync(self, report: SyncReport, dry_run: bool, prune: bool, restart: bool,
              on_plan: Callable[[Plan], None] | None) -> None:
        run = self.unfinished_run()
        if run is not None:
            self.guard(run)
            if restart and not dry_run:
                self.abandon(run.id)
                self.out(f"abandoned the unfinished sync run {run.id}; planning afresh")
                run = None
        if run is not None:
            batches = self.load_batches(run.id)
            pending = [b for b in batches if b.state not in ("acked", "skipped")]
            report.resumed_run, report.resumed_remaining = run.id, len(pending)
            report.minimum_calls += sum(1 for b in pending if b.kind in ("tag", "untag", "mark"))
            if dry_run:
                report.status = "dry-run"
                report.message = (f"sync run {run.id} (started {run.started_at:%Y-%m-%d %H:%M}) is unfinished: "
                                  f"{len(pending)} of {len(batches)} batches left; `tagdsl sync "
                                  f"{COMMANDS[self.platform]}` resumes it (nothing was sent)")
                return
            self.out(f"resuming sync run {run.id} (started {run.started_at:%Y-%m-%d %H:%M}): "
                     f"{len(pending)} of {len(batches)} batches left")
            self.take_over(run.id)
            report.run_id = run.id
            self.execute(run.id, batches, report)
            if report.status != "complete":
                return
            self.out(f"sync run {run.id} complete; checking for changes since it was planned")
        plan = self.plan(prune)
        report.plan = plan
        report.minimum_calls += plan.minimum_calls
        report.skips.extend(plan.skips)
        if on_plan is not None:
            on_plan(plan)
        if plan.refused:
            report.status = "refused"
            report.problems.extend(plan.problems)
            return
        if dry_run:
            report.status = "dry-run"
            return
        if not plan.batches and report.resumed_run is not None:
            return  # the resumed run already did everything; no empty run in the journal
        run_id = self.journal(plan)
        report.run_id = run_id
        self.execute(run_id, plan.batches, report)


# ------------------------------------------------------------------------------------ official account


class MpSyncer(_Syncer):
    platform = MP

    def __init__(self, session: Session, ruleset: I.Ruleset, *, limits: MpLimits | None = None,
                 out: Callable[[str], None] | None = None):
        super().__init__(session, ruleset, out=out)
        self.limits = limits or MpLimits()

    def check_names(self) -> list[str]:
        lim, problems = self.limits, []
        for name in self.rules:
            size = len(name.encode("utf-8"))
            if size > lim.name_max_bytes:
                problems.append(f"tag \"{name}\" is {size} bytes of UTF-8; an official account allows at most "
                                f"{lim.name_max_bytes} (45158)")
            if name in lim.reserved_names:
                problems.append(f"tag \"{name}\" is reserved by the official account (45058)")
        if len(self.rules) > lim.max_tags:
            names = list(self.rules)
            problems.append(f"the ruleset has {len(names)} tags; an official account holds at most {lim.max_tags} "
                            f"(45056); tag number {lim.max_tags + 1} is \"{names[lim.max_tags]}\"")
        return problems

    def page_all(self, fetch: Callable[[Optional[str]], dict], total: int | None = None) -> list[str]:
        return mp_page_all(self.s, fetch, total)

    def plan(self, prune: bool) -> Plan:
        s, lim, client = self.s, self.limits, self.s.client
        plan = Plan(MP, self.account, prune)
        platform_tags = s.call(client.tag.get)
        on = {str(t["id"]): (t["name"], int(t.get("count") or 0)) for t in platform_tags}
        reserved = {str(i) for i in lim.reserved_ids}
        own = [tid for tid in on if tid not in reserved]
        reserved_names = {on[t][0] for t in on if t in reserved} | set(lim.reserved_names)
        old = self.old_map()
        old_by_name = {r.name: r.tag_id for r in old.values() if r.managed and r.kind == "tag"}

        problems = [f"tag \"{n}\" has the name of the official account's reserved tag (45058)"
                    for n in self.rules if n in reserved_names and n not in lim.reserved_names]
        plan.problems.extend(problems)
        candidates = [n for n in self.rules if n not in reserved_names]

        # match the ruleset's tags to the platform's: same name, then the id tagdsl used last time
        # (renamed on the platform since), then the same name after NFKC/trimming (a look-alike)
        matched: dict[str, str] = {}
        by_name = {on[t][0]: t for t in own}
        for name in candidates:
            if name in by_name:
                matched[name] = by_name[name]
        used = set(matched.values())
        for name in candidates:
            tid = old_by_name.get(name)
            if name not in matched and tid in on and tid in own and tid not in used:
                matched[name] = tid
                used.add(tid)
        norm: dict[str, list[str]] = defaultdict(list)
        for tid in own:
            if tid not in used:
                norm[normalize_name(on[tid][0])].append(tid)
        for name in candidates:
            if name not in matched:
                found = [t for t in norm.get(normalize_name(name), ()) if t not in used]
                if len(found) == 1:
                    matched[name] = found[0]
                    used.add(found[0])
        creates = [n for n in candidates if n not in matched]
        unmatched = [t for t in own if t not in used]
        deletes = [t for t in unmatched if (t in old and old[t].created) or prune]
        plan.left_alone = [on[t][0] for t in unmatched if t not in deletes]
        after = len(own) - len(deletes) + len(creates)
        if after > lim.max_tags:
            hint = (f"; --prune would delete the {len(unmatched)} tags not in the ruleset"
                    if not prune and unmatched and len(own) - len(unmatched) + len(creates) <= lim.max_tags else "")
            plan.problems.append(
                f"the account has {len(own)} tags; creating {len(creates)} more ({', '.join(creates[:5])}"
                f"{'…' if len(creates) > 5 else ''}){f' and deleting {len(deletes)}' if deletes else ''} would make "
                f"{after}, above the official account's limit of {lim.max_tags} (45056){hint}")
        if plan.refused:
            return plan

        followers = set(self.page_all(lambda n: client.user.get_followers(n)))
        desired, protected = self.desired()
        ours = self.ours()

        # members of the tags we need: the ruleset's, tags deleted beyond the 100,000-fan rule, and
        # every other tag when a follower could reach the per-follower limit
        counted = [t for t in on if t not in deletes and on[t][1] > 0]
        could_hold = len(set(counted) | used) + len(creates)
        need_all = could_hold > lim.max_tags_per_follower
        members: dict[str, set[str]] = {}
        for tid, (name, count) in on.items():
            if count == 0:
                members[tid] = set()
            elif tid in used or (tid in deletes and count > lim.delete_max_fans) or (need_all and tid not in deletes):
                members[tid] = set(self.page_all(lambda n, tid=tid: client.tag.get_tag_users(int(tid), n), count))

        ours_by_tag: dict[str, set[str]] = defaultdict(set)
        for t, o, _ in ours:
            ours_by_tag[t].add(o)
        adds: dict[str, set[str]] = {}
        removes: dict[str, set[str]] = {}
        for name in candidates:
            tid = matched.get(name)
            current = members.get(tid, set()) if tid else set()
            want = desired[name]
            strangers = want - followers
            for o in _sorted(strangers):
                plan.skips.append(Skip(name, o, "not a follower of this account (unsubscribed, or another "
                                                "account's openid)"))
            want = want - strangers
            adds[name] = want - current
            keep = protected[name] if self.rules[name].manual else set()
            mine = ours_by_tag.get(tid, set()) if tid else set()
            removes[name] = {o for o in current - want if o in mine or (prune and o not in keep)}
            plan.stale_members.extend((tid, o, "") for o in mine - current)  # untagged by someone else

        if need_all:  # refuse, before calling, tags that would take a follower past 20
            held = Counter(o for tid in counted for o in members.get(tid, ()))
            freed = Counter(o for name in removes for o in removes[name])
            per_follower: dict[str, list[str]] = defaultdict(list)
            for name in candidates:
                for o in adds[name]:
                    per_follower[o].append(name)
            for o, names in per_follower.items():
                room = lim.max_tags_per_follower - (held[o] - freed[o])
                if len(names) > room:
                    names.sort(key=lambda n: (-self.rules[n].priority, n))
                    for name in names[max(room, 0):]:
                        adds[name].discard(o)
                        plan.skips.append(Skip(name, o, f"would hold more than {lim.max_tags_per_follower} tags "
                                                        "(lowest priority left out)"))

        # the plan's tag lines and batches, in the order they run: free tag slots and
        # per-follower room first (deletes, untag), then create and tag
        seq = 0

        def batch(kind: str, tag: Optional[str], payload: dict, size: int = 0) -> None:
            nonlocal seq
            seq += 1
            plan.batches.append(Batch(seq, kind, tag, payload, size))

        for tid in deletes:
            name, count = on[tid]
            line = TagLine(name, "delete", tid, name, why="created by tagdsl, not in the ruleset"
                           if tid in old and old[tid].created else "--prune: not in the ruleset")
            if count > lim.delete_max_fans:  # 45057: untag down to the limit first
                victims = _sorted(members[tid])[: len(members[tid]) - lim.delete_max_fans]
                line.remove = len(victims)
                for part in chunks(victims, lim.batch):
                    batch("untag", name, {"tag_id": tid, "ids": part}, len(part))
            plan.deletes.append(line)
            batch("delete", name, {"tag_id": tid})
        for name in candidates:
            tid = matched.get(name)
            if tid and on[tid][0] != name:
                batch("rename", name, {"tag_id": tid, "from": on[tid][0]})
        for name in creates:
            batch("create", name, {})
        for name in candidates:
            for part in chunks(_sorted(removes[name]), lim.batch):
                batch("untag", name, {"ids": part}, len(part))
        for name in candidates:
            for part in chunks(_sorted(adds[name]), lim.batch):
                batch("tag", name, {"ids": part}, len(part))
        for name in candidates:
            tid = matched.get(name)
            action = "create" if tid is None else ("rename" if on[tid][0] != name else "keep")
            plan.tags.append(TagLine(name, action, tid, on[tid][0] if tid else None,
                                     add=len(adds[name]), remove=len(removes[name])))
        plan.minimum_calls = sum(_ceil(t.add, lim.batch) + _ceil(t.remove, lim.batch)
                                 for t in plan.tags + plan.deletes)
        tag_of = {tid: name for name, tid in matched.items()}
        plan.map_rows = [
            {"tag_id": tid, "kind": "tag", "name": tag_of.get(tid, on[tid][0]), "managed": tid in used,
             "created": bool(tid in old and old[tid].created)}
            for tid in own]
        plan.live_tag_ids = set(on)
        return plan

    # -- execution ------------------------------------------------------------------------------

    def find_tag(self, *, name: str | None = None, tag_id: str | None = None) -> Optional[tuple[str, str]]:
        for t in self.s.call(self.s.client.tag.get):
            if (name is not None and t["name"] == name) or (tag_id is not None and str(t["id"]) == tag_id):
                return str(t["id"]), t["name"]
        return None

    def run_batch(self, run_id: int, b: Batch, report: SyncReport) -> None:
        getattr(self, f"_{b.kind}")(run_id, b, report)

    def _create(self, run_id: int, b: Batch, report: SyncReport) -> None:
        name = b.tag
        resumed = b.state == "sent"
        if resumed:  # a run killed during this call: the tag may exist, and is ours
            found = self.find_tag(name=name)
            if found:
                self._adopt(run_id, b, found[0], created=True)
                report.created += 1
                return
        else:
            self.mark_sent(run_id, b)
        attempts = 0

        def create() -> dict:
            nonlocal attempts
            attempts += 1
            return self.s.client.tag.create(name)

        try:
            tag = self.s.call(create, "create")
        except WeChatError as exc:
            if exc.errcode == 45056:
                raise _StopCreating(exc) from None
            if exc.errcode != 45157:
                raise
            # the name exists: created by an attempt of ours whose answer was lost, or by someone
            # else since the plan; either way adopt it rather than fail
            found = self.find_tag(name=name)
            if not found:
                raise
            ours = attempts > 1 or resumed
            self._adopt(run_id, b, found[0], created=ours)
            report.created += ours
            return
        self._adopt(run_id, b, str(tag["id"]), created=True)
        report.created += 1

    def _adopt(self, run_id: int, b: Batch, tag_id: str, *, created: bool) -> None:
        self.ids[b.tag] = tag_id
        self.ack(run_id, b, note=f"tag id {tag_id}" + ("" if created else " (adopted)"),
                 extra=lambda conn: self.upsert_id(conn, tag_id, kind="tag", name=b.tag, managed=True,
                                                   created=created))

    def _rename(self, run_id: int, b: Batch, report: SyncReport) -> None:
        tid = b.payload["tag_id"]
        try:
            self.s.call(lambda: self.s.client.tag.update(int(tid), b.tag), "rename")
        except WeChatError as exc:
            if exc.errcode != 45157 or self.find_tag(tag_id=tid) != (tid, b.tag):
                raise
        report.renamed += 1
        self.ack(run_id, b)

    def _delete(self, run_id: int, b: Batch, report: SyncReport) -> None:
        tid = b.payload["tag_id"]
        try:
            self.s.call(lambda: self.s.client.tag.delete(int(tid)), "delete")
        except WeChatError as exc:
            if exc.errcode != 45159 or self.find_tag(tag_id=tid) is not None:
                raise  # 45159 after a lost answer: already deleted
        report.deleted += 1

        def forget(conn) -> None:
            self.drop_id(conn, tid)
            self.remove_members(conn, tid, None)

        self.ack(run_id, b, extra=forget)

    def _members(self, run_id: int, b: Batch, report: SyncReport, tagging: bool) -> None:
        tid = b.payload.get("tag_id") or self.ids.get(b.tag)
        if tid is None:
            self.ack(run_id, b, state="skipped", note="the tag was not created")
            return
        fn = self.s.client.tag.tag_user if tagging else self.s.client.tag.untag_user
        done, skips = self._send_split(fn, int(tid), list(b.payload["ids"]), b.tag, tagging, report)
        if tagging:
            report.tagged += len(done)
        else:
            report.untagged += len(done)
        report.skips.extend(skips)

        def record(conn) -> None:
            if tagging:
                self.add_members(conn, str(tid), done)
            else:
                self.remove_members(conn, str(tid), done)

        self.ack(run_id, b, skips=skips, extra=record)

    def _send_split(self, fn, tid: int, ids: list[str], tag: str, tagging: bool,
                    report: SyncReport) -> tuple[list[str], list[Skip]]:
        """Send one batch; when WeChat refuses it for some of its followers (45059, 40003,
        49003: nothing is applied), halve it until those followers are found and skipped."""
        try:
            self.s.call(lambda: fn(tid, ids), "membership")
            report.membership_calls += 1
            return ids, []
        except QuotaExhausted:
            raise
        except WeChatError as exc:
            report.membership_calls += 1
            if exc.errcode not in MP_FOLLOWER_CODES or (exc.errcode == 45059 and not tagging):
                raise
            if len(ids) == 1:
                return [], [Skip(tag, ids[0], MP_FOLLOWER_CODES[exc.errcode], exc.errcode)]
        half = len(ids) // 2
        d1, s1 = self._send_split(fn, tid, ids[:half], tag, tagging, report)
        d2, s2 = self._send_split(fn, tid, ids[half:], tag, tagging, report)
        return d1 + d2, s1 + s2

    def _tag(self, run_id: int, b: Batch, report: SyncReport) -> None:
        self._members(run_id, b, report, True)

    def _untag(self, run_id: int, b: Batch, report: SyncReport) -> None:
        self._members(run_id, b, report, False)


# ------------------------------------------------------------------------------------ WeCom


class WecomSyncer(_Syncer):
    platform = WECOM

    def __init__(self, session: Session, ruleset: I.Ruleset, *, limits: WecomLimits | None = None,
                 out: Callable[[str], None] | None = None):
        super().__init__(session, ruleset, out=out)
        self.limits = limits or WecomLimits()
        self.default_group = default_wecom_group(session.config)

    def group_of(self, name: str) -> str:
        return self.rules[name].group or self.default_group

    def check_names(self) -> list[str]:
        lim, problems = self.limits, []
        for name in self.rules:
            if len(name) > lim.name_max_chars:
                problems.append(f"tag \"{name}\" has {len(name)} characters; WeCom allows at most "
                                f"{lim.name_max_chars} (40072)")
        for group in dict.fromkeys(self.group_of(n) for n in self.rules):
            if len(group) > lim.name_max_chars:
                problems.append(f"group \"{group}\" has {len(group)} characters; WeCom allows at most "
                                f"{lim.name_max_chars} (40072)")
        if len(self.rules) > lim.max_tags:
            problems.append(f"the ruleset has {len(self.rules)} tags; WeCom holds at most {lim.max_tags} corp tags "
                            "(40126)")
        return problems

    def corp_tags(self) -> dict[str, dict]:
        return wecom_corp_tags(self.s)

    def follow_userids(self) -> list[str]:
        return wecom_follow_userids(self.s)

    def read_pairs(self, userids: list[str]) -> list[dict]:
        return wecom_pairs(self.s, userids)

    def plan(self, prune: bool) -> Plan:
        lim = self.limits
        plan = Plan(WECOM, self.account, prune)
        groups = self.corp_tags()
        tag_group = {tid: gid for gid, g in groups.items() for tid in g["tags"]}
        all_tags = {tid: groups[gid]["tags"][tid] for tid, gid in tag_group.items()}
        old = self.old_map()
        old_group = {r.name: r.tag_id for r in old.values() if r.managed and r.kind == "group"}
        old_tag = {r.name: r.tag_id for r in old.values() if r.managed and r.kind == "tag"}

        # groups: same name, the id used last time, or a look-alike name
        wanted_groups = list(dict.fromkeys(self.group_of(n) for n in self.rules))
        gmatch: dict[str, str] = {}
        by_gname = {g["name"]: gid for gid, g in groups.items()}
        for gname in wanted_groups:
            if gname in by_gname:
                gmatch[gname] = by_gname[gname]
        gused = set(gmatch.values())
        for gname in wanted_groups:
            gid = old_group.get(gname)
            if gname not in gmatch and gid in groups and gid not in gused:
                gmatch[gname] = gid
                gused.add(gid)
        for gname in wanted_groups:
            if gname not in gmatch:
                found = [gid for gid, g in groups.items()
                         if gid not in gused and normalize_name(g["name"]) == normalize_name(gname)]
                if len(found) == 1:
                    gmatch[gname] = found[0]
                    gused.add(found[0])

        # tags within their group
        matched: dict[str, str] = {}
        used: set[str] = set()
        for name in self.rules:
            gid = gmatch.get(self.group_of(name))
            if gid is None:
                continue
            in_group = groups[gid]["tags"]
            hit = next((tid for tid, n in in_group.items() if n == name and tid not in used), None)
            if hit is None and old_tag.get(name) in in_group and old_tag[name] not in used:
                hit = old_tag[name]
            if hit is None:
                found = [tid for tid, n in in_group.items()
                         if tid not in used and normalize_name(n) == normalize_name(name)]
                hit = found[0] if len(found) == 1 else None
            if hit is not None:
                matched[name] = hit
                used.add(hit)
        creates = [n for n in self.rules if n not in matched]
        unmatched = [tid for tid in all_tags if tid not in used]
        # --prune deletes only within the ruleset's groups: other groups belong to other uses of
        # the enterprise's tag library
        deletes = [tid for tid in unmatched
                   if (tid in old and old[tid].created) or (prune and tag_group[tid] in gused)]
        plan.left_alone = [all_tags[t] for t in unmatched if t not in deletes and tag_group[t] in gused]
        after = len(all_tags) - len(deletes) + len(creates)
        if after > lim.max_tags:
            plan.problems.append(f"the enterprise has {len(all_tags)} corp tags; creating {len(creates)} more would "
                                 f"make {after}, above WeCom's limit of {lim.max_tags} (40126)")
            return plan

        pairs = self.read_pairs(self.follow_userids())
        desired, protected = self.desired()
        ours = self.ours()
        id_to_name = {tid: name for name, tid in matched.items()}
        wants: dict[str, set[str]] = defaultdict(set)
        for name, followers in desired.items():
            for e in followers:
                wants[e].add(name)
        ours_by_pair: dict[tuple[str, str], set[str]] = defaultdict(set)
        for t, e, u in ours:
            ours_by_pair[(e, u)].add(t)
        adds: Counter[str] = Counter()
        removes: Counter[str] = Counter()
        seen: set[str] = set()
        marks: list[tuple[str, str, list[str], list[str]]] = []
        for item in pairs:
            e = item["external_contact"]["external_userid"]
            info = item["follow_info"]
            u = info["userid"]
            seen.add(e)
            current = set(info.get("tag_id") or ())
            have = {id_to_name[t] for t in current if t in id_to_name}
            want = wants.get(e, set())
            add = want - have
            mine = ours_by_pair.get((e, u), set())
            remove = {n for n in have - want
                      if matched[n] in mine or (prune and not (self.rules[n].manual and e in protected[n]))}
            plan.stale_members.extend((t, e, u) for t in mine if t in id_to_name and t not in current)
            if add or remove:
                marks.append((u, e, sorted(add), sorted(remove)))
                adds.update(add)
                removes.update(remove)
        for e in sorted(set(wants) - seen):
            for name in sorted(wants[e]):
                plan.skips.append(Skip(name, e, "no follow user has this external contact"
                                       + (f" (userid {self.s.account.userid})" if self.s.account.userid else "")))

        seq = 0

        def batch(kind: str, tag: Optional[str], payload: dict, size: int = 0) -> None:
            nonlocal seq
            seq += 1
            plan.batches.append(Batch(seq, kind, tag, payload, size))

        if deletes:
            for tid in deletes:
                plan.deletes.append(TagLine(all_tags[tid], "delete", tid, all_tags[tid], groups[tag_group[tid]]["name"],
                                            why="created by tagdsl, not in the ruleset"
                                            if tid in old and old[tid].created else "--prune: not in the ruleset"))
            batch("delete", None, {"tag_ids": deletes})
        for gname, gid in gmatch.items():
            if groups[gid]["name"] != gname:
                plan.group_renames.append((groups[gid]["name"], gname))
                batch("rename", gname, {"id": gid, "what": "group", "from": groups[gid]["name"]})
        for name, tid in matched.items():
            if all_tags[tid] != name:
                batch("rename", name, {"id": tid, "what": "tag", "from": all_tags[tid]})
        by_group: dict[str, list[str]] = defaultdict(list)
        for name in creates:
            by_group[self.group_of(name)].append(name)
        for gname, names in by_group.items():
            batch("create", gname, {"group_id": gmatch.get(gname), "group_name": gname, "names": names})
        for u, e, add, remove in marks:
            batch("mark", None, {"userid": u, "external_userid": e, "add": add, "remove": remove}, 1)
        for name in self.rules:
            tid = matched.get(name)
            action = "create" if tid is None else ("rename" if all_tags[tid] != name else "keep")
            plan.tags.append(TagLine(name, action, tid, all_tags[tid] if tid else None, self.group_of(name),
                                     add=adds[name], remove=removes[name]))
        plan.minimum_calls = len(marks)
        rows = []
        for gid, g in groups.items():
            gname = next((n for n, x in gmatch.items() if x == gid), g["name"])
            rows.append({"tag_id": gid, "kind": "group", "name": gname, "managed": gid in gused,
                         "created": bool(gid in old and old[gid].created)})
        for tid, tname in all_tags.items():
            gid = tag_group[tid]
            rows.append({"tag_id": tid, "kind": "tag", "name": id_to_name.get(tid, tname), "group_id": gid,
                         "group_name": groups[gid]["name"], "managed": tid in used,
                         "created": bool(tid in old and old[tid].created)})
        plan.map_rows = rows
        plan.live_tag_ids = set(all_tags)
        return plan

    # -- execution ------------------------------------------------------------------------------

    def names_of_create(self, b: Batch) -> list[str]:
        return [n for n in b.payload.get("names", ()) if n not in self.ids]

    def run_batch(self, run_id: int, b: Batch, report: SyncReport) -> None:
        getattr(self, f"_{b.kind}")(run_id, b, report)

    def _create(self, run_id: int, b: Batch, report: SyncReport) -> None:
        p = b.payload
        gname, names = p["group_name"], list(p["names"])
        group_id = self.group_ids.get(gname) or p.get("group_id")
        got: dict[str, tuple[str, bool]] = {}  # name -> (tag id, created by tagdsl)
        resumed = b.state == "sent"
        look, ours = resumed, True  # resumed: an earlier call may have created some
        if not resumed:
            self.mark_sent(run_id, b)
        for _ in range(4):
            if look:
                found_gid, found = self._find_in_group(gname, group_id)
                group_id = found_gid or group_id
                for n in names:
                    if n in found and n not in got:
                        got[n] = (found[n], ours)
            missing = [n for n in names if n not in got]
            if not missing:
                break
            attempts = 0

            def add() -> dict:
                nonlocal attempts
                attempts += 1
                return self.s.client.external_contact.add_corp_tag(
                    group_id, None if group_id else gname, None, [{"name": n} for n in missing])

            try:
                res = self.s.call(add, "create")
            except WeChatError as exc:
                if exc.errcode == 40126:
                    raise _StopCreating(exc) from None
                if exc.errcode == 40068 and group_id:  # the group vanished with its last tag
                    group_id, look = None, False
                    continue
                if exc.errcode != 40071:
                    raise
                # a name exists now: created by a retried attempt of ours, or by someone else
                look, ours = True, attempts > 1 or resumed
                continue
            g = res.get("tag_group") or {}
            group_id = g.get("group_id") or group_id
            for t in g.get("tag") or ():
                if t["name"] in missing:
                    got[t["name"]] = (t["id"], True)
            look, ours = True, True  # anything still missing is looked up on the next round
        missing = [n for n in names if n not in got]
        if missing or group_id is None:
            raise WeChatError(f"WeCom did not create the corp tags {', '.join(missing)} in group {gname}")
        report.created += sum(1 for _, created in got.values() if created)
        for n, (tid, _) in got.items():
            self.ids[n] = tid
        self.group_ids[gname] = group_id
        new_group = p.get("group_id") is None

        def record(conn) -> None:
            self.upsert_id(conn, group_id, kind="group", name=gname, managed=True, created=new_group)
            for n, (tid, created) in got.items():
                self.upsert_id(conn, tid, kind="tag", name=n, group_id=group_id, group_name=gname, managed=True,
                               created=created)

        self.ack(run_id, b, note=f"group {group_id}", extra=record)

    def _find_in_group(self, gname: str, group_id: Optional[str]) -> tuple[Optional[str], dict[str, str]]:
        groups = self.corp_tags()
        gid = group_id if group_id in groups else next((k for k, g in groups.items() if g["name"] == gname), None)
        if gid is None:
            return None, {}
        return gid, {name: tid for tid, name in groups[gid]["tags"].items()}

    def _rename(self, run_id: int, b: Batch, report: SyncReport) -> None:
        target = b.payload["id"]
        try:
            self.s.call(lambda: self.s.client.external_contact.edit_corp_tag(target, b.tag, None), "rename")
        except WeChatError as exc:
            if exc.errcode != 40071:
                raise
            groups = self.corp_tags()
            names = {gid: g["name"] for gid, g in groups.items()}
            names.update({tid: n for g in groups.values() for tid, n in g["tags"].items()})
            if names.get(target) != b.tag:
                raise
        report.renamed += 1
        self.ack(run_id, b)

    def _delete(self, run_id: int, b: Batch, report: SyncReport) -> None:
        ids = list(b.payload["tag_ids"])
        try:
            self.s.call(lambda: self.s.client.external_contact.del_corp_tag(tag_id=ids), "delete")
        except WeChatError as exc:
            if exc.errcode != 40068:
                raise
            live = {tid for g in self.corp_tags().values() for tid in g["tags"]}
            remaining = [t for t in ids if t in live]
            if remaining:  # some were deleted by the lost attempt, the others not yet
                self.s.call(lambda: self.s.client.external_contact.del_corp_tag(tag_id=remaining), "delete")
        report.deleted += len(ids)

        def forget(conn) -> None:
            for tid in ids:
                self.drop_id(conn, tid)
                self.remove_members(conn, tid, None, None)

        self.ack(run_id, b, extra=forget)

    def _mark(self, run_id: int, b: Batch, report: SyncReport) -> None:
        p = b.payload
        u, e = p["userid"], p["external_userid"]
        add = [(n, self.ids[n]) for n in p["add"] if n in self.ids]
        remove = [(n, self.ids[n]) for n in p["remove"] if n in self.ids]
        if not add and not remove:
            self.ack(run_id, b, state="skipped", note="its tags were not created")
            return
        skips: list[Skip] = []
        try:
            self.s.call(lambda: self.s.client.external_contact.mark_tag(
                u, e, [t for _, t in add], [t for _, t in remove]), "membership")
            report.membership_calls += 1
        except QuotaExhausted:
            raise
        except WeChatError as exc:
            report.membership_calls += 1
            if exc.errcode not in WECOM_PAIR_CODES:
                raise
            skips = [Skip(n, e, WECOM_PAIR_CODES[exc.errcode], exc.errcode, u) for n, _ in add + remove]
            report.skips.extend(skips)
            self.ack(run_id, b, skips=skips)
            return
        report.pairs_marked += 1
        report.tagged += len(add)
        report.untagged += len(remove)

        def record(conn) -> None:
            for _, tid in add:
                self.add_members(conn, tid, [e], u)
            for _, tid in remove:
                self.remove_members(conn, tid, [e], u)

        self.ack(run_id, b, extra=record)


# ------------------------------------------------------------------------------------ entry points


def sync(platform: str, config: Config, *, ruleset: I.Ruleset | None = None, dry_run: bool = False,
         prune: bool = False, restart: bool = False, environ: Mapping[str, str] | None = None,
         retry: RetryPolicy | None = None, engine: sa.Engine | None = None,
         limits: MpLimits | WecomLimits | None = None, out: Callable[[str], None] | None = None,
         on_plan: Callable[[Plan], None] | None = None) -> SyncReport:
    """Sync the store's tags of ``ruleset`` (default: the configured rulesets) to ``platform``.

    Raises :class:`SyncError` (exit 2) for missing credentials, wrong credentials or an unusable
    store, ``RulesetError`` for a ruleset with errors; everything else is in the report (its
    ``exit_code``: 0 complete or dry run, 1 stopped, refused or incomplete).  ``on_plan`` is called
    with the plan before anything is sent; ``out`` receives progress lines.
    """
    if platform not in PLATFORMS:
        raise SyncError(f"unknown platform {platform!r} (use {' or '.join(PLATFORMS)})")
    if ruleset is None:
        ruleset = load_ruleset(config=config)
    session = open_session(platform, config, environ=environ, retry=retry, engine=engine)
    try:
        if platform == MP:
            syncer: _Syncer = MpSyncer(session, ruleset, limits=limits, out=out)  # type: ignore[arg-type]
        else:
            syncer = WecomSyncer(session, ruleset, limits=limits, out=out)  # type: ignore[arg-type]
        return syncer.sync(dry_run=dry_run, prune=prune, restart=restart, on_plan=on_plan)
    finally:
        if engine is None:
            session.engine.dispose()


# ------------------------------------------------------------------------------------ text


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _names(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … (+{len(items) - limit})" if len(items) > limit else "")


def format_plan(plan: Plan) -> str:
    """The plan as printed before anything is sent."""
    who = "openids" if plan.platform == MP else "contact pairs"
    lines = [f"Plan for the {LABELS[plan.platform]} {plan.account}"
             f"{' (--prune)' if plan.prune else ''}:"]
    if plan.problems:
        lines.append("  refused before any change:")
        lines.extend(f"    {p}" for p in plan.problems)
        return "\n".join(lines) + "\n"
    creates = [t for t in plan.tags if t.action == "create"]
    renames = [t for t in plan.tags if t.action == "rename"]
    label = (lambda t: f"{t.group}/{t.name}") if plan.platform == WECOM else (lambda t: t.name)
    lines.append(f"  tags to create: {len(creates)}" + (f" ({_names([label(t) for t in creates])})" if creates else ""))
    lines.append(f"  tags to rename: {len(renames)}"
                 + (f" ({_names([f'{t.platform_name} -> {t.name}' for t in renames])})" if renames else ""))
    if plan.group_renames:
        lines.append(f"  groups to rename: {_names([f'{a} -> {b}' for a, b in plan.group_renames])}")
    if plan.deletes:
        lines.append(f"  tags to delete: {len(plan.deletes)} "
                     f"({_names([f'{t.name} [{t.why}]' for t in plan.deletes], 6)})")
    if plan.left_alone:
        lines.append(f"  left alone (not in the ruleset; --prune deletes): {_names(plan.left_alone)}")
    lines.append(f"  memberships ({who} to tag / untag):")
    width = max([_width(label(t)) for t in plan.tags] + [4])
    for t in plan.tags + [d for d in plan.deletes if d.remove]:
        lines.append(f"    {_pad(label(t), width)}  +{t.add:<7} -{t.remove}")
    if plan.skips:
        reasons = Counter(k.reason for k in plan.skips)
        lines.append(f"  left out before calling: {len(plan.skips)} "
                     f"({'; '.join(f'{n} {r}' for r, n in reasons.most_common())})")
    calls = plan.membership_calls
    unit = "batchtagging/batchuntagging" if plan.platform == MP else "mark_tag"
    lines.append(f"  {unit} calls: {calls} (minimum {plan.minimum_calls}); other write calls: "
                 f"{plan.write_calls - calls}")
    return "\n".join(lines) + "\n"


def format_report(report: SyncReport, *, max_skips: int = 10) -> tuple[str, str]:
    """(stdout text, stderr text) for the end of a sync."""
    out, err = [], []
    if report.status == "refused":
        err.append(f"error: sync refused, nothing was changed on the {LABELS[report.platform]}:")
        err.extend(f"  {p}" for p in report.problems)
        return "", "\n".join(err) + "\n"
    if report.status == "dry-run":
        if report.message:
            out.append(report.message)
        out.append("dry run: nothing was sent")
        return "\n".join(out) + "\n", ""
    done = (f"{report.created} tags created, {report.renamed} renamed, {report.deleted} deleted; "
            f"{report.tagged} tagged, {report.untagged} untagged in {report.membership_calls} membership calls"
            f" (minimum {report.minimum_calls})")
    if report.status == "complete":
        out.append(f"sync complete: {done}")
    elif report.status == "incomplete":
        out.append(f"sync finished with problems: {done}")
        err.extend(f"error: {p}" for p in report.problems)
    else:
        out.append(f"sync stopped: {done}")
        err.append(f"error: {report.message}")
    if report.skips:
        err.append(f"warning: {len(report.skips)} membership(s) left out:")
        err.extend(f"  {k.line()}" for k in report.skips[:max_skips])
        if len(report.skips) > max_skips:
            err.append(f"  … and {len(report.skips) - max_skips} more (all in the sync_skips table, run "
                       f"{report.run_id})")
    return "\n".join(out) + "\n", ("\n".join(err) + "\n") if err else ""
