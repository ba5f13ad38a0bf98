#!/usr/bin/env python3
"""A fake WeChat official-account (公众号, "wechat_mp") and WeCom (企业微信, "wecom") API server.

It is a real HTTP peer for wechatpy: a ``ThreadingHTTPServer`` on 127.0.0.1 that answers the
official paths (``/cgi-bin/...``) with the official JSON shapes and error codes, keeps its state
in memory behind one lock, and can inject faults.  Nothing here imports the project, so the module
also runs as a subprocess::

    python tests/fakewechat.py --port 0 --followers 1000 --fault busy=0.1 --fault-seed 7

prints the bound port on its first stdout line and serves until SIGTERM/SIGINT (or SIGKILL).
Its state is then reachable over HTTP under ``/_fake/...`` (see :meth:`FakeWeChat.admin_routes`
and :func:`admin`).

In-process use::

    with FakeWeChat() as fake:
        client = make_mp_client(fake.appid, fake.secret, api_base_url=fake.base_url)
        ...
        assert fake.mp_members(tag_id) == {...}
        assert fake.calls["tags/members/batchtagging"] == 2

Endpoints are named by their path after ``/cgi-bin/`` (``"token"``, ``"tags/create"``,
``"externalcontact/mark_tag"`` ...); counters, quotas, scripted faults and the request log use
these names.

Official account (api.weixin.qq.com) endpoints and behaviour
-------------------------------------------------------------
* ``GET token`` (grant_type=client_credential, appid, secret) -> ``{"access_token", "expires_in"}``;
  unknown appid 40013, wrong secret 40125, bad grant_type 40002.
* Every other endpoint needs ``?access_token=``: missing 41001, unknown 40001, expired 42001.
* ``tags/create`` (45157 duplicate or empty name, 45158 name over 30 UTF-8 bytes, 45056 when the
  account already has 100 tags), ``tags/get`` (includes the system tag 2 "星标组", as the real
  API does), ``tags/update`` / ``tags/delete`` (45058 for the reserved ids 0, 1, 2; 45159 unknown
  id; 45057 deleting a tag with more than 100,000 fans).
* ``user/get`` pages 10,000 openids at a time; ``next_openid`` is the last openid of the page,
  also on the last page, and the call after the last page answers ``{"total": N, "count": 0,
  "next_openid": ""}`` without ``data`` (this is the real API's behaviour that wechatpy's
  ``iter_followers`` relies on).  ``user/tag/get`` pages a tag's fans the same way.
* ``user/info/batchget`` (at most 100 per call: 40032 above), ``tags/getidlist``.
* ``tags/members/batchtagging`` / ``batchuntagging``: 1..50 openids (40032 otherwise), 45159 unknown
  or reserved tag, 40003 malformed or unsubscribed openid, 49003 well-formed openid that is not a
  follower of this account, 45059 when a follower would carry more than 20 tags.  A failing call
  changes nothing (the whole batch is validated first).

WeCom (qyapi.weixin.qq.com) endpoints
-------------------------------------
``gettoken`` (corpid, corpsecret: 40013 / 40001), ``externalcontact/get_corp_tag_list``,
``add_corp_tag`` (group by ``group_id`` or ``group_name``; names 1..30 characters, else 40072;
an existing name in the group 40071; more than 3000 corp tags 40126), ``edit_corp_tag``,
``del_corp_tag`` (an emptied group disappears), ``mark_tag`` (40003 unknown userid, 40096 unknown
external_userid, 84061 no such relation, 40068 unknown tag), ``get_follow_user_list``, ``list``
(84061 when the member has no customers, as the real API does), ``get`` (``follow_user[].tags[]``
with group_name/tag_name/tag_id/type) and ``batch/get_by_user`` (``follow_info.tag_id``, cursor
paging, ``limit`` at most 100).  Invalid access tokens give 40014, expired ones 42001.

Some codes the documentation does not pin down are choices of this fake: 40032 for a
``user/info/batchget`` over 100 users, 40003 vs 49003 for openids (malformed vs. unknown), 40072
for over-long corp tag names, 40058 for malformed WeCom parameters and 47001 for malformed official
account bodies.

Fault injection
---------------
``faults`` maps a kind to the share (0..1) of eligible calls that get it; one deterministic draw
per call from ``random.Random(fault_seed)``:

* ``busy``: errcode -1 (nothing applied);
* ``quota``: errcode 45009 (nothing applied);
* ``expired``: errcode 42001 (nothing applied, the token itself stays valid);
* ``slow``: wait ``slow_delay`` seconds, then answer normally (applied, even if the client timed out);
* ``drop``: close the connection without answering, before applying anything;
* ``drop_after``: apply the call, then close without answering (the ambiguous case: the caller
  cannot know it succeeded).

Eligible calls are all endpoints except the two token endpoints, or exactly the endpoints listed in
``fault_endpoints``.  :meth:`FakeWeChat.queue_faults` scripts faults for the next calls of one
endpoint (consumed before any random draw); :meth:`FakeWeChat.set_quota` gives an endpoint a real
quota after which it answers 45009.  ``calls`` counts every request per endpoint, ``ok_calls``
the ones answered with success (applied), ``faults_injected`` the injected faults per
``(endpoint, kind)``; ``requests`` is the request log.
"""
from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import hashlib
import json
import random
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FAULT_KINDS",
    "FakeWeChat",
    "FakeWeChatProcess",
    "Limits",
    "admin",
    "main",
]

FAULT_KINDS = ("busy", "quota", "expired", "slow", "drop", "drop_after")
TOKEN_ENDPOINTS = frozenset({"token", "gettoken"})

MP_RESERVED_TAG_IDS = frozenset({0, 1, 2})
MP_STAR_TAG = (2, "星标组")  # the system tag tags/get always lists
MP_FIRST_TAG_ID = 100  # real accounts number their own tags from 100 up

_MP_ERRMSG = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40032: "invalid openid list size",
    40125: "invalid appsecret",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    44002: "empty post data",
    45009: "reach max api daily quota limit",
    45056: "too many tag now, no need to add new",
    45057: "can't delete the tag that has too many fans",
    45058: "can't modify sys tag",
    45059: "tag count of user exceeds limit",
    45157: "invalid tag name",
    45158: "tag name too long",
    45159: "invalid tag id",
    47001: "data format error",
    49003: "not match openid with appid",
}
_WECOM_ERRMSG = {
    -1: "system busy",
    40001: "invalid credential",
    40003: "invalid userid",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40058: "invalid Request Parameter",
    40068: "invalid tagid",
    40071: "UserTag Name Already Exist",
    40072: "invalid tag name length",
    40096: "invalid external userid",
    40126: "corp tag count exceed limit",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    42001: "access_token expired",
    45009: "api freq out of limit",
    84061: "not external contact",
}


