"""``tagdsl serve``: the callback server for WeChat official-account pushes.

Standard library only: an ``asyncio`` server with a minimal HTTP/1.1 parser
(keep-alive, Content-Length bodies) in one thread, and the database work in
the event processor's writer thread (runtime/events.py), which group-commits
every push waiting. A connection has at most one request in progress; idle
connections (or a body that does not arrive) are closed after
``idle_timeout`` seconds. The event loop only parses, checks and decrypts, so
no request waits behind another one's database work.

Callback path ``/wechat``:

* ``GET`` — the URL verification handshake: ``check_signature`` over
  (token, timestamp, nonce), answers ``echostr``.
* ``POST`` — a message or event, plaintext (``signature``) or safe mode
  (``encrypt_type=aes`` + ``msg_signature``, decrypted with ``WeChatCrypto``;
  the AppId inside the ciphertext must be the configured appid). Answered
  ``success`` once the push is committed (runtime/events.py), or with a
  passive text reply (``wechatpy.replies.TextReply``, encrypted in safe mode)
  when the push made the follower gain a tag with a ``reply``; a push seen
  before changes nothing and gets the same answer.

Refused with 4xx, changing nothing: a bad or missing signature (403), a
timestamp outside ``replay_window`` seconds of the server clock (403), a body
over ``max_body`` bytes (413) or without Content-Length (411), a DOCTYPE or
ENTITY declaration anywhere (400; checked on the raw body and on the decrypted
text before any XML parser sees them), malformed XML or a message without its
required fields (400), a safe-mode message for another AppId (403).
A database failure is 500 (WeChat retries; the deduplication makes the retry safe).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Callable, Mapping, Optional, Union
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

from tagdsl import TagDSLError
from tagdsl import ir as I
from tagdsl.config import Config

from . import store
from .events import EventProcessor, Outcome, Push, PushError, ServeSetupError, push_from_dict

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


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    text: str
    content_type: str = "text/plain; charset=utf-8"


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A push that passed every check: the processor stores it, then :meth:`CallbackApp.answer` answers it."""

    push: Push
    params: Mapping[str, str]
    safe: bool


def _fields(element) -> dict:
    out: dict = {}
    for child in element:
        if len(child):
            value = _fields(child)
        else:
            value = child.text.strip() if child.text else None
            value = value or None
        if child.tag in out:
            previous = out[child.tag]
            out[child.tag] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            out[child.tag] = value
    return out


def _cdata(text: str) -> str:
    # wechatpy puts field values in CDATA sections unescaped: split any "]]>".
    return text.replace("]]>", "]]]]><![CDATA[>")


