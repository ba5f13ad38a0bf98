"""WeChat client layer for tag sync: official accounts ("wechat_mp") and WeCom ("wecom").

The sync talks to WeChat only through this module:

* :func:`make_mp_client` / :func:`make_wecom_client` build wechatpy clients whose every request,
  the access-token fetch included, goes to a configurable API base (default: the official hosts).
  They raise only :class:`WeChatError` (never wechatpy or requests exceptions), with secrets
  redacted, and keep access tokens in a wechatpy ``SessionStorage`` so the runtime can persist
  them (e.g. in the database) with their expiry.
* :func:`call_with_retry` runs one API call with the retry policy (busy/network -> backoff,
  expired token -> refresh, 45009 -> :class:`QuotaExhausted`, anything else -> :class:`WeChatError`).
* :func:`chunks` splits openid lists for the 50-per-call membership endpoints.

Typical use::

    client = make_mp_client(appid, secret, session=db_token_storage)
    for batch in chunks(openids, MP_BATCH_OPENIDS):
        call_with_retry(lambda: client.tag.tag_user(tag_id, batch))

    wc = make_wecom_client(corpid, contact_secret)
    call_with_retry(lambda: wc.external_contact.mark_tag(userid, external_userid, add_tag=[tag_id]))
    # wechatpy 1.8 has no wrapper for batch/get_by_user; call it directly:
    call_with_retry(lambda: wc.post("externalcontact/batch/get_by_user",
                                    data={"userid_list": userids, "cursor": cursor, "limit": 100}))

wechatpy 1.8 behaviours this module works around (see ../shared/PITFALLS.md):

* ``fetch_access_token`` requests a hard-coded official URL and sends no timeout: both clients
  fetch ``<base>token`` / ``<base>gettoken`` with the client's timeout.
* API classes with their own absolute base (``wxa``, ``datacube`` ...) would still call the
  official host: absolute official URLs are rebased onto the configured base.
* Built-in ``auto_retry`` re-fetches the token and recurses on every 40001/40014/42001 without a
  bound; it is turned off here and :func:`call_with_retry` refreshes instead.
* The WeCom token cache key contains the first 10 characters of the corp secret; here it is a
  hash of the secret instead, so persisted keys reveal nothing.
* A requests error message contains the full URL, secret and access_token included; every
  error is rebuilt as a redacted :class:`WeChatError`, raised without the original exception
  attached (no ``__cause__``/``__context__`` to leak through tracebacks).
"""
from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar
from urllib.parse import quote, quote_plus, urlsplit

import requests
from wechatpy import WeChatClient as _WeChatMpClient
from wechatpy.enterprise import WeChatClient as _WeChatWecomClient
from wechatpy.exceptions import WeChatClientException, WeChatException
from wechatpy.session import SessionStorage

__all__ = [
    "DEFAULT_TIMEOUT",
    "InMemoryTokenStorage",
    "MP_API_BASE_URL",
    "MP_BATCH_OPENIDS",
    "MpClient",
    "QuotaExhausted",
    "RETRYABLE_ERRCODES",
    "TOKEN_ERRCODES",
    "WECOM_API_BASE_URL",
    "WeChatError",
    "WecomClient",
    "call_with_retry",
    "chunks",
    "make_mp_client",
    "make_wecom_client",
    "redact",
    "register_secret",
    "to_wechat_error",
]

log = logging.getLogger(__name__)

MP_API_BASE_URL = _WeChatMpClient.API_BASE_URL  # https://api.weixin.qq.com/cgi-bin/
WECOM_API_BASE_URL = _WeChatWecomClient.API_BASE_URL  # https://qyapi.weixin.qq.com/cgi-bin/
DEFAULT_TIMEOUT: float | tuple[float, float] = (5.0, 30.0)  # (connect, read) seconds

