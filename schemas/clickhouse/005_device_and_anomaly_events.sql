-- Device binding (机卡绑定) and usage anomalies. imei, bound_imei and
-- previous_imei: the devices a card.imei_changed.v1 or card.rebound.v1
-- names, each the first 14 digits of an IMEI ('' for other events).
-- day_bytes and median_bytes: a card.usage_anomaly.v1's day so far and
-- the median of the 7 days before it (its day is in detail, YYYY-MM-DD).
-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: the sink adds a column
-- only where it is missing, so a migration cut short runs again.
ALTER TABLE card_events ADD COLUMN imei String DEFAULT '' AFTER pool_id;

ALTER TABLE card_events ADD COLUMN bound_imei String DEFAULT '' AFTER imei;

ALTER TABLE card_events ADD COLUMN previous_imei String DEFAULT '' AFTER bound_imei;

ALTER TABLE card_events ADD COLUMN day_bytes UInt64 DEFAULT 0 AFTER previous_imei;

ALTER TABLE card_events ADD COLUMN median_bytes UInt64 DEFAULT 0 AFTER day_bytes;
