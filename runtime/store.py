"""The follower store: connecting, creating tables, checking the schema,
reading one follower, and the lock that serialises applies.

Every failure a user can cause (a bad URL, a database that cannot be reached,
a missing table or column, a value that cannot be read) is a ``StoreError``:
one line, with any password in a database URL replaced by ``***``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Iterator, Optional

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from tagdsl import TagDSLError
from tagdsl import ir as I
from tagdsl.config import Config
from tagdsl.schema import Tables, build_tables

DIALECTS = ("sqlite", "postgresql", "mysql")


class StoreError(TagDSLError):
    """The database, its schema or its content is not usable (exit status 2)."""

    exit_code = 2


class LockTimeout(StoreError):
    """Another apply holds the store's lock."""


# -- URLs and error messages ---------------------------------------------------------

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")


def redact_url(url: str | sa.URL) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    if isinstance(url, sa.URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: redact textually
        return _PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***@", str(url))


def redact_text(text: str, url: str | sa.URL | None = None) -> str:
    """Remove passwords from a message (URLs in it, and ``url``'s password anywhere)."""
    text = _PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***@", text)
    if url is not None:
        try:
            password = make_url(url).password if not isinstance(url, sa.URL) else url.password
        except Exception:
            password = None
        if password:
            text = text.replace(str(password), "***")
    return text


def db_message(exc: BaseException, url: str | sa.URL | None = None) -> str:
    """The first line of a driver error, without SQLAlchemy's boilerplate or secrets."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return redact_text(text, url)


@contextlib.contextmanager
def db_errors(url: str | sa.URL, doing: str) -> Iterator[None]:
    """Turn driver errors raised while ``doing`` something into one-line StoreErrors."""
    try:
        yield
    except TagDSLError:
        raise
    except sa.exc.DBAPIError as exc:
        raise StoreError(f"{doing} failed on {redact_url(url)}: {db_message(exc, url)}") from None
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"{doing} failed on {redact_url(url)}: {redact_text(str(exc).splitlines()[0], url)}") from None


# -- connecting ------------------------------------------------------------------------------

def sqlite_path(url: sa.URL) -> Optional[Path]:
    """The file of a SQLite URL (None for an in-memory database)."""
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)


def connect(url: str | sa.URL, *, create: bool = False, lock_timeout: float = 30.0) -> sa.Engine:
    """An SQLAlchemy engine for ``url``, checked by opening one connection.

    ``create=False`` refuses a SQLite file that does not exist (instead of
    silently creating an empty database). ``lock_timeout`` bounds how long
    SQLite waits for another writer.
    """
    shown = redact_url(url)
    try:
        parsed = make_url(url) if not isinstance(url, sa.URL) else url
    except sa.exc.ArgumentError:
        raise StoreError(f"invalid database URL `{shown}` (expected e.g. sqlite:///tagdsl.db or "
                         "postgresql+psycopg://user@host/db)") from None
    backend = parsed.get_backend_name()
    if backend not in DIALECTS and backend != "mariadb":
        raise StoreError(f"unsupported database `{backend}` in {shown} (use sqlite, postgresql or mysql/mariadb)")
    kwargs: dict = {}
    if backend == "sqlite":
        path = sqlite_path(parsed)
        if path is None:
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        elif not path.exists():
            if not create:
                raise StoreError(f"database file {path} does not exist (run `tagdsl init` or `tagdsl demo`, "
                                 "or pass --db)")
            if not path.parent.is_dir():
                raise StoreError(f"cannot create database {path}: directory {path.parent} does not exist")
        kwargs["connect_args"] = {"timeout": lock_timeout}
    elif backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        kwargs["connect_args"] = {"charset": "utf8mb4"}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (ModuleNotFoundError, sa.exc.NoSuchModuleError) as exc:
        extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(backend)
        hint = f" (pip install 'tagdsl[{extra}]')" if extra else ""
        raise StoreError(f"no driver for {parsed.drivername}: {exc}{hint}") from None
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"invalid database URL `{shown}`: {exc}") from None
    if backend == "sqlite":
        _sqlite_transactions(engine)
    elif backend == "postgresql":
        _postgresql_session(engine)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise StoreError(f"cannot reach database {shown}: {db_message(exc, parsed)}") from None
    return engine


def _postgresql_session(engine: sa.Engine) -> None:
    """256 MB of temp_buffers per session (default 8 MB), which can only be
    set before the session first touches a temporary table. apply's
    read-only difference is a temporary table read twice: at 1M followers on
    a first apply, 4M rows; at 8 MB those reads go through the kernel (the
    audit insert took 5.2-5.9 s, with 256 MB 3.8-3.9 s). The memory is taken
    only as temporary tables need it."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET temp_buffers = '256MB'")
        dbapi_connection.commit()


