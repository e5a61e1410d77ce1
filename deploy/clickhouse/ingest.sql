-- ClickHouse ingests the Kafka topics itself: no Python process on the event path at scale.
-- Run after analytics/store/clickhouse_schema.sql, in the analytics database (init.sh does both).
-- Each Kafka record is one EventBatch (proto/events.proto, keyed by user id); ClickHouse decodes it with the
-- ProtobufSingle format from the .proto files under format_schema_path (mounted as proto/*.proto).
-- The materialised views only append raw events; deduplication by event id and first-exposure attribution
-- happen when the compiled report queries read (analytics/sql_compiler.py), as in the embedded store.
-- Outcome.item_id is optional (an outcome may be about no item; item 0 is an item): its column is Nullable,
-- which the Protobuf format sets to NULL when the field is absent and to 0 for item 0 (Int64 reads both 0).
--
-- Applying this file makes the ingestion what it says over any earlier version of it, not only over an
-- empty database: init.sh applies it on every start of the server (CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS),
-- and it drops the Kafka table and the views, then creates them (CREATE ... IF NOT EXISTS kept an install's
-- old views and Kafka columns). A Kafka table consumes only while a materialised view reads it, and commits
-- the consumer group's offsets once the views have written a block; so applying it loses no event and
-- consumes none twice:
-- * the Kafka table is dropped first: consumption stops for every view at once (dropping the views one by
--   one would let the others consume what the dropped ones no longer write); the offsets stay in the group;
-- * one view reads it, kafka_records_mv, created last: it passes each decoded record to the Null table
--   kafka_records, whose four views are already in place, so consumption resumes from the group's offsets
--   with all four writing (views created one by one on the Kafka table would start it with only the first).
-- A failed statement stops the apply (clickhouse client --multiquery) before kafka_records_mv exists, so
-- nothing is consumed: events wait in Kafka (within the topics' retention) until the file applies. Nothing
-- else may read kafka_events, whose table is dropped here: read kafka_records or the event tables.
-- Re-creating is simpler than a recorded schema version or versioned view names, and whatever an install
-- holds the result is this file (tests/deploy applies it over each earlier version); ALTER TABLE ... MODIFY
-- QUERY would change the views in place but not the Kafka table's columns (2026-12-07 added some), and
-- would repeat each SELECT. The event tables (clickhouse_schema.sql) are not touched: they keep their rows.
DROP TABLE IF EXISTS kafka_events;
DROP VIEW IF EXISTS kafka_records_mv;
DROP VIEW IF EXISTS kafka_exposures_mv;
DROP VIEW IF EXISTS kafka_interleaved_mv;
DROP VIEW IF EXISTS kafka_outcomes_mv;
DROP VIEW IF EXISTS kafka_item_outcomes_mv;
DROP TABLE IF EXISTS kafka_records;

CREATE TABLE kafka_events
(
    events Array(Tuple(
        exposure Tuple(
            event_id String,
            schema_version Int32,
            request_id String,
            user_id String,
            experiment_key String,
            variant_key String,
            stage String,
            event_time_ms Int64,
            model Tuple(name String, version String),
            item_ids Array(Int64),
            teams Array(UInt32),
            arms Array(Tuple(key String, model Tuple(name String, version String)))),
        outcome Tuple(
            event_id String,
            schema_version Int32,
            request_id String,
            user_id String,
            experiment_key String,
            variant_key String,
            event_time_ms Int64,
            metric String,
            value Float64,
            item_id Nullable(Int64))))
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

-- The records that decoded ('stream' error mode: an undecodable one has _error set), as kafka_records_mv
-- passes them on; a Null table keeps no rows, its views see each block.
CREATE TABLE kafka_records AS kafka_events ENGINE = Null;

-- An event is read when producers could have sent it: the readers' rule, received_event_problem in
-- analytics/events/messages.py, which the Python consumer applies and these views mirror (tests/deploy
-- checks that both keep the same events). It has an event id, a schema version and an event time (every
-- producer sets them), a user id, and (outcomes) a metric and a finite value; ids (user, request, event)
-- are at most 512 bytes and names (experiment, variant, metric, stage, model name and version, arm keys) at
-- most 256 (proto/limits.py); an exposure of schema version 1 has no teams or arms, one of version 2
-- (interleaving) names its request, two arms and a team 0/1 per item, no item twice. A version 2 exposure
-- goes to exposures as variant "interleaved" and with its lists to interleaved.
CREATE MATERIALIZED VIEW kafka_exposures_mv TO exposures AS
SELECT
    e.exposure.event_id AS event_id,
    e.exposure.experiment_key AS experiment,
    e.exposure.variant_key AS variant,
    e.exposure.user_id AS user_id,
    e.exposure.event_time_ms AS ts
FROM kafka_records
ARRAY JOIN events AS e
WHERE e.exposure.event_id != '' AND e.exposure.user_id != '' AND e.exposure.event_time_ms != 0
    AND length(e.exposure.event_id) <= 512 AND length(e.exposure.user_id) <= 512
    AND length(e.exposure.request_id) <= 512 AND length(e.exposure.experiment_key) <= 256
    AND length(e.exposure.variant_key) <= 256 AND length(e.exposure.stage) <= 256
    AND length(e.exposure.model.name) <= 256 AND length(e.exposure.model.version) <= 256
    AND ((e.exposure.schema_version = 1 AND empty(e.exposure.teams) AND empty(e.exposure.arms))
        OR (e.exposure.schema_version = 2 AND e.exposure.request_id != '' AND length(e.exposure.arms) = 2
            AND length(e.exposure.teams) = length(e.exposure.item_ids) AND arrayAll(t -> t <= 1, e.exposure.teams)
            AND length(arrayDistinct(e.exposure.item_ids)) = length(e.exposure.item_ids)
            AND arrayAll(a -> length(a.key) <= 256 AND length(a.model.name) <= 256
                AND length(a.model.version) <= 256, e.exposure.arms)));

CREATE MATERIALIZED VIEW kafka_interleaved_mv TO interleaved AS
SELECT
    e.exposure.event_id AS event_id,
    e.exposure.experiment_key AS experiment,
    e.exposure.user_id AS user_id,
    e.exposure.request_id AS request_id,
    e.exposure.event_time_ms AS ts,
    e.exposure.item_ids AS item_ids,
    arrayMap(t -> toUInt8(t), e.exposure.teams) AS teams,
    e.exposure.arms[1].key AS arm_a_key,
    e.exposure.arms[1].model.name AS arm_a_model,
    e.exposure.arms[1].model.version AS arm_a_version,
    e.exposure.arms[2].key AS arm_b_key,
    e.exposure.arms[2].model.name AS arm_b_model,
    e.exposure.arms[2].model.version AS arm_b_version
FROM kafka_records
ARRAY JOIN events AS e
WHERE e.exposure.event_id != '' AND e.exposure.user_id != '' AND e.exposure.event_time_ms != 0
    AND length(e.exposure.event_id) <= 512 AND length(e.exposure.user_id) <= 512
    AND length(e.exposure.request_id) <= 512 AND length(e.exposure.experiment_key) <= 256
    AND length(e.exposure.variant_key) <= 256 AND length(e.exposure.stage) <= 256
    AND length(e.exposure.model.name) <= 256 AND length(e.exposure.model.version) <= 256
    AND e.exposure.schema_version = 2 AND e.exposure.request_id != '' AND length(e.exposure.arms) = 2
    AND length(e.exposure.teams) = length(e.exposure.item_ids) AND arrayAll(t -> t <= 1, e.exposure.teams)
    AND length(arrayDistinct(e.exposure.item_ids)) = length(e.exposure.item_ids)
    AND arrayAll(a -> length(a.key) <= 256 AND length(a.model.name) <= 256
        AND length(a.model.version) <= 256, e.exposure.arms);

CREATE MATERIALIZED VIEW kafka_outcomes_mv TO outcomes AS
SELECT
    e.outcome.event_id AS event_id,
    e.outcome.user_id AS user_id,
    e.outcome.metric AS metric,
    e.outcome.event_time_ms AS ts,
    e.outcome.value AS value
FROM kafka_records
ARRAY JOIN events AS e
WHERE e.outcome.schema_version = 1 AND e.outcome.event_id != '' AND e.outcome.user_id != ''
    AND e.outcome.metric != '' AND isFinite(e.outcome.value) AND e.outcome.event_time_ms != 0
    AND length(e.outcome.event_id) <= 512 AND length(e.outcome.user_id) <= 512
    AND length(e.outcome.request_id) <= 512 AND length(e.outcome.experiment_key) <= 256
    AND length(e.outcome.variant_key) <= 256 AND length(e.outcome.metric) <= 256;

-- Outcomes that name a request and an item, again with both (interleaving credits clicks by them); one
-- without an item credits no arm, as in the Python consumer.
CREATE MATERIALIZED VIEW kafka_item_outcomes_mv TO item_outcomes AS
SELECT
    e.outcome.event_id AS event_id,
    e.outcome.user_id AS user_id,
    e.outcome.request_id AS request_id,
    assumeNotNull(e.outcome.item_id) AS item_id,
    e.outcome.metric AS metric,
    e.outcome.event_time_ms AS ts
FROM kafka_records
ARRAY JOIN events AS e
WHERE e.outcome.schema_version = 1 AND e.outcome.event_id != '' AND e.outcome.user_id != ''
    AND e.outcome.metric != '' AND isFinite(e.outcome.value) AND e.outcome.event_time_ms != 0
    AND length(e.outcome.event_id) <= 512 AND length(e.outcome.user_id) <= 512
    AND length(e.outcome.request_id) <= 512 AND length(e.outcome.experiment_key) <= 256
    AND length(e.outcome.variant_key) <= 256 AND length(e.outcome.metric) <= 256
    AND e.outcome.request_id != '' AND e.outcome.item_id IS NOT NULL;

-- Last: the one view on the Kafka table, which starts consumption (see the top of this file).
CREATE MATERIALIZED VIEW kafka_records_mv TO kafka_records AS
SELECT events
FROM kafka_events
WHERE _error = '';
