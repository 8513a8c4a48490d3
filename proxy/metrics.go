package proxy

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// metricsWriter writes the Prometheus text exposition format, keeping each
// metric's HELP and TYPE lines before its first sample.
type metricsWriter struct {
	w    io.Writer
	seen map[string]bool
}

func (m *metricsWriter) sample(name, typ, help string, labels []string, v float64) {
	if !m.seen[name] {
		m.seen[name] = true
		fmt.Fprintf(m.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(labels[i])
			b.WriteString(`="`)
			b.WriteString(escapeLabel(labels[i+1]))
			b.WriteByte('"')
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	b.WriteByte('\n')
	_, _ = io.WriteString(m.w, b.String())
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// writeMetrics writes the server's stats as Prometheus metrics.
func (s *Server) writeMetrics(w io.Writer) {
	st := s.Stats()
	m := &metricsWriter{w: w, seen: map[string]bool{}}
	m.sample("kproxy_clients", "gauge", "Clients logged in.", nil, float64(st.Clients))
	m.sample("kproxy_clients_attached", "gauge", "Clients holding a server connection.", nil, float64(st.ClientsAttached))
	m.sample("kproxy_connections_accepted_total", "counter", "Client connections accepted.", nil, float64(st.Accepted))
	m.sample("kproxy_logins_failed_total", "counter", "Client logins that failed.", nil, float64(st.LoginsFailed))
	m.sample("kproxy_cancel_requests_total", "counter", "Cancel requests forwarded.", nil, float64(st.CancelsForwarded))
	m.sample("kproxy_paused", "gauge", "1 while PAUSE holds new transactions of any database back.", nil, b2f(s.paused.Load()))
	pins := make([]string, 0, len(st.PinnedClients))
	for k := range st.PinnedClients {
		pins = append(pins, k)
	}
	sort.Strings(pins)
	for _, k := range pins {
		m.sample("kproxy_pinned_clients", "gauge", "Clients pinned to their server connection, by reason.", []string{"reason", k}, float64(st.PinnedClients[k]))
	}
	for _, p := range st.Pools {
		l := []string{"backend", p.Backend, "database", p.Database, "user", p.User}
		m.sample("kproxy_pool_connections", "gauge", "Server connections open.", l, float64(p.Open))
		m.sample("kproxy_pool_idle_connections", "gauge", "Server connections idle in the pool.", l, float64(p.Idle))
		m.sample("kproxy_pool_active_connections", "gauge", "Server connections held by clients.", l, float64(p.Active))
		m.sample("kproxy_pool_waiting_clients", "gauge", "Clients waiting for a server connection.", l, float64(p.Waiting))
		m.sample("kproxy_pool_capacity", "gauge", "Connections the pool may open now.", l, float64(p.Capacity))
		m.sample("kproxy_pool_max_connections", "gauge", "The pool's max_connections.", l, float64(p.Max))
		m.sample("kproxy_pool_min_connections", "gauge", "The pool's min_connections.", l, float64(p.Min))
		m.sample("kproxy_pool_connections_created_total", "counter", "Server connections opened.", l, float64(p.Connections.Created))
		m.sample("kproxy_pool_connections_recycled_total", "counter", "Unhealthy server connections recycled.", l, float64(p.Connections.Recycled))
		m.sample("kproxy_pool_connections_failed_total", "counter", "Server connections that failed to open.", l, float64(p.Connections.Failed))
		m.sample("kproxy_pool_acquires_total", "counter", "Server connections handed to clients.", l, float64(p.Acquires))
		m.sample("kproxy_pool_acquire_timeouts_total", "counter", "Clients that gave up waiting (53300).", l, float64(p.AcquireTimeouts))
		m.sample("kproxy_pool_queries_total", "counter", "Statements answered.", l, float64(p.Queries.Executed))
		m.sample("kproxy_pool_query_errors_total", "counter", "Statements answered with an error.", l, float64(p.Queries.Errors))
		m.sample("kproxy_pool_acquire_seconds_avg", "gauge", "Mean wait for a server connection.", l, p.Performance.AvgAcquisitionMs/1000)
		m.sample("kproxy_pool_acquire_seconds_p99", "gauge", "99th percentile wait for a server connection.", l, p.Performance.P99AcquisitionMs/1000)
		m.sample("kproxy_pool_hold_seconds_avg", "gauge", "Mean time a client held a server connection.", l, p.Performance.AvgQueryMs/1000)
		m.sample("kproxy_pool_hold_seconds_p99", "gauge", "99th percentile time a client held a server connection.", l, p.Performance.P99QueryMs/1000)
		m.sample("kproxy_pool_utilization", "gauge", "Share of the pool's capacity in use.", l, p.Performance.Utilization)
		m.sample("kproxy_pool_health_score", "gauge", "Mean health score (0-100) of the open connections.", l, p.Health.Score)
		m.sample("kproxy_pool_unhealthy_connections", "gauge", "Connections scoring below the health threshold.", l, float64(p.Health.Unhealthy))
		m.sample("kproxy_pool_prepared_hits_total", "counter", "Statements found already prepared on the server connection.", l, float64(p.PreparedHits))
		m.sample("kproxy_pool_prepared_misses_total", "counter", "Statements prepared on a server connection.", l, float64(p.PreparedMisses))
		for _, a := range p.Alerts {
			m.sample("kproxy_pool_alert", "gauge", "1 for each alert the pool raises.", append(l[:6:6], "alert", a.Name), 1)
		}
	}
	r := st.Routing
	m.sample("kproxy_routed_transactions_total", "counter", "Transactions routed, by target.", []string{"target", "primary"}, float64(r.RoutedPrimary))
	m.sample("kproxy_routed_transactions_total", "counter", "", []string{"target", "replica"}, float64(r.RoutedReplica))
	m.sample("kproxy_stale_reads_avoided_total", "counter", "Reads sent to the primary because no replica had the client's last write.", nil, float64(r.StaleReadsAvoided))
	m.sample("kproxy_replica_fallbacks_total", "counter", "Reads sent to the primary because no replica was healthy.", nil, float64(r.Fallbacks))
	m.sample("kproxy_replayed_on_primary_total", "counter", "Transactions a replica refused with 25006, run on the primary.", nil, float64(r.ReplayedOnPrimary))
	m.sample("kproxy_reads_retried_on_primary_total", "counter", "Reads whose replica failed, run on the primary.", nil, float64(r.ReadsRetried))
	m.sample("kproxy_route_seconds_avg", "gauge", "Mean time to make a routing decision.", nil, float64(r.AvgRouteNanos)/1e9)
	for _, rep := range r.Replicas {
		l := []string{"backend", rep.Addr}
		m.sample("kproxy_replica_healthy", "gauge", "1 while the replica receives reads.", l, b2f(rep.Healthy))
		m.sample("kproxy_replica_lag_bytes", "gauge", "WAL the replica has yet to replay.", l, float64(rep.LagBytes))
		m.sample("kproxy_replica_lag_seconds", "gauge", "How long the replica has been behind.", l, rep.LagSeconds)
		m.sample("kproxy_replica_ejections_total", "counter", "Times the replica was ejected.", l, float64(rep.Ejections))
	}
	m.sample("kproxy_classifier_cache_hits_total", "counter", "Statements classified from the cache.", nil, float64(st.Classifier.Hits))
	m.sample("kproxy_classifier_cache_misses_total", "counter", "Statements the parser classified.", nil, float64(st.Classifier.Misses))
	m.sample("kproxy_classifier_learned_shapes", "gauge", "Statement shapes learned from replica refusals.", nil, float64(st.Classifier.Learned))
}
