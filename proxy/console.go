package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgwire"
)

// consoleDatabase is the virtual database of the admin console.
const consoleDatabase = "kproxy"

// Version is kproxy's version, as SHOW VERSION reports it.
var Version = "kproxy 0.1.0"

// consoleLogin authenticates a client of the admin console and greets it
// as a server would.
func (ss *session) consoleLogin() error {
	cfg := ss.srv.cfg.Load()
	if len(ss.negotiate) > 0 {
		ss.wmu.Lock()
		_, _ = ss.w.Write(ss.negotiate)
		ss.wmu.Unlock()
	}
	if err := ss.srv.auth.authenticate(ss, cfg); err != nil {
		return err
	}
	if len(cfg.AdminUsers) > 0 && !contains(cfg.AdminUsers, ss.user) {
		return fatalf(codeInvalidAuthSpec, "user %q may not use the admin console", ss.user)
	}
	var buf []byte
	buf, _ = (&pgproto3.AuthenticationOk{}).Encode(buf)
	for _, p := range [][2]string{
		{"server_version", "15.0 (" + Version + ")"}, {"client_encoding", "UTF8"}, {"server_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"}, {"standard_conforming_strings", "on"}, {"integer_datetimes", "on"},
	} {
		buf, _ = (&pgproto3.ParameterStatus{Name: p[0], Value: p[1]}).Encode(buf)
	}
	buf, _ = (&pgproto3.BackendKeyData{SecretKey: make([]byte, 4)}).Encode(buf)
	buf = append(buf, pgwire.ReadyForQuery(pgwire.TxIdle)...)
	return ss.writeClient(buf, true)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// runConsole answers the admin console's commands until the client
// leaves. It speaks the simple query protocol only, as PgBouncer's does.
func (ss *session) runConsole() {
	s := ss.srv
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ss.kill(fatalf(codeAdminShutdown, "kproxy is shutting down"))
		return
	}
	s.consoles[ss] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.consoles, ss)
		s.mu.Unlock()
		ss.closeConn()
	}()
	for {
		t, msg, err := ss.rd.Next()
		if err != nil {
			return
		}
		var out []byte
		switch t {
		case 'X':
			return
		case 'Q':
			out = ss.srv.consoleQuery(out, cstring(msg[5:]), ss.user)
		case 'S':
			out = append(out, pgwire.ReadyForQuery(pgwire.TxIdle)...)
		case 'H':
		default:
			out = encodeError(out, &Error{Severity: severityError, Code: codeFeatureUnsupported,
				Message: "the admin console supports only simple queries"})
		}
		if len(out) > 0 && ss.writeClient(out, true) != nil {
			return
		}
	}
}

// consoleQuery answers one Query message of the admin console: each
// command in it, then ReadyForQuery. An error stops the rest.
func (s *Server) consoleQuery(out []byte, sql, user string) []byte {
	cmds := strings.Split(sql, ";")
	ran := false
	for _, cmd := range cmds {
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			continue
		}
		ran = true
		var err error
		out, err = s.consoleCommand(out, cmd)
		if err != nil {
			s.log.Info("admin console command failed", zap.String("user", user), zap.String("command", cmd), zap.Error(err))
			out = encodeError(out, err)
			break
		}
	}
	if !ran {
		out = append(out, 'I', 0, 0, 0, 4) // EmptyQueryResponse
	}
	return append(out, pgwire.ReadyForQuery(pgwire.TxIdle)...)
}

func (s *Server) consoleCommand(out []byte, cmd string) ([]byte, error) {
	words := strings.Fields(strings.ToLower(cmd))
	switch words[0] {
	case "show":
		if len(words) != 2 {
			return out, consoleSyntax(cmd)
		}
		rows, ok := s.consoleRows(words[1])
		if !ok {
			return out, &Error{Severity: severityError, Code: "42601",
				Message: fmt.Sprintf("unknown SHOW item %q", words[1]),
				Hint:    "try SHOW POOLS, STATS, SERVERS, CLIENTS, DATABASES, CONFIG, LISTS or VERSION"}
		}
		return encodeConsoleRows(out, consoleColumns[words[1]], rows), nil
	case "pause", "resume":
		if len(words) > 2 {
			return out, consoleSyntax(cmd)
		}
		db := ""
		if len(words) == 2 {
			db = words[1]
		}
		var err error
		if words[0] == "pause" {
			err = s.Pause(context.Background(), db)
		} else {
			err = s.Resume(db)
		}
		if err != nil {
			return out, err
		}
		return commandComplete(out, strings.ToUpper(words[0])), nil
	case "reload":
		if len(words) != 1 {
			return out, consoleSyntax(cmd)
		}
		if err := s.reloadConfig(); err != nil {
			return out, &Error{Severity: severityError, Code: "F0000", Message: "reload failed: " + err.Error()}
		}
		return commandComplete(out, "RELOAD"), nil
	}
	return out, consoleSyntax(cmd)
}

