"""Isolated databases for tests: SQLite always; PostgreSQL and MariaDB/MySQL
when TAGDSL_TEST_POSTGRES_URL / TAGDSL_TEST_MYSQL_URL are set.

A set URL whose server cannot be reached fails the test (it must not skip
silently); an unset one skips. Each isolated database is a fresh schema
(PostgreSQL) or database (MariaDB) dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

BACKENDS = ["sqlite", "postgresql", "mysql"]
ENV = {"postgresql": "TAGDSL_TEST_POSTGRES_URL", "mysql": "TAGDSL_TEST_MYSQL_URL"}


def backend_url(backend: str) -> str | None:
    return os.environ.get(ENV[backend]) if backend in ENV else None


def require(backend: str) -> None:
    if backend != "sqlite" and not backend_url(backend):
        pytest.skip(f"{ENV[backend]} is not set")


@contextlib.contextmanager
def isolated_engine(backend: str, tmp_path=None):
    """Yield (engine, url) of a fresh, empty database on ``backend``."""
    require(backend)
    name = "t_" + uuid.uuid4().hex[:12]
    if backend == "sqlite":
        path = (tmp_path / f"{name}.db") if tmp_path is not None else None
        url = f"sqlite:///{path}" if path else "sqlite://"
        engine = create_engine(url)
        try:
            yield engine, url
        finally:
            engine.dispose()
        return
    base = backend_url(backend)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.execute(text(f'CREATE SCHEMA "{name}"'))
            else:
                conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    except Exception as exc:  # a set URL must work: fail loudly
        admin.dispose()
        pytest.fail(f"{ENV[backend]} is set but the server cannot be used: {exc}")
    if backend == "postgresql":
        url = make_url(base).update_query_dict({"options": f"-csearch_path={name}"})
    else:
        url = make_url(base).set(database=name)
    engine = create_engine(url)
    try:
        yield engine, url.render_as_string(hide_password=False)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
            else:
                conn.execute(text(f"DROP DATABASE `{name}`"))
        admin.dispose()
