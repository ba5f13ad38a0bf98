"""Load test of `tagdsl serve`: signed pushes over HTTP/1.1 keep-alive.

    python bench/load_server.py                          # SQLite, 100,000 followers, 5,000 events
    python bench/load_server.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test --events 5000
    python bench/load_server.py --rate 500               # open loop: a push every 2 ms

Builds a store with the synthetic population (runtime.demo), applies the
shipped rulesets once (so stored memberships are current), starts
`tagdsl serve` in its own process on 127.0.0.1, then sends at most --events
pushes (text, menu clicks, scans, a few subscribes of new followers; half in
safe mode) over --concurrency keep-alive connections for at most --seconds,
and reports events/s and latency percentiles. Finally it counts the rows the
server stored (events, deduplication keys) against the pushes that got an
HTTP 200 answer (`success` or a passive reply).

The load generator shares the machine's cores with the server, so it is made
cheap: every request (signature, encryption, HTTP bytes) is built before the
clock starts, and one asyncio thread drives all connections. Its own CPU time
and the server's are reported. Without --rate it is a closed loop (each
connection sends its next push when the answer arrives); with --rate N pushes
are due every 1/N s and latency is measured from when a push was due (a push
waiting for a free connection counts as waiting).

--workdir DIR keeps the store (and, on PostgreSQL, its schema) for another
run: a second run with the same DIR skips loading and the initial apply.
Otherwise the store lives in a temporary directory and a PostgreSQL
population goes into a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
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
from runtime.events import Push  # noqa: E402
from tagdsl.config import load_config  # noqa: E402
from tagdsl.resources import shipped_rulesets_dir  # noqa: E402

TOKEN = "benchtoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx00bench00bench00"


def signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def message(openid: str, kind: str, n: int, created: int, rng: random.Random) -> str:
    head = (f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{created}</CreateTime>")
    if kind == "text":
        return head + f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{rng.choice(['1', '2', '你好'])}]]>" \
                      f"</Content><MsgId>{n}</MsgId></xml>"
    event, key = EVENTS[kind]
    return head + f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>" \
                  f"<EventKey><![CDATA[{key}]]></EventKey></xml>"


EVENTS = {"click": ("CLICK", "会员中心"), "scan": ("SCAN", "storeA"), "subscribe": ("subscribe", "qrscene_storeB")}


def build_requests(count: int, openids: list[str], run_tag: str, port: int) -> tuple[list[bytes], list[str]]:
    """``count`` complete HTTP requests (half in safe mode), deterministic but for the timestamps,
    and the deduplication key the server computes for each."""
    rng = random.Random(20260501)
    crypto = WeChatCrypto(TOKEN, AES_KEY, APPID)
    now = int(time.time())
    out, keys = [], []
    for n in range(count):
        kind = rng.choices(["text", "click", "scan", "subscribe"], [50, 30, 15, 5])[0]
        openid = f"o_bench_new_{run_tag}_{n}" if kind == "subscribe" else rng.choice(openids)
        # CreateTime: distinct per push of a follower (events are deduplicated by it).
        msg_id, created = int(run_tag, 16) * 10**7 + n, now - count + n
        xml = message(openid, kind, msg_id, created, rng)
        keys.append((Push(openid, "gh_bench", created, "text", msg_id=str(msg_id)) if kind == "text" else
                     Push(openid, "gh_bench", created, "event", event=EVENTS[kind][0],
                          event_key=EVENTS[kind][1])).dedupe_key)
        nonce = str(n)
        query = f"signature={signature(TOKEN, str(now), nonce)}&timestamp={now}&nonce={nonce}"
        if n % 2:
            envelope = crypto.encrypt_message(xml, nonce, str(now))
            msg_sig = envelope.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
            query += f"&encrypt_type=aes&msg_signature={msg_sig}"
            body = envelope.encode()
        else:
            body = xml.encode()
        out.append(f"POST /wechat?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return out, keys


async def drive(port: int, requests: list[bytes], concurrency: int, seconds: float, rate: float | None):
    """Send the requests (in order); returns (latencies in s, statuses, transport errors, wall seconds,
    how many were sent)."""
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = [0]
    sent = [0]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + seconds

    async def producer():
        if rate is None:
            for req in requests:
                queue.put_nowait((req, None))
        else:
            for n, req in enumerate(requests):
                due = t0 + n / rate
                if due > deadline:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait((req, due))
        for _ in range(concurrency):
            queue.put_nowait((None, None))

    async def connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            req, due = await queue.get()
            if req is None or loop.time() > deadline:
                break
            started = due if due is not None else loop.time()
            sent[0] += 1
            try:
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                print(f"transport error: {type(exc).__name__}: {exc}", file=sys.stderr)
                errors[0] += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(loop.time() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    await asyncio.gather(producer(), *(connection() for _ in range(concurrency)))
    return latencies, statuses, errors[0], loop.time() - t0, sent[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (the server's workers), from /proc."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--followers", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=5_000, help="at most this many pushes")
    ap.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long")
    ap.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    ap.add_argument("--rate", type=float, default=None, help="open loop: pushes due per second")
    ap.add_argument("--db", default=None, help="database URL (default: a SQLite file in the work directory)")
    ap.add_argument("--workdir", default=None, help="keep the store here and reuse it next time")
    ap.add_argument("--no-apply", action="store_true", help="skip the initial apply")
    ap.add_argument("--workers", type=int, default=1, help="server processes (tagdsl serve --workers)")
    ap.add_argument("--server-root", default=None,
                    help="run `tagdsl serve` from this checkout instead (e.g. an older version, for a comparison)")
    args = ap.parse_args()

    reuse = False
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        reuse = (work / "tagdsl.toml").exists()
    else:
        work = Path(tempfile.mkdtemp(prefix="tagdsl-load-"))
    schema = None
    if reuse:
        config = load_config(work / "tagdsl.toml")
        url = config.database_url
    else:
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
    drop_schema = schema if not args.workdir else None
    as_of = dt.datetime.now().replace(microsecond=0)
    try:
        db = store.connect(url, create=True)
        if not reuse:
            store.create_store(db, config)
            t0 = time.perf_counter()
            population = list(generate_population(args.followers, 20260501, as_of))
            counts = load_population(db, population, config)
            del population
            print(f"loaded {counts.followers:,} followers, {counts.events:,} events in {time.perf_counter() - t0:.1f} s")
            if not args.no_apply:
                t0 = time.perf_counter()
                with Engine(config, url) as engine:
                    result = engine.apply(as_of=as_of)
                print(f"apply: {result.added:,} memberships in {time.perf_counter() - t0:.1f} s")
            # Planner statistics, as a store in service has them (PostgreSQL plans a
            # freshly loaded table as if it were tiny: sequential scans).
            if db.dialect.name in ("sqlite", "postgresql"):
                with db.begin() as conn:
                    conn.exec_driver_sql("ANALYZE")
        with db.connect() as conn:
            events_before = conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar()
            followers = conn.execute(sa.text("SELECT COUNT(*) FROM followers")).scalar()
            seen_before = 0
            if sa.inspect(conn).has_table(f"{config.database.table_prefix}serve_seen"):
                seen_before = conn.execute(sa.text(
                    f"SELECT COUNT(*) FROM {config.database.table_prefix}serve_seen")).scalar()
            openids = list(conn.execute(sa.text("SELECT openid FROM followers WHERE openid NOT LIKE 'o_bench_new_%'"
                                                " ORDER BY openid")).scalars())
        db.dispose()

        env = {**os.environ, "WECHAT_TOKEN": TOKEN, "WECHAT_AES_KEY": AES_KEY}
        command = [sys.executable, "-m", "cli", "serve", "--config", str(work / "tagdsl.toml"), "--port", "0"]
        if args.workers > 1:
            command += ["--workers", str(args.workers)]
        server_root = Path(args.server_root).resolve() if args.server_root else ROOT
        proc = subprocess.Popen(command, cwd=server_root, env={**env, "PYTHONPATH": str(server_root)},
                                stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()
        if not line.startswith("listening on"):
            print(line + proc.stderr.read(), file=sys.stderr)
            return 1
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()

        requests, keys = build_requests(args.events, openids, uuid.uuid4().hex[:6], port)
        # A push of an earlier run on a reused store can have the same deduplication key (same
        # follower, event and CreateTime second): the server rightly stores it once.
        known: set[str] = set()
        db = store.connect(url)
        with db.connect() as conn:
            if sa.inspect(conn).has_table(f"{config.database.table_prefix}serve_seen"):
                seen_table = sa.table(f"{config.database.table_prefix}serve_seen", sa.column("dedupe_key"))
                for i in range(0, len(keys), 500):
                    known.update(conn.execute(sa.select(seen_table.c.dedupe_key).where(
                        seen_table.c.dedupe_key.in_(keys[i:i + 500]))).scalars())
        db.dispose()
        server_cpu0, client_cpu0 = cpu_seconds(proc.pid), time.process_time()
        latencies, statuses, errors, wall, sent = asyncio.run(
            drive(port, requests, args.concurrency, args.seconds, args.rate))
        server_cpu, client_cpu = cpu_seconds(proc.pid) - server_cpu0, time.process_time() - client_cpu0
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

        db = store.connect(url)
        with db.connect() as conn:
            stored = conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() - events_before
            seen = conn.execute(sa.text(f"SELECT COUNT(*) FROM {config.database.table_prefix}serve_seen")).scalar() \
                - seen_before
        db.dispose()
        ok = statuses.get(200, 0)
        repeats = sum(1 for key in keys[:sent] if key in known)
        lat = sorted(latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        backend = url.split(":", 1)[0]
        mode = f"open loop at {args.rate:g}/s" if args.rate else "closed loop"
        print(f"backend {backend}, {followers:,} followers, {args.workers} server process(es), "
              f"{args.concurrency} connections, {mode}" + (f", server from {server_root}" if args.server_root else ""))
        print(f"sent {len(latencies) + errors:,} pushes in {wall:.1f} s: {ok:,} acknowledged, "
              f"{len(latencies) - ok + errors} failed {({s: c for s, c in statuses.items() if s != 200})} "
              f"({errors} transport errors)")
        print(f"throughput {ok / wall:,.0f} events/s; latency p50 {pct(0.50):.1f} ms, p90 {pct(0.90):.1f} ms, "
              f"p99 {pct(0.99):.1f} ms, max {pct(1.0):.1f} ms, mean {statistics.fmean(lat) * 1000 if lat else 0:.1f} ms")
        print(f"CPU: server {server_cpu:.1f} s ({server_cpu / wall:.0%} of a core), "
              f"load generator {client_cpu:.1f} s ({client_cpu / wall:.0%} of a core)")
        expected = ok - repeats
        print(f"stored {stored:,} event rows, {seen:,} deduplication keys"
              + (f" ({repeats} pushes repeated an earlier run's and were deduplicated)" if repeats else "")
              + f" -> {'no event lost' if stored == expected == seen else 'MISMATCH'}")
        return 0 if stored == expected == seen else 1
    finally:
        if drop_schema:
            admin = sa.create_engine(args.db)
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {drop_schema} CASCADE")
            admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
