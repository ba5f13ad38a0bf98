"""A deterministic synthetic follower population, and the `tagdsl demo` run.

The population is shaped like a Chinese retail brand's official account:
cities with some missing, subscribe scenes and QR channels, ages and genders
with missing values, orders heavily skewed (most followers have none, a few
have many; amounts in yuan with cents; some bought during promotions) and
events (menu clicks on 会员中心, text replies such as "1", scans,
subscribes), with activity spread over two years and some of it recent.
The same ``(n, seed, as_of)`` always gives the same rows.

``generate_population`` and ``load_population`` are reused by the benchmark.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import itertools
import random
import shutil
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator, Optional

import sqlalchemy as sa

from tagdsl.config import CONFIG_NAME, Config, load_config
from tagdsl.resources import shipped_rulesets_dir
from tagdsl.schema import build_tables

from . import store

DEFAULT_SEED = 20260501
DEFAULT_FOLLOWERS = 10_000
DB_NAME = "tagdsl.db"

FOLLOWER_COLUMNS = ("openid", "unionid", "subscribe_time", "subscribe_scene", "qr_scene_str", "language", "remark",
                    "city", "province", "gender", "age", "last_active_at", "subscribed")
ORDER_COLUMNS = ("openid", "amount", "category", "created_at", "promo")
EVENT_COLUMNS = ("openid", "type", "key", "occurred_at")


@dataclass
class FollowerRows:
    """One follower and its rows of each source (dicts keyed by column)."""

    follower: dict
    orders: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)


@dataclass
class LoadCounts:
    followers: int = 0
    orders: int = 0
    events: int = 0
    seconds: float = 0.0


class _Weighted:
    """Draw from ``{value: weight}`` with one random number (bisect on cumulative weights)."""

    def __init__(self, weights: dict):
        self.values = list(weights)
        self.cumulative = list(itertools.accumulate(weights.values()))

    def __call__(self, rng: random.Random):
        return self.values[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


# (province, city): weight. About 12 % of followers have no city (WeChat stopped
# returning it for many users), some of those still have a province.
_PLACES = _Weighted({
    ("广东", "广州"): 9, ("广东", "深圳"): 9, ("上海", "上海"): 10, ("北京", "北京"): 9, ("浙江", "杭州"): 6,
    ("江苏", "南京"): 4, ("江苏", "苏州"): 4, ("四川", "成都"): 5, ("湖北", "武汉"): 4, ("陕西", "西安"): 3,
    ("重庆", "重庆"): 3, ("天津", "天津"): 2, ("湖南", "长沙"): 3, ("福建", "厦门"): 2, ("福建", "福州"): 2,
    ("山东", "青岛"): 2, ("山东", "济南"): 2, ("广东", "佛山"): 3, ("广东", "东莞"): 3, ("河南", "郑州"): 2,
    ("辽宁", "沈阳"): 1, ("云南", "昆明"): 1, ("安徽", "合肥"): 2, ("江西", "南昌"): 1, ("广西", "南宁"): 1,
    ("黑龙江", "哈尔滨"): 1, ("海南", "海口"): 1, ("香港", "香港"): 1,
    ("广东", None): 2, ("浙江", None): 1, (None, None): 9,
})
_SCENES = _Weighted({
    "ADD_SCENE_QR_CODE": 34, "ADD_SCENE_SEARCH": 18, "ADD_SCENE_PROFILE_CARD": 9, "ADD_SCENE_PROFILE_LINK": 7,
    "ADD_SCENE_PROFILE_ITEM": 2, "ADD_SCENE_REPRINT": 1, "ADD_SCENE_WECHAT_ADVERTISEMENT": 9, "ADD_SCENE_PAID": 3,
    "ADD_SCENE_LIVESTREAM": 2, "ADD_SCENE_CHANNELS": 3, "ADD_SCENE_ACCOUNT_MIGRATION": 4, "ADD_SCENE_OTHERS": 6,
    None: 2,
})
# qr_scene_str of parametric QR codes: stores ("store…"), posters, events, package inserts.
_QR_CHANNELS = _Weighted({
    "store_gz_tianhe": 6, "store_gz_haizhu": 4, "store_sz_nanshan": 5, "store_sh_jingan": 5, "store_bj_chaoyang": 4,
    "storeA": 2, "poster_618": 5, "poster_double11": 5, "event_2025_expo": 3, "package_card": 8, "kol_xhs": 4,
    "ad_douyin": 3, "": 2, None: 3,
})
_LANGUAGES = _Weighted({"zh_CN": 92, "zh_TW": 2, "zh_HK": 1, "en": 3, None: 2})
_REMARKS = _Weighted({None: 96, "VIP": 1, "老客户": 1, "门店导购-小王": 1, "投诉过": 0.5, "待回访": 0.5})
_GENDERS = _Weighted({2: 46, 1: 27, 0: 22, None: 5})  # WeChat: 1 male, 2 female, 0 unknown
_CATEGORIES = _Weighted({"护肤": 24, "彩妆": 14, "母婴": 10, "食品": 12, "服饰": 12, "纸巾": 8, "洗护": 9,
                         "洗发水": 3, "沐浴露": 2, "净化器": 1, "滤芯": 3, "家居": 2})
_MEAN_PRICE = {"护肤": 260, "彩妆": 180, "母婴": 150, "食品": 60, "服饰": 220, "纸巾": 45, "洗护": 80,
               "洗发水": 70, "沐浴露": 55, "净化器": 1500, "滤芯": 260, "家居": 120}
_MENU_KEYS = _Weighted({"会员中心": 30, "最新活动": 20, "领优惠券": 18, "联系客服": 10, "商城首页": 15, "积分查询": 7})
_TEXTS = _Weighted({"1": 30, "2": 10, "优惠": 12, "客服": 10, "你好": 10, "在吗": 8, "会员": 8, "退货": 4,
                    "发货了吗": 4, "人工": 4})
_EVENT_TYPES = _Weighted({"menu_click": 38, "menu_view": 22, "text": 28, "scan": 7, "location": 5})


def _promotion_windows(as_of: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """618, 双11 and 双12 of the last three years, and 年货节."""
    windows = []
    for year in range(as_of.year - 3, as_of.year + 1):
        windows += [(dt.datetime(year, 6, 1), dt.datetime(year, 6, 19)),
                    (dt.datetime(year, 10, 31), dt.datetime(year, 11, 12)),
                    (dt.datetime(year, 12, 12), dt.datetime(year, 12, 13)),
                    (dt.datetime(year, 1, 10), dt.datetime(year, 1, 25))]
    return [(a, b) for a, b in windows if a < as_of]


def _openid(rng: random.Random) -> str:
    # Official-account openids: 28 characters, "o" then URL-safe base64.
    return "o" + base64.urlsafe_b64encode(rng.getrandbits(168).to_bytes(21, "big")).decode()[:27]


def _between(rng: random.Random, start: dt.datetime, end: dt.datetime) -> dt.datetime:
    span = max(0, int((end - start).total_seconds()))
    return start + dt.timedelta(seconds=rng.randint(0, span))


def generate_population(n: int = DEFAULT_FOLLOWERS, seed: int = DEFAULT_SEED,
                        as_of: Optional[dt.datetime] = None) -> Iterator[FollowerRows]:
    """``n`` followers (with their orders and events) as of ``as_of`` (naive,
    project time zone; default: today 12:00). Deterministic in (n, seed, as_of).

    A few rows are deliberately awkward, as in real data: orders and events
    after ``as_of`` (clock skew), and orders without a time.
    """
    as_of = (as_of or dt.datetime.now().replace(hour=12, minute=0, second=0, microsecond=0)).replace(microsecond=0)
    rng = random.Random(seed)
    promos = _promotion_windows(as_of)
    day = dt.timedelta(days=1)
    seen: set[str] = set()
    for _ in range(n):
        openid = _openid(rng)
        while openid in seen:
            openid = _openid(rng)
        seen.add(openid)

        # Subscribed some time in the last three years, more of them recently.
        age_days = min(3 * 365, int(rng.expovariate(1 / 380)))
        subscribe_time = as_of - age_days * day - dt.timedelta(seconds=rng.randint(0, 86399))
        if subscribe_time > as_of:
            subscribe_time = as_of - dt.timedelta(hours=1)
        scene = _SCENES(rng)
        qr = _QR_CHANNELS(rng) if scene == "ADD_SCENE_QR_CODE" else None
        province, city = _PLACES(rng)
        age = None if rng.random() < 0.28 else max(14, min(75, int(rng.gauss(33, 10))))
        subscribed = rng.random() > 0.07

        # Last activity: a quarter within a week, many within three months,
        # the rest spread over two years; never before subscribing.
        r = rng.random()
        if r < 0.25:
            quiet = rng.uniform(0, 7)
        elif r < 0.45:
            quiet = rng.uniform(7, 30)
        elif r < 0.65:
            quiet = rng.uniform(30, 90)
        elif r < 0.97:
            quiet = rng.uniform(90, 730)
        else:
            quiet = None  # never recorded
        last_active = None
        if quiet is not None:
            last_active = max(subscribe_time, as_of - dt.timedelta(days=quiet))
            last_active = last_active.replace(microsecond=0)

        follower = {
            "openid": openid,
            "unionid": _openid(rng) if rng.random() < 0.6 else None,
            "subscribe_time": subscribe_time if rng.random() > 0.01 else None,
            "subscribe_scene": scene, "qr_scene_str": qr, "language": _LANGUAGES(rng), "remark": _REMARKS(rng),
            "city": city, "province": province, "gender": _GENDERS(rng), "age": age,
            "last_active_at": last_active, "subscribed": subscribed,
        }
        rows = FollowerRows(follower)

        # Orders: most followers have none, a few have many.
        r = rng.random()
        if r < 0.55:
            n_orders = 0
        elif r < 0.77:
            n_orders = 1
        elif r < 0.89:
            n_orders = rng.randint(2, 3)
        elif r < 0.98:
            n_orders = rng.randint(4, 10)
        else:
            n_orders = rng.randint(11, 40)
        favourite = _CATEGORIES(rng)
        promo_lover = rng.random() < 0.25
        end = last_active or as_of
        for _ in range(n_orders):
            category = favourite if rng.random() < 0.6 else _CATEGORIES(rng)
            if promo_lover and promos and rng.random() < 0.8:
                start, stop = rng.choice(promos)
                created = _between(rng, max(start, subscribe_time), min(stop, as_of))
                in_promo = True
            else:
                created = _between(rng, subscribe_time, end)
                in_promo = any(a <= created < b for a, b in promos)
            promo = in_promo and rng.random() < 0.85
            mean = _MEAN_PRICE[category]
            amount = Decimal(max(1, round(rng.lognormvariate(0, 0.55) * mean * 100))) / 100
            if promo:
                amount = (amount * Decimal("0.8")).quantize(Decimal("0.01"))
            rows.orders.append({"openid": openid, "amount": amount, "category": category,
                                "created_at": created, "promo": promo})
        if n_orders and rng.random() < 0.01:  # clock skew: an order "from the future"
            rows.orders.append({"openid": openid, "amount": Decimal("99.00"), "category": favourite,
                                "created_at": as_of + dt.timedelta(hours=rng.randint(1, 48)), "promo": False})
        if n_orders and rng.random() < 0.005:  # imported without a time
            rows.orders.append({"openid": openid, "amount": Decimal("19.90"), "category": favourite,
                                "created_at": None, "promo": False})

        # Events: the subscribe itself, then interactions up to the last activity.
        rows.events.append({"openid": openid, "type": "subscribe", "key": qr and f"qrscene_{qr}",
                            "occurred_at": subscribe_time})
        n_events = int(rng.paretovariate(1.3)) - 1 if last_active else 0
        n_events = min(n_events, 120)
        for i in range(n_events):
            kind = _EVENT_TYPES(rng)
            key = {"menu_click": _MENU_KEYS, "text": _TEXTS}.get(kind)
            key = key(rng) if key else (qr or "poster_618") if kind == "scan" else None
            when = last_active if i == 0 else _between(rng, max(subscribe_time, last_active - 120 * day),
                                                       last_active)
            rows.events.append({"openid": openid, "type": kind, "key": key, "occurred_at": when})
        if not subscribed:
            rows.events.append({"openid": openid, "type": "unsubscribe", "key": None,
                                "occurred_at": _between(rng, last_active or subscribe_time, as_of)})
        yield rows


def _sqlite_value(value):
    """What a typical app writes into SQLite: text timestamps without
    fractions, REAL amounts, 0/1 booleans."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bool):
        return int(value)
    return value


