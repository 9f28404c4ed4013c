-- Charges and payments, split out of card_events by materialized views.
CREATE TABLE IF NOT EXISTS charges
(
    time       DateTime,
    account_id String,
    iccid      String,
    plan_id    String,
    reason     String,   -- monthly_fee, overage, overage_adjustment, keep_number_fee, or billing's own
    amount_fen Int64,
    event_id   String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (account_id, time, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS charges_mv TO charges AS
SELECT time, account_id, iccid, plan_id, detail AS reason, amount_fen, event_id
FROM card_events WHERE type = 'cardmeter.account.charged.v1';

CREATE TABLE IF NOT EXISTS payments
(
    time       DateTime,
    account_id String,
    payment_id String,
    amount_fen Int64,
    event_id   String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (account_id, time, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS payments_mv TO payments AS
SELECT time, account_id, detail AS payment_id, amount_fen, event_id
FROM card_events WHERE type = 'cardmeter.account.payment_received.v1';