MP_BATCH_OPENIDS = 50  # tags/members/batchtagging and batchuntagging (40032 above)
QUOTA_ERRCODE = 45009
RETRYABLE_ERRCODES = frozenset({-1})  # "system busy": retry with backoff
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})  # invalid / not latest / expired access token

T = TypeVar("T")

# ---------------------------------------------------------------------------- redaction

# a query parameter or JSON field whose name ends in secret / access_token / refresh_token
# (secret, corpsecret, appsecret, component_access_token ...), whatever its value
_SECRET_NAME = r"[A-Za-z_]*(?:secret|access_token|refresh_token)"
_SECRET_PARAM_RE = re.compile(rf"(?i)((?<![A-Za-z0-9_]){_SECRET_NAME})(=|%3D)([^&\s'\"#<>,;)\]}}]*)")
_SECRET_JSON_RE = re.compile(rf"(?i)([\"']{_SECRET_NAME}[\"']\s*:\s*[\"'])([^\"']*)")
_MASK = "***"
_MIN_SECRET_LEN = 4  # shorter values would mangle ordinary text when replaced


class _SecretRegistry:
    """Secrets and tokens this process has seen (bounded), redacted from every WeChatError."""

    def __init__(self, maxsize: int = 512):
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def add(self, value: str | None) -> None:
        if not value or len(value) < _MIN_SECRET_LEN:
            return
        with self._lock:
            self._values[value] = None
            self._values.move_to_end(value)
            while len(self._values) > self._maxsize:
                self._values.popitem(last=False)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self._values)


_SECRETS = _SecretRegistry()


def register_secret(value: str | None) -> None:
    """Remember a secret or token so that every later :class:`WeChatError` redacts it.

    The client factories register the app/corp secret and every access token they fetch or read
    from the storage; call this for credentials that reach WeChat by other paths.
    """
    _SECRETS.add(value)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with secrets replaced by ``***``.

    Removes every value given in ``secrets`` and every registered secret (also URL-encoded), and
    the value of every ``secret=``, ``corpsecret=``, ``appsecret=``, ``*access_token=`` and
    ``*refresh_token=`` query parameter and JSON field, whatever its value.
    """
    text = _SECRET_PARAM_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{_MASK}", text)
    text = _SECRET_JSON_RE.sub(lambda m: f"{m.group(1)}{_MASK}", text)
    values = {s for s in (*secrets, *_SECRETS.snapshot()) if s and len(s) >= _MIN_SECRET_LEN}
    for value in sorted(values, key=len, reverse=True):  # longest first: no partial leftovers
        for form in {value, quote(value, safe=""), quote_plus(value)}:
            text = text.replace(form, _MASK)
    return text


# ---------------------------------------------------------------------------- errors


class WeChatError(Exception):
    """A failed WeChat call, safe to print and log: no secret or token in str() or repr().

    Attributes:
        errcode: WeChat's errcode (``None`` for network, timeout and HTTP errors).
        errmsg: WeChat's errmsg, or a description of the transport error (redacted).
        kind: ``"api"`` (WeChat answered an errcode), ``"network"``, ``"timeout"``, ``"http"``
            (non-2xx status), or ``"response"`` (unreadable answer).
        endpoint: the API path after ``/cgi-bin/`` (``"tags/members/batchtagging"``), if known.
        status: HTTP status for ``kind == "http"``.
        token_fetch: the error came from fetching the access token (a 40001 there means bad
            credentials, not an expired token, so it is not retried).
        attempts: how many attempts :func:`call_with_retry` made before giving up.
    """

    def __init__(
        self,
        message: str,
        errcode: int | None = None,
        errmsg: str | None = None,
        *,
        kind: str = "api",
        endpoint: str | None = None,
        status: int | None = None,
        token_fetch: bool = False,
        attempts: int = 1,
    ):
        super().__init__(message)
        self.message = message
        self.errcode = errcode
        self.errmsg = errmsg
        self.kind = kind
        self.endpoint = endpoint
        self.status = status
        self.token_fetch = token_fetch
        self.attempts = attempts
        self._client: Any = None  # for the token refresh in call_with_retry; never pickled

    @property
    def is_token_error(self) -> bool:
        """The access token was rejected (40001/40014/42001) on an API call."""
        return self.errcode in TOKEN_ERRCODES and not self.token_fetch

    @property
    def retryable(self) -> bool:
        """Transient: system busy, network error, timeout, HTTP 5xx or unreadable answer."""
        if self.kind == "api":
            return self.errcode in RETRYABLE_ERRCODES
        if self.kind == "http":
            return self.status is None or self.status >= 500
        return True

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(errcode={self.errcode!r}, errmsg={self.errmsg!r}, "
                f"kind={self.kind!r}, endpoint={self.endpoint!r})")

    def __reduce__(self) -> Any:
        state = {k: v for k, v in self.__dict__.items() if k != "_client"}
        return (_rebuild_error, (type(self), self.message), state)


def _rebuild_error(cls: type, message: str) -> WeChatError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err._client = None
    return err


class QuotaExhausted(WeChatError):
    """45009: the API's daily call quota is used up; retrying today does not help."""


