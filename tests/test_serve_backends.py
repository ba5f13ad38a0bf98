"""`tagdsl serve` on every backend (SQLite always; PostgreSQL and MariaDB when
their URLs are set): real signed HTTP requests, passive replies (plaintext
and safe mode, decrypted with wechatpy), retries, and the store afterwards
equal to what `apply` computes."""

from __future__ import annotations

import datetime as dt
import http.client

import pytest
import xmltodict
from wechatpy.crypto import WeChatCrypto

from dbs import BACKENDS, isolated_engine
from runtime.engine import Engine
from runtime.server import make_server
from tagdsl import load_ruleset
from tagdsl.config import load_config
# The server's clock, credentials and push builders are test_server's.
from test_server import ACCOUNT, AES_KEY, APPID, ENV, NOW, TOKEN, TZ, T, event_xml, text_xml
from test_server import FIRST_CLICK, HELLO, fill_store
from test_server import rows as query
from test_server import sha1_signature as sha1

# No time windows: whatever the server writes, an apply at the same instant must leave alone.
RULES = """
tag "领礼意向" when exists(events where type == "text" and key == "1") { priority 3  reply "感谢参与！回复]]>不会破坏 XML" }
tag "门店粉丝" when subscribe_scene == "ADD_SCENE_QR_CODE" and starts_with(qr_scene_str, "store") {
  priority 1
  reply "欢迎光临门店"
}
tag "已关注" when subscribed == true { reply "欢迎关注" }
tag "菜单活跃" when count(events where type == "menu_click") >= 2 { reply "会员中心在这里" }
tag "VIP" manual
group "活跃度" exclusive {
  tag "活跃-A" when count(events) >= 4
  tag "活跃-B" when count(events) >= 1
}
"""


def config_text(url: str) -> str:
    return f"""
[project]
rulesets = ["rules"]
[database]
url = "{url}"
[limits]
max_tags_per_follower = 3
[wechat_mp]
appid = "{APPID}"
"""


@pytest.fixture(params=BACKENDS)
def served(request, tmp_path):
    """(config, server) on a fresh database of each backend, the store as a daily apply left it."""
    with isolated_engine(request.param, tmp_path) as (_engine, url):
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "t.tag").write_text(RULES, encoding="utf-8")
        (tmp_path / "tagdsl.toml").write_text(config_text(url), encoding="utf-8")
        config = load_config(tmp_path / "tagdsl.toml")
        fill_store(url, config, [FIRST_CLICK, HELLO])
        ruleset = load_ruleset(config.ruleset_paths(), config)
        with Engine(config, url) as engine:
            engine.apply(ruleset, as_of=T - dt.timedelta(days=2))
        server = make_server(config, ruleset, url, port=0, environ=ENV, clock=lambda: T.replace(tzinfo=TZ),
                             wall_clock=lambda: NOW)
        server.start_background()
        try:
            yield config, server
        finally:
            server.shutdown()
            server.server_close()
            server.app.processor.db.dispose()


