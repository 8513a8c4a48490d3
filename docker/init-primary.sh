#!/bin/bash
# Runs once, when the primary's data directory is created: adds the role and
# the pg_hba rule the replica's pg_basebackup and streaming connect with.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -v pw="$REPLICATION_PASSWORD" -U "$POSTGRES_USER" -d postgres <<-'EOSQL'
	CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
EOSQL
echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
