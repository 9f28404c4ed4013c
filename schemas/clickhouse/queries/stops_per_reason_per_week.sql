-- Stops per reason per week (weeks from Monday, Asia/Shanghai), and the
-- mean time to resume: from each stop to the event that cleared that reason
-- (resumed, or stop_cleared when other reasons remained). Stops not yet
-- cleared count in stops, not in the mean.
-- Parameters: 1 from (DateTime), 2 to (DateTime), on the stop's time.
SELECT
    toMonday(toDate(toDateTime(stop_time), 'Asia/Shanghai')) AS week,
    reason,
    count() AS stops,
    countIf(cleared_time > 0) AS cleared,
    avgIf(cleared_time - stop_time, cleared_time > 0) AS mean_seconds_to_resume
FROM
(
    SELECT
        reason,
        evs[i].1 AS stop_time,
        if(i < length(evs), evs[i + 1].1, 0) AS cleared_time
    FROM
    (
        -- each card's stops and clears of one reason, in log order
        SELECT iccid, reason,
               arraySort(x -> (x.3, x.4), groupArray((toUInt32(time), type = 'cardmeter.card.stopped.v1', src_seq, idx))) AS evs
        FROM card_events
        WHERE type IN ('cardmeter.card.stopped.v1', 'cardmeter.card.resumed.v1', 'cardmeter.card.stop_cleared.v1')
          AND reason != ''
        GROUP BY iccid, reason
    )
    ARRAY JOIN arrayEnumerate(evs) AS i
    WHERE evs[i].2 = 1
)
WHERE stop_time >= toUInt32(toDateTime(?)) AND stop_time < toUInt32(toDateTime(?))
GROUP BY week, reason
ORDER BY week, reason
