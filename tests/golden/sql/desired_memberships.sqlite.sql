WITH agg_orders AS 
(SELECT orders.openid AS fid, count(*) AS n0, sum(CASE WHEN (julianday(orders.created_at) > julianday('2024-03-03 12:00:00.000000')) THEN CAST(ROUND((orders.amount) * 100) AS INTEGER) END) AS sum1 
FROM orders 
WHERE julianday(orders.created_at) <= julianday('2024-06-01 12:00:00.000000') GROUP BY orders.openid), 
agg_events AS 
(SELECT events.openid AS fid, max(CASE WHEN (events.type COLLATE BINARY = 'CLICK') THEN julianday(events.occurred_at) END) AS tmax0, count(CASE WHEN (julianday(events.occurred_at) > julianday('2024-05-02 12:00:00.000000')) THEN 1 END) AS n2 
FROM events 
WHERE julianday(events.occurred_at) <= julianday('2024-06-01 12:00:00.000000') GROUP BY events.openid), 
last_events AS 
(SELECT agg_events.fid AS fid, max(agg_events.tmax0) AS tmax0, max(agg_events.n2) AS n2, max(CASE WHEN (events.type COLLATE BINARY = 'CLICK' AND julianday(events.occurred_at) = agg_events.tmax0) THEN events."key" END COLLATE BINARY) AS last1 
FROM agg_events LEFT OUTER JOIN events ON events.openid = agg_events.fid AND julianday(events.occurred_at) = agg_events.tmax0 GROUP BY agg_events.fid), 
flags AS MATERIALIZED 
(SELECT followers.openid AS openid, CASE WHEN (coalesce(agg_orders.sum1, 0) >= 500000 AND followers.city IS NOT NULL AND (followers.city COLLATE BINARY NOT IN ('北京', '上海'))) THEN 1 ELSE 0 END + CASE WHEN (julianday(followers.last_active_at) <= julianday('2024-05-02 12:00:00.000000') AND coalesce(last_events.n2, 0) <= 0) THEN 8 ELSE 0 END + CASE WHEN (last_events.last1 COLLATE BINARY = 'menu_1') THEN 16 ELSE 0 END + CASE WHEN (coalesce(agg_orders.n0, 0) = 1) THEN 2 WHEN (coalesce(agg_orders.n0, 0) >= 2) THEN 4 ELSE 0 END AS m0 
FROM followers LEFT OUTER JOIN agg_orders ON agg_orders.fid = followers.openid LEFT OUTER JOIN last_events ON last_events.fid = followers.openid )
 SELECT flags.openid, tag_list.tag, tag_list.priority 
FROM flags JOIN (SELECT 0 AS word, 1 AS bit, '高价值' AS tag, 5 AS priority UNION ALL SELECT 0 AS word, 2 AS bit, '新客' AS tag, 0 AS priority UNION ALL SELECT 0 AS word, 4 AS bit, '老客' AS tag, 0 AS priority UNION ALL SELECT 0 AS word, 8 AS bit, '沉睡' AS tag, 0 AS priority UNION ALL SELECT 0 AS word, 16 AS bit, '点菜单' AS tag, 0 AS priority) AS tag_list ON (flags.m0 & tag_list.bit) != 0;
