-- The event tables of the ClickHouse store: raw, append-only events, deduplicated and attributed when read by the
-- compiled queries of analytics.sql_compiler. Created by analytics.store.clickhouse_store and by
-- deploy/clickhouse/ingest.sql (which adds the Kafka ingestion in front of them).
CREATE TABLE IF NOT EXISTS exposures
(
    event_id String,
    experiment LowCardinality(String),
    variant LowCardinality(String),
    user_id String,
    ts Int64
)
ENGINE = MergeTree
ORDER BY (experiment, user_id, ts);

CREATE TABLE IF NOT EXISTS outcomes
(
    event_id String,
    user_id String,
    metric LowCardinality(String),
    ts Int64,
    value Float64
)
ENGINE = MergeTree
ORDER BY (metric, user_id, ts);

-- Kafka offsets applied by a Python consumer writing here (the Kafka engine keeps its own in its consumer group).
CREATE TABLE IF NOT EXISTS offsets
(
    topic String,
    partition Int32,
    last_offset Int64,
    written_ns Int64
)
ENGINE = ReplacingMergeTree(written_ns)
ORDER BY (topic, partition);
