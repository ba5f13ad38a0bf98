"""`tagdsl serve --workers N`: server processes sharing one port on PostgreSQL
and MariaDB. A push and its retry racing each other in two processes are
stored once; the workers stop when the server is killed; SQLite refuses
more than one worker."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbs import isolated_engine
from runtime import store
from runtime.engine import Engine
from tagdsl import load_ruleset
from tagdsl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tagdsltoken"
ENV = {"WECHAT_TOKEN": TOKEN, "WECHAT_AES_KEY": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"}
RULES = 'tag "互动" when count(events) >= 1\ntag "菜单活跃" when count(events where type == "menu_click") >= 2\n'
FOLLOWERS = [f"o_w{i:02d}" for i in range(12)]


def project(tmp_path, url):
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "t.tag").write_text(RULES, encoding="utf-8")
    (tmp_path / "tagdsl.toml").write_text(f'[project]\nrulesets = ["rules"]\n[database]\nurl = "{url}"\n'
                                          '[wechat_mp]\nappid = "wx0123456789abcdef"\n', encoding="utf-8")
    config = load_config(tmp_path / "tagdsl.toml")
    return config


def start(tmp_path, workers):
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(tmp_path / "tagdsl.toml"),
                             "--port", "0", "--workers", str(workers)], cwd=ROOT, env={**os.environ, **ENV},
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert line.startswith("listening on http://127.0.0.1:"), line + proc.stderr.read()
    proc.log = []  # the server's log lines, for failure messages
    threading.Thread(target=lambda: proc.log.extend(proc.stderr), daemon=True).start()
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(stat.parent.name))
        except OSError:
            pass
    return found


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_workers_store_racing_retries_once_and_stop_with_the_server(backend, tmp_path):
    with isolated_engine(backend, tmp_path) as (_engine, url):
        config = project(tmp_path, url)
        db = store.connect(url, create=True)
        tables = store.create_store(db, config)
        with db.begin() as conn:
            conn.execute(sa.insert(tables.followers), [dict(openid=o) for o in FOLLOWERS])
        db.dispose()
        with Engine(config, url) as engine:
            engine.apply(load_ruleset(config.ruleset_paths(), config))

        proc, port = start(tmp_path, 2)
        try:
            deadline = time.monotonic() + 20
            while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            workers = children(proc.pid)
            assert len(workers) == 2
            now = int(time.time())
            pushes = []
            for n in range(48):
                openid = FOLLOWERS[n % len(FOLLOWERS)]
                pushes.append(f"<xml><ToUserName>gh_x</ToUserName><FromUserName>{openid}</FromUserName>"
                              f"<CreateTime>{now - 100 + n}</CreateTime><MsgType>event</MsgType>"
                              "<Event>CLICK</Event><EventKey>会员中心</EventKey></xml>")
            sig = hashlib.sha1("".join(sorted([TOKEN, str(now), "n"])).encode()).hexdigest()
            answers: list[tuple[int, bytes]] = []
            lock = threading.Lock()

            def send(items):
                # A connection per push: the kernel spreads them over the workers.
                for xml in items:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("POST", f"/wechat?signature={sig}&timestamp={now}&nonce=n", body=xml.encode())
                    resp = conn.getresponse()
                    with lock:
                        answers.append((resp.status, resp.read()))
                    conn.close()

            # Every push twice, from two senders at about the same time (a retry racing the first delivery).
            threads = [threading.Thread(target=send, args=(pushes,)) for _ in range(2)]
            threads += [threading.Thread(target=send, args=(pushes[::-1],)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert answers == [(200, b"success")] * (4 * len(pushes)), "".join(proc.log)

            db = store.connect(url)
            with db.connect() as conn:
                assert conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() == len(pushes)
                assert conn.execute(sa.text("SELECT COUNT(*) FROM tagdsl_serve_seen")).scalar() == len(pushes)
                held = set(conn.execute(sa.text("SELECT openid, tag FROM tagdsl_memberships")))
            db.dispose()
            # Four clicks each: both rules hold for every follower, as apply computes.
            assert held == {(o, t) for o in FOLLOWERS for t in ("互动", "菜单活跃")}

            # Killed without a chance to clean up: the workers notice and stop.
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 10
            while any(alive(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(alive(w) for w in workers)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


def test_sqlite_refuses_several_workers(tmp_path):
    config = project(tmp_path, "sqlite:///store.db")
    db = store.connect(config.database_url, create=True)
    store.create_store(db, config)
    db.dispose()
    run = subprocess.run([sys.executable, "-m", "cli", "serve", "--config", str(tmp_path / "tagdsl.toml"),
                          "--port", "0", "--workers", "2"], cwd=ROOT, env={**os.environ, **ENV},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: --workers above 1 needs PostgreSQL or MySQL: SQLite has one writer at a time "
        "(one process already commits every push waiting in one transaction)"]
