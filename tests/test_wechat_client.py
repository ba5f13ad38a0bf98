"""runtime.wechat over real HTTP: wechatpy talks to the fake WeChat server in tests/fakewechat.py.

Nothing is mocked: every call crosses a socket on 127.0.0.1, and the fake answers with the
official paths, JSON shapes and error codes (including injected faults).
"""
from __future__ import annotations

import pickle
import random
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import requests
from wechatpy.session.memorystorage import MemoryStorage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runtime/ is imported from the checkout, also under plain `pytest`
    sys.path.insert(0, str(ROOT))

try:
    from tests.fakewechat import FakeWeChat, FakeWeChatProcess, Limits
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fakewechat import FakeWeChat, FakeWeChatProcess, Limits

from runtime.wechat import (
    MP_API_BASE_URL,
    WECOM_API_BASE_URL,
    InMemoryTokenStorage,
    QuotaExhausted,
    WeChatError,
    call_with_retry,
    chunks,
    make_mp_client,
    make_wecom_client,
    redact,
)

FAST = {"base_delay": 0.001, "max_delay": 0.01}  # real backoff shape, negligible waits


@pytest.fixture
def fake():
    with FakeWeChat() as server:
        yield server
        assert not server.errors, server.errors[0]  # a bug in the fake would hide behind a 500


def mp(fake, **kw):
    return make_mp_client(fake.appid, fake.secret, api_base_url=fake.base_url, timeout=kw.pop("timeout", 5), **kw)


