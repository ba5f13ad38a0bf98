WITH agg_orders AS 
(SELECT orders.openid AS fid, count(*) AS n0, sum(CASE WHEN (orders.created_at > '2024-03-03 12:00:00') THEN orders.amount END) AS sum1 
FROM orders 
WHERE orders.created_at <= '2024-06-01 12:00:00' GROUP BY orders.openid), 
agg_events AS 
(SELECT events.openid AS fid, max(CASE WHEN (CAST(events.type AS BINARY) = CAST('CLICK' AS BINARY)) THEN events.occurred_at END) AS tmax0, count(CASE WHEN (events.occurred_at > '2024-05-02 12:00:00') THEN 1 END) AS n2 
FROM events 
WHERE events.occurred_at <= '2024-06-01 12:00:00' GROUP BY events.openid), 
last_events AS 
(SELECT agg_events.fid AS fid, max(agg_events.tmax0) AS tmax0, max(agg_events.n2) AS n2, max(CAST(CASE WHEN (CAST(events.type AS BINARY) = CAST('CLICK' AS BINARY) AND events.occurred_at = agg_events.tmax0) THEN events.`key` END AS BINARY)) AS last1 
FROM agg_events LEFT OUTER JOIN events ON events.openid = agg_events.fid AND events.occurred_at = agg_events.tmax0 GROUP BY agg_events.fid), 
flags AS 
(SELECT followers.openid AS openid, CASE WHEN (coalesce(agg_orders.sum1, 0) >= 5000 AND followers.city IS NOT NULL AND (CAST(followers.city AS BINARY) NOT IN (CAST('北京' AS BINARY), CAST('上海' AS BINARY)))) THEN 1 ELSE 0 END + CASE WHEN (followers.last_active_at <= '2024-05-02 12:00:00' AND coalesce(last_events.n2, 0) <= 0) THEN 8 ELSE 0 END + CASE WHEN (CAST(last_events.last1 AS BINARY) = CAST('menu_1' AS BINARY)) THEN 16 ELSE 0 END + CASE WHEN (coalesce(agg_orders.n0, 0) = 1) THEN 2 WHEN (coalesce(agg_orders.n0, 0) >= 2) THEN 4 ELSE 0 END AS m0 
FROM followers LEFT OUTER JOIN agg_orders ON agg_orders.fid = followers.openid LEFT OUTER JOIN last_events ON last_events.fid = followers.openid LIMIT 18446744073709551615 )
 SELECT flags.openid, tag_list.tag, tag_list.priority 
FROM flags INNER JOIN (SELECT 0 AS word, 1 AS bit, '高价值' AS tag, 5 AS priority UNION ALL SELECT 0 AS word, 2 AS bit, '新客' AS tag, 0 AS priority UNION ALL SELECT 0 AS word, 4 AS bit, '老客' AS tag, 0 AS priority UNION ALL SELECT 0 AS word, 8 AS bit, '沉睡' AS tag, 0 AS priority UNION ALL SELECT 0 AS word, 16 AS bit, '点菜单' AS tag, 0 AS priority) AS tag_list ON (flags.m0 & tag_list.bit) != 0;
