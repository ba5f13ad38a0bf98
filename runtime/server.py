"""``tagdsl serve``: the callback server for WeChat official-account pushes.

A plain ASGI application (:class:`CallbackASGI`) served by uvicorn with
httptools and uvloop on a socket bound up front (``--workers N``: N forked
processes, each running ``uvicorn.Server.serve(sockets=[sock])``). The event
loop only parses, checks and decrypts; the database work is in the event
processor's writer thread (runtime/events.py), which group-commits every push
waiting, and a request awaits its push's commit through a future, so no
request waits behind another one's database work.

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
over ``max_body`` bytes (413: up front from Content-Length, or while a chunked
body is read) or with neither Content-Length nor chunked encoding (411), a
DOCTYPE or ENTITY declaration anywhere (400; checked on the raw body and on
the decrypted text before any XML parser sees them), malformed XML or a
message without its required fields (400), a safe-mode message for another
AppId (403), a request head over 16 KB (431).
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
    def start(self, method: str, target: str, headers: Mapping[str, str]) -> Union[Response, int, None]:
        """Checks that need no body: a final Response, or the number of body bytes to read
        (None: a chunked body, of at most ``max_body`` bytes)."""
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
            if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
                size = None  # read by the HTTP layer, refused (413) as soon as it passes max_body
            elif length is None or not length.strip().isdigit():
                raise Refused(411, "Content-Length required")
            else:
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
        if first is None:
            if len(body) > self.max_body:
                return Response(413, f"body over {self.max_body} bytes")
        elif len(body) != first:
            return Response(400, "body length differs from its Content-Length")
        accepted = self.finish(target, body)
        if isinstance(accepted, Response):
            return accepted
        try:
            outcome = self.processor.process(accepted.push)
        except TagDSLError as exc:
            return self.answer(accepted, None, exc)
        return self.answer(accepted, outcome)


MAX_HEAD = 16 * 1024  # request line and headers
# Bytes received while a request head is incomplete, counted by packet (see _Uvicorn.protocol):
# one packet (uvloop reads at most 256 KB) may end an earlier request.
HEAD_BUFFER = 256 * 1024 + MAX_HEAD
SWITCH_INTERVAL = 0.0005  # seconds


# -- ASGI application, served by uvicorn ------------------------------------------------------------

def _resolve(future: asyncio.Future, item) -> None:
    if not future.done():  # not cancelled by a server shutdown
        future.set_result(item)


class CallbackASGI:
    """The callback endpoint as a plain ASGI application around :class:`CallbackApp`.

    The checks that need no body run first (a refusal before the body is read
    closes the connection, so the body is never read); the body is read from
    the ASGI stream up to ``max_body`` bytes (a chunked body over it is refused
    413 as soon as it passes it) within ``body_timeout`` seconds (else 408). An
    accepted push goes to the processor's writer thread; the request's task
    awaits a future that the writer's ``on_done`` callback completes through
    ``call_soon_threadsafe``, so the event loop never blocks on the database."""

    def __init__(self, app: CallbackApp, *, body_timeout: float = 15.0):
        self.app = app
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off and there are no websockets; nothing else is served
            return
        app = self.app
        method = scope["method"]
        headers: dict[str, str] = {}
        head = len(scope["raw_path"]) + len(scope["query_string"])
        for name, value in scope["headers"]:
            head += len(name) + len(value) + 4
            headers[name.decode("latin-1")] = value.decode("latin-1")
        has_body = method == "POST" and ("transfer-encoding" in headers
                                         or headers.get("content-length", "0").strip() != "0")
        if head > MAX_HEAD:
            await _send(send, Response(431, "request head too large"), close=True)
            return
        query = scope["query_string"].decode("latin-1")
        target = scope["raw_path"].decode("latin-1") + ("?" + query if query else "")
        first = app.start(method, target, headers)
        if isinstance(first, Response):
            # Refused before its body was read: close rather than read (and discard) the body.
            await _send(send, first, close=first.status >= 400 and has_body)
            return
        body = await self._body(receive)
        if body is None:  # the client went away
            return
        if isinstance(body, Response):
            await _send(send, body, close=True)
            return
        accepted = app.finish(target, body)
        if isinstance(accepted, Response):
            await _send(send, accepted)
            return
        await _send(send, await self._process(accepted))

    async def _body(self, receive) -> Union[bytes, Response, None]:
        """The request body (at most ``max_body`` bytes), a Response refusing it, or None (disconnected)."""
        limit = self.app.max_body
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        log.warning("refused POST %s: body over %d bytes", CALLBACK_PATH, limit)
                        return Response(413, f"body over {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError:
            return Response(408, "body not received")

    async def _process(self, accepted: Accepted) -> Response:
        app = self.app
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(item) -> None:  # in the writer thread
            try:
                loop.call_soon_threadsafe(_resolve, future, item)
            except RuntimeError:  # pragma: no cover - the loop is closed (server stopped)
                pass

        try:
            item = app.processor.submit(accepted.push, on_done=done)
        except TagDSLError as exc:
            return app.answer(accepted, None, exc)
        if item is None:  # acknowledged, not stored
            return app.answer(accepted, None)
        item = await future
        try:
            outcome, error = app.processor.result(item), None
        except TagDSLError as exc:
            outcome, error = None, exc
        try:
            return app.answer(accepted, outcome, error)
        except Exception as exc:  # pragma: no cover - rendering the reply failed; the push is stored
            log.error("reply to %s not rendered: %s", accepted.push.openid, exc)
            return Response(200, "success")


_CONTENT_TYPES: dict[str, bytes] = {}


async def _send(send, response: Response, close: bool = False) -> None:
    data = response.text.encode("utf-8")
    content_type = _CONTENT_TYPES.get(response.content_type)
    if content_type is None:
        content_type = _CONTENT_TYPES[response.content_type] = response.content_type.encode("latin-1")
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class _JoinedWrites:
    """A transport whose writes within one event-loop step are sent as one: uvicorn writes
    a response's head and its body separately, and uvloop sends each at once (two system
    calls and two TCP segments per answer otherwise)."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: Optional[list[bytes]] = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class _Uvicorn:
    """Builds the ``uvicorn.Server`` of one server process (imported lazily: the CLI's other commands
    do not pay for it)."""

    @staticmethod
    def protocol():
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class BoundedHead(HttpToolsProtocol):
            """uvicorn's httptools protocol with a bound on a request head's memory: llhttp
            keeps the head of a request without limit, so a client sending headers forever
            would grow the process. Bytes received while a head is incomplete are counted
            (a packet's bytes of an earlier request included, hence the margin over MAX_HEAD;
            the exact 16 KB limit is checked on the parsed head by CallbackASGI)."""

            head_bytes = 0

            def connection_made(self, transport) -> None:
                super().connection_made(_JoinedWrites(transport, self.loop))

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if self.head_bytes >= 0:  # a head in progress (or none started): count the packet
                    self.head_bytes += len(data)
                    if self.head_bytes > HEAD_BUFFER and not self.transport.is_closing():
                        log.warning("refused: request head over %d bytes", HEAD_BUFFER)
                        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                             b"content-type: text/plain; charset=utf-8\r\ncontent-length: 22\r\n"
                                             b"connection: close\r\n\r\nrequest head too large")
                        self.transport.close()

            def on_headers_complete(self) -> None:
                self.head_bytes = -1  # the body (not counted) until the message completes
                super().on_headers_complete()

            def on_message_complete(self) -> None:
                self.head_bytes = 0
                super().on_message_complete()

        return BoundedHead

    @staticmethod
    def server(asgi: CallbackASGI, *, idle_timeout: float, ready: threading.Event, parent: Optional[int]):
        import contextlib

        import uvicorn

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets=sockets)
                ready.set()

            async def on_tick(self, counter: int) -> bool:
                if parent is not None and counter % 10 == 0 and os.getppid() != parent:
                    self.should_exit = True  # the server process is gone (killed): stop too
                return await super().on_tick(counter)

            @contextlib.contextmanager
            def capture_signals(self):
                # uvicorn's own re-raises the signal after its graceful shutdown (a worker
                # would die of SIGTERM before closing its writer): stop, then return normally.
                # A worker leaves Ctrl-C to the server process, which stops it with SIGTERM.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handled = (signal.SIGTERM,) if parent is not None else (signal.SIGINT, signal.SIGTERM)
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        config = uvicorn.Config(
            asgi, http=_Uvicorn.protocol(), loop="uvloop", interface="asgi3", lifespan="off", ws="none",
            log_config=None, access_log=False, proxy_headers=False, server_header=False,
            timeout_keep_alive=max(1, int(idle_timeout)), timeout_graceful_shutdown=30)
        return Server(config)


