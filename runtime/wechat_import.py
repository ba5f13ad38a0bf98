"""Import followers, tags and memberships from an official account or from WeCom into the store.

``tagdsl import wechat-mp``
    ``user/get`` (10,000 openids a page) and ``user/info/batchget`` (100 a call) fill the followers
    table: openid, and those of unionid, subscribe_time, subscribe_scene, qr_scene, qr_scene_str,
    language, remark, city, province, country, gender (WeChat's ``sex``) and subscribed that the
    configuration declares.  ``tags/get`` and ``user/tag/get`` (every tag, paged) become
    ``import``-sourced memberships.
``tagdsl import wecom``
    ``batch/get_by_user`` (100 follow users and 100 pairs a call) fills the followers table with
    the external contacts (follower id = external_userid; unionid, gender, name, remark and
    subscribe_time = when the first follow user added them), keeps the (follow userid,
    external_userid) pairs in ``{p}wecom_contacts``, and the corp tags on the pairs become
    ``import`` memberships (tag = corp tag name).

Re-running updates in place.  Followers no longer on the platform are marked ``subscribed =
false`` (when that field is declared), never deleted; imported memberships that disappeared from the
platform are removed.  ``manual`` and ``rule`` memberships are never touched.  WeChat's empty
strings and ``sex``/``gender`` 0 mean "unknown" and are stored as NULL (missing).  Unix times become
naive datetimes in the project time zone.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Mapping, Optional

import sqlalchemy as sa

from tagdsl.config import Config, FieldSpec, FieldType

from .sync import (
    COMMANDS, LABELS, MP, WECOM, RetryPolicy, Session, SyncError, mp_page_all, next_quota_reset, open_session,
    wechat_failure, wecom_corp_tags, wecom_follow_userids, wecom_pairs,
)
from .wechat import QuotaExhausted, WeChatError, chunks

WRITE_EVERY = 1000  # followers per transaction while importing

@dataclass(frozen=True)
class Source:
    """How a follower field is read from the platform's record."""

    read: Callable[[dict], Any]
    unix: bool = False  # unix seconds
    # WeChat stopped reporting it (since 2021 city, province, country and sex are always empty):
    # an unknown value never overwrites one the store already has (e.g. from a lead form)
    keep_known: bool = False


MP_FIELDS: dict[str, Source] = {  # DSL field name -> its source in user/info/batchget
    "unionid": Source(lambda u: u.get("unionid")),
    "subscribe_time": Source(lambda u: u.get("subscribe_time"), unix=True),
    "subscribe_scene": Source(lambda u: u.get("subscribe_scene")),
    "qr_scene": Source(lambda u: u.get("qr_scene")),
    "qr_scene_str": Source(lambda u: u.get("qr_scene_str")),
    "language": Source(lambda u: u.get("language")),
    "remark": Source(lambda u: u.get("remark")),
    "city": Source(lambda u: u.get("city"), keep_known=True),
    "province": Source(lambda u: u.get("province"), keep_known=True),
    "country": Source(lambda u: u.get("country"), keep_known=True),
    "gender": Source(lambda u: u.get("sex") or None, keep_known=True),
    "subscribed": Source(lambda u: u.get("subscribe") == 1),
}
# for WeCom the record is {"contact": external_contact, "follow": [follow_info, ...]}
WECOM_FIELDS: dict[str, Source] = {
    "unionid": Source(lambda r: r["contact"].get("unionid")),
    "gender": Source(lambda r: r["contact"].get("gender") or None, keep_known=True),
    "name": Source(lambda r: r["contact"].get("name")),
    "remark": Source(lambda r: next((f.get("remark") for f in r["follow"] if f.get("remark")), None)),
    "subscribe_time": Source(lambda r: min((f.get("createtime") or 0 for f in r["follow"]), default=None) or None,
                             unix=True),
    "subscribed": Source(lambda r: True),
}


@dataclass
class ImportReport:
    platform: str
    account: str = ""
    status: str = "complete"  # complete | stopped
    followers: int = 0  # on the platform now
    inserted: int = 0
    updated: int = 0
    unsubscribed: int = 0  # marked subscribed = false by this import
    tags: int = 0
    memberships: int = 0  # import memberships now in the store
    added: int = 0
    removed: int = 0
    pairs: int = 0  # WeCom
    fields: list[str] = field(default_factory=list)  # follower fields filled
    message: Optional[str] = None
    resume_after: Optional[dt.datetime] = None
    calls: Counter = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "complete" else 1


# ------------------------------------------------------------------------------------ values


