"""`tagdsl import` and `tagdsl sync` against the fake WeChat server over real HTTP.

The store is SQLite (one file per test; PostgreSQL too when TAGDSL_TEST_POSTGRES_URL is set).
Memberships are written directly (source 'rule' / 'manual'), as `tagdsl apply` would leave them.
Kill/resume and secret checks run the real CLI as a subprocess against a fake server process.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    from tests.fakewechat import FakeWeChat, FakeWeChatProcess, Limits
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fakewechat import FakeWeChat, FakeWeChatProcess, Limits

from tagdsl import ir as I
from tagdsl.config import load_config
from tagdsl.schema import build_tables

from runtime.sync import MpLimits, RetryPolicy, SyncError, format_plan, format_report, next_quota_reset, sync
from runtime.sync_schema import build_sync_tables
from runtime.wechat_import import import_wechat_mp, import_wecom

SECRET = "Zq7S3CRET-do-not-print-4f1e83a9c2"  # distinctive: grep for it everywhere
FAST = RetryPolicy(max_attempts=10, base_delay=0.001, max_delay=0.01, timeout=5)
MP_WRITES = ("tags/create", "tags/update", "tags/delete", "tags/members/batchtagging",
             "tags/members/batchuntagging")
MEMBERSHIP = ("tags/members/batchtagging", "tags/members/batchuntagging")
T0 = dt.datetime(2026, 5, 1, 9, 0)

RULES = '''
tag "新客" when count(orders) == 0 { priority 10 }
tag "老客" when count(orders) >= 1 { priority 20 }
tag "VIP" manual { priority 90 }
'''


# ---------------------------------------------------------------------------- helpers


@dataclass
class Project:
    dir: Path
    config_path: Path
    env: dict

    @property
    def config(self):
        return load_config(self.config_path)

    @property
    def engine(self) -> sa.Engine:
        return sa.create_engine(self.config.database_url)


def make_project(tmp_path: Path, fake, rules: str = RULES, *, url: str | None = None, platform: str = "wechat_mp",
                 extra: str = "") -> Project:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "tags.tag").write_text(rules, encoding="utf-8")
    url = url or f"sqlite:///{tmp_path / 'store.db'}"
    section = (f'[wechat_mp]\nappid = "{fake.appid}"\nsecret_env = "TEST_WX_SECRET"\napi_base_url = "{fake.base_url}"\n'
               if platform == "wechat_mp" else
               f'[wecom]\ncorpid = "{fake.corpid}"\nsecret_env = "TEST_WECOM_SECRET"\n'
               f'api_base_url = "{fake.base_url}"\n')
    path = tmp_path / "tagdsl.toml"
    path.write_text(f'[project]\nrulesets = ["rules"]\nplatform = "{platform}"\n[database]\nurl = "{url}"\n'
                    f'{section}{extra}', encoding="utf-8")
    project = Project(tmp_path, path, {"TEST_WX_SECRET": fake.secret, "TEST_WECOM_SECRET": fake.corpsecret})
    t = build_tables(project.config)
    engine = project.engine
    if engine.dialect.name == "sqlite":  # one commit per acknowledged batch: WAL keeps that cheap
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    t.metadata.create_all(engine, tables=[t.followers, t.memberships])
    engine.dispose()
    return project


def put(project: Project, tag: str, ids, source: str = "rule") -> None:
    t = build_tables(project.config).memberships
    engine = project.engine
    with engine.begin() as conn:
        conn.execute(sa.insert(t), [{"openid": o, "tag": tag, "source": source, "assigned_at": T0} for o in ids])
    engine.dispose()


def drop(project: Project, tag: str, ids, source: str = "rule") -> None:
    t = build_tables(project.config).memberships
    engine = project.engine
    with engine.begin() as conn:
        for o in ids:
            conn.execute(sa.delete(t).where(t.c.openid == o, t.c.tag == tag, t.c.source == source))
    engine.dispose()


def store_rows(project: Project, source: str | None = None) -> dict[str, set[str]]:
    t = build_tables(project.config).memberships
    engine = project.engine
    out: dict[str, set[str]] = {}
    with engine.connect() as conn:
        q = sa.select(t.c.openid, t.c.tag, t.c.source)
        for o, tag, src in conn.execute(q):
            if source is None and src in ("rule", "manual") or src == source:
                out.setdefault(tag, set()).add(o)
    engine.dispose()
    return out


def mp_state(fake) -> dict[str, set[str]]:
    return {name: fake.mp_members(tid) for name, tid in fake.mp_tags().items()}


def assert_exact(project: Project, fake, names=("新客", "老客", "VIP")) -> None:
    # A `slow` call the client timed out on is still applied by the platform a
    # moment later; let it land, so the next run does not race with it.
    fake.wait_settled()
    want = store_rows(project)
    have = mp_state(fake)
    for name in names:
        assert have.get(name, set()) == want.get(name, set()), name


def run(project: Project, **kw):
    kw.setdefault("retry", FAST)
    return sync(kw.pop("platform", "wechat_mp"), project.config, environ=project.env, **kw)


def minimum(before: dict[str, set[str]], after: dict[str, set[str]], names) -> int:
    """Σ over tags of ⌈added/50⌉ + ⌈removed/50⌉, from the platform's state before and the goal."""
    total = 0
    for name in names:
        b, a = before.get(name, set()), after.get(name, set())
        total += math.ceil(len(a - b) / 50) + math.ceil(len(b - a) / 50)
    return total


