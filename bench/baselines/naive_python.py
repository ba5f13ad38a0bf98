"""Hand-written Python for bench/reference.tag, as a user would write it
without tagdsl: one function over a follower's fields and rows, and a loop
that fetches each follower's rows from the store (one query per follower and
source) and calls it.

``tags_for`` is also the "hand-written Python functions" baseline of the
in-memory scenario (bench/run.py, scenario 5).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

DAY = dt.timedelta(days=1)
NEW_TIER1 = {"杭州", "成都", "武汉", "南京", "苏州", "西安", "重庆"}
BIG4 = {"北京": "地域-北京", "上海": "地域-上海", "广州": "地域-广州", "深圳": "地域-深圳"}


def tags_for(fields: dict, orders: list, events: list, as_of: dt.datetime) -> set[str]:
    d7, d30, d61, d90, d365 = (as_of - n * DAY for n in (7, 30, 61, 90, 365))
    orders = [o for o in orders if o["created_at"] is not None and o["created_at"] <= as_of]
    events = [e for e in events if e["occurred_at"] is not None and e["occurred_at"] <= as_of]
    tags = set()
    last_active, subscribed_at = fields["last_active_at"], fields["subscribe_time"]

    if (not (last_active is not None and last_active > d90)
            and not any(e["occurred_at"] > d90 and e["type"] is not None and e["type"] != "unsubscribe"
                        for e in events)
            and not any(o["created_at"] > d90 for o in orders)):
        tags.add("沉睡唤醒")
    if subscribed_at is not None and subscribed_at > d7:
        tags.add("新关注")
    city = fields["city"]
    if city is not None:
        if city in BIG4:
            tags.add(BIG4[city])
        elif city in NEW_TIER1:
            tags.add("地域-新一线")
        elif city != "":
            tags.add("地域-其他")
    year = [o for o in orders if o["created_at"] > d365]
    spend = sum((o["amount"] for o in year if o["amount"] is not None), Decimal(0))
    if spend >= 2000 and len(year) >= 3:
        tags.add("高价值")
    if not orders and any(e["type"] == "trial" and e["occurred_at"] > d30 for e in events):
        tags.add("意向待跟进")
    recent = {o["category"] for o in orders if o["created_at"] > d90}
    for category, tag in (("护肤", "护肤买家"), ("母婴", "母婴买家"), ("食品", "食品买家")):
        if category in recent:
            tags.add(tag)
    if len(year) >= 3 and sum(1 for o in year if o["promo"]) / len(year) >= 0.6:
        tags.add("促销敏感")
    if orders:
        days = (as_of - max(o["created_at"] for o in orders)) // DAY
        if 30 <= days <= 60:
            tags.add("预流失")
    if not orders:
        tags.add("新客" if subscribed_at is not None and subscribed_at > d30 else "潜在客")
    else:
        tags.add("首单客" if len(orders) == 1 else "老客")
    clicks = {e["key"] for e in events if e["type"] == "menu_click" and e["occurred_at"] > d30}
    if "会员中心" in clicks:
        tags.add("点击会员中心")
    if "领优惠券" in clicks:
        tags.add("点击领优惠券")
    age = fields["age"]
    if age is not None:
        if 18 <= age <= 24:
            tags.add("年龄-18至24")
        elif 25 <= age <= 34:
            tags.add("年龄-25至34")
        elif age >= 35:
            tags.add("年龄-35以上")
    gender = fields["gender"]
    if gender == 1:
        tags.add("性别-男")
    elif gender == 2:
        tags.add("性别-女")
    return tags


def _time(value):
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)  # SQLite: 'YYYY-MM-DD HH:MM:SS' text


def _cents(value):
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(round(value * 100)) / 100  # SQLite: REAL


def run(dbapi_connection, as_of: dt.datetime, paramstyle: str = "qmark") -> set[tuple[str, str]]:
    """Tag every follower, fetching each one's rows (a DB-API connection:
    sqlite3 or psycopg). Returns the (openid, tag) set."""
    ph = "?" if paramstyle == "qmark" else "%s"
    cur = dbapi_connection.cursor()
    cur.execute("SELECT openid, subscribe_time, city, gender, age, last_active_at FROM followers")
    followers = cur.fetchall()
    result = set()
    for openid, subscribe_time, city, gender, age, last_active_at in followers:
        fields = {"subscribe_time": _time(subscribe_time), "city": city, "gender": gender, "age": age,
                  "last_active_at": _time(last_active_at)}
        cur.execute(f"SELECT created_at, amount, category, promo FROM orders WHERE openid = {ph}", (openid,))
        orders = [{"created_at": _time(t), "amount": _cents(a), "category": c, "promo": bool(p)}
                  for t, a, c, p in cur.fetchall()]
        cur.execute(f'SELECT occurred_at, type, "key" FROM events WHERE openid = {ph}', (openid,))
        events = [{"occurred_at": _time(t), "type": ty, "key": k} for t, ty, k in cur.fetchall()]
        for tag in tags_for(fields, orders, events, as_of):
            result.add((openid, tag))
    return result
