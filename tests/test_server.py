"""`tagdsl serve`: real signed HTTP requests against a server on 127.0.0.1,
a SQLite store, and a comparison with what `Engine.apply` writes."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from wechatpy.crypto import WeChatCrypto

from runtime import store
from runtime.engine import Engine
from runtime.server import make_server
from tagdsl import load_ruleset
from tagdsl.config import load_config

TZ = ZoneInfo("Asia/Shanghai")
T = dt.datetime(2026, 5, 1, 12, 0, 0)  # the server's clock (project time zone)
NOW = int(T.replace(tzinfo=TZ).timestamp())  # ... in unix seconds
TOKEN = "tagdsltoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters
APPID = "wx0123456789abcdef"
ENV = {"WECHAT_TOKEN": TOKEN, "WECHAT_AES_KEY": AES_KEY}
ACCOUNT = "gh_0123456789ab"

RULES = """
tag "领礼意向" when exists(events where type == "text" and key == "1" within 7d)
tag "门店粉丝" when subscribe_scene == "ADD_SCENE_QR_CODE" and starts_with(qr_scene_str, "store")
tag "已关注" when subscribed == true
tag "菜单活跃" when count(events where type == "menu_click" within 30d) >= 2 { priority 5 }
tag "互动" when exists(events where type != "unsubscribe" within 7d) { expires 1d }
tag "高意向" when tag("领礼意向") and tag("菜单活跃")
tag "下单" when exists(orders)
tag "VIP" manual
group "活跃度" exclusive {
  tag "活跃-A" when count(events within 30d) >= 4
  tag "活跃-B" when count(events within 30d) >= 1
}
"""

CONFIG_TEXT = f"""
[project]
rulesets = ["rules"]
[database]
url = "sqlite:///store.db"
[limits]
max_tags_per_follower = 4
[wechat_mp]
appid = "{APPID}"
"""


# -- a project, a store, a server -----------------------------------------------------------------

FIRST_CLICK = dict(openid="o_old", type="menu_click", key="会员中心", occurred_at=T - dt.timedelta(days=3))
SECOND_CLICK = dict(openid="o_old", type="menu_click", key="会员中心", occurred_at=T - dt.timedelta(days=2, hours=12))
HELLO = dict(openid="o_old", type="text", key="你好", occurred_at=T - dt.timedelta(days=2, hours=1))


def fill_store(url, config, events):
    """Create the store at ``url``: two followers (o_old, o_quiet), ``events``, o_old's manual VIP."""
    db = store.connect(url, create=True)
    tables = store.create_store(db, config)
    with db.begin() as conn:
        conn.execute(sa.insert(tables.followers), [
            dict(openid="o_old", subscribed=True, subscribe_scene="ADD_SCENE_QR_CODE", qr_scene_str="storeB",
                 subscribe_time=T - dt.timedelta(days=40)),
            dict(openid="o_quiet", subscribed=True, subscribe_scene="ADD_SCENE_SEARCH", qr_scene_str=None,
                 subscribe_time=None),
        ])
        conn.execute(sa.insert(tables.sources["events"]), events)
        conn.execute(sa.insert(tables.memberships), [
            dict(openid="o_old", tag="VIP", source="manual", assigned_at=T - dt.timedelta(days=100))])
    db.dispose()


@pytest.fixture
def project(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "t.tag").write_text(RULES, encoding="utf-8")
    (tmp_path / "tagdsl.toml").write_text(CONFIG_TEXT, encoding="utf-8")
    config = load_config(tmp_path / "tagdsl.toml")
    fill_store(config.database_url, config, [FIRST_CLICK, SECOND_CLICK, HELLO])
    return config


def ruleset_of(config):
    return load_ruleset(config.ruleset_paths(), config)


def apply_at(config, when, url=None):
    with Engine(config, url) as engine:
        return engine.apply(ruleset_of(config), as_of=when)


@pytest.fixture
def server(project):
    apply_at(project, T - dt.timedelta(days=2))  # the store as a daily apply left it
    srv = make_server(project, ruleset_of(project), project.database_url, port=0, environ=ENV,
                      clock=lambda: T.replace(tzinfo=TZ), wall_clock=lambda: NOW)
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()
    srv.app.processor.db.dispose()


