-- Overage revenue per plan per month (Asia/Shanghai), in fen: overage
-- charges of cards without the automatic stop, and their adjustments for
-- late records.
-- Parameters: 1 from (DateTime), 2 to (DateTime).
SELECT
    toStartOfMonth(toDate(time, 'Asia/Shanghai')) AS month,
    plan_id,
    sum(amount_fen) AS overage_fen,
    count() AS charges
FROM charges
WHERE reason IN ('overage', 'overage_adjustment') AND time >= ? AND time < ?
GROUP BY month, plan_id
ORDER BY month, plan_id
