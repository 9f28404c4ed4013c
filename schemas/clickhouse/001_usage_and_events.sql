-- Usage the projector counted (after dedupe), one row per record, with the
-- cycle it counts in. The ORDER BY key holds the record's identity, so a row
-- inserted twice collapses on merge (ReplacingMergeTree) and FINAL reads it once.
CREATE TABLE IF NOT EXISTS usage_records
(
    stream_seq      UInt64,   -- METER position of the input chunk
    idx             UInt32,   -- the record's index in its chunk
    partition       UInt16,
    carrier         String,
    record_id       String,
    iccid           String,
    account_id      String,
    plan_id         String,
    start_time      DateTime,
    end_time        DateTime,
    bytes_up        UInt64,
    bytes_down      UInt64,
    sequence        UInt32,
    session_id      String,
    apn             String,
    rat             String,
    imei            String,
    cell_id         String,
    cycle_start     DateTime,
    late            UInt8,
    received_at     DateTime,
    arrival_delay_s Int64
)
ENGINE = ReplacingMergeTree(stream_seq)
PARTITION BY toYYYYMM(start_time)
ORDER BY (account_id, iccid, start_time, carrier, record_id);

-- Every event the projector emitted, keyed by its deterministic id.
CREATE TABLE IF NOT EXISTS card_events
(
    event_id        String,
    stream_seq      UInt64,   -- EVENTS position
    type            String,
    iccid           String,
    account_id      String,
    time            DateTime,
    reason          String,
    stop_reasons    Array(String),
    status          String,
    cause           String,
    usage_bytes     UInt64,
    quota_bytes     UInt64,
    overshoot_bytes UInt64,
    cycle_start     DateTime,
    cycle_end       DateTime,
    record_bytes    UInt64,
    detail          String,   -- refusals: why; charges: the reason
    warning         String,
    amount_fen      Int64,    -- charges and payments
    balance_fen     Int64,    -- account events: the balance after
    operator        String,   -- manual commands: who asked
    note            String,   -- manual commands: why
    code            String,   -- refused commands: the typed reason
    pool_id         String
)
ENGINE = ReplacingMergeTree(stream_seq)
PARTITION BY toYYYYMM(time)
ORDER BY (type, iccid, time, event_id);
