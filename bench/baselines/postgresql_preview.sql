-- Hand-written COUNT for the preview audience
--   gender == 2 and tag("沉睡唤醒") and count(orders within 365d) >= 2
-- (PostgreSQL; parameters as in postgresql.sql). Returns (total, count).
WITH o AS (
  SELECT openid, bool_or(created_at > :d90) AS any90, COUNT(*) FILTER (WHERE created_at > :d365) AS n365
  FROM orders WHERE created_at IS NOT NULL AND created_at <= :as_of GROUP BY openid
), e AS (
  SELECT DISTINCT openid FROM events
  WHERE occurred_at > :d90 AND occurred_at <= :as_of AND type <> 'unsubscribe'
)
SELECT COUNT(*) AS total,
       COUNT(*) FILTER (WHERE p.gender = 2 AND NOT COALESCE(p.last_active_at > :d90, false) AND e.openid IS NULL
                        AND NOT COALESCE(o.any90, false) AND COALESCE(o.n365, 0) >= 2) AS count
FROM followers p LEFT JOIN o ON o.openid = p.openid LEFT JOIN e ON e.openid = p.openid;