def wecom(fake, **kw):
    return make_wecom_client(fake.corpid, fake.corpsecret, api_base_url=fake.base_url,
                             timeout=kw.pop("timeout", 5), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_no_secret(err: BaseException, *secrets: str) -> None:
    """Neither the message, the repr nor a printed traceback may contain a secret."""
    shown = [str(err), repr(err), "".join(traceback.format_exception(err)), str(vars(err))]
    for secret in secrets:
        for text in shown:
            assert secret not in text


# ---------------------------------------------------------------------------- tokens


def test_defaults_are_the_official_hosts():
    client = make_mp_client("wx0000000000000000", "0" * 32)
    assert client.API_BASE_URL == MP_API_BASE_URL == "https://api.weixin.qq.com/cgi-bin/"
    assert make_wecom_client("ww0", "s" * 43).API_BASE_URL == WECOM_API_BASE_URL


def test_absolute_official_urls_are_rebased():
    """wechatpy API classes with their own absolute base must not reach the real host."""
    client = make_mp_client("wx0", "0" * 32, api_base_url="http://127.0.0.1:9/cgi-bin")
    assert client.API_BASE_URL == "http://127.0.0.1:9/cgi-bin/"
    assert client._rebase("https://api.weixin.qq.com/cgi-bin/tags/get") == "http://127.0.0.1:9/cgi-bin/tags/get"
    assert client._rebase("https://api.weixin.qq.com/wxa/getwxacode") == "http://127.0.0.1:9/wxa/getwxacode"


def test_token_is_fetched_from_the_configured_base_and_cached(fake):
    client = mp(fake)
    tags = call_with_retry(client.tag.get)
    call_with_retry(client.tag.get)

    assert {"id": 2, "name": "星标组", "count": 0} in tags
    assert fake.calls["token"] == 1  # the fake got the token request; the second call reused it
    token_request = next(r for r in fake.requests if r["endpoint"] == "token")
    assert token_request["query"]["appid"] == fake.appid
    assert token_request["query"]["grant_type"] == "client_credential"
    api_calls = [r for r in fake.requests if r["endpoint"] == "tags/get"]
    assert len(api_calls) == 2 and all(r["errcode"] == 0 for r in api_calls)


def test_wecom_token_is_fetched_from_the_configured_base(fake):
    fake.add_follow_user("zhangsan")
    client = wecom(fake)
    assert call_with_retry(client.external_contact.get_follow_user_list)["follow_user"] == ["zhangsan"]
    assert fake.calls["gettoken"] == 1
    assert next(r for r in fake.requests if r["endpoint"] == "gettoken")["query"]["corpid"] == fake.corpid


def test_wrong_secret_is_not_retried_and_not_shown(fake):
    client = make_mp_client(fake.appid, "wrongsecret0123456789", api_base_url=fake.base_url)
    with pytest.raises(WeChatError) as info:
        call_with_retry(client.tag.get, **FAST)
    assert info.value.errcode == 40125 and info.value.token_fetch
    assert fake.calls["token"] == 1 and fake.calls["tags/get"] == 0
    assert_no_secret(info.value, "wrongsecret0123456789")


def test_token_expired_on_the_server_is_refreshed_once(fake):
    client = mp(fake)
    call_with_retry(client.tag.get)
    fake.expire_tokens()  # server-side expiry the client cannot know about

    tag = call_with_retry(lambda: client.tag.create("新客"), **FAST)

    assert tag["name"] == "新客" and fake.mp_tags()["新客"] == tag["id"]
    assert fake.calls["token"] == 2
    assert [r["errcode"] for r in fake.requests if r["endpoint"] == "tags/create"] == [42001, 0]


def test_token_lifetime_elapses_on_a_storage_without_ttl():
    """wechatpy's MemoryStorage ignores ttl: the client learns of the expiry from 42001."""
    with FakeWeChat(token_lifetime=1) as fake:
        client = mp(fake, session=MemoryStorage())
        call_with_retry(client.tag.get)
        time.sleep(1.05)
        call_with_retry(client.tag.get, **FAST)
        assert [r["errcode"] for r in fake.requests if r["endpoint"] == "tags/get"] == [0, 42001, 0]
        assert fake.calls["token"] == 2


def test_ttl_storage_refreshes_before_expiry(fake):
    now = [1000.0]
    storage = InMemoryTokenStorage(clock=lambda: now[0])
    client = mp(fake, session=storage)
    call_with_retry(client.tag.get)
    now[0] += 7200 - 301  # still inside the cache ttl (lifetime minus a 5-minute margin)
    call_with_retry(client.tag.get)
    assert fake.calls["token"] == 1
    now[0] += 2
    call_with_retry(client.tag.get)
    assert fake.calls["token"] == 2
    assert all(r["errcode"] == 0 for r in fake.requests)  # refreshed before WeChat said 42001


def test_wecom_token_key_does_not_contain_the_secret(fake):
    client = wecom(fake)
    assert fake.corpsecret[:6] not in client.access_token_key
    other = make_wecom_client(fake.corpid, "another-app-secret-xyz", api_base_url=fake.base_url)
    assert other.access_token_key != client.access_token_key  # two apps of one corp stay apart


# ---------------------------------------------------------------------------- retry policy


def test_system_busy_is_retried_with_jittered_backoff(fake):
    fake.queue_faults("tags/get", "busy", "busy")
    sleeps: list[float] = []
    tags = call_with_retry(mp(fake).tag.get, base_delay=1.0, max_delay=3.0, sleep=sleeps.append,
                           rng=random.Random(1))
    assert any(t["id"] == 2 for t in tags)
    assert fake.calls["tags/get"] == 3
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0  # full jitter caps


def test_system_busy_gives_up_after_max_attempts(fake):
    fake.queue_faults("tags/get", *["busy"] * 5)
    with pytest.raises(WeChatError) as info:
        call_with_retry(mp(fake).tag.get, max_attempts=3, sleep=lambda s: None)
    assert info.value.errcode == -1 and info.value.attempts == 3
    assert fake.calls["tags/get"] == 3


def test_quota_exhausted_is_raised_at_once(fake):
    tag = fake.add_tag("VIP")
    openids = fake.add_followers(3)
    fake.set_quota("tags/members/batchtagging", 2)
    client = mp(fake)
    for openid in openids[:2]:
        call_with_retry(lambda: client.tag.tag_user(tag, [openid]))
    with pytest.raises(QuotaExhausted) as info:
        call_with_retry(lambda: client.tag.tag_user(tag, [openids[2]]), sleep=pytest.fail)
    assert info.value.errcode == 45009
    assert fake.calls["tags/members/batchtagging"] == 3  # no retry
    assert fake.mp_members(tag) == set(openids[:2])


def test_injected_quota_fault_is_quota_exhausted(fake):
    fake.queue_faults("user/get", "quota")
    with pytest.raises(QuotaExhausted):
        call_with_retry(mp(fake).user.get_followers, sleep=pytest.fail)


def test_dropped_connection_is_a_network_error_and_is_retried(fake):
    client = mp(fake)
    fake.queue_faults("tags/get", "drop")
    with pytest.raises(WeChatError) as info:
        client.tag.get()  # without the retry wrapper
    assert info.value.kind == "network" and info.value.errcode is None and info.value.retryable

    fake.queue_faults("tags/get", "drop")
    assert call_with_retry(client.tag.get, **FAST)
    assert [r["fault"] for r in fake.requests if r["endpoint"] == "tags/get"] == ["drop", "drop", None]


def test_timeout_is_retried():
    with FakeWeChat(slow_delay=0.5) as fake:
        client = mp(fake, timeout=0.15)
        call_with_retry(client.tag.get)  # token fetched before the slow call
        fake.queue_faults("tags/get", "slow")
        started = time.monotonic()
        assert call_with_retry(client.tag.get, **FAST)
        assert time.monotonic() - started < 0.45  # gave up on the slow answer, did not wait for it
        assert [r["fault"] for r in fake.requests if r["endpoint"] == "tags/get"] == [None, "slow", None]


def test_unexpected_error_is_raised_with_code_and_message(fake):
    client = mp(fake)
    with pytest.raises(WeChatError) as info:
        call_with_retry(lambda: client.tag.delete(2), sleep=pytest.fail)  # 星标组 is a system tag
    err = info.value
    assert (err.errcode, err.kind, err.endpoint) == (45058, "api", "tags/delete")
    assert "can't modify sys tag" in err.errmsg and "45058" in str(err)
    assert not isinstance(err, QuotaExhausted) and fake.calls["tags/delete"] == 1


def test_ambiguous_create_reports_the_duplicate(fake):
    """A create applied before the connection dropped: the retry sees 45157 (name exists)."""
    fake.queue_faults("tags/create", "drop_after")
    client = mp(fake)
    with pytest.raises(WeChatError) as info:
        call_with_retry(lambda: client.tag.create("沉默"), **FAST)
    assert info.value.errcode == 45157
    assert "沉默" in fake.mp_tags()  # it was created: the sync must re-read tags/get here


# ---------------------------------------------------------------------------- secrets


def test_connection_refused_error_hides_the_secret():
    secret = "S3cr3tAppSecretValue0123456789ab"
    url = f"http://127.0.0.1:{free_port()}/cgi-bin/"
    with pytest.raises(requests.ConnectionError) as raw:  # the pitfall this guards against
        requests.get(url + "token", params={"secret": secret}, timeout=2)
    assert secret in str(raw.value)

    client = make_mp_client("wx1234567890abcdef", secret, api_base_url=url, timeout=2)
    with pytest.raises(WeChatError) as info:
        call_with_retry(client.tag.get, max_attempts=2, sleep=lambda s: None)
    err = info.value
    assert err.kind == "network" and err.attempts == 2 and err.endpoint == "token"
    assert "secret=***" in str(err)
    assert_no_secret(err, secret)
    assert err.__cause__ is None and err.__context__ is None
    assert_no_secret(pickle.loads(pickle.dumps(err)), secret)


def test_access_token_never_appears_in_errors():
    with FakeWeChat() as fake:
        client = mp(fake, timeout=2)
        call_with_retry(client.tag.get)
        token = client.session.get(client.access_token_key)
        fake.queue_faults("tags/get", "busy")
        with pytest.raises(WeChatError) as busy:
            call_with_retry(client.tag.get, max_attempts=1)
    # the server is gone: requests' message would carry the URL with ?access_token=...
    with pytest.raises(WeChatError) as info:
        call_with_retry(client.tag.get, max_attempts=1)
    assert info.value.kind == "network"
    for err in (busy.value, info.value):
        assert_no_secret(err, token, fake.secret)


def test_wecom_errors_hide_the_corp_secret():
    secret = "CorpSecretForContacts_0123456789abcdefghij"
    client = make_wecom_client("ww1234", secret, api_base_url=f"http://127.0.0.1:{free_port()}/cgi-bin/")
    with pytest.raises(WeChatError) as info:
        call_with_retry(client.external_contact.get_follow_user_list, max_attempts=1)
    assert "corpsecret=***" in str(info.value)
    assert_no_secret(info.value, secret)


def test_redact():
    text = ('GET /cgi-bin/gettoken?corpid=ww1&corpsecret=abc%2Bdef&x=1 '
            '/cgi-bin/tags/get?access_token=72_TOKEN-value {"secret": "p@ss word"} my-own-secret')
    out = redact(text, ["my-own-secret"])
    for leaked in ("abc%2Bdef", "72_TOKEN-value", "p@ss word", "my-own-secret"):
        assert leaked not in out
    assert "corpid=ww1" in out and "&x=1" in out


# ---------------------------------------------------------------------------- official account limits


def test_batchtagging_over_50_is_refused_and_chunks_fit(fake):
    tag = fake.add_tag("高价值")
    openids = fake.add_followers(51)
    client = mp(fake)
    with pytest.raises(WeChatError) as info:
        call_with_retry(lambda: client.tag.tag_user(tag, openids))
    assert info.value.errcode == 40032 and fake.mp_members(tag) == set()

    fake.reset_counters()
    for batch in chunks(openids, 50):
        call_with_retry(lambda: client.tag.tag_user(tag, batch))
    assert fake.calls["tags/members/batchtagging"] == 2  # the minimum for 51 followers
    assert fake.mp_members(tag) == set(openids)


def test_a_follower_cannot_carry_21_tags(fake):
    full, other = fake.add_followers(2)
    tags = [fake.add_tag(f"标签{i}") for i in range(21)]
    for tag in tags[:20]:
        fake.set_members(tag, [full])
    client = mp(fake)
    with pytest.raises(WeChatError) as info:
        call_with_retry(lambda: client.tag.tag_user(tags[20], [other, full]))
    assert info.value.errcode == 45059
    assert fake.mp_tags_of(full) == tags[:20] and fake.mp_tags_of(other) == []  # nothing applied
    assert call_with_retry(lambda: client.tag.get_user_tag(full)) == tags[:20]


def test_tag_name_and_count_limits():
    with FakeWeChat(limits=Limits(mp_max_tags=2)) as fake:
        client = mp(fake)
        errcode = lambda fn: pytest.raises(WeChatError, call_with_retry, fn).value.errcode  # noqa: E731
        assert errcode(lambda: client.tag.create("长" * 11)) == 45158  # 33 bytes of UTF-8
        call_with_retry(lambda: client.tag.create("长" * 10))  # 30 bytes: fine
        assert errcode(lambda: client.tag.create("长" * 10)) == 45157
        call_with_retry(lambda: client.tag.create("VIP"))
        assert errcode(lambda: client.tag.create("沉默")) == 45056


def test_tag_with_too_many_fans_cannot_be_deleted():
    with FakeWeChat(limits=Limits(mp_delete_max_fans=3)) as fake:
        big, small = fake.add_tag("老客"), fake.add_tag("新客")
        openids = fake.add_followers(4)
        fake.set_members(big, openids)
        fake.set_members(small, openids[:3])
        client = mp(fake)
        assert pytest.raises(WeChatError, call_with_retry, lambda: client.tag.delete(big)).value.errcode == 45057
        call_with_retry(lambda: client.tag.delete(small))
        assert "新客" not in fake.mp_tags() and fake.mp_tags_of(openids[0]) == [big]


def test_foreign_openid_is_refused(fake):
    tag = fake.add_tag("VIP")
    client = mp(fake)
    with pytest.raises(WeChatError) as info:
        call_with_retry(lambda: client.tag.tag_user(tag, ["oAAAAAAAAAAAAAAAAAAAAAAAAAAA"]))
    assert info.value.errcode == 49003


def test_user_get_pages_25000_followers(fake):
    seeded = fake.add_followers(25_000)
    client = mp(fake)

    first = call_with_retry(client.user.get_followers)
    assert (first["total"], first["count"], len(first["data"]["openid"])) == (25_000, 10_000, 10_000)
    assert first["next_openid"] == first["data"]["openid"][-1]

    fake.reset_counters()
    assert list(client.user.iter_followers()) == seeded
    assert fake.calls["user/get"] == 4  # 10,000 + 10,000 + 5,000 + the empty page that ends it
    last = fake.requests[-1]
    assert last["query"]["next_openid"] == seeded[-1] and last["errcode"] == 0


def test_tag_fans_page_by_next_openid(fake):
    tag = fake.add_tag("老客")
    members = fake.add_followers(12_345)
    fake.set_members(tag, members)
    client = mp(fake)
    assert list(client.tag.iter_tag_users(tag)) == members
    assert fake.calls["user/tag/get"] == 3
    assert next(t for t in call_with_retry(client.tag.get) if t["id"] == tag)["count"] == 12_345


def test_batchget_user_info_shape(fake):
    openids = fake.add_followers(101, unionid=True)
    tag = fake.add_tag("VIP")
    fake.set_members(tag, openids[:1])
    client = mp(fake)
    infos = call_with_retry(lambda: client.user.get_batch(openids[:100]))
    assert [i["openid"] for i in infos] == openids[:100]
    first = infos[0]
    assert first["subscribe"] == 1 and first["tagid_list"] == [tag] and first["nickname"] == ""
    assert isinstance(first["subscribe_time"], int) and first["unionid"]
    assert {"language", "remark", "groupid", "subscribe_scene", "qr_scene", "qr_scene_str", "sex"} <= set(first)
    with pytest.raises(WeChatError) as info:
        call_with_retry(lambda: client.user.get_batch(openids))
    assert info.value.errcode == 40032


# ---------------------------------------------------------------------------- WeCom


def test_wecom_corp_tags_and_mark_tag_round_trip(fake):
    ext = fake.add_external_contact(["zhangsan"], name="李四")
    stranger = fake.add_external_contact(["lisi"])
    client = wecom(fake)
    ec = client.external_contact

    group = call_with_retry(lambda: ec.add_corp_tag(None, "客户等级", None, [{"name": "高价值"}, {"name": "沉默"}]))
    ids = {t["name"]: t["id"] for t in group["tag_group"]["tag"]}
    assert set(ids) == {"高价值", "沉默"} and group["tag_group"]["group_name"] == "客户等级"
    listed = call_with_retry(ec.get_corp_tag_list)["tag_group"]
    assert [(g["group_id"], {t["id"] for t in g["tag"]}) for g in listed] == \
        [(group["tag_group"]["group_id"], set(ids.values()))]

    call_with_retry(lambda: ec.mark_tag("zhangsan", ext, add_tag=[ids["高价值"], ids["沉默"]]))
    call_with_retry(lambda: ec.mark_tag("zhangsan", ext, remove_tag=[ids["沉默"]]))
    assert fake.wecom_tags_of("zhangsan", ext) == {ids["高价值"]}

    # importing followers and their tags: get, and batch/get_by_user (not wrapped by wechatpy 1.8)
    detail = call_with_retry(lambda: ec.get(ext))
    assert detail["external_contact"]["name"] == "李四"
    assert detail["follow_user"][0]["tags"] == [
        {"group_name": "客户等级", "tag_name": "高价值", "tag_id": ids["高价值"], "type": 1}]
    batch = call_with_retry(lambda: client.post("externalcontact/batch/get_by_user",
                                                data={"userid_list": ["zhangsan", "lisi"], "limit": 1}))
    assert batch["external_contact_list"][0]["follow_info"]["tag_id"] == [ids["高价值"]]
    rest = call_with_retry(lambda: client.post("externalcontact/batch/get_by_user", data={
        "userid_list": ["zhangsan", "lisi"], "limit": 1, "cursor": batch["next_cursor"]}))
    assert rest["external_contact_list"][0]["external_contact"]["external_userid"] == stranger
    assert rest["next_cursor"] == ""

    errcode = lambda fn: pytest.raises(WeChatError, call_with_retry, fn).value.errcode  # noqa: E731
    assert errcode(lambda: ec.mark_tag("zhangsan", stranger, add_tag=[ids["高价值"]])) == 84061
    assert errcode(lambda: ec.mark_tag("zhangsan", ext, add_tag=["etNOPE"])) == 40068
    assert errcode(lambda: ec.add_corp_tag(group["tag_group"]["group_id"], None, None,
                                           [{"name": "高价值"}])) == 40071


def test_wecom_edit_and_delete_corp_tags(fake):
    ext = fake.add_external_contact(["zhangsan"])
    vip, quiet = fake.add_corp_tag("客户等级", "高价值"), fake.add_corp_tag("客户等级", "沉默")
    fake.set_contact_tags("zhangsan", ext, [vip, quiet])
    ec = wecom(fake).external_contact
    call_with_retry(lambda: ec.edit_corp_tag(quiet, "沉睡", None))
    assert fake.wecom_corp_tags() == {"客户等级": {"高价值": vip, "沉睡": quiet}}
    call_with_retry(lambda: ec.del_corp_tag(tag_id=[quiet]))
    assert fake.wecom_tags_of("zhangsan", ext) == {vip}
    call_with_retry(lambda: ec.del_corp_tag(tag_id=[vip]))
    assert fake.wecom_corp_tags() == {}  # the emptied group went with its last tag
    assert call_with_retry(ec.get_corp_tag_list)["tag_group"] == []


def test_wecom_corp_tag_limits():
    with FakeWeChat(limits=Limits(wecom_max_corp_tags=3)) as fake:
        ec = wecom(fake).external_contact
        errcode = lambda fn: pytest.raises(WeChatError, call_with_retry, fn).value.errcode  # noqa: E731
        assert errcode(lambda: ec.add_corp_tag(None, "组", None, [{"name": "字" * 31}])) == 40072
        call_with_retry(lambda: ec.add_corp_tag(None, "组", None, [{"name": "字" * 30}, {"name": "a"}]))
        assert errcode(lambda: ec.add_corp_tag(None, "组", None, [{"name": "b"}, {"name": "c"}])) == 40126


# ---------------------------------------------------------------------------- faults at scale


def test_operations_complete_exactly_once_under_20_percent_faults():
    faults = {"busy": 0.05, "expired": 0.05, "drop": 0.05, "slow": 0.05}
    with FakeWeChat(faults=faults, fault_seed=20240601, slow_delay=0.01) as fake:
        openids = fake.add_followers(600)
        tags = [fake.add_tag(n) for n in ("新客", "老客", "高价值")]
        exts = [fake.add_external_contact(["zhangsan"]) for _ in range(20)]
        corp_tag = fake.add_corp_tag("客户等级", "高价值")
        client, wc = mp(fake, timeout=2), wecom(fake, timeout=2)

        ops = [lambda t=t, b=b: client.tag.tag_user(t, b) for t in tags for b in chunks(openids, 50)]
        ops += [lambda b=b: client.tag.untag_user(tags[0], b) for b in chunks(openids[:200], 50)]
        ops += [lambda e=e: wc.external_contact.mark_tag("zhangsan", e, add_tag=[corp_tag]) for e in exts]
        results = [call_with_retry(op, max_attempts=8, sleep=lambda s: None) for op in ops]

        assert all(r["errcode"] == 0 for r in results)
        # each operation was applied exactly once (faults are injected before applying)
        assert fake.ok_calls["tags/members/batchtagging"] == 36
        assert fake.ok_calls["tags/members/batchuntagging"] == 4
        assert fake.ok_calls["externalcontact/mark_tag"] == 20
        injected = sum(fake.faults_injected.values())
        assert 0.1 * fake.call_count() < injected < 0.3 * fake.call_count()
        assert {k for _, k in fake.faults_injected} == set(faults)
        assert fake.mp_members(tags[0]) == set(openids[200:])
        assert fake.mp_members(tags[1]) == fake.mp_members(tags[2]) == set(openids)
        assert fake.wecom_members(corp_tag) == {("zhangsan", e) for e in exts}


def test_concurrent_membership_calls_are_all_applied(fake):
    """The sync may push batches from several threads through one client."""
    from concurrent.futures import ThreadPoolExecutor

    tag = fake.add_tag("VIP")
    openids = fake.add_followers(1000)
    client = mp(fake)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: call_with_retry(lambda: client.tag.tag_user(tag, b)), chunks(openids, 50)))
    assert fake.mp_members(tag) == set(openids) and fake.ok_calls["tags/members/batchtagging"] == 20


def test_fake_runs_as_a_subprocess():
    with FakeWeChatProcess("--followers", "120", "--fault", "busy=0.5", "--fault-seed", "3") as proc:
        defaults = FakeWeChat()  # the subprocess uses the same default credentials
        client = make_mp_client(defaults.appid, defaults.secret, api_base_url=proc.base_url)
        followers = call_with_retry(client.user.get_followers, max_attempts=10, sleep=lambda s: None)
        assert followers["total"] == 120
        state = proc.admin("state", None)
        assert state["calls"]["user/get"] >= 1 and state["mp"]["followers"] == 120
        proc.kill()  # SIGKILL, as the sync tests do
        assert proc.proc.returncode == -9


def test_chunks():
    assert list(chunks(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunks(["a", "b"], 50)) == [["a", "b"]]
    assert list(chunks([], 50)) == []
    assert [len(c) for c in chunks(iter(range(101)))] == [50, 50, 1]
    with pytest.raises(ValueError):
        list(chunks([1], 0))
