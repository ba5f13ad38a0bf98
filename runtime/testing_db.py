"""`tagdsl test --db URL`: the same test fixtures, evaluated through the SQL compiler.

Each as-of section's followers, source rows and stored manual tags are written
into scratch tables, then ``desired_memberships`` and ``audience_select`` run
on the database. The user's own tables are never touched:

- SQLite: a throwaway database file in a temporary directory (the URL only
  selects the dialect);
- PostgreSQL: a scratch schema ``tagdsl_test_<random>``, dropped afterwards;
- MySQL/MariaDB: a scratch database ``tagdsl_test_<random>``, dropped afterwards.

The tables are the configuration's (``tagdsl.toml`` names and columns), built
in that schema, so the SQL that runs is the SQL ``apply`` would run.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tagdsl import ir as I
from tagdsl.compile.sql import compile_sql
from tagdsl.config import Config
from tagdsl.schema import Tables, build_tables
from tagdsl.testing import Backend, Evaluated, Section

from .store import StoreError, connect, db_errors, redact_url

SCHEMA_PREFIX = "tagdsl_test_"


class DatabaseBackend(Backend):
    """Evaluates test sections on a database through ``tagdsl.compile.sql``."""

    def __init__(self, url: str):
        try:
            self.parsed = make_url(url)
        except sa.exc.ArgumentError:
            raise StoreError(f"invalid database URL `{redact_url(url)}` (expected e.g. sqlite:///test.db or "
                             "postgresql+psycopg://user@host/db)") from None
        self.kind = self.parsed.get_backend_name()
        if self.kind == "mariadb":
            self.kind = "mysql"
        if self.kind not in ("sqlite", "postgresql", "mysql"):
            raise StoreError(f"unsupported database `{self.kind}` in {redact_url(url)} "
                             "(use sqlite, postgresql or mysql/mariadb)")
        self.name = self.kind
        self.engine: Optional[sa.Engine] = None
        self.schema: Optional[str] = None
        self._tmpdir: Optional[Path] = None

    # -- setup and teardown ---------------------------------------------------------------------
    def open(self, ruleset, config: Config, analysis) -> None:
        self.config = config
        self.audiences = list(ruleset.audiences)
        # quintile()/percent_rank() rank among the loaded followers: a section
        # is then its own population, as in memory, so sections are not merged.
        self.ranks = any(isinstance(n, I.Rank) for rule in ruleset.computed for n in I.walk(rule.condition)) or \
            any(isinstance(n, I.Rank) for a in ruleset.audiences.values() for n in I.walk(a.condition))
        if self.kind == "sqlite":
            self._tmpdir = Path(tempfile.mkdtemp(prefix="tagdsl-test-"))
            self.engine = connect(f"sqlite:///{self._tmpdir / 'fixtures.db'}", create=True)
        else:
            self.engine = connect(self.parsed)
            self.schema = SCHEMA_PREFIX + secrets.token_hex(5)
            with db_errors(self.engine.url, "creating a scratch schema for the tests"), self.engine.begin() as conn:
                quoted = conn.dialect.identifier_preparer.quote_identifier(self.schema)
                if self.kind == "postgresql":
                    conn.exec_driver_sql(f"CREATE SCHEMA {quoted}")
                else:
                    conn.exec_driver_sql(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        self.tables: Tables = build_tables(config, sa.MetaData(schema=self.schema))
        with db_errors(self.engine.url, "creating the fixture tables"):
            self.tables.metadata.create_all(self.engine)
        self.compiler = compile_sql(ruleset, config, self.tables)

    def close(self) -> None:
        if self.engine is None:
            return
        try:
            if self.schema is not None:
                with db_errors(self.engine.url, "dropping the scratch schema"), self.engine.begin() as conn:
                    quoted = conn.dialect.identifier_preparer.quote_identifier(self.schema)
                    if self.kind == "postgresql":
                        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
                    else:
                        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
        finally:
            self.engine.dispose()
            self.engine = None
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, section: Section) -> dict[str, Evaluated]:
        return self.evaluate_many([section])[0]

    def evaluate_many(self, sections) -> list[dict[str, Evaluated]]:
        """Sections with the same as-of instant (and distinct follower names)
        are loaded together and evaluated by one set of queries."""
        assert self.engine is not None, "open() first"
        batches: list[tuple[object, list[int], set[str]]] = []
        for i, section in enumerate(sections):
            names = {case.name for case in section.followers}
            batch = None if self.ranks else next(
                (b for b in batches if b[0] == section.as_of and not (b[2] & names)), None)
            if batch is None:
                batches.append((section.as_of, [i], names))
            else:
                batch[1].append(i)
                batch[2].update(names)
        out: list[dict[str, Evaluated]] = [{} for _ in sections]
        for as_of, members, _names in batches:
            results = self._evaluate([sections[i] for i in members], as_of)
            for i in members:
                out[i] = {case.name: results[case.name] for case in sections[i].followers}
        return out

    def _evaluate(self, sections, as_of) -> dict[str, Evaluated]:
        cases = [case for section in sections for case in section.followers]
        results = {case.name: Evaluated(set(), set()) for case in cases}
        with db_errors(self.engine.url, "evaluating the test fixtures"), self.engine.begin() as conn:
            self._load(conn, cases, as_of)
            for openid, tag, _priority in conn.execute(self.compiler.desired_memberships(as_of)):
                results[openid].tags.add(tag)
            for name in self.audiences:
                for (openid,) in conn.execute(self.compiler.audience_select(name, as_of)):
                    results[openid].audiences.add(name)
        return results

    def _load(self, conn: sa.Connection, cases, as_of) -> None:
        """Replace the scratch tables' content with these fixtures."""
        t = self.tables
        for table in [t.memberships, *t.sources.values(), t.followers]:
            conn.execute(table.delete())
        f = self.config.followers
        follower_rows, member_rows = [], []
        source_rows: dict[str, list[dict]] = {name: [] for name in t.sources}
        for case in cases:
            row = {f.id: case.name}
            for name, spec in f.fields.items():
                column = spec.column or name
                if column != f.id:
                    row[column] = case.fields.get(name)
            follower_rows.append(row)
            for sname, rows in case.rows.items():
                src = self.config.sources[sname]
                for r in rows:
                    out = {src.follower: case.name}
                    if src.time:
                        out[src.time] = r.get(src.time)
                    for name, spec in src.fields.items():
                        out[spec.column or name] = r.get(name)
                    source_rows[sname].append(out)
            member_rows.extend({"openid": case.name, "tag": tag, "source": "manual", "assigned_at": as_of}
                               for tag in sorted(case.manual))
        if follower_rows:
            conn.execute(t.followers.insert(), follower_rows)
        for sname, rows in source_rows.items():
            if rows:
                conn.execute(t.sources[sname].insert(), rows)
        if member_rows:
            conn.execute(t.memberships.insert(), member_rows)
