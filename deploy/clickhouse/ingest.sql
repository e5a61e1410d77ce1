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
-- * one view reads it, kafka_records_mv, created last: it passes each record to the Null table
--   kafka_records, whose views (one per event table, and kafka_rejected_mv) are already in place, so
--   consumption resumes from the group's offsets with all of them writing (views created one by one on the
--   Kafka table would start it with only the first).
-- A failed statement stops the apply (clickhouse client --multiquery) before kafka_records_mv exists, so
-- nothing is consumed: events wait in Kafka (within the topics' retention) until the file applies. Nothing
-- else may read kafka_events, whose table is dropped here: read kafka_records or the event tables.
-- Re-creating is simpler than a recorded schema version or versioned view names, and whatever an install
-- holds the result is this file (tests/deploy applies it over each earlier version); ALTER TABLE ... MODIFY
-- QUERY would change the views in place but not the Kafka table's columns (2026-12-07 added some), and
-- would repeat each SELECT. The event tables (clickhouse_schema.sql) are not touched: they keep their rows;
-- nor is rejected_events, the counts of what the views refuse (created here if missing, never dropped).
DROP TABLE IF EXISTS kafka_events;
DROP VIEW IF EXISTS kafka_records_mv;
DROP VIEW IF EXISTS kafka_exposures_mv;
DROP VIEW IF EXISTS kafka_interleaved_mv;
DROP VIEW IF EXISTS kafka_outcomes_mv;
DROP VIEW IF EXISTS kafka_item_outcomes_mv;
DROP VIEW IF EXISTS kafka_rejected_mv;
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

-- The records as kafka_records_mv passes them on ('stream' error mode: one that does not decode has _error
-- set, and passes on no events); a Null table keeps no rows, its views see each block. The readers' rule is
-- written once, here, as two columns that each view reading them computes (ALIAS): per event, its kind (its
-- payload: Exposure or Outcome; Event when it has none) and its problem: "" when it is read, else the field
-- at fault as the Python consumer names it (kind "Outcome", problem "metric"); heads and unsendable are its
-- steps. The four views keep the events without a problem; kafka_rejected_mv counts the others in
-- rejected_events.
--
-- The rule is received_event_problem in analytics/events/messages.py, which the Python consumer applies
-- (tests/deploy checks that both keep the same events and name the same fields), in its order: an event is
-- read when producers could have sent it. It has a user id, and (outcomes) a metric and a finite value; ids
-- (user, request, event) are at most 512 bytes and names (experiment, variant, metric, stage, model name and
-- version, arm keys) at most 256 (proto/limits.py); its schema version is one producers send; an exposure of
-- version 1 has no teams or arms, one of version 2 (interleaving; or unset, with arms) names two arms, a team
-- 0/1 per item and its request, and no item twice; and it has an event id, a schema version and an event
-- time (every producer sets them). A payload that sets none of kafka_events' columns (an empty Exposure, say)
-- looks like none here: it is counted as Event.payload, where the consumer names its first empty field.
CREATE TABLE kafka_records AS kafka_events ENGINE = Null;

ALTER TABLE kafka_records
    ADD COLUMN kinds Array(String) ALIAS arrayMap(e -> multiIf(
        e.exposure != defaultValueOfArgumentType(e.exposure), 'Exposure',
        -- as text: = on an unset item_id (NULL) is NULL
        toString(e.outcome) != toString(defaultValueOfArgumentType(e.outcome)), 'Outcome',
        'Event'), events),
    -- the fields both kinds have, of the event's own payload, so that the checks on them are written once
    ADD COLUMN heads Array(Tuple(event_id String, schema_version Int32, request_id String, user_id String,
        experiment_key String, variant_key String, event_time_ms Int64)) ALIAS arrayMap((kind, x, o) ->
        if(kind = 'Exposure', (x.event_id, x.schema_version, x.request_id, x.user_id, x.experiment_key,
            x.variant_key, x.event_time_ms), (o.event_id, o.schema_version, o.request_id, o.user_id,
            o.experiment_key, o.variant_key, o.event_time_ms)), kinds, events.exposure, events.outcome),
    -- event_problem: what producers check before they send
    ADD COLUMN unsendable Array(String) ALIAS arrayMap((kind, h, x, o) -> multiIf(
        kind = 'Event', 'payload',
        h.user_id = '', 'user_id',
        kind = 'Outcome' AND o.metric = '', 'metric',
        kind = 'Outcome' AND NOT isFinite(o.value), 'value',
        length(h.user_id) > 512, 'user_id',
        length(h.request_id) > 512, 'request_id',
        length(h.event_id) > 512, 'event_id',
        length(h.experiment_key) > 256, 'experiment_key',
        length(h.variant_key) > 256, 'variant_key',
        kind = 'Outcome', multiIf(
            length(o.metric) > 256, 'metric',
            o.schema_version NOT IN (0, 1), 'schema_version',
            ''),
        length(x.stage) > 256, 'stage',
        length(x.model.name) > 256, 'model.name',
        length(x.model.version) > 256, 'model.version',
        x.schema_version NOT IN (0, 1, 2), 'schema_version',
        NOT (x.schema_version = 2 OR (x.schema_version = 0 AND notEmpty(x.arms))),
            if(empty(x.teams) AND empty(x.arms), '', 'teams'),
        length(x.arms) != 2, 'arms',
        length(x.teams) != length(x.item_ids), 'teams',
        NOT arrayAll(t -> t <= 1, x.teams), 'teams',
        x.request_id = '', 'request_id',
        length(arrayDistinct(x.item_ids)) != length(x.item_ids), 'item_ids',
        arrayFirst(field -> field != '', arrayFlatten(arrayMap((a, i) -> [
            if(length(a.key) > 256, concat('arms[', toString(i - 1), '].key'), ''),
            if(length(a.model.name) > 256, concat('arms[', toString(i - 1), '].model.name'), ''),
            if(length(a.model.version) > 256, concat('arms[', toString(i - 1), '].model.version'), '')],
            x.arms, arrayEnumerate(x.arms))))), kinds, heads, events.exposure, events.outcome),
    -- then what every producer sets (complete())
    ADD COLUMN problems Array(String) ALIAS arrayMap((h, unsent) -> multiIf(
        unsent != '', unsent,
        h.event_id = '', 'event_id',
        h.schema_version = 0, 'schema_version',
        h.event_time_ms = 0, 'event_time_ms',
        ''), heads, unsendable);

-- What the ingestion refuses, per day of ingestion: the labels and counts of the Python consumer's
-- mtrank_analytics_events_rejected_total (reason "invalid": events, under the field at fault;
-- "undecodable": records that are no EventBatch, one of no events, or one holding a string that is not
-- UTF-8). Data, like the event tables: created if missing and never dropped, so its counts outlive every
-- apply of this file. Parts are summed as they merge: read it with sum(events) (deploy/README.md).
CREATE TABLE IF NOT EXISTS rejected_events
(
    day Date,
    reason LowCardinality(String),
    field LowCardinality(String),
    events UInt64
)
ENGINE = SummingMergeTree
ORDER BY (day, reason, field);

CREATE MATERIALIZED VIEW kafka_rejected_mv TO rejected_events AS
SELECT
    today() AS day,
    if(empty(kinds), 'undecodable', 'invalid') AS reason,
    if(empty(kinds), '', concat(kind, '.', problem)) AS field,
    count() AS events
FROM kafka_records
LEFT ARRAY JOIN kinds AS kind, problems AS problem
WHERE empty(kinds) OR problem != ''
GROUP BY day, reason, field;

-- A version 2 exposure goes to exposures as variant "interleaved" and with its lists to interleaved.
CREATE MATERIALIZED VIEW kafka_exposures_mv TO exposures AS
SELECT
    e.exposure.event_id AS event_id,
    e.exposure.experiment_key AS experiment,
    e.exposure.variant_key AS variant,
    e.exposure.user_id AS user_id,
    e.exposure.event_time_ms AS ts
FROM kafka_records
ARRAY JOIN events AS e, kinds AS kind, problems AS problem
WHERE kind = 'Exposure' AND problem = '';

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
ARRAY JOIN events AS e, kinds AS kind, problems AS problem
WHERE kind = 'Exposure' AND problem = '' AND e.exposure.schema_version = 2;

CREATE MATERIALIZED VIEW kafka_outcomes_mv TO outcomes AS
SELECT
    e.outcome.event_id AS event_id,
    e.outcome.user_id AS user_id,
    e.outcome.metric AS metric,
    e.outcome.event_time_ms AS ts,
    e.outcome.value AS value
FROM kafka_records
ARRAY JOIN events AS e, kinds AS kind, problems AS problem
WHERE kind = 'Outcome' AND problem = '';

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
ARRAY JOIN events AS e, kinds AS kind, problems AS problem
WHERE kind = 'Outcome' AND problem = '' AND e.outcome.request_id != '' AND e.outcome.item_id IS NOT NULL;

-- Last: the one view on the Kafka table, which starts consumption (see the top of this file). A record that
-- does not decode passes on no events (kafka_rejected_mv counts it), nor does one holding a string that is
-- not UTF-8: protobuf parsers refuse a proto3 string that is not (the Python consumer's: the record is
-- undecodable to it), ProtobufSingle reads its bytes. As text (quoted strings are written byte for byte, all
-- else is ASCII), the record is UTF-8 when each of its strings is, whatever fields they are.
CREATE MATERIALIZED VIEW kafka_records_mv TO kafka_records AS
SELECT if(_error = '' AND isValidUTF8(toString(events)), events, []) AS events
FROM kafka_events;