@dataclass(frozen=True)
class Limits:
    """Platform limits; the defaults are the real ones (shrink them to test limits cheaply)."""

    mp_max_tags: int = 100
    mp_max_tags_per_follower: int = 20
    mp_tag_name_max_bytes: int = 30
    mp_batch_openids: int = 50
    mp_page_size: int = 10_000
    mp_batchget_max: int = 100
    mp_delete_max_fans: int = 100_000
    wecom_max_corp_tags: int = 3000
    wecom_name_max_chars: int = 30
    wecom_batch_userids: int = 100
    wecom_batch_limit: int = 100


class ApiError(Exception):
    """Raised inside a handler: becomes ``{"errcode": code, "errmsg": ...}``."""

    def __init__(self, errcode: int, detail: str = ""):
        super().__init__(errcode, detail)
        self.errcode = errcode
        self.detail = detail


class _Drop(Exception):
    """Close the connection without answering."""


@dataclass(slots=True)
class _Follower:
    openid: str
    subscribe: int = 1
    subscribe_time: int = 0
    language: str = "zh_CN"
    unionid: str | None = None
    remark: str = ""
    subscribe_scene: str = "ADD_SCENE_QR_CODE"
    qr_scene: int = 0
    qr_scene_str: str = ""
    tagids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _CorpTag:
    id: str
    name: str
    order: int
    create_time: int
    group_id: str


@dataclass(slots=True)
class _CorpGroup:
    group_id: str
    group_name: str
    order: int
    create_time: int
    tags: dict[str, _CorpTag] = field(default_factory=dict)


@dataclass(slots=True)
class _Relation:
    """One (member userid, external_userid) pair: WeCom corp tags live on the pair."""

    userid: str
    external_userid: str
    createtime: int
    remark: str = ""
    description: str = ""
    add_way: int = 1
    state: str = ""
    tag_ids: list[str] = field(default_factory=list)


def _openid_like(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 28
        and value.startswith("o")
        and all(c.isalnum() or c in "-_" for c in value)
    )


def _b64id(prefix: str, seed: str, length: int) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(seed.encode()).digest()).decode()
    return (prefix + digest.replace("-", "A").replace("_", "B"))[:length]


