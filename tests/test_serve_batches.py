"""`tagdsl serve`'s group commit: a batch of pushes in one transaction, in
rounds per follower; a push that cannot be stored fails alone; retries in the
same batch are duplicates with the same reply. On every backend; the writer's
batch function is called directly with real pushes (no thread timing)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from dbs import BACKENDS, isolated_engine
from runtime import store
from runtime.engine import Engine
from runtime.events import EventProcessor, Push, _Pending, event_row
from tagdsl import TagDSLError, load_ruleset
from tagdsl.config import load_config

TZ = ZoneInfo("Asia/Shanghai")
T = dt.datetime(2026, 5, 1, 12, 0, 0)
NOW = int(T.replace(tzinfo=TZ).timestamp())

RULES = """
tag "领礼意向" when exists(events where type == "text" and key == "1") { reply "感谢参与" }
tag "菜单活跃" when count(events where type == "menu_click") >= 2 { priority 2  reply "会员中心" }
tag "活跃" when count(events) >= 1
"""


@pytest.fixture(params=BACKENDS)
def processor(request, tmp_path):
    with isolated_engine(request.param, tmp_path) as (_engine, url):
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "t.tag").write_text(RULES, encoding="utf-8")
        (tmp_path / "tagdsl.toml").write_text(f'[project]\nrulesets = ["rules"]\n[database]\nurl = "{url}"\n'
                                              '[wechat_mp]\nappid = "wx0123456789abcdef"\n', encoding="utf-8")
        config = load_config(tmp_path / "tagdsl.toml")
        db = store.connect(url, create=True)
        tables = store.create_store(db, config)
        with db.begin() as conn:
            conn.execute(sa.insert(tables.followers), [
                dict(openid=o, subscribed=True, subscribe_scene=None, qr_scene_str=None, subscribe_time=None)
                for o in ("o_a", "o_b", "o_c")])
        ruleset = load_ruleset(config.ruleset_paths(), config)
        with Engine(config, url) as engine:
            engine.apply(ruleset, as_of=T - dt.timedelta(days=1))
        p = EventProcessor(config, ruleset, db, clock=lambda: T.replace(tzinfo=TZ))
        p.ensure_tables()
        try:
            yield request.param, config, p
        finally:
            p.close()
            db.dispose()


def pending(openid, kind, n):
    if kind == "text":
        push = Push(openid, "gh_x", NOW - 100 + n, "text", msg_id=str(9000 + n), content="1")
    else:
        push = Push(openid, "gh_x", NOW - 100 + n, "event", event="CLICK", event_key="会员中心")
    return _Pending(push, event_row(push, TZ), push.dedupe_key)


def count(config, sql, **params):
    db = store.connect(config.database_url)
    try:
        with db.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        db.dispose()


def test_one_batch_rounds_duplicates_and_replies(processor):
    _backend, config, p = processor
    first_click, second_click = pending("o_a", "click", 1), pending("o_a", "click", 2)
    text = pending("o_b", "text", 3)
    retry = _Pending(text.push, text.row, text.key)  # WeChat's retry, in the same batch
    batch = [first_click, text, second_click, retry, pending("o_c", "click", 4)]
    p._commit_batch(batch)
    outcomes = [p.result(item) for item in batch]
    assert [o.duplicate for o in outcomes] == [False, False, False, True, False]
    # o_a's second click is handled after its first (a second round): 菜单活跃 holds only then.
    assert outcomes[0].added == ["活跃"] and outcomes[0].reply is None
    assert outcomes[2].added == ["菜单活跃"] and outcomes[2].reply == "会员中心"
    assert outcomes[1].reply == "感谢参与" and outcomes[3].reply == "感谢参与"
    assert count(config, "SELECT COUNT(*) FROM events") == 4
    assert count(config, "SELECT COUNT(*) FROM tagdsl_serve_seen") == 4
    # A retry in a later batch: the same reply, nothing stored.
    again = _Pending(text.push, text.row, text.key)
    p._commit_batch([again])
    assert p.result(again).duplicate and p.result(again).reply == "感谢参与"
    assert count(config, "SELECT COUNT(*) FROM events") == 4


def test_a_push_that_cannot_be_stored_fails_alone(processor):
    backend, config, p = processor
    # A follower id longer than the column: the database refuses the follower row (SQLite
    # does not check lengths, so there a value the evaluator cannot read does it instead).
    if backend == "sqlite":
        db = store.connect(config.database_url)
        with db.begin() as conn:
            conn.execute(sa.text("UPDATE followers SET subscribe_time = 'not a time' WHERE openid = 'o_c'"))
        db.dispose()
        bad = pending("o_c", "text", 2)
    else:
        bad = pending("o" * 80, "text", 2)
    good = [pending("o_a", "text", 1), pending("o_b", "click", 3)]
    batch = [good[0], bad, good[1]]
    p._commit_batch(batch)
    with pytest.raises(TagDSLError) as failed:
        p.result(bad)
    assert "\n" not in str(failed.value)
    assert [p.result(item).stored for item in good] == [True, True]
    assert count(config, "SELECT COUNT(*) FROM events") == 2
    assert count(config, "SELECT COUNT(*) FROM tagdsl_serve_seen") == 2
    assert count(config, "SELECT COUNT(*) FROM events WHERE openid = :o", o=bad.push.openid) == 0
