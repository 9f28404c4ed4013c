-- Usage the projector counted (after dedupe), one row per record, with the
-- cycle it counts in. (partition, src_seq, idx) is the record's log
-- position: the METER sequence of its chunk and its index there. The sink
-- inserts each position once; a rebuild from the log writes the same rows.
CREATE TABLE IF NOT EXISTS usage_records
(
    partition       UInt16,
    src_seq         UInt64,
    idx             UInt32,
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
ENGINE = ReplacingMergeTree(src_seq)
PARTITION BY toYYYYMM(start_time)
ORDER BY (account_id, iccid, start_time, carrier, record_id);

-- Every event the projector emitted. (partition, src_seq, idx) is the
-- position of the input that caused it and its index among that input's
-- events, as in its id "<partition>-<src_seq>-<idx>".
CREATE TABLE IF NOT EXISTS card_events
(
    partition       UInt16,
    src_seq         UInt64,
    idx             UInt32,
    event_id        String,
    type            String,
    iccid           String,
    account_id      String,
    plan_id         String,
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
    detail          String,   -- refusals: why; charges: the reason; payments: the payment id
    warning         String,
    expected_at     DateTime, -- forecast warnings
    valid_until     DateTime,
    amount_fen      Int64,    -- charges and payments
    balance_fen     Int64,    -- account events: the balance after
    operator        String,   -- manual commands: who asked
    note            String,   -- manual commands: why
    code            String,   -- refused commands: the typed reason
    pool_id         String
)
ENGINE = ReplacingMergeTree(src_seq)
PARTITION BY toYYYYMM(time)
ORDER BY (type, iccid, time, event_id);
