-- Cards that used 80% or more of their quota in a billing cycle, with the
-- quota from their latest event (plans change over time).
-- Parameters: 1 the cycle's start (DateTime).
SELECT iccid, account_id, plan_id, used_bytes, quota, round(100 * used_bytes / quota, 1) AS pct
FROM
(
SELECT iccid, account_id, plan_id, used_bytes, quota
FROM
(
    SELECT iccid, any(account_id) AS account_id, any(plan_id) AS plan_id, sum(bytes) AS used_bytes
    FROM usage_cycle_card
    WHERE cycle_start = ?
    GROUP BY iccid
) AS u
ANY INNER JOIN
(
    SELECT iccid, argMax(quota_bytes, src_seq * 1000000 + idx) AS quota
    FROM card_events
    WHERE iccid != '' AND quota_bytes > 0
    GROUP BY iccid
) AS q USING iccid
)
WHERE used_bytes * 100 >= quota * 80
ORDER BY pct DESC, iccid