def _endpoint_of(url: str | None) -> str | None:
    if not url:
        return None
    path = urlsplit(url).path
    return path.split("/cgi-bin/", 1)[1] if "/cgi-bin/" in path else path.lstrip("/") or None


def to_wechat_error(
    exc: BaseException,
    *,
    secrets: Iterable[str | None] = (),
    token_fetch: bool = False,
    client: Any = None,
) -> WeChatError:
    """Convert a wechatpy or requests exception into a redacted :class:`WeChatError`
    (:class:`QuotaExhausted` for 45009).  A WeChatError is returned unchanged."""
    if isinstance(exc, WeChatError):
        return exc
    client = client or getattr(exc, "client", None)
    secrets = [*secrets, getattr(client, "secret", None)]
    request = getattr(exc, "request", None)
    response = getattr(exc, "response", None)
    url = getattr(request, "url", None) or getattr(response, "url", None)
    endpoint = _endpoint_of(url)
    where = f" ({endpoint})" if endpoint else ""
    status = errcode = None

    if isinstance(exc, WeChatException) and getattr(exc, "errcode", None) is not None:
        kind = "api"
        errcode = int(exc.errcode)
        errmsg = redact(str(exc.errmsg), secrets)
        message = f"WeChat API error {errcode}{where}: {errmsg}"
    elif isinstance(exc, WeChatException):  # wechatpy's wrapper of an HTTP error status
        kind = "http"
        status = getattr(response, "status_code", None)
        errmsg = f"HTTP {status}"
        message = f"WeChat HTTP error {status}{where}"
    elif isinstance(exc, requests.Timeout):
        kind = "timeout"
        errmsg = redact(f"{type(exc).__name__}: {exc}", secrets)
        message = f"timeout calling WeChat{where}: {errmsg}"
    elif isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        kind = "network"
        errmsg = redact(f"{type(exc).__name__}: {exc}", secrets)
        message = f"network error calling WeChat{where}: {errmsg}"
    elif isinstance(exc, (ValueError, KeyError, TypeError)):  # unreadable or unexpected answer
        kind = "response"
        errmsg = redact(f"{type(exc).__name__}: {exc}", secrets)
        message = f"unreadable answer from WeChat{where}: {errmsg}"
    else:  # other requests errors (invalid URL, too many redirects ...)
        kind = "network"
        errmsg = redact(f"{type(exc).__name__}: {exc}", secrets)
        message = f"error calling WeChat{where}: {errmsg}"

    cls = QuotaExhausted if errcode == QUOTA_ERRCODE else WeChatError
    err = cls(message, errcode, errmsg, kind=kind, endpoint=endpoint, status=status, token_fetch=token_fetch)
    err._client = client
    return err


# ---------------------------------------------------------------------------- token storage


