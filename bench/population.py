"""The benchmark population: N followers with about 3 orders and 10 events
each on average (heavily skewed: about half have no order, a few hundred
events for the most active), two years of history, missing values, and the
awkward rows real stores have (orders after the as-of instant, orders
without a time).

runtime.demo's generator gives about 1.7 orders and 4 events per follower,
so the benchmark has its own, shaped after it. Deterministic in (n, seed,
as_of). Generated in chunks so 1M followers never sit in memory at once.

Loading: SQLite with executemany in one transaction (journal_mode=WAL,
synchronous=OFF), timestamps as 'YYYY-MM-DD HH:MM:SS' text and amounts as
REAL, as a typical app writes them; PostgreSQL with COPY (psycopg's
``cursor.copy``) into a schema of its own.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import random
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterator

FOLLOWER_COLUMNS = ("openid", "unionid", "subscribe_time", "subscribe_scene", "qr_scene_str", "language", "remark",
                    "city", "province", "gender", "age", "last_active_at", "subscribed")
ORDER_COLUMNS = ("openid", "created_at", "amount", "category", "promo")
EVENT_COLUMNS = ("openid", "occurred_at", "type", "key")

DEFAULT_SEED = 20260501
DEFAULT_AS_OF = dt.datetime(2026, 5, 1, 12, 0, 0)
CHUNK = 10_000  # followers per generated chunk


class _Weighted:
    def __init__(self, weights: dict):
        self.values = list(weights)
        self.cumulative = list(itertools.accumulate(weights.values()))
        self.total = self.cumulative[-1]

    def __call__(self, r: float):
        return self.values[bisect.bisect_right(self.cumulative, r * self.total)]


_PLACES = _Weighted({
    ("广东", "广州"): 9, ("广东", "深圳"): 9, ("上海", "上海"): 10, ("北京", "北京"): 9, ("浙江", "杭州"): 6,
    ("江苏", "南京"): 4, ("江苏", "苏州"): 4, ("四川", "成都"): 5, ("湖北", "武汉"): 4, ("陕西", "西安"): 3,
    ("重庆", "重庆"): 3, ("天津", "天津"): 2, ("湖南", "长沙"): 3, ("福建", "厦门"): 2, ("山东", "青岛"): 2,
    ("广东", "佛山"): 3, ("河南", "郑州"): 2, ("云南", "昆明"): 1, ("安徽", "合肥"): 2,
    ("广东", None): 2, (None, None): 10,
})
_SCENES = _Weighted({"ADD_SCENE_QR_CODE": 34, "ADD_SCENE_SEARCH": 18, "ADD_SCENE_PROFILE_CARD": 9,
                     "ADD_SCENE_WECHAT_ADVERTISEMENT": 9, "ADD_SCENE_PAID": 3, "ADD_SCENE_OTHERS": 6, None: 2})
_GENDERS = _Weighted({2: 46, 1: 27, 0: 22, None: 5})
_CATEGORIES = _Weighted({"护肤": 24, "彩妆": 14, "母婴": 10, "食品": 12, "服饰": 12, "纸巾": 8, "洗护": 9,
                         "滤芯": 3, "家居": 2})
_MEAN_CENTS = {"护肤": 26000, "彩妆": 18000, "母婴": 15000, "食品": 6000, "服饰": 22000, "纸巾": 4500,
               "洗护": 8000, "滤芯": 26000, "家居": 12000}
_EVENT_TYPES = _Weighted({"menu_click": 36, "menu_view": 22, "text": 26, "scan": 6, "location": 5, "trial": 5})
_MENU_KEYS = _Weighted({"会员中心": 30, "最新活动": 20, "领优惠券": 18, "联系客服": 10, "商城首页": 15, "积分查询": 7})
_TEXTS = _Weighted({"1": 30, "优惠": 12, "客服": 10, "你好": 10, "会员": 8, "退货": 4})

DAY = 86400
HISTORY = 730 * DAY  # two years


@dataclass
class Chunk:
    """Rows of a run of followers, in store order; values are Python values
    (datetimes naive in the project time zone, amounts as integer cents)."""

    followers: list[tuple]
    orders: list[tuple]  # (openid, created_at, cents, category, promo)
    events: list[tuple]  # (openid, occurred_at, type, key)


def generate(n: int, seed: int = DEFAULT_SEED, as_of: dt.datetime = DEFAULT_AS_OF,
             chunk: int = CHUNK) -> Iterator[Chunk]:
    rng = random.Random(seed)
    rand, randint, pareto = rng.random, rng.randint, rng.paretovariate
    base = as_of - dt.timedelta(seconds=3 * 365 * DAY)
    td = dt.timedelta
    promo_days = [d for d in range(0, 3 * 365) if (base + td(days=d)).strftime("%m-%d") >= "06-01"
                  and (base + td(days=d)).strftime("%m-%d") <= "06-18"
                  or "11-01" <= (base + td(days=d)).strftime("%m-%d") <= "11-11"]
    promo_set = set(promo_days)
    total_secs = 3 * 365 * DAY
    fs, os_, es = [], [], []
    for i in range(n):
        openid = f"o{rng.getrandbits(120):030x}"[:28]
        # seconds after `base` (as_of is total_secs)
        sub = total_secs - min(3 * 365 * DAY, int(rng.expovariate(1 / (380 * DAY))))
        province, city = _PLACES(rand())
        scene = _SCENES(rand())
        r = rand()
        if r < 0.25:
            quiet = rand() * 7 * DAY
        elif r < 0.45:
            quiet = 7 * DAY + rand() * 23 * DAY
        elif r < 0.65:
            quiet = 30 * DAY + rand() * 60 * DAY
        elif r < 0.97:
            quiet = 90 * DAY + rand() * 640 * DAY
        else:
            quiet = None
        last = None if quiet is None else max(sub, total_secs - int(quiet))
        age = None if rand() < 0.28 else max(14, min(75, int(rng.gauss(33, 10))))
        fs.append((openid, f"u{i}" if rand() < 0.6 else None,
                   base + td(seconds=sub) if rand() > 0.01 else None, scene,
                   ("store_gz" if rand() < 0.3 else "poster_618") if scene == "ADD_SCENE_QR_CODE" else None,
                   "zh_CN", None, city, province, _GENDERS(rand()), age,
                   base + td(seconds=last) if last is not None else None, rand() > 0.07))

        # Orders: 45 % none, the rest Pareto-distributed (mean about 3 per follower overall).
        n_orders = 0 if rand() < 0.45 else min(200, int(2 * pareto(1.5)))
        start = max(sub, total_secs - HISTORY)
        end = last if last is not None and last > start else total_secs
        favourite = _CATEGORIES(rand())
        promo_lover = rand() < 0.25
        for _ in range(n_orders):
            category = favourite if rand() < 0.6 else _CATEGORIES(rand())
            t = randint(start, end)
            if promo_lover and rand() < 0.7:
                d = promo_days[int(rand() * len(promo_days))]
                if d * DAY >= start:
                    t = d * DAY + randint(0, DAY - 1)
            promo = (t // DAY) in promo_set and rand() < 0.85
            cents = max(100, int(rng.lognormvariate(0, 0.55) * _MEAN_CENTS[category]))
            if promo:
                cents = cents * 8 // 10
            os_.append((openid, base + td(seconds=t), cents, category, promo))
        if n_orders and rand() < 0.01:  # clock skew: an order after as_of
            os_.append((openid, as_of + td(hours=randint(1, 48)), 9900, favourite, False))
        if n_orders and rand() < 0.005:  # imported without a time
            os_.append((openid, None, 1990, favourite, False))

        # Events: the subscribe, then interactions in the months before the last activity.
        es.append((openid, base + td(seconds=sub), "subscribe", None))
        if last is not None:
            n_events = min(400, int(3 * pareto(1.4)))
            lo = max(sub, last - 120 * DAY)
            for k in range(n_events):
                kind = _EVENT_TYPES(rand())
                key = _MENU_KEYS(rand()) if kind == "menu_click" else _TEXTS(rand()) if kind == "text" else None
                t = last if k == 0 else randint(lo, last)
                es.append((openid, base + td(seconds=t), kind, key))
        if rand() < 0.07:
            es.append((openid, base + td(seconds=randint(sub, total_secs)), "unsubscribe", None))
        if len(fs) >= chunk:
            yield Chunk(fs, os_, es)
            fs, os_, es = [], [], []
    if fs:
        yield Chunk(fs, os_, es)


# -- DDL ---------------------------------------------------------------------------------------------

def _ddl(dialect: str) -> list[str]:
    ts = "TIMESTAMP" if dialect == "postgresql" else "DATETIME"
    boolean = "BOOLEAN"
    return [
        f"""CREATE TABLE followers (openid VARCHAR(64) PRIMARY KEY, unionid VARCHAR(64), subscribe_time {ts},
            subscribe_scene VARCHAR(255), qr_scene_str VARCHAR(255), language VARCHAR(255), remark VARCHAR(255),
            city VARCHAR(255), province VARCHAR(255), gender INTEGER, age INTEGER, last_active_at {ts},
            subscribed {boolean})""",
        f"""CREATE TABLE orders (openid VARCHAR(64) NOT NULL, created_at {ts}, amount NUMERIC(12, 2),
            category VARCHAR(255), promo {boolean})""",
        f"""CREATE TABLE events (openid VARCHAR(64) NOT NULL, occurred_at {ts}, type VARCHAR(255),
            "key" VARCHAR(255))""",
    ]


# Created after loading (faster than maintaining them row by row); the same
# indexes tagdsl.schema.build_tables declares.
INDEXES = ["CREATE INDEX ix_orders_openid ON orders (openid, created_at)",
           "CREATE INDEX ix_events_openid ON events (openid, occurred_at)"]


@dataclass
class Loaded:
    followers: int = 0
    orders: int = 0
    events: int = 0
    seconds: float = 0.0


def _ts(v):
    return None if v is None else v.isoformat(" ")


def load_sqlite(path: str, n: int, seed: int = DEFAULT_SEED, as_of: dt.datetime = DEFAULT_AS_OF) -> Loaded:
    """Create ``path`` (must not exist) with the population."""
    started = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("BEGIN")
    for stmt in _ddl("sqlite"):
        con.execute(stmt)
    counts = Loaded()
    for c in generate(n, seed, as_of):
        con.executemany("INSERT INTO followers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        [(f[0], f[1], _ts(f[2]), f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], _ts(f[11]),
                          int(f[12])) for f in c.followers])
        con.executemany("INSERT INTO orders VALUES (?,?,?,?,?)",
                        [(o[0], _ts(o[1]), o[2] / 100, o[3], int(o[4])) for o in c.orders])
        con.executemany('INSERT INTO events VALUES (?,?,?,?)',
                        [(e[0], _ts(e[1]), e[2], e[3]) for e in c.events])
        counts.followers += len(c.followers)
        counts.orders += len(c.orders)
        counts.events += len(c.events)
    for stmt in INDEXES:
        con.execute(stmt)
    con.execute("COMMIT")
    con.execute("ANALYZE")
    con.execute("PRAGMA synchronous=NORMAL")
    con.close()
    counts.seconds = time.perf_counter() - started
    return counts


def _cents_text(c: int) -> str:
    return f"{c // 100}.{c % 100:02d}"


def load_postgresql(dsn: str, schema: str, n: int, seed: int = DEFAULT_SEED,
                    as_of: dt.datetime = DEFAULT_AS_OF) -> Loaded:
    """Drop and recreate ``schema`` and COPY the population into it."""
    import psycopg

    started = time.perf_counter()
    counts = Loaded()
    with psycopg.connect(dsn, autocommit=False) as con:
        cur = con.cursor()
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"SET search_path TO {schema}")
        for stmt in _ddl("postgresql"):
            cur.execute(stmt)
        for c in generate(n, seed, as_of):
            with cur.copy(f"COPY followers ({', '.join(FOLLOWER_COLUMNS)}) FROM STDIN") as cp:
                for f in c.followers:
                    cp.write_row(f)
            with cur.copy("COPY orders (openid, created_at, amount, category, promo) FROM STDIN") as cp:
                for o in c.orders:
                    cp.write_row((o[0], o[1], _cents_text(o[2]), o[3], o[4]))
            with cur.copy('COPY events (openid, occurred_at, type, "key") FROM STDIN') as cp:
                for e in c.events:
                    cp.write_row(e)
            counts.followers += len(c.followers)
            counts.orders += len(c.orders)
            counts.events += len(c.events)
        for stmt in INDEXES:
            cur.execute(stmt)
        con.commit()
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"SET search_path TO {schema}")
        con.execute("VACUUM ANALYZE followers")
        con.execute("VACUUM ANALYZE orders")
        con.execute("VACUUM ANALYZE events")
    counts.seconds = time.perf_counter() - started
    return counts


# -- in memory, for the evaluators ------------------------------------------------------------------

def followers_in_memory(n: int, seed: int = DEFAULT_SEED, as_of: dt.datetime = DEFAULT_AS_OF):
    """(fields, orders, events) per follower in the evaluator's domain:
    fields by DSL name, order rows with Decimal amounts, event rows."""
    out = []
    for c in generate(n, seed, as_of):
        by_id: dict[str, tuple] = {}
        for f in c.followers:
            fields = dict(zip(FOLLOWER_COLUMNS[1:], f[1:]))
            by_id[f[0]] = (f[0], fields, [], [])
            out.append(by_id[f[0]])
        for o in c.orders:
            by_id[o[0]][2].append({"created_at": o[1], "amount": Decimal(o[2]).scaleb(-2), "category": o[3],
                                   "promo": o[4]})
        for e in c.events:
            by_id[e[0]][3].append({"occurred_at": e[1], "type": e[2], "key": e[3]})
    return out


if __name__ == "__main__":  # quick shape check: python bench/population.py 10000
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    t = time.perf_counter()
    nf = no = ne = 0
    zero_orders = 0
    per = []
    for c in generate(n):
        nf += len(c.followers)
        no += len(c.orders)
        ne += len(c.events)
    print(f"{nf} followers, {no / nf:.2f} orders and {ne / nf:.2f} events per follower, "
          f"{time.perf_counter() - t:.1f}s")
