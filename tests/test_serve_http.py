"""`tagdsl serve`'s HTTP/1.1 layer (uvicorn) over raw sockets: keep-alive,
pipelined requests answered in order, chunked bodies read up to --max-body,
and the requests it refuses (oversized heads and bodies, smuggling-prone
headers, not HTTP) without storing anything."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from runtime import store
from runtime.server import make_server
from tagdsl import load_ruleset
from tagdsl.config import load_config

TZ = ZoneInfo("Asia/Shanghai")
T = dt.datetime(2026, 5, 1, 12, 0, 0)
NOW = int(T.replace(tzinfo=TZ).timestamp())
TOKEN = "tagdsltoken"
ENV = {"WECHAT_TOKEN": TOKEN, "WECHAT_AES_KEY": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"}


@pytest.fixture
def server(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "t.tag").write_text('tag "互动" when count(events) >= 1 { reply "你好" }\n', encoding="utf-8")
    (tmp_path / "tagdsl.toml").write_text('[project]\nrulesets = ["rules"]\n[database]\nurl = "sqlite:///store.db"\n'
                                          '[wechat_mp]\nappid = "wx0123456789abcdef"\n', encoding="utf-8")
    config = load_config(tmp_path / "tagdsl.toml")
    db = store.connect(config.database_url, create=True)
    store.create_store(db, config)
    db.dispose()
    srv = make_server(config, load_ruleset(config.ruleset_paths(), config), config.database_url, port=0,
                      environ=ENV, clock=lambda: T.replace(tzinfo=TZ), wall_clock=lambda: NOW)
    srv.start_background()
    yield config, srv
    srv.shutdown()
    srv.server_close()
    srv.app.processor.db.dispose()


def post(openid, n, extra_headers="", version="HTTP/1.1", content="hi"):
    sig = hashlib.sha1("".join(sorted([TOKEN, str(NOW), "x"])).encode()).hexdigest()
    body = (f"<xml><ToUserName>gh_x</ToUserName><FromUserName>{openid}</FromUserName><CreateTime>{NOW - 10}"
            f"</CreateTime><MsgType>text</MsgType><Content>{content}</Content><MsgId>{n}</MsgId></xml>").encode()
    return (f"POST /wechat?signature={sig}&timestamp={NOW}&nonce=x {version}\r\nHost: t\r\n{extra_headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def responses(sock, count):
    """``count`` responses read off ``sock``: (status, headers lower-cased, body)."""
    data, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
        size = int(headers["content-length"])
        while len(data) < size:
            data += sock.recv(65536)
        out.append((int(lines[0].split()[1]), headers, data[:size].decode()))
        data = data[size:]
    return out


def stored(config):
    db = store.connect(config.database_url)
    try:
        with db.connect() as conn:
            return conn.execute(sa.text("SELECT openid FROM events ORDER BY openid")).scalars().all()
    finally:
        db.dispose()


def test_keep_alive_and_pipelined_requests_are_answered_in_order(server):
    config, srv = server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        # Three pushes in one write (pipelined), then a fourth on the same connection.
        sock.sendall(post("o_1", 1) + post("o_2", 2) + post("o_1", 1))
        first = responses(sock, 3)
        sock.sendall(post("o_3", 3))
        second = responses(sock, 1)
    statuses = [status for status, _, _ in first + second]
    assert statuses == [200, 200, 200, 200]
    bodies = [body for _, _, body in first + second]
    # A new follower gains 互动: the passive reply; the retry of o_1's push gets it too.
    assert all("<Content><![CDATA[你好]]></Content>" in body for body in bodies)
    assert all("connection" not in headers for _, headers, _ in first + second)
    assert stored(config) == ["o_1", "o_2", "o_3"]


def chunked(request: bytes, pieces: int = 3) -> bytes:
    """``request`` with its body sent in chunks (Transfer-Encoding: chunked) instead of Content-Length."""
    head, body = request.split(b"\r\n\r\n", 1)
    head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length"))
    step = -(-len(body) // pieces)
    parts = [body[i:i + step] for i in range(0, len(body), step)]
    return (head + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


def test_chunked_body_is_read(server):
    config, srv = server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(chunked(post("o_c", 11)) + post("o_d", 12))
        answers = responses(sock, 2)
    assert [status for status, _, _ in answers] == [200, 200]
    assert all("connection" not in headers for _, headers, _ in answers)  # kept alive
    assert stored(config) == ["o_c", "o_d"]


@pytest.mark.parametrize("case", ["chunked_over_max_body", "length_over_max_body", "both_lengths", "bad_chunks",
                                  "head_too_large", "head_never_ends", "http_1_0_closes", "not_http"])
def test_refused_or_closed_at_the_http_layer(server, case):
    config, srv = server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        if case == "chunked_over_max_body":
            # 80 KB in 1 KB chunks: refused once past the 64 KB limit, the rest is not read.
            request = chunked(post("o_9", 9, content="h" * 80_000), pieces=80)
        elif case == "length_over_max_body":
            request = post("o_9", 9, content="h" * 80_000)
        elif case == "both_lengths":  # ambiguous framing (request smuggling): refused by the parser
            request = post("o_9", 9, "Transfer-Encoding: chunked\r\n")
        elif case == "bad_chunks":  # a body that claims to be chunked but is not
            request = post("o_9", 9).replace(b"Content-Length", b"Transfer-Encoding: chunked\r\nX-Was")
        elif case == "head_too_large":
            request = post("o_9", 9, "X-Filler: " + "a" * 20_000 + "\r\n")
        elif case == "head_never_ends":  # headers sent on and on: refused before the head is complete
            request = post("o_9", 9).split(b"\r\n")[0] + b"\r\n" + b"X-Filler: " + b"a" * 400_000
        elif case == "http_1_0_closes":
            request = post("o_9", 9, version="HTTP/1.0")
        else:
            request = b"HELLO\r\n\r\n"
        try:
            sock.sendall(request)
        except ConnectionResetError:  # pragma: no cover - closed while we were still sending
            pass
        (status, headers, _), = responses(sock, 1)
        try:
            assert sock.recv(65536 * 8) in (b"",)  # the server closed the connection
        except ConnectionResetError:  # closed with unread data of ours: a reset, closed all the same
            pass
    expected = {"chunked_over_max_body": 413, "length_over_max_body": 413, "both_lengths": 400, "bad_chunks": 400,
                "head_too_large": 431, "head_never_ends": 431, "http_1_0_closes": 200, "not_http": 400}
    assert status == expected[case]
    assert headers.get("connection") == "close"
    assert stored(config) == (["o_9"] if case == "http_1_0_closes" else [])
