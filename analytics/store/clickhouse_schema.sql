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

-- The lists of each interleaved exposure (schema version 2; the exposure itself is in exposures too): the items
-- shown in order, the team of each (0 = arm A, the experiment's first arm; 1 = arm B), and both arms.
CREATE TABLE IF NOT EXISTS interleaved
(
    event_id String,
    experiment LowCardinality(String),
    user_id String,
    request_id String,
    ts Int64,
    item_ids Array(Int64),
    teams Array(UInt8),
    arm_a_key LowCardinality(String),
    arm_a_model LowCardinality(String),
    arm_a_version LowCardinality(String),
    arm_b_key LowCardinality(String),
    arm_b_model LowCardinality(String),
    arm_b_version LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY (experiment, user_id, request_id, ts);

-- Outcomes that name the request they follow from and an item (they are in outcomes too): interleaving
-- credits clicks by (user, request, item). An outcome without an item is not one of them (item 0 is an item).
CREATE TABLE IF NOT EXISTS item_outcomes
(
    event_id String,
    user_id String,
    request_id String,
    item_id Int64,
    metric LowCardinality(String),
    ts Int64
)
ENGINE = MergeTree
ORDER BY (metric, user_id, request_id, item_id);

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