class InMemoryTokenStorage(SessionStorage):
    """A thread-safe wechatpy ``SessionStorage`` that honours ``ttl`` (wechatpy's own
    ``MemoryStorage`` ignores it).

    The token contract the clients rely on, for a database-backed storage too: ``set(key, value,
    ttl)`` stores a token for ``ttl`` seconds (already shortened by a safety margin); ``get(key)``
    returns ``None`` once it has expired; ``delete(key)`` forgets it (called when WeChat rejects
    the token).  Keys contain no secret.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._data: dict[str, tuple[Any, float | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return default
            value, expires_at = item
            if expires_at is not None and self._clock() >= expires_at:
                del self._data[key]
                return default
            return value

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        if value is None:
            return
        with self._lock:
            self._data[key] = (value, None if ttl is None else self._clock() + ttl)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)


def _cache_ttl(expires_in: int) -> int:
    """Keep a token for its lifetime minus a margin (10 %, at most 5 minutes), so it is not used
    in its last moments by a long batch or across a little clock skew."""
    return max(1, int(expires_in - min(300, expires_in // 10)))


# ---------------------------------------------------------------------------- clients


def _normalise_base(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class _ConfigurableClientMixin:
    """Configurable API base, token fetch with timeout, ttl-based token cache, safe errors."""

    OFFICIAL_BASE_URL: str = ""
    TOKEN_ENDPOINT: str = ""
    API_BASE_URL: str
    session: SessionStorage
    timeout: Any
    _http: requests.Session

    def _setup_base(self, api_base_url: str | None) -> None:
        # instance attribute: wechatpy's _request reads self.API_BASE_URL
        self.API_BASE_URL = _normalise_base(api_base_url or self.OFFICIAL_BASE_URL)

    def _token_params(self) -> dict[str, str]:
        raise NotImplementedError

    def _secrets(self) -> list[str | None]:
        return [getattr(self, "secret", None), self.session.get(self.access_token_key)]  # type: ignore[attr-defined]

    def _rebase(self, url: str) -> str:
        """Map an absolute official URL onto the configured base (no-op by default)."""
        official = self.OFFICIAL_BASE_URL
        if self.API_BASE_URL == official:
            return url
        if url.startswith(official):
            return self.API_BASE_URL + url[len(official):]
        origin = official.split("/cgi-bin/")[0] + "/"
        if url.startswith(origin):
            root = self.API_BASE_URL
            root = root[: -len("cgi-bin/")] if root.endswith("/cgi-bin/") else \
                "{0.scheme}://{0.netloc}/".format(urlsplit(root))
            return root + url[len(origin):]
        return url

    # -- wechatpy overrides ------------------------------------------------------------

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        if "api_base_url" in kwargs:
            kwargs["api_base_url"] = self._rebase(kwargs["api_base_url"])
        if url_or_endpoint.startswith(("http://", "https://")):
            url_or_endpoint = self._rebase(url_or_endpoint)
        try:
            return super()._request(method, url_or_endpoint, **kwargs)  # type: ignore[misc]
        except WeChatError:
            raise
        except (WeChatException, requests.RequestException, ValueError) as exc:
            err = to_wechat_error(exc, secrets=self._secrets(), client=self)
        # raised outside the except block: the original (secret-bearing) exception is not chained
        raise err

    def _fetch_access_token(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        """wechatpy's fetch, plus: configurable URL, the client timeout, ttl-based caching."""
        log.info("fetching WeChat access token from %s", redact(self._rebase(url)))
        try:
            res = self._http.get(url=self._rebase(url), params=params, timeout=self.timeout)
            try:
                res.raise_for_status()
            except requests.RequestException as reqe:
                raise WeChatClientException(None, None, client=self, request=reqe.request, response=res)
            result = res.json()
            errcode = int(result.get("errcode") or 0)
            if errcode:
                raise WeChatClientException(errcode, result.get("errmsg"), client=self,
                                            request=res.request, response=res)
            token = result["access_token"]
            expires_in = int(result.get("expires_in") or 7200)
        except (WeChatException, requests.RequestException, ValueError, KeyError, TypeError) as exc:
            err = to_wechat_error(exc, secrets=self._secrets(), token_fetch=True, client=self)
        else:
            err = None
        if err is not None:
            raise err
        register_secret(token)
        self.session.set(self.access_token_key, token, _cache_ttl(expires_in))  # type: ignore[attr-defined]
        self.expires_at = int(time.time()) + expires_in
        return result

    def fetch_access_token(self) -> dict[str, Any]:
        """Fetch a new access token from ``<API base><token endpoint>`` and cache it."""
        return self._fetch_access_token(self.API_BASE_URL + self.TOKEN_ENDPOINT, self._token_params())

    @property
    def access_token(self) -> str:
        """The cached token while the storage still holds it, else a freshly fetched one.

        Expiry is the storage's job (``ttl``); with a storage that ignores ttl the token is used
        until WeChat rejects it and :func:`call_with_retry` refreshes it.
        """
        token = self.session.get(self.access_token_key)  # type: ignore[attr-defined]
        if token:
            register_secret(token)  # e.g. loaded from a database by another process
            return token
        return self.fetch_access_token()["access_token"]

    def invalidate_access_token(self) -> None:
        """Forget the cached token (WeChat rejected it); the next call fetches a new one."""
        self.session.delete(self.access_token_key)  # type: ignore[attr-defined]
        self.expires_at = None


