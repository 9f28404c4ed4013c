-- Usage per day per account for a month (days in Asia/Shanghai).
-- Parameters: 1 the month's first day (Date), 2 the next month's first day (Date).
SELECT
    day,
    account_id,
    sum(bytes_up) AS up_bytes,
    sum(bytes_down) AS down_bytes,
    up_bytes + down_bytes AS total_bytes,
    sum(records) AS record_count
FROM usage_daily_account
WHERE day >= toDate(?) AND day < toDate(?)
GROUP BY day, account_id
ORDER BY day, account_id