def convert(value: Any, spec: FieldSpec, name: str, *, unix: bool, tz) -> Any:
    """A platform value as the declared field type (``None`` for unknown/empty)."""
    if value is None or value == "":
        return None
    t = spec.type
    try:
        if unix:
            seconds = int(value)
            if seconds <= 0:
                return None
            moment = dt.datetime.fromtimestamp(seconds, tz).replace(tzinfo=None)
            if t is FieldType.DATETIME:
                return moment
            if t is FieldType.DATE:
                return moment.date()
            if t is FieldType.INTEGER:
                return seconds
        elif t is FieldType.STRING:
            return str(value)
        elif t is FieldType.INTEGER and not isinstance(value, str):
            return int(value)
        elif t is FieldType.BOOLEAN and isinstance(value, bool):
            return value
        elif t is FieldType.FLOAT and isinstance(value, (int, float)):
            return float(value)
        elif t is FieldType.DECIMAL and isinstance(value, (int, float)):
            return Decimal(str(value))
    except (TypeError, ValueError, OverflowError):
        pass
    raise SyncError(f"followers.fields.{name} is declared `{t.value}` in tagdsl.toml, but WeChat's {name} is "
                    f"{type(value).__name__} ({value!r}); declare it as "
                    f"{'datetime' if unix else 'string' if isinstance(value, str) else 'integer'}")


class _FollowerWriter:
    """Upserts follower rows (declared fields only) and marks the missing ones unsubscribed."""

    def __init__(self, session: Session, sources: Mapping[str, Source]):
        self.s = session
        cfg = session.config.followers
        self.table = session.tables.followers
        self.id_col = cfg.id
        self.fields = {name: (spec, spec.column or name, sources[name])
                       for name, spec in cfg.fields.items() if name in sources and (spec.column or name) != cfg.id}
        self.keep_known = {column for spec, column, src in self.fields.values() if src.keep_known}
        self.inserted = self.updated = 0

    def row(self, follower_id: str, record: dict) -> dict:
        out = {self.id_col: follower_id}
        for name, (spec, column, src) in self.fields.items():
            out[column] = convert(src.read(record), spec, name, unix=src.unix, tz=self.s.tz)
        return out

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        t, idc = self.table, self.table.c[self.id_col]
        with self.s.db("writing followers"), self.s.engine.begin() as conn:
            ids = [r[self.id_col] for r in rows]
            existing = set()
            for part in chunks(ids, 500):
                existing.update(conn.execute(sa.select(idc).where(idc.in_(part))).scalars())
            new = [r for r in rows if r[self.id_col] not in existing]
            old = [r for r in rows if r[self.id_col] in existing]
            if new:
                conn.execute(sa.insert(t), new)
            columns = [c for c in rows[0] if c != self.id_col]
            if old and columns:
                stmt = sa.update(t).where(idc == sa.bindparam("b__id")).values({
                    c: sa.func.coalesce(sa.bindparam(f"b_{c}", type_=t.c[c].type), t.c[c])
                    if c in self.keep_known else sa.bindparam(f"b_{c}") for c in columns})
                conn.execute(stmt, [{"b__id": r[self.id_col], **{f"b_{c}": r[c] for c in columns}} for r in old])
        self.inserted += len(new)
        self.updated += len(old)

    def mark_unsubscribed(self, present: set[str]) -> int:
        """Followers in the table but not on the platform: subscribed = false (if declared)."""
        spec = self.s.config.followers.fields.get("subscribed")
        if spec is None or spec.type is not FieldType.BOOLEAN:
            return 0
        t, idc = self.table, self.table.c[self.id_col]
        col = t.c[spec.column or "subscribed"]
        with self.s.db("marking unsubscribed followers"), self.s.engine.begin() as conn:
            gone = [fid for fid, sub in conn.execute(sa.select(idc, col))
                    if fid not in present and sub is not False and sub != 0]
            if gone:
                conn.execute(sa.update(t).where(idc == sa.bindparam("b__id")).values({col.name: False}),
                             [{"b__id": fid} for fid in gone])
        return len(gone)


def _replace_imported(session: Session, current: set[tuple[str, str]]) -> tuple[int, int]:
    """Make the store's import memberships equal to ``current`` ((follower, tag) pairs); other
    sources are never touched."""
    m = session.tables.memberships
    now = session.now()
    with session.db("writing imported memberships"), session.engine.begin() as conn:
        existing = {(o, t) for o, t in conn.execute(sa.select(m.c.openid, m.c.tag).where(m.c.source == "import"))}
        gone = existing - current
        new = current - existing
        if gone:
            conn.execute(sa.delete(m).where(m.c.openid == sa.bindparam("b_o"), m.c.tag == sa.bindparam("b_t"),
                                            m.c.source == "import"),
                         [{"b_o": o, "b_t": t} for o, t in gone])
        if new:
            for part in chunks(sorted(new), 5000):
                conn.execute(sa.insert(m), [{"openid": o, "tag": t, "source": "import", "assigned_at": now,
                                             "run_id": None} for o, t in part])
    return len(new), len(gone)


