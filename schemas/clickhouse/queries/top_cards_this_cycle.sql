-- The 100 cards that used the most in a billing cycle (late records count
-- in their own cycle, as the projector counts them).
-- Parameters: 1 the cycle's start (DateTime), e.g. the 1st of this month at
-- 00:00 Asia/Shanghai for plans anchored on the 1st.
SELECT
    iccid,
    any(account_id) AS account_id,
    any(plan_id) AS plan_id,
    sum(bytes) AS bytes,
    sum(records) AS records
FROM usage_cycle_card
WHERE cycle_start = ?
GROUP BY iccid
ORDER BY bytes DESC, iccid
LIMIT 100