def journal(project: Project) -> list[sa.Row]:
    st = build_sync_tables(project.config)
    engine = project.engine
    with engine.connect() as conn:
        rows = conn.execute(sa.select(st.runs).order_by(st.runs.c.id)).all()
    engine.dispose()
    return rows


@pytest.fixture
def fake():
    with FakeWeChat(secret=SECRET) as server:
        yield server
        assert not server.errors, server.errors[0]


def ruleset_of(*tags: I.TagRule) -> I.Ruleset:
    return I.Ruleset(tags={t.name: t for t in tags}, groups={}, audiences={})


# ---------------------------------------------------------------------------- official account


def test_import_then_sync_round_trip(tmp_path, fake):
    ids = fake.add_followers(260, unionid=True)
    vip = fake.add_tag("VIP")
    legacy = fake.add_tag("老标签")
    fake.set_members(vip, ids[:3])
    fake.set_members(legacy, ids[:40])
    project = make_project(tmp_path, fake)

    report = import_wechat_mp(project.config, environ=project.env, retry=FAST)
    assert report.exit_code == 0 and report.followers == 260 and report.inserted == 260

    t = build_tables(project.config)
    engine = project.engine
    with engine.connect() as conn:
        rows = {r.openid: r for r in conn.execute(sa.select(t.followers))}
    first = rows[ids[0]]
    ts = 1_600_000_000 + 37  # the fake's subscribe_time of its first follower
    assert first.subscribe_time == dt.datetime.fromtimestamp(ts, ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
    assert first.subscribed is True and first.language == "zh_CN" and first.unionid.startswith("o")
    assert first.city is None and first.gender is None  # WeChat's "" and sex 0 mean unknown
    assert store_rows(project, "import") == {"VIP": set(ids[:3]), "老标签": set(ids[:40])}

    put(project, "新客", ids[:130])
    put(project, "老客", ids[130:200])
    put(project, "VIP", ids[3:6], "manual")
    before = mp_state(fake)
    report = run(project)
    assert report.exit_code == 0, format_report(report)
    assert_exact(project, fake, ("新客", "老客"))
    # VIP: the three members staff set on the platform stay (tagdsl did not add them), the
    # store's manual ones are added
    assert mp_state(fake)["VIP"] == set(ids[:6])
    assert mp_state(fake)["老标签"] == set(ids[:40])  # not in the ruleset: left alone
    goal = {**store_rows(project), "VIP": set(ids[:6])}
    assert fake.calls["tags/members/batchtagging"] == minimum(before, goal, ("新客", "老客", "VIP")) == 6
    assert fake.calls["tags/create"] == 2  # 新客, 老客; VIP adopted

    fake.reset_counters()
    again = run(project)
    assert again.exit_code == 0 and again.plan.batches == []
    assert not any(fake.calls[e] for e in MP_WRITES)  # a second sync makes no membership calls

    # re-import: updates in place, marks unsubscribed, drops vanished imported memberships;
    # a city known from elsewhere survives WeChat's "unknown" (it no longer reports cities)
    with engine.begin() as conn:
        conn.execute(sa.update(t.followers).where(t.followers.c.openid == ids[1]).values(city="广州"))
    with fake._lock:
        fake._followers[ids[2]].remark = "老朋友"
    fake.unsubscribe(ids[0])
    fake.set_members(fake.add_tag("新标签"), ids[10:12])
    report = import_wechat_mp(project.config, environ=project.env, retry=FAST)
    assert (report.inserted, report.updated, report.unsubscribed) == (0, 259, 1)
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.followers.c.subscribed).where(t.followers.c.openid == ids[0])).scalar() \
            is False
        assert conn.execute(sa.select(sa.func.count()).select_from(t.followers)).scalar() == 260  # not deleted
        rows = {r.openid: r for r in conn.execute(sa.select(t.followers))}
    assert rows[ids[1]].city == "广州" and rows[ids[2]].remark == "老朋友"
    imported = store_rows(project, "import")
    assert imported["新客"] == set(ids[1:130]) and imported["新标签"] == set(ids[10:12])
    assert ids[0] not in imported["老标签"]
    assert store_rows(project, "rule")["新客"] == set(ids[:130])  # rule rows untouched
    assert store_rows(project, "manual")["VIP"] == set(ids[3:6])
    engine.dispose()