def load_population(engine: sa.Engine, population: Iterable[FollowerRows], config: Config | None = None,
                    chunk_size: int = 5000) -> LoadCounts:
    """Insert ``population`` into the default store layout (followers, orders,
    events), in chunks with executemany; on SQLite in one transaction with
    timestamps as 'YYYY-MM-DD HH:MM:SS' text."""
    tables = build_tables(config or Config())
    started = time.perf_counter()
    counts = LoadCounts()
    sqlite = engine.dialect.name == "sqlite"
    statements = {}
    for name, table, columns in (("followers", tables.followers, FOLLOWER_COLUMNS),
                                 ("orders", tables.sources["orders"], ORDER_COLUMNS),
                                 ("events", tables.sources["events"], EVENT_COLUMNS)):
        quoted = ", ".join(engine.dialect.identifier_preparer.quote(c) for c in columns)
        statements[name] = (f"INSERT INTO {engine.dialect.identifier_preparer.quote(table.name)} ({quoted}) "
                            f"VALUES ({', '.join('?' for _ in columns)})", columns, table)
    buffers: dict[str, list] = {"followers": [], "orders": [], "events": []}

    def flush(conn) -> None:
        for name, rows in buffers.items():
            if not rows:
                continue
            sql, columns, table = statements[name]
            if sqlite:
                conn.exec_driver_sql(sql, [tuple(_sqlite_value(r[c]) for c in columns) for r in rows])
            else:
                conn.execute(sa.insert(table), rows)
            setattr(counts, name, getattr(counts, name) + len(rows))
            rows.clear()

    with store.db_errors(engine.url, "loading the demo population"), engine.begin() as conn:
        for item in population:
            buffers["followers"].append(item.follower)
            buffers["orders"].extend(item.orders)
            buffers["events"].extend(item.events)
            if len(buffers["followers"]) >= chunk_size:
                flush(conn)
        flush(conn)
    counts.seconds = time.perf_counter() - started
    return counts


