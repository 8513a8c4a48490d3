package proxy

import "github.com/jackc/pgx/v5/pgtype"

// consoleColumn is one column of an admin console answer: PgBouncer's name and type.
type consoleColumn struct {
	name string
	oid  uint32 // Postgres type OID PgBouncer reports in its RowDescription
}

// consoleColumns maps each SHOW command kproxy answers (lower case) to
// PgBouncer's columns, in order, so that dashboards and exporters written for
// PgBouncer read kproxy's console unchanged.
//
// Taken from PgBouncer 1.18.0 (Debian package) by reading the RowDescription
// of each SHOW on its admin console; internal/pgbtest reads them again from
// the installed PgBouncer. Other releases add or drop columns, so clients
// should look columns up by name. Counters in SHOW STATS are numeric (1700),
// not int8; every other number is int4, times are text.
var consoleColumns = map[string][]consoleColumn{
	"pools": {
		{"database", pgtype.TextOID},
		{"user", pgtype.TextOID},
		{"cl_active", pgtype.Int4OID},
		{"cl_waiting", pgtype.Int4OID},
		{"cl_active_cancel_req", pgtype.Int4OID},
		{"cl_waiting_cancel_req", pgtype.Int4OID},
		{"sv_active", pgtype.Int4OID},
		{"sv_active_cancel", pgtype.Int4OID},
		{"sv_being_canceled", pgtype.Int4OID},
		{"sv_idle", pgtype.Int4OID},
		{"sv_used", pgtype.Int4OID},
		{"sv_tested", pgtype.Int4OID},
		{"sv_login", pgtype.Int4OID},
		{"maxwait", pgtype.Int4OID},
		{"maxwait_us", pgtype.Int4OID},
		{"pool_mode", pgtype.TextOID},
	},
	"stats": {
		{"database", pgtype.TextOID},
		{"total_xact_count", pgtype.NumericOID},
		{"total_query_count", pgtype.NumericOID},
		{"total_received", pgtype.NumericOID},
		{"total_sent", pgtype.NumericOID},
		{"total_xact_time", pgtype.NumericOID},
		{"total_query_time", pgtype.NumericOID},
		{"total_wait_time", pgtype.NumericOID},
		{"avg_xact_count", pgtype.NumericOID},
		{"avg_query_count", pgtype.NumericOID},
		{"avg_recv", pgtype.NumericOID},
		{"avg_sent", pgtype.NumericOID},
		{"avg_xact_time", pgtype.NumericOID},
		{"avg_query_time", pgtype.NumericOID},
		{"avg_wait_time", pgtype.NumericOID},
	},
	"servers": peerColumns,
	"clients": peerColumns,
	"databases": {
		{"name", pgtype.TextOID},
		{"host", pgtype.TextOID},
		{"port", pgtype.Int4OID},
		{"database", pgtype.TextOID},
		{"force_user", pgtype.TextOID},
		{"pool_size", pgtype.Int4OID},
		{"min_pool_size", pgtype.Int4OID},
		{"reserve_pool", pgtype.Int4OID},
		{"pool_mode", pgtype.TextOID},
		{"max_connections", pgtype.Int4OID},
		{"current_connections", pgtype.Int4OID},
		{"paused", pgtype.Int4OID},
		{"disabled", pgtype.Int4OID},
	},
	"config": {
		{"key", pgtype.TextOID},
		{"value", pgtype.TextOID},
		{"default", pgtype.TextOID},
		{"changeable", pgtype.TextOID},
	},
	"lists": {
		{"list", pgtype.TextOID},
		{"items", pgtype.Int4OID},
	},
	"version": {
		{"version", pgtype.TextOID},
	},
}

// peerColumns are the columns of SHOW SERVERS and SHOW CLIENTS, which
// PgBouncer answers alike.
var peerColumns = []consoleColumn{
	{"type", pgtype.TextOID},
	{"user", pgtype.TextOID},
	{"database", pgtype.TextOID},
	{"state", pgtype.TextOID},
	{"addr", pgtype.TextOID},
	{"port", pgtype.Int4OID},
	{"local_addr", pgtype.TextOID},
	{"local_port", pgtype.Int4OID},
	{"connect_time", pgtype.TextOID},
	{"request_time", pgtype.TextOID},
	{"wait", pgtype.Int4OID},
	{"wait_us", pgtype.Int4OID},
	{"close_needed", pgtype.Int4OID},
	{"ptr", pgtype.TextOID},
	{"link", pgtype.TextOID},
	{"remote_pid", pgtype.Int4OID},
	{"tls", pgtype.TextOID},
	{"application_name", pgtype.TextOID},
}