def test_membership_calls_are_the_minimum_and_only_own_memberships_are_removed(tmp_path, fake):
    ids = fake.add_followers(400)
    vip = fake.add_tag("VIP")
    fake.set_members(vip, ids[390:])  # set by staff on the platform
    project = make_project(tmp_path, fake)
    put(project, "新客", ids[:237])
    put(project, "老客", ids[237:351])
    put(project, "VIP", ids[:51], "manual")
    assert run(project).exit_code == 0

    # the store changes: some leave, some join
    drop(project, "新客", ids[:120])
    put(project, "新客", ids[351:390])
    drop(project, "VIP", ids[:51], "manual")
    put(project, "老客", ids[:10])
    before = mp_state(fake)
    fake.reset_counters()
    report = run(project)
    assert report.exit_code == 0
    goal = {**store_rows(project), "VIP": set(ids[390:])}
    expected = minimum(before, goal, ("新客", "老客", "VIP"))
    assert sum(fake.calls[e] for e in MEMBERSHIP) == expected == report.minimum_calls == 3 + 1 + 1 + 2
    assert mp_state(fake)["VIP"] == set(ids[390:])  # staff's members kept: tagdsl did not add them
    assert_exact(project, fake, ("新客", "老客"))


def test_prune_and_own_tag_deletion(tmp_path, fake):
    ids = fake.add_followers(60)
    legacy = fake.add_tag("老标签")
    vip = fake.add_tag("VIP")
    fake.set_members(legacy, ids[:5])
    fake.set_members(vip, ids[:4])
    project = make_project(tmp_path, fake, RULES + 'tag "活动" manual\n')
    import_wechat_mp(project.config, environ=project.env, retry=FAST)  # VIP: ids[:4] imported
    fake.set_members(vip, ids[4:6])  # set by staff after the import
    put(project, "活动", ids[:7], "manual")
    put(project, "新客", ids[:20])
    assert run(project).exit_code == 0
    created = fake.mp_tags()["活动"]

    # 活动 leaves the ruleset: tagdsl created it, so it is deleted; 老标签 is not touched
    (project.dir / "rules" / "tags.tag").write_text(RULES, encoding="utf-8")
    report = run(project)
    assert report.exit_code == 0 and [d.name for d in report.plan.deletes] == ["活动"]
    assert "活动" not in fake.mp_tags() and "老标签" in fake.mp_tags()
    assert mp_state(fake)["VIP"] == set(ids[:6])

    # --prune: 老标签 is deleted; of VIP's members not in the store, the imported ones stay
    # (a manual tag set on the platform), the others go
    report = run(project, prune=True)
    assert report.exit_code == 0, format_report(report)
    assert "老标签" not in fake.mp_tags()
    assert mp_state(fake)["VIP"] == set(ids[:4])
    assert created not in fake.mp_memberships()


def test_faults_still_end_exact(tmp_path):
    faults = {"busy": 0.06, "expired": 0.04, "drop": 0.04, "drop_after": 0.04, "slow": 0.02}
    with FakeWeChat(secret=SECRET, faults=faults, fault_seed=11, slow_delay=0.3) as fake:
        ids = fake.add_followers(500)
        project = make_project(tmp_path, fake)
        put(project, "新客", ids[:260])
        put(project, "老客", ids[260:470])
        put(project, "VIP", ids[100:180], "manual")
        # and for certain, the ambiguous cases: a creation and a tagging applied but unanswered
        fake.queue_faults("tags/create", "drop_after", "slow")
        fake.queue_faults("tags/members/batchtagging", "slow", "drop_after")
        fake.queue_faults("tags/members/batchuntagging", "drop_after")
        policy = RetryPolicy(max_attempts=12, base_delay=0.001, max_delay=0.01, timeout=(2, 0.15))
        report = run(project, retry=policy)
        assert report.exit_code == 0, format_report(report)
        assert_exact(project, fake)
        drop(project, "新客", ids[:90])
        put(project, "老客", ids[:40])
        report = run(project, retry=policy)
        assert report.exit_code == 0, format_report(report)
        assert_exact(project, fake)
        kinds = {k for (_, k) in fake.faults_injected}
        assert kinds == set(faults)
        assert fake.ok_calls["tags/create"] == 3  # each tag created once, and known as tagdsl's
        st = build_sync_tables(project.config)
        engine = project.engine
        with engine.connect() as conn:
            created = dict(conn.execute(sa.select(st.tag_ids.c.name, st.tag_ids.c.created)).all())
        engine.dispose()
        assert created == {"新客": True, "老客": True, "VIP": True}