def post(port, query_string, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/wechat?" + query_string, body=body)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read().decode("utf-8")
    finally:
        conn.close()


def post_plain(port, xml, nonce="n1"):
    return post(port, f"signature={sha1(TOKEN, str(NOW), nonce)}&timestamp={NOW}&nonce={nonce}", xml.encode())


def post_aes(port, xml, nonce="n2"):
    envelope = WeChatCrypto(TOKEN, AES_KEY, APPID).encrypt_message(xml, nonce, str(NOW))
    msg_signature = xmltodict.parse(envelope)["xml"]["MsgSignature"]
    return post(port, f"signature={sha1(TOKEN, str(NOW), nonce)}&timestamp={NOW}&nonce={nonce}"
                      f"&encrypt_type=aes&msg_signature={msg_signature}", envelope.encode())


def plain_reply(answer):
    status, content_type, body = answer
    assert status == 200 and body != "success", answer
    assert content_type.startswith("application/xml")
    return xmltodict.parse(body)["xml"]


def decrypted_reply(answer):
    """The passive reply of a safe-mode answer: the envelope's signature checked and decrypted by wechatpy."""
    status, content_type, body = answer
    assert status == 200 and body != "success", answer
    envelope = xmltodict.parse(body)["xml"]
    assert set(envelope) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    plain = WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
        body, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"])
    return xmltodict.parse(plain)["xml"]


def test_pushes_replies_retries_and_apply_agrees(served):
    config, server = served
    port = server.port

    # A new follower subscribes by a store QR code: gains 门店粉丝 (priority 1), 已关注 and 活跃-B
    # (priority 0): the reply of the highest priority wins.
    reply = plain_reply(post_plain(port, event_xml("o_new", "subscribe", "qrscene_storeA", NOW - 5)))
    assert reply == {"ToUserName": "o_new", "FromUserName": ACCOUNT, "CreateTime": str(NOW), "MsgType": "text",
                     "Content": "欢迎光临门店"}

    # Safe mode: the keyword gains 领礼意向 (priority 3; the limit of 3 drops 活跃-B for it).
    keyword = text_xml("o_new", "1", 7001, NOW - 3)
    first = decrypted_reply(post_aes(port, keyword))
    assert first["ToUserName"] == "o_new" and first["FromUserName"] == ACCOUNT and first["MsgType"] == "text"
    assert first["Content"] == "感谢参与！回复]]>不会破坏 XML"
    # WeChat retries when it missed the answer: the same reply, nothing stored twice.
    assert decrypted_reply(post_aes(port, keyword, nonce="n3"))["Content"] == first["Content"]
    assert plain_reply(post_plain(port, keyword))["Content"] == first["Content"]

    # A push that makes the follower gain nothing is answered `success`.
    assert post_plain(port, text_xml("o_new", "你好", 7002, NOW - 2))[::2] == (200, "success")
    assert post_aes(port, text_xml("o_quiet", "2", 7003, NOW - 2))[::2] == (200, "success")
    # o_old's second click: 菜单活跃 holds, but the limit of 3 (VIP is manual and counts) holds it back.
    assert post_aes(port, event_xml("o_old", "CLICK", "会员中心", NOW - 1))[::2] == (200, "success")
    # The same click retried within the same second is the same event.
    assert post_plain(port, event_xml("o_old", "CLICK", "会员中心", NOW - 1))[::2] == (200, "success")

    assert query(config, "SELECT COUNT(*) FROM events WHERE occurred_at > :t", t=T - dt.timedelta(days=1)) == [(5,)]
    assert query(config, "SELECT COUNT(*) FROM tagdsl_serve_seen") == [(5,)]
    held = {t for (t,) in query(config, "SELECT tag FROM tagdsl_memberships WHERE openid = 'o_new'")}
    assert held == {"领礼意向", "门店粉丝", "已关注"}
    assert query(config, "SELECT subscribed, subscribe_scene, qr_scene_str FROM followers WHERE openid = 'o_new'"
                 ) in ([(True, "ADD_SCENE_QR_CODE", "storeA")], [(1, "ADD_SCENE_QR_CODE", "storeA")])

    # What the server wrote is what apply computes at the same instant: apply changes nothing.
    server.shutdown()
    ruleset = load_ruleset(config.ruleset_paths(), config)
    with Engine(config, config.database_url) as engine:
        result = engine.apply(ruleset, as_of=T)
    assert (result.added, result.removed) == (0, 0)
    for openid in ("o_new", "o_old", "o_quiet"):
        last_apply = query(config, "SELECT tag FROM tagdsl_drops WHERE run_id = :r AND openid = :o ORDER BY tag",
                           r=result.run_id, o=openid)
        last_event = query(config, "SELECT d.tag FROM tagdsl_drops d WHERE d.openid = :o AND d.run_id = "
                                   "(SELECT MAX(run_id) FROM tagdsl_serve_seen WHERE openid = :o) ORDER BY d.tag",
                           o=openid)
        if last_event:
            assert last_event == last_apply


def test_reply_choice_is_priority_then_file_order(served):
    _config, server = served
    p = server.app.processor
    assert p.reply_for(["已关注", "门店粉丝"]) == "欢迎光临门店"  # priority 1 over 0
    assert p.reply_for(["菜单活跃", "已关注"]) == "欢迎关注"  # both priority 0: the first in the file
    assert p.reply_for(["活跃-A", "活跃-B"]) is None
