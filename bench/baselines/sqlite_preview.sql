-- Hand-written COUNT for the preview audience
--   gender == 2 and tag("沉睡唤醒") and count(orders within 365d) >= 2
-- (SQLite; parameters as in sqlite.sql). Returns (total, count).
WITH o AS (
  SELECT openid, MAX(created_at > :d90) AS any90, SUM(created_at > :d365) AS n365
  FROM orders WHERE created_at IS NOT NULL AND created_at <= :as_of GROUP BY openid
), e AS (
  SELECT DISTINCT openid FROM events
  WHERE occurred_at > :d90 AND occurred_at <= :as_of AND type <> 'unsubscribe'
)
SELECT COUNT(*) AS total,
       SUM(p.gender = 2 AND COALESCE(p.last_active_at > :d90, 0) = 0 AND e.openid IS NULL
           AND COALESCE(o.any90, 0) = 0 AND COALESCE(o.n365, 0) >= 2) AS count
FROM followers p LEFT JOIN o ON o.openid = p.openid LEFT JOIN e ON e.openid = p.openid;