class MpClient(_ConfigurableClientMixin, _WeChatMpClient):
    """wechatpy official-account client (``client.tag``, ``client.user`` ...) with a configurable
    API base.  Build it with :func:`make_mp_client`."""

    OFFICIAL_BASE_URL = MP_API_BASE_URL
    TOKEN_ENDPOINT = "token"

    def __init__(self, appid: str, secret: str, *, api_base_url: str | None = None,
                 session: SessionStorage | None = None, timeout: Any = DEFAULT_TIMEOUT):
        super().__init__(appid, secret, timeout=timeout, auto_retry=False)
        self.session = InMemoryTokenStorage() if session is None else session  # wechatpy: `session or ...`
        self._setup_base(api_base_url)

    def _token_params(self) -> dict[str, str]:
        return {"grant_type": "client_credential", "appid": self.appid, "secret": self.secret}


class WecomClient(_ConfigurableClientMixin, _WeChatWecomClient):
    """wechatpy WeCom client (``client.external_contact`` ...) with a configurable API base.
    Build it with :func:`make_wecom_client`."""

    OFFICIAL_BASE_URL = WECOM_API_BASE_URL
    TOKEN_ENDPOINT = "gettoken"

    def __init__(self, corpid: str, secret: str, *, api_base_url: str | None = None,
                 session: SessionStorage | None = None, timeout: Any = DEFAULT_TIMEOUT):
        super().__init__(corpid, secret, timeout=timeout, auto_retry=False)
        self.session = InMemoryTokenStorage() if session is None else session  # wechatpy: `session or ...`
        self._setup_base(api_base_url)

    @property
    def access_token_key(self) -> str:
        # wechatpy uses secret[:10] in the key; a hash still separates apps of one corp
        digest = hashlib.sha256(self.secret.encode("utf-8")).hexdigest()[:12]
        return f"{self.corp_id}_{digest}_access_token"

    def _token_params(self) -> dict[str, str]:
        return {"corpid": self.corp_id, "corpsecret": self.secret}