def test_quota_stops_cleanly_and_the_next_run_resumes(tmp_path, fake):
    ids = fake.add_followers(300)
    project = make_project(tmp_path, fake)
    put(project, "新客", ids[:200])
    put(project, "老客", ids[200:])
    fake.set_quota("tags/members/batchtagging", 3)
    report = run(project)
    assert report.status == "stopped" and report.exit_code == 1
    assert report.resume_after == next_quota_reset()
    assert report.resume_after.utcoffset() == dt.timedelta(hours=8) and report.resume_after.hour == 0
    assert "quota" in report.message and "resume" in report.message
    runs = journal(project)
    assert runs[-1].status == "stopped" and runs[-1].resume_after is not None
    assert fake.ok_calls["tags/members/batchtagging"] == 3

    fake.set_quota("tags/members/batchtagging", None)
    report = run(project)
    assert report.exit_code == 0 and report.resumed_run == runs[-1].id
    assert_exact(project, fake)
    assert fake.ok_calls["tags/members/batchtagging"] == minimum({}, store_rows(project), ("新客", "老客")) == 6
    assert fake.ok_calls["tags/create"] == 3
    assert [r.status for r in journal(project)] == ["complete"]


def test_expired_token_is_refreshed_once(tmp_path, fake):
    ids = fake.add_followers(80)
    project = make_project(tmp_path, fake)
    put(project, "新客", ids)
    report = run(project, on_plan=lambda plan: fake.expire_tokens())
    assert report.exit_code == 0
    assert fake.calls["token"] == 2
    assert_exact(project, fake)


def test_token_is_cached_in_the_store(tmp_path, fake):
    ids = fake.add_followers(10)
    project = make_project(tmp_path, fake)
    put(project, "新客", ids)
    run(project)
    run(project)
    assert fake.calls["token"] == 1
    st = build_sync_tables(project.config)
    engine = project.engine
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(st.tokens)).all()
    engine.dispose()
    assert row.expires_at > time.time() + 3600


@pytest.mark.parametrize("tag", [
    I.TagRule("一二三四五六七八九十一", None, manual=True),  # 33 bytes
    I.TagRule("星标组", None, manual=True),  # reserved
])
def test_bad_names_are_refused_before_any_call(tmp_path, fake, tag):
    project = make_project(tmp_path, fake)
    report = run(project, ruleset=ruleset_of(I.TagRule("新客", None, manual=True), tag))
    assert report.status == "refused" and report.exit_code == 1
    assert tag.name in report.problems[0]
    assert fake.call_count() == 0  # not even the token


def test_the_101st_tag_is_refused_before_any_write(tmp_path, fake):
    fake.add_followers(5)
    fake.add_tags(f"旧{i}" for i in range(95))
    rules = "".join(f'tag "新{i}" manual\n' for i in range(6))
    project = make_project(tmp_path, fake, rules)
    report = run(project)
    assert report.status == "refused" and report.exit_code == 1
    assert "101" in report.problems[0] and "100" in report.problems[0]
    assert not any(fake.calls[e] for e in MP_WRITES)


def test_a_follower_who_would_exceed_20_tags_is_left_out_and_reported(tmp_path, fake):
    ids = fake.add_followers(30)
    for i in range(19):
        fake.set_members(fake.add_tag(f"旧{i}"), ids[:1])
    project = make_project(tmp_path, fake)
    put(project, "新客", ids)
    put(project, "VIP", ids[:5], "manual")  # VIP's priority 90 beats 新客's 10
    report = run(project)
    assert report.exit_code == 0
    assert [(k.tag, k.follower_id) for k in report.skips] == [("新客", ids[0])]
    assert "20 tags" in report.skips[0].reason
    state = mp_state(fake)
    assert state["新客"] == set(ids[1:]) and state["VIP"] == set(ids[:5])
    assert all(r["errcode"] == 0 for r in fake.requests if r["endpoint"] in MEMBERSHIP)
    assert ids[0] in format_report(report)[1]


def test_a_batch_refused_for_45059_is_split(tmp_path):
    # the platform's own limit is lower than the plan's (someone else tagged in between)
    with FakeWeChat(secret=SECRET, limits=Limits(mp_max_tags_per_follower=2)) as fake:
        ids = fake.add_followers(50)
        for name in ("甲", "乙"):
            fake.set_members(fake.add_tag(name), [ids[17]])
        project = make_project(tmp_path, fake)
        put(project, "新客", ids)
        report = run(project)
        assert report.exit_code == 0
        assert [(k.follower_id, k.code) for k in report.skips] == [(ids[17], 45059)]
        assert mp_state(fake)["新客"] == set(ids) - {ids[17]}
        assert fake.calls["tags/members/batchtagging"] <= 1 + 2 * math.ceil(math.log2(50))