class FakeWeChat:
    """In-memory official account + WeCom corp behind a real HTTP server on 127.0.0.1.

    Args:
        appid, secret: the official account's credentials.
        corpid, corpsecret: the WeCom corp's credentials (customer-contact secret).
        token_lifetime: seconds an issued access token stays valid (``expires_in`` reports it,
            at least 1).
        faults: ``{kind: share}`` with kinds from :data:`FAULT_KINDS`; shares sum to at most 1.
        fault_seed: seed of the fault draws (deterministic for a sequential client).
        fault_endpoints: endpoints eligible for random faults; ``None`` = all but token endpoints.
        slow_delay: seconds a ``slow`` fault waits before answering.
        quotas: ``{endpoint: n}``: after n calls the endpoint answers 45009.
        limits: :class:`Limits` (real platform limits by default).
        host, port: where to bind; port 0 picks a free port.
    """

    def __init__(
        self,
        *,
        appid: str = "wx5f3a1c9e0b7d2e41",
        secret: str = "3f9c2b7e4d1a8f6c0b5e9d2a7c4f1e83",
        corpid: str = "ww8c2d4e6f1a3b5c7d",
        corpsecret: str = "Xq7mZp2LkR9vTn4WbY6cHs1JdF8gUe3AoQ5iVr0tEw",
        token_lifetime: float = 7200.0,
        faults: Mapping[str, float] | None = None,
        fault_seed: int = 0,
        fault_endpoints: Iterable[str] | None = None,
        slow_delay: float = 0.5,
        quotas: Mapping[str, int] | None = None,
        limits: Limits | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.appid, self.secret = appid, secret
        self.corpid, self.corpsecret = corpid, corpsecret
        self.token_lifetime = float(token_lifetime)
        self.limits = limits or Limits()
        self.host, self._requested_port = host, port
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._slow_pending = 0  # `slow` calls waiting to be applied (the client may have given up on them)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

        self._fault_rng = random.Random(fault_seed)
        self._faults: dict[str, float] = {}
        self._fault_endpoints: frozenset[str] | None = None
        self.slow_delay = slow_delay
        self.configure_faults(faults or {}, seed=fault_seed, endpoints=fault_endpoints)
        self._fault_queue: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._quotas: dict[str, int] = dict(quotas or {})
        self._quota_used: collections.Counter[str] = collections.Counter()

        self.calls: collections.Counter[str] = collections.Counter()
        self.ok_calls: collections.Counter[str] = collections.Counter()
        self.faults_injected: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=50_000)
        self.errors: list[str] = []  # tracebacks of bugs in this fake (tests may assert it is empty)

        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (product, expires_at monotonic)
        self._token_seq = 0
        self._rid_seq = 0

        # official account state
        self._followers: dict[str, _Follower] = {}  # insertion order = user/get order
        self._follower_seq = 0
        self._mp_tags: dict[int, str] = {MP_STAR_TAG[0]: MP_STAR_TAG[1]}
        self._mp_members: dict[int, dict[str, None]] = {MP_STAR_TAG[0]: {}}  # ordered by tagging time
        self._next_tag_id = MP_FIRST_TAG_ID
        # paging cache: ordered openids and their positions, rebuilt when _mp_version moves
        self._mp_version = 0
        self._order_cache: dict[Any, tuple[int, list[str], dict[str, int]]] = {}

        # WeCom state
        self._groups: dict[str, _CorpGroup] = {}
        self._corp_tags: dict[str, _CorpTag] = {}
        self._follow_users: dict[str, list[str]] = {}  # userid -> external_userids (ordered)
        self._contacts: dict[str, dict[str, Any]] = {}  # external_userid -> profile
        self._relations: dict[tuple[str, str], _Relation] = {}
        self._followers_of: dict[str, list[str]] = {}  # external_userid -> member userids
        self._wecom_seq = 0

        self._routes: dict[str, tuple[str, Callable[[dict, dict], dict]]] = {
            "token": ("mp", self._mp_token),
            "tags/create": ("mp", self._mp_tags_create),
            "tags/get": ("mp", self._mp_tags_get),
            "tags/update": ("mp", self._mp_tags_update),
            "tags/delete": ("mp", self._mp_tags_delete),
            "tags/members/batchtagging": ("mp", self._mp_batchtagging),
            "tags/members/batchuntagging": ("mp", self._mp_batchuntagging),
            "tags/getidlist": ("mp", self._mp_getidlist),
            "user/get": ("mp", self._mp_user_get),
            "user/info/batchget": ("mp", self._mp_batchget),
            "user/tag/get": ("mp", self._mp_tag_users),
            "gettoken": ("wecom", self._wc_gettoken),
            "externalcontact/get_corp_tag_list": ("wecom", self._wc_get_corp_tag_list),
            "externalcontact/add_corp_tag": ("wecom", self._wc_add_corp_tag),
            "externalcontact/edit_corp_tag": ("wecom", self._wc_edit_corp_tag),
            "externalcontact/del_corp_tag": ("wecom", self._wc_del_corp_tag),
            "externalcontact/mark_tag": ("wecom", self._wc_mark_tag),
            "externalcontact/get_follow_user_list": ("wecom", self._wc_follow_user_list),
            "externalcontact/list": ("wecom", self._wc_list),
            "externalcontact/get": ("wecom", self._wc_get),
            "externalcontact/batch/get_by_user": ("wecom", self._wc_batch_get_by_user),
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeWeChat":
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"fakewechat:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection (so pooled clients see a refusal)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread (subprocess mode)."""
        if self._server is None:
            self._server = _Server((self.host, self._requested_port), _Handler, self)
        self._server.serve_forever(poll_interval=0.1)

    def __enter__(self) -> "FakeWeChat":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base to give clients: ``http://127.0.0.1:PORT/cgi-bin/``."""
        return f"{self.url}/cgi-bin/"

    # ------------------------------------------------------------------ knobs and counters

    def configure_faults(
        self,
        faults: Mapping[str, float] | None = None,
        *,
        seed: int | None = None,
        endpoints: Any = ...,
        slow_delay: float | None = None,
    ) -> None:
        """Replace the random fault mix; ``seed`` restarts the draws; ``endpoints=None`` = all
        non-token endpoints (``...`` keeps the current choice)."""
        faults = dict(faults or {})
        unknown = set(faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if any(not 0 <= r <= 1 for r in faults.values()) or sum(faults.values()) > 1 + 1e-9:
            raise ValueError("fault shares must be in [0, 1] and sum to at most 1")
        with self._lock:
            self._faults = faults
            if seed is not None:
                self._fault_rng = random.Random(seed)
            if endpoints is not ...:
                self._fault_endpoints = None if endpoints is None else frozenset(endpoints)
            if slow_delay is not None:
                self.slow_delay = slow_delay

    def queue_faults(self, endpoint: str, *kinds: str) -> None:
        """Script faults for the next calls of ``endpoint``, in order (before random draws)."""
        for kind in kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._fault_queue[endpoint].extend(kinds)

    def set_quota(self, endpoint: str, calls: int | None) -> None:
        """Allow ``calls`` more calls of ``endpoint`` before 45009 (``None`` removes the quota)."""
        with self._lock:
            self._quota_used[endpoint] = 0
            if calls is None:
                self._quotas.pop(endpoint, None)
            else:
                self._quotas[endpoint] = calls

    def expire_tokens(self) -> None:
        """Expire every issued access token now (the next use answers 42001)."""
        with self._lock:
            self._tokens = {t: (p, 0.0) for t, (p, _) in self._tokens.items()}

    def call_count(self, endpoint: str | None = None) -> int:
        """Requests received for ``endpoint`` (all endpoints when ``None``)."""
        with self._lock:
            return sum(self.calls.values()) if endpoint is None else self.calls[endpoint]

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.ok_calls.clear()
            self.faults_injected.clear()
            self.requests.clear()

    # ------------------------------------------------------------------ official account seeds

    def add_followers(
        self,
        followers: int | Iterable[str],
        *,
        subscribe_time: int | None = None,
        unionid: bool = False,
        language: str = "zh_CN",
    ) -> list[str]:
        """Add subscribed followers: a count (openids are generated, realistic 28-char ids) or
        explicit openids.  Returns the openids in user/get order."""
        with self._lock:
            if isinstance(followers, int):
                start = self._follower_seq
                openids = [_b64id("o", f"{self.appid}/{i}", 28) for i in range(start, start + followers)]
            else:
                openids = list(followers)
            out = []
            for openid in openids:
                self._follower_seq += 1
                if openid in self._followers:
                    raise ValueError(f"duplicate openid {openid}")
                self._followers[openid] = _Follower(
                    openid=openid,
                    subscribe_time=subscribe_time if subscribe_time is not None
                    else 1_600_000_000 + self._follower_seq * 37,
                    unionid=_b64id("o", f"union/{openid}", 28) if unionid else None,
                    language=language,
                )
                out.append(openid)
            self._mp_version += 1
            return out

    def unsubscribe(self, openid: str) -> None:
        """The follower unsubscribes: gone from user/get and from every tag."""
        with self._lock:
            f = self._followers[openid]
            f.subscribe = 0
            self._mp_version += 1
            for tid in f.tagids:
                self._mp_members[tid].pop(openid, None)
            f.tagids = []

    def add_tag(self, name: str) -> int:
        """Create an official-account tag directly (no limits); returns its id."""
        with self._lock:
            tid = self._next_tag_id
            self._next_tag_id += 1
            self._mp_tags[tid] = name
            self._mp_members[tid] = {}
            return tid

    def add_tags(self, names: Iterable[str]) -> dict[str, int]:
        return {name: self.add_tag(name) for name in names}

    def set_members(self, tag_id: int, openids: Iterable[str]) -> None:
        """Tag followers directly, bypassing the per-call and per-follower limits."""
        with self._lock:
            members = self._mp_members[tag_id]
            self._mp_version += 1
            for openid in openids:
                f = self._followers[openid]
                if tag_id not in f.tagids:
                    f.tagids.append(tag_id)
                    members[openid] = None

    def mp_tags(self) -> dict[str, int]:
        """``{name: id}`` of the account's tags (including 星标组)."""
        with self._lock:
            return {name: tid for tid, name in self._mp_tags.items()}

    def mp_members(self, tag_id: int) -> set[str]:
        with self._lock:
            return set(self._mp_members.get(tag_id, ()))

    def mp_memberships(self) -> dict[int, set[str]]:
        """``{tag_id: openids}`` for every tag."""
        with self._lock:
            return {tid: set(m) for tid, m in self._mp_members.items()}

    def mp_tags_of(self, openid: str) -> list[int]:
        with self._lock:
            return list(self._followers[openid].tagids)

    # ------------------------------------------------------------------ WeCom seeds

    def add_follow_user(self, userid: str) -> None:
        """A corp member with the customer-contact permission."""
        with self._lock:
            self._follow_users.setdefault(userid, [])

    def add_external_contact(
        self,
        follow_users: Iterable[str],
        *,
        external_userid: str | None = None,
        name: str = "",
        type: int = 1,
        unionid: str | None = None,
        createtime: int | None = None,
    ) -> str:
        """Add a customer followed by ``follow_users`` (created if needed); returns its id."""
        with self._lock:
            self._wecom_seq += 1
            ext = external_userid or _b64id("wm", f"{self.corpid}/ext/{self._wecom_seq}", 32)
            if ext in self._contacts:
                raise ValueError(f"duplicate external_userid {ext}")
            self._contacts[ext] = {
                "external_userid": ext,
                "name": name or f"客户{self._wecom_seq}",
                "type": type,
                "avatar": "",
                "gender": 0,
                **({"unionid": unionid} if unionid else {}),
            }
            for userid in follow_users:
                self._follow_users.setdefault(userid, []).append(ext)
                self._followers_of.setdefault(ext, []).append(userid)
                self._relations[(userid, ext)] = _Relation(
                    userid=userid, external_userid=ext,
                    createtime=createtime or 1_650_000_000 + self._wecom_seq * 61,
                )
            return ext

    def add_corp_tag(self, group_name: str, name: str, *, order: int = 0) -> str:
        """Create a corp tag (and its group if new) directly, no limits; returns the tag id."""
        with self._lock:
            group = next((g for g in self._groups.values() if g.group_name == group_name), None)
            if group is None:
                group = self._new_group(group_name, 0)
            return self._new_corp_tag(group, name, order).id

    def set_contact_tags(self, userid: str, external_userid: str, tag_ids: Iterable[str]) -> None:
        """Replace the corp tags on one (member, customer) pair."""
        with self._lock:
            rel = self._relations[(userid, external_userid)]
            ids = list(dict.fromkeys(tag_ids))
            unknown = [t for t in ids if t not in self._corp_tags]
            if unknown:
                raise KeyError(f"unknown corp tags {unknown}")
            rel.tag_ids = ids

    def wecom_corp_tags(self) -> dict[str, dict[str, str]]:
        """``{group_name: {tag_name: tag_id}}``."""
        with self._lock:
            return {g.group_name: {t.name: t.id for t in g.tags.values()} for g in self._groups.values()}

    def wecom_tags_of(self, userid: str, external_userid: str) -> set[str]:
        with self._lock:
            return set(self._relations[(userid, external_userid)].tag_ids)

    def wecom_members(self, tag_id: str) -> set[tuple[str, str]]:
        """The (userid, external_userid) pairs carrying ``tag_id``."""
        with self._lock:
            return {k for k, rel in self._relations.items() if tag_id in rel.tag_ids}

    # ------------------------------------------------------------------ JSON seeding / state (admin)

    def seed(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Seed from JSON-able data (used by ``POST /_fake/seed`` and ``--seed-file``)::

            {"mp": {"followers": 1000 | ["openid", ...], "tags": ["VIP", ...],
                    "members": {"VIP": ["openid", ...]}},          # tag name or id
             "wecom": {"follow_users": ["zhangsan"],
                       "contacts": [{"external_userid": "wm...", "name": "...",
                                     "follow_users": ["zhangsan"]}],
                       "corp_tags": {"客户等级": ["高价值", "沉默"]},
                       "marks": [{"userid": "zhangsan", "external_userid": "wm...",
                                  "tags": ["客户等级/高价值"] | "tag_ids": ["et..."]}]}}

        Returns the created ids: ``{"mp": {"followers": [...], "tags": {name: id}},
        "wecom": {"contacts": [...], "corp_tags": {group: {name: id}}}}``.
        """
        out: dict[str, Any] = {"mp": {}, "wecom": {}}
        with self._lock:
            mp = spec.get("mp") or {}
            if "followers" in mp:
                out["mp"]["followers"] = self.add_followers(mp["followers"])
            if "tags" in mp:
                out["mp"]["tags"] = self.add_tags(mp["tags"])
            names = self.mp_tags()
            for key, openids in (mp.get("members") or {}).items():
                tid = names[key] if key in names else int(key)
                self.set_members(tid, openids)
            wc = spec.get("wecom") or {}
            for userid in wc.get("follow_users") or ():
                self.add_follow_user(userid)
            created = []
            for c in wc.get("contacts") or ():
                created.append(self.add_external_contact(
                    c.get("follow_users") or (), external_userid=c.get("external_userid"),
                    name=c.get("name", ""), type=c.get("type", 1), unionid=c.get("unionid"),
                ))
            out["wecom"]["contacts"] = created
            for group, tags in (wc.get("corp_tags") or {}).items():
                for name in tags:
                    self.add_corp_tag(group, name)
            out["wecom"]["corp_tags"] = self.wecom_corp_tags()
            by_path = {f"{g}/{n}": tid for g, ts in out["wecom"]["corp_tags"].items() for n, tid in ts.items()}
            for m in wc.get("marks") or ():
                ids = list(m.get("tag_ids") or ()) + [by_path[p] for p in m.get("tags") or ()]
                self.set_contact_tags(m["userid"], m["external_userid"], ids)
        return out

    def state(self, *, members: bool = True) -> dict[str, Any]:
        """A JSON-able snapshot of the state and counters (``GET /_fake/state``)."""
        with self._lock:
            return {
                "mp": {
                    "followers": sum(1 for f in self._followers.values() if f.subscribe),
                    "tags": [{"id": t, "name": n, "count": len(self._mp_members[t])}
                             for t, n in self._mp_tags.items()],
                    **({"members": {str(t): list(m) for t, m in self._mp_members.items()}} if members else {}),
                },
                "wecom": {
                    "corp_tags": self.wecom_corp_tags(),
                    **({"marks": [{"userid": r.userid, "external_userid": r.external_userid,
                                   "tag_ids": list(r.tag_ids)} for r in self._relations.values()]}
                       if members else {}),
                },
                "calls": dict(self.calls),
                "ok_calls": dict(self.ok_calls),
                "faults_injected": {f"{e}:{k}": n for (e, k), n in self.faults_injected.items()},
            }

    def admin_routes(self) -> dict[str, Callable[[dict, dict], Any]]:
        """``/_fake/<name>`` routes (not counted, never faulted): ``state`` (GET, ``?members=0``
        for counts only), ``seed``, ``faults`` ({"faults", "seed", "endpoints", "slow_delay",
        "queue": {endpoint: [kinds]}}), ``quota`` ({endpoint: n|null}), ``expire_tokens``,
        ``reset_counters``."""
        def faults(q: dict, body: dict) -> dict:
            kwargs: dict[str, Any] = {"seed": body.get("seed"), "slow_delay": body.get("slow_delay")}
            if "endpoints" in body:
                kwargs["endpoints"] = body["endpoints"]
            self.configure_faults(body.get("faults") or {}, **kwargs)
            for endpoint, kinds in (body.get("queue") or {}).items():
                self.queue_faults(endpoint, *kinds)
            return {"ok": True}

        def quota(q: dict, body: dict) -> dict:
            for endpoint, n in body.items():
                self.set_quota(endpoint, n)
            return {"ok": True}

        return {
            "state": lambda q, b: self.state(members=q.get("members", "1") != "0"),
            "seed": lambda q, b: self.seed(b),
            "faults": faults,
            "quota": quota,
            "expire_tokens": lambda q, b: (self.expire_tokens(), {"ok": True})[1],
            "reset_counters": lambda q, b: (self.reset_counters(), {"ok": True})[1],
        }

    # ------------------------------------------------------------------ request pipeline

    def handle(self, method: str, path: str, query: dict[str, str], raw: bytes) -> tuple[int, dict | None, bool]:
        """Process one request; returns ``(http_status, json_body or None, drop_connection)``."""
        if path.startswith("/_fake/"):
            route = self.admin_routes().get(path[len("/_fake/"):])
            if route is None:
                return 404, {"error": "unknown admin route"}, False
            return 200, route(query, json.loads(raw) if raw else {}), False
        if not path.startswith("/cgi-bin/") or path[len("/cgi-bin/"):] not in self._routes:
            return 404, {"errcode": 404, "errmsg": "not found"}, False
        endpoint = path[len("/cgi-bin/"):]
        product, handler = self._routes[endpoint]

        with self._lock:
            self.calls[endpoint] += 1
            fault = self._draw_fault(endpoint)
            entry = {"method": method, "endpoint": endpoint, "query": dict(query),
                     "body": None, "errcode": None, "fault": fault}
            self.requests.append(entry)
        if fault:
            with self._lock:
                self.faults_injected[(endpoint, fault)] += 1
        if fault == "drop":
            return 0, None, True
        if fault == "slow":
            with self._lock:
                self._slow_pending += 1
            try:
                self._stopping.wait(self.slow_delay)  # outside the lock: other calls go on meanwhile
                return self._apply(product, handler, endpoint, query, raw, fault, entry)
            finally:
                with self._lock:
                    self._slow_pending -= 1
        return self._apply(product, handler, endpoint, query, raw, fault, entry)

    def wait_settled(self, timeout: float = 10.0) -> None:
        """Wait until every delayed (`slow`) call has been applied, as the real
        platform eventually applies a request whose answer the client gave up on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._slow_pending == 0:
                    return
            time.sleep(0.01)
        raise AssertionError("delayed calls still pending")

    def _apply(self, product, handler, endpoint, query, raw, fault, entry):
        try:
            if fault in ("busy", "quota", "expired"):
                raise ApiError({"busy": -1, "quota": 45009, "expired": 42001}[fault], "injected")
            body = self._parse_body(product, raw)
            entry["body"] = body
            with self._lock:
                if endpoint not in TOKEN_ENDPOINTS:
                    self._check_token(product, query.get("access_token"))
                if endpoint in self._quotas:
                    self._quota_used[endpoint] += 1
                    if self._quota_used[endpoint] > self._quotas[endpoint]:
                        raise ApiError(45009)
                result = handler(query, body)
                self.ok_calls[endpoint] += 1
            entry["errcode"] = 0
        except ApiError as err:
            entry["errcode"] = err.errcode
            result = self._error(product, err.errcode)
        return 200, result, fault == "drop_after"

    def _draw_fault(self, endpoint: str) -> str | None:
        queue = self._fault_queue.get(endpoint)
        if queue:
            return queue.popleft()
        if not self._faults:
            return None
        eligible = (endpoint not in TOKEN_ENDPOINTS) if self._fault_endpoints is None \
            else endpoint in self._fault_endpoints
        if not eligible:
            return None
        u, acc = self._fault_rng.random(), 0.0
        for kind in FAULT_KINDS:  # fixed order keeps the draws reproducible
            acc += self._faults.get(kind, 0.0)
            if u < acc:
                return kind
        return None

    def _parse_body(self, product: str, raw: bytes) -> dict:
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(47001 if product == "mp" else 40058) from None
        if not isinstance(body, dict):
            raise ApiError(47001 if product == "mp" else 40058)
        return body

    def _check_token(self, product: str, token: str | None) -> None:
        if not token:
            raise ApiError(41001)
        issued = self._tokens.get(token)
        if issued is None or issued[0] != product:
            raise ApiError(40001 if product == "mp" else 40014)
        if time.monotonic() >= issued[1]:
            raise ApiError(42001)

    def _error(self, product: str, errcode: int) -> dict:
        self._rid_seq += 1
        if product == "mp":
            msg = _MP_ERRMSG.get(errcode, "unknown error")
            return {"errcode": errcode, "errmsg": f"{msg} rid: 6{self._rid_seq:07x}-{abs(errcode):08x}"}
        msg = _WECOM_ERRMSG.get(errcode, "unknown error")
        return {"errcode": errcode, "errmsg": f"{msg}, hint: [{int(time.time())}_{self._rid_seq}], "
                f"from ip: 127.0.0.1, more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}"}

    def _issue_token(self, product: str) -> dict:
        self._token_seq += 1
        token = f"{80 + self._token_seq % 20}_" + _b64id("", f"{product}/{self._token_seq}/{time.time_ns()}", 120)
        self._tokens[token] = (product, time.monotonic() + self.token_lifetime)
        # forget long-dead tokens so the table stays small (they would answer 40001 then)
        if len(self._tokens) > 1000:
            now = time.monotonic()
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now - 3600}
        return {"access_token": token, "expires_in": max(1, int(self.token_lifetime))}

    # ------------------------------------------------------------------ official account handlers

    def _mp_token(self, q: dict, body: dict) -> dict:
        if q.get("grant_type") != "client_credential":
            raise ApiError(40002)
        if not q.get("appid"):
            raise ApiError(41002)
        if not q.get("secret"):
            raise ApiError(41004)
        if q["appid"] != self.appid:
            raise ApiError(40013)
        if q["secret"] != self.secret:
            raise ApiError(40125)
        return self._issue_token("mp")

    def _mp_tag_id(self, value: Any) -> int:
        tid = _as_int(value)
        if tid is None or tid not in self._mp_tags:
            raise ApiError(45159)
        return tid

    def _mp_check_name(self, name: Any, *, own_id: int | None = None) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ApiError(45157)
        if len(name.encode("utf-8")) > self.limits.mp_tag_name_max_bytes:
            raise ApiError(45158)
        if any(n == name and tid != own_id for tid, n in self._mp_tags.items()):
            raise ApiError(45157)
        return name

    def _mp_tags_create(self, q: dict, body: dict) -> dict:
        tag = body.get("tag")
        if not isinstance(tag, dict):
            raise ApiError(44002 if not body else 47001)
        name = self._mp_check_name(tag.get("name"))
        own = sum(1 for tid in self._mp_tags if tid not in MP_RESERVED_TAG_IDS)
        if own >= self.limits.mp_max_tags:
            raise ApiError(45056)
        return {"tag": {"id": self.add_tag(name), "name": name}}

    def _mp_tags_get(self, q: dict, body: dict) -> dict:
        return {"tags": [{"id": tid, "name": name, "count": len(self._mp_members[tid])}
                         for tid, name in self._mp_tags.items()]}

    def _mp_tags_update(self, q: dict, body: dict) -> dict:
        tag = body.get("tag")
        if not isinstance(tag, dict):
            raise ApiError(44002 if not body else 47001)
        if _as_int(tag.get("id")) in MP_RESERVED_TAG_IDS:
            raise ApiError(45058)
        tid = self._mp_tag_id(tag.get("id"))
        self._mp_tags[tid] = self._mp_check_name(tag.get("name"), own_id=tid)
        return {"errcode": 0, "errmsg": "ok"}

    def _mp_tags_delete(self, q: dict, body: dict) -> dict:
        tag = body.get("tag")
        if not isinstance(tag, dict):
            raise ApiError(44002 if not body else 47001)
        if _as_int(tag.get("id")) in MP_RESERVED_TAG_IDS:
            raise ApiError(45058)
        tid = self._mp_tag_id(tag.get("id"))
        if len(self._mp_members[tid]) > self.limits.mp_delete_max_fans:
            raise ApiError(45057)
        self._mp_version += 1
        for openid in self._mp_members.pop(tid):
            self._followers[openid].tagids.remove(tid)
        del self._mp_tags[tid]
        return {"errcode": 0, "errmsg": "ok"}

    def _mp_batch(self, body: dict) -> tuple[int, list[_Follower]]:
        openids = body.get("openid_list")
        if not isinstance(openids, list) or not 1 <= len(openids) <= self.limits.mp_batch_openids:
            raise ApiError(40032)
        tid = self._mp_tag_id(body.get("tagid"))
        return tid, [self._mp_follower(o) for o in openids]

    def _mp_follower(self, openid: Any) -> _Follower:
        f = self._followers.get(openid) if isinstance(openid, str) else None
        if f is None:
            raise ApiError(49003 if _openid_like(openid) else 40003)
        if not f.subscribe:
            raise ApiError(40003)
        return f

    def _mp_batchtagging(self, q: dict, body: dict) -> dict:
        tid, followers = self._mp_batch(body)
        limit = self.limits.mp_max_tags_per_follower
        if any(tid not in f.tagids and len(f.tagids) >= limit for f in followers):
            raise ApiError(45059)  # validated for the whole batch first: nothing is applied
        self._mp_version += 1
        for f in followers:
            if tid not in f.tagids:
                f.tagids.append(tid)
                self._mp_members[tid][f.openid] = None
        return {"errcode": 0, "errmsg": "ok"}

    def _mp_batchuntagging(self, q: dict, body: dict) -> dict:
        tid, followers = self._mp_batch(body)
        self._mp_version += 1
        for f in followers:
            if tid in f.tagids:
                f.tagids.remove(tid)
                self._mp_members[tid].pop(f.openid, None)
        return {"errcode": 0, "errmsg": "ok"}

    def _mp_getidlist(self, q: dict, body: dict) -> dict:
        return {"tagid_list": list(self._mp_follower(body.get("openid")).tagids)}

    def _ordered(self, key: Any, build: Callable[[], list[str]]) -> tuple[list[str], dict[str, int]]:
        cached = self._order_cache.get(key)
        if cached is None or cached[0] != self._mp_version:
            items = build()
            cached = self._order_cache[key] = (self._mp_version, items, {o: i for i, o in enumerate(items)})
        return cached[1], cached[2]

    def _page(self, key: Any, build: Callable[[], list[str]], next_openid: str | None) -> dict:
        openids, index = self._ordered(key, build)
        total = len(openids)
        start = 0
        if next_openid:
            if next_openid not in index:
                raise ApiError(40003)
            start = index[next_openid] + 1
        page = openids[start:start + self.limits.mp_page_size]
        if not page:  # after the last page: no "data", empty next_openid (real behaviour)
            return {"total": total, "count": 0, "next_openid": ""}
        return {"total": total, "count": len(page), "data": {"openid": page}, "next_openid": page[-1]}

    def _mp_user_get(self, q: dict, body: dict) -> dict:
        return self._page("followers", lambda: [o for o, f in self._followers.items() if f.subscribe],
                          q.get("next_openid"))

    def _mp_tag_users(self, q: dict, body: dict) -> dict:
        tid = self._mp_tag_id(body.get("tagid"))
        page = self._page(("tag", tid), lambda: list(self._mp_members[tid]), body.get("next_openid"))
        page.pop("total")  # user/tag/get has no total
        return page

    def _mp_batchget(self, q: dict, body: dict) -> dict:
        users = body.get("user_list")
        if not isinstance(users, list) or not 1 <= len(users) <= self.limits.mp_batchget_max:
            raise ApiError(40032)
        out = []
        for item in users:
            openid = item.get("openid") if isinstance(item, dict) else None
            f = self._followers.get(openid) if isinstance(openid, str) else None
            if f is None:
                raise ApiError(40003)
            if not f.subscribe:
                out.append({"subscribe": 0, "openid": f.openid, **({"unionid": f.unionid} if f.unionid else {})})
                continue
            info = {
                "subscribe": 1, "openid": f.openid, "nickname": "", "sex": 0,
                "language": f.language, "city": "", "province": "", "country": "", "headimgurl": "",
                "subscribe_time": f.subscribe_time,
            }
            if f.unionid:
                info["unionid"] = f.unionid
            info.update({
                "remark": f.remark, "groupid": 0, "tagid_list": list(f.tagids),
                "subscribe_scene": f.subscribe_scene, "qr_scene": f.qr_scene, "qr_scene_str": f.qr_scene_str,
            })
            out.append(info)
        return {"user_info_list": out}

    # ------------------------------------------------------------------ WeCom handlers

    @staticmethod
    def _ok(**fields: Any) -> dict:
        return {"errcode": 0, "errmsg": "ok", **fields}

    def _wc_gettoken(self, q: dict, body: dict) -> dict:
        if not q.get("corpid"):
            raise ApiError(41002)
        if not q.get("corpsecret"):
            raise ApiError(41004)
        if q["corpid"] != self.corpid:
            raise ApiError(40013)
        if q["corpsecret"] != self.corpsecret:
            raise ApiError(40001)
        return self._ok(**self._issue_token("wecom"))

    def _new_group(self, name: str, order: int) -> _CorpGroup:
        self._wecom_seq += 1
        gid = _b64id("et", f"{self.corpid}/group/{self._wecom_seq}", 32)
        group = self._groups[gid] = _CorpGroup(gid, name, order, 1_700_000_000 + self._wecom_seq)
        return group

    def _new_corp_tag(self, group: _CorpGroup, name: str, order: int) -> _CorpTag:
        self._wecom_seq += 1
        tid = _b64id("et", f"{self.corpid}/tag/{self._wecom_seq}", 32)
        tag = group.tags[tid] = self._corp_tags[tid] = _CorpTag(
            tid, name, order, 1_700_000_000 + self._wecom_seq, group.group_id)
        return tag

    def _wc_name(self, name: Any) -> str:
        if not isinstance(name, str) or not name.strip() or len(name) > self.limits.wecom_name_max_chars:
            raise ApiError(40072)
        return name

    @staticmethod
    def _tag_json(t: _CorpTag) -> dict:
        return {"id": t.id, "name": t.name, "create_time": t.create_time, "order": t.order, "deleted": False}

    def _group_json(self, g: _CorpGroup, tags: Iterable[_CorpTag]) -> dict:
        ordered = sorted(tags, key=lambda t: -t.order)  # "order值大的排序靠前"
        return {"group_id": g.group_id, "group_name": g.group_name, "create_time": g.create_time,
                "order": g.order, "deleted": False, "tag": [self._tag_json(t) for t in ordered]}

    def _wc_get_corp_tag_list(self, q: dict, body: dict) -> dict:
        tag_ids, group_ids = body.get("tag_id") or [], body.get("group_id") or []
        groups = sorted(self._groups.values(), key=lambda g: -g.order)
        if group_ids:  # the real API ignores tag_id when group_id is given
            out = [self._group_json(g, g.tags.values()) for g in groups if g.group_id in group_ids]
        elif tag_ids:
            out = [self._group_json(g, [t for t in g.tags.values() if t.id in tag_ids])
                   for g in groups if any(t in g.tags for t in tag_ids)]
        else:
            out = [self._group_json(g, g.tags.values()) for g in groups]
        return self._ok(tag_group=out)

    def _wc_add_corp_tag(self, q: dict, body: dict) -> dict:
        tags = body.get("tag")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, dict) for t in tags):
            raise ApiError(40058)  # empty groups cannot be created
        if body.get("group_id"):
            group = self._groups.get(body["group_id"])
            if group is None:
                raise ApiError(40068)
        else:
            gname = self._wc_name(body.get("group_name"))
            group = next((g for g in self._groups.values() if g.group_name == gname), None)
        names: dict[str, int] = {}
        for t in tags:  # same name twice in one call creates it once
            names.setdefault(self._wc_name(t.get("name")), int(t.get("order") or 0))
        if group is not None and any(t.name in names for t in group.tags.values()):
            raise ApiError(40071)
        if len(self._corp_tags) + len(names) > self.limits.wecom_max_corp_tags:
            raise ApiError(40126)
        if group is None:
            group = self._new_group(body["group_name"], int(body.get("order") or 0))
        created = [self._new_corp_tag(group, n, o) for n, o in names.items()]
        g = self._group_json(group, created)
        for t in g["tag"]:
            t.pop("deleted")
        g.pop("deleted")
        return self._ok(tag_group=g)

    def _wc_edit_corp_tag(self, q: dict, body: dict) -> dict:
        target = body.get("id")
        name, order = body.get("name"), body.get("order")
        if target in self._groups:
            g = self._groups[target]
            if name is not None:
                name = self._wc_name(name)
                if any(o.group_name == name and o is not g for o in self._groups.values()):
                    raise ApiError(40071)
                g.group_name = name
            if order is not None:
                g.order = int(order)
        elif target in self._corp_tags:
            t = self._corp_tags[target]
            if name is not None:
                name = self._wc_name(name)
                if any(o.name == name and o is not t for o in self._groups[t.group_id].tags.values()):
                    raise ApiError(40071)
                t.name = name
            if order is not None:
                t.order = int(order)
        else:
            raise ApiError(40068)
        return self._ok()

    def _wc_del_corp_tag(self, q: dict, body: dict) -> dict:
        tag_ids, group_ids = list(body.get("tag_id") or []), list(body.get("group_id") or [])
        if not tag_ids and not group_ids:
            raise ApiError(40058)
        if any(t not in self._corp_tags for t in tag_ids) or any(g not in self._groups for g in group_ids):
            raise ApiError(40068)
        doomed = set(tag_ids)
        for gid in group_ids:
            doomed.update(self._groups[gid].tags)
        for tid in doomed:
            tag = self._corp_tags.pop(tid)
            group = self._groups[tag.group_id]
            del group.tags[tid]
            if not group.tags:  # a group without tags is deleted with its last tag
                del self._groups[group.group_id]
        for rel in self._relations.values():
            if doomed.intersection(rel.tag_ids):
                rel.tag_ids = [t for t in rel.tag_ids if t not in doomed]
        return self._ok()

    def _wc_relation(self, userid: Any, external_userid: Any) -> _Relation:
        if not isinstance(userid, str) or userid not in self._follow_users:
            raise ApiError(40003)
        if not isinstance(external_userid, str) or external_userid not in self._contacts:
            raise ApiError(40096)
        rel = self._relations.get((userid, external_userid))
        if rel is None:
            raise ApiError(84061)
        return rel

    def _wc_mark_tag(self, q: dict, body: dict) -> dict:
        rel = self._wc_relation(body.get("userid"), body.get("external_userid"))
        add, remove = body.get("add_tag") or [], body.get("remove_tag") or []
        if not isinstance(add, list) or not isinstance(remove, list) or not (add or remove):
            raise ApiError(40058)
        if any(t not in self._corp_tags for t in add + remove):
            raise ApiError(40068)
        tags = [t for t in rel.tag_ids if t not in remove]
        tags += [t for t in dict.fromkeys(add) if t not in tags and t not in remove]
        rel.tag_ids = tags
        return self._ok()

    def _wc_follow_user_list(self, q: dict, body: dict) -> dict:
        return self._ok(follow_user=list(self._follow_users))

    def _wc_list(self, q: dict, body: dict) -> dict:
        userid = q.get("userid")
        if userid not in self._follow_users:
            raise ApiError(40003)
        if not self._follow_users[userid]:
            raise ApiError(84061)  # the real API answers this for a member without customers
        return self._ok(external_userid=list(self._follow_users[userid]))

    def _follow_info(self, rel: _Relation) -> dict:
        return {"userid": rel.userid, "remark": rel.remark, "description": rel.description,
                "createtime": rel.createtime, "remark_mobiles": [], "oper_userid": rel.userid,
                "add_way": rel.add_way, **({"state": rel.state} if rel.state else {})}

    def _wc_get(self, q: dict, body: dict) -> dict:
        ext = q.get("external_userid")
        if ext not in self._contacts:
            raise ApiError(40096)
        follow = []
        for userid in self._followers_of.get(ext, ()):
            rel = self._relations[(userid, ext)]
            info = self._follow_info(rel)
            info["tags"] = [{"group_name": self._groups[self._corp_tags[t].group_id].group_name,
                             "tag_name": self._corp_tags[t].name, "tag_id": t, "type": 1}
                            for t in rel.tag_ids]
            follow.append(info)
        return self._ok(external_contact=dict(self._contacts[ext]), follow_user=follow, next_cursor="")

    def _wc_batch_get_by_user(self, q: dict, body: dict) -> dict:
        userids = body.get("userid_list")
        if not isinstance(userids, list) or not 1 <= len(userids) <= self.limits.wecom_batch_userids:
            raise ApiError(40058)
        if any(u not in self._follow_users for u in userids):
            raise ApiError(40003)
        limit = body.get("limit") or 50
        if not isinstance(limit, int) or not 1 <= limit <= self.limits.wecom_batch_limit:
            raise ApiError(40058)
        try:
            start = int(base64.urlsafe_b64decode(body["cursor"]).decode()) if body.get("cursor") else 0
        except (ValueError, UnicodeDecodeError):
            raise ApiError(40058) from None
        # the cursor is a position in the (userid, external_userid) pairs of userid_list's members
        pairs: list[tuple[str, str]] = []
        skip = start
        for u in userids:
            contacts = self._follow_users[u]
            if skip >= len(contacts):
                skip -= len(contacts)
                continue
            pairs.extend((u, e) for e in contacts[skip:skip + limit - len(pairs)])
            skip = 0
            if len(pairs) == limit:
                break
        items = [{"external_contact": dict(self._contacts[e]),
                  "follow_info": {**self._follow_info(self._relations[(u, e)]),
                                  "tag_id": list(self._relations[(u, e)].tag_ids)}}
                 for u, e in pairs]
        end = start + len(pairs)
        more = end < sum(len(self._follow_users[u]) for u in userids)
        cursor = base64.urlsafe_b64encode(str(end).encode()).decode() if more else ""
        return self._ok(external_contact_list=items, next_cursor=cursor)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeWeChat):
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        """Keep-alive handler threads would otherwise keep serving after stop()."""
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or vanish are expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    server_version = "FakeWeChat/1.0"
    timeout = 60  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms ACK stalls

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self, method: str) -> None:
        fake: FakeWeChat = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""  # read fully so a drop is a clean FIN
        try:
            status, payload, drop = fake.handle(method, parts.path, query, raw)
        except Exception:
            with fake._lock:
                fake.errors.append(traceback.format_exc())
            status, payload, drop = 500, {"errcode": -1000, "errmsg": "fake server bug"}, False
        if drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; encoding=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (timeout); nothing to do


