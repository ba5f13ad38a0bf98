"""``tagdsl serve``: the callback server for WeChat official-account pushes.

Standard library only (``http.server.ThreadingHTTPServer``, HTTP/1.1
keep-alive): the work per push is synchronous database I/O and a few
milliseconds of Python under the GIL, so an event loop would buy nothing and
cost a dependency. One thread per connection; at most ``max_concurrency`` pushes
are processed at once (the others wait for a slot), and
idle connections are closed after ``idle_timeout`` seconds.

Callback path ``/wechat``:

* ``GET`` — the URL verification handshake: ``check_signature`` over
  (token, timestamp, nonce), answers ``echostr``.
* ``POST`` — a message or event, plaintext (``signature``) or safe mode
  (``encrypt_type=aes`` + ``msg_signature``, decrypted with ``WeChatCrypto``;
  the AppId inside the ciphertext must be the configured appid). Answered
  ``success`` once the push is committed (runtime/events.py); a push seen
  before is answered ``success`` and changes nothing.

Refused with 4xx, changing nothing: a bad or missing signature (403), a
timestamp outside ``replay_window`` seconds of the server clock (403), a body
over ``max_body`` bytes (413) or without Content-Length (411), a DOCTYPE or
ENTITY declaration anywhere (400; checked on the raw body and on the decrypted
text before any XML parser sees them), malformed XML or a message without its
required fields (400), a safe-mode message for another AppId (403).
A database failure is 500 (WeChat retries; the deduplication makes the retry safe).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping, Optional
from urllib.parse import parse_qs, urlsplit

from tagdsl import TagDSLError
from tagdsl import ir as I
from tagdsl.config import Config

from . import store
from .events import EventProcessor, PushError, ServeSetupError, push_from_dict

log = logging.getLogger("tagdsl.serve")

CALLBACK_PATH = "/wechat"
DEFAULT_MAX_BODY = 64 * 1024
DEFAULT_REPLAY_WINDOW = 300  # seconds
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Credentials:
    token: str
    aes_key: str
    appid: str


def load_credentials(config: Config, environ: Mapping[str, str] | None = None) -> Credentials:
    """Token and EncodingAESKey from the variables named by ``[wechat_mp] token_env`` /
    ``aes_key_env``, appid from ``[wechat_mp] appid`` (or ``appid_env``); ServeSetupError naming what is missing."""
    env = os.environ if environ is None else environ
    mp = config.wechat_mp
    token = env.get(mp.token_env, "")
    if not token:
        raise ServeSetupError(f"environment variable {mp.token_env} (the callback Token, [wechat_mp] token_env) "
                              "is not set")
    aes_key = env.get(mp.aes_key_env, "")
    if not aes_key:
        raise ServeSetupError(f"environment variable {mp.aes_key_env} (the EncodingAESKey, [wechat_mp] aes_key_env) "
                              "is not set")
    appid = mp.appid or (env.get(mp.appid_env, "") if mp.appid_env else "")
    if not appid:
        where = f"[wechat_mp] appid (or the variable {mp.appid_env})" if mp.appid_env else "[wechat_mp] appid"
        raise ServeSetupError(f"{where} is not set in tagdsl.toml; safe-mode messages are checked against it")
    try:
        make_crypto(Credentials(token, aes_key, appid))
    except Exception:
        raise ServeSetupError(f"{mp.aes_key_env} is not a valid EncodingAESKey (43 characters of base64)") from None
    return Credentials(token, aes_key, appid)


def make_crypto(credentials: Credentials):
    from wechatpy.crypto import WeChatCrypto

    return WeChatCrypto(credentials.token, credentials.aes_key, credentials.appid)


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class CallbackApp:
    """The request logic, independent of the HTTP plumbing: ``handle(method, target, headers, read_body)``."""

    def __init__(self, processor: EventProcessor, credentials: Credentials, *, max_body: int = DEFAULT_MAX_BODY,
                 replay_window: int = DEFAULT_REPLAY_WINDOW, wall_clock: Callable[[], float] = time.time,
                 max_concurrency: int = 8):
        self.processor = processor
        self.credentials = credentials
        self.crypto = make_crypto(credentials)
        self.max_body = max_body
        self.replay_window = replay_window
        self.wall_clock = wall_clock
        # Bounds the pushes processed at once (each holds a database connection).
        self.slots = threading.BoundedSemaphore(max_concurrency)

    # -- checks ------------------------------------------------------------------------------
    def _params(self, query: str) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def _check_time(self, params: Mapping[str, str]) -> None:
        stamp = params.get("timestamp", "")
        if not stamp.isdigit():
            raise Refused(403, "missing or malformed timestamp")
        if abs(self.wall_clock() - int(stamp)) > self.replay_window:
            raise Refused(403, f"timestamp outside the {self.replay_window}-second window (replay?)")

    def _check_signature(self, params: Mapping[str, str]) -> None:
        from wechatpy.exceptions import InvalidSignatureException
        from wechatpy.utils import check_signature

        if not params.get("signature") or "nonce" not in params:
            raise Refused(403, "missing signature")
        try:
            check_signature(self.credentials.token, params["signature"], params["timestamp"], params["nonce"])
        except InvalidSignatureException:
            raise Refused(403, "bad signature") from None

    @staticmethod
    def _no_declarations(data: bytes) -> None:
        if _DECLARATION.search(data):
            raise Refused(400, "XML with a DOCTYPE or ENTITY declaration refused")

    @staticmethod
    def _parse_xml(data: bytes) -> dict:
        import xml.parsers.expat

        import xmltodict

        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "body is not UTF-8") from None
        try:
            doc = xmltodict.parse(text, disable_entities=True)
        except (xml.parsers.expat.ExpatError, ValueError) as exc:
            raise Refused(400, f"malformed XML: {str(exc)[:80]}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("xml"), dict):
            raise Refused(400, "malformed message: no <xml> element with fields")
        return doc["xml"]

    # -- requests ----------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Mapping[str, str], read_body: Callable[[int], bytes]
               ) -> tuple[int, str]:
        parts = urlsplit(target)
        if parts.path != CALLBACK_PATH:
            return 404, "not found"
        params = self._params(parts.query)
        try:
            if method == "GET":
                return self._handshake(params)
            if method == "POST":
                return self._push(params, headers, read_body)
            return 405, "method not allowed"
        except Refused as exc:
            log.warning("refused %s %s: %s", method, CALLBACK_PATH, exc.reason)
            return exc.status, exc.reason

    def _handshake(self, params) -> tuple[int, str]:
        self._check_signature(params)
        self._check_time(params)
        return 200, params.get("echostr", "")

    def _push(self, params, headers, read_body) -> tuple[int, str]:
        from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

        length = headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise Refused(411, "Content-Length required")
        size = int(length)
        if size > self.max_body:
            raise Refused(413, f"body over {self.max_body} bytes")
        # Signature first (cheap, and nothing is parsed for a stranger), then the body.
        safe = params.get("encrypt_type", "raw").lower() == "aes"
        if not safe:
            self._check_signature(params)
        elif not params.get("msg_signature") or "nonce" not in params:
            raise Refused(403, "missing msg_signature")
        self._check_time(params)
        try:
            body = read_body(size)
        except OSError:  # the client stopped sending (idle timeout) or went away
            raise Refused(408, "body not received") from None
        if len(body) != size:
            raise Refused(400, "body shorter than its Content-Length")
        self._no_declarations(body)
        message = self._parse_xml(body)
        if safe:
            encrypted = message.get("Encrypt")
            if not isinstance(encrypted, str) or not encrypted:
                raise Refused(400, "malformed message: safe mode without <Encrypt>")
            try:
                plain = self.crypto.decrypt_message({"Encrypt": encrypted}, params["msg_signature"],
                                                    params["timestamp"], params["nonce"])
            except InvalidSignatureException:
                raise Refused(403, "bad msg_signature") from None
            except InvalidAppIdException:
                raise Refused(403, "message for another AppId") from None
            except Exception:
                raise Refused(400, "cannot decrypt <Encrypt>") from None
            plain_bytes = plain.encode("utf-8") if isinstance(plain, str) else plain
            self._no_declarations(plain_bytes)
            outer_to = message.get("ToUserName")
            message = self._parse_xml(plain_bytes)
            if isinstance(outer_to, str) and outer_to and message.get("ToUserName") != outer_to:
                raise Refused(400, "ToUserName of the envelope and of the message differ")
        try:
            push = push_from_dict(message)
        except PushError as exc:
            raise Refused(400, str(exc)) from None
        try:
            with self.slots:
                outcome = self.processor.process(push)
        except TagDSLError as exc:
            log.error("push from %s not stored: %s", push.openid, exc)
            return 500, "not stored"
        if outcome.duplicate:
            log.info("duplicate push from %s ignored", push.openid)
        return 200, "success"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tagdsl"
    sys_version = ""

    def _run(self, method: str) -> None:
        server: CallbackServer = self.server  # type: ignore[assignment]
        status, text = server.app.handle(method, self.path, self.headers, self.rfile.read)
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")  # an unread body may still be on the socket
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._run("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._run("POST")

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)


class CallbackServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: CallbackApp, host: str = "127.0.0.1", port: int = 8080, *, idle_timeout: float = 15.0):
        handler = type("Handler", (_Handler,), {"timeout": idle_timeout})
        super().__init__((host, port), handler)
        self.app = app

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="tagdsl-serve",
                                  daemon=True)
        thread.start()
        return thread


def make_server(config: Config, ruleset: I.Ruleset, url: str, *, host: str = "127.0.0.1", port: int = 8080,
                environ: Mapping[str, str] | None = None, clock: Callable[[], dt.datetime] | None = None,
                wall_clock: Callable[[], float] = time.time, max_body: int = DEFAULT_MAX_BODY,
                replay_window: int = DEFAULT_REPLAY_WINDOW, max_concurrency: int = 32) -> CallbackServer:
    """A ready server (store checked, tables created, credentials loaded); call
    ``serve_forever()`` or ``start_background()``. Errors a user can fix raise TagDSLError."""
    credentials = load_credentials(config, environ)
    db = store.connect(url, lock_timeout=10.0)  # its pool holds 5 + 10 connections: more than max_concurrency
    if db.dialect.name != "sqlite":
        # Each push in progress holds a pooled connection (the pool has 5 + 10);
        # on SQLite the pushes wait for the group commit instead (runtime/events.py).
        max_concurrency = min(max_concurrency, 12)
    processor = EventProcessor(config, ruleset, db, clock=clock)
    processor.ensure_tables()
    app = CallbackApp(processor, credentials, max_body=max_body, replay_window=replay_window, wall_clock=wall_clock,
                      max_concurrency=max_concurrency)
    try:
        return CallbackServer(app, host, port)
    except OSError as exc:
        db.dispose()
        raise ServeSetupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