def test_a_follower_who_unsubscribed_mid_sync_is_skipped(tmp_path, fake):
    ids = fake.add_followers(120)
    project = make_project(tmp_path, fake)
    put(project, "新客", ids)
    put(project, "老客", ["o" + "x" * 27])  # an openid of no follower: left out at plan time
    report = run(project, on_plan=lambda plan: fake.unsubscribe(ids[70]))
    assert report.exit_code == 0
    reasons = {(k.follower_id, k.code) for k in report.skips}
    assert reasons == {(ids[70], 40003), ("o" + "x" * 27, None)}
    assert mp_state(fake)["新客"] == set(ids) - {ids[70]}


def test_45056_stops_creating_and_reports(tmp_path):
    with FakeWeChat(secret=SECRET, limits=Limits(mp_max_tags=2)) as fake:
        ids = fake.add_followers(20)
        project = make_project(tmp_path, fake)
        put(project, "新客", ids[:10])
        put(project, "老客", ids[10:])
        put(project, "VIP", ids[:2], "manual")
        report = run(project)
        assert report.status == "incomplete" and report.exit_code == 1
        assert "VIP" in report.problems[0] and "45056" in report.problems[0]
        assert fake.calls["tags/create"] == 3
        assert_exact(project, fake, ("新客", "老客"))


def test_dry_run_makes_no_write_calls(tmp_path, fake):
    ids = fake.add_followers(100)
    project = make_project(tmp_path, fake)
    put(project, "新客", ids)
    shown = []
    report = run(project, dry_run=True, on_plan=lambda plan: shown.append(format_plan(plan)))
    assert report.status == "dry-run" and report.exit_code == 0
    assert not any(fake.calls[e] for e in MP_WRITES)
    assert re.search(r"新客\s+\+100\s+-0", shown[0]) and "tags to create: 3" in shown[0]
    assert journal(project) == []


def test_big_tags_are_untagged_down_to_the_limit_before_delete(tmp_path):
    with FakeWeChat(secret=SECRET, limits=Limits(mp_delete_max_fans=10)) as fake:
        ids = fake.add_followers(40)
        project = make_project(tmp_path, fake, RULES + 'tag "活动" manual\n')
        put(project, "活动", ids[:25], "manual")
        assert run(project).exit_code == 0
        (project.dir / "rules" / "tags.tag").write_text(RULES, encoding="utf-8")
        fake.reset_counters()
        report = run(project, limits=MpLimits(delete_max_fans=10))
        assert report.exit_code == 0, format_report(report)
        order = [r["endpoint"] for r in fake.requests if r["endpoint"] in MP_WRITES]
        assert order == ["tags/members/batchuntagging", "tags/delete"]
        assert "活动" not in fake.mp_tags()


def test_renames_a_look_alike_and_a_tag_renamed_on_the_platform(tmp_path, fake):
    ids = fake.add_followers(10)
    lookalike = fake.add_tag("新客 ")  # trailing space
    fake.set_members(lookalike, ids[:2])
    project = make_project(tmp_path, fake)
    put(project, "新客", ids[:5])
    put(project, "老客", ids[5:])
    report = run(project)
    assert report.exit_code == 0 and fake.mp_tags()["新客"] == lookalike
    assert [t.action for t in report.plan.tags] == ["rename", "create", "create"]
    # staff rename 老客 in the back office: the next sync renames it back, keeping its members
    old = fake.mp_tags()["老客"]
    with fake._lock:
        fake._mp_tags[old] = "老客户"
    report = run(project)
    assert report.exit_code == 0 and fake.mp_tags()["老客"] == old
    assert fake.calls["tags/update"] == 2
    assert_exact(project, fake)


def test_missing_secret_is_a_usage_error(tmp_path, fake):
    project = make_project(tmp_path, fake)
    with pytest.raises(SyncError, match="TEST_WX_SECRET") as info:
        sync("wechat_mp", project.config, environ={})
    assert info.value.exit_code == 2


# ---------------------------------------------------------------------------- WeCom

WECOM_RULES = '''
group "客户等级" {
  tag "高价值" when count(orders) >= 3
  tag "沉默" when count(orders) == 0
}
tag "新客" when count(orders) == 1
'''


def seed_wecom(fake):
    fake.seed({"wecom": {
        "follow_users": ["zhangsan", "lisi", "wangwu"],
        "contacts": [{"external_userid": f"wmExt{i:027d}", "follow_users": ["zhangsan"] + (["lisi"] if i < 5 else [])}
                     for i in range(40)],
        "corp_tags": {"客户等级": ["高价值", "普通"], "来源": ["展会"]},
        "marks": [{"userid": "zhangsan", "external_userid": "wmExt" + "0" * 27, "tags": ["客户等级/普通", "来源/展会"]}],
    }})
    return [f"wmExt{i:027d}" for i in range(40)]