class CallbackApp:
    """The request logic, independent of the HTTP plumbing: :meth:`start` with the
    request line and headers (before the body is read), :meth:`finish` with the
    body, :meth:`answer` with the processor's outcome; :meth:`handle` does all three."""

    def __init__(self, processor: EventProcessor, credentials: Credentials, *, max_body: int = DEFAULT_MAX_BODY,
                 replay_window: int = DEFAULT_REPLAY_WINDOW, wall_clock: Callable[[], float] = time.time):
        self.processor = processor
        self.credentials = credentials
        self.crypto = make_crypto(credentials)
        self.max_body = max_body
        self.replay_window = replay_window
        self.wall_clock = wall_clock

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
        """The fields of the ``<xml>`` root: ``{tag: text}`` (text stripped, empty -> None;
        an element with children -> a dict; a repeated tag -> a list), as xmltodict gives
        them. ElementTree's C parser: the declaration check has run before (no DOCTYPE,
        so no entity can be declared, expanded or fetched)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "body is not UTF-8") from None
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as exc:
            raise Refused(400, f"malformed XML: {str(exc)[:80]}") from None
        if root.tag != "xml" or len(root) == 0:
            raise Refused(400, "malformed message: no <xml> element with fields")
        return _fields(root)

    # -- requests ----------------------------------------------------------------------------
    def start(self, method: str, target: str, headers: Mapping[str, str]) -> Union[Response, int]:
        """Checks that need no body: a final Response, or the number of body bytes to read."""
        parts = urlsplit(target)
        if parts.path != CALLBACK_PATH:
            return Response(404, "not found")
        params = self._params(parts.query)
        try:
            if method == "GET":
                self._check_signature(params)
                self._check_time(params)
                return Response(200, params.get("echostr", ""))
            if method != "POST":
                return Response(405, "method not allowed")
            length = headers.get("content-length")
            if length is None or not length.strip().isdigit():
                raise Refused(411, "Content-Length required")
            size = int(length)
            if size > self.max_body:
                raise Refused(413, f"body over {self.max_body} bytes")
            # Signature first (cheap, and nothing is parsed for a stranger), then the body.
            if params.get("encrypt_type", "raw").lower() != "aes":
                self._check_signature(params)
            elif not params.get("msg_signature") or "nonce" not in params:
                raise Refused(403, "missing msg_signature")
            self._check_time(params)
            return size
        except Refused as exc:
            log.warning("refused %s %s: %s", method, CALLBACK_PATH, exc.reason)
            return Response(exc.status, exc.reason)

    def finish(self, target: str, body: bytes) -> Union[Response, Accepted]:
        """The body of a POST that :meth:`start` accepted: a Response (refused) or the Accepted push."""
        try:
            return self._push(self._params(urlsplit(target).query), body)
        except Refused as exc:
            log.warning("refused POST %s: %s", CALLBACK_PATH, exc.reason)
            return Response(exc.status, exc.reason)

    def _push(self, params: Mapping[str, str], body: bytes) -> Accepted:
        from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

        safe = params.get("encrypt_type", "raw").lower() == "aes"
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
        return Accepted(push, params, safe)

    def answer(self, accepted: Accepted, outcome: Optional[Outcome], error: Optional[BaseException] = None
               ) -> Response:
        """The answer to a processed push: ``success``, or the passive reply (encrypted in safe mode)."""
        push = accepted.push
        if error is not None:
            log.error("push from %s not stored: %s", push.openid, error)
            return Response(500, "not stored")
        if outcome is not None and outcome.duplicate:
            log.info("duplicate push from %s ignored", push.openid)
        if outcome is None or outcome.reply is None:
            return Response(200, "success")
        from wechatpy.replies import TextReply

        xml = TextReply(source=_cdata(push.to), target=_cdata(push.openid), content=_cdata(outcome.reply),
                        time=int(self.wall_clock())).render()
        if accepted.safe:
            params = accepted.params
            xml = self.crypto.encrypt_message(xml, params["nonce"], params["timestamp"])
        return Response(200, xml, "application/xml; charset=utf-8")

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """One request, synchronously (for callers without an event loop)."""
        first = self.start(method, target, {k.lower(): v for k, v in headers.items()})
        if isinstance(first, Response):
            return first
        if method != "POST":  # pragma: no cover - start answers everything but POST
            return Response(405, "method not allowed")
        if len(body) != first:
            return Response(400, "body length differs from its Content-Length")
        accepted = self.finish(target, body)
        if isinstance(accepted, Response):
            return accepted
        try:
            outcome = self.processor.process(accepted.push)
        except TagDSLError as exc:
            return self.answer(accepted, None, exc)
        return self.answer(accepted, outcome)


# -- HTTP/1.1 over asyncio ------------------------------------------------------------------------

MAX_HEAD = 16 * 1024  # request line and headers
SWITCH_INTERVAL = 0.0005  # seconds
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 505: "HTTP Version Not Supported"}


class _Connection(asyncio.Protocol):
    """One client connection: requests in sequence (keep-alive), one in progress at a time."""

    def __init__(self, server: "CallbackServer"):
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.head: Optional[tuple[str, str, bool, int]] = None  # method, target, keep-alive, body size
        self.busy = False  # a push is with the processor
        self.closing = False
        self.paused = False  # reading stopped: a client sending ahead while its push is processed
        self.timer: Optional[asyncio.TimerHandle] = None

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        self._arm()

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._arm()
            self._advance()
        elif len(self.buffer) > MAX_HEAD + self.app.max_body and not self.paused:
            self.transport.pause_reading()  # bounded memory per connection
            self.paused = True

    # -- timeouts -------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.server.idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.busy or self.closing:
            return
        if self.head is not None:  # the body did not arrive
            self._send(Response(408, "body not received"), keep_alive=False)
        else:
            self.closing = True
            self.transport.close()

    # -- requests -------------------------------------------------------------------------------
    def _advance(self) -> None:
        while not self.busy and not self.closing:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end > MAX_HEAD or (end < 0 and len(self.buffer) > MAX_HEAD):
                    self._send(Response(431, "request head too large"), keep_alive=False)
                    return
                if end < 0:
                    return
                head = bytes(self.buffer[:end])
                del self.buffer[:end + 4]
                if not self._begin(head):
                    return
            method, target, keep_alive, size = self.head
            if len(self.buffer) < size:
                return
            body = bytes(self.buffer[:size])
            del self.buffer[:size]
            self.head = None
            accepted = self.app.finish(target, body)
            if isinstance(accepted, Response):
                self._send(accepted, keep_alive)
                continue
            self._process(accepted, keep_alive)

    def _begin(self, head: bytes) -> bool:
        """Parse the request line and headers; False when the request was answered already."""
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                name = name.lower()
                if name in headers and name == "content-length":
                    raise ValueError("repeated Content-Length")
                headers[name] = value.strip()
        except ValueError:
            self._send(Response(400, "malformed request"), keep_alive=False)
            return False
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self._send(Response(505, "HTTP/1.1 only"), keep_alive=False)
            return False
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        if "transfer-encoding" in headers:  # no chunked bodies (WeChat sends Content-Length)
            self._send(Response(411, "Content-Length required"), keep_alive=False)
            return False
        first = self.app.start(method, target, headers)
        if isinstance(first, Response):
            # Anything refused before its body was read closes the connection (the body may follow).
            self._send(first, keep_alive and (first.status < 400 or "content-length" not in headers
                                              or headers["content-length"] == "0"))
            return False
        self.head = (method, target, keep_alive, first)
        return True

    def _process(self, accepted: Accepted, keep_alive: bool) -> None:
        def done(item) -> None:  # in the writer thread
            try:
                self.loop.call_soon_threadsafe(self._processed, accepted, item, keep_alive)
            except RuntimeError:  # pragma: no cover - the loop is closed (server stopped)
                pass

        try:
            item = self.app.processor.submit(accepted.push, on_done=done)
        except TagDSLError as exc:
            self._send(self.app.answer(accepted, None, exc), keep_alive)
            return
        if item is None:  # acknowledged, not stored
            self._send(self.app.answer(accepted, None), keep_alive)
            return
        self.busy = True
        if self.timer is not None:
            self.timer.cancel()

    def _processed(self, accepted: Accepted, item, keep_alive: bool) -> None:
        self.busy = False
        try:
            outcome, error = self.app.processor.result(item), None
        except TagDSLError as exc:
            outcome, error = None, exc
        try:
            response = self.app.answer(accepted, outcome, error)
        except Exception as exc:  # pragma: no cover - rendering the reply failed; the push is stored
            log.error("reply to %s not rendered: %s", accepted.push.openid, exc)
            response = Response(200, "success")
        if self.closing:
            return
        self._send(response, keep_alive)
        if not self.closing:
            self._arm()
            self._advance()
        if self.paused and not self.closing and not self.busy:
            self.paused = False
            self.transport.resume_reading()

    def _send(self, response: Response, keep_alive: bool) -> None:
        data = response.text.encode("utf-8")
        head = (f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(data)}\r\n"
                + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
        if self.closing:
            return
        self.transport.write(head.encode("latin-1") + data)
        if not keep_alive:
            self.closing = True
            self.transport.close()


class CallbackServer:
    """The listening socket and its event loop: ``serve_forever()`` in the calling
    thread, or ``start_background()``; ``shutdown()`` from another thread."""

    def __init__(self, app: CallbackApp, host: str = "127.0.0.1", port: int = 8080, *, idle_timeout: float = 15.0,
                 workers: int = 1):
        self.app = app
        self.idle_timeout = idle_timeout
        self.workers = workers
        self._parent: Optional[int] = None  # in a worker process: the pid of the server that forked it
        self.socket = socket.create_server((host, port), backlog=1024)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.connections: set[_Connection] = set()
        self._stop: Optional[asyncio.Future] = None
        self._ready = threading.Event()
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def serve_forever(self) -> None:
        """Serve until ``shutdown()`` (or Ctrl-C); with ``workers > 1``, in that many forked processes."""
        if self.workers > 1:
            self._prefork()
        else:
            self._serve()

    def _serve(self) -> None:
        # Two threads share the GIL: the event loop and the writer, whose every
        # statement releases it. At the default 5 ms switch interval the writer
        # waits up to 5 ms per statement while the loop parses requests.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.loop = asyncio.new_event_loop()
        try:
            listener = self.loop.run_until_complete(
                self.loop.create_server(lambda: _Connection(self), sock=self.socket))
            self._stop = self.loop.create_future()
            if self._parent is not None:
                self.loop.add_signal_handler(signal.SIGTERM, self._request_stop)
                self.loop.call_later(1.0, self._watch_parent)
            self._ready.set()
            try:
                self.loop.run_until_complete(self._stop)
            finally:
                listener.close()
                for conn in list(self.connections):
                    conn.transport.close()
                self.loop.run_until_complete(asyncio.sleep(0))
        finally:
            self._ready.set()
            self.loop.close()
            self._stopped.set()

    def _request_stop(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def _watch_parent(self) -> None:
        if os.getppid() != self._parent:  # the server process is gone (killed): stop too
            self._request_stop()
        else:
            self.loop.call_later(1.0, self._watch_parent)

    def _prefork(self) -> None:
        """Worker processes sharing the listening socket, each with its own event loop,
        writer and database connection (PostgreSQL/MySQL: row locks and the
        deduplication key keep them consistent). A worker that exits is replaced;
        Ctrl-C or SIGTERM stops them all."""
        self.app.processor.db.dispose()  # no pooled connection crosses the fork
        children: dict[int, float] = {}
        stopping = False

        def spawn() -> None:
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with SIGTERM
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    self._parent = os.getppid()
                    self._serve()
                    self.app.processor.close()
                except BaseException:  # pragma: no cover - logged, the parent starts another
                    log.exception("worker %d failed", os.getpid())
                    code = 1
                finally:
                    os._exit(code)
            children[pid] = time.monotonic()

        def terminate(_signum, _frame) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            for _ in range(self.workers):
                spawn()
            while children:
                pid, status = os.wait()
                started = children.pop(pid, None)
                if started is not None and not stopping:
                    log.error("worker %d exited (status %d); starting another", pid, status)
                    if time.monotonic() - started < 1.0:
                        time.sleep(1.0)  # not in a tight loop when workers fail at once
                    spawn()
        except KeyboardInterrupt:
            pass
        finally:
            stopping = True
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 30
            while children and time.monotonic() < deadline:
                for pid in list(children):
                    try:
                        if os.waitpid(pid, os.WNOHANG)[0] == pid:
                            del children[pid]
                    except ChildProcessError:
                        del children[pid]
                time.sleep(0.05)
            for pid in children:  # pragma: no cover - a worker stuck for 30 s
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            signal.signal(signal.SIGTERM, previous)

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="tagdsl-serve", daemon=True)
        thread.start()
        self._ready.wait()
        return thread

    def shutdown(self) -> None:
        if self.loop is not None and self._stop is not None and not self._stopped.is_set():
            self.loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
            self._stopped.wait(10)

    def server_close(self) -> None:
        self.socket.close()
        self.app.processor.close()


def make_server(config: Config, ruleset: I.Ruleset, url: str, *, host: str = "127.0.0.1", port: int = 8080,
                environ: Mapping[str, str] | None = None, clock: Callable[[], dt.datetime] | None = None,
                wall_clock: Callable[[], float] = time.time, max_body: int = DEFAULT_MAX_BODY,
                replay_window: int = DEFAULT_REPLAY_WINDOW, workers: int = 1) -> CallbackServer:
    """A ready server (store checked, tables created, credentials loaded); call
    ``serve_forever()`` or ``start_background()`` (one worker only). Errors a user can fix raise TagDSLError."""
    credentials = load_credentials(config, environ)
    db = store.connect(url, lock_timeout=10.0)
    if workers > 1 and db.dialect.name == "sqlite":
        db.dispose()
        raise ServeSetupError("--workers above 1 needs PostgreSQL or MySQL: SQLite has one writer at a time "
                              "(one process already commits every push waiting in one transaction)")
    processor = EventProcessor(config, ruleset, db, clock=clock)
    processor.ensure_tables()
    app = CallbackApp(processor, credentials, max_body=max_body, replay_window=replay_window, wall_clock=wall_clock)
    try:
        return CallbackServer(app, host, port, workers=workers)
    except OSError as exc:
        db.dispose()
        raise ServeSetupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
