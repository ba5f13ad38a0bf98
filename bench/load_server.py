"""Load test of `tagdsl serve`: signed pushes over HTTP/1.1 keep-alive.

    python bench/load_server.py                          # SQLite, 100,000 followers, 5,000 events
    python bench/load_server.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test --events 5000

Builds a store with the synthetic population (runtime.demo), applies the
shipped rulesets once (so stored memberships are current), starts
`tagdsl serve` in its own process on 127.0.0.1, then sends at most --events
pushes (text, menu clicks, scans, a few subscribes of new followers; half in
safe mode) from --concurrency threads for at most --seconds, and reports
events/s and latency percentiles. Finally it counts the rows the server stored
(events, deduplication keys) against the pushes that got `200 success`.
On PostgreSQL the population goes into a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from wechatpy.crypto import WeChatCrypto  # noqa: E402

from runtime import store  # noqa: E402
from runtime.demo import generate_population, load_population  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from tagdsl.config import load_config  # noqa: E402
from tagdsl.resources import shipped_rulesets_dir  # noqa: E402

TOKEN = "benchtoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx00bench00bench00"


def signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def message(openid: str, kind: str, n: int, created: int) -> str:
    head = (f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{created}</CreateTime>")
    if kind == "text":
        return head + f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{random.choice(['1', '2', '你好'])}]]>" \
                      f"</Content><MsgId>{n}</MsgId></xml>"
    event, key = {"click": ("CLICK", "会员中心"), "scan": ("SCAN", "storeA"),
                  "subscribe": ("subscribe", "qrscene_storeB")}[kind]
    return head + f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>" \
                  f"<EventKey><![CDATA[{key}]]></EventKey></xml>"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--followers", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=5_000, help="at most this many pushes")
    ap.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temporary directory)")
    ap.add_argument("--no-apply", action="store_true", help="skip the initial apply")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tagdsl-load-"))
    schema = None
    url = args.db or f"sqlite:///{work / 'store.db'}"
    if args.db and args.db.startswith("postgresql"):
        schema = f"load_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.db)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        admin.dispose()
        sep = "&" if "?" in args.db else "?"
        url = f"{args.db}{sep}options=-csearch_path%3D{schema}"
    (work / "tagdsl.toml").write_text(
        f'[project]\nrulesets = ["{shipped_rulesets_dir()}"]\n[database]\nurl = "{url}"\n'
        f'[wechat_mp]\nappid = "{APPID}"\n', encoding="utf-8")
    config = load_config(work / "tagdsl.toml")
    as_of = dt.datetime.now().replace(microsecond=0)
    try:
        db = store.connect(url, create=True)
        store.create_store(db, config)
        t0 = time.perf_counter()
        population = list(generate_population(args.followers, 20260501, as_of))
        counts = load_population(db, population, config)
        openids = [p.follower["openid"] for p in population]
        del population
        print(f"loaded {counts.followers:,} followers, {counts.events:,} events in {time.perf_counter() - t0:.1f} s")
        if not args.no_apply:
            t0 = time.perf_counter()
            with Engine(config, url) as engine:
                result = engine.apply(as_of=as_of)
            print(f"apply: {result.added:,} memberships in {time.perf_counter() - t0:.1f} s")
        with db.connect() as conn:
            events_before = conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar()
        db.dispose()

        env = {**os.environ, "WECHAT_TOKEN": TOKEN, "WECHAT_AES_KEY": AES_KEY}
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(work / "tagdsl.toml"),
                                 "--port", "0"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()
        if not line.startswith("listening on"):
            print(line + proc.stderr.read(), file=sys.stderr)
            return 1
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()

        latencies: list[float] = []
        failures: list[int] = []
        ok = 0
        lock = threading.Lock()
        budget = iter(range(args.events))
        deadline = time.perf_counter() + args.seconds
        crypto = WeChatCrypto(TOKEN, AES_KEY, APPID)

        def worker(w: int) -> None:
            nonlocal ok
            rng = random.Random(w)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while time.perf_counter() < deadline:
                with lock:
                    n = next(budget, None)
                if n is None:
                    return
                kind = rng.choices(["text", "click", "scan", "subscribe"], [50, 30, 15, 5])[0]
                openid = f"o_bench_new_{n}" if kind == "subscribe" else rng.choice(openids)
                now = int(time.time())
                xml = message(openid, kind, 10**9 + n, now)
                nonce = str(n)
                query = f"signature={signature(TOKEN, str(now), nonce)}&timestamp={now}&nonce={nonce}"
                if n % 2:
                    envelope = crypto.encrypt_message(xml, nonce, str(now))
                    msg_sig = envelope.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
                    query += f"&encrypt_type=aes&msg_signature={msg_sig}"
                    body = envelope.encode()
                else:
                    body = xml.encode()
                started = time.perf_counter()
                try:
                    conn.request("POST", "/wechat?" + query, body=body)
                    resp = conn.getresponse()
                    text = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    print(f"transport error: {type(exc).__name__}: {exc}", file=sys.stderr)
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    with lock:
                        failures.append(0)
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if resp.status == 200 and text == b"success":
                        ok += 1
                    else:
                        failures.append(resp.status)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

        db = store.connect(url)
        with db.connect() as conn:
            stored = conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() - events_before
            seen = conn.execute(sa.text(f"SELECT COUNT(*) FROM {config.database.table_prefix}serve_seen")).scalar()
            runs = conn.execute(sa.text(f"SELECT COUNT(*) FROM {config.database.table_prefix}runs "
                                        "WHERE status = 'event'")).scalar()
        db.dispose()
        lat = sorted(latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        backend = url.split(":", 1)[0]
        print(f"backend {backend}, {args.followers:,} followers, concurrency {args.concurrency}")
        print(f"sent {len(latencies) + failures.count(0):,} pushes in {wall:.1f} s: {ok:,} acknowledged, "
              f"{len(failures)} failed {sorted(set(failures))}")
        print(f"throughput {ok / wall:,.0f} events/s; latency p50 {pct(0.50):.1f} ms, p90 {pct(0.90):.1f} ms, "
              f"p99 {pct(0.99):.1f} ms, max {pct(1.0):.1f} ms, mean {statistics.fmean(lat) * 1000 if lat else 0:.1f} ms")
        print(f"stored {stored:,} event rows, {seen:,} deduplication keys, {runs:,} event runs "
              f"-> {'no event lost' if stored == ok == seen else 'MISMATCH'}")
        return 0 if stored == ok == seen else 1
    finally:
        if schema:
            admin = sa.create_engine(args.db)
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