def wecom_state(fake, exts) -> dict[str, set[tuple[str, str]]]:
    names = {tid: name for g in fake.wecom_corp_tags().values() for name, tid in g.items()}
    out: dict[str, set] = {}
    for e in exts:
        for u in ("zhangsan", "lisi"):
            try:
                tags = fake.wecom_tags_of(u, e)
            except KeyError:
                continue
            for t in tags:
                out.setdefault(names[t], set()).add((u, e))
    return out


def wecom_goal(project, pairs) -> dict[str, set[tuple[str, str]]]:
    rows = store_rows(project)
    return {tag: {(u, e) for (u, e) in pairs if e in ids} for tag, ids in rows.items()}


def test_wecom_import_then_sync_round_trip(tmp_path, fake):
    exts = seed_wecom(fake)
    project = make_project(tmp_path, fake, WECOM_RULES, platform="wecom")
    report = import_wecom(project.config, environ=project.env, retry=FAST)
    assert report.exit_code == 0 and (report.followers, report.pairs) == (40, 45)
    st = build_sync_tables(project.config)
    t = build_tables(project.config)
    engine = project.engine
    with engine.connect() as conn:
        pairs = {(u, e) for e, u in conn.execute(sa.select(st.wecom_contacts.c.external_userid,
                                                           st.wecom_contacts.c.userid))}
        assert conn.execute(sa.select(sa.func.count()).select_from(t.followers)).scalar() == 40
    engine.dispose()
    assert len(pairs) == 45 and ("lisi", exts[0]) in pairs
    assert store_rows(project, "import") == {"普通": {exts[0]}, "展会": {exts[0]}}

    put(project, "高价值", exts[:10])
    put(project, "沉默", exts[10:30])
    put(project, "新客", exts[30:])
    report = run(project, platform="wecom")
    assert report.exit_code == 0, format_report(report)
    tags = fake.wecom_corp_tags()
    assert set(tags["客户等级"]) == {"高价值", "沉默", "普通"} and set(tags["tagdsl"]) == {"新客"}
    goal = wecom_goal(project, pairs)
    state = wecom_state(fake, exts)
    for name in ("高价值", "沉默", "新客"):
        assert state[name] == goal[name], name
    assert state["普通"] == {("zhangsan", exts[0])}  # not in the ruleset: left alone
    assert fake.calls["externalcontact/mark_tag"] == 45 == report.minimum_calls

    fake.reset_counters()
    assert run(project, platform="wecom").plan.batches == []
    assert fake.calls["externalcontact/mark_tag"] == 0

    drop(project, "高价值", exts[:4])
    put(project, "沉默", exts[:2])
    report = run(project, platform="wecom")
    assert report.exit_code == 0
    assert fake.calls["externalcontact/mark_tag"] == 4 + 4  # exts[:4] and their lisi pairs
    state = wecom_state(fake, exts)
    goal = wecom_goal(project, pairs)
    for name in ("高价值", "沉默", "新客"):
        assert state.get(name, set()) == goal.get(name, set()), name


def test_wecom_faults_quota_and_limits(tmp_path):
    faults = {"busy": 0.08, "expired": 0.04, "drop": 0.04, "drop_after": 0.04}
    with FakeWeChat(secret=SECRET, faults=faults, fault_seed=5) as fake:
        exts = seed_wecom(fake)
        project = make_project(tmp_path, fake, WECOM_RULES, platform="wecom")
        put(project, "高价值", exts[:15])
        put(project, "新客", exts[15:])
        fake.set_quota("externalcontact/mark_tag", 10)
        report = run(project, platform="wecom")
        assert report.status == "stopped" and "quota" in report.message
        fake.set_quota("externalcontact/mark_tag", None)
        report = run(project, platform="wecom")
        assert report.exit_code == 0, format_report(report)
        pairs = {("zhangsan", e) for e in exts} | {("lisi", e) for e in exts[:5]}
        state, goal = wecom_state(fake, exts), wecom_goal(project, pairs)
        for name in ("高价值", "新客"):
            assert state[name] == goal[name]
        assert sum(len(g) for g in fake.wecom_corp_tags().values()) == 5  # no tag created twice

    long = "长" * 31
    report = sync("wecom", project.config, environ=project.env, retry=FAST,
                  ruleset=ruleset_of(I.TagRule(long, None, manual=True)))
    assert report.status == "refused" and long in report.problems[0]


