-- The per-card rollups take one row per usage record, summed as their
-- parts merge, instead of one row per key and insert block. With millions
-- of cards a block holds about one record per card and day, so grouping it
-- on insert saved few rows and cost ClickHouse a third of its CPU per usage
-- row (measured on 18.16, 1M cards, 200,000-row blocks: 3.83 -> 2.62 us).
-- Readers already sum with GROUP BY, so every answer stays the same.
--
-- An insert by another sink between a DROP and its CREATE would miss the
-- rollup: upgrade by starting one sink first (or run `cardmeter rebuild`).
DROP TABLE IF EXISTS usage_daily_card_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_card_mv TO usage_daily_card AS
SELECT toDate(start_time, 'Asia/Shanghai') AS day, iccid, account_id, plan_id,
       bytes_up, bytes_down, toUInt64(1) AS records
FROM usage_records;

DROP TABLE IF EXISTS usage_cycle_card_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_cycle_card_mv TO usage_cycle_card AS
SELECT cycle_start, iccid, account_id, plan_id, bytes_up + bytes_down AS bytes, toUInt64(1) AS records
FROM usage_records;