# -- a new project (`tagdsl init`) ----------------------------------------------------------------

# Every line that starts with "# " is a setting at its default (uncomment to
# change it); lines starting with "## " explain.
STARTER_CONFIG = """\
## tagdsl project configuration. Every setting is shown at its default and
## commented out: uncomment a line (remove "# ") to change it.

# [project]
# rulesets = ["rulesets"]        ## files or directories of .tag files, relative to this file
# timezone = "Asia/Shanghai"     ## datetimes in the store are wall-clock times in this zone
# platform = "wechat_mp"         ## wechat_mp | wecom | none: sets the limits below
# sensitive_words = ["未成年", "健康", "疾病", "宗教", "民族", "政治", "收入", "身份证"]

# [database]
# url = "sqlite:///tagdsl.db"    ## or postgresql+psycopg://user@host/db, mysql+pymysql://user@host/db
# table_prefix = "tagdsl_"       ## the engine's own tables: tagdsl_memberships, tagdsl_runs, ...

## The follower table: one row per follower. A field maps to a column of the
## same name unless it says otherwise: city = { type = "string", column = "city_name" }.
## Types: string integer decimal float boolean date datetime.
# [followers]
# table = "followers"
# id = "openid"

# [followers.fields]
# unionid = "string"
# subscribe_time = "datetime"
# subscribe_scene = "string"
# qr_scene_str = "string"
# language = "string"
# remark = "string"
# city = "string"
# province = "string"
# gender = "integer"
# age = "integer"
# last_active_at = "datetime"
# subscribed = "boolean"

## Event sources: tables with one row per event of a follower, used by
## count(), sum(), exists(), last()... `time` is the column `within` uses.
# [sources.orders]
# table = "orders"
# follower = "openid"
# time = "created_at"

# [sources.orders.fields]
# amount = { type = "decimal", scale = 2 }
# category = "string"
# promo = "boolean"

# [sources.events]
# table = "events"
# follower = "openid"
# time = "occurred_at"

# [sources.events.fields]
# type = "string"
# key = "string"

## Overrides of the platform's limits (wechat_mp: 100 tags, 20 per follower,
## names up to 30 bytes).
# [limits]
# max_tags = 100
# max_tags_per_follower = 20
# name_max_bytes = 30
## name_max_chars = 30            ## a limit in characters instead of bytes (wecom's profile)
# name_recommended_chars = 8      ## longer names are a warning (TD407)
# max_depth = 3                   ## group plus "-" separated segments (TD408)
# reserved_names = ["星标组"]

## Sync with an official account (secrets come from environment variables).
# [wechat_mp]
# appid = "wx0123456789abcdef"     ## or appid_env = "WECHAT_APPID"
# secret_env = "WECHAT_APP_SECRET"
# api_base_url = "https://api.example.test"   ## a proxy in front of the API (default: WeChat's)
# token_env = "WECHAT_TOKEN"
# aes_key_env = "WECHAT_AES_KEY"
# events_source = "events"

## Sync with WeCom customer tags.
# [wecom]
# corpid = "ww0123456789abcdef"    ## or corpid_env = "WECOM_CORPID"
# secret_env = "WECOM_SECRET"
# api_base_url = "https://qyapi.example.test"  ## a proxy in front of the API (default: WeCom's)
# userid = "zhangsan"              ## the follow user whose external contacts are tagged, when fixed
# default_group = "tagdsl"         ## the corp tag group of tags declared outside any group
"""