def test_wecom_pair_that_vanished_mid_sync_is_skipped(tmp_path, fake):
    exts = seed_wecom(fake)
    project = make_project(tmp_path, fake, WECOM_RULES, platform="wecom")
    put(project, "新客", exts[:3])

    def customer_leaves(plan):  # lisi's relation with exts[1] ends between plan and call
        with fake._lock:
            del fake._relations[("lisi", exts[1])]
            fake._follow_users["lisi"].remove(exts[1])
            fake._followers_of[exts[1]].remove("lisi")

    report = run(project, platform="wecom", on_plan=customer_leaves)
    assert report.exit_code == 0
    assert [(k.userid, k.follower_id, k.code) for k in report.skips] == [("lisi", exts[1], 84061)]
    assert wecom_state(fake, exts)["新客"] == {("zhangsan", e) for e in exts[:3]} | {("lisi", exts[0]),
                                                                                    ("lisi", exts[2])}


def test_restart_abandons_the_unfinished_run(tmp_path, fake):
    ids = fake.add_followers(200)
    project = make_project(tmp_path, fake)
    put(project, "新客", ids)
    fake.set_quota("tags/members/batchtagging", 1)
    assert run(project).status == "stopped"
    fake.set_quota("tags/members/batchtagging", None)
    dry = run(project, dry_run=True)
    assert dry.status == "dry-run" and "3 of 7 batches left" in dry.message
    report = run(project, restart=True)
    assert report.exit_code == 0 and report.resumed_run is None
    assert [r.status for r in journal(project)] == ["abandoned", "complete"]
    assert_exact(project, fake)
    assert fake.ok_calls["tags/members/batchtagging"] == 4


def test_a_live_sync_of_the_same_account_is_not_run_beside(tmp_path, fake):
    ids = fake.add_followers(60)
    project = make_project(tmp_path, fake)
    put(project, "新客", ids)
    fake.set_quota("tags/members/batchtagging", 0)
    assert run(project).status == "stopped"
    fake.set_quota("tags/members/batchtagging", None)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        st = build_sync_tables(project.config)
        engine = project.engine
        with engine.begin() as conn:  # as if that process were syncing the account right now
            conn.execute(sa.update(st.runs).values(status="running", pid=other.pid, host=socket.gethostname()))
        engine.dispose()
        with pytest.raises(SyncError, match=f"pid {other.pid}"):
            run(project)
    finally:
        other.kill()
        other.wait()
    assert run(project).exit_code == 0  # its process is gone: the run is resumed
    assert_exact(project, fake)


# ---------------------------------------------------------------------------- CLI, SIGKILL, secrets


def cli(project: Project, *args: str, env: dict | None = None, wait: bool = True):
    full_env = {**os.environ, **project.env, "PYTHONPATH": str(ROOT), "TAGDSL_WECHAT_BACKOFF": "0.01",
                **(env or {})}
    cmd = [sys.executable, "-m", "cli", *args, "--config", str(project.config_path)]
    if not wait:
        return subprocess.Popen(cmd, cwd=project.dir, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=project.dir, env=full_env, capture_output=True, text=True, timeout=120)


class Remote:
    """The project helpers' view of a fake running in another process."""

    def __init__(self, proc: FakeWeChatProcess, appid="wx5f3a1c9e0b7d2e41", corpid="ww8c2d4e6f1a3b5c7d"):
        self.proc, self.appid, self.corpid = proc, appid, corpid
        self.secret, self.corpsecret, self.base_url = SECRET, "unused-corp-secret", proc.base_url

    def state(self) -> dict:
        return self.proc.admin("state?members=0")  # counters only: cheap to poll

    def members(self) -> dict[str, set[str]]:
        st = self.proc.admin("state")["mp"]
        return {t["name"]: set(st["members"][str(t["id"])]) for t in st["tags"]}


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_sigkill_at_several_points_then_resume_ends_exact(tmp_path):
    """`tagdsl sync` killed (SIGKILL) while a call is in flight, three times: during a tag
    creation, during the first membership call of the resumed run, and in the middle of the next
    one; each in-flight call is applied by the server after the kill (the ambiguous case)."""
    with FakeWeChatProcess("--secret", SECRET, "--followers", "300") as proc:
        remote = Remote(proc)
        project = make_project(tmp_path, remote)
        followers = _remote_openids(proc, 300)
        put(project, "新客", followers[:180])
        put(project, "老客", followers[180:290])
        put(project, "VIP", followers[:20], "manual")
        minimum_calls = minimum({}, store_rows(project), ("新客", "老客", "VIP"))

        for endpoint, after in (("tags/create", 2), ("tags/members/batchtagging", 1),
                                ("tags/members/batchtagging", 4)):
            proc.admin("faults", {"faults": {"slow": 1.0}, "endpoints": [endpoint], "slow_delay": 0.5})
            child = cli(project, "sync", "wechat-mp", wait=False)
            wait_for(lambda: remote.state()["calls"].get(endpoint, 0) >= after)
            child.kill()
            child.communicate()
            proc.admin("faults", {"faults": {}})
            wait_for(lambda: remote.state()["ok_calls"].get(endpoint, 0) >= after)  # applied after all

        done = cli(project, "sync", "wechat-mp")
        assert done.returncode == 0, done.stderr
        assert "resuming sync run 1" in done.stderr
        have, want = remote.members(), store_rows(project)
        for name in ("新客", "老客", "VIP"):
            assert have[name] == want[name], name
        ok = remote.state()["ok_calls"]
        assert ok["tags/create"] == 3  # no tag created twice
        # acknowledged batches were not sent again; only the two in flight when killed may be
        assert minimum_calls <= ok["tags/members/batchtagging"] <= minimum_calls + 2
        assert [r.status for r in journal(project)] == ["complete"]

        proc.admin("reset_counters")
        again = run(project)
        assert again.exit_code == 0 and again.plan.batches == []
        assert not any(remote.state()["calls"].get(e) for e in MP_WRITES)


