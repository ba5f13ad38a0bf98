"""Run the `tagdsl` command line in a child process that a test can stop at
a chosen SQL statement, then SIGKILL or let go (tests/test_faults.py).

    python tests/apply_victim.py [--hold-before REGEX] [--pause-after REGEX [--then-commit]]
                                 [--lock-timeout S] -- apply --db URL ...

--pause-after REGEX  after the first statement matching REGEX has executed,
                     write ``@@paused`` on stderr and wait for a line on stdin
                     (the parent kills the process or sends a line to resume).
--then-commit        pause after the next COMMIT following that statement instead.
--hold-before REGEX  before the first statement matching REGEX runs (e.g. the
                     lock statement), write ``@@held`` on stderr and wait for a
                     line on stdin: children start together, the parent lets
                     them into the lock one by one.
--lock-timeout S     the apply lock timeout (the command line has no option for it).

The hooks live here, not in the engine: the child runs the unmodified CLI.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import event  # noqa: E402


def _signal(word: str) -> None:
    sys.__stderr__.write(f"@@{word}\n")
    sys.__stderr__.flush()


def _wait(word: str) -> None:
    _signal(word)
    sys.stdin.readline()  # the parent SIGKILLs us here, or sends a line to go on


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-after")
    parser.add_argument("--then-commit", action="store_true")
    parser.add_argument("--hold-before")
    parser.add_argument("--lock-timeout", type=float)
    opts = parser.parse_args(argv[:split])
    cli_args = argv[split + 1:]

    state = {"matched": False, "paused": False, "held": False}
    pause_re = re.compile(opts.pause_after, re.I) if opts.pause_after else None
    hold_re = re.compile(opts.hold_before, re.I) if opts.hold_before else None

    def before(conn, cursor, statement, parameters, context, executemany):
        if hold_re and not state["held"] and hold_re.search(statement):
            state["held"] = True
            _wait("held")

    def after(conn, cursor, statement, parameters, context, executemany):
        if pause_re and not state["matched"] and pause_re.search(statement):
            state["matched"] = True
            if not opts.then_commit:
                state["paused"] = True
                _wait("paused")

    event.listen(sa.engine.Engine, "before_cursor_execute", before)
    event.listen(sa.engine.Engine, "after_cursor_execute", after)

    from runtime import engine as engine_module
    from runtime import store

    if opts.then_commit:
        connect = store.connect

        def connect_with_commit_hook(*args, **kwargs):
            db = connect(*args, **kwargs)
            do_commit = db.dialect.do_commit

            def commit_then_pause(dbapi_connection):
                do_commit(dbapi_connection)
                if state["matched"] and not state["paused"]:
                    state["paused"] = True
                    _wait("paused")

            db.dialect.do_commit = commit_then_pause
            return db

        store.connect = connect_with_commit_hook

    if opts.lock_timeout is not None:
        init = engine_module.Engine.__init__

        def init_with_timeout(self, config=None, url=None, *, lock_timeout=30.0):
            init(self, config, url, lock_timeout=opts.lock_timeout)

        engine_module.Engine.__init__ = init_with_timeout

    from cli import main as tagdsl

    tagdsl(cli_args, prog_name="tagdsl")


if __name__ == "__main__":
    main()
