-- ClickHouse ingests the Kafka topics itself: no Python process on the event path at scale.
-- Run after analytics/store/clickhouse_schema.sql, in the analytics database (init.sh does both).
-- Each Kafka record is one EventBatch (proto/events.proto, keyed by user id); ClickHouse decodes it with the
-- ProtobufSingle format from the .proto files under format_schema_path (mounted as proto/*.proto).
-- The materialised views only append raw events; deduplication by event id and first-exposure attribution
-- happen when the compiled report queries read (analytics/sql_compiler.py), as in the embedded store.

CREATE TABLE IF NOT EXISTS kafka_events
(
    events Array(Tuple(
        exposure Tuple(
            event_id String,
            schema_version Int32,
            user_id String,
            experiment_key String,
            variant_key String,
            event_time_ms Int64),
        outcome Tuple(
            event_id String,
            schema_version Int32,
            user_id String,
            metric String,
            event_time_ms Int64,
            value Float64)))
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka:9092',
    kafka_topic_list = 'mtrank.exposures,mtrank.outcomes',
    kafka_group_name = 'mtrank-clickhouse',
    kafka_format = 'ProtobufSingle',
    kafka_schema = 'proto/events.proto:EventBatch',
    kafka_num_consumers = 1,
    kafka_handle_error_mode = 'stream';

-- Events of a schema version this code does not know, or without a user or event id, are skipped (as the Python
-- consumer skips them); undecodable records are left out ('stream' error mode: their _error is set).
CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_exposures_mv TO exposures AS
SELECT
    e.exposure.event_id AS event_id,
    e.exposure.experiment_key AS experiment,
    e.exposure.variant_key AS variant,
    e.exposure.user_id AS user_id,
    e.exposure.event_time_ms AS ts
FROM kafka_events
ARRAY JOIN events AS e
WHERE _error = '' AND e.exposure.schema_version = 1 AND e.exposure.event_id != '' AND e.exposure.user_id != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_outcomes_mv TO outcomes AS
SELECT
    e.outcome.event_id AS event_id,
    e.outcome.user_id AS user_id,
    e.outcome.metric AS metric,
    e.outcome.event_time_ms AS ts,
    e.outcome.value AS value
FROM kafka_events
ARRAY JOIN events AS e
WHERE _error = '' AND e.outcome.schema_version = 1 AND e.outcome.event_id != '' AND e.outcome.user_id != '';