def _remote_openids(proc: FakeWeChatProcess, n: int) -> list[str]:
    """The subprocess fake's openids, read with the client layer (as a user would)."""
    from runtime.wechat import make_mp_client

    client = make_mp_client("wx5f3a1c9e0b7d2e41", SECRET, api_base_url=proc.base_url)
    openids = client.user.get_followers()["data"]["openid"]
    assert len(openids) == n
    return openids


def invoke(project: Project, *args: str, env: dict | None = None):
    """The CLI in-process (click's runner): exit status, stdout and stderr apart."""
    from click.testing import CliRunner

    import cli as cli_module

    runner = CliRunner(env={**project.env, "TAGDSL_WECHAT_BACKOFF": "0.01", **(env or {})})
    return runner.invoke(cli_module.main, [*args, "--config", str(project.config_path)], catch_exceptions=False)


def test_cli_never_shows_secrets_and_names_missing_variables(tmp_path, fake):
    ids = fake.add_followers(120)
    project = make_project(tmp_path, fake)
    imported = invoke(project, "import", "wechat-mp")
    assert imported.exit_code == 0, imported.stderr
    assert "120 followers" in imported.stdout
    put(project, "新客", ids[:70])
    dry = invoke(project, "sync", "wechat-mp", "--dry-run")
    assert dry.exit_code == 0 and re.search(r"新客\s+\+70\s+-0", dry.stdout) and "dry run" in dry.stdout
    assert not any(fake.calls[e] for e in MP_WRITES)
    synced = invoke(project, "sync", "wechat-mp")
    assert synced.exit_code == 0, synced.stderr
    assert "sync complete" in synced.stdout and "tags to create: 3" in synced.stdout

    # a wrong secret (no cached token) and an unreachable server: errors, never the secret
    st = build_sync_tables(project.config)
    engine = project.engine
    with engine.begin() as conn:
        conn.execute(sa.delete(st.tokens))
    wrong = invoke(project, "sync", "wechat-mp", env={"TEST_WX_SECRET": SECRET + "x"})
    assert wrong.exit_code == 2 and "40125" in wrong.stderr
    project.config_path.write_text(project.config_path.read_text().replace(fake.base_url,
                                                                           "http://127.0.0.1:9/cgi-bin/"))
    down = invoke(project, "sync", "wechat-mp", env={"TAGDSL_WECHAT_MAX_ATTEMPTS": "2"})
    assert down.exit_code == 1 and "network error" in down.stderr and "Traceback" not in down.stderr
    missing = invoke(project, "sync", "wechat-mp", env={"TEST_WX_SECRET": None})
    assert missing.exit_code == 2
    assert missing.stderr == ("error: environment variable TEST_WX_SECRET is not set (named by [wechat_mp] "
                              "secret_env in tagdsl.toml; it must hold the AppSecret)\n")

    outputs = [r.stdout + r.stderr for r in (imported, dry, synced, wrong, down, missing)]
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            outputs.extend(repr(row) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')))
    engine.dispose()
    assert not [text for text in outputs if SECRET in text]


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_url():
    base = os.environ.get("TAGDSL_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TAGDSL_TEST_POSTGRES_URL is not set")
    schema = f"sync_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_round_trip_on_postgresql(tmp_path, fake, pg_url):
    ids = fake.add_followers(150)
    fake.set_members(fake.add_tag("VIP"), ids[:3])
    project = make_project(tmp_path, fake, url=pg_url)
    assert import_wechat_mp(project.config, environ=project.env, retry=FAST).exit_code == 0
    put(project, "新客", ids[:100])
    put(project, "VIP", ids[3:9], "manual")
    fake.set_quota("tags/members/batchtagging", 1)
    assert run(project).status == "stopped"
    fake.set_quota("tags/members/batchtagging", None)
    assert run(project).exit_code == 0
    assert_exact(project, fake, ("新客",))
    assert mp_state(fake)["VIP"] == set(ids[:9])
    assert store_rows(project, "import") == {"VIP": set(ids[:3])}
