#!/bin/sh
# Every start of the ClickHouse server (run by the image's entrypoint from /docker-entrypoint-initdb.d, with
# CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS set): the event tables of analytics/store/clickhouse_schema.sql (IF NOT
# EXISTS), then the Kafka ingestion of ingest.sql, re-created as the file says (it upgrades an older one), in
# $CLICKHOUSE_DB, reading the topics at $KAFKA_BOOTSTRAP. The SQL files are mounted in $MTRANK_SQL_DIR.
set -eu
sql_dir=${MTRANK_SQL_DIR:-/etc/mtrank/clickhouse}
run() {
  clickhouse client --host 127.0.0.1 --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" \
    --database "${CLICKHOUSE_DB:-mtrank}" --multiquery
}
run < "$sql_dir/clickhouse_schema.sql"
sed "s|'kafka:9092'|'${KAFKA_BOOTSTRAP:-kafka:9092}'|" "$sql_dir/ingest.sql" | run
