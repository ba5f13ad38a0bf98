"""The benchmark's smoke mode runs end to end (not a timed test: nothing
here asserts on speed). It loads ~1,000 followers into SQLite and checks
that the engine, the hand-written SQL, the naive Python loop and the
in-memory evaluators produce the same (openid, tag) set."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_runs_and_checks_agreement(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--workdir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "agreement: every approach produced the same (openid, tag) set" in proc.stdout
    assert "agreement check: passed" in proc.stdout
    assert "== targets ==" in proc.stdout