@dataclass
class InitResult:
    directory: Path
    config: Path
    rulesets: list[Path]
    database: Path


def init_project(directory: str | Path = ".", force: bool = False) -> InitResult:
    """A new project in ``directory``: a starter tagdsl.toml, the shipped
    rulesets under rulesets/, and the default store (SQLite tagdsl.db).
    Refuses to overwrite an existing tagdsl.toml unless ``force``; an existing
    database keeps its data (missing tables are created)."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if config_path.exists() and not force:
        raise store.StoreError(f"{config_path} already exists; use --force to overwrite it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        config_path.write_text(STARTER_CONFIG, encoding="utf-8")
        rulesets = copy_shipped_rulesets(directory / "rulesets", overwrite=force)
    except OSError as exc:
        raise store.StoreError(f"cannot write {exc.filename or directory}: {exc.strerror}") from None
    config = load_config(config_path)
    database = directory / DB_NAME
    db = store.connect(f"sqlite:///{database.resolve()}", create=True)
    try:
        store.create_store(db, config)
    finally:
        db.dispose()
    return InitResult(directory, config_path, rulesets, database)


# -- the demo ------------------------------------------------------------------------------------

@dataclass
class DemoResult:
    directory: Path
    database: Path
    loaded: LoadCounts
    apply: object  # ApplyResult
    preview: object  # PreviewResult
    preview_label: str
    as_of: dt.datetime


def copy_shipped_rulesets(target: Path, overwrite: bool) -> list[Path]:
    """Copy the shipped rulesets (rules, their tests, notes) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(shipped_rulesets_dir().iterdir()):
        if source.is_file() and source.suffix in (".tag", ".tagtest", ".md"):
            dest = target / source.name
            if overwrite or not dest.exists():
                shutil.copyfile(source, dest)
                written.append(dest)
    return written