def make_mp_client(
    appid: str,
    secret: str,
    api_base_url: str | None = None,
    session: SessionStorage | None = None,
    timeout: Any = DEFAULT_TIMEOUT,
) -> MpClient:
    """An official-account client.

    Args:
        appid, secret: the account's AppID and AppSecret.
        api_base_url: e.g. ``"http://127.0.0.1:8080/cgi-bin/"``; default the official
            ``https://api.weixin.qq.com/cgi-bin/``.  The token is fetched from ``<base>token``.
        session: a wechatpy ``SessionStorage`` for the access token (see
            :class:`InMemoryTokenStorage` for the contract); default an in-memory one.
        timeout: requests timeout, seconds or ``(connect, read)``.

    Calls raise :class:`WeChatError` / :class:`QuotaExhausted` only.  The client does not retry by
    itself: wrap calls in :func:`call_with_retry`.
    """
    register_secret(secret)
    return MpClient(appid, secret, api_base_url=api_base_url, session=session, timeout=timeout)


def make_wecom_client(
    corpid: str,
    secret: str,
    api_base_url: str | None = None,
    session: SessionStorage | None = None,
    timeout: Any = DEFAULT_TIMEOUT,
) -> WecomClient:
    """A WeCom client; ``secret`` is the customer-contact (客户联系) secret.  The default base is
    ``https://qyapi.weixin.qq.com/cgi-bin/``; the token comes from ``<base>gettoken``.  Otherwise
    as :func:`make_mp_client`."""
    register_secret(secret)
    return WecomClient(corpid, secret, api_base_url=api_base_url, session=session, timeout=timeout)


# ---------------------------------------------------------------------------- retry


def _invalidate(client: Any) -> bool:
    if client is None:
        return False
    if hasattr(client, "invalidate_access_token"):
        client.invalidate_access_token()
    else:  # a plain wechatpy client
        client.session.delete(client.access_token_key)
        client.expires_at = None
    return True


def call_with_retry(
    fn: Callable[[], T],
    *,
    max_attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    sleep: Callable[[float], Any] = time.sleep,
    rng: Any = random,
    client: Any = None,
) -> T:
    """Call ``fn()`` (one WeChat API call) and return its result unchanged, retrying as follows.

    * errcode -1 (system busy), network errors, timeouts, HTTP 5xx: retry after a backoff with
      full jitter, ``rng.uniform(0, min(max_delay, base_delay * 2 ** (retry - 1)))`` seconds;
    * 40001 / 40014 / 42001 (token invalid or expired): forget the cached token and retry; the
      first time at once, later ones after a backoff.  ``client`` is the client to refresh;
      by default the one that raised;
    * 45009: raise :class:`QuotaExhausted` at once;
    * anything else, or ``max_attempts`` used up: raise :class:`WeChatError` (``attempts`` set).

    Bad credentials at the token endpoint (40125, 40013, 40001 from ``token``/``gettoken``) are
    not retried.  wechatpy and requests exceptions raised by ``fn`` are converted too.

    Retried calls may have been applied already (a timeout or dropped connection after WeChat
    acted).  Membership calls are idempotent; ``tags/create`` is not: a retried create can answer
    45157 (name exists) for a tag this very call created, so re-read ``tags/get`` then.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    attempt = 0
    refreshed = False
    while True:
        attempt += 1
        try:
            return fn()
        except WeChatError as exc:
            err = exc
        except (WeChatException, requests.RequestException) as exc:
            err = to_wechat_error(exc, client=client)
        err.attempts = attempt
        if isinstance(err, QuotaExhausted) or attempt >= max_attempts:
            raise err
        if err.is_token_error:
            if not _invalidate(client or err._client):
                raise err
            log.info("WeChat rejected the access token (%s); refreshing", err.errcode)
            if not refreshed:
                refreshed = True
                continue
        elif not err.retryable:
            raise err
        delay = rng.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
        log.info("WeChat call failed (%s), retry %d in %.2fs", err, attempt, delay)
        sleep(delay)


# ---------------------------------------------------------------------------- chunks


def chunks(seq: Iterable[T], size: int = MP_BATCH_OPENIDS) -> Iterator[list[T]]:
    """Yield consecutive lists of at most ``size`` items (the last one may be shorter)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    if isinstance(seq, Sequence):
        for start in range(0, len(seq), size):
            yield list(seq[start:start + size])
        return
    batch: list[T] = []
    for item in seq:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