# ---------------------------------------------------------------------- subprocess mode


def admin(url: str, name: str, payload: Any = None, *, timeout: float = 10.0) -> Any:
    """Call an admin route of a (subprocess) fake: ``admin(url, "state")``,
    ``admin(url, "seed", {...})``.  ``url`` is ``http://127.0.0.1:PORT`` (base_url works too)."""
    root = url.split("/cgi-bin")[0].rstrip("/")
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"{root}/_fake/{name}", data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return json.loads(res.read())


class FakeWeChatProcess:
    """``python tests/fakewechat.py ...`` as a child process; use as a context manager.

    ``args`` are CLI flags (see ``--help``).  ``port``, ``url``, ``base_url``, ``admin(name,
    payload)``; ``kill()`` sends SIGKILL, ``stop()`` SIGTERM.
    """

    def __init__(self, *args: str, python: str = sys.executable, startup_timeout: float = 10.0):
        import subprocess

        self.proc = subprocess.Popen(
            [python, "-u", __file__, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = _readline_with_timeout(self.proc, startup_timeout)
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/cgi-bin/"

    def admin(self, name: str, payload: Any = None) -> Any:
        return admin(self.url, name, payload)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "FakeWeChatProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def _readline_with_timeout(proc: Any, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--{what} expects NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fake WeChat official-account + WeCom API server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port; the port is printed")
    defaults = FakeWeChat()
    p.add_argument("--appid", default=defaults.appid)
    p.add_argument("--secret", default=defaults.secret)
    p.add_argument("--corpid", default=defaults.corpid)
    p.add_argument("--corpsecret", default=defaults.corpsecret)
    p.add_argument("--token-lifetime", type=float, default=7200.0)
    p.add_argument("--fault", action="append", default=[], metavar="KIND=SHARE",
                   help=f"random fault share, KIND in {', '.join(FAULT_KINDS)} (repeatable)")
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument("--fault-endpoint", action="append", default=None, metavar="ENDPOINT",
                   help="restrict random faults to these endpoints (repeatable)")
    p.add_argument("--slow-delay", type=float, default=0.5)
    p.add_argument("--quota", action="append", default=[], metavar="ENDPOINT=N")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=N",
                   help=f"override a platform limit: {', '.join(f.name for f in dataclasses.fields(Limits))}")
    p.add_argument("--followers", type=int, default=0, help="seed this many followers")
    p.add_argument("--seed-file", help="JSON accepted by FakeWeChat.seed")
    a = p.parse_args(argv)

    limits = Limits(**{k: int(v) for k, v in _pairs(a.limit, "limit").items()})
    fake = FakeWeChat(
        appid=a.appid, secret=a.secret, corpid=a.corpid, corpsecret=a.corpsecret,
        token_lifetime=a.token_lifetime,
        faults={k: float(v) for k, v in _pairs(a.fault, "fault").items()},
        fault_seed=a.fault_seed, fault_endpoints=a.fault_endpoint, slow_delay=a.slow_delay,
        quotas={k: int(v) for k, v in _pairs(a.quota, "quota").items()},
        limits=limits, host=a.host, port=a.port,
    )
    if a.followers:
        fake.add_followers(a.followers)
    if a.seed_file:
        with open(a.seed_file, encoding="utf-8") as fh:
            fake.seed(json.load(fh))
    fake._server = _Server((a.host, a.port), _Handler, fake)

    def _terminate(signum: int, frame: Any) -> None:
        # shutdown() must run outside the serving thread
        threading.Thread(target=fake._server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    print(fake.port, flush=True)
    fake.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