def _record_tag_ids(session: Session, rows: list[dict]) -> None:
    """Note the platform's tag ids (not created by tagdsl unless already known to be)."""
    st = session.st.tag_ids
    where = sa.and_(st.c.platform == session.platform, st.c.account == session.account.account_id)
    live = {r["tag_id"] for r in rows}
    with session.db("writing the tag ids"), session.engine.begin() as conn:
        known = set(conn.execute(sa.select(st.c.tag_id).where(where)).scalars())
        gone = [t for t in known if t not in live]
        for part in chunks(gone, 500):
            conn.execute(sa.delete(st).where(where, st.c.tag_id.in_(part)))
        new = [r for r in rows if r["tag_id"] not in known]
        if new:
            conn.execute(sa.insert(st), [{"platform": session.platform, "account": session.account.account_id,
                                          "managed": False, "created": False, "updated_at": session.now(), **r}
                                         for r in new])


def _prepare_store(session: Session) -> None:
    t = session.tables
    with session.db("creating the follower and membership tables"):
        t.metadata.create_all(session.engine, tables=[t.followers, t.memberships], checkfirst=True)


def _run(platform: str, config: Config, body: Callable[[Session, ImportReport], None], *,
         environ: Mapping[str, str] | None, retry: RetryPolicy | None, engine: sa.Engine | None) -> ImportReport:
    session = open_session(platform, config, environ=environ, retry=retry, engine=engine, create=True)
    report = ImportReport(platform, session.account.account_id)
    try:
        _prepare_store(session)
        body(session, report)
    except QuotaExhausted as exc:
        reset = next_quota_reset()
        report.status, report.resume_after = "stopped", reset
        report.message = (f"the API quota is used up ({exc}); the followers read so far are saved, tags and "
                          f"memberships were not changed. The quota resets at midnight Beijing time, "
                          f"{reset.isoformat()}; then run `tagdsl import {COMMANDS[platform]}` again")
    except WeChatError as exc:
        failure = wechat_failure(exc, platform)
        if failure is not None:
            raise failure from None
        report.status = "stopped"
        report.message = (f"stopped: {exc}; the followers read so far are saved; run `tagdsl import "
                          f"{COMMANDS[platform]}` again")
    finally:
        report.calls = session.calls
        if engine is None:
            session.engine.dispose()
    return report


# ------------------------------------------------------------------------------------ official account


def import_wechat_mp(config: Config, *, environ: Mapping[str, str] | None = None, retry: RetryPolicy | None = None,
                     engine: sa.Engine | None = None, out: Callable[[str], None] | None = None) -> ImportReport:
    """Import the official account's followers, tags and memberships (see the module doc)."""
    say = out or (lambda line: None)

    def body(s: Session, report: ImportReport) -> None:
        client = s.client
        openids = mp_page_all(s, lambda n: client.user.get_followers(n))
        report.followers = len(openids)
        say(f"{len(openids)} followers on the official account {s.account.account_id}")
        writer = _FollowerWriter(s, MP_FIELDS)
        report.fields = list(writer.fields)
        pending: list[dict] = []
        for part in chunks(openids, 100):  # user/info/batchget: at most 100 a call
            users = s.call(lambda: client.user.get_batch(part))
            pending.extend(writer.row(u["openid"], u) for u in users if u.get("openid"))
            if len(pending) >= WRITE_EVERY:
                writer.write(pending)
                pending = []
        writer.write(pending)
        report.inserted, report.updated = writer.inserted, writer.updated
        report.unsubscribed = writer.mark_unsubscribed(set(openids))

        tags = s.call(client.tag.get)
        report.tags = len(tags)
        current: set[tuple[str, str]] = set()
        for tag in tags:
            if not int(tag.get("count") or 0):
                continue
            tid = int(tag["id"])
            for o in mp_page_all(s, lambda n, tid=tid: client.tag.get_tag_users(tid, n), int(tag["count"])):
                current.add((o, tag["name"]))
        report.added, report.removed = _replace_imported(s, current)
        report.memberships = len(current)
        _record_tag_ids(s, [{"tag_id": str(t["id"]), "kind": "tag", "name": t["name"]} for t in tags
                            if int(t["id"]) not in (0, 1, 2)])

    return _run(MP, config, body, environ=environ, retry=retry, engine=engine)


# ------------------------------------------------------------------------------------ WeCom