def copy_store(source, target):
    """A consistent copy of a SQLite store in use (the server keeps it in WAL mode: the file alone is not enough)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def rows(config, sql, **params):
    db = store.connect(config.database_url)
    try:
        with db.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        db.dispose()


def state(config):
    """Everything a push may change, to check that a refused one changed nothing."""
    return {t: rows(config, f"SELECT * FROM {t} ORDER BY 1, 2") for t in (
        "followers", "events", "tagdsl_memberships", "tagdsl_runs", "tagdsl_changes", "tagdsl_drops",
        "tagdsl_expirations", "tagdsl_serve_seen")}


# -- signed requests ----------------------------------------------------------------------------

def sha1_signature(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def text_xml(openid, content, msg_id, created=NOW - 1):
    return (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>")


def event_xml(openid, event, key=None, created=NOW - 1):
    key_xml = f"<EventKey><![CDATA[{key}]]></EventKey>" if key is not None else ""
    return (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[{event}]]></Event>{key_xml}</xml>")


def request(port, method, query, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/wechat?" + query if query else "/wechat", body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def post_plain(port, xml, timestamp=NOW, nonce="n1", token=TOKEN, signature=None):
    sig = signature if signature is not None else sha1_signature(token, str(timestamp), nonce)
    return request(port, "POST", f"signature={sig}&timestamp={timestamp}&nonce={nonce}", xml.encode("utf-8"))


def post_aes(port, xml, timestamp=NOW, nonce="n2", appid=APPID):
    envelope = WeChatCrypto(TOKEN, AES_KEY, appid).encrypt_message(xml, nonce, str(timestamp))
    import xmltodict

    msg_signature = xmltodict.parse(envelope)["xml"]["MsgSignature"]
    sig = sha1_signature(TOKEN, str(timestamp), nonce)
    query = f"signature={sig}&timestamp={timestamp}&nonce={nonce}&encrypt_type=aes&msg_signature={msg_signature}"
    return request(port, "POST", query, envelope.encode("utf-8"))


# -- the handshake ------------------------------------------------------------------------------

def test_handshake_echoes_echostr_only_with_a_good_signature(server):
    sig = sha1_signature(TOKEN, str(NOW), "abc")
    assert request(server.port, "GET", f"signature={sig}&timestamp={NOW}&nonce=abc&echostr=hello") == (200, "hello")
    assert request(server.port, "GET", f"signature=bad&timestamp={NOW}&nonce=abc&echostr=hello")[0] == 403
    old = NOW - 301
    sig_old = sha1_signature(TOKEN, str(old), "abc")
    assert request(server.port, "GET", f"signature={sig_old}&timestamp={old}&nonce=abc&echostr=x")[0] == 403


# -- accepted pushes ------------------------------------------------------------------------------

def test_new_follower_subscribes_by_store_qr_and_sends_keyword(server, project):
    assert post_plain(server.port, event_xml("o_new", "subscribe", "qrscene_storeA", NOW - 5)) == (200, "success")
    assert post_aes(server.port, text_xml("o_new", "1", 7001, NOW - 3)) == (200, "success")

    events = rows(project, "SELECT type, key, occurred_at FROM events WHERE openid = 'o_new' ORDER BY occurred_at")
    assert [(t, k) for t, k, _ in events] == [("subscribe", "qrscene_storeA"), ("text", "1")]
    first = dt.datetime.fromisoformat(str(events[0][2]))
    assert first.replace(microsecond=0) == T - dt.timedelta(seconds=5)  # CreateTime in the project time zone
    follower = rows(project, "SELECT subscribed, subscribe_scene, qr_scene_str, subscribe_time FROM followers "
                             "WHERE openid = 'o_new'")
    assert follower[0][:3] == (1, "ADD_SCENE_QR_CODE", "storeA")

    held = {t for (t,) in rows(project, "SELECT tag FROM tagdsl_memberships WHERE openid = 'o_new' AND source = 'rule'")}
    # Five rules hold; the limit of 4 drops the last name in code-point order (all priority 0).
    assert held == {"门店粉丝", "已关注", "互动", "活跃-B"}
    assert rows(project, "SELECT tag FROM tagdsl_drops WHERE openid = 'o_new'") == [("领礼意向",)]
    # Every change has its run (status event) and its change row; memberships point at their run.
    audit = rows(project, "SELECT c.tag, c.action, c.reason, r.status, r.followers FROM tagdsl_changes c "
                          "JOIN tagdsl_runs r ON r.id = c.run_id WHERE c.openid = 'o_new'")
    assert sorted((t, a, r) for t, a, r, _, _ in audit) == sorted((t, "added", "rule") for t in held)
    assert {(s, n) for *_, s, n in audit} == {("event", 1)}
    assert rows(project, "SELECT COUNT(*) FROM tagdsl_memberships m JOIN tagdsl_changes c ON c.run_id = m.run_id "
                         "AND c.tag = m.tag AND c.openid = m.openid WHERE m.openid = 'o_new'") == [(4,)]

    # What the server wrote is what apply computes: applying now changes nothing.
    copy = Path(project.base_dir) / "copy.db"
    copy_store(Path(project.base_dir) / "store.db", copy)
    result = apply_at(project, T, f"sqlite:///{copy}")
    assert result.added + result.removed > 0  # o_old's 互动 ages out (time, not an event)
    changed = rows(project, "SELECT COUNT(*) FROM tagdsl_changes WHERE run_id = :r AND openid = 'o_new'", r=result.run_id)
    assert rows(project, "SELECT 1") and changed == [(0,)]


def test_existing_follower_matches_apply_including_expiry_and_limit(server, project):
    base = Path(project.base_dir)
    copy_store(base / "store.db", base / "baseline.db")
    before = {t for (t,) in rows(project, "SELECT tag FROM tagdsl_memberships WHERE openid = 'o_old'")}
    # The daily apply: VIP (manual) + 3 computed under the limit of 4; 活跃-B and 门店粉丝 held back.
    assert before == {"VIP", "菜单活跃", "互动", "已关注"}

    assert post_aes(server.port, text_xml("o_old", "1", 7002)) == (200, "success")

    # The same event, and apply at the same instant, on the baseline copy.
    event = rows(project, "SELECT openid, type, key, occurred_at FROM events WHERE openid = 'o_old' AND key = '1'")
    assert len(event) == 1
    other = f"sqlite:///{base / 'baseline.db'}"
    db = store.connect(other)
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO events (openid, type, key, occurred_at) VALUES (:o, :t, :k, :w)"),
                     dict(zip("otkw", event[0])))
    db.dispose()
    result = apply_at(project, T, other)

    def follower_state(url):
        engine = store.connect(url)
        with engine.connect() as conn:
            members = set(conn.execute(sa.text("SELECT tag, source FROM tagdsl_memberships WHERE openid = 'o_old'")))
            expired = set(conn.execute(sa.text("SELECT tag, assigned_at FROM tagdsl_expirations WHERE openid = 'o_old'")))
            last = conn.execute(sa.text("SELECT MAX(id) FROM tagdsl_runs")).scalar()
            changed = set(conn.execute(sa.text("SELECT tag, action, reason FROM tagdsl_changes "
                                               "WHERE openid = 'o_old' AND run_id = :r"), {"r": last}))
            dropped = set(conn.execute(sa.text("SELECT tag, priority FROM tagdsl_drops "
                                               "WHERE openid = 'o_old' AND run_id = :r"), {"r": last}))
        engine.dispose()
        return members, expired, changed, dropped

    served = follower_state(project.database_url)
    applied = follower_state(other)
    assert served == applied
    members, expired, changed, dropped = served
    assert ("互动", "removed", "expired") in changed  # assigned two days ago, expires after one
    assert ("活跃-A", "added", "rule") in changed  # the fourth event moves the exclusive group
    assert {t for t, _ in dropped} == {"门店粉丝", "领礼意向", "高意向"}
    assert result.removed >= 1


def test_keyword_rule_through_the_text_path(server, project):
    assert post_plain(server.port, text_xml("o_quiet", "2", 8001)) == (200, "success")
    tags = lambda: {t for (t,) in rows(project, "SELECT tag FROM tagdsl_memberships WHERE openid = 'o_quiet'")}  # noqa: E731
    assert "领礼意向" not in tags()
    assert post_plain(server.port, text_xml("o_quiet", "1", 8002)) == (200, "success")
    assert "领礼意向" in tags()


def test_retries_are_processed_once(server, project):
    xml = text_xml("o_quiet", "1", 9001)
    for _ in range(3):
        assert post_plain(server.port, xml) == (200, "success")
    click = event_xml("o_quiet", "CLICK", "会员中心")
    for _ in range(2):
        assert post_aes(server.port, click) == (200, "success")
    # A different click a second later is another event.
    assert post_plain(server.port, event_xml("o_quiet", "CLICK", "会员中心", NOW)) == (200, "success")
    got = rows(project, "SELECT type, key FROM events WHERE openid = 'o_quiet' ORDER BY occurred_at")
    assert got == [("text", "1"), ("menu_click", "会员中心"), ("menu_click", "会员中心")]
    # Added once by the text; the second click makes 菜单活跃 (priority 5) hold, and the limit of 4 drops it.
    audit = rows(project, "SELECT action, reason FROM tagdsl_changes WHERE openid = 'o_quiet' AND tag = '领礼意向' "
                          "ORDER BY run_id")
    assert audit == [("added", "rule"), ("removed", "limit")]
    assert rows(project, "SELECT COUNT(*) FROM tagdsl_serve_seen WHERE openid = 'o_quiet'") == [(3,)]


def test_unsubscribe_view_scan_and_other_types(server, project):
    assert post_plain(server.port, event_xml("o_quiet", "unsubscribe", created=NOW - 9)) == (200, "success")
    assert post_plain(server.port, event_xml("o_quiet", "VIEW", "https://shop.example/cart", NOW - 8))[0] == 200
    assert post_plain(server.port, event_xml("o_quiet", "SCAN", "storeC", NOW - 7))[0] == 200
    image = (f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>o_quiet</FromUserName><CreateTime>{NOW - 6}"
             "</CreateTime><MsgType>image</MsgType><PicUrl>http://x/y.jpg</PicUrl><MsgId>555</MsgId></xml>")
    assert post_plain(server.port, image)[0] == 200
    job = event_xml("o_quiet", "TEMPLATESENDJOBFINISH", created=NOW - 5)
    assert post_plain(server.port, job)[0] == 200  # acknowledged, not a follower interaction
    got = rows(project, "SELECT type, key FROM events WHERE openid = 'o_quiet' ORDER BY occurred_at")
    assert got == [("unsubscribe", ""), ("menu_view", "https://shop.example/cart"), ("scan", "storeC"), ("image", "")]
    assert rows(project, "SELECT subscribed FROM followers WHERE openid = 'o_quiet'") == [(0,)]
    assert "已关注" not in {t for (t,) in rows(project, "SELECT tag FROM tagdsl_memberships WHERE openid = 'o_quiet'")}


def test_affected_rules_are_precomputed_per_event_type(server):
    p = server.app.processor
    assert p.affected("text") == {"领礼意向", "互动", "高意向", "活跃-A", "活跃-B"}
    assert p.affected("menu_click") == {"菜单活跃", "互动", "高意向", "活跃-A", "活跃-B"}
    assert p.affected("unsubscribe") == {"已关注", "活跃-A", "活跃-B"}
    assert p.affected("subscribe") == {"门店粉丝", "已关注", "互动", "活跃-A", "活跃-B"}
    assert "下单" not in p.affected("text")
    assert "下单" in p.affected(None, new_follower=True)


# -- refused requests change nothing --------------------------------------------------------------

@pytest.mark.parametrize("case", [
    "bad_signature", "missing_signature", "stale_timestamp", "future_timestamp", "malformed_xml", "oversized",
    "doctype", "entity_in_encrypted", "wrong_appid", "bad_msg_signature", "missing_fields", "not_utf8",
])
def test_refused_requests_change_nothing(server, project, case):
    before = state(project)
    xml = text_xml("o_quiet", "1", 1234)
    port = server.port
    if case == "bad_signature":
        status, _ = post_plain(port, xml, signature="0" * 40)
    elif case == "missing_signature":
        status, _ = request(port, "POST", f"timestamp={NOW}&nonce=x", xml.encode())
    elif case == "stale_timestamp":
        status, _ = post_plain(port, xml, timestamp=NOW - 301)
    elif case == "future_timestamp":
        status, _ = post_plain(port, xml, timestamp=NOW + 301)
    elif case == "malformed_xml":
        status, _ = post_plain(port, "<xml><FromUserName>o_quiet</FromUserName>")
    elif case == "oversized":
        status, _ = post_plain(port, xml.replace("<Content><![CDATA[1]]>", "<Content><![CDATA[" + "1" * 70_000 + "]]>"))
    elif case == "doctype":
        bomb = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
                + xml.replace("<Content><![CDATA[1]]></Content>", "<Content>&b;</Content>"))
        status, _ = post_plain(port, bomb)
    elif case == "entity_in_encrypted":
        status, _ = post_aes(port, '<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + xml)
    elif case == "wrong_appid":
        status, _ = post_aes(port, xml, appid="wx_someone_else_00")
    elif case == "bad_msg_signature":
        envelope = WeChatCrypto(TOKEN, AES_KEY, APPID).encrypt_message(xml, "n", str(NOW))
        sig = sha1_signature(TOKEN, str(NOW), "n")
        status, _ = request(port, "POST", f"signature={sig}&timestamp={NOW}&nonce=n&encrypt_type=aes&msg_signature="
                                          + "f" * 40, envelope.encode())
    elif case == "missing_fields":
        status, _ = post_plain(port, "<xml><MsgType>text</MsgType><Content>1</Content></xml>")
    elif case == "not_utf8":
        sig = sha1_signature(TOKEN, str(NOW), "n")
        status, _ = request(port, "POST", f"signature={sig}&timestamp={NOW}&nonce=n", xml.encode("utf-16"))
    assert 400 <= status < 500, (case, status)
    assert state(project) == before


def test_missing_credentials_exit_2_with_one_line(project, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env["WECHAT_TOKEN"] = TOKEN
    proc = subprocess.run([sys.executable, "-m", "cli", "serve", "--config", str(tmp_path / "tagdsl.toml"),
                           "--port", "0"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: environment variable WECHAT_AES_KEY (the EncodingAESKey, [wechat_mp] aes_key_env) is not set"]


# -- a killed server loses no acknowledged push ---------------------------------------------------

def _start(project, env):
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(Path(project.base_dir) / "tagdsl.toml"),
                             "--port", "0", "--replay-window", "100000000"], env=env, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    line = proc.stderr.readline()
    assert line.startswith("listening on http://127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def test_sigkill_loses_no_acknowledged_push(project):
    apply_at(project, T - dt.timedelta(days=2))
    env = {**os.environ, **ENV}
    proc, port = _start(project, env)
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        while not stop.is_set():
            msg_id = worker * 1_000_000 + n
            n += 1
            now = int(time.time())
            sig = sha1_signature(TOKEN, str(now), "k")
            try:
                conn.request("POST", f"/wechat?signature={sig}&timestamp={now}&nonce=k",
                             body=text_xml(f"o_load{worker}", str(msg_id), msg_id, now).encode())
                resp = conn.getresponse()
                if resp.read() == b"success" and resp.status == 200:
                    with lock:
                        acknowledged.append(msg_id)
            except (OSError, http.client.HTTPException):
                return

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while True:  # kill once a good number were acknowledged, while requests are in flight
        with lock:
            if len(acknowledged) >= 60:
                break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    proc.stderr.close()

    stored = {int(k) for (k,) in rows(project, "SELECT key FROM events WHERE type = 'text' AND openid LIKE 'o_load%'")}
    assert set(acknowledged) <= stored
    # Restarted, it serves again, and a retry of a stored push is not stored twice.
    proc, port = _start(project, env)
    try:
        now = int(time.time())
        worker, n = divmod(acknowledged[0], 1_000_000)
        sig = sha1_signature(TOKEN, str(now), "k")
        status = request(port, "POST", f"signature={sig}&timestamp={now}&nonce=k",
                         text_xml(f"o_load{worker}", str(acknowledged[0]), acknowledged[0], now).encode())
        assert status == (200, "success")
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    again = rows(project, "SELECT COUNT(*) FROM events WHERE key = :k", k=str(acknowledged[0]))
    assert again == [(1,)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_gracefully(project, signum):
    env = {**os.environ, **ENV}
    proc, port = _start(project, env)
    try:
        now = int(time.time())
        sig = sha1_signature(TOKEN, str(now), "g")
        assert request(port, "POST", f"signature={sig}&timestamp={now}&nonce=g",
                       text_xml("o_quiet", "1", 4242, now).encode()) == (200, "success")
        # An idle keep-alive connection does not hold the shutdown up.
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle.request("GET", f"/wechat?signature={sig}&timestamp={now}&nonce=g&echostr=e")
        assert idle.getresponse().read() == b"e"
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert rows(project, "SELECT key FROM events WHERE openid = 'o_quiet' AND type = 'text'") == [("1",)]
