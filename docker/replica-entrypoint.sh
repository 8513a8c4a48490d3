#!/bin/bash
# Replica entrypoint, run as postgres: clones the primary on the first start
# (pg_basebackup -R writes standby.signal and primary_conninfo), then runs
# the command, a postgres with hot standby settings.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	until pg_basebackup -h primary -U replicator -D "$PGDATA" -R -X stream -c fast; do
		echo "replica: waiting for the primary" >&2
		find "$PGDATA" -mindepth 1 -delete
		sleep 1
	done
	chmod 0700 "$PGDATA"
fi
exec "$@"