func consoleSyntax(cmd string) error {
	return &Error{Severity: severityError, Code: "42601", Message: fmt.Sprintf("unknown admin console command: %s", cmd),
		Hint: "the console knows SHOW, PAUSE [db], RESUME [db] and RELOAD"}
}

func commandComplete(out []byte, tag string) []byte {
	out, _ = (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(out)
	return out
}

// consoleRow maps column names to values; a column it lacks is 0 when
// numeric and NULL otherwise.
type consoleRow map[string]string

func encodeConsoleRows(out []byte, cols []consoleColumn, rows []consoleRow) []byte {
	rd := pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(cols))}
	for i, c := range cols {
		size := int16(-1)
		switch c.oid {
		case pgtype.Int4OID:
			size = 4
		case pgtype.Int8OID:
			size = 8
		}
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: size, TypeModifier: -1}
	}
	out, _ = rd.Encode(out)
	for _, r := range rows {
		dr := pgproto3.DataRow{Values: make([][]byte, len(cols))}
		for i, c := range cols {
			v, ok := r[c.name]
			switch {
			case ok:
				dr.Values[i] = []byte(v)
			case c.oid != pgtype.TextOID:
				dr.Values[i] = []byte("0")
			}
		}
		out, _ = dr.Encode(out)
	}
	return commandComplete(out, "SHOW")
}

func itoa[T int | int64 | uint32 | uint16](n T) string { return strconv.FormatInt(int64(n), 10) }

// consoleRows builds the rows of SHOW what.
func (s *Server) consoleRows(what string) ([]consoleRow, bool) {
	cfg := s.cfg.Load()
	switch what {
	case "pools":
		return s.poolRows(cfg), true
	case "stats":
		return s.statsRows(), true
	case "servers":
		return s.serverRows(cfg), true
	case "clients":
		return s.clientRows(), true
	case "databases":
		return s.databaseRows(cfg), true
	case "config":
		return configRows(cfg), true
	case "lists":
		st := s.Stats()
		dbs := map[string]bool{}
		users := map[string]bool{}
		servers := 0
		for _, p := range st.Pools {
			dbs[p.Database] = true
			users[p.User] = true
			servers += p.Open
		}
		return []consoleRow{
			{"list": "databases", "items": itoa(len(dbs))}, {"list": "users", "items": itoa(len(users))},
			{"list": "pools", "items": itoa(len(st.Pools))}, {"list": "used_clients", "items": itoa(st.Clients)},
			{"list": "used_servers", "items": itoa(servers)},
		}, true
	case "version":
		return []consoleRow{{"version": Version}}, true
	}
	return nil, false
}

// poolKey names a (database, user) pool as PgBouncer does: kproxy's pools
// on the primary and the replicas are shown together.
type consolePoolKey struct{ database, user string }

func (s *Server) poolRows(cfg *config.Config) []consoleRow {
	attached := map[consolePoolKey]int{}
	for _, cs := range s.Stats().ClientList {
		if cs.ServerPID != 0 {
			attached[consolePoolKey{cs.Database, cs.User}]++
		}
	}
	type sums struct {
		waiting, active, idle int
		maxWait               time.Duration
	}
	agg := map[consolePoolKey]*sums{}
	var keys []consolePoolKey
	for _, p := range s.cluster.Stats() {
		k := consolePoolKey{p.Database, p.User}
		a := agg[k]
		if a == nil {
			a = &sums{}
			agg[k] = a
			keys = append(keys, k)
		}
		a.waiting += p.Waiting
		a.active += p.Active
		a.idle += p.Idle
		a.maxWait = max(a.maxWait, p.MaxAcquireWait)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].database != keys[j].database {
			return keys[i].database < keys[j].database
		}
		return keys[i].user < keys[j].user
	})
	rows := make([]consoleRow, 0, len(keys))
	for _, k := range keys {
		a, us := agg[k], agg[k].maxWait.Microseconds()
		rows = append(rows, consoleRow{"database": k.database, "user": k.user,
			"pool_mode": string(cfg.PoolFor(k.database, k.user).Mode), "cl_active": itoa(attached[k]),
			"cl_waiting": itoa(a.waiting), "sv_active": itoa(a.active), "sv_idle": itoa(a.idle),
			"maxwait": itoa(us / 1e6), "maxwait_us": itoa(us % 1e6)})
	}
	return rows
}