def run_demo(directory: str | Path = "tagdsl-demo", followers: int = DEFAULT_FOLLOWERS, seed: int = DEFAULT_SEED,
             as_of: Optional[dt.datetime] = None, progress=None, on_loaded=None) -> DemoResult:
    """Create ``directory`` with a starter tagdsl.toml, the shipped rulesets and
    a fresh SQLite store holding a synthetic population; apply the shipped
    rulesets and preview one audience."""
    from .engine import Engine, resolve_as_of

    if followers < 1:
        raise store.StoreError("--followers must be at least 1")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / CONFIG_NAME
    if not config_path.exists():
        config_path.write_text(STARTER_CONFIG, encoding="utf-8")
    copy_shipped_rulesets(directory / "rulesets", overwrite=True)
    config = load_config(config_path)
    database = directory / DB_NAME
    for suffix in ("", "-journal", "-wal", "-shm"):  # a fresh database on every run
        Path(str(database) + suffix).unlink(missing_ok=True)
    url = f"sqlite:///{database.resolve()}"
    as_of = resolve_as_of(as_of, config.tz).replace(microsecond=0)

    db = store.connect(url, create=True)
    try:
        store.create_store(db, config)
        loaded = load_population(db, generate_population(followers, seed, as_of), config)
    finally:
        db.dispose()
    if on_loaded is not None:
        on_loaded(loaded)
    rulesets = shipped_rulesets_dir()
    with Engine(config, url) as engine:
        ruleset = engine.load_ruleset(rulesets)
        applied = engine.apply(ruleset, as_of=as_of, progress=progress)
        if ruleset.audiences:
            label = next(iter(ruleset.audiences))
            preview = engine.preview(label, as_of=as_of, sample=5, by="city", ruleset=ruleset)
        else:
            first = next(iter(ruleset.computed)).name
            label = f'tag("{first}")'
            preview = engine.preview(label, as_of=as_of, sample=5, by="city", ruleset=rulesets)
    return DemoResult(directory, database, loaded, applied, preview, label, as_of)