def _sqlite_transactions(engine: sa.Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, emit BEGIN, so an apply can take
    the write lock up front with BEGIN IMMEDIATE (SQLAlchemy's documented recipe)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        # Scratch tables stay in SQLite's default temp storage (a file), so an
        # apply's memory does not grow with the number of followers.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):
        options = conn.get_execution_options()
        if options.get("tagdsl_write_lock"):
            ms = int(options.get("tagdsl_lock_timeout", 30.0) * 1000)
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {ms}")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


# -- creating tables ---------------------------------------------------------------------------

def create_store(engine: sa.Engine, config: Config, tables: Tables | None = None) -> Tables:
    """Create the follower tables and the engine tables (those missing)."""
    tables = tables or build_tables(config)
    with db_errors(engine.url, "creating the store"):
        tables.metadata.create_all(engine, checkfirst=True)
    return tables


def ensure_engine_tables(connectable: sa.Engine | sa.Connection, tables: Tables) -> None:
    """Create the engine's own tables where missing; idempotent, never touches data."""
    url = connectable.engine.url
    with db_errors(url, "creating the engine tables"):
        tables.metadata.create_all(connectable, tables=tables.engine_tables, checkfirst=True)


def missing_engine_tables(connectable: sa.Engine | sa.Connection, tables: Tables) -> list[str]:
    with db_errors(connectable.engine.url, "reading the schema"):
        insp = sa.inspect(connectable)
        return [t.name for t in tables.engine_tables if not insp.has_table(t.name)]


# -- checking a user's schema ------------------------------------------------------------------

def _configured_tables(config: Config) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(table, where tagdsl.toml configures it, [(column, where it is configured)])
    for every table and column tagdsl reads."""
    f = config.followers
    tables = [(f.table, "[followers] table", [(f.id, "[followers] id")] + [
        (spec.column or name, f"followers.fields.{name}") for name, spec in f.fields.items()])]
    for sname, src in config.sources.items():
        cols = [(src.follower, f"sources.{sname}.follower")]
        if src.time:
            cols.append((src.time, f"sources.{sname}.time"))
        cols += [(spec.column or name, f"sources.{sname}.fields.{name}") for name, spec in src.fields.items()]
        tables.append((src.table, f"[sources.{sname}] table", cols))
    return tables


def check_schema(engine: sa.Engine, config: Config) -> None:
    """Every configured table and column exists, or a StoreError naming the first missing one."""
    shown = redact_url(engine.url)
    fold = engine.dialect.name == "mysql"  # MySQL column names are case-insensitive
    configured = _configured_tables(config)
    with db_errors(engine.url, "reading the schema"):
        found = _table_columns(engine, [table for table, _, _ in configured])
        for table, origin, columns in configured:
            if found[table] is None:
                raise StoreError(f"table `{table}` not found in {shown} (configured as {origin} in tagdsl.toml)")
            present = {(c.lower() if fold else c) for c in found[table]}
            for column, where in columns:
                if (column.lower() if fold else column) not in present:
                    raise StoreError(f"column `{table}.{column}` not found in {shown} "
                                     f"(configured as {where} in tagdsl.toml)")


def _table_columns(engine: sa.Engine, tables: list[str]) -> dict[str, Optional[list[str]]]:
    """{table: its column names, or None where there is no such table or view},
    looked up as SQLAlchemy's inspector does (PostgreSQL: visible on the
    search path; SQLite: the main schema, names case-insensitive), in one
    catalog query instead of two reflection queries per table."""
    dialect = engine.dialect.name
    out: dict[str, Optional[list[str]]] = {t: None for t in tables}
    if dialect == "postgresql":
        query = sa.text(
            "SELECT c.relname, a.attname FROM pg_catalog.pg_class c "
            "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.relname = ANY(:names) AND c.relkind IN ('r', 'p', 'f', 'v', 'm') "
            "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY c.relname, a.attnum")
        with engine.connect() as conn:
            for table, column in conn.execute(query, {"names": list(out)}):
                out[table] = out[table] or []
                if column is not None:
                    out[table].append(column)
        return out
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 26):  # pragma_table_xinfo
        names = list(out)
        query = " UNION ALL ".join(f"SELECT {i} AS i, name FROM pragma_table_xinfo(:t{i}, 'main')"
                                   for i in range(len(names)))
        with engine.connect() as conn:
            for i, column in conn.execute(sa.text(query), {f"t{i}": n for i, n in enumerate(names)}):
                out[names[i]] = (out[names[i]] or []) + [column]
        return out
    insp = sa.inspect(engine)
    for table in tables:
        if insp.has_table(table):
            out[table] = [c["name"] for c in insp.get_columns(table)]
    return out


# -- reading one follower ------------------------------------------------------------------------

def load_follower(conn: sa.Connection, config: Config, openid: str):
    """The follower ``openid`` with its fields, its rows of every source and all
    its stored tags (any source), as the in-memory evaluator takes it.

    Values are read raw (no SQLAlchemy type processing) and normalised by the
    evaluator's ``normalize_value``: SQLite text timestamps, REAL amounts, 0/1
    booleans, aware datetimes. A value it cannot read is a StoreError naming
    the table, column and follower.
    """
    from tagdsl.compile.python import Follower, normalize_value

    def read(table: str, key: str, wanted: dict[str, tuple[str, I.Type, Optional[int]]]) -> list[dict]:
        """Rows of ``table`` whose ``key`` is the follower: {name: value} for each wanted (column, type, scale)."""
        columns = list(dict.fromkeys(col for col, _, _ in wanted.values()))
        select = sa.select(*map(sa.column, columns)).select_from(sa.table(table)).where(sa.column(key) == openid)
        out = []
        for raw in conn.execute(select).mappings():
            item = {}
            for name, (col, kind, scale) in wanted.items():
                try:
                    item[name] = normalize_value(raw[col], kind, config.tz, scale)
                except (ValueError, TypeError, ArithmeticError) as exc:
                    raise StoreError(f"cannot read `{table}.{col}` of follower `{openid}`: {raw[col]!r} is not a "
                                     f"valid {kind} ({exc})") from None
            out.append(item)
        return out

    def spec_of(name, spec):
        return spec.column or name, I.TYPES[spec.type.value], spec.scale

    f = config.followers
    with db_errors(conn.engine.url, "reading the follower"):
        found = read(f.table, f.id, {name: spec_of(name, spec) for name, spec in f.fields.items()})
        if not found:
            raise StoreError(f"follower `{openid}` not found in table `{f.table}` of {redact_url(conn.engine.url)}")
        fields = {f.id: openid, **found[0]}
        rows = {}
        for sname, src in config.sources.items():
            wanted = {name: spec_of(name, spec) for name, spec in src.fields.items()}
            if src.time and src.time not in wanted:
                wanted[src.time] = (src.time, I.DATETIME, None)
            rows[sname] = read(src.table, src.follower, wanted)
        tags: frozenset[str] = frozenset()
        memberships = f"{config.database.table_prefix}memberships"
        if sa.inspect(conn).has_table(memberships):
            tags = frozenset(conn.execute(sa.select(sa.column("tag")).select_from(sa.table(memberships))
                                          .where(sa.column("openid") == openid)).scalars())
    return Follower(openid, fields, rows, tags)


# -- the apply lock ------------------------------------------------------------------------------

def lock_key(conn: sa.Connection, prefix: str) -> str:
    """Names the store: the schema or database (locks are server- or database-wide) and the table prefix."""
    dialect = conn.engine.dialect.name
    if dialect == "postgresql":
        where = conn.exec_driver_sql("SELECT current_schema()").scalar()
    elif dialect == "mysql":
        where = conn.exec_driver_sql("SELECT DATABASE()").scalar()
    else:
        where = ""
    return f"tagdsl-apply:{where}:{prefix}"


@contextlib.contextmanager
def apply_lock(conn: sa.Connection, prefix: str, timeout: float) -> Iterator[None]:
    """Hold the store's apply lock for the rest of ``conn``'s transaction.

    SQLite: ``conn`` must have been opened by :func:`write_connection` (its
    transaction starts with BEGIN IMMEDIATE, which is the lock). PostgreSQL:
    a transaction-level advisory lock. MySQL/MariaDB: GET_LOCK, released on exit.
    Waits at most ``timeout`` seconds, then raises LockTimeout.
    """
    dialect = conn.engine.dialect.name
    shown = redact_url(conn.engine.url)
    busy = (f"another apply is running on {shown} (waited {timeout:g} s for its lock); "
            "try again when it has finished")
    if dialect == "sqlite":
        try:
            conn.exec_driver_sql("SELECT 1")  # autobegin: BEGIN IMMEDIATE
        except sa.exc.OperationalError as exc:
            if "locked" in str(exc.orig) or "busy" in str(exc.orig):
                raise LockTimeout(busy) from None
            raise
        yield
    elif dialect == "postgresql":
        key = lock_key(conn, prefix)
        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{max(1, int(timeout * 1000))}ms'")
        try:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": number})
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == "55P03":
                raise LockTimeout(busy) from None
            raise
        conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
        yield
    elif dialect == "mysql":
        key = lock_key(conn, prefix)
        name = key if len(key) <= 64 else "tagdsl-apply:" + hashlib.sha256(key.encode()).hexdigest()[:40]
        got = conn.execute(sa.text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": timeout}).scalar()
        if got != 1:
            raise LockTimeout(busy)
        try:
            yield
        finally:
            # GET_LOCK belongs to the session, not the transaction: release it
            # on the same connection, after commit or rollback.
            try:
                if conn.in_transaction():  # committed already on success; never commit a failed run
                    conn.rollback()
                conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                conn.commit()
            except sa.exc.DBAPIError:  # pragma: no cover - the session is gone; so is its lock
                pass
    else:  # pragma: no cover - connect() refuses other dialects
        yield


def write_connection(engine: sa.Engine, timeout: float) -> sa.Connection:
    """A connection whose first transaction takes SQLite's write lock at BEGIN."""
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.execution_options(tagdsl_write_lock=True, tagdsl_lock_timeout=timeout)
    return conn