func (s *Server) statsRows() []consoleRow {
	type tot struct{ xacts, queries, xactUs, waitUs int64 }
	by := map[string]*tot{}
	var names []string
	for _, p := range s.cluster.Stats() {
		t := by[p.Database]
		if t == nil {
			t = &tot{}
			by[p.Database] = t
			names = append(names, p.Database)
		}
		t.xacts += p.Acquires
		t.queries += p.Queries.Executed
		t.xactUs += int64(p.Performance.AvgQueryMs * 1000 * float64(p.Acquires))
		t.waitUs += int64(p.AvgAcquireWait.Microseconds()) * p.Acquires
	}
	sort.Strings(names)
	rows := make([]consoleRow, 0, len(names))
	for _, n := range names {
		t := by[n]
		r := consoleRow{"database": n, "total_xact_count": itoa(t.xacts), "total_query_count": itoa(t.queries),
			"total_xact_time": itoa(t.xactUs), "total_query_time": itoa(t.xactUs), "total_wait_time": itoa(t.waitUs)}
		if t.xacts > 0 {
			r["avg_xact_time"] = itoa(t.xactUs / t.xacts)
			r["avg_wait_time"] = itoa(t.waitUs / t.xacts)
		}
		if t.queries > 0 {
			r["avg_query_time"] = itoa(t.xactUs / t.queries)
		}
		rows = append(rows, r)
	}
	return rows
}

func (s *Server) serverRows(cfg *config.Config) []consoleRow {
	var rows []consoleRow
	for _, p := range s.cluster.Stats() {
		host, port, _ := net.SplitHostPort(p.Backend)
		for _, sv := range p.Servers {
			state := "idle"
			if sv.Active {
				state = "active"
			}
			rows = append(rows, consoleRow{"type": "S", "user": p.User, "database": p.Database, "state": state,
				"addr": host, "port": port, "connect_time": sv.CreatedAt.UTC().Format("2006-01-02 15:04:05 MST"),
				"remote_pid": itoa(sv.PID), "application_name": "kproxy"})
		}
	}
	return rows
}

func (s *Server) clientRows() []consoleRow {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].connectedAt.Before(sessions[j].connectedAt) })
	rows := make([]consoleRow, 0, len(sessions))
	for _, ss := range sessions {
		cs := ss.state()
		state := "idle"
		if cs.ServerPID != 0 {
			state = "active"
		}
		r := consoleRow{"type": "C", "user": cs.User, "database": cs.Database, "state": state,
			"connect_time": ss.connectedAt.UTC().Format("2006-01-02 15:04:05 MST")}
		if host, port, err := net.SplitHostPort(ss.nc.RemoteAddr().String()); err == nil {
			r["addr"], r["port"] = host, port
		}
		if host, port, err := net.SplitHostPort(ss.nc.LocalAddr().String()); err == nil {
			r["local_addr"], r["local_port"] = host, port
		}
		if cs.ServerPID != 0 {
			r["remote_pid"] = itoa(cs.ServerPID)
		}
		rows = append(rows, r)
	}
	return rows
}