def import_wecom(config: Config, *, environ: Mapping[str, str] | None = None, retry: RetryPolicy | None = None,
                 engine: sa.Engine | None = None, out: Callable[[str], None] | None = None) -> ImportReport:
    """Import WeCom's external contacts, their (follow user, contact) pairs and corp tags."""
    say = out or (lambda line: None)

    def body(s: Session, report: ImportReport) -> None:
        groups = wecom_corp_tags(s)
        tag_names = {tid: name for g in groups.values() for tid, name in g["tags"].items()}
        items = wecom_pairs(s, wecom_follow_userids(s))
        records: dict[str, dict] = {}
        pairs: dict[tuple[str, str], dict] = {}
        current: set[tuple[str, str]] = set()
        for item in items:
            contact, info = item["external_contact"], item["follow_info"]
            e = contact["external_userid"]
            rec = records.setdefault(e, {"contact": contact, "follow": []})
            rec["follow"].append(info)
            pairs[(info["userid"], e)] = info
            for tid in info.get("tag_id") or ():
                if tid in tag_names:
                    current.add((e, tag_names[tid]))
        report.followers, report.pairs = len(records), len(pairs)
        say(f"{len(records)} external contacts in {len(pairs)} (follow user, contact) pairs of corp "
            f"{s.account.account_id}")
        writer = _FollowerWriter(s, WECOM_FIELDS)
        report.fields = list(writer.fields)
        rows = [writer.row(e, rec) for e, rec in records.items()]
        for part in chunks(rows, WRITE_EVERY):
            writer.write(part)
        report.inserted, report.updated = writer.inserted, writer.updated
        report.unsubscribed = writer.mark_unsubscribed(set(records))
        _replace_pairs(s, pairs)
        report.added, report.removed = _replace_imported(s, current)
        report.memberships = len(current)
        report.tags = len(tag_names)
        rows_ids = [{"tag_id": gid, "kind": "group", "name": g["name"]} for gid, g in groups.items()]
        rows_ids += [{"tag_id": tid, "kind": "tag", "name": name, "group_id": gid, "group_name": g["name"]}
                     for gid, g in groups.items() for tid, name in g["tags"].items()]
        _record_tag_ids(s, rows_ids)

    return _run(WECOM, config, body, environ=environ, retry=retry, engine=engine)


def _replace_pairs(s: Session, pairs: dict[tuple[str, str], dict]) -> None:
    t = s.st.wecom_contacts
    corpid, now = s.account.account_id, s.now()
    with s.db("writing the WeCom contact pairs"), s.engine.begin() as conn:
        existing = {(u, e) for e, u in conn.execute(sa.select(t.c.external_userid, t.c.userid)
                                                    .where(t.c.corpid == corpid))}
        gone = existing - set(pairs)
        if gone:
            conn.execute(sa.delete(t).where(t.c.corpid == corpid, t.c.userid == sa.bindparam("b_u"),
                                            t.c.external_userid == sa.bindparam("b_e")),
                         [{"b_u": u, "b_e": e} for u, e in gone])
        rows = []
        for (u, e), info in pairs.items():
            created = info.get("createtime")
            rows.append({"corpid": corpid, "external_userid": e, "userid": u, "remark": info.get("remark") or None,
                         "added_at": dt.datetime.fromtimestamp(int(created), s.tz).replace(tzinfo=None)
                         if created else None, "updated_at": now})
        keep = [r for r in rows if (r["userid"], r["external_userid"]) in existing]
        new = [r for r in rows if (r["userid"], r["external_userid"]) not in existing]
        if keep:
            conn.execute(sa.update(t).where(t.c.corpid == corpid, t.c.userid == sa.bindparam("b_u"),
                                            t.c.external_userid == sa.bindparam("b_e"))
                         .values(remark=sa.bindparam("b_remark"), added_at=sa.bindparam("b_added"),
                                 updated_at=now),
                         [{"b_u": r["userid"], "b_e": r["external_userid"], "b_remark": r["remark"],
                           "b_added": r["added_at"]} for r in keep])
        if new:
            conn.execute(sa.insert(t), new)


# ------------------------------------------------------------------------------------ text


def format_import(report: ImportReport) -> tuple[str, str]:
    """(stdout, stderr) for the end of an import."""
    who = "followers" if report.platform == MP else "external contacts"
    lines = [f"import from the {LABELS[report.platform]} {report.account}: {report.followers} {who} "
             f"({report.inserted} new, {report.updated} updated, {report.unsubscribed} marked unsubscribed)"]
    if report.platform == WECOM:
        lines.append(f"  {report.pairs} (follow user, contact) pairs")
    if report.status == "complete":
        lines.append(f"  {report.tags} tags; {report.memberships} imported memberships "
                     f"(+{report.added} -{report.removed})")
        if report.fields:
            lines.append(f"  fields filled: {', '.join(report.fields)}")
    err = f"error: {report.message}\n" if report.message else ""
    return "\n".join(lines) + "\n", err