class CallbackServer:
    """The listening socket, bound before anything is forked, and uvicorn serving
    :class:`CallbackASGI` on it (httptools, uvloop): ``serve_forever()`` in the
    calling thread, or ``start_background()``; ``shutdown()`` from another thread."""

    def __init__(self, app: CallbackApp, host: str = "127.0.0.1", port: int = 8080, *, idle_timeout: float = 15.0,
                 workers: int = 1):
        self.app = app
        self.idle_timeout = idle_timeout
        self.workers = workers
        self._parent: Optional[int] = None  # in a worker process: the pid of the server that forked it
        self.socket = socket.create_server((host, port), backlog=1024)
        self._port = self.socket.getsockname()[1]
        self.asgi = CallbackASGI(app, body_timeout=idle_timeout)
        self.uvicorn = None  # the uvicorn.Server of this process, once serving
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return self._port

    def serve_forever(self) -> None:
        """Serve until ``shutdown()`` (or Ctrl-C); with ``workers > 1``, in that many forked processes."""
        if self.workers > 1:
            self._prefork()
        else:
            self._serve()

    def _serve(self) -> None:
        import uvloop

        # Two threads share the GIL: the event loop and the writer, whose every
        # statement releases it. At the default 5 ms switch interval the writer
        # waits up to 5 ms per statement while the loop parses requests.
        sys.setswitchinterval(SWITCH_INTERVAL)
        server = _Uvicorn.server(self.asgi, idle_timeout=self.idle_timeout, ready=self._ready, parent=self._parent)
        self.uvicorn = server
        self.loop = uvloop.new_event_loop()
        try:
            self.loop.run_until_complete(server.serve(sockets=[self.socket]))
        finally:
            self._ready.set()
            self.loop.close()
            self._stopped.set()

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
        if self.uvicorn is not None:
            self.uvicorn.should_exit = True  # uvicorn looks every 0.1 s, then closes gracefully
            self._stopped.wait(40)

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