func (s *Server) databaseRows(cfg *config.Config) []consoleRow {
	names := map[string]bool{}
	for name := range cfg.Databases {
		names[name] = true
	}
	current := map[string]int{}
	for _, p := range s.cluster.Stats() {
		names[p.Database] = true
		current[p.Database] += p.Open
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	rows := make([]consoleRow, 0, len(sorted))
	for _, n := range sorted {
		paused := "0"
		if s.pausedDB(n) {
			paused = "1"
		}
		p := cfg.PoolFor(n, "")
		rows = append(rows, consoleRow{"name": n, "host": cfg.Primary.Host, "port": itoa(cfg.Primary.Port),
			"database": cfg.BackendDatabase(n), "pool_size": itoa(p.MaxConnections), "min_pool_size": itoa(p.MinConnections),
			"pool_mode": string(p.Mode), "current_connections": itoa(current[n]), "paused": paused})
	}
	return rows
}

// configRows lists the settings a PgBouncer dashboard looks for, under
// kproxy's own names, with defaults.
func configRows(cfg *config.Config) []consoleRow {
	def := config.Default()
	dp := config.DefaultPool()
	p := cfg.Pool
	rows := []consoleRow{}
	add := func(key, value, dflt string, changeable bool) {
		ch := "no"
		if changeable {
			ch = "yes"
		}
		rows = append(rows, consoleRow{"key": key, "value": value, "default": dflt, "changeable": ch})
	}
	add("listen", cfg.Listen, def.Listen, false)
	add("admin_listen", cfg.AdminListen, def.AdminListen, false)
	add("pool_mode", string(cfg.PoolMode), string(def.PoolMode), true)
	add("auth_method", string(cfg.EffectiveAuthMethod()), "", true)
	add("pool.min_connections", itoa(p.MinConnections), itoa(dp.MinConnections), true)
	add("pool.max_connections", itoa(p.MaxConnections), itoa(dp.MaxConnections), true)
	add("pool.acquire_timeout", p.AcquireTimeout.String(), dp.AcquireTimeout.String(), true)
	add("pool.idle_timeout", p.IdleTimeout.String(), dp.IdleTimeout.String(), true)
	add("pool.max_lifetime", p.MaxLifetime.String(), dp.MaxLifetime.String(), true)
	add("pool.adaptive_sizing", strconv.FormatBool(p.AdaptiveSizing), "false", true)
	add("pool.pattern_learning", strconv.FormatBool(p.PatternLearning), "false", true)
	add("pool.health_threshold", itoa(p.HealthThreshold), itoa(dp.HealthThreshold), true)
	add("backend_reserved_connections", itoa(cfg.BackendReservedConnections), itoa(def.BackendReservedConnections), true)
	add("routing.replica_reads", strconv.FormatBool(cfg.Routing.ReplicaReads), "true", true)
	add("shutdown_timeout", cfg.ShutdownTimeout.String(), def.ShutdownTimeout.String(), true)
	add("log_level", cfg.LogLevel, def.LogLevel, false)
	return rows
}

// Pause makes new transactions of database db wait ("" for every
// database), and returns once no client of it holds a server connection
// (every open transaction has ended), or with an error after the shutdown
// timeout. Session-mode clients hold theirs until they leave.
func (s *Server) Pause(ctx context.Context, db string) error {
	s.pauseMu.Lock()
	if db == "" {
		s.pausedAll = true
	} else {
		if s.pausedDBs == nil {
			s.pausedDBs = map[string]bool{}
		}
		s.pausedDBs[db] = true
	}
	s.paused.Store(true)
	s.pauseMu.Unlock()
	s.log.Info("paused: new transactions wait", zap.String("database", db))
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Load().ShutdownTimeout)
	defer cancel()
	for {
		busy := 0
		for _, cs := range s.Stats().ClientList {
			if cs.ServerPID != 0 && (db == "" || cs.Database == db) {
				busy++
			}
		}
		if busy == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return &Error{Severity: severityError, Code: codeQueryCanceled,
				Message: fmt.Sprintf("%d clients still hold server connections; kproxy stays paused", busy)}
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Resume lets the waiting transactions of database db go on ("" for every
// database, whatever PAUSE held back). A database cannot be resumed alone
// while every database is paused, nor when it is not paused.
func (s *Server) Resume(db string) error {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	switch {
	case db == "":
		s.pausedAll = false
		clear(s.pausedDBs)
	case s.pausedAll:
		return &Error{Severity: severityError, Code: codeObjectNotInPrerequisiteState,
			Message: fmt.Sprintf("cannot resume database %q alone: every database is paused", db),
			Hint:    "RESUME without a database resumes them all"}
	case !s.pausedDBs[db]:
		return &Error{Severity: severityError, Code: codeObjectNotInPrerequisiteState,
			Message: fmt.Sprintf("database %q is not paused", db)}
	default:
		delete(s.pausedDBs, db)
	}
	s.paused.Store(s.pausedAll || len(s.pausedDBs) > 0)
	s.pauseCond.Broadcast()
	s.log.Info("resumed", zap.String("database", db))
	return nil
}

// pausedDB reports whether new transactions of database db wait.
func (s *Server) pausedDB(db string) bool {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	return s.pausedDBLocked(db)
}

func (s *Server) pausedDBLocked(db string) bool { return s.pausedAll || s.pausedDBs[db] }

// waitUnpaused blocks while database db is paused.
func (s *Server) waitUnpaused(db string) {
	s.pauseMu.Lock()
	for s.pausedDBLocked(db) {
		s.pauseCond.Wait()
	}
	s.pauseMu.Unlock()
}

// SetReloader sets what RELOAD on the admin console runs: re-reading the
// configuration file and applying it, as SIGHUP does.
func (s *Server) SetReloader(f func() error) { s.reloader.Store(&f) }

func (s *Server) reloadConfig() error {
	f := s.reloader.Load()
	if f == nil {
		return errors.New("kproxy was started without a configuration file to reload")
	}
	return (*f)()
}
