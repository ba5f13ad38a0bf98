"""apply under faults, on SQLite, PostgreSQL and MariaDB (tests/dbs.py):

- a `tagdsl apply` process SIGKILLed at several points of its transaction
  leaves the store exactly as it was (memberships, runs, audit log, drops,
  expirations, definitions); killed just after its commit, the store holds the
  complete new state; the next apply converges to what a clean run gives;
- two `tagdsl apply` processes on one store never interleave: the second
  waits for the lock, then finds nothing left to do.

The child processes run the real command line through tests/apply_victim.py,
which stops at a chosen SQL statement (deterministic kill points, no timing);
the parent kills it from outside with SIGKILL. The expected states come from
clean applies of the same population on a separate SQLite store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbs import BACKENDS, isolated_engine
from runtime import store
from runtime.demo import generate_population, load_population
from runtime.engine import Engine
from tagdsl import Config, load_config, load_ruleset
from tagdsl.schema import build_tables

ROOT = Path(__file__).resolve().parent.parent
VICTIM = Path(__file__).resolve().parent / "apply_victim.py"
T0 = dt.datetime(2026, 5, 1, 12, 0, 0)
FOLLOWERS = 300
# Three as-of instants with real work between them: new orders, dormancy,
# expiry and limit drops.
AS_OF = [T0 - dt.timedelta(days=45), T0, T0 + dt.timedelta(days=100)]

# A small ruleset (the children parse it at every start) that makes apply
# write every kind of state: rule memberships, an exclusive group, an
# expiring tag (expirations, removals "expired") and, with a limit of 3 tags
# per follower, limit drops (removals "limit").
PROJECT = {
    "tagdsl.toml": '[project]\nrulesets = ["rules"]\n\n[limits]\nmax_tags_per_follower = 3\n',
    "rules/faults.tag": '''
tag "近30天下单" when exists(orders within 30d) { priority 50 }
tag "高消费" when sum(orders.amount) >= 500 { priority 60 }
tag "复购" when count(orders) >= 2 { priority 20 }
tag "活跃" when exists(events within 7d) or last_active_at > now() - 7d { priority 40 }
tag "沉睡" when not exists(events within 60d) { priority 30  expires 30d }
group "城市" exclusive {
  tag "一线" when city in ["北京", "上海", "广州", "深圳"] { priority 10 }
  tag "有城市" when city != "" { priority 5 }
}
''',
}

# Where the killed apply stops: after the statement matching the pattern has
# run inside its transaction.
KILL_POINTS = [
    r"\bINSERT INTO tagdsl_runs\b",  # the run row written, nothing else yet
    r"\bDELETE FROM tagdsl_memberships\b",  # memberships half-written
    r"\bUPDATE tagdsl_runs\b",  # everything written, the run marked ok, not committed
]
LOCK_STATEMENT = r"pg_advisory_xact_lock|GET_LOCK|BEGIN IMMEDIATE"


def write_project(directory: Path) -> Path:
    for name, text in PROJECT.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@functools.lru_cache(maxsize=None)
def project_config(directory: Path):
    return load_config(directory / "tagdsl.toml")


@functools.lru_cache(maxsize=None)
def project_rules(directory: Path):
    config = project_config(directory)
    return load_ruleset(config.ruleset_paths(), config)


TABLES = build_tables(Config())


# -- the expected states ------------------------------------------------------------------------

@dataclasses.dataclass
class Expected:
    memberships: set  # (openid, tag, source)
    changes: set  # (openid, tag, action, reason) of the run that reached this state


def make_store(url):
    config = Config()
    db = store.connect(url, create=True)
    store.create_store(db, config)
    load_population(db, generate_population(FOLLOWERS, seed=11, as_of=T0), config)
    db.dispose()


def apply(project: Path, url, as_of):
    with Engine(project_config(project), url) as engine:
        return engine.apply(project_rules(project), as_of=as_of)


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """The state after clean applies at each AS_OF, one after the other."""
    directory = write_project(tmp_path_factory.mktemp("reference"))
    url = f"sqlite:///{directory / 'reference.db'}"
    make_store(url)
    states = []
    for as_of in AS_OF:
        run_id = apply(directory, url, as_of).run_id
        states.append(Expected(memberships_of(url), changes_of(url, run_id)))
    # Each step has real work of every kind.
    for state in states[1:]:
        assert {(action, reason) for _, _, action, reason in state.changes} == {
            ("added", "rule"), ("removed", "rule"), ("removed", "expired"), ("removed", "limit")}
    return states


# -- reading a store --------------------------------------------------------------------------------

_READERS: dict[str, sa.Engine] = {}


def reader(url) -> sa.Engine:
    """An engine that opens a fresh connection each time (no pooling: a
    killed child's leftovers must be seen as a new client sees them)."""
    if url not in _READERS:
        _READERS[url] = sa.create_engine(url, poolclass=sa.pool.NullPool)
    return _READERS[url]


def query(url, statement):
    with reader(url).connect() as conn:
        return conn.execute(statement).all()


def memberships_of(url):
    m = TABLES.memberships
    return {tuple(r) for r in query(url, sa.select(m.c.openid, m.c.tag, m.c.source))}


def changes_of(url, run_id):
    c = TABLES.changes
    rows = query(url, sa.select(c.c.openid, c.c.tag, c.c.action, c.c.reason).where(c.c.run_id == run_id))
    assert len(rows) == len(set(map(tuple, rows))), "duplicated change rows"
    return {tuple(r) for r in rows}


def runs_of(url):
    r = TABLES.runs
    return [tuple(x) for x in query(url, sa.select(r.c.id, r.c.status, r.c.added, r.c.removed).order_by(r.c.id))]


def engine_state(url):
    """Every row of every engine table (all columns)."""
    return {t.name: sorted((tuple(r) for r in query(url, sa.select(t))), key=repr) for t in TABLES.engine_tables}


def assert_audit_consistent(url):
    """Every change row belongs to a finished run; no change row appears twice."""
    c, r = TABLES.changes, TABLES.runs
    orphans = query(url, sa.select(sa.func.count()).select_from(c.outerjoin(r, r.c.id == c.c.run_id))
                    .where(sa.or_(r.c.id.is_(None), r.c.status != "ok")))[0][0]
    assert orphans == 0
    total = query(url, sa.select(sa.func.count()).select_from(c))[0][0]
    distinct = query(url, sa.select(sa.func.count()).select_from(
        sa.select(c.c.run_id, c.c.openid, c.c.tag, c.c.action).distinct().subquery()))[0][0]
    assert total == distinct


# -- child processes -----------------------------------------------------------------------------------

class Child:
    """`tagdsl ARGS` in a child process, stoppable at a statement (apply_victim.py)."""

    def __init__(self, cwd, *args):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("TAGDSL_DATABASE_URL", None)
        split = args.index("--")
        self.proc = subprocess.Popen([sys.executable, str(VICTIM), *args[:split], "--", *args[split + 1:]],
                                     cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.err = b""
        self.args = args

    def wait_for(self, marker: str, timeout: float = 120) -> None:
        """Read stderr until the child writes ``@@marker`` (it is then paused or about to lock)."""
        fd = self.proc.stderr.fileno()
        while f"@@{marker}\n".encode() not in self.err:
            ready, _, _ = select.select([fd], [], [], timeout)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                out = self.proc.stdout.read().decode(errors="replace")
                err = self.err.decode(errors="replace")
                pytest.fail(f"the child {' '.join(self.args[:4])} never reached @@{marker}:\n{out}\n{err}")
            self.err += chunk

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(60) == -signal.SIGKILL

    def resume(self) -> None:
        try:
            self.proc.stdin.write(b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # it has ended already; finish() tells how
            pass

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), (self.err + err).decode()


def apply_args(url, as_of):
    return ("--", "apply", "--db", url, "--as-of", as_of.isoformat())


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    with isolated_engine(request.param, tmp_path) as (_engine, url):
        make_store(url)
        yield url
        reader = _READERS.pop(url, None)
        if reader is not None:
            reader.dispose()


@pytest.fixture
def project(tmp_path):
    """The children's working directory: tagdsl.toml and the ruleset."""
    return write_project(tmp_path / "project")


# -- SIGKILL mid-apply ------------------------------------------------------------------------------------

def test_a_killed_apply_leaves_the_store_intact_and_the_next_run_converges(url, expected, project):
    apply(project, url, AS_OF[0])
    assert memberships_of(url) == expected[0].memberships  # the same start as the reference
    before = engine_state(url)

    # All children start at once (their start-up overlaps) and wait before
    # the lock; each is then let in alone, stopped after its statement, killed.
    victims = [Child(project, "--hold-before", LOCK_STATEMENT, "--pause-after", pattern, *apply_args(url, AS_OF[1]))
               for pattern in KILL_POINTS]
    last = Child(project, "--hold-before", LOCK_STATEMENT, "--pause-after", r"\bUPDATE tagdsl_runs\b",
                 "--then-commit", *apply_args(url, AS_OF[2]))
    try:
        for pattern, child in zip(KILL_POINTS, victims):
            child.wait_for("held")
            child.resume()
            child.wait_for("paused")
            child.kill()
            assert engine_state(url) == before, f"killed after {pattern!r}"

        # The next run does all the work, exactly as a clean run does.
        run_id = apply(project, url, AS_OF[1]).run_id
        assert memberships_of(url) == expected[1].memberships
        assert changes_of(url, run_id) == expected[1].changes
        assert [status for _, status, _, _ in runs_of(url)] == ["ok", "ok"]
        assert_audit_consistent(url)

        # Killed right after its commit: the new state is complete.
        last.wait_for("held")
        last.resume()
        last.wait_for("paused")
        last.kill()
    finally:
        for child in victims + [last]:
            child.proc.kill()
            child.proc.communicate()
    assert memberships_of(url) == expected[2].memberships
    runs = runs_of(url)
    assert [status for _, status, _, _ in runs] == ["ok", "ok", "ok"]
    assert changes_of(url, runs[-1][0]) == expected[2].changes
    assert_audit_consistent(url)
    again = apply(project, url, AS_OF[2])
    assert (again.added, again.removed) == (0, 0)
    assert memberships_of(url) == expected[2].memberships


def wait_until_blocked_on_the_lock(url, child, deadline=60.0):
    """Return once the server shows ``child``'s session waiting for the apply
    lock (PostgreSQL: an ungranted advisory lock with the store's key;
    MariaDB: a session of this database in state "User lock"). SQLite's
    busy wait is invisible from outside: there the second has only been let
    go towards BEGIN IMMEDIATE."""
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        return
    if backend == "postgresql":
        with reader(url).connect() as conn:
            key = store.lock_key(conn, TABLES.prefix)
        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True) & (2**64 - 1)
        waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                          "AND classid::bigint = :hi AND objid::bigint = :lo").bindparams(
            hi=number >> 32, lo=number & 0xFFFFFFFF)
    else:
        waiting = sa.text("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                          "WHERE DB = DATABASE() AND STATE = 'User lock'")
    start = time.monotonic()
    while query(url, waiting)[0][0] == 0:
        assert child.proc.poll() is None, "the second apply ended while the first held the lock"
        assert time.monotonic() - start < deadline, "the second apply never waited for the lock"
        time.sleep(0.01)  # polling the server, not timing the test


# -- two applies at once ------------------------------------------------------------------------------------

def test_two_applies_at_once_never_interleave(url, expected, project):
    apply(project, url, AS_OF[0])

    # Both start together and wait before the lock. The first is let in and
    # stopped with all its writes done, uncommitted, holding the lock; then
    # the second goes for the lock. Without the lock it would compute from the
    # old state and collide with the first's rows (duplicate keys, or
    # duplicated change rows). (A second that gives up on a short timeout,
    # with one clear line, is test_runtime.py's
    # test_a_second_apply_fails_clearly_while_another_holds_the_lock.)
    first = Child(project, "--hold-before", LOCK_STATEMENT, "--pause-after", r"\bUPDATE tagdsl_runs\b",
                  *apply_args(url, AS_OF[1]))
    second = Child(project, "--hold-before", LOCK_STATEMENT, *apply_args(url, AS_OF[1]))
    try:
        first.wait_for("held")
        first.resume()
        first.wait_for("paused")
        second.wait_for("held")
        second.resume()
        wait_until_blocked_on_the_lock(url, second)
    finally:
        first.resume()
    code1, out1, err1 = first.finish()
    code2, out2, err2 = second.finish()
    assert (code1, code2) == (0, 0), err1 + err2

    assert memberships_of(url) == expected[1].memberships
    runs = runs_of(url)
    assert [status for _, status, _, _ in runs] == ["ok", "ok", "ok"]
    (first_id, _, added1, removed1), (second_id, _, added2, removed2) = runs[1:]
    assert changes_of(url, first_id) == expected[1].changes
    assert added1 + removed1 == len(expected[1].changes)
    # The second saw the first's result: nothing left to do.
    assert changes_of(url, second_id) == set() and (added2, removed2) == (0, 0)
    assert_audit_consistent(url)
