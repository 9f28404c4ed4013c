-- Daily usage rollups, filled by materialized views on usage_records. They
-- sum deduplicated usage only (the projector drops re-sent records and the
-- sink inserts each record once), so a re-sent record never inflates them.
-- A day is a calendar day in Asia/Shanghai. Rows of one key may stand in
-- several parts until merged: always read them with sum() ... GROUP BY.
CREATE TABLE IF NOT EXISTS usage_daily_card
(
    day        Date,
    iccid      String,
    account_id String,
    plan_id    String,
    bytes_up   UInt64,
    bytes_down UInt64,
    records    UInt64
)
ENGINE = SummingMergeTree((bytes_up, bytes_down, records))
PARTITION BY toYYYYMM(day)
ORDER BY (day, iccid, account_id, plan_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_card_mv TO usage_daily_card AS
SELECT toDate(start_time, 'Asia/Shanghai') AS day, iccid, account_id, plan_id,
       sum(bytes_up) AS bytes_up, sum(bytes_down) AS bytes_down, count() AS records
FROM usage_records GROUP BY day, iccid, account_id, plan_id;

CREATE TABLE IF NOT EXISTS usage_daily_account
(
    day        Date,
    account_id String,
    bytes_up   UInt64,
    bytes_down UInt64,
    records    UInt64
)
ENGINE = SummingMergeTree((bytes_up, bytes_down, records))
PARTITION BY toYYYYMM(day)
ORDER BY (day, account_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_account_mv TO usage_daily_account AS
SELECT toDate(start_time, 'Asia/Shanghai') AS day, account_id,
       sum(bytes_up) AS bytes_up, sum(bytes_down) AS bytes_down, count() AS records
FROM usage_records GROUP BY day, account_id;

CREATE TABLE IF NOT EXISTS usage_daily_plan
(
    day        Date,
    plan_id    String,
    bytes_up   UInt64,
    bytes_down UInt64,
    records    UInt64
)
ENGINE = SummingMergeTree((bytes_up, bytes_down, records))
PARTITION BY toYYYYMM(day)
ORDER BY (day, plan_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_plan_mv TO usage_daily_plan AS
SELECT toDate(start_time, 'Asia/Shanghai') AS day, plan_id,
       sum(bytes_up) AS bytes_up, sum(bytes_down) AS bytes_down, count() AS records
FROM usage_records GROUP BY day, plan_id;

CREATE TABLE IF NOT EXISTS usage_daily_carrier
(
    day        Date,
    carrier    String,
    bytes_up   UInt64,
    bytes_down UInt64,
    records    UInt64
)
ENGINE = SummingMergeTree((bytes_up, bytes_down, records))
PARTITION BY toYYYYMM(day)
ORDER BY (day, carrier);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_carrier_mv TO usage_daily_carrier AS
SELECT toDate(start_time, 'Asia/Shanghai') AS day, carrier,
       sum(bytes_up) AS bytes_up, sum(bytes_down) AS bytes_down, count() AS records
FROM usage_records GROUP BY day, carrier;

-- Usage per card per billing cycle (the cycle of the session's start, as
-- the projector counted it; late records land in their closed cycle).
CREATE TABLE IF NOT EXISTS usage_cycle_card
(
    cycle_start DateTime,
    iccid       String,
    account_id  String,
    plan_id     String,
    bytes       UInt64,
    records     UInt64
)
ENGINE = SummingMergeTree((bytes, records))
PARTITION BY toYYYYMM(cycle_start)
ORDER BY (cycle_start, iccid, account_id, plan_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_cycle_card_mv TO usage_cycle_card AS
SELECT cycle_start, iccid, account_id, plan_id, sum(bytes_up + bytes_down) AS bytes, count() AS records
FROM usage_records GROUP BY cycle_start, iccid, account_id, plan_id;
