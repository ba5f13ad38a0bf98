-- Hand-written baseline, PostgreSQL: the (openid, tag) set of
-- bench/reference.tag as of :as_of, written to bench_hand_tags. One pass over
-- orders and one over events (GROUP BY openid with FILTER), joined to
-- followers into a materialised per-follower row of flags, then one
-- UNION ALL branch per tag.
--
-- Parameters (timestamp without time zone): :as_of and the window starts
-- :d7 :d30 :d61 :d90 :d365 (= as_of minus that many days). NUMERIC is exact.
-- Rows after :as_of or without a time are not seen.

CREATE TABLE IF NOT EXISTS bench_hand_tags (openid VARCHAR(64) NOT NULL, tag VARCHAR(64) NOT NULL);
TRUNCATE bench_hand_tags;
INSERT INTO bench_hand_tags (openid, tag)
WITH o AS (
  SELECT openid,
         COUNT(*) AS n_all,
         MAX(created_at) AS last_at,
         COUNT(*) FILTER (WHERE created_at > :d365) AS n365,
         COALESCE(SUM(amount) FILTER (WHERE created_at > :d365), 0) AS spend365,
         COUNT(*) FILTER (WHERE created_at > :d365 AND promo) AS promo365,
         bool_or(created_at > :d90) AS any90,
         bool_or(created_at > :d90 AND category = '护肤') AS skin90,
         bool_or(created_at > :d90 AND category = '母婴') AS baby90,
         bool_or(created_at > :d90 AND category = '食品') AS food90
  FROM orders
  WHERE created_at IS NOT NULL AND created_at <= :as_of
  GROUP BY openid
), e AS (
  SELECT openid,
         bool_or(occurred_at > :d90 AND type <> 'unsubscribe') AS active90,
         bool_or(occurred_at > :d30 AND type = 'trial') AS trial30,
         bool_or(occurred_at > :d30 AND type = 'menu_click' AND "key" = '会员中心') AS member30,
         bool_or(occurred_at > :d30 AND type = 'menu_click' AND "key" = '领优惠券') AS coupon30
  FROM events
  WHERE occurred_at IS NOT NULL AND occurred_at <= :as_of
  GROUP BY openid
), f AS MATERIALIZED (
  SELECT p.openid,
         NOT COALESCE(p.last_active_at > :d90, false) AND NOT COALESCE(e.active90, false)
           AND NOT COALESCE(o.any90, false) AS dormant,
         COALESCE(p.subscribe_time > :d7, false) AS new7,
         CASE WHEN p.city = '北京' THEN '地域-北京' WHEN p.city = '上海' THEN '地域-上海'
              WHEN p.city = '广州' THEN '地域-广州' WHEN p.city = '深圳' THEN '地域-深圳'
              WHEN p.city IN ('杭州', '成都', '武汉', '南京', '苏州', '西安', '重庆') THEN '地域-新一线'
              WHEN p.city <> '' THEN '地域-其他' END AS region,
         COALESCE(o.spend365 >= 2000 AND o.n365 >= 3, false) AS vip,
         COALESCE(e.trial30, false) AND o.openid IS NULL AS intent,
         COALESCE(o.skin90, false) AS skin, COALESCE(o.baby90, false) AS baby, COALESCE(o.food90, false) AS food,
         COALESCE(o.n365 >= 3 AND o.promo365::float8 / o.n365 >= 0.6, false) AS promo,
         COALESCE(o.last_at > :d61 AND o.last_at <= :d30, false) AS churn,
         CASE WHEN o.openid IS NULL AND p.subscribe_time > :d30 THEN '新客'
              WHEN o.n_all = 1 THEN '首单客' WHEN o.n_all >= 2 THEN '老客'
              WHEN o.openid IS NULL THEN '潜在客' END AS lifecycle,
         COALESCE(e.member30, false) AS member, COALESCE(e.coupon30, false) AS coupon,
         CASE WHEN p.age BETWEEN 18 AND 24 THEN '年龄-18至24' WHEN p.age BETWEEN 25 AND 34 THEN '年龄-25至34'
              WHEN p.age >= 35 THEN '年龄-35以上' END AS age_band,
         CASE p.gender WHEN 1 THEN '性别-男' WHEN 2 THEN '性别-女' END AS gender_tag
  FROM followers p
  LEFT JOIN o ON o.openid = p.openid
  LEFT JOIN e ON e.openid = p.openid
)
SELECT openid, '沉睡唤醒' FROM f WHERE dormant
UNION ALL SELECT openid, '新关注' FROM f WHERE new7
UNION ALL SELECT openid, region FROM f WHERE region IS NOT NULL
UNION ALL SELECT openid, '高价值' FROM f WHERE vip
UNION ALL SELECT openid, '意向待跟进' FROM f WHERE intent
UNION ALL SELECT openid, '护肤买家' FROM f WHERE skin
UNION ALL SELECT openid, '母婴买家' FROM f WHERE baby
UNION ALL SELECT openid, '食品买家' FROM f WHERE food
UNION ALL SELECT openid, '促销敏感' FROM f WHERE promo
UNION ALL SELECT openid, '预流失' FROM f WHERE churn
UNION ALL SELECT openid, lifecycle FROM f WHERE lifecycle IS NOT NULL
UNION ALL SELECT openid, '点击会员中心' FROM f WHERE member
UNION ALL SELECT openid, '点击领优惠券' FROM f WHERE coupon
UNION ALL SELECT openid, age_band FROM f WHERE age_band IS NOT NULL
UNION ALL SELECT openid, gender_tag FROM f WHERE gender_tag IS NOT NULL;
