-- How late each carrier's records arrive, per day (of arrival, Asia/Shanghai):
-- p50/p95/p99 of the delay from a session's end to its arrival, in seconds.
-- Parameters: 1 from (DateTime), 2 to (DateTime), on the arrival time.
SELECT
    toDate(received_at, 'Asia/Shanghai') AS day,
    carrier,
    count() AS records,
    quantileExact(0.5)(arrival_delay_s) AS p50_s,
    quantileExact(0.95)(arrival_delay_s) AS p95_s,
    quantileExact(0.99)(arrival_delay_s) AS p99_s
FROM usage_records
WHERE received_at >= ? AND received_at < ?
GROUP BY day, carrier
ORDER BY day, carrier
